// Custom probe specs: the shipped examples parse; every mistake is named by
// probe, map and field with what is allowed; key decoders turn known bytes
// into known labels; config lists and spec files; a broken spec is a
// collector that says why it cannot start; a probe reads a fake object's
// maps (cgroup id anywhere in the key, or none) as its spec says.
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BpfObject, MapDump, MapInfo, NativeAddon } from '../../src/bpf/addon.js';
import { CollectorUnavailableError } from '../../src/collectors/collector.js';
import { customProbeFactories, specFiles } from '../../src/collectors/custom.js';
import {
  checkMapLayout,
  decodeKeyField,
  KernelSymbols,
  keyLabeler,
  parseProbeSpec,
  readProbeSpec,
  type KeyField,
} from '../../src/collectors/custom-spec.js';
import { ConfigError, resolveConfig } from '../../src/config.js';
import { StandaloneIdentity, type Identity } from '../../src/identity/identity.js';
import { CgroupPaths } from '../../src/identity/cgroups.js';
import { NetnsWorkloads } from '../../src/identity/netns.js';
import { createLogger } from '../../src/log.js';
import { histogramSize } from '../../src/metrics/histogram.js';
import { projectRoot } from '../helpers/helm.js';

const examples = path.join(projectRoot, 'examples/custom-probes');

/** A valid spec to break one field of at a time. */
function base(): Record<string, unknown> {
  return {
    name: 'pagefaults',
    object: 'pagefaults.bpf.o',
    attach: [{ program: 'pp_page_fault_user', rawTracepoint: 'page_fault_user' }],
    maps: [
      {
        name: 'faults',
        key: [
          { name: 'cgroup', offset: 0, decoder: 'cgroup' },
          { name: 'access', offset: 8, size: 4, decoder: 'enum', values: { 0: 'read', 1: 'write' } },
        ],
        value: [
          { name: 'faults', offset: 0, type: 'u64' },
          { name: 'latency', offset: 8, type: 'histogram' },
        ],
        metrics: [
          { name: 'probepilot_custom_page_faults_total', type: 'counter', value: 'faults' },
          { name: 'probepilot_custom_fault_seconds', type: 'histogram', value: 'latency' },
        ],
      },
    ],
  };
}

type Spec = ReturnType<typeof base>;
const map0 = (spec: Spec) => (spec.maps as Array<Record<string, unknown>>)[0]!;
const keyOf = (spec: Spec, i: number) => (map0(spec).key as Array<Record<string, unknown>>)[i]!;
const valueOf = (spec: Spec, i: number) => (map0(spec).value as Array<Record<string, unknown>>)[i]!;
const metricOf = (spec: Spec, i: number) => (map0(spec).metrics as Array<Record<string, unknown>>)[i]!;

t.test('the shipped examples parse into their layouts', async (t) => {
  const faults = readProbeSpec(path.join(examples, 'pagefaults/pagefaults.yaml'));
  t.equal(faults.name, 'pagefaults');
  t.equal(faults.object, path.join(examples, 'pagefaults/pagefaults.bpf.o'), 'the object path is relative to the spec');
  t.same(faults.attach, [{ program: 'pp_page_fault_user', rawTracepoint: 'page_fault_user' }]);
  t.same(faults.maps[0]!.key.map((f) => [f.name, f.offset, f.size, f.decoder]), [
    ['cgroup', 0, 8, 'cgroup'],
    ['access', 8, 4, 'enum'],
  ]);
  t.same([...faults.maps[0]!.key[1]!.values!], [[0, 'read'], [1, 'write']]);
  const rtt = readProbeSpec(path.join(examples, 'tcp-rtt/tcp-rtt.yaml'));
  t.same(rtt.attach, [{ program: 'pp_tcp_probe', auto: true }]);
  t.same(rtt.maps[0]!.key.map((f) => [f.name, f.offset, f.size, f.decoder]), [
    ['cgroup', 0, 8, 'cgroup'],
    ['peer', 8, 16, 'ipv6'],
  ]);
  t.same(rtt.maps[0]!.metrics, [{ name: 'probepilot_custom_tcp_rtt_seconds', type: 'histogram', value: 'srtt', help: rtt.maps[0]!.metrics[0]!.help }]);
  t.equal(rtt.scope, 'container', 'scope defaults to container');
});

