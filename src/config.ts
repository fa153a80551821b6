// Agent configuration: defaults < YAML/JSON file < PROBEPILOT_* environment
// < command-line flags. Every key is declared once in `schema`, which drives
// validation, environment names and the README table, so a wrong value
// always names its key and what is allowed.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { logLevels, type LogLevel } from './log.js';
import { parsePrefix } from './ip.js';
import { currentSyscallArch, defaultTrackedSyscalls, trackableSyscalls } from './collectors/syscall-table.js';

export const attachModes = ['auto', 'tcx', 'clsact'] as const;
export type AttachModeSetting = (typeof attachModes)[number];
export const peerLabels = ['workload', 'pod'] as const;
export type PeerLabelSetting = (typeof peerLabels)[number];

export const temporalities = ['cumulative', 'delta'] as const;
export type TemporalitySetting = (typeof temporalities)[number];

/** A gRPC metadata entry sent with every OTLP export (e.g. an auth token). */
export interface Header {
  name: string;
  value: string;
}

/** A configured name for the peers in a CIDR prefix. */
export interface NamedPrefix {
  name: string;
  cidr: string;
}

export interface ListenAddress {
  host: string;
  port: number;
}

/** security.nodeProcesses: auto includes them unless an include list names something. */
export const nodeProcessesSettings = ['auto', 'include', 'exclude'] as const;
export type NodeProcessesSetting = (typeof nodeProcessesSettings)[number];

export const authModes = ['none', 'tokens', 'kubernetes'] as const;
export type AuthMode = (typeof authModes)[number];

export interface AgentConfig {
  listen: ListenAddress;
  /** Absent: no gRPC server. */
  grpcListen?: ListenAddress;
  logLevel: LogLevel;
  bpfStats: boolean;
  cgroupRoot: string;
  seriesGraceSeconds: number;
  seriesLimit: number;
  collectionMaxAgeSeconds: number;
  collectionAhead: boolean;
  pins: {
    enabled: boolean;
    root: string;
    stateDir: string;
  };
  otlp: {
    endpoint: string;
    intervalSeconds: number;
    timeoutSeconds: number;
    temporality: TemporalitySetting;
    headers: Header[];
    tls: { caFile: string; certFile: string; keyFile: string };
    maxInFlight: number;
    retry: { initialBackoffMs: number; maxBackoffMs: number; maxAttempts: number };
  };
  events: {
    ringBufferBytes: number;
    ratePerSecond: number;
    burst: number;
    maxSubscribers: number;
  };
  tls: { certFile: string; keyFile: string; clientCaFile: string; reloadIntervalSeconds: number };
  auth: {
    mode: AuthMode;
    tokenFiles: string[];
    cacheTtlSeconds: number;
    rateLimit: { requestsPerSecond: number; burst: number };
    maxStreamsPerIdentity: number;
  };
  audit: { file: string };
  limits: { bodyBytes: number; queryBytes: number; headerBytes: number; headersTimeoutSeconds: number; requestTimeoutSeconds: number };
  security: {
    enabled: boolean;
    watchedPaths: string[];
    sensitivePaths: string[];
    namespaces: { include: string[]; exclude: string[] };
    cgroups: { include: string[]; exclude: string[] };
    nodeProcesses: NodeProcessesSetting;
    rules: { path: string; reloadIntervalSeconds: number };
  };
  kubernetes: {
    enabled: boolean;
    kubeconfig: string;
    nodeName: string;
    relistIntervalSeconds: number;
    nodePeers: boolean;
    clusterPodPeers: boolean;
  };
  collectors: {
    network: {
      enabled: boolean;
      attachMode: AttachModeSetting;
      interfaces: { include: string[]; exclude: string[] };
      maxEntries: number;
      rescanIntervalSeconds: number;
      flows: {
        enabled: boolean;
        maxEntries: number;
        maxPeers: number;
        peerLabel: PeerLabelSetting;
        peerCidrs: NamedPrefix[];
      };
      flowTable: {
        enabled: boolean;
        maxEntries: number;
        idleSeconds: number;
      };
    };
    drops: {
      enabled: boolean;
      maxEntries: number;
    };
    dns: {
      enabled: boolean;
      ports: number[];
      timeoutSeconds: number;
      maxEntries: number;
      maxPending: number;
    };
    syscalls: {
      enabled: boolean;
      tracked: string[];
      maxEntries: number;
      maxThreads: number;
    };
    sched: {
      enabled: boolean;
      maxEntries: number;
      maxTasks: number;
    };
    process: {
      enabled: boolean;
      maxEntries: number;
    };
    tcp: {
      enabled: boolean;
      maxEntries: number;
      maxConnecting: number;
      maxEstablished: number;
    };
    block: {
      enabled: boolean;
      maxEntries: number;
      maxInflight: number;
    };
    gpu: {
      enabled: boolean;
      libraryPath: string;
      dcgmLibraryPath: string;
      podResourcesSocket: string;
      dcgmExporterNames: boolean;
    };
  };
  customProbes: {
    paths: string[];
    disabled: string[];
  };
}

