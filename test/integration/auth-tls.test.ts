// TLS on the agent's HTTP server and gRPC API: a client trusting another CA
// is refused, a certificate rotated on disk is served without a restart,
// mutual TLS refuses a client without a certificate; a real Prometheus
// scrapes over TLS with a bearer token, and one without the token sees the
// target down with 401.
import t from 'tap';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { credentials, Metadata, type ServiceError, type Client } from '@grpc/grpc-js';
import { requirePrivileges } from '../helpers/env.js';
import { onlyCollectors, startAgent } from '../helpers/agent.js';
import { createPki } from '../helpers/tls.js';
import { startPrometheus } from '../helpers/prometheus.js';
import { waitFor } from '../helpers/wait.js';
import { agentServiceDefinition } from '../../src/api/grpc.js';
import { schema } from '../../src/config.js';

const token = 'scraper-token-1f2e3d4c5b6a';

/** The certificate the agent presents, or the handshake's error. */
async function handshake(port: number, opts: { ca: string; cert?: string; key?: string }): Promise<{ fingerprint: string; authorized: boolean } | { error: string }> {
  const socket: TLSSocket = connect({ host: '127.0.0.1', port, ca: readFileSync(opts.ca), ...(opts.cert ? { cert: readFileSync(opts.cert), key: readFileSync(opts.key!) } : {}), servername: 'localhost' });
  try {
    await once(socket, 'secureConnect');
    // TLS 1.3 reports a refused client certificate only after the handshake: one request tells.
    socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    const [data] = (await Promise.race([once(socket, 'data'), once(socket, 'end').then(() => [Buffer.alloc(0)])])) as [Buffer];
    if (!String(data).startsWith('HTTP/1.1 200')) return { error: `no answer: ${String(data).slice(0, 40)}` };
    return { fingerprint: socket.getPeerCertificate().fingerprint256, authorized: socket.authorized };
  } catch (err) {
    return { error: (err as Error).message };
  } finally {
    socket.destroy();
  }
}

/** The certificate a TLS server presents (gRPC: over ALPN h2), without a request. */
async function presented(port: number, opts: { ca: string; cert: string; key: string }): Promise<string> {
  const socket = connect({ host: '127.0.0.1', port, ca: readFileSync(opts.ca), cert: readFileSync(opts.cert), key: readFileSync(opts.key), servername: 'localhost', ALPNProtocols: ['h2'] });
  try {
    await once(socket, 'secureConnect');
    return socket.getPeerCertificate().fingerprint256;
  } finally {
    socket.destroy();
  }
}

