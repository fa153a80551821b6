// The detection rule language: each field and operator against events built
// to match and to miss, the shipped rules against their scenarios and benign
// twins, and a bad file's errors naming the rule, the field and what is allowed.
import t from 'tap';
import { readFileSync } from 'node:fs';
import { parseRuleFile, ruleFields, type PeerClassifier } from '../../src/events/rules.js';
import { defaultRulesPath } from '../../src/events/security-rules.js';
import { ConfigError } from '../../src/config.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';
import { prefixContains, parseIp, parsePrefix } from '../../src/ip.js';

const podCgroup = '/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f0e0d0c_0b0a_0908_0706_050403020100.slice/cri-containerd-' + 'a'.repeat(64) + '.scope';

function event(fields: Partial<SecurityTraceEvent>): SecurityTraceEvent {
  return { type: 'security', time: '2026-12-02T00:00:00.000Z', workload: { cgroup: podCgroup }, pid: 10, comm: 'x', kind: 'exec', uid: 0, euid: 0, ppid: 1, parentComm: 'init', ...fields };
}

const world: PeerClassifier = () => 'world';

function rules(match: unknown, name = 'r'): ReturnType<typeof parseRuleFile> {
  return parseRuleFile('test.yaml', JSON.stringify({ rules: [{ name, severity: 'high', description: 'd', match }] }));
}

function matches(match: unknown, e: SecurityTraceEvent, peers: PeerClassifier = world): boolean {
  return rules(match)[0]!.matches(e, peers);
}

t.test('fields and operators', async (t) => {
  t.equal(matches({ kind: 'exec' }, event({})), true, 'kind exact');
  t.equal(matches({ kind: 'exit' }, event({})), false);
  t.equal(matches({ kind: { in: ['exit', 'exec'] } }, event({})), true, 'kind in');
  t.equal(matches({ path: { prefix: '/etc/' } }, event({ kind: 'open_write', path: '/etc/passwd' })), true, 'prefix');
  t.equal(matches({ path: { prefix: '/etc/' } }, event({ kind: 'open_write', path: '/etcx/passwd' })), false);
  t.equal(matches({ path: { glob: '/home/*/.ssh/*' } }, event({ path: '/home/a/.ssh/id' })), true, 'glob');
  t.equal(matches({ binary: '/bin/sh' }, event({ path: '/bin/sh' })), true, 'binary of an exec');
  t.equal(matches({ binary: '/bin/sh' }, event({ kind: 'open_read', path: '/bin/sh' })), false, 'binary is only an exec\'s');
  t.equal(matches({ args: '-c' }, event({ args: ['/bin/sh', '-c', 'id'] })), true, 'args: any element');
  t.equal(matches({ args: '-x' }, event({ args: ['/bin/sh', '-c', 'id'] })), false);
  t.equal(matches({ uid: 0 }, event({ uid: 0 })), true, 'number exact');
  t.equal(matches({ uid: { gte: 1000 } }, event({ uid: 999 })), false, 'gte');
  t.equal(matches({ uid: { gte: 1000, lte: 2000 } }, event({ uid: 1500 })), true, 'range');
  t.equal(matches({ port: [22, 3389] }, event({ kind: 'connect', port: 3389 })), true, 'list shorthand');
  t.equal(matches({ port: 22 }, event({ kind: 'connect' })), false, 'an absent field matches nothing');
  t.equal(matches({ not: { port: 22 } }, event({ kind: 'connect' })), true, 'and so every not:');
  t.equal(matches({ address: { cidr: '10.0.0.0/8' } }, event({ address: '10.1.2.3' })), true, 'cidr');
  t.equal(matches({ address: { cidr: ['fc00::/7'] } }, event({ address: 'fd00::1' })), true, 'IPv6 cidr');
  t.equal(matches({ address: { cidr: '10.0.0.0/8' } }, event({ address: '11.1.2.3' })), false);
  t.equal(matches({ address: '10.1.2.3' }, event({ address: '10.1.2.3' })), true, 'exact address');
  t.equal(matches({ peerClass: 'world' }, event({ kind: 'connect', address: '1.1.1.1' }), () => 'pod'), false, 'peerClass from the classifier');
  t.equal(matches({ peerClass: 'world' }, event({ kind: 'connect', address: '1.1.1.1' })), true);
  t.equal(matches({ peerClass: 'world' }, event({ kind: 'listen', address: '1.1.1.1' })), false, 'peerClass is only a connect\'s');
  t.equal(matches({ inPod: true }, event({})), true, 'a kubelet cgroup is in a pod (standalone)');
  t.equal(matches({ inPod: false }, event({ workload: { cgroup: '/system.slice/sshd.service' } })), true, 'a system cgroup is the node');
  t.equal(matches({ inPod: true }, event({ workload: { namespace: 'a', pod: 'p', container: 'c', workload: 'w', workload_kind: 'Deployment' } })), true, 'a named pod (Kubernetes)');
  t.equal(matches({ inPod: true }, event({ workload: { namespace: '', pod: '', container: '', workload: '/system.slice', workload_kind: 'node' } })), false, 'off pods (Kubernetes)');
  const k8s = { namespace: 'shop', pod: 'cart-1', container: 'app', workload: 'cart', workload_kind: 'Deployment' };
  t.equal(matches({ namespace: 'shop', workload: { glob: 'car*' }, container: 'app', workloadKind: 'Deployment' }, event({ workload: k8s })), true, 'identity fields');
  t.equal(matches({ namespace: 'other' }, event({ workload: k8s })), false);
  t.equal(matches({ any: [{ uid: 5 }, { comm: 'x' }] }, event({})), true, 'any');
  t.equal(matches({ all: [{ uid: 0 }, { comm: 'y' }] }, event({})), false, 'all');
  t.equal(matches({ uid: 0, comm: 'y' }, event({})), false, 'the keys of a mapping all hold');
});

