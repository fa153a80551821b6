// Cluster mode for the CLI: every agent of the DaemonSet, found from the
// EndpointSlices of the agents' Service, queried with bounded concurrency and
// a per-agent timeout; the answers merged, the agents that did not answer
// listed.
import { AgentClient } from './client.js';

export interface AgentEndpoint {
  node: string;
  url: string;
}

export interface Unreachable extends AgentEndpoint {
  error: string;
}

export interface ClusterOptions {
  /** kubeconfig file; empty: the in-cluster service account. */
  kubeconfig: string;
  /** Namespace and name of the agents' Service (the chart's: the release namespace, "probepilot"). */
  namespace: string;
  service: string;
}

/** Every ready endpoint of the Service's EndpointSlices, by its node. */
export async function discoverAgents(options: ClusterOptions): Promise<AgentEndpoint[]> {
  const { DiscoveryV1Api } = await import('@kubernetes/client-node');
  const { loadKubeConfig } = await import('./identity/kubernetes.js');
  const discovery = loadKubeConfig(options.kubeconfig).makeApiClient(DiscoveryV1Api);
  const slices = await discovery.listNamespacedEndpointSlice({ namespace: options.namespace, labelSelector: `kubernetes.io/service-name=${options.service}` });
  const agents: AgentEndpoint[] = [];
  for (const slice of slices.items) {
    const port = slice.ports?.find((p) => p.name === 'metrics')?.port ?? slice.ports?.[0]?.port ?? 9742;
    for (const endpoint of slice.endpoints ?? []) {
      if (endpoint.conditions?.ready === false) continue;
      const address = endpoint.addresses[0];
      if (!address) continue;
      const host = address.includes(':') ? `[${address}]` : address;
      agents.push({ node: endpoint.nodeName ?? address, url: `http://${host}:${port}` });
    }
  }
  return agents;
}

/** Runs query against every agent, at most `concurrency` at once, each bounded by the client's timeout. */
export async function queryAgents<T>(
  agents: readonly AgentEndpoint[],
  query: (client: AgentClient) => Promise<T>,
  { concurrency = 8, timeoutMs = 5000 }: { concurrency?: number; timeoutMs?: number } = {},
): Promise<{ answers: Array<AgentEndpoint & { value: T }>; unreachable: Unreachable[] }> {
  const answers: Array<AgentEndpoint & { value: T }> = [];
  const unreachable: Unreachable[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < agents.length) {
      const agent = agents[next++]!;
      try {
        answers.push({ ...agent, value: await query(new AgentClient(agent.url, timeoutMs)) });
      } catch (err) {
        unreachable.push({ ...agent, error: err instanceof Error ? err.message : String(err) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, agents.length) }, worker));
  const byNode = (a: AgentEndpoint, b: AgentEndpoint) => a.node.localeCompare(b.node);
  return { answers: answers.sort(byNode), unreachable: unreachable.sort(byNode) };
}
