// Security events as the agent logs them (log: "security", README "Security
// events"): one "security event" line per event; rule matches are lines of
// their own that carry the event too, and are not events.
import type { AgentProcess } from './agent.js';
import type { SecurityTraceEvent } from '../../src/api/events.js';

/** Every security event the agent logged so far, optionally only those of one cgroup. */
export function loggedSecurityEvents(agent: AgentProcess, cgroupPath?: string): SecurityTraceEvent[] {
  return agent.logs
    .filter((line) => line.log === 'security' && line.msg === 'security event')
    .map((line) => line.event as SecurityTraceEvent)
    .filter((event) => cgroupPath === undefined || event.workload.cgroup === cgroupPath);
}
