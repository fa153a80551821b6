// The generic per-cgroup map collector against a fake BPF object: what the
// kernel would leave in a per-CPU map, and what must come out.
import t, { type Test } from 'tap';
import { mkdtempSync, mkdirSync, rmSync, rmdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BpfObject, MapDump, MapInfo, NativeAddon } from '../../src/bpf/addon.js';
import { TracepointCollector, type KeyWorkloadResolver, type TracepointCollectorSpec } from '../../src/collectors/tracepoint.js';
import { resolveConfig } from '../../src/config.js';
import { CgroupPaths } from '../../src/identity/cgroups.js';
import { NetnsWorkloads } from '../../src/identity/netns.js';
import { StandaloneIdentity } from '../../src/identity/identity.js';
import { createLogger } from '../../src/log.js';
import { histogramSize, histogramSlots } from '../../src/metrics/histogram.js';
import type { MetricFamily, ScalarSample } from '../../src/metrics/model.js';

const cpus = 2;
/** Value: u64 calls, u64 errors, struct pp_hist latency. */
const valueSize = 16 + histogramSize;
const keySize = 16; // u64 cgroup id, u32 op, u32 pad

interface Entry {
  cgroupId: bigint;
  op: number;
  /** Per CPU: [calls, errors, latency slot 12 count, latency sum ns]. */
  perCpu: Array<[number, number, number, number]>;
}

class FakeObject {
  entries: Entry[] = [];
  deleted: bigint[] = [];
  attached: string[] = [];
  load(): void {}
  close(): void {}
  maps(): MapInfo[] {
    return [{ name: 'calls', type: 5, keySize, valueSize, maxEntries: 1024, perCpu: true, valueStride: valueSize, flags: 0, internal: false, id: 0 }];
  }
  programs() {
    return [];
  }
  lookup(): Buffer | null {
    return null;
  }
  attachTracepoint(program: string, category: string, name: string): number {
    if (name === 'missing') throw Object.assign(new Error('No such file or directory'), { errno: 2, code: 'ENOENT' });
    this.attached.push(`${program}@${category}:${name}`);
    return this.attached.length;
  }
  detach(): void {}
  deleteKeys(_map: string, keys: Buffer): number {
    for (let i = 0; i < keys.length; i += keySize) {
      const id = keys.readBigUInt64LE(i);
      const op = keys.readUInt32LE(i + 8);
      this.deleted.push(id);
      this.entries = this.entries.filter((e) => e.cgroupId !== id || e.op !== op);
    }
    return keys.length / keySize;
  }
  async readMap(): Promise<MapDump> {
    const keys = Buffer.alloc(this.entries.length * keySize);
    const values = Buffer.alloc(this.entries.length * valueSize * cpus);
    this.entries.forEach((e, i) => {
      keys.writeBigUInt64LE(e.cgroupId, i * keySize);
      keys.writeUInt32LE(e.op, i * keySize + 8);
      e.perCpu.forEach(([calls, errors, slot12, sum], cpu) => {
        const base = (i * cpus + cpu) * valueSize;
        values.writeBigUInt64LE(BigInt(calls), base);
        values.writeBigUInt64LE(BigInt(errors), base + 8);
        values.writeBigUInt64LE(BigInt(slot12), base + 16 + 12 * 8);
        values.writeBigUInt64LE(BigInt(sum), base + 16 + histogramSlots * 8);
      });
    });
    return { count: this.entries.length, keySize, valueSize: valueSize * cpus, keys, values };
  }
}