t.test('spec errors name the probe, the map and the field, and what is allowed', async (t) => {
  const cases: Array<[string, (spec: Spec) => void, string | RegExp]> = [
    [
      'unknown decoder',
      (s) => (keyOf(s, 0).decoder = 'cgroupid'),
      'probe pagefaults: map "faults": key field "cgroup": unknown decoder "cgroupid"; allowed: cgroup, uint, int, enum, ipv4, ipv6, ksym, string',
    ],
    ['decoder missing', (s) => delete keyOf(s, 1).decoder, 'probe pagefaults: map "faults": key field "access": "decoder" is missing; allowed: cgroup, uint'],
    ['size a decoder cannot read', (s) => (keyOf(s, 1).size = 3), 'probe pagefaults: map "faults": key field "access": "size": decoder enum reads 1, 2, 4 bytes, got 3'],
    ['string without size', (s) => Object.assign(keyOf(s, 1), { decoder: 'string', size: undefined, values: undefined }), 'key field "access": "size" is missing: a string field needs its byte length'],
    ['enum without values', (s) => delete keyOf(s, 1).values, 'key field "access": "values": got undefined, expected a mapping of numbers to names'],
    ['enum value key no number', (s) => (keyOf(s, 1).values = { read: 0 }), 'key field "access": "values": key "read" is no integer'],
    ['values on another decoder', (s) => (keyOf(s, 1).decoder = 'uint'), 'key field "access": "values" is only for decoder enum'],
    ['reserved label', (s) => (keyOf(s, 1).name = 'pod'), 'key field "pod": the label name is the agent\'s own'],
    ['bad label name', (s) => (keyOf(s, 1).name = '1x'), 'map "faults": key field #2: "name": got "1x", expected a label name'],
    ['two cgroup fields', (s) => Object.assign(keyOf(s, 1), { decoder: 'cgroup', size: 8, values: undefined }), 'map "faults": more than one key field has decoder cgroup'],
    ['overlapping key fields', (s) => (keyOf(s, 1).offset = 4), 'map "faults": key field "access" at byte 4 overlaps "cgroup" (bytes 0..7)'],
    ['overlapping value fields', (s) => (valueOf(s, 0).offset = 16), `map "faults": value field "faults" at byte 16 overlaps "latency" (bytes 8..${8 + histogramSize - 1})`],
    ['unknown value type', (s) => (valueOf(s, 0).type = 'u32'), 'map "faults": value field "faults": unknown type "u32"; allowed: u64, histogram'],
    ['counter without _total', (s) => (metricOf(s, 0).name = 'probepilot_custom_page_faults'), 'map "faults": metric "probepilot_custom_page_faults": a counter\'s name ends in _total'],
    ['histogram not in seconds', (s) => (metricOf(s, 1).name = 'probepilot_custom_fault_ns'), 'metric "probepilot_custom_fault_ns": a histogram\'s name ends in _seconds'],
    ['gauge named _total', (s) => Object.assign(metricOf(s, 0), { type: 'gauge' }), 'metric "probepilot_custom_page_faults_total": only counters end in _total'],
    ['the agent\'s own prefix', (s) => (metricOf(s, 0).name = 'probepilot_tcp_retransmits_total'), 'metric "probepilot_tcp_retransmits_total": probepilot_* names are the agent\'s own; name it probepilot_custom_* or outside probepilot_'],
    ['unknown metric type', (s) => (metricOf(s, 0).type = 'summary'), 'metric "probepilot_custom_page_faults_total": unknown type "summary"; allowed: counter, gauge, histogram'],
    ['value field missing', (s) => (metricOf(s, 0).value = 'fault'), 'metric "probepilot_custom_page_faults_total": "value": no value field "fault"; the map\'s value fields: faults, latency'],
    ['counter of a histogram', (s) => (metricOf(s, 0).value = 'latency'), 'metric "probepilot_custom_page_faults_total": "value": a counter reads a u64 field; "latency" is histogram'],
    ['metric twice', (s) => (metricOf(s, 1).name = metricOf(s, 0).name) && (metricOf(s, 1).type = 'counter') && (metricOf(s, 1).value = 'faults'), 'probe pagefaults: metric "probepilot_custom_page_faults_total" is declared twice'],
    ['unknown map key', (s) => (map0(s).keys = []), 'probe pagefaults: map "faults": unknown key "keys"; allowed: name, maxEntries, key, value, metrics'],
    ['empty key list', (s) => (map0(s).key = []), 'map "faults": "key": got [], expected a non-empty list'],
    ['bad maxEntries', (s) => (map0(s).maxEntries = 0), 'map "faults": "maxEntries": got 0, expected an integer from 1 to 16777216'],
    ['two attach kinds', (s) => ((s.attach as Array<Record<string, unknown>>)[0]!.auto = true), 'probe pagefaults: attach #1: program pp_page_fault_user: give exactly one of tracepoint, rawTracepoint, auto'],
    ['auto not true', (s) => (s.attach = [{ program: 'p', auto: 'yes' }]), 'attach #1: program p: "auto": got "yes", expected true'],
    ['tracepoint without category', (s) => (s.attach = [{ program: 'p', tracepoint: 'sched_switch' }]), 'attach #1: "tracepoint": got "sched_switch", expected CATEGORY:NAME'],
    ['bad probe name', (s) => (s.name = 'Page-Faults'), /^probe spec \/x\/p\.yaml: "name": got "Page-Faults", expected a lower-case name/],
    ['object no .o', (s) => (s.object = 'pagefaults.c'), 'probe pagefaults: "object": got "pagefaults.c", expected the path of a .bpf.o'],
    ['unknown scope', (s) => (s.scope = 'node'), 'probe pagefaults: unknown scope "node"; allowed: container, pod'],
    ['unknown top-level key', (s) => (s.program = 'x'), 'probe pagefaults: unknown key "program"; allowed: name, object, scope, attach, maps'],
  ];
  for (const [what, breakIt, message] of cases) {
    const spec = base();
    breakIt(spec);
    // Keys set to undefined are as good as absent (what YAML would give).
    const doc = JSON.parse(JSON.stringify(spec)) as unknown;
    let error: unknown;
    try {
      parseProbeSpec(doc, '/x/p.yaml');
    } catch (err) {
      error = err;
    }
    const got = error instanceof Error && error.name === 'ProbeSpecError' ? error.message : String(error);
    // Every message starts with the probe (or its file, before its name is known) and holds the expected words.
    t.ok(/^probe (pagefaults|spec \/x\/p\.yaml): /.test(got) && (typeof message === 'string' ? got.includes(message) : message.test(got)), `${what}: ${got}`);
  }
  t.doesNotThrow(() => parseProbeSpec(base(), '/x/p.yaml'), 'the unbroken spec parses');
  t.throws(() => parseProbeSpec([], '/x/p.yaml'), { message: /^probe spec \/x\/p\.yaml: got \[\], expected a mapping with keys: name, object/ }, 'a list is no spec');
});

