// The native addon against the real kernel, with independent oracles: the
// number of getppid(2) calls this process makes, veth packet counters in
// sysfs, `tc filter show`, `bpftool prog show`, `ip` and sysfs ifindexes.
// The fixture is test/fixtures/bpf/addon_fixture.bpf.c.
import t, { type Test } from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { bpfObjectDir, loadAddon, type BpfObject, type MapDump } from '../../src/bpf/addon.js';
import { ensureBpffs, ensureTracefs } from '../../src/system/mounts.js';
import { programLoaded, requirePrivileges } from '../helpers/env.js';
import { waitFor } from '../helpers/wait.js';

const fixturePath = path.join(bpfObjectDir, 'addon_fixture.bpf.o');

/** getppid(2) numbers: `process.ppid` makes exactly one such call per read. */
const GETPPID: Partial<Record<NodeJS.Architecture, number>> = { x64: 110, arm64: 173 };

// Fixture layout (see addon_fixture.bpf.c).
const SOURCE_TRACEPOINT = 0;
const SOURCE_RAW_TRACEPOINT = 1;
const SLOT_INGRESS = 0;
const SLOT_EGRESS = 1;
const BPF_MAP_TYPE_PERCPU_HASH = 5;

function u32(value: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(value);
  return buf;
}

function syscallKey(source: number, nr: number): Buffer {
  return Buffer.concat([u32(source), u32(nr)]);
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
}

async function waitUnloaded(ids: number[], what: string): Promise<void> {
  await waitFor(() => ids.every((id) => !programLoaded(id)), { timeoutMs: 10_000, intervalMs: 50, what });
}

/** Sum over CPUs of each per-CPU u64 counter in a dump, keyed "source:nr". */
function perCpuSums(dump: MapDump, stride: number, cpus: number): Map<string, bigint> {
  const sums = new Map<string, bigint>();
  for (let i = 0; i < dump.count; i++) {
    const key = `${dump.keys.readUInt32LE(i * dump.keySize)}:${dump.keys.readUInt32LE(i * dump.keySize + 4)}`;
    let sum = 0n;
    for (let cpu = 0; cpu < cpus; cpu++) sum += dump.values.readBigUInt64LE(i * dump.valueSize + cpu * stride);
    sums.set(key, sum);
  }
  return sums;
}

