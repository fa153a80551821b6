// The detection rules in use (README "Detection rules"): loaded from
// security.rules.path (or the shipped rules/security.yaml), re-read when the
// file changes or the configuration is reloaded, and checked against every
// security event the standing monitor sees. A bad file at start is a config
// error; later it is logged and the last good rules stay.
import { readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentConfig } from '../config.js';
import { ConfigError } from '../config.js';
import type { Logger } from '../log.js';
import type { Identity } from '../identity/identity.js';
import { parseIp, parsePrefix, prefixContains, type IpPrefix } from '../ip.js';
import type { FamilyDescriptor, MetricFamily } from '../metrics/model.js';
import { watchFiles } from '../file-watch.js';
import type { SecurityTraceEvent } from '../api/events.js';
import { EventCounts } from './event-counts.js';
import { parseRuleFile, severities, type SecurityRule } from './rules.js';

/** dist/src/events → the repository's (or the image's) rules/. */
export const defaultRulesPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../rules/security.yaml');

const families = {
  matches: {
    name: 'probepilot_security_rule_matches_total',
    help: 'Security events that matched a detection rule, by workload, rule and severity (low, medium, high, critical); one event counts once per rule it matches.',
    type: 'counter',
    labelNames: ['rule', 'severity'],
  },
  loaded: {
    name: 'probepilot_security_rules',
    help: 'Detection rules in use (the last good rule file).',
    type: 'gauge',
    labelNames: [],
  },
  reloadSuccess: {
    name: 'probepilot_security_rules_last_reload_success',
    help: '1 when the last read of the rule file gave valid rules, 0 when it failed (the agent log says why; the previous rules stay).',
    type: 'gauge',
    labelNames: [],
  },
  reloadTime: {
    name: 'probepilot_security_rules_last_reload_timestamp_seconds',
    help: 'When the rule file was last read (successfully or not), Unix time.',
    type: 'gauge',
    labelNames: [],
  },
} as const satisfies Record<string, FamilyDescriptor>;

type RulesConfig = AgentConfig['security']['rules'];

export interface SecurityRulesDeps {
  config: AgentConfig;
  log: Logger;
  identity: Identity;
}

/** Host addresses change rarely; asking the OS for every connect would cost more than the match. */
const hostAddressTtlMs = 5000;

export class SecurityRules {
  readonly families: readonly FamilyDescriptor[];
  private readonly matchesFamily: FamilyDescriptor & { type: 'counter' };
  private readonly counts: EventCounts;
  private readonly log: Logger;
  private readonly eventLog: Logger;
  private readonly cidrs: Array<{ name: string; prefix: IpPrefix }>;
  private settings: RulesConfig;
  private rules: SecurityRule[];
  /** Size, mtime and inode of the file the rules came from (or last failed to come from). */
  private stamp = '';
  private reloadOk = true;
  private reloadedAt = Date.now();
  private hostAddresses = new Set<string>();
  private hostAddressesAt = -Infinity;
  private stopWatching: (() => void) | undefined;
  /** Between start() and stop(): a new file name is followed at once. */
  private started = false;

  constructor(private readonly deps: SecurityRulesDeps) {
    const identityLabels = deps.identity.labelNames('container');
    this.matchesFamily = { ...families.matches, labelNames: [...identityLabels, ...families.matches.labelNames] };
    this.families = [this.matchesFamily, families.loaded, families.reloadSuccess, families.reloadTime];
    this.counts = new EventCounts(this.matchesFamily.labelNames, deps.config, identityLabels);
    this.log = deps.log.child({ component: 'security-rules' });
    this.eventLog = deps.log.child({ log: 'security' });
    // Longest prefix first, as the kernel's LPM trie of the flows picks.
    this.cidrs = deps.config.collectors.network.flows.peerCidrs.map(({ name, cidr }) => ({ name, prefix: parsePrefix(cidr)! })).sort((a, b) => b.prefix.length - a.prefix.length);
    this.settings = deps.config.security.rules;
    // At start a bad file is fatal (ConfigError), as any other configuration error.
    const loaded = this.read(this.settings);
    this.rules = loaded.rules;
    this.stamp = loaded.stamp;
  }

