#!/usr/bin/env node
// probepilot: the agent (`probepilot agent`, `--cleanup` to remove what it leaves running) and the commands an operator
// runs against it (status, flows, collectors, reload; doctor checks the host).
import { Command, Option } from 'commander';
import { ConfigError, readConfigFile, resolveConfig } from './config.js';
import { createLogger, logLevels } from './log.js';
import { agentVersion } from './version.js';
import { AgentClient, AgentRequestError, defaultAgentUrl, renderClusterFlows, renderClusterStatus, renderCollectors, renderFlows, renderStatus, renderTable } from './client.js';
import { flowDirections, flowProtocols, flowSorts, flowViews, type AgentStatus, type CollectorStatus, type FlowQuery, type FlowsResult } from './api/service.js';
import type { ConfigChange } from './reload.js';

const program = new Command('probepilot').description('eBPF observability agent for Kubernetes nodes').version(agentVersion);

program
  .command('agent')
  .description('run the node agent: attach collectors and serve /metrics')
  .option('--listen <host:port>', 'address of the HTTP server (default 0.0.0.0:9742, env PROBEPILOT_LISTEN)')
  .option('--grpc-listen <host:port>', 'address of the gRPC API (default: none, env PROBEPILOT_GRPC_LISTEN)')
  .option('--config <file>', 'YAML or JSON config file (env PROBEPILOT_CONFIG)')
  .addOption(new Option('--log-level <level>', 'log level (env PROBEPILOT_LOG_LEVEL)').choices(logLevels))
  .option('--cleanup', 'remove what a stopped agent leaves running (pins, links, programs, its clsact filters and qdiscs) and exit')
  .action(async (options: { listen?: string; grpcListen?: string; config?: string; logLevel?: string; cleanup?: boolean }) => {
    const flags: Record<string, string> = {};
    if (options.listen !== undefined) flags.listen = options.listen;
    if (options.grpcListen !== undefined) flags.grpcListen = options.grpcListen;
    if (options.logLevel !== undefined) flags.logLevel = options.logLevel;
    const configFile = options.config ?? process.env.PROBEPILOT_CONFIG;
    const readConfig = () => resolveConfig({ file: configFile ? readConfigFile(configFile) : undefined, env: process.env, flags });
    const config = readConfig();
    const log = createLogger(config.logLevel);
    if (options.cleanup) {
      const [{ cleanup }, { loadAddon }] = await Promise.all([import('./cleanup.js'), import('./bpf/addon.js')]);
      const report = cleanup(config.pins, loadAddon(), log);
      log.info({ ...report, pinRoot: config.pins.root }, 'cleanup done');
      return;
    }
    // Loaded here: the client commands start fast without the agent's modules (BPF, OpenTelemetry, Kubernetes).
    const { Agent } = await import('./agent.js');
    const agent = new Agent(config, log, readConfig);
    let stopping = false;
    const shutdown = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      agent.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', () => shutdown('SIGTERM'));
    process.on('SIGINT', () => shutdown('SIGINT'));
    // SIGHUP: read the configuration again, as POST /api/v1/config/reload does.
    process.on('SIGHUP', () => {
      agent.reload().catch((err: unknown) => log.error({ err: err instanceof Error ? err.message : String(err) }, 'configuration not reloaded; keeping the current one'));
    });
    try {
      await agent.start();
    } catch (err) {
      await agent.stop().catch(() => undefined);
      // A setting only checkable at start (a kubeconfig file) is a config error like any other.
      if (err instanceof ConfigError) {
        process.stderr.write(`probepilot: ${err.message}\n`);
        process.exit(2);
      }
      log.fatal({ err }, 'agent failed to start');
      process.exit(1);
    }
  });

type Output = 'table' | 'json' | 'wide';

/** The options every client command takes. */
function clientCommand(name: string, description: string, outputs: readonly Output[]): Command {
  return program
    .command(name)
    .description(description)
    .addOption(new Option('--agent <url>', 'the agent\'s HTTP address (env PROBEPILOT_AGENT)').default(process.env.PROBEPILOT_AGENT ?? defaultAgentUrl))
    .addOption(new Option('-o, --output <format>', 'output format').choices(outputs).default('table'));
}

interface ClusterFlags {
  mode: 'agent' | 'cluster';
  prometheus?: string;
  kubeconfig: string;
  agentsNamespace: string;
  agentsService: string;
}

