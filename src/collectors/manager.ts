// Runs collectors independently of each other, like node_exporter: one that
// cannot start or fails a collection is reported (up 0 with a reason) and the
// rest keep working. It also produces the agent's self-metrics.
import type { Logger } from '../log.js';
import { describeError } from '../errors.js';
import type { FamilyDescriptor, MetricFamily, ScalarSample } from '../metrics/model.js';
import type { AgentEvents } from '../api/events.js';
import type { AgentConfig } from '../config.js';
import { CollectorUnavailableError, type Collector, type StopOptions } from './collector.js';

export interface CollectorState {
  name: string;
  enabled: boolean;
  up: boolean;
  /** Why it is down; "" when up. */
  reason: string;
  lastCollectSeconds: number;
  collectErrors: number;
  /** Samples of its families at the last collection (histogram buckets not counted). */
  series: number;
}

/** A name the agent has no collector for; lists the ones it has. */
export class UnknownCollectorError extends Error {
  constructor(
    readonly collector: string,
    readonly known: readonly string[],
  ) {
    super(`no collector named ${JSON.stringify(collector)}; the collectors are ${known.join(', ')}`);
    this.name = 'UnknownCollectorError';
  }
}

const selfFamilies = {
  up: {
    name: 'probepilot_collector_up',
    help: 'Whether a collector is attached and collecting (1) or not (0); reason says why not.',
    type: 'gauge',
    labelNames: ['collector', 'reason'],
  },
  events: {
    name: 'probepilot_collector_events_total',
    help: 'Kernel events a collector has counted (packets, wakeups, syscalls, …).',
    type: 'counter',
    labelNames: ['collector'],
  },
  dropped: {
    name: 'probepilot_collector_events_dropped_total',
    help: 'Kernel events a collector could not record, by reason (map_full: its BPF map had no room for a new key).',
    type: 'counter',
    labelNames: ['collector', 'reason'],
  },
  seriesOverflow: {
    name: 'probepilot_series_overflow_total',
    help: 'Label sets of a family folded into its overflow series (identity labels "__overflow__") because its group of families reached seriesLimit; each counted when folded.',
    type: 'counter',
    labelNames: ['collector', 'family'],
  },
  duration: {
    name: 'probepilot_collector_collect_duration_seconds',
    help: 'Time the last collection of a collector took (map reads and decoding).',
    type: 'gauge',
    labelNames: ['collector'],
  },
  collections: {
    name: 'probepilot_collector_collections_total',
    help: 'Collections of a collector (its maps read and decoded); scrapes, OTLP pushes and API queries that arrive while one runs share it, and API queries answer from the last one while it is at most collectionMaxAgeSeconds old.',
    type: 'counter',
    labelNames: ['collector'],
  },
  errors: {
    name: 'probepilot_collector_collect_errors_total',
    help: 'Collections of a collector that failed; its previous values are not re-exported meanwhile.',
    type: 'counter',
    labelNames: ['collector'],
  },
  pinnedMaps: {
    name: 'probepilot_pinned_map_reused',
    help: 'With pins on: whether a BPF map of a collector is the pin of an earlier run (1: its counts continue) or was created or re-created at the last start (0; outcome says which).',
    type: 'gauge',
    labelNames: ['collector', 'map', 'outcome'],
  },
  runs: {
    name: 'probepilot_bpf_program_runs_total',
    help: 'Runs of a BPF program, counted by the kernel while run-time statistics are on (bpfStats).',
    type: 'counter',
    labelNames: ['collector', 'program'],
  },
  runSeconds: {
    name: 'probepilot_bpf_program_run_seconds_total',
    help: 'Time spent in a BPF program, counted by the kernel while run-time statistics are on (bpfStats).',
    type: 'counter',
    labelNames: ['collector', 'program'],
  },
} as const satisfies Record<string, FamilyDescriptor>;

/** One collection of one collector: its families and when it started reading the maps. */
export interface Collection {
  /** Date.now() when the collection began: what rates over snapshots are computed against. */
  at: number;
  families: MetricFamily[];
}

/**
 * A collector's events counted so far, from the total over its series. A
 * series whose grace period ended takes its counts out of that total, so only
 * what the total gained is added: monotonic, and exact but for a collection in
 * which series ended, where the others' gain counts only past that loss (a
 * lower bound).
 */
class EventsCounted {
  private counted = 0;
  private lastTotal = 0;

  advance(total: number): number {
    if (total > this.lastTotal) this.counted += total - this.lastTotal;
    this.lastTotal = total;
    return this.counted;
  }
}

interface Entry {
  collector: Collector;
  create: () => Collector;
  state: CollectorState;
  /** Serializes enable/disable of this collector. */
  change: Promise<unknown>;
  /** The last finished collection of the current instance. */
  latest: Collection | undefined;
  /** The collection under way, which every reader arriving meanwhile shares. */
  inflight: Promise<Collection> | undefined;
  collections: number;
  events: EventsCounted;
}