type Leaf =
  | { kind: 'listen'; default: string; doc: string; optional?: boolean }
  | { kind: 'enum'; values: readonly string[]; default: string; doc: string }
  | { kind: 'boolean'; default: boolean; doc: string }
  | { kind: 'number'; integer: boolean; min: number; max: number; default: number; doc: string }
  | { kind: 'string'; default: string; doc: string }
  | { kind: 'globs'; default: readonly string[]; doc: string }
  | { kind: 'strings'; pattern: RegExp; expected: string; default: readonly string[]; doc: string }
  | { kind: 'ports'; maxItems: number; default: readonly number[]; doc: string }
  | { kind: 'names'; values: readonly string[]; default: readonly string[]; doc: string }
  | { kind: 'endpoint'; default: string; doc: string }
  | { kind: 'headers'; default: readonly string[]; doc: string }
  | { kind: 'prefixes'; reserved: readonly string[]; default: readonly string[]; doc: string }
  | { kind: 'paths'; maxItems: number; maxLength: number; default: readonly string[]; doc: string };

interface Section {
  [key: string]: Leaf | Section;
}

/** Capacity of a kernel map: entries, from 1024 up to `max`. */
function mapCapacity(defaultEntries: number, doc: string, max = 4194304): Leaf {
  return { kind: 'number', integer: true, min: 1024, max, default: defaultEntries, doc };
}