function setup(t: Test, attach: TracepointCollectorSpec['attach'], keyWorkload?: KeyWorkloadResolver) {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pp-cgroups-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(path.join(root, 'app.service'));
  const fake = new FakeObject();
  const addon = { possibleCpus: () => cpus, BpfObject: function () { return fake; } } as unknown as NativeAddon;
  const identity = new StandaloneIdentity(new CgroupPaths(root, { minRefreshIntervalMs: 0 }), new NetnsWorkloads(() => -1));
  const spec: TracepointCollectorSpec = {
    name: 'fake',
    object: 'fake.bpf.o',
    scope: 'container',
    attach,
    views: [
      {
        map: 'calls',
        keyLabels: (key) => (key.readUInt32LE(8) === 99 ? undefined : { op: key.readUInt32LE(8) === 0 ? 'read' : 'write' }),
        ...(keyWorkload ? { keyWorkload } : {}),
        fields: [0, 8],
        histograms: [16],
        families: [
          { descriptor: { name: 'fake_calls_total', help: 'h', type: 'counter', labelNames: ['op'] }, value: ([calls]) => calls! },
          { descriptor: { name: 'fake_ok', help: 'h', type: 'gauge', labelNames: ['op'] }, value: ([calls, errors]) => calls! - errors! },
          {
            descriptor: { name: 'fake_outcomes_total', help: 'h', type: 'counter', labelNames: ['op', 'outcome'] },
            split: [
              { labels: { outcome: 'ok' }, value: ([calls, errors]) => calls! - errors! },
              { labels: { outcome: 'error' }, value: ([, errors]) => errors! },
            ],
          },
          { descriptor: { name: 'fake_latency_seconds', help: 'h', type: 'histogram', labelNames: ['op'] }, histogram: 0 },
        ],
      },
    ],
    eventsProcessed: (families) => families.find((f) => f.name === 'fake_calls_total')!.samples.reduce((n, s) => n + ('value' in s ? s.value : 0), 0),
  };
  const collector = new TracepointCollector(spec, { config: resolveConfig({ file: { pins: { enabled: false } } }), log: createLogger('silent'), addon, identity });
  const appId = statSync(path.join(root, 'app.service'), { bigint: true }).ino;
  return { root, fake, collector, appId };
}

const find = (families: MetricFamily[], name: string) => families.find((f) => f.name === name)!;

t.test('per-CPU values are summed and labelled with the workload and the key', async (t) => {
  const { fake, collector, appId } = setup(t, [{ program: 'p', tracepoint: 'raw_syscalls:sys_enter' }]);
  await collector.start();
  t.same(fake.attached, ['p@raw_syscalls:sys_enter']);
  t.same(
    collector.families.map((f) => [f.name, f.labelNames]),
    [
      ['fake_calls_total', ['cgroup', 'op']],
      ['fake_ok', ['cgroup', 'op']],
      ['fake_outcomes_total', ['cgroup', 'op', 'outcome']],
      ['fake_latency_seconds', ['cgroup', 'op']],
    ],
  );
  fake.entries = [
    { cgroupId: appId, op: 0, perCpu: [[10, 1, 4, 20_000], [5, 2, 3, 10_000]] },
    { cgroupId: 0n, op: 1, perCpu: [[7, 0, 0, 0], [0, 0, 0, 0]] },
    { cgroupId: appId, op: 99, perCpu: [[1000, 0, 0, 0], [0, 0, 0, 0]] },
  ];
  const families = await collector.collect();
  const calls = find(families, 'fake_calls_total').samples;
  t.same(calls, [
    { labels: { cgroup: '/app.service', op: 'read' }, value: 15 },
    { labels: { cgroup: '/', op: 'write' }, value: 7 },
  ], 'cgroup id 0 is the node; a key the view skips is not exported');
  t.equal((find(families, 'fake_ok').samples[0] as ScalarSample).value, 12);
  t.same(
    find(families, 'fake_outcomes_total').samples.filter((s) => s.labels.cgroup === '/app.service'),
    [
      { labels: { cgroup: '/app.service', op: 'read', outcome: 'ok' }, value: 12 },
      { labels: { cgroup: '/app.service', op: 'read', outcome: 'error' }, value: 3 },
    ],
    'a split family gives one sample per part, with its labels',
  );
  const latency = find(families, 'fake_latency_seconds');
  if (latency.type !== 'histogram') throw new Error('not a histogram');
  const sample = latency.samples[0]!;
  t.equal(sample.count, 7);
  t.equal(sample.sum, 30_000 / 1e9);
  // slot 12 holds [4096, 8192) ns: the bucket le = 8192 ns
  t.equal(sample.counts[sample.bounds.indexOf(8192 / 1e9)], 7);
  t.equal(collector.health().eventsProcessed, 22);
  await collector.stop();
});