export class CollectorManager {
  private readonly entries: Entry[];

  constructor(
    factories: ReadonlyArray<() => Collector>,
    private readonly log: Logger,
    private readonly bpfStatsEnabled: boolean,
    disabled: ReadonlySet<string> = new Set(),
    private readonly events?: AgentEvents,
  ) {
    this.entries = factories.map((create) => {
      const collector = create();
      return {
        collector,
        create,
        change: Promise.resolve(),
        latest: undefined,
        inflight: undefined,
        collections: 0,
        events: new EventsCounted(),
        state: {
          name: collector.name,
          enabled: !disabled.has(collector.name),
          up: false,
          reason: disabled.has(collector.name) ? 'disabled in config' : 'not started',
          lastCollectSeconds: 0,
          collectErrors: 0,
          series: 0,
        },
      };
    });
  }

  /** The live collector of that name (for its programs and details), or undefined. */
  collector(name: string): Collector | undefined {
    return this.entries.find((e) => e.state.name === name)?.collector;
  }

  /**
   * Attaches (a fresh instance) or detaches a collector at run time. Its
   * series leave /metrics while it is disabled; its counters start over when
   * it is enabled again (Prometheus sees a counter reset).
   */
  setEnabled(name: string, enabled: boolean): Promise<CollectorState> {
    return this.change(name, async (entry) => {
      if (entry.state.enabled === enabled) return { ...entry.state };
      entry.latest = undefined;
      if (enabled) {
        entry.collector = entry.create();
        entry.state.enabled = true;
        await this.startOne(entry);
      } else {
        await this.stopOne(entry, 'disabled through the API');
        entry.state.enabled = false;
        entry.state.series = 0;
        this.publish(entry);
      }
      this.log.info({ collector: name, enabled, up: entry.state.up, reason: entry.state.reason }, enabled ? 'collector enabled' : 'collector disabled');
      return { ...entry.state };
    });
  }

  /**
   * Applies a new configuration to an enabled collector: in place when it can
   * (reconfigure), else by replacing it with a fresh instance (counters start
   * over). Call after the context's config is the new one.
   */
  reconfigure(name: string, next: AgentConfig): Promise<'in place' | 'restarted' | 'not running'> {
    return this.change(name, async (entry) => {
      if (!entry.state.enabled) return 'not running' as const;
      if (entry.state.up && (await entry.collector.reconfigure?.(next))) return 'in place' as const;
      await this.stopOne(entry, 'restarting with a new configuration', { keepRunning: true });
      entry.latest = undefined;
      entry.collector = entry.create();
      await this.startOne(entry);
      return 'restarted' as const;
    });
  }

  /** Runs a lifecycle change of one collector after the ones before it; an unknown name rejects with the known ones. */
  private change<T>(name: string, apply: (entry: Entry) => Promise<T>): Promise<T> {
    const entry = this.entries.find((e) => e.state.name === name);
    if (!entry) return Promise.reject(new UnknownCollectorError(name, this.entries.map((e) => e.state.name)));
    const run = entry.change.then(() => apply(entry));
    entry.change = run.catch(() => undefined);
    return run;
  }

  /**
   * A recent collection of one running collector, for API queries: the last
   * one while it is at most maxAgeMs old, else the one under way or a new
   * one. undefined when the collector does not run. Shortly before the last
   * one is too old (twice the previous collection's duration, at most half
   * maxAgeMs before), the next is started ahead (shared as usual) and handed
   * to onRefresh when done, so that a steady stream of queries never waits
   * for a collection (a 10k-flow one waited up to 400 ms on a busy node),
   * while collections stay about one per maxAgeMs. ahead false: no
   * collection ahead; a query past maxAgeMs waits for a fresh one.
   */
  async recentCollection(name: string, maxAgeMs: number, onRefresh?: (fresh: Collection) => void, ahead = true): Promise<Collection | undefined> {
    const entry = this.entries.find((e) => e.state.name === name);
    if (!entry?.state.up) return undefined;
    const age = entry.latest ? Date.now() - entry.latest.at : Infinity;
    if (age > maxAgeMs) return this.collectOne(entry);
    const lead = Math.min(maxAgeMs / 2, 2000 * entry.state.lastCollectSeconds);
    if (ahead && age > maxAgeMs - lead && !entry.inflight) {
      // runCollection catches the collector's errors: this promise does not reject.
      void this.collectOne(entry).then((fresh) => onRefresh?.(fresh));
    }
    return entry.latest;
  }

  private publish({ state }: Entry): void {
    this.events?.publish({ type: 'collector', collector: state.name, enabled: state.enabled, up: state.up, reason: state.reason });
  }

  descriptors(): FamilyDescriptor[] {
    return [...this.entries.flatMap((e) => e.collector.families), ...Object.values(selfFamilies)];
  }

  states(): CollectorState[] {
    return this.entries.map((e) => ({ ...e.state }));
  }

  async start(): Promise<void> {
    await Promise.all(this.entries.filter((e) => e.state.enabled).map((e) => this.startOne(e)));
  }