export const schema = {
  listen: { kind: 'listen', default: '0.0.0.0:9742', doc: 'HOST:PORT of the HTTP server (/metrics, /healthz, /readyz, the REST API).' },
  grpcListen: { kind: 'listen', optional: true, default: '', doc: 'HOST:PORT of the gRPC API (probepilot.v1.Agent); empty: no gRPC server.' },
  logLevel: { kind: 'enum', values: logLevels, default: 'info', doc: 'Log level of the JSON logs on stdout.' },
  bpfStats: {
    kind: 'boolean',
    default: false,
    doc: 'Turn on kernel BPF run-time statistics while the agent runs (probepilot_bpf_program_*). Costs tens to hundreds of ns per program run.',
  },
  cgroupRoot: { kind: 'string', default: '', doc: 'cgroup v2 mount point; empty finds it in /proc/self/mountinfo.' },
  seriesGraceSeconds: {
    kind: 'number',
    integer: true,
    min: 0,
    max: 86400,
    default: 120,
    doc: 'How long the series of a workload that went away keep their final values before they disappear.',
  },
  seriesLimit: {
    kind: 'number',
    integer: true,
    min: 1,
    max: 10_000_000,
    default: 100_000,
    doc: 'Most series of their own one collector keeps per group of families that share labels (one kernel map); new label sets beyond it fold into an overflow series (identity labels "__overflow__"), counted in probepilot_series_overflow_total.',
  },
  collectionMaxAgeSeconds: {
    kind: 'number',
    integer: false,
    min: 0,
    max: 60,
    default: 1,
    doc: 'API queries (flows) answer from the last collection while it is at most this old, else share the one under way or start one; 0: a collection per query (still shared with the readers already waiting). Scrapes and OTLP pushes always get a fresh one.',
  },
  collectionAhead: {
    kind: 'boolean',
    default: false,
    doc: 'API queries start the next collection shortly before the last one is collectionMaxAgeSeconds old (flows answers built as it completes), so a steady stream of queries never waits for one; off (default: the benchmark measured it on at more CPU per flows query and no faster): a query past that age waits for a fresh collection.',
  },
  pins: {
    enabled: {
      kind: 'boolean',
      default: true,
      doc: 'Pin maps and links in bpffs so counters continue across agent restarts and programs keep counting while the agent is down (see "Restarts and pins"); off: everything is detached at stop.',
    },
    root: { kind: 'string', default: '/sys/fs/bpf/probepilot', doc: 'bpffs directory of the pins (one subdirectory per BPF object); probepilot agent --cleanup removes it.' },
    stateDir: {
      kind: 'string',
      default: '/var/lib/probepilot',
      doc: 'Directory (on the host, to outlive the container) for what bpffs cannot hold: the final counts of retired kernel entries and the clsact qdiscs the agent created.',
    },
  },
  otlp: {
    endpoint: {
      kind: 'endpoint',
      default: '',
      doc: 'OTLP/gRPC collector to push every metric to, as http://HOST:PORT (plaintext) or https://HOST:PORT (TLS); empty: no push.',
    },
    intervalSeconds: { kind: 'number', integer: false, min: 0.1, max: 3600, default: 60, doc: 'How often metrics are pushed.' },
    timeoutSeconds: { kind: 'number', integer: false, min: 0.1, max: 600, default: 10, doc: 'Deadline of one export request.' },
    temporality: { kind: 'enum', values: temporalities, default: 'cumulative', doc: 'Counters and histograms as running totals (cumulative) or as the change since the last push (delta).' },
    headers: { kind: 'headers', default: [], doc: 'gRPC metadata sent with every export, as NAME=VALUE (e.g. authorization=Bearer TOKEN).' },
    tls: {
      caFile: { kind: 'string', default: '', doc: 'CA bundle that signed the collector\'s certificate (https endpoints); empty: the system roots.' },
      certFile: { kind: 'string', default: '', doc: 'Client certificate for mutual TLS (with keyFile).' },
      keyFile: { kind: 'string', default: '', doc: 'Client key for mutual TLS (with certFile).' },
    },
    maxInFlight: { kind: 'number', integer: true, min: 1, max: 64, default: 4, doc: 'Exports pending at once (retrying included); a new one abandons the oldest.' },
    retry: {
      initialBackoffMs: { kind: 'number', integer: true, min: 10, max: 60_000, default: 1000, doc: 'Wait before the first retry of a retryable failure; doubles with each retry, with jitter.' },
      maxBackoffMs: { kind: 'number', integer: true, min: 10, max: 600_000, default: 30_000, doc: 'Longest wait between retries.' },
      maxAttempts: { kind: 'number', integer: true, min: 1, max: 100, default: 6, doc: 'Attempts of one export, the first included, before it is given up.' },
    },
  },
  events: {
    ringBufferBytes: {
      kind: 'number',
      integer: true,
      min: 65536,
      max: 1073741824,
      default: 4194304,
      doc: 'Size of the kernel ring buffer every traced event goes through, rounded up to a power of two; when userspace falls behind and it fills, events are lost and counted (probepilot_events_lost_total{reason="ring_buffer_full"}).',
    },
    ratePerSecond: {
      kind: 'number',
      integer: true,
      min: 0,
      max: 10_000_000,
      default: 5000,
      doc: 'Events a cgroup may send per second while traced (a token bucket in the kernel), so one workload cannot flood the stream or crowd out the others; 0: no limit. Events over it are counted (reason="rate_limited").',
    },
    burst: {
      kind: 'number',
      integer: true,
      min: 1,
      max: 10_000_000,
      default: 10_000,
      doc: 'Events a cgroup may send at once above its rate, after a quiet period (the token bucket\'s depth).',
    },
    maxSubscribers: {
      kind: 'number',
      integer: true,
      min: 1,
      max: 1024,
      default: 16,
      doc: 'Traces (event streams of syscall or network events) open at once; one more is refused with 429.',
    },
  },
  tls: {
    certFile: { kind: 'string', default: '', doc: 'PEM certificate (chain) of the HTTP server and the gRPC API; with keyFile turns on TLS (1.2 and 1.3 only). Re-read when it changes on disk, without a restart.' },
    keyFile: { kind: 'string', default: '', doc: 'PEM private key of certFile.' },
    clientCaFile: { kind: 'string', default: '', doc: 'PEM CA bundle for mutual TLS: a client without a certificate it signed is refused during the handshake; empty: no client certificates asked for.' },
    reloadIntervalSeconds: { kind: 'number', integer: false, min: 0.2, max: 3600, default: 10, doc: 'How often the TLS files are checked for changes (besides a file-system watch, which misses some renames).' },
  },
  auth: {
    mode: {
      kind: 'enum',
      values: authModes,
      default: 'none',
      doc: 'Who may call the agent: none (everyone is admin: a standalone host), tokens (bearer tokens of auth.tokenFiles, each with a role), kubernetes (TokenReview and SubjectAccessReview against the API server; the Helm chart turns it on).',
    },
    tokenFiles: { kind: 'strings', pattern: /^\S(?:.*\S)?$/, expected: 'file paths', default: [], doc: 'YAML files of bearer tokens for auth.mode=tokens: {tokens: [{name, token, role: viewer|operator|admin, namespaces: [..]}]}; re-read when they change.' },
    cacheTtlSeconds: { kind: 'number', integer: false, min: 0, max: 3600, default: 10, doc: 'How long a TokenReview or SubjectAccessReview answer is reused (auth.mode=kubernetes); also how long it is honoured while the API server is unreachable.' },
    rateLimit: {
      requestsPerSecond: { kind: 'number', integer: false, min: 0, max: 1_000_000, default: 20, doc: 'Requests one identity (or, unauthenticated, one address) may make per second, REST and gRPC together; over it: 429 with Retry-After (RESOURCE_EXHAUSTED). 0: no limit. /healthz and /readyz are not limited; with auth.mode=none there is no identity and no limit.' },
      burst: { kind: 'number', integer: true, min: 1, max: 1_000_000, default: 40, doc: 'Requests one identity may make at once above its rate (the token bucket\'s depth).' },
    },
    maxStreamsPerIdentity: { kind: 'number', integer: true, min: 1, max: 1024, default: 4, doc: 'Event streams one identity may hold open at once (REST and gRPC); one more is refused with 429. With auth.mode=none only events.maxSubscribers bounds them.' },
  },
  audit: {
    file: { kind: 'string', default: '', doc: 'File the audit records are appended to (JSON lines); empty: stdout, with the key log="audit".' },
  },
  limits: {
    bodyBytes: { kind: 'number', integer: true, min: 1024, max: 16 << 20, default: 65536, doc: 'Largest request body; more is refused with 413.' },
    queryBytes: { kind: 'number', integer: true, min: 256, max: 65536, default: 16384, doc: 'Longest query string; more is refused with 414.' },
    headerBytes: { kind: 'number', integer: true, min: 1024, max: 65536, default: 16384, doc: 'Largest request head (request line and headers); more is refused with 431.' },
    headersTimeoutSeconds: { kind: 'number', integer: false, min: 0.5, max: 600, default: 10, doc: 'Time a client has to send its request head; a slower one is disconnected (slowloris).' },
    requestTimeoutSeconds: { kind: 'number', integer: false, min: 1, max: 3600, default: 30, doc: 'Time a client has to send its whole request; event streams answer as long as they like.' },
  },
  security: {
    enabled: {
      kind: 'boolean',
      default: true,
      doc: 'Security events (exec, exit, watched file access, privilege changes, ptrace, module loads, mounts, bpf() loads, connects, listens) counted per workload (probepilot_security_events_total), logged as JSON lines (log: "security") and streamed (type security); the probes are tracepoints on rare events or on openat with an in-kernel path filter.',
    },
    watchedPaths: {
      kind: 'paths',
      maxItems: 8,
      maxLength: 64,
      default: ['/etc/', '/root/.ssh/', '/var/run/secrets/kubernetes.io/', '/run/secrets/kubernetes.io/', '/usr/bin/', '/usr/sbin/', '/bin/', '/sbin/'],
      doc: 'Path prefixes whose writes (open for write, unlink, rename, chmod) are security events; compared in the kernel with the path as the task gave it (a directory ends with /).',
    },
    sensitivePaths: {
      kind: 'paths',
      maxItems: 8,
      maxLength: 64,
      default: ['/etc/shadow', '/etc/sudoers', '/root/.ssh/', '/var/run/secrets/kubernetes.io/', '/run/secrets/kubernetes.io/'],
      doc: 'Path prefixes whose reads are security events too (their writes always are).',
    },
    namespaces: {
      include: {
        kind: 'strings',
        pattern: /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/,
        expected: 'namespace names (lower-case letters, digits and -)',
        default: [],
        doc: 'Kubernetes mode: security events only from these namespaces\' pods (and from the node\'s own processes only if security.nodeProcesses=include); decided in the kernel. Empty: every namespace.',
      },
      exclude: {
        kind: 'strings',
        pattern: /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/,
        expected: 'namespace names (lower-case letters, digits and -)',
        default: [],
        doc: 'Kubernetes mode: no security events from these namespaces\' pods; their events never leave the kernel (nor count against events.ratePerSecond). A pod is placed within about 2 s of appearing.',
      },
    },
    cgroups: {
      include: {
        kind: 'strings',
        pattern: /^\/[^\u0000-\u001f\u007f]*$/,
        expected: 'cgroup paths relative to the cgroup2 root (e.g. /system.slice)',
        default: [],
        doc: 'Security events only from these cgroups and the cgroups below them (paths as the cgroup label shows them); a deeper entry of security.cgroups or security.namespaces decides over a shallower one. Works in standalone mode too. Empty: every cgroup.',
      },
      exclude: {
        kind: 'strings',
        pattern: /^\/[^\u0000-\u001f\u007f]*$/,
        expected: 'cgroup paths relative to the cgroup2 root (e.g. /system.slice/cron.service)',
        default: [],
        doc: 'No security events from these cgroups and the cgroups below them; on the same cgroup exclude wins over include.',
      },
    },
    nodeProcesses: {
      kind: 'enum',
      values: nodeProcessesSettings,
      default: 'auto',
      doc: 'Security events of the node\'s own processes (in no pod\'s cgroup): include, exclude, or auto (included unless security.namespaces.include or security.cgroups.include names something).',
    },
    rules: {
      path: { kind: 'string', default: '', doc: 'YAML file of detection rules over security events (README "Detection rules"); re-read when it changes, a bad file keeps the last good rules. Empty: the shipped rules/security.yaml.' },
      reloadIntervalSeconds: { kind: 'number', integer: true, min: 1, max: 3600, default: 10, doc: 'How often the rule file is checked for changes, besides a file-system watch (which misses some ConfigMap updates).' },
    },
  },
  kubernetes: {
    enabled: {
      kind: 'boolean',
      default: false,
      doc: 'Kubernetes mode: label metrics with namespace, pod, container and workload from the API server (the pods of this node). Off: standalone mode, labels are cgroup paths.',
    },
    kubeconfig: { kind: 'string', default: '', doc: 'kubeconfig file for the API server; empty: the in-cluster service account.' },
    nodeName: { kind: 'string', default: '', doc: 'This node\'s name in Kubernetes (whose pods are watched); empty: the NODE_NAME environment variable (the downward API), else the host name.' },
    relistIntervalSeconds: {
      kind: 'number',
      integer: true,
      min: 10,
      max: 86400,
      default: 300,
      doc: 'How often the pod list is fetched again, besides the watch (a watch can go silent without an error).',
    },
    nodePeers: {
      kind: 'boolean',
      default: true,
      doc: 'Watch the cluster\'s Nodes (their addresses only) so traffic to another node is peer_class="node" in the peer matrix.',
    },
    clusterPodPeers: {
      kind: 'boolean',
      default: false,
      doc: 'Also watch the running pods of every other node (their addresses, names and owners, kept small) so cross-node traffic names its peer pod; costs one cluster-wide pod watch per node.',
    },
  },
  collectors: {
    network: {
      enabled: { kind: 'boolean', default: true, doc: 'TC network collector: bytes and packets per workload, direction and protocol.' },
      attachMode: {
        kind: 'enum',
        values: attachModes,
        default: 'auto',
        doc: 'TC attach: tcx links (kernel >= 6.6), clsact filters, or auto (tcx, falling back to clsact).',
      },
      interfaces: {
        include: {
          kind: 'globs',
          default: ['veth*', 'cni*', 'docker*', 'br-*', 'eth*', 'ens*', 'enp*', 'eno*', 'cali*', 'lxc*', 'gke*', 'azv*', 'vxlan*', 'flannel*', 'cilium*', 'wg*', 'tun*', 'bond*'],
          doc: 'Interfaces to attach to (globs: * ? [abc]); new matching interfaces are attached as they appear.',
        },
        exclude: { kind: 'globs', default: [], doc: 'Interfaces never attached to, even when included.' },
      },
      maxEntries: mapCapacity(65536, 'Capacity of the kernel traffic map (workload × direction × protocol × family); a full map counts probepilot_collector_events_dropped_total.'),
      rescanIntervalSeconds: {
        kind: 'number',
        integer: false,
        min: 0.1,
        max: 60,
        default: 1,
        doc: 'How often interfaces are listed to attach to new ones and forget removed ones.',
      },
      flows: {
        enabled: { kind: 'boolean', default: true, doc: 'The peer matrix: bytes and packets per workload, direction and peer (probepilot_network_flow_*).' },
        maxEntries: mapCapacity(65536, 'Capacity of the kernel peer matrix map (workload × direction × peer); a full map counts probepilot_collector_events_dropped_total.'),
        maxPeers: mapCapacity(65536, 'Most peer addresses (pods and the node\'s own addresses) the kernel tells apart; beyond that peers count as world.'),
        peerLabel: { kind: 'enum', values: peerLabels, default: 'workload', doc: 'How a pod peer is named: peer_workload (bounded) or peer_pod.' },
        peerCidrs: {
          kind: 'prefixes',
          reserved: ['pod', 'host', 'world'],
          default: [],
          doc: 'Names for non-pod peers, as NAME=CIDR (e.g. node=10.0.0.0/24, corp=172.16.0.0/12); the longest prefix wins, anything else is world.',
        },
      },
      flowTable: {
        enabled: { kind: 'boolean', default: true, doc: 'The live 5-tuple flow table (an LRU in the kernel): probepilot_network_active_flows, SYN/FIN/RST counts, /api/v1/flows?view=5tuple.' },
        maxEntries: mapCapacity(65536, 'Capacity of the kernel 5-tuple flow table; when full, the least recently seen flow makes room.'),
        idleSeconds: {
          kind: 'number',
          integer: false,
          min: 1,
          max: 3600,
          default: 60,
          doc: 'A flow without a packet for this long leaves the table (and stops counting as active).',
        },
      },
    },
    drops: {
      enabled: { kind: 'boolean', default: true, doc: 'Packet drops collector: packets the kernel dropped, by drop reason and workload (skb:kfree_skb, Linux >= 5.17).' },
      maxEntries: mapCapacity(16384, 'Capacity of the kernel drop map ((workload cgroup or network namespace) × reason); a full map counts probepilot_collector_events_dropped_total.', 1048576),
    },
    dns: {
      enabled: { kind: 'boolean', default: true, doc: 'DNS collector: queries, answers by response code, latency and timeouts per workload, parsed at TC on the network collector\'s interfaces.' },
      ports: { kind: 'ports', maxItems: 8, default: [53], doc: 'DNS server ports queries go to (UDP and TCP), e.g. [53, 5353] for a node-local cache on another port; at most 8.' },
      timeoutSeconds: { kind: 'number', integer: false, min: 0.1, max: 300, default: 5, doc: 'A query with no answer for this long counts as a timeout (and its late answer gets no latency).' },
      maxEntries: mapCapacity(16384, 'Capacity of each kernel DNS map (workload × query type, workload × response code, workload); a full map counts probepilot_collector_events_dropped_total.'),
      maxPending: mapCapacity(65536, 'Queries awaiting their answer kept at once (LRU); beyond that the oldest are evicted and neither time out nor get a latency.'),
    },
    syscalls: {
      enabled: { kind: 'boolean', default: true, doc: 'Syscalls collector: calls, failures and latency per workload and tracked syscall (raw_syscalls).' },
      tracked: {
        kind: 'names',
        values: trackableSyscalls(currentSyscallArch() ?? 'x64'),
        default: defaultTrackedSyscalls,
        doc: 'Syscalls exported by name; every other syscall is counted as syscall="other".',
      },
      maxEntries: mapCapacity(16384, 'Capacity of the kernel syscall map (workload × tracked syscall); a full map counts probepilot_collector_events_dropped_total.'),
      maxThreads: mapCapacity(65536, 'Threads whose syscall entry time is kept at once (LRU); beyond that the oldest entries are evicted and their syscalls go uncounted.'),
    },
    sched: {
      enabled: { kind: 'boolean', default: true, doc: 'Sched collector: run-queue latency per workload (sched_wakeup, sched_wakeup_new, sched_switch).' },
      maxEntries: mapCapacity(16384, 'Capacity of the kernel run-queue latency map (one entry per workload); a full map counts probepilot_collector_events_dropped_total.'),
      maxTasks: mapCapacity(65536, 'Runnable tasks whose wait start is kept at once (LRU); beyond that the oldest are evicted and their wait goes unmeasured.'),
    },
    tcp: {
      enabled: {
        kind: 'boolean',
        default: true,
        doc: 'TCP collector: connections, connect latency, RTT, retransmits and resets per workload (sock:inet_sock_set_state, tcp:* tracepoints).',
      },
      maxEntries: mapCapacity(16384, 'Capacity of the kernel TCP statistics map (one entry per workload); a full map counts probepilot_collector_events_dropped_total.'),
      maxConnecting: mapCapacity(65536, 'Connects in progress whose SYN time is kept at once (LRU); beyond that the oldest are evicted and their latency goes unmeasured.'),
      maxEstablished: mapCapacity(65536, 'Open connections whose ESTABLISHED time is kept at once (LRU); beyond that the oldest are evicted and their duration goes unmeasured.'),
    },
    block: {
      enabled: { kind: 'boolean', default: true, doc: 'Block collector: reads and writes per workload and disk (block_io_start, block_rq_issue, block_io_done; Linux >= 6.5).' },
      maxEntries: mapCapacity(16384, 'Capacity of the kernel block I/O map (workload × disk × operation); a full map counts probepilot_collector_events_dropped_total.'),
      maxInflight: mapCapacity(16384, 'Requests in flight whose issuer and issue time are kept at once (LRU); beyond that the oldest are evicted and go uncounted.'),
    },
    process: {
      enabled: { kind: 'boolean', default: true, doc: 'Process collector: execs and OOM kills per workload (sched_process_exec, mark_victim).' },
      maxEntries: mapCapacity(16384, 'Capacity of the kernel process-event map (one entry per workload); a full map counts probepilot_collector_events_dropped_total.'),
    },
    gpu: {
      enabled: {
        kind: 'boolean',
        default: false,
        doc: 'GPU collector: per-GPU metrics from NVIDIA\'s NVML, per-pod allocation (kubelet pod-resources) and per-process shares. Off by default: it needs the NVIDIA driver.',
      },
      libraryPath: { kind: 'string', default: 'libnvidia-ml.so.1', doc: 'NVML library to dlopen: a file name (the dynamic linker\'s search path) or an absolute path.' },
      dcgmLibraryPath: {
        kind: 'string',
        default: 'libdcgm.so.4',
        doc: 'DCGM library to dlopen for the profiling fields NVML lacks (SM activity, tensor pipes, NVLink); empty or absent leaves them out.',
      },
      podResourcesSocket: {
        kind: 'string',
        default: '/var/lib/kubelet/pod-resources/kubelet.sock',
        doc: 'The kubelet pod-resources API socket, read in Kubernetes mode to name the pod each GPU is allocated to.',
      },
      dcgmExporterNames: { kind: 'boolean', default: false, doc: 'Also export the main metrics under dcgm-exporter\'s names (DCGM_FI_DEV_GPU_UTIL, …) for existing dashboards.' },
    },
  },
  customProbes: {
    paths: {
      kind: 'strings',
      pattern: /^\S(?:.*\S)?$/,
      expected: 'file or directory paths',
      default: [],
      doc: 'Custom probe specs (YAML): files, or directories whose *.yaml and *.yml are each one probe; every probe is a collector named custom_<name>.',
    },
    disabled: {
      kind: 'strings',
      pattern: /^[a-z][a-z0-9_]{0,62}$/,
      expected: 'probe names (the name: of a spec, without custom_)',
      default: [],
      doc: 'Custom probes not started (enable one at run time like any collector, as custom_<name>).',
    },
  },
} as const satisfies Section;

