// Kubernetes mode: the pods of this node, watched through the API server
// (list + watch with @kubernetes/client-node, restarted with backoff after
// errors and re-listed on a timer), with each pod's controller resolved to a
// workload (ReplicaSet → Deployment, Job → CronJob). Metrics then carry
// namespace/pod/container/workload/workload_kind instead of a cgroup path.
import { AppsV1Api, BatchV1Api, CoreV1Api, KubeConfig, ListWatch, Watch, type V1Node, type V1OwnerReference, type V1Pod, type V1PodList } from '@kubernetes/client-node';
import { ConfigError } from '../config.js';
import { Backoff } from '../backoff.js';
import type { Logger } from '../log.js';
import { describeError } from '../errors.js';
import { sanitizeLabelValue, type FamilyDescriptor, type Labels, type MetricFamily } from '../metrics/model.js';
import type { CgroupPaths } from './cgroups.js';
import type { Identity, IdentityScope, PeerPod, Peers } from './identity.js';
import { parseKubeletCgroup, runtimeContainerId } from './kubelet.js';
import type { NetnsWorkloads } from './netns.js';
import { SlimInformer } from './slim-informer.js';
import type { AgentEvents } from '../api/events.js';

export interface PodInfo {
  namespace: string;
  name: string;
  workload: string;
  workloadKind: string;
  /** Runtime container id → container name. */
  containers: ReadonlyMap<string, string>;
  /** The pod's own addresses (status.podIPs); none for host-network pods, whose addresses are the node's. */
  ips: readonly string[];
}

/** The API server's address and credentials: a kubeconfig file, or (empty) the in-cluster service account. */
export function loadKubeConfig(kubeconfig: string): KubeConfig {
  const kc = new KubeConfig();
  if (kubeconfig) {
    try {
      kc.loadFromFile(kubeconfig);
    } catch (err) {
      throw new ConfigError('kubernetes.kubeconfig', `cannot load ${kubeconfig}: ${describeError(err)}`);
    }
  } else if (!process.env.KUBERNETES_SERVICE_HOST) {
    throw new ConfigError('kubernetes.kubeconfig', 'empty, and this is not a pod (no KUBERNETES_SERVICE_HOST): give a kubeconfig file or run in the cluster');
  } else {
    kc.loadFromCluster();
  }
  return kc;
}

export interface PodWatcherOptions {
  kc: KubeConfig;
  nodeName: string;
  /** Pods appearing and going away are published here. */
  events?: AgentEvents;
  /** A watch can go silent without an error: list again this often. */
  relistIntervalMs: number;
  log: Logger;
}

/** Bounded fallback for pods the API server has not told us about (yet). */
const unknown = 'unknown';

export class PodWatcher {
  private readonly pods = new Map<string, PodInfo>();
  private readonly owners = new Map<string, Promise<{ name: string; kind: string }>>();
  private readonly listWatch: ListWatch<V1Pod>;
  private readonly listPods: () => Promise<V1PodList>;
  private readonly apps: AppsV1Api;
  private readonly batch: BatchV1Api;
  private readonly backoff = new Backoff(500, 30_000);
  private restartTimer: NodeJS.Timeout | undefined;
  private relistTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Whether the last list or watch succeeded. */
  apiUp = false;
  /** Bumped whenever pod metadata changes, so label caches know to drop what they hold. */
  generation = 0;

  constructor(private readonly options: PodWatcherOptions) {
    const { kc } = options;
    const core = kc.makeApiClient(CoreV1Api);
    this.apps = kc.makeApiClient(AppsV1Api);
    this.batch = kc.makeApiClient(BatchV1Api);
    const fieldSelector = `spec.nodeName=${options.nodeName}`;
    this.listPods = () => core.listPodForAllNamespaces({ fieldSelector }).then((list) => (this.onReachable(), list));
    this.listWatch = new ListWatch<V1Pod>('/api/v1/pods', new ObservedWatch(kc, () => this.onReachable()), this.listPods, false, undefined, fieldSelector);
    this.listWatch.on('add', (pod) => void this.upsert(pod, true));
    this.listWatch.on('update', (pod) => void this.upsert(pod, true));
    this.listWatch.on('delete', (pod) => this.remove(pod));
    this.listWatch.on('error', (err) => this.onError(err));
  }

  get size(): number {
    return this.pods.size;
  }

  /** The namespaces of this node's pods (where a tenant's namespaced grants are looked for). */
  namespaces(): Set<string> {
    return new Set([...this.pods.values()].map((p) => p.namespace));
  }

  get(uid: string): PodInfo | undefined {
    return this.pods.get(uid);
  }

