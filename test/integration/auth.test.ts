// Authentication, roles, audit and limits on a live agent with static tokens
// (auth.mode=tokens): every route of the OpenAPI document is tried without a
// token (401), with a role below the one it declares (403) and with that role
// (200); every denial and every mutating call is one audit record; a request
// loop is cut at the token bucket's depth plus its refill; fuzzed headers,
// tokens and query parameters never get a 5xx nor past the guard.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { requirePrivileges } from '../helpers/env.js';
import { onlyCollectors, startAgent, type AgentProcess } from '../helpers/agent.js';
import { waitFor } from '../helpers/wait.js';
import { roles, type Access, type Role } from '../../src/auth/principal.js';

const tokens: Record<Role, string> = { viewer: 'viewer-token-4f1b2c3d4e5f', operator: 'operator-token-9a8b7c6d5e4f', admin: 'admin-token-0a1b2c3d4e5f6a7b' };

function tempDir(t: { teardown(fn: () => unknown): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-auth-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeTokens(dir: string): string {
  const file = path.join(dir, 'tokens.yaml');
  writeFileSync(file, `tokens:\n${roles.map((role) => `  - {name: ${role}-client, token: ${tokens[role]}, role: ${role}}`).join('\n')}\n`);
  return file;
}

async function tokensAgent(t: { teardown(fn: () => unknown): void }, env: NodeJS.ProcessEnv = {}): Promise<{ agent: AgentProcess; auditFile: string }> {
  const dir = tempDir(t);
  const auditFile = path.join(dir, 'audit.log');
  const agent = await startAgent({
    env: { ...onlyCollectors(), PROBEPILOT_AUTH_MODE: 'tokens', PROBEPILOT_AUTH_TOKEN_FILES: writeTokens(dir), PROBEPILOT_AUDIT_FILE: auditFile, ...env },
    waitReady: false,
  });
  t.teardown(() => agent.stop());
  await waitFor(async () => (await fetch(`${agent.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'readiness' });
  return { agent, auditFile };
}

interface AuditLine {
  log: string;
  principal: { name: string; role: string } | null;
  transport: string;
  method: string;
  path: string;
  remote: string;
  decision: string;
  reason: string;
  status: number;
}

function auditLines(file: string): AuditLine[] {
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as AuditLine);
}

const bodies: Record<string, unknown> = { 'PUT /api/v1/collectors/{name}': { enabled: false } };
const concrete = (p: string) => p.replace('{name}', 'process');

/** Status of a call; an event stream is cancelled once its status is known. */
async function call(url: string, method: string, token: string | undefined, body?: unknown): Promise<number> {
  const controller = new AbortController();
  const res = await fetch(url, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: controller.signal,
  });
  controller.abort();
  return res.status;
}

t.test('every route of the OpenAPI document: 401 without a token, 403 below its role, 200 with it; audited', async (t) => {
  if (!requirePrivileges(t, 'a live agent')) return;
  const { agent, auditFile } = await tokensAgent(t, { PROBEPILOT_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND: '0' });
  const doc = (await (await fetch(`${agent.url}/api/v1/openapi.json`, { headers: { authorization: `Bearer ${tokens.viewer}` } })).json()) as {
    paths: Record<string, Record<string, { 'x-probepilot-access'?: Access }>>;
  };
  const operations = Object.entries(doc.paths).flatMap(([p, methods]) => Object.entries(methods).map(([m, op]) => ({ method: m.toUpperCase(), path: p, access: op['x-probepilot-access'] })));
  t.ok(operations.length >= 8, `${operations.length} operations`);
  let denials = 0;
  let mutations = 0;
  for (const { method, path: p, access } of operations) {
    const name = `${method} ${p}`;
    t.ok(access && !access.open, `${name} declares a guarded access`);
    if (!access || access.open) continue;
    const url = `${agent.url}${concrete(p)}`;
    const body = bodies[name];
    t.equal(await call(url, method, undefined, body), 401, `${name} without a token`);
    t.equal(await call(url, method, 'not-a-known-token-at-all', body), 401, `${name} with an unknown token`);
    denials += 2;
    const needed = roles.indexOf(access.role);
    for (const role of roles) {
      const status = await call(url, method, tokens[role], body);
      if (roles.indexOf(role) < needed) {
        t.equal(status, 403, `${name} as ${role}`);
        denials++;
      } else {
        t.equal(status, 200, `${name} as ${role}`);
        if (method !== 'GET') mutations++;
      }
    }
  }
  for (const [p, open] of [['/healthz', true], ['/readyz', true], ['/metrics', false]] as const) {
    t.equal(await call(`${agent.url}${p}`, 'GET', undefined), open ? 200 : 401, `${p} without a token`);
    t.equal(await call(`${agent.url}${p}`, 'GET', tokens.viewer), 200, `${p} as viewer`);
    if (!open) denials++;
  }
  t.equal(await call(`${agent.url}/api/v1/nothing-here`, 'GET', undefined), 401, 'an unknown URL without a token: 401, not 404');
  t.equal(await call(`${agent.url}/api/v1/nothing-here`, 'GET', tokens.viewer), 404, 'an unknown URL as viewer: 404');
  denials++;

  const lines = await waitFor(() => {
    const l = auditLines(auditFile);
    return l.length >= denials + mutations && l;
  }, { timeoutMs: 5000, what: 'the audit records' });
  const denied = lines.filter((l) => l.decision === 'deny');
  const allowed = lines.filter((l) => l.decision === 'allow');
  t.equal(denied.length, denials, `one record per denied request (${denials})`);
  t.equal(allowed.length, mutations, `one record per mutating call (${mutations})`);
  t.ok(lines.every((l) => l.log === 'audit' && l.transport === 'http' && l.remote === '127.0.0.1'), 'who/from where/what on every record');
  t.ok(denied.every((l) => (l.status === 401 && l.reason === 'unauthenticated' && l.principal === null) || (l.status === 403 && l.reason === 'forbidden' && l.principal !== null)), 'denials carry reason, status and principal');
  t.ok(allowed.every((l) => l.status === 200 && ['operator', 'admin'].includes(l.principal?.role ?? '') && l.method !== 'GET'), 'mutating calls carry their result');
  t.ok(allowed.some((l) => l.path === '/api/v1/collectors/process' && l.method === 'PUT' && l.principal?.name === 'operator-client'), 'the collector change is recorded with its caller');
  t.notOk(readFileSync(auditFile, 'utf8').includes(tokens.admin) || readFileSync(auditFile, 'utf8').includes(tokens.viewer), 'no token in the audit log');
});

t.test('a request loop is cut with 429 and Retry-After at the bucket depth plus its refill; other identities are not', async (t) => {
  if (!requirePrivileges(t, 'a live agent')) return;
  const rate = 2;
  const burst = 10;
  const { agent, auditFile } = await tokensAgent(t, { PROBEPILOT_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND: String(rate), PROBEPILOT_AUTH_RATE_LIMIT_BURST: String(burst) });
  const started = performance.now();
  const statuses: number[] = [];
  let retryAfter = '';
  for (let i = 0; i < 40; i++) {
    const res = await fetch(`${agent.url}/api/v1/status`, { headers: { authorization: `Bearer ${tokens.viewer}` } });
    statuses.push(res.status);
    if (res.status === 429) retryAfter = res.headers.get('retry-after') ?? '';
    await res.arrayBuffer();
  }
  const elapsed = (performance.now() - started) / 1000;
  const ok = statuses.filter((s) => s === 200).length;
  t.same([...new Set(statuses)].sort(), [200, 429], 'only 200 and 429');
  t.ok(ok >= burst && ok <= burst + Math.ceil(rate * elapsed) + 1, `${ok} allowed of 40 in ${elapsed.toFixed(2)} s (burst ${burst} + ${rate}/s)`);
  t.ok(Number(retryAfter) >= 1, `Retry-After: ${retryAfter}`);
  t.equal((await fetch(`${agent.url}/api/v1/status`, { headers: { authorization: `Bearer ${tokens.operator}` } })).status, 200, 'another identity has its own bucket');
  t.equal((await fetch(`${agent.url}/healthz`)).status, 200, 'probes are not limited');
  await new Promise((resolve) => setTimeout(resolve, Number(retryAfter) * 1000));
  t.equal((await fetch(`${agent.url}/api/v1/status`, { headers: { authorization: `Bearer ${tokens.viewer}` } })).status, 200, 'allowed again after Retry-After');
  const limited = auditLines(auditFile).filter((l) => l.reason === 'rate_limited');
  t.equal(limited.length, statuses.filter((s) => s === 429).length, 'each 429 is an audit record');
});

t.test('event streams per identity are capped; body, query and header sizes are limited', async (t) => {
  if (!requirePrivileges(t, 'a live agent')) return;
  const { agent } = await tokensAgent(t, { PROBEPILOT_AUTH_MAX_STREAMS_PER_IDENTITY: '2', PROBEPILOT_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND: '0', PROBEPILOT_LIMITS_QUERY_BYTES: '4096' });
  const controllers: AbortController[] = [];
  t.teardown(() => controllers.forEach((c) => c.abort()));
  const open = async (token: string) => {
    const c = new AbortController();
    controllers.push(c);
    return (await fetch(`${agent.url}/api/v1/events`, { headers: { authorization: `Bearer ${token}` }, signal: c.signal })).status;
  };
  t.same([await open(tokens.viewer), await open(tokens.viewer), await open(tokens.viewer)], [200, 200, 429], 'the third stream of one identity is refused');
  t.equal(await open(tokens.operator), 200, 'another identity may open its own');
  controllers[0]!.abort();
  await waitFor(async () => (await open(tokens.viewer)) === 200, { timeoutMs: 5000, what: 'a stream slot freed by a closed stream' });

  const auth = { authorization: `Bearer ${tokens.operator}`, 'content-type': 'application/json' };
  const big = JSON.stringify({ enabled: false, pad: 'x'.repeat(70_000) });
  t.equal((await fetch(`${agent.url}/api/v1/collectors/process`, { method: 'PUT', headers: auth, body: big })).status, 413, 'a body over limits.bodyBytes: 413');
  t.equal((await fetch(`${agent.url}/api/v1/flows?namespace=${'a'.repeat(5000)}`, { headers: auth })).status, 414, 'a query over limits.queryBytes: 414');
  t.equal((await fetch(`${agent.url}/api/v1/status`, { headers: { ...auth, 'x-pad': 'y'.repeat(20_000) } })).status, 431, 'headers over limits.headerBytes: 431');
});

t.test('fuzzed headers, tokens and query parameters: no 5xx, no crash, no way past the guard', async (t) => {
  if (!requirePrivileges(t, 'a live agent')) return;
  const { agent } = await tokensAgent(t, { PROBEPILOT_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND: '0' });
  const valid = new Set(Object.values(tokens));
  const printable = fc.string({ unit: fc.constantFrom(...' !"#$%&\'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~'), maxLength: 80 });
  // Near misses of real tokens: a prefix, a suffix added, one character changed, another case.
  const nearToken = fc.tuple(fc.constantFrom(...valid), fc.nat(40), printable).map(([tok, cut, extra]) => [tok.slice(0, cut % tok.length), tok + extra, tok.toUpperCase(), `${tok.slice(0, -1)}${extra.slice(0, 1) || 'Z'}`][cut % 4]!);
  const authorization = fc.oneof(
    printable,
    fc.tuple(fc.constantFrom('Bearer ', 'bearer ', 'BEARER  ', 'Basic ', 'Bearer', 'Token '), fc.oneof(printable, nearToken)).map(([scheme, tok]) => `${scheme}${tok}`),
  );
  const paths = ['/metrics', '/api/v1/status', '/api/v1/flows', '/api/v1/workloads', '/api/v1/collectors', '/api/v1/openapi.json', '/api/v1/nope', '/%2e%2e/metrics', '/metrics/', '/METRICS', '//metrics', '/api/v1/collectors/..%2fconfig'];
  const query = fc.array(fc.tuple(fc.constantFrom('view', 'namespace', 'pod', 'limit', 'sort', 'types', 'peer', 'x', '__proto__', 'constructor'), printable), { maxLength: 4 });
  const headerName = fc.constantFrom('x-forwarded-for', 'x-real-ip', 'x-remote-user', 'impersonate-user', 'x-prometheus-scrape-timeout-seconds', 'accept-encoding', 'x-forwarded-proto');
  let runs = 0;
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...paths), fc.constantFrom('GET', 'PUT', 'POST'), authorization, query, fc.array(fc.tuple(headerName, printable), { maxLength: 3 }), async (p, method, auth, params, headers) => {
      runs++;
      const search = new URLSearchParams(params).toString();
      const res = await fetch(`${agent.url}${p}${search ? `?${search}` : ''}`, { method, headers: { authorization: auth, ...Object.fromEntries(headers) }, ...(method === 'GET' ? {} : { body: '{}', headers: { authorization: auth, 'content-type': 'application/json', ...Object.fromEntries(headers) } }) });
      await res.arrayBuffer();
      if (res.status >= 500) return false;
      // No valid token sent: nothing but 401 (or 414 for a query over the limit) may come back.
      const token = /^Bearer +(\S+) *$/i.exec(auth)?.[1];
      if (!token || !valid.has(token)) return res.status === 401 || res.status === 414;
      return true;
    }),
    { numRuns: 300, seed: 1101 },
  );
  t.equal(runs >= 300, true, `${runs} fuzzed requests`);
  t.equal(agent.child.exitCode, null, 'the agent is still running');
  t.equal((await fetch(`${agent.url}/healthz`)).status, 200, 'and answering');
  t.equal(agent.stderr(), '', 'nothing on stderr');
});
