// What happens in the agent, as a stream: collectors starting, stopping or
// failing, interfaces attached and detached, pods appearing and going away.
// The REST API serves it as Server-Sent Events; producers never wait for
// consumers (a slow consumer is the transport's problem, not the agent's).
import { EventEmitter } from 'node:events';

export type AgentEvent =
  | { type: 'collector'; collector: string; enabled: boolean; up: boolean; reason: string }
  | { type: 'interface'; action: 'attached' | 'detached'; interface: string; ifindex: number; mode: string | null; workload: string | null }
  | { type: 'pod'; action: 'added' | 'deleted'; namespace: string; pod: string };

export type TimedEvent = AgentEvent & { time: string };

export class AgentEvents {
  private readonly emitter = new EventEmitter();

  constructor() {
    // Every open event stream is a listener; their number is bounded by the HTTP layer, not here.
    this.emitter.setMaxListeners(0);
  }

  publish(event: AgentEvent): void {
    this.emitter.emit('event', { ...event, time: new Date().toISOString() } satisfies TimedEvent);
  }

  /** Returns the unsubscribe function. */
  subscribe(listener: (event: TimedEvent) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }
}
