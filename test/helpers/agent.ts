// Runs the real agent (dist/src/cli.js) as a child process, the way an
// operator starts it, and reads its JSON logs and /metrics.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { StopWaiting, waitFor } from './wait.js';
import { envName, schema } from '../../src/config.js';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli.js');

export interface LogLine {
  level: string;
  msg: string;
  [key: string]: unknown;
}

export interface AgentProcess {
  readonly child: ChildProcess;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly logs: LogLine[];
  /** Everything the agent wrote to stderr (should stay empty). */
  stderr(): string;
  metrics(): Promise<string>;
  waitForLog(predicate: (line: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>;
  /** SIGTERM and wait; resolves with the exit code. Idempotent. */
  stop(): Promise<number | null>;
}

/** Environment that runs only the named collectors (the others' enabled keys set to false). */
export function onlyCollectors(...names: ReadonlyArray<keyof typeof schema.collectors>): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.keys(schema.collectors).map((name) => [envName(`collectors.${name}.enabled`), String(names.includes(name as keyof typeof schema.collectors))]));
}

export interface StartAgentOptions {
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Wait for readiness (every collector started); default true. */
  waitReady?: boolean;
  /** Runs the agent under this command (e.g. unshare, setpriv), the node command line appended. */
  wrapper?: readonly string[];
}

export async function startAgent({ args = [], env = {}, waitReady = true, wrapper = [] }: StartAgentOptions = {}): Promise<AgentProcess> {
  // Through env -u: under tap, spawn puts tap's process-info loader into NODE_OPTIONS whatever env says, and an
  // agent carrying it starts slower and holds over twice its own RSS (about 450 MB against 180 MB idle).
  const command = ['env', '-u', 'NODE_OPTIONS', ...wrapper, process.execPath, cli, 'agent', '--listen', '127.0.0.1:0', ...args];
  const child = spawn(command[0]!, command.slice(1), {
    // Pins off unless a test asks: agents of concurrent tests must not share bpffs state, nor leave programs behind.
    // Security probes off unless a test asks: their standing trace would share the event pipeline's budget
    // (rate buckets, subscriber slots) with the traces other tests count.
    env: { ...process.env, PROBEPILOT_LOG_LEVEL: 'debug', PROBEPILOT_PINS_ENABLED: 'false', PROBEPILOT_SECURITY_ENABLED: 'false', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  let stderr = '';
  let pending = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    pending += chunk;
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) if (line.trim()) logs.push(JSON.parse(line) as LogLine);
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = once(child, 'exit');

  const waitForLog = (predicate: (line: LogLine) => boolean, what: string, timeoutMs = 20_000): Promise<LogLine> =>
    waitFor(
      () => {
        if (child.exitCode !== null) throw new StopWaiting(`agent exited (${child.exitCode}) while waiting for ${what}: ${stderr}`);
        return logs.find(predicate);
      },
      { timeoutMs, what },
    );

  // An agent that did not come up is no one's to stop: kill it here rather than leave it running.
  // Loading and verifying every collector's programs takes seconds, many more on a loaded machine.
  const listening = await waitForLog((l) => l.msg === 'listening', 'the agent to listen', 60_000).catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  const port = Number(new URL(String(listening.address)).port);
  const url = `http://127.0.0.1:${port}`;
  let stopped: Promise<number | null> | undefined;
  const agent: AgentProcess = {
    child,
    url,
    port,
    logs,
    stderr: () => stderr,
    async metrics() {
      const res = await fetch(`${url}/metrics`);
      if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
      return res.text();
    },
    waitForLog,
    stop() {
      stopped ??= (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const [code] = (await exited) as [number | null];
        return code;
      })();
      return stopped;
    },
  };
  if (waitReady) {
    await waitFor(async () => (await fetch(`${url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'agent readiness' });
  }
  return agent;
}

/**
 * The agent as on a node of a cluster: Kubernetes mode against the API
 * server fixture (node test-node), counting traffic on the test network's
 * host veths, the gRPC API on a free port. Stopped at the test's teardown.
 */
export async function startKubernetesAgent(
  t: { teardown(fn: () => unknown): void },
  { kubeconfig, runId, collectors }: { kubeconfig: string; runId: string; collectors: ReadonlyArray<keyof typeof schema.collectors> },
): Promise<{ agent: AgentProcess; grpcAddress: string }> {
  const agent = await startAgent({
    env: {
      ...onlyCollectors(...collectors),
      PROBEPILOT_KUBERNETES_ENABLED: 'true',
      PROBEPILOT_KUBERNETES_KUBECONFIG: kubeconfig,
      NODE_NAME: 'test-node',
      PROBEPILOT_COLLECTORS_NETWORK_INTERFACES_INCLUDE: `pp${runId}h*`,
    },
    args: ['--grpc-listen', '127.0.0.1:0'],
  });
  t.teardown(() => agent.stop());
  const grpcAddress = String((await agent.waitForLog((l) => l.msg === 'gRPC API listening', 'the gRPC API')).address);
  return { agent, grpcAddress };
}