t.test('prefixContains', async (t) => {
  const has = (cidr: string, ip: string) => prefixContains(parsePrefix(cidr)!, parseIp(ip)!);
  t.equal(has('172.16.0.0/12', '172.31.255.255'), true);
  t.equal(has('172.16.0.0/12', '172.32.0.0'), false);
  t.equal(has('0.0.0.0/0', '8.8.8.8'), true);
  t.equal(has('10.0.0.0/8', '::ffff:10.0.0.1'), false, 'families differ');
});

t.test('the shipped rules fire on their scenarios and not on benign twins', async (t) => {
  const shipped = parseRuleFile(defaultRulesPath, readFileSync(defaultRulesPath, 'utf8'));
  const fired = (e: SecurityTraceEvent, peers: PeerClassifier = world) => shipped.filter((r) => r.matches(e, peers)).map((r) => r.name);
  const node = { cgroup: '/user.slice' };
  t.same(shipped.map((r) => [r.name, r.severity]), [
    ['shell-in-container', 'high'],
    ['write-under-etc', 'medium'],
    ['service-account-token-read', 'high'],
    ['setuid-to-root', 'high'],
    ['outbound-admin-port-to-world', 'high'],
    ['module-load-from-pod', 'critical'],
  ]);
  t.same(fired(event({ path: '/bin/sh', comm: 'sh' })), ['shell-in-container']);
  t.same(fired(event({ path: '/usr/bin/bash', comm: 'bash' })), ['shell-in-container']);
  t.same(fired(event({ path: '/bin/true', comm: 'true' })), [], 'another binary in a pod');
  t.same(fired(event({ path: '/bin/sh', workload: node })), [], 'a shell on the node');
  t.same(fired(event({ kind: 'open_write', path: '/etc/hosts' })), ['write-under-etc']);
  t.same(fired(event({ kind: 'rename', path: '/etc/x', workload: node })), ['write-under-etc'], 'on the node too');
  t.same(fired(event({ kind: 'open_write', path: '/tmp/hosts' })), []);
  t.same(fired(event({ kind: 'open_read', path: '/etc/shadow' })), [], 'a read is no write');
  const token = '/var/run/secrets/kubernetes.io/serviceaccount/token';
  t.same(fired(event({ kind: 'open_read', path: token, comm: 'cat' })), ['service-account-token-read']);
  t.same(fired(event({ kind: 'open_read', path: token, comm: 'node' })), [], 'the application reading it');
  t.same(fired(event({ kind: 'setuid', uid: 65534 })), ['setuid-to-root']);
  t.same(fired(event({ kind: 'setuid_exec', uid: 65534, path: '/usr/bin/su' })), ['setuid-to-root']);
  t.same(fired(event({ kind: 'setgid', uid: 65534 })), []);
  const connect = (address: string, port: number) => event({ kind: 'connect', family: 'ipv4', address, port });
  t.same(fired(connect('198.18.5.5', 22)), ['outbound-admin-port-to-world']);
  t.same(fired(connect('198.18.5.5', 3389)), ['outbound-admin-port-to-world']);
  t.same(fired(connect('198.18.5.5', 8080)), [], 'another port');
  t.same(fired(connect('10.0.0.5', 22)), [], 'a private address');
  t.same(fired(connect('198.18.5.5', 22), () => 'pod'), [], 'a pod');
  t.same(fired(event({ kind: 'module_load', comm: 'insmod' })), ['module-load-from-pod']);
  t.same(fired(event({ kind: 'module_load', comm: 'modprobe', workload: node })), [], 'the node loading a module');
});

