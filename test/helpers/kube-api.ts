// A Kubernetes API server for what the agent uses, speaking the real
// protocol over plain HTTP on loopback: pod list with a spec.nodeName field
// selector and resourceVersion, watch streams (ADDED/MODIFIED/DELETED, ERROR
// 410 Gone), ReplicaSet and Job reads, TokenReview and SubjectAccessReview
// (delegated authentication and authorization: tokens and RBAC grants the
// test declares). It can be stopped and started again on the same port to
// make an outage.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import type { AddressInfo } from 'node:net';
import type { Pod } from './pods.js';

export interface KubeObject {
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string>; ownerReferences?: Array<{ kind: string; name: string; controller?: boolean; apiVersion?: string; uid?: string }> };
  spec?: { nodeName?: string };
  status?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface PodObjectOptions {
  namespace: string;
  name: string;
  /** The pod's controller, e.g. a ReplicaSet. */
  owner: { kind: string; name: string };
  /** Default "test-node". */
  node?: string;
}

/** The pod object a kubelet would report for a test pod: its uid, both addresses, and one running container "app". */
export function podObject(pod: Pick<Pod, 'uid' | 'containerId'> & Partial<Pick<Pod, 'ipv4' | 'ipv6'>>, { namespace, name, owner, node = 'test-node' }: PodObjectOptions): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, uid: pod.uid, ownerReferences: [{ apiVersion: 'apps/v1', kind: owner.kind, name: owner.name, uid: `${owner.name}-uid`, controller: true }] },
    spec: { nodeName: node },
    status: {
      phase: 'Running',
      // A pod of cgroup and process only (pods.ts addCgroupPod) has no address of its own.
      ...(pod.ipv4 && pod.ipv6 ? { podIP: pod.ipv4, podIPs: [{ ip: pod.ipv4 }, { ip: pod.ipv6 }] } : {}),
      containerStatuses: [{ name: 'app', containerID: `containerd://${pod.containerId}`, ready: true, restartCount: 0, image: 'app', imageID: 'app' }],
    },
  };
}

/** A Node object with an InternalIP (what the agent reads of nodes). */
export function nodeObject(name: string, internalIp: string): KubeObject {
  return { apiVersion: 'v1', kind: 'Node', metadata: { name, uid: `node-${name}` }, status: { addresses: [{ type: 'InternalIP', address: internalIp }, { type: 'Hostname', address: name }] } };
}

/** A started FakeKubeApi and a kubeconfig file for it; both go away with the test. */
export async function startFakeKubeApi(t: Test): Promise<{ api: FakeKubeApi; kubeconfig: string }> {
  const api = new FakeKubeApi();
  await api.start();
  t.teardown(() => api.stop());
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pp-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = path.join(dir, 'kubeconfig');
  api.writeKubeconfig(kubeconfig);
  return { api, kubeconfig };
}

type Collection = 'pods' | 'nodes';

/** An RBAC grant as a SubjectAccessReview sees it: a user may do a verb on a probepilot.io resource (in a namespace, or cluster-wide) or a non-resource path. */
export interface Grant {
  user: string;
  verb: string;
  resource?: string;
  /** Absent: cluster-wide (a ClusterRoleBinding). */
  namespace?: string;
  nonResourcePath?: string;
}

interface AccessReviewSpec {
  user?: string;
  resourceAttributes?: { group?: string; resource?: string; verb?: string; namespace?: string };
  nonResourceAttributes?: { path?: string; verb?: string };
}
type WatchEvent = { type: 'ADDED' | 'MODIFIED' | 'DELETED'; collection: Collection; object: KubeObject; rv: number };

export class FakeKubeApi {
  private server: Server | undefined;
  private port = 0;
  private rv = 1;
  private readonly pods = new Map<string, KubeObject>();
  private readonly nodes = new Map<string, KubeObject>();
  private readonly others = new Map<string, KubeObject>();
  private readonly history: WatchEvent[] = [];
  /** Watches from a resourceVersion older than this get 410 Gone. */
  private compactedThrough = 0;
  private readonly watchers = new Set<{ res: ServerResponse; collection: Collection; node: string | undefined; silent?: boolean }>();
  /** Every request path, in order. */
  readonly requests: string[] = [];
  /** While set, every request is answered 503 and open watches are cut: an outage whose retries can be counted. */
  private failing = false;
  /** Bearer tokens TokenReview accepts, with their user. */
  readonly users = new Map<string, { username: string; uid: string; groups: string[] }>();
  readonly grants: Grant[] = [];
  /** TokenReviews and SubjectAccessReviews answered (the agent's cache is seen in them). */
  readonly reviews = { token: 0, access: 0 };