export class ConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`config key "${key}": ${message}`);
    this.name = 'ConfigError';
  }
}

function isLeaf(node: Leaf | Section): node is Leaf {
  return typeof (node as Leaf).kind === 'string' && typeof (node as Leaf).doc === 'string';
}

export function parseListen(value: string, key = 'listen'): ListenAddress {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]*)):(\d{1,5})$/.exec(value);
  const port = match ? Number(match[3]) : NaN;
  if (!match || !(port >= 0 && port <= 65535)) {
    throw new ConfigError(key, `got ${JSON.stringify(value)}, expected HOST:PORT (e.g. 0.0.0.0:9742, [::1]:9742) with a port from 0 to 65535`);
  }
  return { host: match[1] ?? (match[2] || '0.0.0.0'), port };
}

function describe(value: unknown): string {
  return JSON.stringify(value) ?? String(value);
}

/** Validates one value; `fromText` means it came from the environment or a flag, so strings are coerced. */
function validateLeaf(leaf: Leaf, key: string, value: unknown, fromText: boolean): unknown {
  switch (leaf.kind) {
    case 'listen':
      if (typeof value !== 'string') throw new ConfigError(key, `got ${describe(value)}, expected a "HOST:PORT" string`);
      if (leaf.optional && value === '') return undefined;
      return parseListen(value, key);
    case 'string':
      if (typeof value !== 'string') throw new ConfigError(key, `got ${describe(value)}, expected a string`);
      return value;
    case 'enum':
      if (typeof value !== 'string' || !leaf.values.includes(value)) {
        throw new ConfigError(key, `got ${describe(value)}, allowed values: ${leaf.values.join(', ')}`);
      }
      return value;
    case 'boolean': {
      if (typeof value === 'boolean') return value;
      if (fromText && typeof value === 'string' && ['true', 'false'].includes(value.toLowerCase())) return value.toLowerCase() === 'true';
      throw new ConfigError(key, `got ${describe(value)}, allowed values: true, false`);
    }
    case 'number': {
      const number = fromText && typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
      const kind = leaf.integer ? 'an integer' : 'a number';
      if (typeof number !== 'number' || !Number.isFinite(number) || (leaf.integer && !Number.isInteger(number)) || number < leaf.min || number > leaf.max) {
        throw new ConfigError(key, `got ${describe(value)}, expected ${kind} from ${leaf.min} to ${leaf.max}`);
      }
      return number;
    }
    case 'names': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
      if (!Array.isArray(list)) throw new ConfigError(key, `got ${describe(value)}, expected a list of names from: ${leaf.values.join(', ')}`);
      const unknown = list.filter((item) => typeof item !== 'string' || !leaf.values.includes(item));
      if (unknown.length) throw new ConfigError(key, `got ${describe(unknown.length === 1 ? unknown[0] : unknown)}, allowed values: ${leaf.values.join(', ')}`);
      return [...new Set(list as string[])];
    }
    case 'endpoint': {
      if (typeof value !== 'string' || (value !== '' && !/^https?:\/\/(?:\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):\d{1,5}\/?$/.test(value))) {
        throw new ConfigError(key, `got ${describe(value)}, expected http://HOST:PORT (plaintext), https://HOST:PORT (TLS) or empty`);
      }
      return value;
    }
    case 'headers': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
      if (!Array.isArray(list)) throw new ConfigError(key, `got ${describe(value)}, expected a list of NAME=VALUE`);
      return list.map((item: unknown) => {
        const match = typeof item === 'string' ? /^([0-9a-z_.-]+)=(.*)$/.exec(item) : null;
        // The value may be a secret: it is never echoed.
        if (!match) throw new ConfigError(key, 'an entry is not NAME=VALUE with a lower-case gRPC metadata name (letters, digits, - _ .)');
        return { name: match[1]!, value: match[2]! };
      });
    }
    case 'prefixes': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
      if (!Array.isArray(list)) throw new ConfigError(key, `got ${describe(value)}, expected a list of NAME=CIDR (e.g. ["node=10.0.0.0/24"])`);
      return list.map((item: unknown) => {
        const match = typeof item === 'string' ? /^([a-z][a-z0-9_-]{0,62})=(\S+)$/.exec(item) : null;
        if (!match || !parsePrefix(match[2]!)) {
          throw new ConfigError(key, `got ${describe(item)}, expected NAME=CIDR with a lower-case name (letters, digits, - and _) and an IPv4 or IPv6 prefix, e.g. "node=10.0.0.0/24"`);
        }
        if (leaf.reserved.includes(match[1]!)) throw new ConfigError(key, `got ${describe(item)}: the names ${leaf.reserved.join(', ')} are reserved for the built-in peer classes`);
        return { name: match[1]!, cidr: match[2]! };
      });
    }
    case 'strings': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
      const bad = Array.isArray(list) ? list.find((item: unknown) => typeof item !== 'string' || !leaf.pattern.test(item)) : value;
      if (!Array.isArray(list) || bad !== undefined) throw new ConfigError(key, `got ${describe(bad)}, expected a list of ${leaf.expected}`);
      return [...new Set(list as string[])];
    }
    case 'ports': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean).map(Number) : value;
      if (!Array.isArray(list) || list.length === 0 || list.length > leaf.maxItems || !list.every((p) => typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535)) {
        throw new ConfigError(key, `got ${describe(value)}, expected a list of 1 to ${leaf.maxItems} ports from 1 to 65535 (e.g. [53])`);
      }
      return [...new Set(list as number[])];
    }
    case 'paths': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
      if (!Array.isArray(list)) throw new ConfigError(key, `got ${describe(value)}, expected a list of absolute path prefixes (e.g. ["/etc/", "/root/.ssh/"])`);
      if (list.length > leaf.maxItems) throw new ConfigError(key, `got ${list.length} paths, at most ${leaf.maxItems} are allowed (the kernel compares each file operation with every one)`);
      for (const item of list) {
        if (typeof item !== 'string' || !item.startsWith('/') || Buffer.byteLength(item) > leaf.maxLength) {
          throw new ConfigError(key, `got ${describe(item)}, expected an absolute path prefix of at most ${leaf.maxLength} bytes (a directory ends with /)`);
        }
      }
      return list as string[];
    }
    case 'globs': {
      const list = fromText && typeof value === 'string' ? value.split(',').map((s) => s.trim()).filter(Boolean) : value;
      if (!Array.isArray(list) || !list.every((item) => typeof item === 'string' && item.length > 0)) {
        throw new ConfigError(key, `got ${describe(value)}, expected a list of interface-name globs (e.g. ["veth*", "eth0"])`);
      }
      return list;
    }
  }
}