t.test('unreadable and invalid YAML name the file', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-spec-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.throws(() => readProbeSpec(path.join(dir, 'none.yaml')), { message: new RegExp(`^probe spec ${dir}/none\\.yaml: cannot read: ENOENT`) });
  writeFileSync(path.join(dir, 'bad.yaml'), 'name: [unclosed\n');
  t.throws(() => readProbeSpec(path.join(dir, 'bad.yaml')), { message: new RegExp(`^probe spec ${dir}/bad\\.yaml: not valid YAML`) });
});

t.test('layouts are checked against the loaded map', async (t) => {
  const spec = parseProbeSpec(base(), '/x/p.yaml');
  const map = spec.maps[0]!;
  const info = (keySize: number, valueSize: number, type = 5) => ({ name: 'faults', type, keySize, valueSize }) as MapInfo;
  t.doesNotThrow(() => checkMapLayout('pagefaults', map, info(16, 8 + histogramSize), ['faults']), 'fits exactly');
  t.throws(() => checkMapLayout('pagefaults', map, info(8, 8 + histogramSize), ['faults']), {
    message: 'probe pagefaults: map "faults": key field "access": bytes 8..11 end beyond the map\'s 8-byte key',
  });
  t.throws(() => checkMapLayout('pagefaults', map, info(16, histogramSize), ['faults']), {
    message: `probe pagefaults: map "faults": value field "latency": histogram at byte 8 needs ${histogramSize} bytes, beyond the map's ${histogramSize}-byte value`,
  });
  t.throws(() => checkMapLayout('pagefaults', map, info(16, 8 + histogramSize, 27), ['faults']), {
    message: 'probe pagefaults: map "faults": map type 27 is not read as metrics; use a hash, an array or an LRU hash (per-CPU or not)',
  }, 'a ring buffer is no metric map');
  t.throws(() => checkMapLayout('pagefaults', map, undefined, ['fault_map', 'pp_stats']), { message: 'probe pagefaults: map "faults": not in the object; its maps: fault_map, pp_stats' });
});

