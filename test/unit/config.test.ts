import t from 'tap';
import { ConfigError, envName, leaves, parseListen, resolveConfig } from '../../src/config.js';

t.test('defaults are the embedded standalone agent', async (t) => {
  const config = resolveConfig();
  t.same(config.listen, { host: '0.0.0.0', port: 9742 });
  t.equal(config.logLevel, 'info');
  t.equal(config.bpfStats, false);
  t.equal(config.collectors.network.enabled, true);
  t.equal(config.collectors.network.attachMode, 'auto');
  t.ok(config.collectors.network.interfaces.include.includes('veth*'));
  t.same(config.collectors.network.interfaces.exclude, []);
  t.same(config.collectors.drops, { enabled: true, maxEntries: 16384 });
});

t.test('file < environment < flags', async (t) => {
  const config = resolveConfig({
    file: { listen: '127.0.0.1:1000', logLevel: 'debug', collectors: { network: { attachMode: 'clsact', maxEntries: 4096 } } },
    env: { PROBEPILOT_LISTEN: '127.0.0.1:2000', PROBEPILOT_COLLECTORS_NETWORK_MAX_ENTRIES: '8192', PROBEPILOT_BPF_STATS: 'TRUE' },
    flags: { listen: '[::1]:3000' },
  });
  t.same(config.listen, { host: '::1', port: 3000 });
  t.equal(config.logLevel, 'debug');
  t.equal(config.collectors.network.attachMode, 'clsact');
  t.equal(config.collectors.network.maxEntries, 8192);
  t.equal(config.bpfStats, true);
});

t.test('environment lists are comma-separated globs', async (t) => {
  const config = resolveConfig({ env: { PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: 'veth*, eth0 ,' } });
  t.same(config.collectors.network.interfaces.include, ['veth*', 'eth0']);
});

t.test('a wrong value names the key and what is allowed', async (t) => {
  const cases: [unknown, string, RegExp][] = [
    [{ logLevel: 'loud' }, 'logLevel', /allowed values: fatal, error, warn, info, debug, trace, silent/],
    [{ collectors: { network: { attachMode: 'xdp' } } }, 'collectors.network.attachMode', /got "xdp", allowed values: auto, tcx, clsact/],
    [{ collectors: { network: { maxEntries: 10 } } }, 'collectors.network.maxEntries', /expected an integer from 1024 to 4194304/],
    [{ collectors: { network: { maxEntries: 5000.5 } } }, 'collectors.network.maxEntries', /integer/],
    [{ collectors: { drops: { maxEntries: 100 } } }, 'collectors.drops.maxEntries', /expected an integer from 1024 to 1048576/],
    [{ collectors: { drops: { reasons: ['NO_SOCKET'] } } }, 'collectors.drops.reasons', /allowed keys under "collectors.drops": enabled, maxEntries/],
    [{ bpfStats: 'yes' }, 'bpfStats', /allowed values: true, false/],
    [{ listen: 'localhost' }, 'listen', /expected HOST:PORT/],
    [{ listen: '1.2.3.4:70000' }, 'listen', /port from 0 to 65535/],
    [{ collectors: { network: { interfaces: { include: 'veth*' } } } }, 'collectors.network.interfaces.include', /list of interface-name globs/],
    [{ colectors: {} }, 'colectors', /unknown key; allowed keys: listen, grpcListen, logLevel/],
    [{ collectors: { network: { bogus: 1 } } }, 'collectors.network.bogus', /allowed keys under "collectors.network": enabled, attachMode/],
    [{ collectors: 'all' }, 'collectors', /expected a mapping with keys: network/],
    [{ collectors: { network: { flows: { peerCidrs: ['10.0.0.0/8'] } } } }, 'collectors.network.flows.peerCidrs', /got "10.0.0.0\/8", expected NAME=CIDR/],
    [{ collectors: { network: { flows: { peerCidrs: ['corp=10.0.0.0/33'] } } } }, 'collectors.network.flows.peerCidrs', /expected NAME=CIDR/],
    [{ collectors: { network: { flows: { peerCidrs: ['world=10.0.0.0/8'] } } } }, 'collectors.network.flows.peerCidrs', /reserved for the built-in peer classes/],
    [{ collectors: { network: { flows: { peerLabel: 'ip' } } } }, 'collectors.network.flows.peerLabel', /allowed values: workload, pod/],
    [{ otlp: { endpoint: 'collector:4317' } }, 'otlp.endpoint', /expected http:\/\/HOST:PORT \(plaintext\), https:\/\/HOST:PORT \(TLS\) or empty/],
    [{ otlp: { temporality: 'both' } }, 'otlp.temporality', /allowed values: cumulative, delta/],
    [{ otlp: { maxInFlight: 0 } }, 'otlp.maxInFlight', /from 1 to 64/],
    [['a'], '(root)', /expected a mapping/],
  ];
  for (const [file, key, message] of cases) {
    t.throws(() => resolveConfig({ file }), { name: 'ConfigError', key, message }, key);
  }
  t.throws(() => resolveConfig({ env: { PROBEPILOT_SERIES_GRACE_SECONDS: 'soon' } }), { key: 'seriesGraceSeconds', message: /got "soon"/ });
  t.throws(() => resolveConfig({ env: { PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'no' } }), { key: 'collectors.drops.enabled', message: /allowed values: true, false/ });
});

