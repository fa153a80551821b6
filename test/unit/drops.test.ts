// Drop reasons named from the kernel's enum, the key layout of
// bpf/drops.bpf.c, and the collector against a fake BPF object: unknown
// reason numbers fold into one bounded `unknown` series, socket-less drops
// go to the workload of their network namespace, and a kernel without drop
// reasons makes the collector unavailable with the reason.
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BpfObject, MapDump, MapInfo, NativeAddon } from '../../src/bpf/addon.js';
import { dropsCollector } from '../../src/collectors/drops.js';
import { decodeDropKey, dropKeySize, DropReasonNames, unknownReason } from '../../src/collectors/drops-decode.js';
import { resolveConfig } from '../../src/config.js';
import { CgroupPaths } from '../../src/identity/cgroups.js';
import { StandaloneIdentity } from '../../src/identity/identity.js';
import { NetnsWorkloads } from '../../src/identity/netns.js';
import { createLogger } from '../../src/log.js';
import type { ScalarSample } from '../../src/metrics/model.js';

/** A slice of enum skb_drop_reason as Linux 6.18's BTF has it. */
const linux618 = {
  SKB_NOT_DROPPED_YET: 0,
  SKB_CONSUMED: 1,
  SKB_DROP_REASON_NOT_SPECIFIED: 2,
  SKB_DROP_REASON_NO_SOCKET: 3,
  SKB_DROP_REASON_NETFILTER_DROP: 12,
  SKB_DROP_REASON_MAX: 128,
  SKB_DROP_REASON_SUBSYS_MASK: 4294901760,
};

t.test('reason names come from the enum, prefix removed; numbers it does not name are unknown', async (t) => {
  const names = new DropReasonNames(linux618);
  t.equal(names.label(3), 'NO_SOCKET');
  t.equal(names.label(12), 'NETFILTER_DROP');
  t.equal(names.label(2), 'NOT_SPECIFIED');
  t.equal(names.consumed, 1, 'SKB_CONSUMED is what the kernel side excludes');
  t.equal(names.size, 3, 'bounds, masks and non-drop values are not reasons');
  for (const number of [0, 1, 128, 4294901760, 0x10001, 999]) t.equal(names.label(number), unknownReason, `${number} is ${unknownReason}`);
  // Linux 5.17: no SKB_CONSUMED, and the same name has another number.
  const linux517 = new DropReasonNames({ SKB_DROP_REASON_NOT_SPECIFIED: 0, SKB_DROP_REASON_NO_SOCKET: 1, SKB_DROP_REASON_MAX: 6 });
  t.equal(linux517.consumed, undefined);
  t.equal(linux517.label(1), 'NO_SOCKET', 'numbers follow the running kernel, names stay');
  t.equal(new DropReasonNames({ SKB_DROP_REASON_HUGE: 2n ** 60n }).size, 0, 'a 64-bit value is no reason number');
  t.equal(new DropReasonNames({ 'SKB_DROP_REASON_BAD\0NAME': 5 }).label(5), 'BAD\ufffdNAME', 'names are sanitized label values (a NUL becomes U+FFFD)');
});

t.test('drop key layout: u64 cgroup id, u32 netns inode, u32 reason', async (t) => {
  const key = Buffer.alloc(dropKeySize);
  key.writeBigUInt64LE(12345678901234n, 0);
  key.writeUInt32LE(4026532001, 8);
  key.writeUInt32LE(12, 12);
  t.same(decodeDropKey(key), { cgroupId: 12345678901234n, netnsInode: 4026532001, reason: 12 });
  t.throws(() => decodeDropKey(Buffer.alloc(12)), /12 bytes, expected 16/);
});

const cpus = 2;

interface Entry {
  cgroupId: bigint;
  netnsInode: number;
  reason: number;
  perCpu: [number, number];
}

class FakeObject {
  entries: Entry[] = [];
  consts = new Map<string, Buffer>();
  maxEntries = new Map<string, number>();
  setConst(name: string, value: Buffer): void {
    this.consts.set(name, value);
  }
  setMapMaxEntries(map: string, entries: number): void {
    this.maxEntries.set(map, entries);
  }
  load(): void {}
  close(): void {}
  maps(): MapInfo[] {
    return [{ name: 'drop_counts', type: 5, keySize: dropKeySize, valueSize: 8, maxEntries: 16384, perCpu: true, valueStride: 8, flags: 0, internal: false, id: 0 }];
  }
  programs() {
    return [];
  }
  lookup(): Buffer | null {
    return null;
  }
  attachTracepoint(): number {
    return 1;
  }
  detach(): void {}
  deleteKeys(): number {
    return 0;
  }
  async readMap(): Promise<MapDump> {
    const keys = Buffer.alloc(this.entries.length * dropKeySize);
    const values = Buffer.alloc(this.entries.length * 8 * cpus);
    this.entries.forEach((e, i) => {
      keys.writeBigUInt64LE(e.cgroupId, i * dropKeySize);
      keys.writeUInt32LE(e.netnsInode, i * dropKeySize + 8);
      keys.writeUInt32LE(e.reason, i * dropKeySize + 12);
      e.perCpu.forEach((count, cpu) => values.writeBigUInt64LE(BigInt(count), (i * cpus + cpu) * 8));
    });
    return { count: this.entries.length, keySize: dropKeySize, valueSize: 8 * cpus, keys, values };
  }
}