const field = (decoder: KeyField['decoder'], offset: number, size: number, values?: Map<number, string>): KeyField => ({ name: 'f', decoder, offset, size, ...(values ? { values } : {}) });

t.test('key decoders', async (t) => {
  const key = Buffer.alloc(64);
  key.writeBigUInt64LE(0x1234_5678_9abcn, 0);
  key.writeInt32LE(-7, 8);
  key.writeUInt16LE(65535, 12);
  key.writeUInt8(200, 14);
  t.equal(decodeKeyField(field('cgroup', 0, 8), key), String(0x1234_5678_9abc), 'cgroup id as a number');
  t.equal(decodeKeyField(field('uint', 0, 8), key), '20015998343868');
  t.equal(decodeKeyField(field('int', 8, 4), key), '-7', 'signed, little-endian');
  t.equal(decodeKeyField(field('uint', 8, 4), key), String(2 ** 32 - 7), 'the same bytes unsigned');
  t.equal(decodeKeyField(field('uint', 12, 2), key), '65535');
  t.equal(decodeKeyField(field('int', 14, 1), key), '-56');
  t.equal(decodeKeyField(field('int', 0, 8), key), '20015998343868');

  const kinds = new Map([[1, 'read'], [2, 'write']]);
  const e = Buffer.alloc(4);
  e.writeUInt32LE(2);
  t.equal(decodeKeyField(field('enum', 0, 4, kinds), e), 'write', 'enum: a known number is its name');
  e.writeUInt32LE(9);
  t.equal(decodeKeyField(field('enum', 0, 4, kinds), e), '9', 'enum: an unknown number stays a number');

  const ip = Buffer.from([198, 18, 0, 7, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  t.equal(decodeKeyField(field('ipv4', 0, 4), ip), '198.18.0.7', 'IPv4 in network order');
  t.equal(decodeKeyField(field('ipv6', 4, 16), ip), '2001:db8::1', 'IPv6, RFC 5952');
  const mapped = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]);
  t.equal(decodeKeyField(field('ipv6', 0, 16), mapped), '10.1.2.3', 'a v4-mapped IPv6 address is the IPv4 address');

  const text = Buffer.alloc(16);
  text.write('nginx\u0000junk', 'utf8');
  t.equal(decodeKeyField(field('string', 0, 16), text), 'nginx', 'a string ends at its NUL');
  const full = Buffer.from('abcdefgh');
  t.equal(decodeKeyField(field('string', 0, 8), full), 'abcdefgh', 'or at its size');
  const hostile = Buffer.from([0x61, 0x0a, 0xc3, 0x62, 0xe2, 0x82]);
  t.equal(decodeKeyField(field('string', 0, 6), hostile), 'a\ufffd\ufffdb\ufffd', 'a newline and broken UTF-8 (a cut multi-byte character) become U+FFFD');

  const symbols = new KernelSymbols('ffffffff81000000 T _stext\nffffffff81001000 t do_one\nffffffff81002000 D some_data\nffffffff81003000 W weak_fn\n0000000000000000 T hidden\n');
  const address = Buffer.alloc(8);
  for (const [at, name] of [
    [0xffffffff81001000n, 'do_one'],
    [0xffffffff81001fffn, 'do_one'],
    [0xffffffff81002010n, 'do_one'], // data symbols are not functions
    [0xffffffff81003004n, 'weak_fn'],
    [0xffffffff80000000n, '0xffffffff80000000'], // below every symbol
  ] as const) {
    address.writeBigUInt64LE(at);
    t.equal(decodeKeyField(field('ksym', 0, 8), address, symbols), name, `ksym 0x${at.toString(16)} → ${name}`);
  }
  t.ok(new KernelSymbols('0000000000000000 T _stext\n').empty, 'addresses hidden by kptr_restrict: no symbols');

  const labels = keyLabeler([field('cgroup', 0, 8), { ...field('ipv4', 8, 4), name: 'peer' }, { ...field('uint', 12, 2), name: 'port' }]);
  const k = Buffer.alloc(16);
  k.set([10, 0, 0, 1], 8);
  k.writeUInt16LE(443, 12);
  t.same(labels(k), { peer: '10.0.0.1', port: '443' }, 'every key field but the cgroup id is a label');
});

