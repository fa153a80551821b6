// Hostile input (#9 item 8): real cgroups named with quotes, backslashes,
// newlines, control characters, bytes that are no UTF-8 and paths far past
// the label length, and pods whose API metadata carries the same plus
// megabytes of text. The exposition must stay valid for our checker, promtool
// and a real Prometheus (which rejects a whole scrape over one bad byte), and
// each workload's calls must be found, exactly, under the label the README
// documents (U+FFFD for what is no text, 256 characters then "…").
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { mkdirSync, rmdirSync } from 'node:fs';
import { cgroup2Root } from '../helpers/cgroups.js';
import path from 'node:path';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { checkExposition, parseExposition, sumSamples, type LabelFilter } from '../helpers/exposition.js';
import { collect } from '../helpers/proc.js';
import { compileWorkload } from '../helpers/workload.js';
import { podObject, startFakeKubeApi } from '../helpers/kube-api.js';
import { promtoolCheckMetrics, startPrometheus } from '../helpers/prometheus.js';
import { waitFor } from '../helpers/wait.js';

const ptraceSource = `
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  for (long i = 0; i < n; i++) syscall(SYS_ptrace, 0x7fffL, 0L, 0L, 0L); /* fails with ESRCH, changes nothing */
  return 0;
}
`;

const replacement = '\ufffd';

/** A shell word that evaluates to these exact bytes (printf octal escapes; the x keeps a trailing newline from $(…)). */
function shellBytes(bytes: Buffer): string {
  const octal = [...bytes].map((b) => `\\${b.toString(8).padStart(3, '0')}`).join('');
  return `"$(printf '${octal}x')"`;
}

/** Runs `binary n` inside the cgroup directory named by these bytes: the shell joins it before exec. */
async function runIn(dir: Buffer, binary: string, n: number): Promise<void> {
  const script = `d=${shellBytes(dir)}; d="\${d%x}"; echo $$ > "$d/cgroup.procs" && exec "$0" "$@"`;
  const res = await collect(spawn('sh', ['-c', script, binary, String(n)], { stdio: 'pipe' }));
  if (res.code !== 0) throw new Error(`workload in ${dir.toString('utf8')} exited ${res.code}: ${res.stderr}`);
}

/** Exposition checks every hostile case shares: our checker, promtool, and a real Prometheus scraping it. */
async function checkEverywhere(t: Test, agent: AgentProcess): Promise<void> {
  const text = await agent.metrics();
  t.same(checkExposition(text), [], 'our checker finds nothing: valid UTF-8, escaping, no duplicates');
  const promtool = await promtoolCheckMetrics(text);
  t.ok(promtool.ok, `promtool check metrics is clean: ${promtool.output}`);
}

async function queryPrometheus(t: Test, agent: AgentProcess, expected: ReadonlyArray<{ filter: Record<string, string>; calls: number; what: string }>): Promise<void> {
  const target = `127.0.0.1:${agent.port}`;
  const prometheus = await startPrometheus({ targets: [target], scrapeIntervalSeconds: 1 });
  t.teardown(() => prometheus.stop());
  const [scrape] = await prometheus.waitFor(async () => {
    const targets = await prometheus.targets();
    return targets[0]?.health === 'up' ? targets : undefined;
  }, 30_000, 'a successful scrape');
  t.equal(scrape?.lastError, '', 'Prometheus accepted the whole scrape');
  for (const { filter, calls, what } of expected) {
    // PromQL string literals take the JSON escapes; its lexer refuses a raw U+FFFD (Go's "invalid rune"), not the escape.
    const literal = (v: string) => JSON.stringify(v).replaceAll(replacement, '\\ufffd');
    const selector = Object.entries({ ...filter, syscall: 'ptrace' }).map(([k, v]) => `${k}=${literal(v)}`).join(',');
    const result = await prometheus.query(`sum(probepilot_syscalls_total{${selector}})`);
    t.equal(result[0]?.value, calls, `Prometheus: ${what}: ${calls} calls under its sanitized labels`);
  }
}