  /** Watch streams open now: a client that leaks a watch per reconnect shows here. */
  get openWatches(): number {
    return this.watchers.size;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.listen(this.port, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** Closes every connection, open watches included: an outage. */
  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }

  setFailing(failing: boolean): void {
    this.failing = failing;
    if (!failing) return;
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
  }

  /** A kubeconfig pointing at this server (plain HTTP: TLS verification off). */
  writeKubeconfig(file: string): void {
    writeFileSync(
      file,
      [
        'apiVersion: v1',
        'kind: Config',
        `clusters: [{name: fake, cluster: {server: "${this.url}", insecure-skip-tls-verify: true}}]`,
        'users: [{name: agent, user: {token: test-token}}]',
        'contexts: [{name: fake, context: {cluster: fake, user: agent}}]',
        'current-context: fake',
        '',
      ].join('\n'),
    );
  }

  /** ReplicaSets, Jobs: read by GET on their API path. */
  putObject(apiPath: string, object: KubeObject): void {
    this.others.set(apiPath, object);
  }

  upsertPod(pod: KubeObject): void {
    const key = `${pod.metadata.namespace}/${pod.metadata.name}`;
    const type = this.pods.has(key) ? 'MODIFIED' : 'ADDED';
    this.record(type, 'pods', pod);
    this.pods.set(key, pod);
  }

  deletePod(namespace: string, name: string): void {
    const pod = this.pods.get(`${namespace}/${name}`);
    if (!pod) return;
    this.pods.delete(`${namespace}/${name}`);
    this.record('DELETED', 'pods', pod);
  }

  upsertNode(node: KubeObject): void {
    const type = this.nodes.has(node.metadata.name) ? 'MODIFIED' : 'ADDED';
    this.record(type, 'nodes', node);
    this.nodes.set(node.metadata.name, node);
  }

  deleteNode(name: string): void {
    const node = this.nodes.get(name);
    if (!node) return;
    this.nodes.delete(name);
    this.record('DELETED', 'nodes', node);
  }

  /** Open watches stay connected but hear nothing more (a watch that went silent without an error). */
  silenceWatches(): void {
    for (const w of this.watchers) w.silent = true;
  }

  /** Ends every open watch with ERROR 410 Gone, as an API server does when a watch's resourceVersion was compacted away. */
  expireWatches(): void {
    this.history.length = 0;
    this.compactedThrough = this.rv;
    for (const w of this.watchers) {
      w.res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410, message: 'too old resource version' } })}\n`);
    }
    this.watchers.clear();
  }

  private record(type: WatchEvent['type'], collection: Collection, object: KubeObject): void {
    const rv = ++this.rv;
    object.metadata.resourceVersion = String(rv);
    const event = { type, collection, object: structuredClone(object), rv };
    this.history.push(event);
    for (const w of this.watchers) if (!w.silent && w.collection === collection && matches(event.object, w.node)) w.res.write(`${JSON.stringify({ type, object: event.object })}\n`);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', this.url);
    this.requests.push(`${url.pathname}${url.search}`);
    if (this.failing) return json(res, 503, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'ServiceUnavailable', code: 503 });
    if (req.method === 'POST' && url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') return void this.review(req, res, 'token');
    if (req.method === 'POST' && url.pathname === '/apis/authorization.k8s.io/v1/subjectaccessreviews') return void this.review(req, res, 'access');
    const node = /^spec\.nodeName=(.+)$/.exec(url.searchParams.get('fieldSelector') ?? '')?.[1];
    const collection = ({ '/api/v1/pods': 'pods', '/api/v1/nodes': 'nodes' } as const)[url.pathname as '/api/v1/pods' | '/api/v1/nodes'] as Collection | undefined;
    if (collection && url.searchParams.get('watch') === 'true') return this.watch(url, collection, node, res);
    if (collection) {
      const items = [...(collection === 'pods' ? this.pods : this.nodes).values()].filter((p) => matches(p, node));
      return json(res, 200, { kind: collection === 'pods' ? 'PodList' : 'NodeList', apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) }, items });
    }
    const object = this.others.get(url.pathname);
    if (object) return json(res, 200, object);
    return json(res, 404, { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'NotFound', code: 404 });
  }

  private async review(req: IncomingMessage, res: ServerResponse, kind: 'token' | 'access'): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { spec: { token?: string } & AccessReviewSpec };
    this.reviews[kind]++;
    if (kind === 'token') {
      const user = this.users.get(body.spec.token ?? '');
      return json(res, 201, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', status: user ? { authenticated: true, user } : { authenticated: false, error: 'invalid bearer token' } });
    }
    const { user, resourceAttributes: r, nonResourceAttributes: n } = body.spec;
    const allowed = this.grants.some((g) =>
      g.user === user &&
      g.verb === (r?.verb ?? n?.verb) &&
      (n ? g.nonResourcePath === n.path : r?.group === 'probepilot.io' && g.resource === r.resource && (g.namespace === undefined || g.namespace === r.namespace)),
    );
    return json(res, 201, { apiVersion: 'authorization.k8s.io/v1', kind: 'SubjectAccessReview', status: { allowed, ...(allowed ? {} : { reason: 'no RBAC grant' }) } });
  }

  private watch(url: URL, collection: Collection, node: string | undefined, res: ServerResponse): void {
    const from = Number(url.searchParams.get('resourceVersion') || 0);
    res.writeHead(200, { 'content-type': 'application/json' });
    if (from > 0 && from < this.compactedThrough) {
      res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: 'too old resource version' } })}\n`);
      return;
    }
    for (const event of this.history) if (event.rv > from && event.collection === collection && matches(event.object, node)) res.write(`${JSON.stringify({ type: event.type, object: event.object })}\n`);
    // A real API server sends the headers at once; Node would hold them until the first event.
    res.flushHeaders();
    const watcher = { res, collection, node };
    this.watchers.add(watcher);
    res.on('close', () => this.watchers.delete(watcher));
  }
}

/** The spec.nodeName=X field selector (pods); other selectors are left to the client, which filters again. */
function matches(object: KubeObject, node: string | undefined): boolean {
  return node === undefined || object.spec?.nodeName === node;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
