// What happens in the agent, as a stream: collectors starting, stopping or
// failing, interfaces attached and detached, pods appearing and going away;
// and the shapes of trace events (src/events/). REST serves them as
// Server-Sent Events, gRPC as StreamEvents; producers never wait for
// consumers (a slow consumer is the transport's problem, not the agent's).
import { EventEmitter } from 'node:events';
import type { Labels } from '../metrics/model.js';
import type { SecurityOp } from '../events/records.js';
import type { Severity } from '../events/rules.js';

export type AgentEvent =
  | { type: 'collector'; collector: string; enabled: boolean; up: boolean; reason: string }
  | { type: 'interface'; action: 'attached' | 'detached'; interface: string; ifindex: number; mode: string | null; workload: string | null }
  | { type: 'pod'; action: 'added' | 'deleted'; namespace: string; pod: string };

export type TimedEvent = AgentEvent & { time: string };

/** The agent's own event types, always on; trace types flow only while someone traces them. */
export const agentEventTypes = ['collector', 'interface', 'pod'] as const;
export const traceKinds = ['syscall', 'network', 'security'] as const;
export type TraceKind = (typeof traceKinds)[number];
export const eventTypes = [...agentEventTypes, ...traceKinds] as const;
export type EventType = (typeof eventTypes)[number];

/** What every trace event carries: when (the kernel's clock), whose, and which task. */
interface TraceEventBase {
  /** RFC 3339 with milliseconds, from the kernel's timestamp. */
  time: string;
  /** The identity labels metrics carry (namespace, pod, container, workload, workload_kind; or cgroup). */
  workload: Labels;
  /** 0 when the event happened outside any task of the workload (softirq). */
  pid: number;
  comm: string;
}

export interface SyscallTraceEvent extends TraceEventBase {
  type: 'syscall';
  tid: number;
  /** The name, or "syscall_<nr>" for a number the agent has no name for. */
  syscall: string;
  nr: number;
  ret: number;
  durationSeconds: number;
  /** The six argument registers at entry, hexadecimal. */
  args: string[];
  /** The arguments as strace shows them (paths, addresses, argv read at entry; fds, flags, modes), for the syscalls the agent decodes. */
  decodedArgs?: string[];
}

export interface NetworkTraceEvent extends TraceEventBase {
  type: 'network';
  /** state: a TCP state change; retransmit: a segment sent again; reset_received: the peer reset the connection. */
  event: 'state' | 'retransmit' | 'reset_received';
  family: 'ipv4' | 'ipv6';
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
  /** TCP states by name (SYN_SENT, ESTABLISHED, CLOSE, …); equal for events that are no state change. */
  oldState: string;
  newState: string;
}

/** Schema of security events (README "Security events"): stable, additions only. */
export interface SecurityTraceEvent extends TraceEventBase {
  type: 'security';
  /** What happened: exec, exit, open_write, open_read, unlink, rename, chmod, setuid, setgid, setuid_exec, ptrace, module_load, mount, bpf_prog_load, connect, listen. */
  kind: SecurityOp;
  uid: number;
  euid: number;
  ppid: number;
  parentComm: string;
  /** exec: the binary; file ops: the path as the task gave it; mount: the target. */
  path?: string;
  /** exec: argv (bounded to 256 bytes); rename: the new name; mount: the source. */
  args?: string[];
  /** exit: the code (or 128 + signal). */
  exitCode?: number;
  /** open: flags; chmod: mode; ptrace: target pid; mount: flags. */
  arg?: number;
  /** connect: the peer; listen: the local address. */
  family?: 'ipv4' | 'ipv6';
  address?: string;
  port?: number;
  /** The detection rules the event matched (README "Detection rules"), when any did. */
  rules?: string[];
  /** The highest severity among those rules. */
  severity?: Severity;
}

export type TraceEvent = SyscallTraceEvent | NetworkTraceEvent | SecurityTraceEvent;

/** Any event a stream delivers. */
export type StreamedEvent = TimedEvent | TraceEvent;

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
