// A server binary a test starts on a loopback port (Prometheus,
// Alertmanager): started, waited on until ready, its log kept for failure
// messages, and ended with SIGTERM (SIGKILL after 10 s).
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { StopWaiting, waitFor } from './wait.js';

const LOG_LIMIT = 64 * 1024;

/** A port nothing listens on right now (another process may take it before the caller binds it: retry then). */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  if (address === null || typeof address === 'string') throw new Error('no TCP address for a probe socket');
  return address.port;
}

/** Runs start on a free port, again on a fresh one when that port was taken before the server bound it. */
export async function onFreePort<T>(start: (port: number) => Promise<T>): Promise<T> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await start(await freePort());
    } catch (err) {
      lastError = err;
    }
  }
  throw lastError;
}

export class ServiceProcess {
  readonly #child: ChildProcess;
  readonly #exited: Promise<unknown>;
  #log = '';

  private constructor(
    readonly name: string,
    child: ChildProcess,
  ) {
    this.#child = child;
    this.#exited = once(child, 'exit');
    const keep = (chunk: Buffer) => {
      this.#log = (this.#log + chunk.toString('utf8')).slice(-LOG_LIMIT);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  /** Spawns the binary and waits until readyUrl answers 2xx. */
  static async start(name: string, command: string, args: readonly string[], readyUrl: string): Promise<ServiceProcess> {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    // A missing binary is an 'error' event, never an exit.
    await Promise.race([once(child, 'spawn'), once(child, 'error').then(([err]) => Promise.reject(err as Error))]);
    const service = new ServiceProcess(name, child);
    try {
      await service.waitFor(async () => (await fetch(readyUrl)).ok, 30_000, `${name} to be ready`);
    } catch (err) {
      await service.terminate();
      throw err;
    }
    return service;
  }

  get exited(): boolean {
    return this.#child.exitCode !== null || this.#child.signalCode !== null;
  }

  /** The process's output so far (the tail). */
  log(): string {
    return this.#log;
  }

  /** waitFor (probe errors count as "not yet") that gives up at once when the process exited. */
  waitFor<T>(probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs: number, what: string): Promise<T> {
    return waitFor(
      () => {
        if (this.exited) throw new StopWaiting(`${this.name} exited: ${this.#log.slice(-2000)}`);
        return probe();
      },
      { timeoutMs, intervalMs: 250, what },
    );
  }

  /** Idempotent. */
  async terminate(): Promise<void> {
    if (this.exited) return;
    this.#child.kill('SIGTERM');
    const killer = setTimeout(() => this.#child.kill('SIGKILL'), 10_000);
    await this.#exited;
    clearTimeout(killer);
  }
}
