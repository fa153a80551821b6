// Applying a new configuration to a running agent (POST /api/v1/config/reload,
// SIGHUP): what can change live does — collectors enabled or disabled, a
// collector's own settings (the network collector's interface patterns
// without even a restart of the collector), the detection rules (read again
// even when their file's name did not change) — and every other change is
// reported as needing an agent restart, the running values kept.
import { leaves, type AgentConfig } from './config.js';

export interface ConfigChange {
  /** Dotted keys applied now. */
  applied: string[];
  /** Dotted keys whose new values take effect at the next agent start. */
  restartRequired: string[];
}

function valueAt(config: AgentConfig, key: string): unknown {
  return key.split('.').reduce<unknown>((node, part) => (node as Record<string, unknown> | undefined)?.[part], config);
}

/** Keys whose value differs (compared as JSON). */
export function changedKeys(current: AgentConfig, next: AgentConfig): string[] {
  return leaves()
    .map(({ key }) => key)
    .filter((key) => JSON.stringify(valueAt(current, key)) !== JSON.stringify(valueAt(next, key)));
}

/** Keys a running agent can apply: everything under collectors, and the detection rules' file. */
export function appliesLive(key: string): boolean {
  return key.startsWith('collectors.') || key.startsWith('security.rules.');
}

/** The configuration to run with: the collectors and rule settings of next, the rest of current. */
export function effectiveConfig(current: AgentConfig, next: AgentConfig): AgentConfig {
  return { ...current, collectors: next.collectors, security: { ...current.security, rules: next.security.rules } };
}
