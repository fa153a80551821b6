// A list + watch that keeps only a small record per object, for collections
// too large to cache whole (every pod of the cluster, every node): pages of
// the list are reduced as they arrive, watch events update the records, a
// watch that ends is resumed from the last resourceVersion, a 410 Gone or an
// error lists again (after a backoff with jitter, so an outage is no request
// flood). The records survive outages as last known.
import { Watch, type KubeConfig, type V1ObjectMeta } from '@kubernetes/client-node';
import { Backoff } from '../backoff.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';

interface KubeObject {
  metadata?: V1ObjectMeta;
}

export interface ListPage<T> {
  items: T[];
  metadata?: { resourceVersion?: string; _continue?: string };
}

export interface SlimInformerOptions<T extends KubeObject, R> {
  /** For logs: "nodes", "cluster pods". */
  what: string;
  /** One page of the list. */
  list(params: { limit: number; _continue?: string }): Promise<ListPage<T>>;
  /** The collection's API path for watches, e.g. /api/v1/nodes. */
  watchPath: string;
  watchQuery?: Record<string, string>;
  /** The record kept for an object; undefined: nothing to keep (the object is then forgotten). */
  slim(object: T): R | undefined;
  log: Logger;
}

const pageSize = 500;
// Ends each watch after a while even when the API server would not, so a silently dead connection is noticed.
const watchTimeoutSeconds = 300;
// A watch the server ends sooner than this without an event is treated as a failure (backoff), never resumed in a tight loop.
const minWatchMs = 1000;

export class SlimInformer<T extends KubeObject, R> {
  /** By object uid. */
  readonly records = new Map<string, R>();
  /** Bumped whenever a record changes. */
  generation = 0;
  /** Whether the last list or watch request succeeded. */
  apiUp = false;
  private resourceVersion = '';
  private abort: AbortController | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly backoff = new Backoff(500, 30_000);
  private stopped = false;
  private readonly watcher: Watch;

  constructor(
    kc: KubeConfig,
    private readonly options: SlimInformerOptions<T, R>,
  ) {
    this.watcher = new Watch(kc);
  }

  /** Resolves after the first list, or after `initialSyncTimeoutMs` with what is known by then. */
  async start(initialSyncTimeoutMs = 10_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, initialSyncTimeoutMs)));
    await Promise.race([this.relist(), timeout]);
    clearTimeout(timer);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.abort?.abort();
  }

  private set(object: T): void {
    const uid = object.metadata?.uid;
    if (!uid) return;
    const record = this.options.slim(object);
    if (record === undefined) {
      if (this.records.delete(uid)) this.generation++;
      return;
    }
    this.records.set(uid, record);
    this.generation++;
  }

  private async relist(): Promise<void> {
    if (this.stopped) return;
    const seen = new Set<string>();
    try {
      let continueToken: string | undefined;
      let resourceVersion = '';
      do {
        const page = await this.options.list({ limit: pageSize, _continue: continueToken });
        for (const object of page.items) {
          if (object.metadata?.uid) seen.add(object.metadata.uid);
          this.set(object);
        }
        continueToken = page.metadata?._continue || undefined;
        resourceVersion = page.metadata?.resourceVersion ?? resourceVersion;
      } while (continueToken);
      this.resourceVersion = resourceVersion;
    } catch (err) {
      this.fail(err);
      return;
    }
    for (const uid of [...this.records.keys()]) {
      if (!seen.has(uid)) {
        this.records.delete(uid);
        this.generation++;
      }
    }
    this.succeeded();
    await this.watch();
  }

  private async watch(): Promise<void> {
    if (this.stopped) return;
    let expired = false;
    let events = 0;
    const startedAt = Date.now();
    const query = { ...this.options.watchQuery, resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds: watchTimeoutSeconds };
    const onEvent = (phase: string, object: T & { code?: number }): void => {
      events++;
      if (phase === 'ERROR') {
        // 410 Gone: our resourceVersion was compacted away; only a new list can resume.
        expired = true;
        return;
      }
      const version = object.metadata?.resourceVersion;
      if (version) this.resourceVersion = version;
      if (phase === 'ADDED' || phase === 'MODIFIED') this.set(object);
      else if (phase === 'DELETED' && object.metadata?.uid && this.records.delete(object.metadata.uid)) this.generation++;
    };
    const onDone = (err: unknown): void => {
      this.abort = undefined;
      if (this.stopped) return;
      if (err) this.fail(err);
      else if (expired) void this.relist();
      else if (events === 0 && Date.now() - startedAt < minWatchMs) this.fail(new Error('the API server ended the watch at once'));
      else void this.watch();
    };
    try {
      this.abort = await this.watcher.watch(this.options.watchPath, query, onEvent, onDone);
      this.succeeded();
    } catch (err) {
      this.fail(err);
    }
  }

  private succeeded(): void {
    this.apiUp = true;
    this.backoff.reset();
  }

  private fail(err: unknown): void {
    this.apiUp = false;
    if (this.stopped || this.retryTimer) return;
    const delay = this.backoff.next();
    this.options.log.warn({ what: this.options.what, err: describeError(err), retryMs: Math.round(delay) }, 'list/watch failed; keeping the last known records');
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.relist();
    }, delay);
    this.retryTimer.unref();
  }
}