t.test('kernel symbols of this machine name the functions they contain', async (t) => {
  let kallsyms: string;
  try {
    kallsyms = readFileSync('/proc/kallsyms', 'utf8');
  } catch {
    t.pass('skipped', { skip: '/proc/kallsyms is not readable here' });
    return;
  }
  const symbols = new KernelSymbols(kallsyms);
  if (symbols.empty) {
    t.pass('skipped', { skip: 'kernel.kptr_restrict hides kernel addresses from this process' });
    return;
  }
  const line = kallsyms.split('\n').find((l) => / [tT] tcp_sendmsg$/.test(l));
  t.ok(line, 'tcp_sendmsg is in kallsyms');
  const start = BigInt(`0x${line!.split(' ')[0]}`);
  t.equal(symbols.resolve(start), 'tcp_sendmsg', 'its start address');
  t.equal(symbols.resolve(start + 4n), 'tcp_sendmsg', 'an address inside it');
});

t.test('config: spec paths and disabled probes', async (t) => {
  const config = resolveConfig({ env: { PROBEPILOT_CUSTOM_PROBES_PATHS: '/etc/probes, /opt/x.yaml', PROBEPILOT_CUSTOM_PROBES_DISABLED: 'tcp_rtt' } });
  t.same(config.customProbes, { paths: ['/etc/probes', '/opt/x.yaml'], disabled: ['tcp_rtt'] });
  t.same(resolveConfig().customProbes, { paths: [], disabled: [] }, 'none by default');
  t.throws(() => resolveConfig({ file: { customProbes: { disabled: ['custom_tcp_rtt', 'TCP'] } } }), new ConfigError('customProbes.disabled', 'got "TCP", expected a list of probe names (the name: of a spec, without custom_)'));
  t.throws(() => resolveConfig({ file: { customProbes: { paths: '/etc/probes' } } }), new ConfigError('customProbes.paths', 'got "/etc/probes", expected a list of file or directory paths'));
});