t.test('peer CIDR names from a file or the environment', async (t) => {
  const fromFile = resolveConfig({ file: { collectors: { network: { flows: { peerCidrs: ['node=192.0.2.0/24', 'corp=fd00:1::/48'] } } } } });
  t.same(fromFile.collectors.network.flows.peerCidrs, [
    { name: 'node', cidr: '192.0.2.0/24' },
    { name: 'corp', cidr: 'fd00:1::/48' },
  ]);
  const fromEnv = resolveConfig({ env: { PROBEPILOT_COLLECTORS_NETWORK_FLOWS_PEER_CIDRS: 'node=192.0.2.0/24, corp=fd00:1::/48' } });
  t.same(fromEnv.collectors.network.flows.peerCidrs, fromFile.collectors.network.flows.peerCidrs);
  t.same(resolveConfig().collectors.network.flows, { enabled: true, maxEntries: 65536, maxPeers: 65536, peerLabel: 'workload', peerCidrs: [] });
});

t.test('OTLP headers: NAME=VALUE, and a malformed one is never echoed (it may hold a token)', async (t) => {
  const config = resolveConfig({ env: { PROBEPILOT_OTLP_ENDPOINT: 'https://otel.example:4317', PROBEPILOT_OTLP_HEADERS: 'authorization=Bearer abc=, x-tenant=a' } });
  t.equal(config.otlp.endpoint, 'https://otel.example:4317');
  t.same(config.otlp.headers, [
    { name: 'authorization', value: 'Bearer abc=' },
    { name: 'x-tenant', value: 'a' },
  ]);
  t.throws(() => resolveConfig({ file: { otlp: { headers: ['Bearer secret-token'] } } }), { key: 'otlp.headers', message: /^(?!.*secret-token)/ });
});

t.test('environment names derive from key paths', async (t) => {
  t.equal(envName('collectors.network.attachMode'), 'PROBEPILOT_COLLECTORS_NETWORK_ATTACH_MODE');
  t.equal(envName('listen'), 'PROBEPILOT_LISTEN');
  const names = leaves().map((l) => envName(l.key));
  t.equal(new Set(names).size, names.length, 'no two keys share an environment name');
});

t.test('listen addresses', async (t) => {
  t.same(parseListen(':9742'), { host: '0.0.0.0', port: 9742 });
  t.same(parseListen('[fd00::1]:80'), { host: 'fd00::1', port: 80 });
  t.throws(() => parseListen('[::1]'), ConfigError);
});
