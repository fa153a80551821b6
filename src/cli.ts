#!/usr/bin/env node
// probepilot: the agent (`probepilot agent`, `--cleanup` to remove what it
// leaves running) and the commands an operator runs against it (status,
// flows, top, collectors, reload, trace syscall/network; doctor checks the host;
// explain asks Prometheus why a workload misbehaves).
import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError, readConfigFile, resolveConfig } from './config.js';
import { createLogger, logLevels } from './log.js';
import { agentVersion } from './version.js';
import { AgentClient, AgentRequestError, defaultAgentUrl, renderClusterFlows, renderClusterStatus, renderCollectors, renderFlows, renderStatus, renderTable, renderTraceEvent, streamEvents } from './client.js';
import { compareWorkloads, flowDirections, securityKinds, flowProtocols, flowSorts, flowViews, workloadLimit, workloadSorts, type AgentStatus, type CollectorStatus, type FlowQuery, type FlowsResult, type WorkloadSort, type WorkloadsResult } from './api/service.js';
import type { TopSnapshot } from './top-view.js';
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

/** --mode cluster: ask every agent, found from the EndpointSlices of their Service (or, with --prometheus, the Prometheus that scrapes them). */
function withClusterMode(command: Command, { prometheus = true }: { prometheus?: boolean } = {}): Command {
  command
    .addOption(new Option('--mode <mode>', 'one agent (--agent) or every agent of the cluster').choices(['agent', 'cluster']).default('agent'))
    .option('--kubeconfig <file>', 'cluster mode: kubeconfig (default: the in-cluster service account)', process.env.KUBECONFIG ?? '')
    .option('--agents-namespace <namespace>', 'cluster mode: namespace of the agents\' Service', 'probepilot')
    .option('--agents-service <name>', 'cluster mode: the agents\' Service', 'probepilot');
  return prometheus ? command.option('--prometheus <url>', 'answer for every node from this Prometheus (which scrapes the agents) instead of asking agents') : command;
}

/** The interval merged rates are over: the shortest of the agents', unknown while any agent has none yet. */
function commonInterval(intervals: ReadonlyArray<number | null>): number | null {
  const known = intervals.filter((i): i is number => i !== null);
  return known.length === intervals.length && known.length > 0 ? Math.min(...known) : null;
}

/** A number option within bounds, or commander's error naming the option and the range. */
function numberIn(min: number, max: number, what: string, integer = false): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
      throw new InvalidArgumentError(`expected ${what} from ${min} to ${max}`);
    }
    return n;
  };
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
  .addOption(new Option('--view <view>', 'split by peer or by protocol, or the live 5-tuple flow table (5tuple)').choices(flowViews).default('peer'))
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
      const merged = {
        view: options.view as FlowsResult['view'],
        total: answers.reduce((n, a) => n + a.value.total, 0),
        intervalSeconds: commonInterval(answers.map((a) => a.value.intervalSeconds)),
        flows: all.slice(0, Number(options.top)),
      };
      print(options.output, { ...merged, unreachable }, () => renderClusterFlows(merged, options.output === 'wide', unreachable));
      if (unreachable.length) process.exitCode = 1;
      return;
    }
    const flows = await new AgentClient(options.agent).request<FlowsResult>('GET', path);
    print(options.output, flows, () => renderFlows(flows, options.output === 'wide'));
  });