if (requirePrivileges(t, 'native addon integration tests')) {
  ensureTracefs();
  const bpffs = ensureBpffs().path;
  const addon = loadAddon();
  const cpus = addon.possibleCpus();

  /** A fresh fixture object, closed at the end of the test whatever happens. */
  function openFixture(tt: Test): BpfObject {
    const obj = new addon.BpfObject(fixturePath);
    tt.teardown(() => obj.close());
    return obj;
  }

  function loadFixture(tt: Test): BpfObject {
    const obj = openFixture(tt);
    obj.setConst('target_tgid', u32(process.pid));
    obj.load();
    return obj;
  }

  t.test('possibleCpus matches the kernel', async (t) => {
    const possible = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
    const count = possible
      .split(',')
      .map((range) => range.split('-').map(Number))
      .reduce((n, [first, last]) => n + ((last ?? first ?? 0) - (first ?? 0) + 1), 0);
    t.equal(cpus, count);
  });

  t.test('btfEnum reads kernel enums exactly as bpftool dumps them', async (t) => {
    /** Enumerators of every enum in bpftool's raw dump of the kernel BTF: `[id] ENUM 'name' …` then `\t'NAME' val=N`. */
    const dumped = new Map<string, Map<string, bigint>>();
    let current: Map<string, bigint> | undefined;
    const dump = execFileSync('bpftool', ['btf', 'dump', 'file', '/sys/kernel/btf/vmlinux'], { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, timeout: 60_000 });
    for (const line of dump.split('\n')) {
      const type = /^\[\d+\] ENUM(?:64)? '([^']+)'/.exec(line);
      if (type) {
        current = type[1] === '(anon)' || dumped.has(type[1]!) ? undefined : new Map();
        if (current) dumped.set(type[1]!, current);
        continue;
      }
      const member = /^\t'([^']+)' val=(-?\d+)(?:ULL|LL)?$/.exec(line);
      if (member) current?.set(member[1]!, BigInt(member[2]!));
      else if (!line.startsWith('\t')) current = undefined;
    }
    // Unsigned with a value above 2^31, signed with negative values, and a 64-bit enum beyond 2^53.
    for (const name of ['skb_drop_reason', 'perf_event_state', 'perf_callchain_context']) {
      const expected = dumped.get(name);
      if (!expected) {
        t.fail(`bpftool shows no enum ${name} on this kernel`);
        continue;
      }
      const ours = addon.btfEnum(name);
      t.same(
        Object.entries(ours ?? {}).map(([k, v]) => [k, BigInt(v)]),
        [...expected],
        `enum ${name}: ${expected.size} enumerators, same names, values and order`,
      );
      for (const value of Object.values(ours ?? {})) {
        if (typeof value === 'bigint') t.ok(value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER), `${value} is a bigint only beyond 2^53`);
      }
    }
    t.equal(addon.btfEnum('probepilot_no_such_enum'), null, 'a missing enum is null, not an error');
    t.throws(() => addon.btfEnum(3 as unknown as string), { errno: 22, message: /btfEnum: typeName must be a string/ });
  });

  t.test('errors carry errno, code and the names involved', async (t) => {
    t.throws(() => new addon.BpfObject('/nonexistent/probepilot.bpf.o'), {
      errno: 2,
      code: 'ENOENT',
      message: /nonexistent\/probepilot\.bpf\.o.*No such file or directory/,
    });
    t.throws(() => new addon.BpfObject(42 as unknown as string), TypeError);

    const obj = openFixture(t);
    t.throws(() => obj.setConst('no_such_const', u32(1)), { code: 'ENOENT', message: /no_such_const/ });
    t.throws(() => obj.setConst('target_tgid', Buffer.alloc(8)), {
      errno: 22,
      code: 'EINVAL',
      message: /target_tgid.*4 bytes.*8/,
    });
    t.throws(() => obj.setConst('target_tgid', 'x' as unknown as Buffer), TypeError);
    t.throws(() => obj.setMapMaxEntries('no_such_map', 10), { code: 'ENOENT', message: /no_such_map/ });
    t.throws(() => obj.attachTracepoint('count_syscalls', 'raw_syscalls', 'sys_enter'), {
      code: 'EINVAL',
      message: /not loaded/,
    });

    obj.load();
    t.throws(() => obj.setConst('target_tgid', u32(1)), { code: 'EBUSY', message: /target_tgid.*before load/ });
    t.throws(() => obj.attachTracepoint('no_such_prog', 'raw_syscalls', 'sys_enter'), {
      errno: 2,
      code: 'ENOENT',
      message: /no_such_prog/,
    });
    await t.rejects(obj.readMap('no_such_map'), { code: 'ENOENT', message: /no_such_map/ });
    t.throws(() => obj.lookup('syscalls', Buffer.alloc(3)), { code: 'EINVAL', message: /syscalls.*key is 3 bytes/ });
    t.throws(() => obj.attachTc('tc_ingress', -1, 'ingress', 'tcx'), RangeError);
    t.throws(() => obj.attachTc('tc_ingress', 1, 'sideways' as 'ingress', 'tcx'), TypeError);
    t.throws(() => obj.attachTc('tc_ingress', 1, 'ingress', 'bogus' as 'tcx'), TypeError);
    const missingIfindex = 0x7ffffff0;
    for (const mode of ['tcx', 'clsact'] as const) {
      t.throws(() => obj.attachTc('tc_ingress', missingIfindex, 'ingress', mode), {
        code: 'ENODEV',
        message: new RegExp(`tc_ingress.*ifindex ${missingIfindex}`),
      });
    }
    t.throws(() => obj.detach(999), { code: 'ENOENT', message: /999/ });
    t.throws(() => obj.pinAttachment(999, path.join(bpffs, 'unused')), { code: 'ENOENT' });
    t.throws(() => addon.disableStats(123456), { code: 'EBADF' });
    t.throws(() => addon.netnsId('/nonexistent/ns'), { errno: 2, code: 'ENOENT', message: /nonexistent\/ns/ });
  });

  t.test('load() failure carries the verifier log', async (t) => {
    const obj = openFixture(t);
    obj.setConst('reject_program', Buffer.from([1]));
    const err = (() => {
      try {
        obj.load();
      } catch (e) {
        return e as Error & { errno?: number; code?: string; libbpfMessage?: string };
      }
      return undefined;
    })();
    t.ok(err, 'load() throws');
    t.equal(err?.code, 'EACCES');
    t.match(err?.message, /load BPF object .*addon_fixture\.bpf\.o/);
    t.match(err?.libbpfMessage, /count_syscalls/);
    t.match(err?.libbpfMessage, /invalid mem access/, 'the verifier says what it refused');
    t.ok((err?.libbpfMessage?.length ?? 0) <= 4096, 'only the tail of the log');
    await t.rejects(obj.readMap('syscalls'), { code: 'EINVAL', message: /failed/ });
  });

  t.test('tracepoints count this process’s getppid(2) calls exactly', async (t) => {
    const nr = GETPPID[process.arch];
    if (nr === undefined) {
      t.fail(`no getppid syscall number known for ${process.arch}`);
      return;
    }
    const obj = loadFixture(t);
    const syscalls = obj.maps().find((m) => m.name === 'syscalls');
    t.match(syscalls, { type: BPF_MAP_TYPE_PERCPU_HASH, keySize: 8, valueSize: 8, perCpu: true, valueStride: 8 });
    const stride = syscalls?.valueStride ?? 8;

    const counts = async () => {
      const dump = await obj.readMap('syscalls');
      t.equal(dump.valueSize, stride * cpus, 'per-CPU dumps hold every possible CPU');
      t.equal(dump.keys.length, dump.count * 8);
      t.equal(dump.values.length, dump.count * dump.valueSize);
      const sums = perCpuSums(dump, stride, cpus);
      return (source: number) => sums.get(`${source}:${nr}`) ?? 0n;
    };
    const calls = (n: number) => {
      for (let i = 0; i < n; i++) void process.ppid;
    };

    const N = 10_000;
    const tracepoint = obj.attachTracepoint('count_syscalls', 'raw_syscalls', 'sys_enter');
    const raw = obj.attachRawTracepoint('count_syscalls_raw', 'sys_enter');
    t.not(tracepoint, raw, 'attachment ids are distinct');

    const before = await counts();
    calls(N);
    const after = await counts();
    t.equal(after(SOURCE_TRACEPOINT) - before(SOURCE_TRACEPOINT), BigInt(N), 'tracepoint saw every call');
    t.equal(after(SOURCE_RAW_TRACEPOINT) - before(SOURCE_RAW_TRACEPOINT), BigInt(N), 'raw tracepoint saw every call');
    const lookedUp = obj.lookup('syscalls', syscallKey(SOURCE_TRACEPOINT, nr)) ?? Buffer.alloc(0);
    t.equal(lookedUp.length, stride * cpus, 'lookup returns every CPU’s value');
    let lookedUpSum = 0n;
    for (let cpu = 0; cpu < cpus; cpu++) lookedUpSum += lookedUp.readBigUInt64LE(cpu * stride);
    t.equal(lookedUpSum, after(SOURCE_TRACEPOINT), 'lookup agrees with readMap');

    // detach() of a pinned link unpins it: otherwise the pin would keep it running.
    const rawPin = path.join(bpffs, `probepilot-addon-test-${process.pid}-raw`);
    t.teardown(() => rmSync(rawPin, { force: true }));
    obj.pinAttachment(raw, rawPin);
    t.ok(existsSync(rawPin), 'a raw tracepoint link pins');

    obj.detach(tracepoint);
    obj.detach(raw);
    obj.detach(raw);
    t.notOk(existsSync(rawPin), 'detach removed the pin');
    const detached = await counts();
    calls(N);
    const stillDetached = await counts();
    t.equal(stillDetached(SOURCE_TRACEPOINT), detached(SOURCE_TRACEPOINT), 'nothing counted after detach');
    t.equal(stillDetached(SOURCE_RAW_TRACEPOINT), detached(SOURCE_RAW_TRACEPOINT));

    const auto = obj.attachAuto('count_syscalls');
    calls(N);
    const viaAuto = await counts();
    t.equal(viaAuto(SOURCE_TRACEPOINT) - stillDetached(SOURCE_TRACEPOINT), BigInt(N), 'attachAuto attaches by section name');
    obj.detach(auto);
  });

  t.test('run-time statistics rise while enableStats() is on', async (t) => {
    const obj = loadFixture(t);
    const handle = addon.enableStats();
    let enabled = true;
    t.teardown(() => {
      if (enabled) addon.disableStats(handle);
    });
    obj.attachTracepoint('count_syscalls', 'raw_syscalls', 'sys_enter');
    const stats = () => obj.programs().find((p) => p.name === 'count_syscalls');
    const before = stats();
    t.ok((before?.id ?? 0) > 0, 'loaded programs have kernel ids');
    const N = 5_000;
    for (let i = 0; i < N; i++) void process.ppid;
    const after = stats();
    // The tracepoint fires for every syscall on the machine, ours included.
    t.ok((after?.runCount ?? 0) - (before?.runCount ?? 0) >= N, `runCount rose by at least ${N}`);
    t.ok((after?.runTimeNs ?? 0) > (before?.runTimeNs ?? 0), 'runTimeNs rose');
    addon.disableStats(handle);
    enabled = false;
    t.throws(() => addon.disableStats(handle), { code: 'EBADF' }, 'a handle closes once');
  });

  t.test('maps with thousands of entries read back complete', async (t) => {
    const obj = openFixture(t);
    const entries = 5_000;
    obj.setMapMaxEntries('syscalls', 8192);
    obj.load();
    t.equal(obj.maps().find((m) => m.name === 'syscalls')?.maxEntries, 8192);

    const stride = 8;
    const valueOf = (i: number, cpu: number) => BigInt(i) * 1000n + BigInt(cpu);
    for (let i = 0; i < entries; i++) {
      const value = Buffer.alloc(stride * cpus);
      for (let cpu = 0; cpu < cpus; cpu++) value.writeBigUInt64LE(valueOf(i, cpu), cpu * stride);
      obj.update('syscalls', syscallKey(7, i), value);
    }
    t.throws(() => obj.update('syscalls', syscallKey(7, 0), Buffer.alloc(8 * cpus + 1)), { code: 'EINVAL', message: /value/ });

    const check = (dump: MapDump, expected: Set<number>, label: string) => {
      t.equal(dump.count, expected.size, `${label}: entry count`);
      const seen = new Set<number>();
      let wrong = 0;
      for (let i = 0; i < dump.count; i++) {
        const source = dump.keys.readUInt32LE(i * 8);
        const n = dump.keys.readUInt32LE(i * 8 + 4);
        if (source !== 7 || !expected.has(n) || seen.has(n)) wrong++;
        seen.add(n);
        for (let cpu = 0; cpu < cpus; cpu++) {
          if (dump.values.readBigUInt64LE(i * dump.valueSize + cpu * stride) !== valueOf(n, cpu)) wrong++;
        }
      }
      t.equal(wrong, 0, `${label}: every key once, every per-CPU value right`);
    };

    const all = new Set(Array.from({ length: entries }, (_, i) => i));
    check(await obj.readMap('syscalls'), all, 'default batch');
    check(await obj.readMap('syscalls', 64), all, 'batches of 64');
    check(await obj.readMap('syscalls', 1), all, 'batches of 1 (grown on ENOSPC)');
    t.equal(obj.lookup('syscalls', syscallKey(7, entries + 1)), null, 'lookup of an absent key is null');

    // Every fifth key is absent: deleted ones are counted, absent ones skipped.
    const toDelete: Buffer[] = [];
    const remaining = new Set(all);
    for (let i = 0; i < 1250; i++) {
      if (i % 5 === 4) {
        toDelete.push(syscallKey(7, entries + i));
      } else {
        toDelete.push(syscallKey(7, i));
        remaining.delete(i);
      }
    }
    t.equal(obj.deleteKeys('syscalls', Buffer.concat(toDelete)), 1000);
    t.equal(obj.deleteKeys('syscalls', Buffer.concat(toDelete)), 0, 'nothing left to delete');
    t.throws(() => obj.deleteKeys('syscalls', Buffer.alloc(12)), { code: 'EINVAL', message: /multiple of the key size 8/ });
    check(await obj.readMap('syscalls'), remaining, 'after deleteKeys');

    const array = await obj.readMap('packets');
    t.match(array, { count: 2, keySize: 4, valueSize: 16 }, 'an array dumps every slot');
    t.same([array.keys.readUInt32LE(0), array.keys.readUInt32LE(4)], [0, 1]);
  });

  t.test('maps without batch operations are read key by key', async (t) => {
    const obj = loadFixture(t);
    // LPM trie keys: prefix length, then the address in network order.
    const prefix = (len: number, addr: string) =>
      Buffer.concat([u32(len), Buffer.from(addr.split('.').map(Number))]);
    const prefixes = [prefix(8, '10.0.0.0'), prefix(16, '10.1.0.0'), prefix(24, '192.0.2.0')];
    prefixes.forEach((key, i) => obj.update('prefixes', key, u32(100 + i)));
    const dump = await obj.readMap('prefixes');
    t.equal(dump.count, prefixes.length);
    const found = new Map<string, number>();
    for (let i = 0; i < dump.count; i++) {
      found.set(dump.keys.subarray(i * 8, i * 8 + 8).toString('hex'), dump.values.readUInt32LE(i * 4));
    }
    prefixes.forEach((key, i) => t.equal(found.get(key.toString('hex')), 100 + i));
    t.equal(obj.deleteKeys('prefixes', Buffer.concat([prefixes[0] ?? Buffer.alloc(8), prefix(32, '1.2.3.4')])), 1);
    t.equal((await obj.readMap('prefixes')).count, prefixes.length - 1);
  });

  t.test('readMap is asynchronous and close() during reads is safe', async (t) => {
    const obj = openFixture(t);
    obj.setMapMaxEntries('syscalls', 4096);
    obj.load();
    for (let i = 0; i < 4000; i++) obj.update('syscalls', syscallKey(1, i), Buffer.alloc(8 * cpus, 1));
    const pending = Array.from({ length: 8 }, () => obj.readMap('syscalls', 16));
    t.ok(pending.every((p) => p instanceof Promise), 'readMap returns a Promise');
    obj.close();
    obj.close();
    const results = await Promise.allSettled(pending);
    for (const result of results) {
      t.equal(result.status === 'fulfilled' ? result.value.count : result.reason, 4000, 'reads in flight finish');
    }
    await t.rejects(obj.readMap('syscalls'), { code: 'EBADF', message: /closed/ });
    t.throws(() => obj.maps(), { code: 'EBADF', message: /closed/ });
    t.throws(() => obj.attachAuto('count_syscalls'), { code: 'EBADF', message: /closed/ });
  });

  t.test('an object collected without close() detaches and unloads', async (t) => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const ids = (() => {
      const obj = new addon.BpfObject(fixturePath);
      obj.load();
      obj.attachTracepoint('count_syscalls', 'raw_syscalls', 'sys_enter');
      void obj.readMap('syscalls');
      return obj.programs().map((p) => p.id);
    })();
    t.ok(ids.every(programLoaded));
    await waitFor(
      async () => {
        gc();
        await sleep(20);
        return ids.every((id) => !programLoaded(id));
      },
      { timeoutMs: 15_000, what: 'the programs of a collected object to be unloaded' },
    );
    t.pass('programs unloaded');
  });

  t.test('TC programs on a veth', async (t) => {
    const pair = createVethPair(t);

    t.test('listLinks and netnsId describe the veth', async (t) => {
      const link = addon.listLinks().find((l) => l.name === pair.host);
      t.ok(link, `listLinks() has ${pair.host}`);
      t.equal(link?.ifindex, pair.hostIfindex);
      t.equal(link?.kind, 'veth');
      t.equal(link?.hwType, 1, 'ARPHRD_ETHER');
      t.ok(((link?.flags ?? 0) & 1) === 1, 'IFF_UP');
      t.equal(link?.master, 0);
      t.equal(link?.iflink, pair.peerIfindex, "IFLA_LINK is the peer's ifindex in its namespace");
      t.ok((link?.linkNetnsId ?? -1) >= 0, 'the peer is in another namespace');
      t.equal(addon.netnsId(`/var/run/netns/${pair.ns}`), link?.linkNetnsId);
      t.equal(addon.listLinks().find((l) => l.name === 'lo')?.linkNetnsId, -1);
    });

    t.test('tcx: counts match the veth counters; links append', async (t) => {
      const obj = loadFixture(t);
      const ingress = obj.attachTc('tc_ingress', pair.hostIfindex, 'ingress', 'tcx');
      const egress = obj.attachTc('tc_egress', pair.hostIfindex, 'egress', 'tcx');
      t.same(ingress.mode, 'tcx');
      t.not(ingress.id, egress.id);

      const once = await measure(obj, pair);
      t.equal(once.ingress.packets, once.rx.packets, 'ingress packets = rx_packets');
      t.equal(once.ingress.bytes, once.rx.bytes, 'ingress bytes = rx_bytes');
      t.equal(once.egress.packets, once.tx.packets, 'egress packets = tx_packets');
      t.equal(once.egress.bytes, once.tx.bytes, 'egress bytes = tx_bytes');

      // The kernel refuses one program twice on a hook, so the appended
      // link is the egress counter, which then also counts what comes in.
      const second = obj.attachTc('tc_egress', pair.hostIfindex, 'ingress', 'tcx');
      const both = await measure(obj, pair);
      t.equal(both.ingress.packets, both.rx.packets, 'the first link still runs');
      t.equal(both.egress.packets, both.tx.packets + both.rx.packets, 'the appended link runs too');
      obj.detach(second.id);
      obj.detach(second.id);
      const again = await measure(obj, pair);
      t.equal(again.egress.packets, again.tx.packets, 'detaching one link leaves the others');
      t.equal(again.ingress.packets, again.rx.packets);

      const ids = obj.programs().map((p) => p.id);
      obj.detach(ingress.id);
      obj.detach(egress.id);
      const none = await measure(obj, pair);
      t.equal(none.ingress.packets + none.egress.packets, 0, 'nothing counted after detach');
      obj.close();
      await waitUnloaded(ids, 'programs to leave `bpftool prog show` after close');
      t.pass('programs unloaded after close');
    });

    t.test('clsact: counts match; foreign filters survive attach and detach', async (t) => {
      run('tc', ['qdisc', 'add', 'dev', pair.host, 'clsact']);
      // Someone else's filter (u32 is what this kernel has besides bpf).
      run('tc', ['filter', 'add', 'dev', pair.host, 'ingress', 'pref', '65000', 'protocol', 'all', 'u32', 'match', 'u32', '0', '0']);
      const filters = (hook: string) => run('tc', ['filter', 'show', 'dev', pair.host, hook]);
      const ourFilters = (hook: string) => filters(hook).match(/ bpf .* handle .*name tc_ingress /g)?.length ?? 0;

      const obj = loadFixture(t);
      const ingress = obj.attachTc('tc_ingress', pair.hostIfindex, 'ingress', 'clsact');
      const egress = obj.attachTc('tc_egress', pair.hostIfindex, 'egress', 'clsact');
      t.same(ingress.mode, 'clsact');
      t.match(filters('ingress'), /pref 65000 u32/);
      t.match(filters('ingress'), /bpf .*tc_ingress/);
      t.match(filters('egress'), /bpf .*tc_egress/);

      const once = await measure(obj, pair);
      t.equal(once.ingress.packets, once.rx.packets, 'ingress packets = rx_packets');
      t.equal(once.ingress.bytes, once.rx.bytes, 'ingress bytes = rx_bytes');
      t.equal(once.egress.packets, once.tx.packets, 'egress packets = tx_packets');
      t.equal(once.egress.bytes, once.tx.bytes, 'egress bytes = tx_bytes');

      const second = obj.attachTc('tc_ingress', pair.hostIfindex, 'ingress', 'clsact');
      t.equal(ourFilters('ingress'), 2, 'a second filter, nothing replaced');
      const twice = await measure(obj, pair);
      t.equal(twice.ingress.packets, 2 * twice.rx.packets, 'both filters run');
      obj.detach(second.id);
      obj.detach(second.id);
      t.equal(ourFilters('ingress'), 1, 'detach removes exactly one filter');

      t.throws(() => obj.pinAttachment(ingress.id, path.join(bpffs, `${pair.ns}-clsact`)), {
        code: 'EOPNOTSUPP',
        message: /cannot be pinned/,
      });

      const ids = obj.programs().map((p) => p.id);
      obj.detach(ingress.id);
      obj.detach(egress.id);
      t.match(filters('ingress'), /pref 65000 u32/, 'the foreign filter is still there');
      t.notMatch(filters('ingress'), /bpf/);
      t.notMatch(filters('egress'), /bpf/);
      t.match(run('tc', ['qdisc', 'show', 'dev', pair.host]), /clsact/, 'the clsact qdisc stays');
      obj.close();
      await waitUnloaded(ids, 'programs to leave `bpftool prog show` after close');
      t.pass('programs unloaded after close');
    });

    t.test('a pinned TCX link and pinned map outlive the object', async (t) => {
      const linkPin = path.join(bpffs, `${pair.ns}-link`);
      const mapPin = path.join(bpffs, `${pair.ns}-packets`);
      t.teardown(() => {
        rmSync(linkPin, { force: true });
        rmSync(mapPin, { force: true });
      });

      const first = new addon.BpfObject(fixturePath);
      first.setMapPinPath('packets', mapPin);
      first.load();
      const ingress = first.attachTc('tc_ingress', pair.hostIfindex, 'ingress', 'tcx');
      first.pinAttachment(ingress.id, linkPin);
      t.throws(() => first.pinAttachment(ingress.id, `${linkPin}2`), { code: 'EEXIST' });
      const programId = first.programs().find((p) => p.name === 'tc_ingress')?.id ?? 0;
      first.close();
      t.ok(existsSync(linkPin) && existsSync(mapPin), 'pins stay in bpffs');

      const second = new addon.BpfObject(fixturePath);
      t.teardown(() => second.close());
      second.setMapPinPath('packets', mapPin);
      second.load();
      const counted = await measure(second, pair);
      t.equal(counted.ingress.packets, counted.rx.packets, 'the pinned link kept counting into the reused map');
      t.ok(programLoaded(programId));

      rmSync(linkPin);
      await waitUnloaded([programId], 'the program of an unpinned link to be unloaded');
      const after = await measure(second, pair);
      t.equal(after.ingress.packets, 0, 'unpinning detached it');
    });

    t.test('detach is quiet when the interface is gone', async (t) => {
      const tag = randomBytes(2).toString('hex');
      const [a, b] = [`ppx${tag}a`, `ppx${tag}b`];
      t.teardown(() => spawnSync('ip', ['link', 'del', a], { stdio: 'ignore' }));
      run('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      const ifindex = Number(readFileSync(`/sys/class/net/${a}/ifindex`, 'utf8'));

      const obj = loadFixture(t);
      const tcx = obj.attachTc('tc_ingress', ifindex, 'ingress', 'tcx');
      const clsact = obj.attachTc('tc_egress', ifindex, 'egress', 'clsact');
      const other = loadFixture(t);
      other.attachTc('tc_ingress', ifindex, 'ingress', 'clsact');
      other.attachTc('tc_egress', ifindex, 'egress', 'tcx');
      run('ip', ['link', 'del', a]);

      t.doesNotThrow(() => obj.detach(tcx.id));
      t.doesNotThrow(() => obj.detach(clsact.id));
      t.doesNotThrow(() => other.close(), 'close() with attachments on a vanished interface');
    });
  });

  interface VethPair {
    ns: string;
    host: string;
    hostIfindex: number;
    peerIfindex: number;
    peerIp: string;
  }

  /**
   * A netns with one veth pair, host end routed. IPv6 is off on both ends so
   * nothing but the test's own traffic crosses the veth.
   */
  function createVethPair(tt: Test): VethPair {
    const tag = randomBytes(2).toString('hex');
    const ns = `ppx${tag}`;
    const host = `ppx${tag}h`;
    const peer = `ppx${tag}n`;
    // A /30 out of 198.19.254.0/24, which the pod helpers do not use.
    const base = randomInt(0, 64) * 4;
    const hostIp = `198.19.254.${base + 1}`;
    const peerIp = `198.19.254.${base + 2}`;

    tt.teardown(() => {
      // Something still running in the netns would keep it (and the veth) alive.
      if (existsSync(`/run/netns/${ns}`)) {
        for (const pid of run('ip', ['netns', 'pids', ns]).split('\n').filter(Boolean)) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // already gone
          }
        }
        run('ip', ['netns', 'del', ns]);
      }
      // Deleting the netns takes the veth with it, though not always at once.
      spawnSync('ip', ['link', 'del', host], { stdio: 'ignore' });
    });

    run('ip', ['netns', 'add', ns]);
    run('ip', ['link', 'add', host, 'type', 'veth', 'peer', 'name', peer, 'netns', ns]);
    writeFileSync(`/proc/sys/net/ipv6/conf/${host}/disable_ipv6`, '1');
    run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `net.ipv6.conf.${peer}.disable_ipv6=1`]);
    run('ip', ['addr', 'add', `${hostIp}/30`, 'dev', host]);
    run('ip', ['-n', ns, 'addr', 'add', `${peerIp}/30`, 'dev', peer]);
    run('ip', ['link', 'set', host, 'up']);
    run('ip', ['-n', ns, 'link', 'set', peer, 'up']);
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    return {
      ns,
      host,
      hostIfindex: Number(readFileSync(`/sys/class/net/${host}/ifindex`, 'utf8')),
      peerIfindex: Number(run('ip', ['netns', 'exec', ns, 'cat', `/sys/class/net/${peer}/ifindex`])),
      peerIp,
    };
  }

  interface Traffic {
    packets: number;
    bytes: number;
  }

  /** Pings through the veth; returns what our programs and the veth's own counters saw meanwhile. */
  async function measure(
    obj: BpfObject,
    pair: VethPair,
    pings = 100,
  ): Promise<{ ingress: Traffic; egress: Traffic; rx: Traffic; tx: Traffic }> {
    const ours = (slot: number): Traffic => {
      const value = obj.lookup('packets', u32(slot)) ?? Buffer.alloc(16);
      return { packets: Number(value.readBigUInt64LE(0)), bytes: Number(value.readBigUInt64LE(8)) };
    };
    const stat = (name: string) => Number(readFileSync(`/sys/class/net/${pair.host}/statistics/${name}`, 'utf8'));
    const veth = () => ({
      rx: { packets: stat('rx_packets'), bytes: stat('rx_bytes') },
      tx: { packets: stat('tx_packets'), bytes: stat('tx_bytes') },
    });
    const delta = (a: Traffic, b: Traffic): Traffic => ({ packets: b.packets - a.packets, bytes: b.bytes - a.bytes });

    const before = { ingress: ours(SLOT_INGRESS), egress: ours(SLOT_EGRESS), ...veth() };
    run('ping', ['-q', '-c', String(pings), '-i', '0.005', '-W', '1', pair.peerIp]);
    // The last reply was delivered before ping exited; leave the counters a moment anyway.
    await sleep(50);
    const after = { ingress: ours(SLOT_INGRESS), egress: ours(SLOT_EGRESS), ...veth() };
    const result = {
      ingress: delta(before.ingress, after.ingress),
      egress: delta(before.egress, after.egress),
      rx: delta(before.rx, after.rx),
      tx: delta(before.tx, after.tx),
    };
    if (result.rx.packets < pings || result.tx.packets < pings) {
      throw new Error(`ping did not cross ${pair.host}: ${JSON.stringify(result)}`);
    }
    return result;
  }
}