  values(): IterableIterator<PodInfo> {
    return this.pods.values();
  }

  /** Resolves after the first list, or after `initialSyncTimeoutMs` with what is known by then: a hung API server must not keep the agent from serving. */
  async start(initialSyncTimeoutMs = 10_000): Promise<void> {
    const synced = this.listWatch.start().catch((err: unknown) => this.onError(err));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, initialSyncTimeoutMs)));
    await Promise.race([synced, timeout]);
    clearTimeout(timer);
    this.relistTimer = setInterval(() => void this.relist(), this.options.relistIntervalMs);
    this.relistTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    clearInterval(this.relistTimer);
    await this.listWatch.stop();
  }

  /** A list succeeded or a watch connected (ListWatch's own "connect" fires before it even tries). */
  private onReachable(): void {
    this.apiUp = true;
    this.backoff.reset();
  }

  /** The informer stops after an error; it is restarted with exponential backoff and jitter so an outage is no request flood. */
  private onError(err: unknown): void {
    this.apiUp = false;
    if (this.stopped || this.restartTimer) return;
    const delay = this.backoff.next();
    this.options.log.warn({ err: describeError(err), retryMs: Math.round(delay) }, 'pod watch failed; keeping the last known pods');
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      void this.restart('after error');
    }, delay);
    this.restartTimer.unref();
  }

  private async restart(reason: string): Promise<void> {
    if (this.stopped) return;
    this.options.log.debug({ reason }, 'restarting pod list and watch');
    await this.listWatch.stop();
    await this.listWatch.start().catch((err: unknown) => this.onError(err));
  }

  /** A watch can go silent without an error: the full list, on a timer, brings back what it missed — deletions included. */
  private async relist(): Promise<void> {
    let list: V1PodList;
    try {
      list = await this.listPods();
    } catch (err) {
      this.onError(err);
      return;
    }
    const listed = new Set(list.items.map((pod) => pod.metadata?.uid));
    for (const [uid, pod] of [...this.pods]) {
      if (!listed.has(uid)) {
        this.pods.delete(uid);
        this.generation++;
        this.publish('deleted', pod);
      }
    }
    await Promise.all(list.items.map((pod) => this.upsert(pod, false)));
  }

  /** `fromWatch`: the informer's cache is the truth, and a pod it dropped while the owner was looked up stays dropped. */
  private async upsert(pod: V1Pod, fromWatch: boolean): Promise<void> {
    const uid = pod.metadata?.uid;
    if (!uid) return;
    const containers = new Map<string, string>();
    for (const status of [...(pod.status?.initContainerStatuses ?? []), ...(pod.status?.containerStatuses ?? [])]) {
      const id = runtimeContainerId(status.containerID);
      if (id) containers.set(id, status.name);
    }
    const namespace = pod.metadata?.namespace ?? '';
    const name = pod.metadata?.name ?? '';
    const owner = await this.workloadOf(namespace, name, pod.metadata?.ownerReferences);
    // Deleted while its owner was looked up: it must not come back.
    if (fromWatch && this.listWatch.get(name, namespace)?.metadata?.uid !== uid) return;
    const ips = pod.spec?.hostNetwork ? [] : (pod.status?.podIPs?.map((a) => a.ip) ?? (pod.status?.podIP ? [pod.status.podIP] : []));
    const info = { namespace, name, workload: owner.name, workloadKind: owner.kind, containers, ips };
    const known = this.pods.has(uid);
    this.pods.set(uid, info);
    this.generation++;
    if (!known) this.publish('added', info);
  }

  private remove(pod: V1Pod): void {
    const info = pod.metadata?.uid ? this.pods.get(pod.metadata.uid) : undefined;
    if (!info || !pod.metadata?.uid) return;
    this.pods.delete(pod.metadata.uid);
    this.generation++;
    this.publish('deleted', info);
  }

  private publish(action: 'added' | 'deleted', pod: PodInfo): void {
    this.options.events?.publish({ type: 'pod', action, namespace: pod.namespace, pod: pod.name });
  }

  /** The top controller: a Deployment behind a ReplicaSet, a CronJob behind a Job; a bare pod is its own workload. */
  private workloadOf(namespace: string, podName: string, refs: V1OwnerReference[] | undefined): Promise<{ name: string; kind: string }> {
    const controller = refs?.find((r) => r.controller) ?? refs?.[0];
    if (!controller) return Promise.resolve({ name: podName, kind: 'Pod' });
    if (controller.kind !== 'ReplicaSet' && controller.kind !== 'Job') return Promise.resolve({ name: controller.name, kind: controller.kind });
    const key = `${controller.kind}/${namespace}/${controller.name}`;
    let resolved = this.owners.get(key);
    if (!resolved) {
      resolved = this.parentOf(controller.kind, namespace, controller.name);
      this.owners.set(key, resolved);
      // A small cache: owners rarely change, and a failed lookup is retried with the next pod update.
      if (this.owners.size > 4096) this.owners.delete(this.owners.keys().next().value!);
    }
    return resolved;
  }

  private async parentOf(kind: 'ReplicaSet' | 'Job', namespace: string, name: string): Promise<{ name: string; kind: string }> {
    try {
      const object = kind === 'ReplicaSet' ? await this.apps.readNamespacedReplicaSet({ namespace, name }) : await this.batch.readNamespacedJob({ namespace, name });
      const parent = object.metadata?.ownerReferences?.find((r) => r.controller);
      return parent ? { name: parent.name, kind: parent.kind } : { name, kind };
    } catch (err) {
      this.owners.delete(`${kind}/${namespace}/${name}`);
      this.options.log.debug({ err: describeError(err), kind, namespace, name }, 'cannot resolve owner; using the direct controller');
      return { name, kind };
    }
  }
}

