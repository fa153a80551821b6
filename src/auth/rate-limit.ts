// Per-identity token buckets: each key refills at `rate` per second up to
// `burst`; a request takes one token or is told when the next one comes.
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** 0: allowed; otherwise the seconds until a token is there (Retry-After). */
  take(key: string): number {
    if (this.rate <= 0) return 0;
    const now = this.now();
    let bucket = this.buckets.get(key);
    if (!bucket) {
      // Bounded memory under a flood of fresh keys: full buckets carry no state worth keeping.
      if (this.buckets.size >= 10_000) this.prune(now);
      bucket = { tokens: this.burst, at: now };
      this.buckets.set(key, bucket);
    }
    bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.at) / 1000) * this.rate);
    bucket.at = now;
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 0;
    }
    return (1 - bucket.tokens) / this.rate;
  }

  private prune(now: number): void {
    for (const [key, bucket] of this.buckets) {
      if (bucket.tokens + ((now - bucket.at) / 1000) * this.rate >= this.burst) this.buckets.delete(key);
    }
    // Every bucket still draining: the oldest go (they refill first anyway).
    for (const key of this.buckets.keys()) {
      if (this.buckets.size < 10_000) break;
      this.buckets.delete(key);
    }
  }
}
