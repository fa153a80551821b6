// The process collector: a workload that execs exactly K programs, and one
// the kernel's OOM killer kills inside a memory-limited cgroup.
import t from 'tap';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { startAgent } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { oomKillIn } from '../helpers/oom.js';
import { trueLoopScript } from '../helpers/proc.js';

const execs = 40;

t.test('execs and OOM kills are counted for the workload they happened to', async (t) => {
  if (!requirePrivileges(t, 'process collector on tracepoints')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const looping = await net.addPod({ layout: 'systemd' });
  const once = await net.addPod({ layout: 'plain' });
  const victim = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());

  // Both pods go through the same command path (ip netns exec → sh): the pod that runs no loop measures its execs.
  t.equal((await looping.exec('sh', ['-c', trueLoopScript(execs)])).code, 0, 'exec loop ran');
  t.equal((await once.exec('sh', ['-c', 'i=0'])).code, 0, 'baseline ran');

  const killed = await oomKillIn(t, victim);
  t.equal(killed.signal, 'SIGKILL', `the hog was killed by SIGKILL (exit ${killed.code}, ${killed.stderr.trim()})`);

  const families = parseExposition(await agent.metrics());
  const execsOf = (cgroup: string) => sumSamples(families, 'probepilot_process_execs_total', { cgroup });
  const overhead = execsOf(once.cgroupPath);
  t.ok(overhead >= 1 && overhead <= 3, `the command path itself execs ${overhead} time(s) (ip, sh)`);
  t.equal(execsOf(looping.cgroupPath), execs + overhead, `${execs} execs of /bin/true plus the command path's ${overhead}, exactly`);

  const oomKills = (cgroup: string) => sumSamples(families, 'probepilot_oom_kills_total', { cgroup });
  t.equal(oomKills(victim.cgroupPath), 1, 'one OOM kill, charged to the victim\'s own cgroup');
  t.equal(oomKills(looping.cgroupPath) + oomKills(once.cgroupPath), 0, 'no other test workload is charged with it');
  t.equal(sumSamples(families, 'probepilot_collector_up', { collector: 'process' }), 1, 'collector is up');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
