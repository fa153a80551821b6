// `probepilot explain` against a real Prometheus 2.42 holding six hours of a
// node's series, backfilled with promtool: a CPU contention (checkout waits
// for CPUs while the crunch batch job hogs them), a retransmit storm
// (payments, with drops two minutes later), a DNS failure (catalog, answers
// slowing a minute later), and a noisy but normal workload (search). The
// injected levels and onsets are the oracle. The Insights dashboard's panels
// then run against the same data, its recording rules backfilled too.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { explain, type ExplainResult } from '../../src/insights/explain.js';
import { allPanels, interpolate, loadDashboards } from '../helpers/dashboards.js';
import { projectRoot } from '../helpers/helm.js';
import { bucketAround, buildScenario, type Levels, type ScenarioWorkload } from '../helpers/insights-scenario.js';
import { execCommand } from '../helpers/proc.js';
import { startPrometheus } from '../helpers/prometheus.js';

const node = 'node-a';
const end = Math.floor(Date.now() / 60_000) * 60 - 600;
const start = end - 6 * 3600;
const onsets = { contention: end - 40 * 60, retransmits: end - 30 * 60, dns: end - 25 * 60 };

const calm: Levels = { runqueue: 0.001, syscallErrorRatio: 0.005, retransmitRatio: 0.003, dropsPerSecond: 0.05, dnsErrorRatio: 0.005, dnsLatency: 0.002, blockLatency: 0.0005 };
const after = (onset: number, t: number) => start + t >= onset;
const workloads: ScenarioWorkload[] = [
  { namespace: 'shop', workload: 'checkout', noise: 0.1, levels: (t) => ({ ...calm, runqueue: after(onsets.contention, t) ? 0.012 : 0.001 }) },
  { namespace: 'batch', workload: 'crunch', noise: 0.1, levels: (t) => ({ ...calm, runqueue: after(onsets.contention, t) ? 0.006 : 0.001, gpuUtilization: 0.7 }) },
  {
    namespace: 'shop',
    workload: 'payments',
    noise: 0.1,
    levels: (t) => ({ ...calm, retransmitRatio: after(onsets.retransmits, t) ? 0.12 : 0.003, dropsPerSecond: after(onsets.retransmits + 120, t) ? 3 : 0.05 }),
  },
  {
    namespace: 'shop',
    workload: 'catalog',
    noise: 0.1,
    levels: (t) => ({ ...calm, dnsErrorRatio: after(onsets.dns, t) ? 0.4 : 0.005, dnsLatency: after(onsets.dns + 60, t) ? 0.03 : 0.002 }),
  },
  // Noisy: every level swings by half an order of magnitude, in slow waves and bursts, but nothing changes.
  {
    namespace: 'shop',
    workload: 'search',
    noise: 0.5,
    levels: (t) => {
      const wave = 1 + 0.5 * Math.sin((2 * Math.PI * t) / 3600);
      return { runqueue: 0.002 * wave, syscallErrorRatio: 0.02 * wave, retransmitRatio: 0.01 * wave, dropsPerSecond: 0.5 * wave, dnsErrorRatio: 0.02 * wave, dnsLatency: 0.004 * wave, blockLatency: 0.001 * wave };
    },
  },
];

const scenario = buildScenario(workloads, { start, end, node });
const rulesFile = path.join(projectRoot, 'charts/probepilot/files/prometheus-rules.yaml');
const cli = path.join(projectRoot, 'dist/src/cli.js');