t.test('a cgroup that went away keeps its final counts, and its kernel entries are freed', async (t) => {
  const { root, fake, collector, appId } = setup(t, [{ program: 'p', tracepoint: 'sched:sched_switch' }]);
  await collector.start();
  fake.entries = [{ cgroupId: appId, op: 0, perCpu: [[10, 0, 0, 0], [0, 0, 0, 0]] }];
  await collector.collect();
  // Created first: a test filesystem may hand a freed inode number to the next directory; kernfs cgroup ids are never reused.
  mkdirSync(path.join(root, 'other.service'));
  const otherId = statSync(path.join(root, 'other.service'), { bigint: true }).ino;
  rmdirSync(path.join(root, 'app.service'));
  fake.entries.push({ cgroupId: otherId, op: 0, perCpu: [[1, 0, 0, 0], [0, 0, 0, 0]] });
  // A new id makes the agent walk the tree again, which marks the old one gone.
  await collector.collect();
  const families = await collector.collect();
  t.same(fake.deleted, [appId]);
  t.same(
    find(families, 'fake_calls_total').samples.map((s) => [s.labels.cgroup, (s as ScalarSample).value]),
    [
      ['/app.service', 10],
      ['/other.service', 1],
    ],
    'the retired series keeps its value after its kernel entry is deleted',
  );
  await collector.stop();
});

t.test('a missing tracepoint makes the collector unavailable with the reason; an optional one does not', async (t) => {
  const { collector } = setup(t, [{ program: 'p', tracepoint: 'x:missing' }]);
  await t.rejects(collector.start(), { name: 'CollectorUnavailableError', reason: /tracepoint x:missing/ });
  const optional = setup(t, [
    { program: 'p', tracepoint: 'x:missing', optional: true },
    { program: 'q', tracepoint: 'x:present' },
  ]);
  await optional.collector.start();
  t.same(optional.fake.attached, ['q@x:present']);
  await optional.collector.stop();
});

t.test('a key resolver attributes cgroup-less keys; what it reports gone is retired and forgotten', async (t) => {
  let namespaceGone = false;
  const forgotten: number[] = [];
  // Stands for a key naming a network namespace: op 1 lives in one whose workload is /pod-a.
  const resolver: KeyWorkloadResolver = {
    resolve: (key) => (key.readUInt32LE(8) === 1 ? { path: '/pod-a', gone: namespaceGone } : undefined),
    forget: (key) => forgotten.push(key.readUInt32LE(8)),
  };
  const { fake, collector, appId } = setup(t, [{ program: 'p', tracepoint: 'skb:kfree_skb' }], resolver);
  await collector.start();
  fake.entries = [
    { cgroupId: 0n, op: 1, perCpu: [[3, 0, 0, 0], [1, 0, 0, 0]] },
    { cgroupId: 0n, op: 0, perCpu: [[2, 0, 0, 0], [0, 0, 0, 0]] },
    { cgroupId: appId, op: 1, perCpu: [[5, 0, 0, 0], [0, 0, 0, 0]] },
  ];
  const calls = async () => find(await collector.collect(), 'fake_calls_total').samples.map((s) => [s.labels.cgroup, s.labels.op, (s as ScalarSample).value]);
  t.same(await calls(), [
    ['/pod-a', 'write', 4],
    ['/', 'read', 2],
    ['/app.service', 'write', 5],
  ], 'the resolver names the workload of cgroup id 0 keys; unresolved ones are the node; cgroup ids do not consult it');
  namespaceGone = true;
  t.same(await calls(), [
    ['/pod-a', 'write', 4],
    ['/', 'read', 2],
    ['/app.service', 'write', 5],
  ], 'final counts kept');
  t.same(fake.entries.map((e) => [e.cgroupId, e.op]), [[0n, 0], [appId, 1]], 'only the gone key was deleted from the kernel map');
  t.same(forgotten, [1], 'and forgotten by the resolver');
  await collector.stop();
});
