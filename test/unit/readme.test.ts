// The README is the front door: every config key, its environment name and
// every metric family must be documented there.
import type { Guard } from '../../src/auth/guard.js';
import t from 'tap';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { envName, leaves } from '../../src/config.js';
import { CollectorManager } from '../../src/collectors/manager.js';
import { collectorFactories } from '../../src/collectors/index.js';
import { resolveConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import type { NativeAddon } from '../../src/bpf/addon.js';
import type { Identity } from '../../src/identity/identity.js';
import Fastify from 'fastify';
import { registerApi } from '../../src/api/rest.js';
import { EventPipeline } from '../../src/events/pipeline.js';
import { SecurityMonitor } from '../../src/events/security.js';
import type { AgentService } from '../../src/api/service.js';

const readme = readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../README.md'), 'utf8');

t.test('every config key and environment name is in the README', async (t) => {
  for (const { key } of leaves()) {
    t.match(readme, `\`${key}\``, key);
    t.match(readme, `\`${envName(key)}\``, envName(key));
  }
});

t.test('every metric family is in the README', async (t) => {
  const addon = { possibleCpus: () => 1 } as unknown as NativeAddon;
  const identity = { labelNames: () => ['cgroup'] } as unknown as Identity;
  const log = createLogger('silent');
  const manager = new CollectorManager(collectorFactories({ config: resolveConfig(), log, addon, identity }), log, true);
  for (const { name } of manager.descriptors()) t.match(readme, `\`${name}\``, name);
  const pipeline = new EventPipeline({ config: resolveConfig(), log, addon, identity });
  for (const { name } of pipeline.families) t.match(readme, `\`${name}\``, name);
  for (const { name } of new SecurityMonitor({ config: resolveConfig(), log, identity, pipeline }).families) t.match(readme, `\`${name}\``, name);
});

t.test('the README carries the two front-door commands', async (t) => {
  t.match(readme, './scripts/dev npm start');
  t.match(readme, './scripts/dev npm test');
});

t.test('every API endpoint (from the OpenAPI document the routes build) and client command is in the README', async (t) => {
  const app = Fastify();
  registerApi(app as unknown as Parameters<typeof registerApi>[0], {} as AgentService, {} as Guard);
  const res = await app.inject({ method: 'GET', url: '/api/v1/openapi.json' });
  const paths = (res.json() as { paths: Record<string, Record<string, unknown>> }).paths;
  const endpoints = Object.entries(paths).flatMap(([p, methods]) => Object.keys(methods).map((m) => `${m.toUpperCase()} ${p}`));
  t.ok(endpoints.length >= 6, `${endpoints.length} endpoints`);
  for (const endpoint of endpoints) t.match(readme, `\`${endpoint}\``, endpoint);
  for (const command of ['probepilot status', 'probepilot flows', 'probepilot collectors', 'probepilot reload', 'probepilot doctor', 'probepilot trace syscall', 'probepilot trace network']) t.match(readme, command, command);
  await app.close();
});