withClusterMode(clientCommand('top', 'live per-workload view: network rates, run-queue p99, syscalls, TCP retransmits, GPU (one snapshot when not on a terminal)', ['table', 'json']), { prometheus: false })
  .option('--namespace <namespace>', 'only this namespace')
  .option('--pod <pod>', 'only this pod (a cgroup path in standalone mode)')
  .addOption(new Option('--sort <column>', 'order by (the s key cycles it)').choices(workloadSorts).default('rx'))
  .addOption(new Option('--interval <seconds>', 'seconds between refreshes').default(2).argParser(numberIn(0.5, 3600, 'a number of seconds')))
  .addOption(new Option('--top <n>', 'how many workloads per agent').default(workloadLimit.default).argParser(numberIn(1, workloadLimit.max, 'an integer', true)))
  .action(async (options: { agent: string; output: Output; namespace?: string; pod?: string; sort: WorkloadSort; interval: number; top: number } & ClusterFlags) => {
    const pathFor = (sort: WorkloadSort) => {
      const query = new URLSearchParams({ sort, limit: String(options.top) });
      if (options.namespace !== undefined) query.set('namespace', options.namespace);
      if (options.pod !== undefined) query.set('pod', options.pod);
      return `/api/v1/workloads?${query}`;
    };
    const fetchSnapshot = async (sort: WorkloadSort): Promise<TopSnapshot> => {
      if (options.mode !== 'cluster') return { ...(await new AgentClient(options.agent).request<WorkloadsResult>('GET', pathFor(sort))), unreachable: [] };
      const { answers, unreachable } = await clusterQuery(options, (client) => client.request<WorkloadsResult>('GET', pathFor(sort)));
      return {
        total: answers.reduce((n, a) => n + a.value.total, 0),
        intervalSeconds: commonInterval(answers.map((a) => a.value.intervalSeconds)),
        collectorsOff: [...new Set(answers.flatMap((a) => a.value.collectorsOff))],
        // Each agent's top N, merged: the cluster's top N is among them.
        workloads: answers.flatMap(({ node, value }) => value.workloads.map((w) => ({ node, ...w }))).sort(compareWorkloads(sort)).slice(0, options.top),
        unreachable,
      };
    };
    if (options.output === 'table' && process.stdout.isTTY && process.stdin.isTTY) {
      const { runTop } = await import('./top.js');
      const source = options.mode === 'cluster' ? `cluster (${options.agentsNamespace}/${options.agentsService})` : options.agent;
      await runTop({ source, intervalSeconds: options.interval, sort: options.sort, fetch: fetchSnapshot });
      // The terminal is restored; a refresh still waiting on an agent must not hold the exit.
      process.exit(0);
    }
    let snapshot = await fetchSnapshot(options.sort);
    if (snapshot.intervalSeconds === null) {
      // The agent's first reading: rates need a second one at least a second later.
      await new Promise((resolve) => setTimeout(resolve, 1100));
      snapshot = await fetchSnapshot(options.sort);
    }
    const { renderTop } = await import('./top-view.js');
    print(options.output, snapshot, () => renderTop(snapshot, options.sort));
    if (snapshot.unreachable.length) process.exitCode = 1;
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

program
  .command('explain')
  .description('why a workload misbehaves, from Prometheus: each signal scored against its own last day and its node\'s other workloads, ranked findings with onsets and evidence')
  .argument('<target>', 'NAMESPACE/WORKLOAD')
  .requiredOption('--prometheus <url>', 'the Prometheus that scrapes the agents')
  .option('--at <time>', 'evaluate at this past instant: RFC 3339 or Unix seconds (default now)')
  .option('--window <duration>', 'how far back a deviation may begin (30m, 1h, 2h30m)', '1h')
  .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
  .action(async (target: string, options: { prometheus: string; at?: string; window: string; output: 'text' | 'json' }) => {
    const { explain, parseDuration, parseTarget, parseTime, renderExplain } = await import('./insights/explain.js');
    const result = await explain({
      prometheus: options.prometheus,
      ...parseTarget(target),
      windowSeconds: parseDuration(options.window, '--window'),
      ...(options.at !== undefined ? { at: parseTime(options.at, '--at') } : {}),
    });
    process.stdout.write(options.output === 'json' ? `${JSON.stringify(result, null, 2)}\n` : renderExplain(result));
  });

const trace = program.command('trace').description('live per-event streams, filtered in the kernel and attached only while you watch (Ctrl-C stops)');

interface TraceOptions {
  agent: string;
  output: 'text' | 'json';
  namespace?: string;
  pod?: string;
  syscall?: string;
  kinds?: string;
  count?: number;
  duration?: number;
}

function traceCommand(kind: 'syscall' | 'network' | 'security', description: string): Command {
  return trace
    .command(kind)
    .description(description)
    .addOption(new Option('--agent <url>', 'the agent\'s HTTP address (env PROBEPILOT_AGENT)').default(process.env.PROBEPILOT_AGENT ?? defaultAgentUrl))
    .addOption(new Option('-o, --output <format>', 'a line per event, or one JSON object per line').choices(['text', 'json']).default('text'))
    .option('--namespace <namespace>', 'only this namespace\'s pods')
    .option('--pod <pod>', 'only this pod (a cgroup path in standalone mode, with the cgroups below it)')
    .option('--count <n>', 'stop after this many events', numberIn(1, Number.MAX_SAFE_INTEGER, 'a number of events', true))
    .option('--duration <seconds>', 'stop after this long', numberIn(0.001, 31_536_000, 'seconds'));
}

async function runTrace(kind: 'syscall' | 'network' | 'security', options: TraceOptions): Promise<void> {
  const { count, duration } = options;
  const query = new URLSearchParams({ types: kind });
  if (options.namespace !== undefined) query.set('namespace', options.namespace);
  if (options.pod !== undefined) query.set('pod', options.pod);
  if (options.syscall !== undefined) query.set('syscalls', options.syscall);
  if (options.kinds !== undefined) query.set('kinds', options.kinds);
  const stop = new AbortController();
  process.once('SIGINT', () => stop.abort());
  process.once('SIGTERM', () => stop.abort());
  if (duration !== undefined) setTimeout(() => stop.abort(), duration * 1000).unref();
  let seen = 0;
  // Events come in bursts: one write per burst keeps up with a busy pod.
  let output = '';
  const flush = (): void => {
    if (output) process.stdout.write(output);
    output = '';
  };
  await streamEvents(
    options.agent,
    `/api/v1/events?${query}`,
    (event) => {
      if (stop.signal.aborted) return;
      if (!output) setImmediate(flush);
      output += options.output === 'json' ? `${JSON.stringify(event)}\n` : renderTraceEvent(event);
      if (count !== undefined && ++seen >= count) stop.abort();
    },
    { signal: stop.signal, onOpen: () => process.stderr.write(`tracing ${kind} events${options.pod ? ` of ${options.pod}` : ''}${options.namespace ? ` in ${options.namespace}` : ''}; Ctrl-C stops\n`) },
  );
  flush();
}

traceCommand('syscall', 'syscalls as they return: name, arguments, return value, duration, task and workload')
  .option('--syscall <names>', 'only these syscalls, comma-separated (e.g. openat,connect)')
  .action((options: TraceOptions) => runTrace('syscall', options));

traceCommand('network', 'TCP connections as they change state, retransmit and get reset: addresses, ports, task and workload').action((options: TraceOptions) => runTrace('network', options));

traceCommand('security', 'security events as they happen: execs, exits, watched file access, privilege changes, ptrace, module loads, mounts, bpf() loads, connects, listens')
  .option('--kinds <kinds>', `only these kinds, comma-separated (${securityKinds.join(', ')})`)
  .action((options: TraceOptions) => runTrace('security', options));

program.parseAsync().catch((err: unknown) => {
  // 2: the configuration is wrong; 1: the agent could not do what was asked.
  if (err instanceof ConfigError || err instanceof AgentRequestError) {
    process.stderr.write(`probepilot: ${err.message}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
  throw err;
});