t.test('TLS and mutual TLS on HTTP and gRPC, rotation on disk, Prometheus with a bearer token', async (t) => {
  if (!requirePrivileges(t, 'a live agent')) return;
  const pki = createPki(t);
  const ca = pki.ca('agent-ca');
  const otherCa = pki.ca('other-ca');
  const clientCa = pki.ca('client-ca');
  const server = pki.issue(ca, 'agent', 'server');
  const client = pki.issue(clientCa, 'prometheus', 'client');
  const strangerClient = pki.issue(otherCa, 'stranger', 'client');
  const tokenFile = path.join(pki.dir, 'tokens.yaml');
  writeFileSync(tokenFile, `tokens:\n  - {name: prometheus, token: ${token}, role: viewer}\n`);
  const bearerFile = path.join(pki.dir, 'bearer');
  writeFileSync(bearerFile, token);

  const agent = await startAgent({
    env: {
      ...onlyCollectors(),
      PROBEPILOT_TLS_CERT_FILE: server.cert,
      PROBEPILOT_TLS_KEY_FILE: server.key,
      PROBEPILOT_TLS_CLIENT_CA_FILE: clientCa.cert,
      PROBEPILOT_TLS_RELOAD_INTERVAL_SECONDS: '0.5',
      PROBEPILOT_AUTH_MODE: 'tokens',
      PROBEPILOT_AUTH_TOKEN_FILES: tokenFile,
    },
    args: ['--grpc-listen', '127.0.0.1:0'],
    waitReady: false,
  });
  t.teardown(() => agent.stop());
  t.match(agent.logs.find((l) => l.msg === 'listening'), { address: /^https:/, tls: true, mutualTls: true }, 'the HTTP server speaks TLS');
  const mtls = { ca: ca.cert, cert: client.cert, key: client.key };

  await t.test('handshakes', async (t) => {
    t.match(await handshake(agent.port, mtls), { fingerprint: server.fingerprint, authorized: true }, 'the right CA and a client certificate: the configured certificate');
    t.match(await handshake(agent.port, { ...mtls, ca: otherCa.cert }), { error: /self.signed|unable to verify|certificate/i }, 'a client trusting another CA refuses the agent');
    t.match(await handshake(agent.port, { ca: ca.cert }), { error: /./ }, 'no client certificate: refused');
    t.match(await handshake(agent.port, { ...mtls, cert: strangerClient.cert, key: strangerClient.key }), { error: /./ }, 'a client certificate of another CA: refused');
    const protocols = await new Promise<string>((resolve) => {
      const s = connect({ host: '127.0.0.1', port: agent.port, ca: readFileSync(ca.cert), cert: readFileSync(client.cert), key: readFileSync(client.key), servername: 'localhost', maxVersion: 'TLSv1.1', minVersion: 'TLSv1' });
      s.on('secureConnect', () => (s.destroy(), resolve('connected')));
      s.on('error', (err) => resolve(err.message));
    });
    t.not(protocols, 'connected', `TLS 1.1 is refused (${protocols})`);
  });

  const grpcAddress = String((await agent.waitForLog((l) => l.msg === 'gRPC API listening', 'the gRPC API')).address);
  const Agent = agentServiceDefinition();
  const getStatus = (c: Client, withToken: boolean) =>
    new Promise<{ code: number; node?: string }>((resolve) => {
      const md = new Metadata();
      if (withToken) md.set('authorization', `Bearer ${token}`);
      (c as unknown as { GetStatus(r: object, m: Metadata, o: object, cb: (e: ServiceError | null, r?: { node: string }) => void): void }).GetStatus({}, md, { deadline: Date.now() + 5000 }, (err, res) => resolve(err ? { code: err.code } : { code: 0, node: res!.node }));
    });
  await t.test('gRPC over mutual TLS with the same guard', async (t) => {
    const good = new Agent(grpcAddress, credentials.createSsl(readFileSync(ca.cert), readFileSync(client.key), readFileSync(client.cert)), { 'grpc.ssl_target_name_override': 'localhost' });
    t.teardown(() => good.close());
    t.match(await getStatus(good, true), { code: 0, node: /./ }, 'TLS, client certificate and token: answered');
    t.equal((await getStatus(good, false)).code, 16, 'no token: UNAUTHENTICATED');
    const noCert = new Agent(grpcAddress, credentials.createSsl(readFileSync(ca.cert)), { 'grpc.ssl_target_name_override': 'localhost' });
    t.teardown(() => noCert.close());
    t.equal((await getStatus(noCert, true)).code, 14, 'no client certificate: UNAVAILABLE (the handshake fails)');
    const plain = new Agent(grpcAddress, credentials.createInsecure());
    t.teardown(() => plain.close());
    t.equal((await getStatus(plain, true)).code, 14, 'plaintext: refused');
  });

  await t.test('Prometheus 2.42 over TLS: with the bearer token up, without it down with 401', async (t) => {
    const target = `localhost:${agent.port}`;
    const tls = { caFile: ca.cert, certFile: client.cert, keyFile: client.key };
    const withToken = await startPrometheus({ targets: [target], tls, bearerTokenFile: bearerFile });
    t.teardown(() => withToken.stop());
    const without = await startPrometheus({ targets: [target], tls });
    t.teardown(() => without.stop());
    const up = await withToken.waitFor(async () => (await withToken.targets()).find((x) => x.health === 'up'), 20_000, 'the target up');
    t.equal(up.lastError, '', 'scraped without error');
    const collectors = await withToken.waitFor(async () => {
      const r = await withToken.query('count(probepilot_collector_up)');
      return r.length > 0 && r;
    }, 20_000, 'scraped series');
    t.equal(collectors[0]!.value, Object.keys(schema.collectors).length, 'every collector reports its state through the TLS scrape');
    const down = await without.waitFor(async () => (await without.targets()).find((x) => x.health === 'down'), 20_000, 'the target down');
    t.match(down.lastError, /401/, `without the token: ${down.lastError}`);
  });

  await t.test('a certificate rotated on disk is served without a restart', async (t) => {
    const pid = agent.child.pid;
    const renewed = pki.issue(ca, 'agent', 'server', { cert: server.cert, key: server.key });
    t.not(renewed.fingerprint, server.fingerprint, 'a new certificate');
    const served = await waitFor(async () => {
      const r = await handshake(agent.port, mtls);
      return 'fingerprint' in r && r.fingerprint === renewed.fingerprint && r;
    }, { timeoutMs: 10_000, what: 'the renewed certificate on the HTTP server' });
    t.ok(served, 'the HTTP server presents the renewed certificate');
    t.equal(agent.child.pid, pid, 'same process');
    t.equal(agent.child.exitCode, null, 'not restarted');
    const c = new Agent(grpcAddress, credentials.createSsl(readFileSync(ca.cert), readFileSync(client.key), readFileSync(client.cert)), { 'grpc.ssl_target_name_override': 'localhost' });
    t.teardown(() => c.close());
    t.equal((await getStatus(c, true)).code, 0, 'gRPC still answers after the rotation');
    const grpcPort = Number(grpcAddress.split(':').at(-1));
    await waitFor(async () => (await presented(grpcPort, mtls)) === renewed.fingerprint, { timeoutMs: 10_000, what: 'the renewed certificate on the gRPC API' });
    t.pass('the gRPC API presents the renewed certificate');
    t.ok(agent.logs.some((l) => l.msg === 'TLS certificate reloaded'), 'the reload is logged');
  });
});
