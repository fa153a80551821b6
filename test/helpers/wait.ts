// Polling for conditions that the kernel or another process reaches
// asynchronously (a scrape landed, a cgroup emptied). Always bounded.
import { setTimeout as sleep } from 'node:timers/promises';

export interface WaitOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** Named in the timeout error, so a failing test says what never happened. */
  what?: string;
}

/** Thrown by a probe when waiting longer is pointless (the process it waits for exited). */
export class StopWaiting extends Error {
  override name = 'StopWaiting';
}

/**
 * Calls `probe` until it returns something other than undefined/false and
 * returns that. Other errors thrown by the probe count as "not yet" (a server
 * still starting refuses connections); the last one is reported on timeout
 * because it usually explains why. StopWaiting ends the wait at once.
 */
export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  { timeoutMs, intervalMs = 100, what = 'condition' }: WaitOptions,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      if (err instanceof StopWaiting) throw err;
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const detail = lastError instanceof Error ? `: ${lastError.message}` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`, { cause: lastError });
    }
    await sleep(intervalMs);
  }
}