t.test('cgroups named with hostile bytes are found, counted exactly and labeled as documented', async (t) => {
  if (!requirePrivileges(t, 'hostile cgroup names on the syscalls collector')) return;
  const binary = await compileWorkload(t, 'hostile-ptrace', ptraceSource);
  const parentName = `pp-hostile-${process.pid}`;
  const parent = path.join(cgroup2Root(), parentName);
  const long = 'L'.repeat(200);
  const cases: Array<{ name: Buffer[]; label: string; what: string }> = [
    { name: [Buffer.from(`q"uo'te"`)], label: `/${parentName}/q"uo'te"`, what: 'quotes' },
    { name: [Buffer.from('back\\slash\\n')], label: `/${parentName}/back\\slash\\n`, what: 'backslashes (and a literal \\n)' },
    { name: [Buffer.from('ctl\x1b[31m\x7f\ttab')], label: `/${parentName}/ctl${replacement}[31m${replacement}${replacement}tab`, what: 'escape, DEL and tab' },
    { name: [Buffer.concat([Buffer.from('cut-'), Buffer.from([0xe2, 0x82]), Buffer.from('-end')])], label: `/${parentName}/cut-${replacement}-end`, what: 'a multi-byte character cut short' },
    { name: [Buffer.concat([Buffer.from('surrogate-'), Buffer.from([0xed, 0xa0, 0x80])])], label: `/${parentName}/surrogate-${replacement.repeat(3)}`, what: 'a UTF-8-encoded lone surrogate' },
    { name: [Buffer.from([0xff, 0xfe, 0x41])], label: `/${parentName}/${replacement}${replacement}A`, what: 'bytes that are never UTF-8' },
    {
      name: [Buffer.from(long), Buffer.from(`${long}\t`), Buffer.from(long)],
      label: `/${parentName}/${long}/${long}${replacement}/${long}`.slice(0, 256) + '…',
      what: 'a path of 600+ characters, a tab inside',
    },
  ];
  mkdirSync(parent);
  // The kernel keeps newlines out of cgroup names (/proc/PID/cgroup is line-based); the pod metadata below carries them.
  t.throws(() => mkdirSync(path.join(parent, 'new\nline')), { code: 'EINVAL' }, 'cgroupfs refuses a newline in a name');
  const dirs = cases.map(({ name }) => {
    let dir = Buffer.from(parent);
    for (const part of name) {
      dir = Buffer.concat([dir, Buffer.from('/'), part]);
      mkdirSync(dir);
    }
    return dir;
  });
  t.teardown(async () => {
    for (const [i, { name }] of cases.entries()) {
      // A cgroup is removable once the kernel has reaped its last process.
      for (let depth = name.length; depth > 0; depth--) {
        const dir = Buffer.concat([Buffer.from(parent), ...name.slice(0, depth).flatMap((part) => [Buffer.from('/'), part])]);
        await waitFor(() => {
          try {
            rmdirSync(dir);
            return true;
          } catch (err) {
            return (err as NodeJS.ErrnoException).code === 'ENOENT';
          }
        }, { timeoutMs: 10_000, what: `removal of hostile cgroup ${i}` });
      }
    }
    rmdirSync(parent);
  });

  const agent = await startAgent({ env: { ...onlyCollectors('syscalls'), PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'ptrace' } });
  t.teardown(() => agent.stop());
  const expected = cases.map((c, i) => ({
    filter: { cgroup: c.label },
    calls: 3_000 + 111 * i,
    what: c.what,
  }));
  for (const [i, dir] of dirs.entries()) await runIn(dir, binary, expected[i]!.calls);

  const families = parseExposition(await agent.metrics());
  for (const { filter, calls, what } of expected) {
    t.equal(sumSamples(families, 'probepilot_syscalls_total', { ...filter, syscall: 'ptrace' }), calls, `${what}: its ${calls} calls under ${JSON.stringify(filter.cgroup)}`);
  }
  const total = expected.reduce((sum, e) => sum + e.calls, 0);
  t.equal(sumSamples(families, 'probepilot_syscalls_total', { cgroup: new RegExp(`^/${parentName}/`), syscall: 'ptrace' }), total, 'nothing of theirs counted elsewhere under the parent');
  t.equal(sumSamples(families, 'probepilot_syscalls_total', { cgroup: '/', syscall: 'ptrace' }), 0, 'none of their calls fell back to the node (an unreadable name would)');
  const longest = Math.max(...families.flatMap((f) => f.samples.map((s) => [...(s.labels.cgroup ?? '')].length)));
  t.ok(longest <= 257, `the longest cgroup label is ${longest} characters (256 and the …)`);
  await checkEverywhere(t, agent);
  await queryPrometheus(t, agent, expected);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});