/** The addresses other nodes of the cluster are reached at (traffic to them is peer_class="node"). */
export function nodeAddressInformer(kc: KubeConfig, log: Logger): SlimInformer<V1Node, readonly string[]> {
  const core = kc.makeApiClient(CoreV1Api);
  return new SlimInformer<V1Node, readonly string[]>(kc, {
    what: 'nodes',
    list: (params) => core.listNode(params),
    watchPath: '/api/v1/nodes',
    slim: (node) => (node.status?.addresses ?? []).filter((a) => a.type === 'InternalIP' || a.type === 'ExternalIP').map((a) => a.address),
    log,
  });
}

/**
 * The workload of a pod on another node, from its owner reference alone (no
 * lookups for thousands of pods): a ReplicaSet named "<deployment>-<pod-template-hash>"
 * is its Deployment; any other controller is itself; a bare pod is its own.
 */
export function peerWorkloadOf(pod: V1Pod): string {
  const controller = pod.metadata?.ownerReferences?.find((r) => r.controller) ?? pod.metadata?.ownerReferences?.[0];
  if (!controller) return pod.metadata?.name ?? '';
  const hash = pod.metadata?.labels?.['pod-template-hash'];
  if (controller.kind === 'ReplicaSet' && hash && controller.name.endsWith(`-${hash}`)) return controller.name.slice(0, -hash.length - 1);
  return controller.name;
}

export interface ClusterPod extends PeerPod {
  ips: readonly string[];
}

