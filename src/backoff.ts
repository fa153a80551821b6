// Exponential backoff with jitter for reconnecting to a server that is down:
// each delay doubles up to a ceiling and is drawn from its upper half, so
// many agents that lost the same server do not come back in step.
export class Backoff {
  private currentMs: number;

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
  ) {
    this.currentMs = initialMs;
  }

  /** The delay before the next attempt. */
  next(): number {
    const delay = this.currentMs * (0.5 + Math.random() / 2);
    this.currentMs = Math.min(this.currentMs * 2, this.maxMs);
    return delay;
  }

  /** After a success. */
  reset(): void {
    this.currentMs = this.initialMs;
  }
}
