// Running helper commands (ip, promtool, iperf3) with bounded time and their
// output collected, without turning a non-zero exit into an exception: the
// caller decides what an exit code means.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export interface ExecResult {
  stdout: string;
  stderr: string;
  /** null when the process was killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface CollectOptions {
  /** Written to stdin, which is then closed. */
  input?: string | Buffer;
  /** SIGKILL after this long; the result then has signal SIGKILL. */
  timeoutMs?: number;
}

/** Waits for an already spawned process (stdio must be pipes) and gathers its output. */
export function collect(child: ChildProcess, { input, timeoutMs = 60_000 }: CollectOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout?.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
        code,
        signal,
      });
    });
    // A process that exits without reading its stdin makes this write fail with EPIPE; its exit status says more.
    child.stdin?.on('error', () => {});
    child.stdin?.end(input);
  });
}

export function execCommand(
  cmd: string,
  args: readonly string[],
  options: CollectOptions & Pick<SpawnOptions, 'env' | 'cwd'> = {},
): Promise<ExecResult> {
  const { input, timeoutMs, ...spawnOptions } = options;
  const child = spawn(cmd, args, { ...spawnOptions, stdio: ['pipe', 'pipe', 'pipe'] });
  return collect(child, { input, timeoutMs });
}

/** Like execCommand, but a non-zero exit is an error naming the command and its stderr. */
export async function execChecked(cmd: string, args: readonly string[], options: CollectOptions = {}): Promise<string> {
  const result = await execCommand(cmd, args, options);
  if (result.code !== 0) {
    const status = result.signal ?? `exit ${result.code}`;
    throw new Error(`${cmd} ${args.join(' ')}: ${status}: ${result.stderr.trim() || result.stdout.trim()}`);
  }
  return result.stdout;
}

/** SIGKILL that tolerates the process being gone already. */
/** A shell script that runs /bin/true n times: n execs besides the shell's own. */
export function trueLoopScript(n: number): string {
  return `i=0; while [ $i -lt ${n} ]; do /bin/true; i=$((i+1)); done`;
}

export function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, owned by someone we may not signal.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
