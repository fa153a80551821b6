// The guard's pieces without a server: token files (errors name the entry
// and the allowed values), the tenant visibility rule over label sets, and
// the token bucket against a clock the test moves.
import t from 'tap';
import { ConfigError } from '../../src/config.js';
import { parseTokenFile } from '../../src/auth/tokens.js';
import { bearerToken } from '../../src/auth/guard.js';
import { visible, roleAllows } from '../../src/auth/principal.js';
import { RateLimiter } from '../../src/auth/rate-limit.js';

t.test('token files', async (t) => {
  const ok = parseTokenFile('f.yaml', 'tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaa, role: viewer, namespaces: [team-a]}\n  - {name: b, token: bbbbbbbbbbbbbbbb, role: admin}\n');
  t.same([...ok.values()], [{ name: 'a', kind: 'token', role: 'viewer', namespaces: ['team-a'] }, { name: 'b', kind: 'token', role: 'admin' }]);
  const bad: Array<[string, RegExp]> = [
    ['tokens: {}', /"tokens" list/],
    ['tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaa, role: root}', /tokens\[0\]\.role.*got "root", allowed values: viewer, operator, admin/],
    ['tokens:\n  - {name: a, token: short, role: viewer}', /tokens\[0\]\.token.*at least 16/],
    ['tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaa, role: viewer, namespaces: [Not_A_Namespace]}', /tokens\[0\]\.namespaces/],
    ['tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaa, role: viewer, scope: x}', /unknown key "scope"/],
    ['tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaa, role: viewer}\n  - {name: b, token: aaaaaaaaaaaaaaaa, role: admin}', /listed twice/],
  ];
  for (const [text, message] of bad) {
    t.throws(() => parseTokenFile('f.yaml', text), ConfigError);
    t.throws(() => parseTokenFile('f.yaml', text), { message }, message.source);
  }
  t.notOk(String((() => { try { parseTokenFile('f.yaml', 'tokens:\n  - {name: a, token: secret-secret-secret, role: x}'); } catch (err) { return (err as Error).message; } })()).includes('secret-secret'), 'a token is never echoed');
});

t.test('bearer tokens and roles', async (t) => {
  t.equal(bearerToken('Bearer abc'), 'abc');
  t.equal(bearerToken('bearer   abc  '), 'abc');
  for (const header of [undefined, '', 'Bearer', 'Bearer ', 'Basic abc', 'Bearer a b', 'Bearer\tabc', 'xBearer abc']) t.equal(bearerToken(header), undefined, JSON.stringify(header));
  t.same(
    (['viewer', 'operator', 'admin'] as const).map((held) => (['viewer', 'operator', 'admin'] as const).filter((needed) => roleAllows(held, needed))),
    [['viewer'], ['viewer', 'operator'], ['viewer', 'operator', 'admin']],
  );
});

t.test('what a tenant of team-a sees', async (t) => {
  const scope = { namespaces: new Set(['team-a']) };
  const cases: Array<[Record<string, string>, boolean]> = [
    [{ collector: 'network' }, true],
    [{}, true],
    [{ namespace: 'team-a', pod: 'web' }, true],
    [{ namespace: 'team-b', pod: 'db' }, false],
    [{ namespace: '', pod: '' }, false],
    [{ cgroup: '/system.slice/sshd.service' }, false],
    [{ namespace: 'team-a', pod: 'web', peer_namespace: 'team-b', peer_workload: 'db' }, false],
    [{ namespace: 'team-a', pod: 'web', peer_namespace: '', peer_class: 'world' }, true],
    [{ namespace: 'team-a', pod: 'web', peer_namespace: 'team-a', peer_workload: 'api' }, true],
    [{ peer_pod: 'db' }, false],
  ];
  for (const [labels, expected] of cases) t.equal(visible(labels, scope), expected, JSON.stringify(labels));
  t.ok(cases.every(([labels]) => visible(labels, {})), 'no namespaces: everything');
});

t.test('the token bucket: burst, then rate, and Retry-After to the next token', async (t) => {
  let now = 0;
  const limiter = new RateLimiter(2, 5, () => now);
  const first = Array.from({ length: 8 }, () => limiter.take('a'));
  t.same(first.map((w) => w === 0), [true, true, true, true, true, false, false, false], 'the burst of 5, then refused');
  t.equal(first[5], 0.5, 'the next token in 0.5 s at 2/s');
  t.equal(limiter.take('b'), 0, 'another key has its own bucket');
  now = 500;
  t.equal(limiter.take('a'), 0, 'one token after 0.5 s');
  t.equal(limiter.take('a'), 0.5);
  now = 100_000;
  t.equal(Array.from({ length: 6 }, () => limiter.take('a')).filter((w) => w === 0).length, 5, 'refilled to the burst, never above it');
  t.equal(new RateLimiter(0, 1, () => now).take('a'), 0, 'rate 0: no limit');
});