function validateSection(section: Section, prefix: string, input: unknown, fromText: boolean, out: Record<string, unknown>): void {
  if (input === undefined || input === null) input = {};
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError(prefix || '(root)', `got ${describe(input)}, expected a mapping with keys: ${Object.keys(section).join(', ')}`);
  }
  const given = input as Record<string, unknown>;
  for (const key of Object.keys(given)) {
    if (!(key in section)) {
      const at = prefix ? `${prefix}.${key}` : key;
      throw new ConfigError(at, `unknown key; allowed keys${prefix ? ` under "${prefix}"` : ''}: ${Object.keys(section).join(', ')}`);
    }
  }
  for (const [key, node] of Object.entries(section)) {
    const at = prefix ? `${prefix}.${key}` : key;
    if (isLeaf(node)) {
      const value = given[key];
      out[key] = value === undefined ? (out[key] ?? validateLeaf(node, at, structuredClone(node.default), false)) : validateLeaf(node, at, value, fromText);
    } else {
      const child = (out[key] as Record<string, unknown> | undefined) ?? {};
      out[key] = child;
      validateSection(node, at, given[key], fromText, child);
    }
  }
}

/** PROBEPILOT_ + the key path in upper snake case: collectors.network.attachMode → PROBEPILOT_COLLECTORS_NETWORK_ATTACH_MODE. */
export function envName(keyPath: string): string {
  return `PROBEPILOT_${keyPath
    .split('.')
    .map((part) => part.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase())
    .join('_')}`;
}