const podNetns = 4026532001;

function setup(t: Test, enumerators: Record<string, number> | null) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-drops-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const cgroupRoot = path.join(dir, 'cgroup');
  mkdirSync(path.join(cgroupRoot, 'app.service'), { recursive: true });
  // A fake /proc: the agent in the host namespace, one process of /pod-a in another.
  const proc = path.join(dir, 'proc');
  for (const [pid, inode, cgroup] of [['self', 4026531840, '/'], ['100', podNetns, '/pod-a']] as const) {
    mkdirSync(path.join(proc, pid, 'ns'), { recursive: true });
    symlinkSync(`net:[${inode}]`, path.join(proc, pid, 'ns/net'));
    writeFileSync(path.join(proc, pid, 'cgroup'), `0::${cgroup}\n`);
  }
  const fake = new FakeObject();
  const addon = {
    possibleCpus: () => cpus,
    BpfObject: function () {
      return fake;
    },
    btfEnum: (name: string) => (name === 'skb_drop_reason' ? enumerators : null),
  } as unknown as NativeAddon;
  const identity = new StandaloneIdentity(
    new CgroupPaths(cgroupRoot, { minRefreshIntervalMs: 0 }),
    new NetnsWorkloads(() => -1, { procRoot: proc, minRefreshIntervalMs: 0 }),
  );
  const config = resolveConfig({ file: { pins: { enabled: false }, collectors: { drops: { maxEntries: 2048 } } } });
  const collector = dropsCollector({ config, log: createLogger('silent'), addon, identity });
  const appId = statSync(path.join(cgroupRoot, 'app.service'), { bigint: true }).ino;
  return { fake, collector, appId };
}

t.test('the collector names reasons, folds unknown numbers into one series, and attributes by socket cgroup or namespace', async (t) => {
  const { fake, collector, appId } = setup(t, linux618);
  await collector.start();
  t.same(fake.consts.get('consumed_reason'), Buffer.from([1, 0, 0, 0]), "SKB_CONSUMED's number from BTF is excluded in the kernel");
  t.equal(fake.maxEntries.get('drop_counts'), 2048, 'map sized from collectors.drops.maxEntries');
  t.same(collector.families.map((f) => [f.name, f.labelNames]), [['probepilot_packet_drops_total', ['cgroup', 'reason']]]);
  fake.entries = [
    { cgroupId: appId, netnsInode: 0, reason: 12, perCpu: [4, 1] },
    { cgroupId: 0n, netnsInode: podNetns, reason: 3, perCpu: [7, 3] },
    { cgroupId: 0n, netnsInode: podNetns, reason: 500, perCpu: [1, 0] },
    { cgroupId: 0n, netnsInode: podNetns, reason: 0x20001, perCpu: [0, 2] },
    { cgroupId: 0n, netnsInode: 4026531840, reason: 3, perCpu: [5, 0] },
    { cgroupId: 0n, netnsInode: 0, reason: 2, perCpu: [1, 1] },
  ];
  const families = await collector.collect();
  const drops = families[0]!.samples.map((s) => [s.labels.cgroup, s.labels.reason, (s as ScalarSample).value]);
  t.same(drops, [
    ['/app.service', 'NETFILTER_DROP', 5],
    ['/pod-a', 'NO_SOCKET', 10],
    ['/pod-a', 'unknown', 3],
    ['/', 'NO_SOCKET', 5],
    ['/', 'NOT_SPECIFIED', 2],
  ], 'socket cgroup; namespace → its workload; unnamed numbers sum into one unknown series; the agent’s own namespace and none are the node');
  t.equal(collector.health().eventsProcessed, 25);
  await collector.stop();
});

t.test('a kernel without drop reasons: the collector is unavailable, with why', async (t) => {
  const { collector } = setup(t, null);
  await t.rejects(collector.start(), { name: 'CollectorUnavailableError', reason: /no enum skb_drop_reason .*Linux >= 5\.17/ });
});