t.test('explain names the signal that changed first, its onset and its size, and nothing for the normal workload', async (t) => {
  const prometheus = await startPrometheus({ targets: [], openMetrics: scenario.openMetrics });
  t.teardown(() => prometheus.stop());
  const run = (target: string, at = scenario.end): Promise<ExplainResult> => {
    const [namespace = '', workload = ''] = target.split('/');
    return explain({ prometheus: prometheus.url, namespace, workload, at, windowSeconds: 3600 });
  };
  // A 5m rate crosses 3σ within a minute or two of a 40-fold step; the tolerance is 3 minutes after the injected onset.
  const onsetWithin = (t: Test, onset: string, injected: number, what: string) => {
    const seconds = Date.parse(onset) / 1000;
    t.ok(seconds >= injected - 60 && seconds <= injected + 180, `${what}: onset ${onset} within [−1, +3] minutes of the injected ${new Date(injected * 1000).toISOString()}`);
  };

  await t.test('CPU contention', async (t) => {
    const result = await run('shop/checkout');
    const [first] = result.findings;
    t.equal(first?.signal, 'probepilot_runqueue_latency_seconds', `run-queue latency first: ${result.summary}`);
    if (!first) return;
    onsetWithin(t, first.onset, onsets.contention, 'run-queue');
    const [low, high] = bucketAround(0.012);
    const present = first.evidence[0]!.value!;
    t.ok(present > low && present <= high, `present p99 ${present} s in the injected 12 ms tail's bucket (${low}, ${high}]`);
    t.ok(first.score >= 3, `score ${first.score} ≥ 3`);
    t.match(first.summary, /1 of 4 other workloads on node node-a changed with it \(batch\/crunch\)/, 'the neighbour that hogs the CPUs rose with it');
    t.match(first.summary, /network, DNS and disk stayed normal|syscalls, network, DNS, disk/, 'the other areas stayed normal');
    t.same(result.findings.map((f) => f.signal), ['probepilot_runqueue_latency_seconds'], 'nothing else changed');
  });

  await t.test('retransmit storm', async (t) => {
    const result = await run('shop/payments');
    t.same(result.findings.map((f) => f.signal), ['probepilot_tcp_retransmits_total', 'probepilot_packet_drops_total'], 'retransmits first, the drops that followed second');
    const [retransmits, drops] = result.findings;
    if (!retransmits || !drops) return;
    onsetWithin(t, retransmits.onset, onsets.retransmits, 'retransmits');
    onsetWithin(t, drops.onset, onsets.retransmits + 120, 'drops');
    const ratio = retransmits.evidence[0]!.value!;
    t.ok(Math.abs(ratio - 0.12) <= 0.012, `retransmit ratio ${ratio} = the injected 12 % ± 10 % (noise)`);
    t.ok(Math.abs(retransmits.evidence[1]!.value! - 0.003) <= 0.0006, `baseline ${retransmits.evidence[1]!.value} = the injected 0.3 % ± 20 %`);
    t.match(retransmits.summary, /together with packet drops \(\d\d:\d\d UTC\), which followed it/, 'correlated with the drops that came after');
    t.match(retransmits.summary, /the other 4 workloads on node node-a stayed normal/);
  });

  await t.test('DNS failure', async (t) => {
    const result = await run('shop/catalog');
    t.same(result.findings.map((f) => f.signal), ['probepilot_dns_responses_total', 'probepilot_dns_latency_seconds'], 'DNS errors first, the slower answers second');
    const [errors] = result.findings;
    if (!errors) return;
    onsetWithin(t, errors.onset, onsets.dns, 'DNS errors');
    const ratio = errors.evidence[0]!.value!;
    t.ok(Math.abs(ratio - 0.4) <= 0.04, `DNS error ratio ${ratio} = the injected 40 % ± 10 %`);
    t.match(errors.summary, /^DNS error ratio rose \d+× \(0\.\d+ % → \d+\.\d %\) at \d\d:\d\d UTC/, 'a plain sentence with the change and its time');
  });

  await t.test('noisy but normal', async (t) => {
    const result = await run('shop/search');
    t.same(result.findings, [], 'no findings');
    t.match(result.summary, /^Nothing abnormal for shop\/search in the hour before/, result.summary);
  });

  await t.test('--at: before the contention began there was nothing to find', async (t) => {
    const result = await run('shop/checkout', onsets.contention - 60);
    t.same(result.findings, [], result.summary);
    t.equal(result.target.at, new Date((onsets.contention - 60) * 1000).toISOString().replace('.000Z', 'Z'));
  });

  await t.test('the CLI: JSON as documented, text with evidence, and errors that name the flag', async (t) => {
    const at = new Date(scenario.end * 1000).toISOString().replace('.000Z', 'Z');
    const json = await execCommand(process.execPath, [cli, 'explain', 'shop/payments', '--prometheus', prometheus.url, '--at', at, '-o', 'json']);
    t.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout) as ExplainResult;
    t.same(Object.keys(parsed.findings[0] ?? {}), ['signal', 'score', 'onset', 'summary', 'evidence']);
    t.match(parsed, { target: { namespace: 'shop', workload: 'payments', nodes: [node], at, window: '3600s' }, findings: [{ signal: 'probepilot_tcp_retransmits_total' }] });
    const text = await execCommand(process.execPath, [cli, 'explain', 'shop/payments', '--prometheus', prometheus.url, '--at', at, '--window', '1h']);
    t.equal(text.code, 0, text.stderr);
    t.match(text.stdout, /^shop\/payments on node-a, 3600s before .*:\n1\. \[score [\d.]+\] TCP retransmit ratio rose/);
    t.match(text.stdout, /probepilot_tcp_retransmits_total\{namespace="shop", workload="payments"\}/, 'the evidence carries its queries');
    process.stdout.write(`# explain example:\n${text.stdout.split('\n').map((l) => `# ${l}`).join('\n')}\n`);
    const badWindow = await execCommand(process.execPath, [cli, 'explain', 'shop/payments', '--prometheus', prometheus.url, '--window', '5x']);
    t.equal(badWindow.code, 1);
    t.match(badWindow.stderr, /--window: expected a duration such as 30m/);
    const badAt = await execCommand(process.execPath, [cli, 'explain', 'shop/payments', '--prometheus', prometheus.url, '--at', 'yesterday']);
    t.match(badAt.stderr, /--at: expected an RFC 3339 time/);
    const unknown = await execCommand(process.execPath, [cli, 'explain', 'shop/nope', '--prometheus', prometheus.url, '--at', at]);
    t.match(unknown.stderr, /Prometheus has no series of shop\/nope/);
  });
});