  private async startOne(entry: Entry): Promise<void> {
    const { collector, state } = entry;
    try {
      await collector.start();
      state.up = true;
      state.reason = '';
      this.log.info({ collector: collector.name, programs: collector.programs().map((p) => p.name) }, 'collector started');
    } catch (err) {
      state.up = false;
      state.reason = err instanceof CollectorUnavailableError ? err.reason : `start failed: ${describeError(err)}`;
      this.log.error({ collector: collector.name, reason: state.reason }, 'collector unavailable; the others keep running');
    }
    this.publish(entry);
  }

  private async stopOne({ collector, state }: Entry, reason: string, options: StopOptions = {}): Promise<void> {
    try {
      await collector.stop(options);
    } catch (err) {
      this.log.warn({ collector: collector.name, err: describeError(err) }, 'collector stop failed');
    }
    state.up = false;
    state.reason = reason;
  }

  /** keepRunning: programs stay attached through their pins for the next agent (see Collector.stop). */
  async stop(options: StopOptions = {}): Promise<void> {
    await Promise.all(this.entries.map((entry) => this.stopOne(entry, 'stopped', options)));
  }

  /** A fresh collection of every running collector (shared with the readers already waiting for one) plus the self-metrics. */
  async collect(): Promise<MetricFamily[]> {
    const running = this.entries.filter((e) => e.state.up);
    const results = await Promise.all(running.map((e) => this.collectOne(e)));
    return [...results.flatMap((r) => r.families), ...this.selfMetrics()];
  }

  /** The collection under way, or a new one: never two of one collector at once. */
  private collectOne(entry: Entry): Promise<Collection> {
    entry.inflight ??= this.runCollection(entry).finally(() => {
      entry.inflight = undefined;
    });
    return entry.inflight;
  }

  private async runCollection(entry: Entry): Promise<Collection> {
    const { collector, state } = entry;
    const at = Date.now();
    const started = process.hrtime.bigint();
    entry.collections++;
    let families: MetricFamily[] = [];
    try {
      families = await collector.collect();
      state.series = families.reduce((n, f) => n + f.samples.length, 0);
    } catch (err) {
      state.collectErrors++;
      this.log.warn({ collector: collector.name, err: describeError(err) }, 'collection failed');
    } finally {
      state.lastCollectSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    }
    const collection = { at, families };
    // A collection of an instance replaced meanwhile (disabled, reconfigured) is not the new one's.
    if (entry.collector === collector) entry.latest = collection;
    return collection;
  }

  private selfMetrics(): MetricFamily[] {
    const up: ScalarSample[] = [];
    const events: ScalarSample[] = [];
    const dropped: ScalarSample[] = [];
    const seriesOverflow: ScalarSample[] = [];
    const duration: ScalarSample[] = [];
    const errors: ScalarSample[] = [];
    const collections: ScalarSample[] = [];
    const runs: ScalarSample[] = [];
    const runSeconds: ScalarSample[] = [];
    const pinnedMaps: ScalarSample[] = [];
    for (const { collector, state, collections: count, events: counted } of this.entries) {
      const c = { collector: collector.name };
      up.push({ labels: { ...c, reason: state.reason }, value: state.up ? 1 : 0 });
      errors.push({ labels: c, value: state.collectErrors });
      collections.push({ labels: c, value: count });
      if (!state.up) continue;
      duration.push({ labels: c, value: state.lastCollectSeconds });
      const health = collector.health();
      if (health.eventsProcessed !== undefined) events.push({ labels: c, value: counted.advance(health.eventsProcessed) });
      for (const [reason, value] of Object.entries(health.eventsDropped)) dropped.push({ labels: { ...c, reason }, value });
      for (const [family, value] of Object.entries(health.seriesOverflow ?? {})) seriesOverflow.push({ labels: { ...c, family }, value });
      for (const [map, outcome] of collector.pinnedMaps?.() ?? []) pinnedMaps.push({ labels: { ...c, map, outcome }, value: outcome === 'reused' ? 1 : 0 });
      if (!this.bpfStatsEnabled) continue;
      for (const program of collector.programs()) {
        const labels = { ...c, program: program.name };
        runs.push({ labels, value: program.runCount });
        runSeconds.push({ labels, value: program.runTimeNs / 1e9 });
      }
    }
    return [
      { ...selfFamilies.up, samples: up },
      { ...selfFamilies.events, samples: events },
      { ...selfFamilies.dropped, samples: dropped },
      { ...selfFamilies.seriesOverflow, samples: seriesOverflow },
      { ...selfFamilies.duration, samples: duration },
      { ...selfFamilies.collections, samples: collections },
      { ...selfFamilies.errors, samples: errors },
      { ...selfFamilies.pinnedMaps, samples: pinnedMaps },
      { ...selfFamilies.runs, samples: runs },
      { ...selfFamilies.runSeconds, samples: runSeconds },
    ];
  }
}
