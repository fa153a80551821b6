// Reloading the configuration of a running agent (POST /api/v1/config/reload
// and SIGHUP): changed interface patterns attach and detach in place, a
// collector can be enabled, a collector setting restarts only that collector,
// other keys are reported as needing a restart, and an invalid file is
// refused with the key named while the agent keeps its configuration.
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent, type AgentProcess } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { waitFor } from '../helpers/wait.js';
import type { AgentStatus } from '../../src/api/service.js';

interface Interface {
  name: string;
  mode: string;
}

async function status(agent: AgentProcess): Promise<AgentStatus> {
  return (await (await fetch(`${agent.url}/api/v1/status`)).json()) as AgentStatus;
}

async function interfaces(agent: AgentProcess): Promise<string[]> {
  const network = (await status(agent)).collectors.find((c) => c.name === 'network');
  return ((network?.details?.interfaces as Interface[] | undefined) ?? []).map((i) => i.name).sort();
}

async function reload(agent: AgentProcess): Promise<{ status: number; body: { applied?: string[]; restartRequired?: string[]; error?: string; message?: string } }> {
  const res = await fetch(`${agent.url}/api/v1/config/reload`, { method: 'POST' });
  return { status: res.status, body: (await res.json()) as { applied?: string[]; restartRequired?: string[] } };
}

t.test('a running agent takes a new configuration, or refuses it and keeps its own', async (t) => {
  if (!requirePrivileges(t, 'reloading the network collector')) return;
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const a = await net.addPod();
  const b = await net.addPod();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-reload-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'config.json');
  const only = (enabled: string[]) => Object.fromEntries(['sched', 'syscalls', 'tcp', 'block', 'drops', 'process', 'gpu'].map((n) => [n, { enabled: enabled.includes(n) }]));
  const write = (config: object) => writeFileSync(file, JSON.stringify(config));
  const network = (include: string[], extra: object = {}) => ({ collectors: { ...only([]), network: { interfaces: { include }, ...extra } } });
  write(network([`pp${net.runId}h*`]));
  const agent = await startAgent({ args: ['--config', file] });
  t.teardown(() => agent.stop());

  t.same(await interfaces(agent), [a.hostVeth, b.hostVeth].sort(), 'both pods\' veths at start');
  const programsBefore = (await status(agent)).collectors.find((c) => c.name === 'network')!.programs.map((p) => p.id);

  write(network([a.hostVeth]));
  let res = await reload(agent);
  t.same([res.status, res.body.applied, res.body.restartRequired], [200, ['collectors.network.interfaces.include'], []], 'the changed pattern is applied');
  t.same(await interfaces(agent), [a.hostVeth], 'b\'s veth is detached at once');
  t.same((await status(agent)).collectors.find((c) => c.name === 'network')!.programs.map((p) => p.id), programsBefore, 'in place: the same programs, counters kept');

  write({ ...network([a.hostVeth]), collectors: { ...network([a.hostVeth]).collectors, process: { enabled: true } } });
  res = await reload(agent);
  t.same(res.body.applied, ['collectors.process.enabled'], 'a collector enabled');
  t.equal((await status(agent)).collectors.find((c) => c.name === 'process')?.up, true, 'and running');

  write({ ...network([a.hostVeth], { maxEntries: 131072 }), collectors: { ...network([a.hostVeth], { maxEntries: 131072 }).collectors, process: { enabled: true } }, seriesGraceSeconds: 60, otlp: { intervalSeconds: 30 } });
  res = await reload(agent);
  t.same(res.body.applied, ['collectors.network.maxEntries'], 'a map size applies by restarting that collector');
  t.same(res.body.restartRequired, ['seriesGraceSeconds', 'otlp.intervalSeconds'], 'settings outside the collectors need an agent restart');
  const restarted = (await status(agent)).collectors.find((c) => c.name === 'network')!;
  t.ok(restarted.up && restarted.programs.every((p) => !programsBefore.includes(p.id)), 'the network collector runs new programs');
  t.same(await interfaces(agent), [a.hostVeth], 'with the current patterns');
  t.equal(new URL(agent.url).port, String(agent.port), 'still listening where it was');

  write({ collectors: { network: { maxEntries: 12 } } });
  res = await reload(agent);
  t.equal(res.status, 400, 'an invalid file is refused');
  t.match(res.body.message, 'config key "collectors.network.maxEntries": got 12, expected an integer from 1024 to 4194304', 'naming the key and what it allows');
  t.match(res.body.message, 'keeps running on its current configuration');
  t.same(await interfaces(agent), [a.hostVeth], 'nothing changed');

  write({ ...network([`pp${net.runId}h*`], { maxEntries: 131072 }), collectors: { ...network([`pp${net.runId}h*`], { maxEntries: 131072 }).collectors, process: { enabled: true } } });
  agent.child.kill('SIGHUP');
  await waitFor(async () => (await interfaces(agent)).length === 2, { timeoutMs: 10_000, what: 'SIGHUP to reload the patterns' });
  t.ok(agent.logs.some((l) => l.msg === 'configuration reloaded'), 'SIGHUP reloads like the API');
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