export interface LeafEntry {
  key: string;
  leaf: Leaf;
}

export function leaves(section: Section = schema, prefix = ''): LeafEntry[] {
  return Object.entries(section).flatMap(([key, node]) => {
    const at = prefix ? `${prefix}.${key}` : key;
    return isLeaf(node) ? [{ key: at, leaf: node }] : leaves(node, at);
  });
}

/** Turns flat dotted keys into the nested shape validateSection expects. */
function nest(flat: Record<string, string>): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  for (const [dotted, value] of Object.entries(flat)) {
    const parts = dotted.split('.');
    let node = root;
    for (const part of parts.slice(0, -1)) node = (node[part] ??= {}) as Record<string, unknown>;
    node[parts.at(-1) as string] = value;
  }
  return root;
}

export interface ConfigSources {
  /** Parsed file content (YAML or JSON). */
  file?: unknown;
  env?: NodeJS.ProcessEnv;
  /** Dotted keys from command-line flags, e.g. { listen: '127.0.0.1:9742' }. */
  flags?: Record<string, string>;
}

export function resolveConfig(sources: ConfigSources = {}): AgentConfig {
  const out: Record<string, unknown> = {};
  validateSection(schema, '', sources.file, false, out);
  const fromEnv: Record<string, string> = {};
  for (const { key } of leaves()) {
    const value = sources.env?.[envName(key)];
    if (value !== undefined) fromEnv[key] = value;
  }
  validateSection(schema, '', nest(fromEnv), true, out);
  validateSection(schema, '', nest(sources.flags ?? {}), true, out);
  return out as unknown as AgentConfig;
}

export function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('--config', `cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return parseYaml(text);
  } catch (err) {
    throw new ConfigError('--config', `${file} is not valid YAML or JSON: ${(err as Error).message}`);
  }
}