t.test('pods with hostile metadata from the API server: valid exposition, labels sanitized and cut', async (t) => {
  if (!requirePrivileges(t, 'hostile pod metadata in Kubernetes mode')) return;
  const binary = await compileWorkload(t, 'hostile-ptrace', ptraceSource);
  const { api, kubeconfig } = await startFakeKubeApi(t);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const nodeName = 'test-node';
  const megabytes = 'p'.repeat(3 * 1024 * 1024);
  const cases = [
    {
      meta: { namespace: 'ns-"quoted"\\back', name: megabytes, owner: `wl\n\0\ud800x`, container: 'c\\n"' },
      labels: { namespace: 'ns-"quoted"\\back', pod: `${'p'.repeat(256)}…`, workload: `wl${replacement}${replacement}${replacement}x`, container: 'c\\n"' },
      what: 'quotes, backslashes, 3 MiB pod name, NUL, newline and a lone surrogate in the owner',
    },
    {
      meta: { namespace: `${'x'.repeat(255)}😀`, name: 'café\r\n', owner: '\udc00\ud83d', container: '\u2028sep\u0085' },
      labels: { namespace: `${'x'.repeat(255)}…`, pod: `café${replacement}${replacement}`, workload: `${replacement}${replacement}`, container: '\u2028sep\u0085' },
      what: 'an emoji across the cut, CRLF, reversed surrogates, Unicode separators (kept: they are text)',
    },
  ];
  const expected = [];
  for (const [i, c] of cases.entries()) {
    const pod = await net.addPod({ layout: 'systemd' });
    const object = podObject(pod, { namespace: c.meta.namespace, name: c.meta.name, owner: { kind: 'StatefulSet', name: c.meta.owner }, node: nodeName });
    object.metadata.labels = { app: megabytes.slice(0, 1024 * 1024), 'quote"key': 'v\n"\\' };
    (object.status as { containerStatuses: Array<{ name: string }> }).containerStatuses[0]!.name = c.meta.container;
    api.upsertPod(object);
    expected.push({ pod, filter: { ...c.labels, workload_kind: 'StatefulSet' } as Record<string, string>, calls: 5_000 + 222 * i, what: c.what });
  }
  const agent = await startAgent({
    env: {
      ...onlyCollectors('syscalls'),
      PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'ptrace',
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: nodeName,
    },
  });
  t.teardown(() => agent.stop());
  for (const { pod, calls } of expected) t.equal((await pod.exec(binary, [String(calls)])).code, 0, `${pod.name}: ${calls} calls made`);

  const families = parseExposition(await agent.metrics());
  for (const { filter, calls, what } of expected) {
    t.equal(sumSamples(families, 'probepilot_syscalls_total', { ...filter, syscall: 'ptrace' } as LabelFilter), calls, `${what}: all ${calls} calls under the sanitized labels`);
  }
  t.equal(sumSamples(families, 'probepilot_syscalls_total', { pod: 'unknown', syscall: 'ptrace' }), 0, 'no pod fell back to unknown');
  const longest = Math.max(...families.flatMap((f) => f.samples.flatMap((s) => Object.values(s.labels).map((v) => [...v].length))));
  t.ok(longest <= 257, `the longest label value is ${longest} characters`);
  const size = Buffer.byteLength(await agent.metrics());
  t.ok(size < 1024 * 1024, `megabytes of metadata do not reach the exposition (${size} bytes)`);
  await checkEverywhere(t, agent);
  await queryPrometheus(t, agent, expected);
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
