// The standing subscriber of security events: while security.enabled it keeps
// the security kind of the event pipeline attached (API streams of type
// security share the same kernel stream), counts events per workload and kind
// through the series governor, and writes each one as a JSON log line of its
// own stream (log: "security", README "Security events") for Loki or
// Elasticsearch.
import type { AgentConfig } from '../config.js';
import { describeError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Identity } from '../identity/identity.js';
import type { FamilyDescriptor, MetricFamily } from '../metrics/model.js';
import type { TraceEvent } from '../api/events.js';
import type { EventPipeline } from './pipeline.js';
import { EventCounts } from './event-counts.js';
import { SecurityRules } from './security-rules.js';

const families = {
  events: {
    name: 'probepilot_security_events_total',
    help: 'Security events by workload and kind (exec, exit, open_write, open_read, unlink, rename, chmod, setuid, setgid, setuid_exec, ptrace, module_load, mount, bpf_prog_load, connect, listen); events over events.ratePerSecond are not counted (probepilot_events_lost_total{reason="rate_limited"}).',
    type: 'counter',
    labelNames: ['kind'],
  },
  up: {
    name: 'probepilot_security_up',
    help: '1 while the security probes are attached; 0 when security.enabled is off or the kernel refused them (the agent log says why).',
    type: 'gauge',
    labelNames: [],
  },
} as const satisfies Record<string, FamilyDescriptor>;

export interface SecurityMonitorDeps {
  config: AgentConfig;
  log: Logger;
  identity: Identity;
  pipeline: EventPipeline;
}

export class SecurityMonitor {
  readonly families: readonly FamilyDescriptor[];
  private readonly eventsFamily: FamilyDescriptor & { type: 'counter' };
  private readonly counts: EventCounts;
  /** The detection rules every event is checked against. */
  readonly rules: SecurityRules;
  private readonly eventLog: Logger;
  private unsubscribe: (() => Promise<void>) | undefined;

  constructor(private readonly deps: SecurityMonitorDeps) {
    const identityLabels = deps.identity.labelNames('container');
    this.eventsFamily = { ...families.events, labelNames: [...identityLabels, ...families.events.labelNames] };
    this.counts = new EventCounts(this.eventsFamily.labelNames, deps.config, identityLabels);
    // A bad rule file throws ConfigError here, at start.
    this.rules = new SecurityRules(deps);
    this.families = [this.eventsFamily, families.up, ...this.rules.families];
    // Its own stream key, so log pipelines can route security events apart from the agent's diagnostics.
    this.eventLog = deps.log.child({ log: 'security' });
  }

  /** Attaches the security probes; a kernel that refuses them leaves the agent running without them. */
  async start(): Promise<void> {
    if (!this.deps.config.security.enabled) return;
    this.rules.start();
    try {
      this.unsubscribe = await this.deps.pipeline.subscribe(
        { kind: 'security' },
        (event, cgroupId) => this.onEvent(event, cgroupId),
        (err) => {
          // The reader stopped: probepilot_security_up says so until a restart.
          this.unsubscribe = undefined;
          this.deps.log.error({ component: 'security', reason: describeError(err) }, 'security events stopped');
        },
      );
      this.deps.log.info({ component: 'security' }, 'security probes attached');
    } catch (err) {
      this.deps.log.warn({ component: 'security', reason: describeError(err) }, 'security probes unavailable; security events are off');
    }
  }

  private onEvent(event: TraceEvent, cgroupId: bigint): boolean {
    if (event.type !== 'security') return true;
    // The agent's own opens, bpf() loads and connects are not a workload's.
    if (event.pid === process.pid) return true;
    this.counts.add({ ...event.workload, kind: event.kind }, cgroupId);
    // Before the event's own line, which then names the rules it matched.
    this.rules.evaluate(event, cgroupId);
    this.eventLog.info({ event }, 'security event');
    return true;
  }

  /** Label sets counted and not yet retired (for tests and the status API). */
  get trackedSeries(): number {
    return this.counts.size;
  }

  metrics(): MetricFamily[] {
    const gone = this.goneCgroups();
    return [
      { ...this.eventsFamily, samples: this.counts.samples(gone) },
      { ...families.up, samples: [{ labels: {}, value: this.unsubscribe ? 1 : 0 }] },
      ...this.rules.metrics(gone),
    ];
  }

  /** Whether a cgroup id is gone, after one fresh walk: a forgotten id is as gone as one marked so. */
  private goneCgroups(): (cgroupId: bigint) => boolean {
    const { cgroups } = this.deps.identity;
    cgroups.refresh();
    return (id) => cgroups.isGone(id) || cgroups.resolve(id) === undefined;
  }

  async stop(): Promise<void> {
    const unsubscribe = this.unsubscribe;
    this.unsubscribe = undefined;
    this.rules.stop();
    await unsubscribe?.();
  }
}