  /** Follows the rule file; the shipped default is not watched. */
  start(): void {
    this.started = true;
    this.stopWatching?.();
    this.stopWatching = undefined;
    const file = this.settings.path;
    if (!file) return;
    this.stopWatching = watchFiles([file], this.settings.reloadIntervalSeconds * 1000, () => {
      let stamp: string;
      try {
        stamp = fileStamp(file);
      } catch {
        return; // between the removal and the creation of the file: the next check sees it
      }
      if (stamp === this.stamp) return;
      try {
        this.reload();
      } catch {
        // Logged by reload(); the previous rules stay.
      }
    });
  }

  /**
   * Reads the rule file again (a configuration reload, or the file changed).
   * Throws ConfigError when it is bad, after logging it and keeping the
   * previous rules.
   */
  reload(settings: RulesConfig = this.settings): void {
    const file = settings.path || defaultRulesPath;
    this.reloadedAt = Date.now();
    try {
      const loaded = this.read(settings);
      const restart = settings.path !== this.settings.path || settings.reloadIntervalSeconds !== this.settings.reloadIntervalSeconds;
      this.rules = loaded.rules;
      this.stamp = loaded.stamp;
      this.settings = settings;
      this.reloadOk = true;
      this.log.info({ file, rules: this.rules.length }, 'security rules reloaded');
      if (restart && this.started) this.start();
    } catch (err) {
      this.reloadOk = false;
      // A bad file is logged once, not at every check, until it changes again.
      try {
        this.stamp = fileStamp(file);
      } catch {
        // unreadable: the next check tries again
      }
      this.log.error({ file, err: (err as Error).message, rules: this.rules.length }, 'security rules not reloaded; keeping the previous rules');
      throw err;
    }
  }

  /** The rules the event matches: counted, logged, and named on the event itself for the streams. */
  evaluate(event: SecurityTraceEvent, cgroupId: bigint): SecurityRule[] {
    const matched = this.rules.filter((rule) => rule.matches(event, this.peerClass));
    if (matched.length === 0) return matched;
    event.rules = matched.map((rule) => rule.name);
    event.severity = severities[Math.max(...matched.map((rule) => severities.indexOf(rule.severity)))]!;
    for (const rule of matched) {
      this.counts.add({ ...event.workload, rule: rule.name, severity: rule.severity }, cgroupId);
      this.eventLog.warn({ rule: rule.name, severity: rule.severity, description: rule.description, event }, 'security rule matched');
    }
    return matched;
  }

  /** `gone` as EventCounts.samples takes it. */
  metrics(gone: (cgroupId: bigint) => boolean): MetricFamily[] {
    return [
      { ...this.matchesFamily, samples: this.counts.samples(gone) },
      { ...families.loaded, samples: [{ labels: {}, value: this.rules.length }] },
      { ...families.reloadSuccess, samples: [{ labels: {}, value: this.reloadOk ? 1 : 0 }] },
      { ...families.reloadTime, samples: [{ labels: {}, value: this.reloadedAt / 1000 }] },
    ];
  }

  stop(): void {
    this.started = false;
    this.stopWatching?.();
    this.stopWatching = undefined;
  }

  private read(settings: RulesConfig): { rules: SecurityRule[]; stamp: string } {
    const file = settings.path || defaultRulesPath;
    let text: string;
    let stamp: string;
    try {
      stamp = fileStamp(file);
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError('security.rules.path', `cannot read ${file}: ${(err as Error).message}`);
    }
    return { rules: parseRuleFile(file, text), stamp };
  }

  /** The flows' peer classes, in their order: host, pod, node, a configured CIDR name, else world. */
  private readonly peerClass = (address: string): string => {
    const now = Date.now();
    if (now - this.hostAddressesAt > hostAddressTtlMs) {
      this.hostAddresses = new Set(Object.values(os.networkInterfaces()).flatMap((addrs) => (addrs ?? []).map((a) => a.address)));
      this.hostAddressesAt = now;
    }
    if (this.hostAddresses.has(address)) return 'host';
    const peers = this.deps.identity.peers();
    if (peers.pods.has(address)) return 'pod';
    if (peers.nodes.has(address)) return 'node';
    const ip = parseIp(address);
    const named = ip && this.cidrs.find(({ prefix }) => prefixContains(prefix, ip));
    return named ? named.name : 'world';
  };
}

function fileStamp(file: string): string {
  const s = statSync(file);
  return `${s.mtimeMs}:${s.size}:${s.ino}`;
}