t.test('spec files and collectors from the configured paths', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-specs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const good = { ...base(), name: 'good' };
  writeFileSync(path.join(dir, 'b-good.yaml'), JSON.stringify(good));
  writeFileSync(path.join(dir, 'a-Broken.yml'), JSON.stringify({ ...base(), maps: [{ ...map0(base()), key: [{ name: 'cgroup', offset: 0, decoder: 'cgroupid' }] }] }));
  writeFileSync(path.join(dir, 'c-twin.yaml'), JSON.stringify(good));
  writeFileSync(path.join(dir, 'd-same-metric.yaml'), JSON.stringify({ ...good, name: 'other' }));
  writeFileSync(path.join(dir, 'notes.txt'), 'not a spec');
  t.same(specFiles(dir).map((f) => path.basename(f)), ['a-Broken.yml', 'b-good.yaml', 'c-twin.yaml', 'd-same-metric.yaml'], 'a directory: its YAML files in name order');
  t.same(specFiles('/nonexistent/p.yaml'), ['/nonexistent/p.yaml'], 'a file (even a missing one, reported by its probe)');

  const addon = { possibleCpus: () => 2 } as unknown as NativeAddon;
  const identity = { labelNames: () => ['cgroup'] } as unknown as Identity;
  const ctx = { config: resolveConfig({ file: { customProbes: { paths: [dir, path.join(dir, 'missing.yaml')] } } }), log: createLogger('silent'), addon, identity };
  const collectors = customProbeFactories(ctx).map((create) => create());
  t.same(collectors.map((c) => c.name), ['custom_a_broken', 'custom_good', 'custom_c_twin', 'custom_other', 'custom_missing']);
  t.same(collectors[1]!.families.map((f) => [f.name, f.type, f.labelNames]), [
    ['probepilot_custom_page_faults_total', 'counter', ['cgroup', 'access']],
    ['probepilot_custom_fault_seconds', 'histogram', ['cgroup', 'access']],
  ], 'a good spec: its families with identity and key labels');
  const reasons = await Promise.all([0, 2, 3, 4].map((i) => collectors[i]!.start().then(() => 'started', (err: unknown) => (err instanceof CollectorUnavailableError ? err.reason : String(err)))));
  t.match(reasons[0], /^probe pagefaults: map "faults": key field "cgroup": unknown decoder "cgroupid"; allowed: /, 'a broken spec: unavailable, with the reason');
  t.match(reasons[1], new RegExp(`^probe good: the name is already used by ${dir}/b-good\\.yaml`), 'a second spec of the same name');
  t.match(reasons[2], new RegExp(`^probe other: metric "probepilot_custom_page_faults_total" is already exported by ${dir}/b-good\\.yaml`), 'a second spec exporting a family already taken');
  t.match(reasons[3], /^probe spec .*missing\.yaml: cannot read/, 'a missing file');
  t.same(collectors[0]!.families, [], 'a broken probe has no families');
});

