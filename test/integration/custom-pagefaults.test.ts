// The page-fault custom probe (examples/custom-probes/pagefaults), loaded
// from its YAML by the agent, against a workload that touches a known
// number of fresh pages: each write to a page of a new anonymous mapping
// (huge pages off for it) is one write fault. The workload's own
// getrusage() fault count over the same window is the second oracle.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { createInterface } from 'node:readline';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { checkExposition, parseExposition, sumSamples } from '../helpers/exposition.js';
import { projectRoot } from '../helpers/helm.js';
import { waitFor } from '../helpers/wait.js';
import { compileWorkload } from '../helpers/workload.js';

const pages = 20_000;
const family = 'probepilot_custom_page_faults_total';

/** argv[1] pages. Waits for a line on stdin, touches the pages, prints its own fault count over the loop, waits for another line. */
const toucher = `
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
static long faults(void) { struct rusage u; getrusage(RUSAGE_SELF, &u); return u.ru_minflt + u.ru_majflt; }
int main(int argc, char **argv) {
  long pages = atol(argv[1]), page = sysconf(_SC_PAGESIZE);
  char line[16];
  char *region = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) return 1;
  madvise(region, pages * page, MADV_NOHUGEPAGE);
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("ready\\n");
  if (!fgets(line, sizeof line, stdin)) return 1;
  long before = faults();
  for (long i = 0; i < pages; i++) region[i * page] = 1;
  long after = faults();
  printf("faults %ld\\n", after - before);
  if (!fgets(line, sizeof line, stdin)) return 1;
  return 0;
}
`;

async function podFaults(agent: AgentProcess, pod: Pod, access?: string): Promise<number> {
  return sumSamples(parseExposition(await agent.metrics()), family, { cgroup: pod.cgroupPath, ...(access ? { access } : {}) });
}