/** --mode cluster: ask every agent, found from the EndpointSlices of their Service. */
function withClusterMode(command: Command): Command {
  return command
    .addOption(new Option('--mode <mode>', 'one agent (--agent) or every agent of the cluster').choices(['agent', 'cluster']).default('agent'))
    .option('--kubeconfig <file>', 'cluster mode: kubeconfig (default: the in-cluster service account)', process.env.KUBECONFIG ?? '')
    .option('--agents-namespace <namespace>', 'cluster mode: namespace of the agents\' Service', 'probepilot')
    .option('--agents-service <name>', 'cluster mode: the agents\' Service', 'probepilot')
    .option('--prometheus <url>', 'answer for every node from this Prometheus (which scrapes the agents) instead of asking agents');
}

async function clusterQuery<T>(flags: ClusterFlags, query: (client: AgentClient) => Promise<T>) {
  const { discoverAgents, queryAgents } = await import('./cluster.js');
  let agents;
  try {
    agents = await discoverAgents({ kubeconfig: flags.kubeconfig, namespace: flags.agentsNamespace, service: flags.agentsService });
  } catch (err) {
    throw new AgentRequestError(`cannot list the agents' EndpointSlices (${flags.agentsNamespace}/${flags.agentsService}): ${err instanceof Error ? err.message : String(err)}`);
  }
  if (agents.length === 0) throw new AgentRequestError(`no ready agents in the EndpointSlices of ${flags.agentsNamespace}/${flags.agentsService}`);
  return queryAgents(agents, query);
}

function print(output: Output, json: unknown, text: () => string): void {
  process.stdout.write(output === 'json' ? `${JSON.stringify(json, null, 2)}\n` : text());
}

withClusterMode(clientCommand('status', 'the agent\'s version, mode, kernel and every collector (wide: the interfaces and their attach modes)', ['table', 'json', 'wide'])).action(
  async (options: { agent: string; output: Output } & ClusterFlags) => {
    if (options.prometheus !== undefined) {
      const { statusFromPrometheus } = await import('./prometheus-source.js');
      const nodes = await statusFromPrometheus(options.prometheus);
      print(options.output, { nodes }, () =>
        renderTable(
          ['NODE', 'COLLECTORS UP', 'DOWN'],
          nodes.map((n) => [n.node, `${n.up.length}/${n.up.length + n.down.length}`, n.down.map((d) => `${d.collector} (${d.reason})`).join(', ')]),
        ),
      );
      return;
    }
    if (options.mode === 'cluster') {
      const { answers, unreachable } = await clusterQuery(options, (client) => client.request<AgentStatus>('GET', '/api/v1/status'));
      const rows = answers.map(({ node, url, value }) => ({ node, url, status: value }));
      print(options.output, { agents: rows, unreachable }, () => renderClusterStatus(rows, unreachable));
      if (unreachable.length) process.exitCode = 1;
      return;
    }
    const status = await new AgentClient(options.agent).request<AgentStatus>('GET', '/api/v1/status');
    print(options.output, status, () => renderStatus(status, options.output === 'wide'));
  },
);