t.test('errors name the rule, the field and what is allowed', async (t) => {
  const error = (doc: unknown): string => {
    try {
      parseRuleFile('bad.yaml', typeof doc === 'string' ? doc : JSON.stringify(doc));
    } catch (err) {
      t.type(err, ConfigError);
      return (err as Error).message;
    }
    return 'no error';
  };
  const one = (rule: Record<string, unknown>) => error({ rules: [{ name: 'ok', severity: 'low', description: 'd', match: { kind: 'exec' } }, { name: 'bad-one', severity: 'high', description: 'd', match: { kind: 'exec' }, ...rule }] });
  t.equal(error('rules: [\n'), 'config key "security.rules.path (bad.yaml)": not valid YAML: ' + error('rules: [\n').split('not valid YAML: ')[1]);
  t.match(error('rules: [\n'), /not valid YAML/);
  t.match(error({ rule: [] }), /security\.rules\.path \(bad\.yaml\).*expected a mapping with one key, "rules"/);
  t.match(one({ severity: 'urgent' }), /rules\[1\] "bad-one" severity: got "urgent", allowed values: low, medium, high, critical/);
  t.match(one({ name: 'Bad Name' }), /rules\[1\] "Bad Name" name: got "Bad Name", expected 1 to 64 lower-case/);
  t.match(one({ name: 'ok' }), /rules\[1\] "ok" name: another rule has the same name/);
  t.match(one({ description: '' }), /rules\[1\] "bad-one" description: .*expected a non-empty text/);
  t.match(one({ when: {} }), /rules\[1\] "bad-one" when: unknown key; allowed keys: name, severity, description, match/);
  t.match(one({ match: { kind: 'exce' } }), /rules\[1\] "bad-one" match\.kind: got "exce", allowed values: exec, exit, open_write/);
  t.match(one({ match: { kind: { prefix: 'ex' } } }), /match\.kind: .*allowed values: exec/);
  t.match(one({ match: { bianry: '/bin/sh' } }), /rules\[1\] "bad-one" match\.bianry: unknown field; allowed keys: kind, path, binary, .*all, any, not/);
  t.match(one({ match: { path: { prefx: '/etc' } } }), /match\.path: got \{"prefx":"\/etc"\}, expected one of the keys in, prefix, glob/);
  t.match(one({ match: { path: { prefix: [] } } }), /match\.path\.prefix: got \[\], expected a string or a non-empty list of them/);
  t.match(one({ match: { any: [{ kind: 'exec' }, { uid: 'root' }] } }), /rules\[1\] "bad-one" match\.any\[1\]\.uid: got "root", expected a number, \{gte: N\}, \{lte: N\}/);
  t.match(one({ match: { uid: { gt: 5 } } }), /match\.uid: got \{"gt":5\}, expected \{gte: N\}, \{lte: N\} or both/);
  t.match(one({ match: { not: { address: { cidr: '10.0.0.0/33' } } } }), /match\.not\.address\.cidr: got "10\.0\.0\.0\/33", expected an IPv4 or IPv6 CIDR prefix/);
  t.match(one({ match: { inPod: 'yes' } }), /match\.inPod: got "yes", expected true or false/);
  t.match(one({ match: {} }), /rules\[1\] "bad-one" match: got \{\}, expected a mapping of conditions/);
  t.match(one({ match: { any: [] } }), /match\.any: got \[\], expected a non-empty list of conditions/);
  t.match(error({ rules: [5] }), /rules\[0\] got 5, expected a mapping with name, severity, description and match/);
});

t.test('the README documents every field of the rule language', async (t) => {
  const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
  const section = readme.slice(readme.indexOf('### Detection rules'));
  for (const { field } of ruleFields()) t.match(section, `| \`${field}\` |`, `${field} is in the README's table`);
});