t.test('the Insights dashboard shows scores and forecasts from the backfilled recording rules', async (t) => {
  // Recording rules built on other recording rules need their inputs first: two passes.
  const blocks: string[] = [];
  for (let pass = 0; pass < 2; pass++) {
    const prometheus = await startPrometheus({ targets: [], openMetrics: scenario.openMetrics, blocks });
    const out = mkdtempSync(path.join(os.tmpdir(), 'probepilot-rules-blocks-'));
    t.teardown(() => rmSync(out, { recursive: true, force: true }));
    const res = await execCommand('promtool', ['tsdb', 'create-blocks-from', 'rules', `--start=${scenario.start}`, `--end=${scenario.end}`, `--url=${prometheus.url}`, `--output-dir=${out}`, '--quiet', rulesFile], { timeoutMs: 240_000 });
    await prometheus.stop();
    t.equal(res.code, 0, `promtool tsdb create-blocks-from rules, pass ${pass + 1}`, { output: res.stderr.slice(-4000) });
    if (pass === 1) blocks.length = 0;
    blocks.push(out);
  }
  const prometheus = await startPrometheus({ targets: [], openMetrics: scenario.openMetrics, blocks });
  t.teardown(() => prometheus.stop());
  const file = loadDashboards().find((d) => d.file === 'probepilot-insights.json');
  if (!file) return t.fail('dashboards/probepilot-insights.json exists');
  const values = { datasource: 'prometheus', node, namespace: '(shop|batch)', workload: '(checkout|payments|catalog|search|crunch)', __rate_interval: '5m', __interval: '1m', __range: '1h' };
  for (const panel of allPanels(file.dashboard).filter((p) => p.type !== 'row')) {
    for (const target of panel.targets ?? []) {
      const expr = interpolate(target.expr, values);
      const samples = await prometheus.query(expr, scenario.end);
      const finite = samples.filter((s) => Number.isFinite(s.value)).length;
      t.ok(finite > 0, `"${panel.title}" ${target.refId}: ${finite} finite series at the scenario's end`, { expr });
    }
  }
  // The rule's day includes the present: a step scores high at first and fades as it becomes the usual.
  const z = async (at: number) => (await prometheus.query('workload:probepilot_runqueue_latency_seconds:p99_5m:zscore_1d{namespace="shop", workload="checkout"}', at))[0]?.value ?? NaN;
  const [before, soon] = [await z(onsets.contention - 300), await z(onsets.contention + 600)];
  t.ok(Math.abs(before) < 3, `the recorded run-queue z-score of checkout before the contention is ${before} (within ±3)`);
  t.ok(soon > 3, `10 minutes into the contention it is ${soon} (> 3, as explain found)`);
});