withClusterMode(clientCommand('flows', 'top flows per workload and peer (or protocol) with rates, from the counters /metrics exports', ['table', 'json', 'wide']))
  .option('--namespace <namespace>', 'only this namespace')
  .option('--pod <pod>', 'only this pod (a cgroup path in standalone mode)')
  .option('--peer <peer>', 'only this peer: workload, namespace/workload or class (host, node, world, …)')
  .addOption(new Option('--direction <direction>', 'only this direction').choices(flowDirections))
  .addOption(new Option('--view <view>', 'split by peer or by protocol').choices(flowViews).default('peer'))
  .addOption(new Option('--protocol <protocol>', 'only this protocol (view protocol)').choices(flowProtocols))
  .addOption(new Option('--sort <field>', 'order by').choices(flowSorts).default('bytes'))
  .option('--top <n>', 'how many', '20')
  .action(async (options: { agent: string; output: Output; namespace?: string; pod?: string; peer?: string; direction?: FlowQuery['direction']; view: string; protocol?: FlowQuery['protocol']; sort: FlowQuery['sort']; top: string } & ClusterFlags) => {
    const query = new URLSearchParams({ view: options.view, sort: options.sort, limit: options.top });
    for (const key of ['namespace', 'pod', 'peer', 'direction', 'protocol'] as const) {
      const value = options[key];
      if (value !== undefined) query.set(key, value);
    }
    const path = `/api/v1/flows?${query}`;
    if (options.prometheus !== undefined) {
      const { flowsFromPrometheus } = await import('./prometheus-source.js');
      const flowQuery: FlowQuery = {
        view: options.view as FlowQuery['view'],
        sort: options.sort,
        limit: Number(options.top),
        ...(options.namespace !== undefined ? { namespace: options.namespace } : {}),
        ...(options.pod !== undefined ? { pod: options.pod } : {}),
        ...(options.peer !== undefined ? { peer: options.peer } : {}),
        ...(options.protocol !== undefined ? { protocol: options.protocol } : {}),
        ...(options.direction !== undefined ? { direction: options.direction } : {}),
      };
      const result = await flowsFromPrometheus(options.prometheus, flowQuery);
      print(options.output, result, () => renderClusterFlows(result, options.output === 'wide', []));
      return;
    }
    if (options.mode === 'cluster') {
      const { answers, unreachable } = await clusterQuery(options, (client) => client.request<FlowsResult>('GET', path));
      // Each agent's top N, merged: the cluster's top N is among them.
      const all = answers.flatMap(({ node, value }) => value.flows.map((f) => ({ node, ...f }))).sort((a, b) => b[options.sort] - a[options.sort]);
      const intervals = answers.map((a) => a.value.intervalSeconds).filter((i): i is number => i !== null);
      const merged = {
        view: options.view as FlowsResult['view'],
        total: answers.reduce((n, a) => n + a.value.total, 0),
        intervalSeconds: intervals.length === answers.length && intervals.length > 0 ? Math.min(...intervals) : null,
        flows: all.slice(0, Number(options.top)),
      };
      print(options.output, { ...merged, unreachable }, () => renderClusterFlows(merged, options.output === 'wide', unreachable));
      if (unreachable.length) process.exitCode = 1;
      return;
    }
    const flows = await new AgentClient(options.agent).request<FlowsResult>('GET', path);
    print(options.output, flows, () => renderFlows(flows, options.output === 'wide'));
  });

clientCommand('collectors', 'list the collectors, or enable/disable one at run time (disable detaches its programs)', ['table', 'json'])
  .argument('[action]', 'enable or disable')
  .argument('[name]', 'the collector')
  .action(async (action: string | undefined, name: string | undefined, options: { agent: string; output: Output }) => {
    const client = new AgentClient(options.agent);
    if (action === undefined) {
      const collectors = await client.request<CollectorStatus[]>('GET', '/api/v1/collectors');
      print(options.output, collectors, () => renderCollectors(collectors));
      return;
    }
    if ((action !== 'enable' && action !== 'disable') || name === undefined) {
      throw new AgentRequestError('usage: probepilot collectors [enable|disable NAME]');
    }
    const state = await client.request<CollectorStatus>('PUT', `/api/v1/collectors/${encodeURIComponent(name)}`, { enabled: action === 'enable' });
    print(options.output, state, () => renderCollectors([state]));
  });

program
  .command('doctor')
  .description('preflight checks of this host for the agent (PASS/WARN/FAIL, with a remedy); exit 1 on any FAIL')
  .option('--config <file>', 'the agent\'s config file, for its listen address, Kubernetes and GPU settings (env PROBEPILOT_CONFIG)')
  .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table'))
  .action(async (options: { config?: string; output: Output }) => {
    const configFile = options.config ?? process.env.PROBEPILOT_CONFIG;
    const config = resolveConfig({ file: configFile ? readConfigFile(configFile) : undefined, env: process.env });
    const { allChecks } = await import('./doctor.js');
    const results = await allChecks(config);
    print(options.output, results, () =>
      results.map((r) => `${r.verdict.padEnd(4)}  ${r.check.padEnd(20)}  ${r.detail}${r.remedy ? `\n      remedy: ${r.remedy}` : ''}`).join('\n') + '\n',
    );
    if (results.some((r) => r.verdict === 'FAIL')) process.exitCode = 1;
  });

clientCommand('reload', 'make the agent read its configuration again (as SIGHUP): collector changes apply now', ['table', 'json']).action(
  async (options: { agent: string; output: Output }) => {
    const change = await new AgentClient(options.agent).request<ConfigChange>('POST', '/api/v1/config/reload');
    print(options.output, change, () => `applied: ${change.applied.join(', ') || 'nothing'}\nneeds a restart: ${change.restartRequired.join(', ') || 'nothing'}\n`);
  },
);

program.parseAsync().catch((err: unknown) => {
  // 2: the configuration is wrong; 1: the agent could not do what was asked.
  if (err instanceof ConfigError || err instanceof AgentRequestError) {
    process.stderr.write(`probepilot: ${err.message}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
  throw err;
});