t.test('page faults per pod: a workload touching N fresh pages', async (t) => {
  if (!requirePrivileges(t, 'custom probe on the page_fault_user raw tracepoint')) return;
  const binary = await compileWorkload(t, 'touch-pages', toucher);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const pod = await net.addPod();
  const other = await net.addPod({ layout: 'plain' });
  // Beside it, two broken probes: a spec mistake, and a spec whose key field does not fit the loaded map.
  const specPath = path.join(projectRoot, 'build/custom-probes/pagefaults.yaml');
  const example = parseYaml(readFileSync(specPath, 'utf8')) as { maps: Array<{ key: Array<Record<string, unknown>>; metrics: Array<Record<string, unknown>> }> };
  const broken = mkdtempSync(path.join(os.tmpdir(), 'pp-probes-'));
  t.teardown(() => rmSync(broken, { recursive: true, force: true }));
  const object = path.join(projectRoot, 'build/custom-probes/pagefaults.bpf.o');
  const variant = (name: string, key: Array<Record<string, unknown>>) => JSON.stringify({ ...example, name, object, maps: [{ ...example.maps[0], key, metrics: [{ ...example.maps[0]!.metrics[0], name: `probepilot_custom_${name}_total` }] }] });
  writeFileSync(path.join(broken, 'typo.yaml'), variant('typo', [{ name: 'cgroup', offset: 0, decoder: 'cgroupid' }]));
  writeFileSync(path.join(broken, 'misfit.yaml'), variant('misfit', [{ name: 'cgroup', offset: 0, decoder: 'cgroup' }, { name: 'access', offset: 12, size: 8, decoder: 'uint' }]));
  // And a good one the config leaves off.
  writeFileSync(path.join(broken, 'spare.yaml'), variant('spare', example.maps[0]!.key));
  const agent = await startAgent({
    env: { ...onlyCollectors(), PROBEPILOT_CUSTOM_PROBES_PATHS: `${specPath},${broken}`, PROBEPILOT_CUSTOM_PROBES_DISABLED: 'spare' },
  });
  t.teardown(() => agent.stop());
  const exposition = await agent.metrics();
  t.match(exposition, /probepilot_collector_up\{collector="custom_pagefaults",reason=""\} 1/, 'the probe loaded from its YAML and is up');
  t.match(
    exposition,
    /probepilot_collector_up\{collector="custom_typo",reason="probe typo: map \\"faults\\": key field \\"cgroup\\": unknown decoder \\"cgroupid\\"; allowed: cgroup, uint, int, enum, ipv4, ipv6, ksym, string"\} 0/,
    'a spec mistake: that probe is down with the map, field and allowed decoders as its reason',
  );
  t.match(
    exposition,
    /probepilot_collector_up\{collector="custom_misfit",reason="cannot load [^"]*pagefaults\.bpf\.o: probe misfit: map \\"faults\\": key field \\"access\\": bytes 12\.\.19 end beyond the map's 16-byte key"\} 0/,
    'a layout that does not fit the loaded map: that probe is down, naming the map and field',
  );
  t.match(exposition, /probepilot_collector_up\{collector="custom_spare",reason="disabled in config"\} 0/, 'customProbes.disabled leaves a probe off');
  t.same(checkExposition(exposition), [], 'the exposition is valid with the broken probes beside the working one (no family twice)');
  const logged = agent.logs.filter((l) => l.msg === 'collector unavailable; the others keep running').map((l) => String(l.collector));
  t.same(logged.sort(), ['custom_misfit', 'custom_typo'], 'each broken probe logged with its reason; the agent runs on');

  const child = pod.run(binary, [String(pages)]);
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const lines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  await waitFor(() => lines.includes('ready'), { timeoutMs: 10_000, what: 'the workload to map its region' });
  const before = { all: await podFaults(agent, pod), write: await podFaults(agent, pod, 'write'), other: await podFaults(agent, other) };
  child.stdin!.write('go\n');
  const reported = await waitFor(() => lines.find((l) => l.startsWith('faults ')), { timeoutMs: 30_000, what: 'the workload to touch its pages' });
  const rusage = Number(reported.split(' ')[1]);
  const write = (await podFaults(agent, pod, 'write')) - before.write;
  const all = (await podFaults(agent, pod)) - before.all;
  child.stdin!.write('exit\n');

  t.ok(rusage >= pages, `the workload's own getrusage counts ${rusage} faults for ${pages} pages`);
  t.ok(write >= pages, `write faults exported for the pod: ${write} ≥ ${pages} pages`);
  // The window between the two scrapes holds the loop, a printf and a read: at most 1 % + 50 more than the loop's faults.
  const bound = Math.ceil(rusage * 1.01) + 50;
  t.ok(all <= bound, `all faults exported for the pod (${all}) within 1 % + 50 of getrusage's ${rusage} (≤ ${bound})`);
  t.ok(write >= rusage * 0.99, `write faults ${write} are ≥ 99 % of getrusage's ${rusage}`);
  t.ok((await podFaults(agent, other)) - before.other < 50, 'the idle pod next to it gets none of them');

  // Like any collector, at run time: a fixed spec is read again when its probe is disabled and enabled.
  const put = async (name: string, enabled: boolean) => {
    const res = await fetch(`${agent.url}/api/v1/collectors/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ enabled }) });
    return (await res.json()) as { enabled: boolean; up: boolean; reason: string };
  };
  t.match(await put('custom_pagefaults', false), { enabled: false, up: false, reason: 'disabled through the API' }, 'a custom probe disabled through the API');
  t.notMatch(await agent.metrics(), /^probepilot_custom_page_faults_total\{/m, 'its series leave /metrics');
  writeFileSync(path.join(broken, 'misfit.yaml'), variant('misfit', [{ name: 'cgroup', offset: 0, decoder: 'cgroup' }, { name: 'access', offset: 8, size: 4, decoder: 'uint' }]));
  await put('custom_misfit', false);
  t.match(await put('custom_misfit', true), { enabled: true, up: true, reason: '' }, 'the misfit spec, fixed on disk, loads when enabled again');
  t.match(await agent.metrics(), /probepilot_collector_up\{collector="custom_misfit",reason=""\} 1/, 'and reports up');
});
