// Long passes over kernel entries and series (decoding 10k+ map entries,
// rendering 100k series) give the event loop back every few milliseconds, so
// /healthz, the API and the agent's timers keep answering while a big
// collection or scrape is under way.
import { performance } from 'node:perf_hooks';
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Longest a pass keeps the event loop before yielding. */
export const sliceBudgetMs = 5;

export class TimeSlicer {
  private sliceStart = performance.now();
  private calls = 0;

  constructor(private readonly budgetMs = sliceBudgetMs) {}

  /** Whether this slice is used up; reads the clock only every 32nd call, so it is cheap in a hot loop. */
  due(): boolean {
    if ((++this.calls & 31) !== 0) return false;
    return performance.now() - this.sliceStart >= this.budgetMs;
  }

  /** Lets timers and I/O run (setImmediate: after pending I/O callbacks, unlike a resolved promise). */
  async yield(): Promise<void> {
    await nextTurn();
    this.sliceStart = performance.now();
  }
}

/** Array.from({ length }, fn), yielding between slices. */
export async function mapSliced<T>(length: number, fn: (index: number) => T, slicer: TimeSlicer): Promise<T[]> {
  const out = new Array<T>(length);
  for (let i = 0; i < length; i++) {
    if (slicer.due()) await slicer.yield();
    out[i] = fn(i);
  }
  return out;
}