/** Running pods of the other nodes, by address, so cross-node traffic names its peer pod (kubernetes.clusterPodPeers). */
export function clusterPodInformer(kc: KubeConfig, nodeName: string, log: Logger): SlimInformer<V1Pod, ClusterPod> {
  const core = kc.makeApiClient(CoreV1Api);
  // Finished pods' addresses are reused at once; this node's pods come with full owner resolution from PodWatcher.
  const fieldSelector = `spec.nodeName!=${nodeName},status.phase!=Succeeded,status.phase!=Failed`;
  return new SlimInformer<V1Pod, ClusterPod>(kc, {
    what: 'cluster pods',
    list: (params) => core.listPodForAllNamespaces({ ...params, fieldSelector }),
    watchPath: '/api/v1/pods',
    watchQuery: { fieldSelector },
    slim: (pod) => {
      if (pod.spec?.hostNetwork || pod.spec?.nodeName === nodeName || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') return undefined;
      const ips = pod.status?.podIPs?.map((a) => a.ip) ?? (pod.status?.podIP ? [pod.status.podIP] : []);
      if (ips.length === 0) return undefined;
      return { namespace: pod.metadata?.namespace ?? '', pod: pod.metadata?.name ?? '', workload: peerWorkloadOf(pod), ips };
    },
    log,
  });
}

const apiUpFamily: FamilyDescriptor = {
  name: 'probepilot_kubernetes_api_up',
  help: 'Whether the last list or watch of each watched collection (this node\'s pods, nodes, other nodes\' pods) against the Kubernetes API server succeeded (1) or not (0); labels stay as last known meanwhile.',
  type: 'gauge',
  labelNames: [],
};

/** A Watch that says when the API server accepted a watch request (answered 200). */
class ObservedWatch extends Watch {
  constructor(
    kc: KubeConfig,
    private readonly connected: () => void,
  ) {
    super(kc);
  }

  override async watch(...[path, query, callback, done]: Parameters<Watch['watch']>): ReturnType<Watch['watch']> {
    let failed = false;
    const request = await super.watch(path, query, callback, (err: unknown) => {
      if (err) failed = true;
      done(err);
    });
    if (!failed) this.connected();
    return request;
  }
}

const labelNamesByScope: Record<IdentityScope, readonly string[]> = {
  container: ['namespace', 'pod', 'container', 'workload', 'workload_kind'],
  pod: ['namespace', 'pod', 'workload', 'workload_kind'],
};

export class KubernetesIdentity implements Identity {
  readonly mode = 'kubernetes';
  private readonly cache = new Map<string, Labels>();
  private cachedGeneration = -1;
  private peerSet: Peers = { pods: new Map(), nodes: new Set() };
  private peersGeneration = '';

  constructor(
    readonly cgroups: CgroupPaths,
    readonly netns: NetnsWorkloads,
    private readonly pods: PodWatcher,
    private readonly nodes?: SlimInformer<V1Node, readonly string[]>,
    private readonly clusterPods?: SlimInformer<V1Pod, ClusterPod>,
  ) {}

  labelNames(scope: IdentityScope): readonly string[] {
    return labelNamesByScope[scope];
  }

  /**
   * A pod's cgroup (or a container's below it) names the pod; anything else
   * on the node (system services, the root) is workload_kind="node" with its
   * cgroup path as the workload. A pod the API server has not told us about
   * gets one bounded fallback, "unknown".
   */
  labelsFor(cgroupPath: string | undefined, scope: IdentityScope): Labels {
    if (this.cachedGeneration !== this.pods.generation) {
      this.cache.clear();
      this.cachedGeneration = this.pods.generation;
    }
    const path = cgroupPath ?? '/';
    const key = `${scope}\0${path}`;
    let labels = this.cache.get(key);
    if (!labels) {
      labels = Object.freeze(this.compute(path, scope));
      if (this.cache.size > 100_000) this.cache.clear();
      this.cache.set(key, labels);
    }
    return labels;
  }

  private compute(path: string, scope: IdentityScope): Record<string, string> {
    const kubelet = parseKubeletCgroup(path);
    const pod = kubelet && this.pods.get(kubelet.podUid);
    const labels: Record<string, string> = kubelet
      ? pod
        ? { namespace: pod.namespace, pod: pod.name, workload: pod.workload, workload_kind: pod.workloadKind }
        : { namespace: unknown, pod: unknown, workload: unknown, workload_kind: unknown }
      : { namespace: '', pod: '', workload: path, workload_kind: 'node' };
    if (scope === 'container') {
      // The pod's own cgroup and its sandbox (pause) container are no app container: "".
      labels.container = (kubelet?.containerId && pod?.containers.get(kubelet.containerId)) || '';
    }
    const out: Record<string, string> = {};
    for (const name of labelNamesByScope[scope]) out[name] = sanitizeLabelValue(labels[name] ?? '');
    return out;
  }

  /** Pods by address (this node's, and with clusterPodPeers the other nodes' too) and the other nodes' addresses. */
  peers(): Peers {
    const generation = `${this.pods.generation}/${this.clusterPods?.generation ?? 0}/${this.nodes?.generation ?? 0}`;
    if (generation !== this.peersGeneration) {
      const pods = new Map<string, PeerPod>();
      for (const pod of this.clusterPods?.records.values() ?? []) {
        for (const ip of pod.ips) pods.set(ip, { namespace: pod.namespace, pod: pod.pod, workload: pod.workload });
      }
      // This node's pods last: their workloads are resolved through the API, and they are the freshest.
      for (const pod of this.pods.values()) {
        for (const ip of pod.ips) pods.set(ip, { namespace: pod.namespace, pod: pod.name, workload: pod.workload });
      }
      const nodes = new Set<string>();
      for (const addresses of this.nodes?.records.values() ?? []) for (const address of addresses) nodes.add(address);
      this.peerSet = { pods, nodes };
      this.peersGeneration = generation;
    }
    return this.peerSet;
  }

  describe(): Record<string, number> {
    const peers = this.peers();
    return {
      pods: this.pods.size,
      ...(this.clusterPods ? { clusterPods: this.clusterPods.records.size } : {}),
      ...(this.nodes ? { nodes: this.nodes.records.size } : {}),
      peerAddresses: peers.pods.size + peers.nodes.size,
      labelCache: this.cache.size,
    };
  }

  readonly families: readonly FamilyDescriptor[] = [apiUpFamily];

  metrics(): MetricFamily[] {
    const up = this.pods.apiUp && (this.nodes?.apiUp ?? true) && (this.clusterPods?.apiUp ?? true);
    return [{ ...apiUpFamily, type: 'gauge', samples: [{ labels: {}, value: up ? 1 : 0 }] }];
  }
}