t.test('a custom probe reads its object\'s maps as its spec says', async (t) => {
  const cpus = 2;
  const root = mkdtempSync(path.join(os.tmpdir(), 'pp-cgroups-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(path.join(root, 'app.service'));
  const appId = statSync(path.join(root, 'app.service'), { bigint: true }).ino;
  // flows: key { u16 port; u8 pad[6]; u64 cgroup_id; u8 peer[4]; u32 pad }, per-CPU value { u64 bytes; struct pp_hist latency }.
  const flowKey = (port: number, cgroupId: bigint, peer: number[]) => {
    const key = Buffer.alloc(24);
    key.writeUInt16LE(port, 0);
    key.writeBigUInt64LE(cgroupId, 8);
    key.set(peer, 16);
    return key;
  };
  const flowValueSize = 8 + histogramSize;
  const flowValues = Buffer.alloc(2 * cpus * flowValueSize);
  // Entry 0, CPU 0 and 1: 100 + 23 bytes; one latency sample of 2^20 ns on each CPU (slot 20).
  for (const [cpu, bytes] of [[0, 100], [1, 23]] as const) {
    const at = cpu * flowValueSize;
    flowValues.writeBigUInt64LE(BigInt(bytes), at);
    flowValues.writeBigUInt64LE(1n, at + 8 + 20 * 8);
    flowValues.writeBigUInt64LE(1n << 20n, at + 8 + histogramSize - 8);
  }
  flowValues.writeBigUInt64LE(5n, 2 * flowValueSize); // entry 1, CPU 0
  const dumps: Record<string, MapDump> = {
    flows: { count: 2, keySize: 24, valueSize: cpus * flowValueSize, keys: Buffer.concat([flowKey(443, appId, [10, 0, 0, 1]), flowKey(53, 0n, [10, 0, 0, 2])]), values: flowValues },
    // reasons: a plain hash, key { u32 reason }, value { u64 count }: no cgroup, the node's.
    reasons: { count: 1, keySize: 4, valueSize: 8, keys: Buffer.from([2, 0, 0, 0]), values: Buffer.from([9, 0, 0, 0, 0, 0, 0, 0]) },
  };
  const info = (name: string, type: number, keySize: number, valueSize: number, perCpu: boolean): MapInfo => ({ name, type, keySize, valueSize, maxEntries: 64, perCpu, valueStride: valueSize, flags: 0, internal: false, id: 0 });
  const attached: string[] = [];
  const sized: Array<[string, number]> = [];
  const fake = {
    setMapMaxEntries: (map: string, n: number) => sized.push([map, n]),
    load() {},
    close() {},
    maps: () => [info('flows', 5, 24, flowValueSize, true), info('reasons', 1, 4, 8, false), info('pp_stats', 6, 4, 8, true)],
    programs: () => [],
    attachAuto: (program: string) => attached.push(program),
    detach() {},
    deleteKeys: () => 0,
    readMap: async (name: string) => dumps[name]!,
    // pp_stats slot 0 (map_full) on two CPUs: 3 + 4.
    lookup: (map: string) => (map === 'pp_stats' ? Buffer.from([3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]) : null),
  } as unknown as BpfObject;
  const addon = { possibleCpus: () => cpus, BpfObject: function () { return fake; } } as unknown as NativeAddon;
  const identity = new StandaloneIdentity(new CgroupPaths(root, { minRefreshIntervalMs: 0 }), new NetnsWorkloads(() => -1));
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-spec-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(
    path.join(dir, 'flows.yaml'),
    JSON.stringify({
      name: 'flows',
      object: 'flows.bpf.o',
      attach: [{ program: 'pp_flow', auto: true }],
      maps: [
        {
          name: 'flows',
          maxEntries: 4096,
          key: [
            { name: 'port', offset: 0, size: 2, decoder: 'uint' },
            { name: 'cgroup', offset: 8, decoder: 'cgroup' },
            { name: 'peer', offset: 16, decoder: 'ipv4' },
          ],
          value: [
            { name: 'bytes', offset: 0 },
            { name: 'latency', offset: 8, type: 'histogram' },
          ],
          metrics: [
            { name: 'flow_bytes_total', type: 'counter', value: 'bytes' },
            { name: 'flow_bytes_now', type: 'gauge', value: 'bytes' },
            { name: 'flow_latency_seconds', type: 'histogram', value: 'latency' },
          ],
        },
        {
          name: 'reasons',
          key: [{ name: 'reason', offset: 0, size: 4, decoder: 'enum', values: { 1: 'timeout', 2: 'reset' } }],
          value: [{ name: 'count', offset: 0 }],
          metrics: [{ name: 'flow_failures_total', type: 'counter', value: 'count' }],
        },
      ],
    }),
  );
  const ctx = { config: resolveConfig({ file: { pins: { enabled: false }, customProbes: { paths: [dir] } } }), log: createLogger('silent'), addon, identity };
  const [create] = customProbeFactories(ctx);
  const collector = create!();
  await collector.start();
  t.same(attached, ['pp_flow'], 'attached by its section name');
  t.same(sized, [['flows', 4096]], 'maxEntries applied before load');
  const families = await collector.collect();
  const samples = (name: string) => families.find((f) => f.name === name)!.samples;
  t.same(
    samples('flow_bytes_total').map((s) => [s.labels, 'value' in s ? s.value : NaN]),
    [
      [{ cgroup: '/app.service', port: '443', peer: '10.0.0.1' }, 123],
      [{ cgroup: '/', port: '53', peer: '10.0.0.2' }, 5],
    ],
    'per-CPU sums, the cgroup id at offset 8 as the workload (0: the node), the other key fields as labels',
  );
  t.same(samples('flow_bytes_now').map((s) => ('value' in s ? s.value : NaN)), [123, 5], 'a gauge reads the same field');
  const latency = samples('flow_latency_seconds')[0]!;
  t.ok('count' in latency && latency.count === 2 && Math.abs(latency.sum - 2 * 2 ** 20 / 1e9) < 1e-12, 'the histogram: two samples of 2^20 ns, summed over CPUs');
  t.same(samples('flow_failures_total').map((s) => [s.labels, 'value' in s ? s.value : NaN]), [[{ cgroup: '/', reason: 'reset' }, 9]], 'a map without a cgroup field is the node\'s; its enum named');
  t.same(collector.health().eventsDropped, { map_full: 7 }, 'pp_stats map_full, summed over CPUs');
  await collector.stop();
});
