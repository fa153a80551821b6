// What every collector is to the agent: something that attaches, reads its
// maps into metric families on demand, reports its own health, and detaches.
import type { Logger } from '../log.js';
import type { AgentConfig } from '../config.js';
import type { NativeAddon, ProgramInfo } from '../bpf/addon.js';
import type { MapPinOutcome } from '../bpf/pins.js';
import type { FamilyDescriptor, MetricFamily } from '../metrics/model.js';
import type { Identity } from '../identity/identity.js';
import type { AgentEvents } from '../api/events.js';

export interface CollectorContext {
  config: AgentConfig;
  log: Logger;
  addon: NativeAddon;
  identity: Identity;
  /** Where a collector reports what changes on the node (interfaces attached, …); none in tests that do not look. */
  events?: AgentEvents;
}

/** A collector that cannot run here (missing kernel feature, capability, library). */
export class CollectorUnavailableError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'CollectorUnavailableError';
  }
}

export interface CollectorHealth {
  /** Kernel events handled (packets, wakeups, syscalls…), when the collector can tell. */
  eventsProcessed?: number;
  /** Events the kernel side could not record, by reason (e.g. map_full). */
  eventsDropped: Readonly<Record<string, number>>;
  /** By family: label sets folded into its overflow series because the family's group reached seriesLimit. */
  seriesOverflow?: Readonly<Record<string, number>>;
}

export interface StopOptions {
  keepRunning?: boolean;
}

export interface Collector {
  readonly name: string;
  /** Every family collect() may return, known before the first collection. */
  readonly families: readonly FamilyDescriptor[];
  /** Loads and attaches; throws CollectorUnavailableError when the host cannot run it. */
  start(): Promise<void>;
  collect(): Promise<MetricFamily[]>;
  /** As of the last collect(). */
  health(): CollectorHealth;
  programs(): ProgramInfo[];
  /**
   * Detaches everything and removes its pins; with keepRunning (the agent
   * stops or replaces it, pins on) its programs stay attached through their
   * pins for the next instance to adopt. Safe to call twice. A stopped
   * collector is not started again: the agent makes a new one.
   */
  stop(options?: StopOptions): Promise<void>;
  /** With pins on: whether each map's pin of an earlier run was reused, as of the last start. */
  pinnedMaps?(): ReadonlyMap<string, MapPinOutcome>;
  /** Collector-specific state for the status API (e.g. the network collector's interfaces and attach modes). */
  describe?(): Record<string, unknown>;
  /**
   * Applies its section of a new configuration without detaching, when it
   * can (true); false makes the agent replace it with a fresh instance.
   */
  reconfigure?(next: AgentConfig): Promise<boolean>;
}
