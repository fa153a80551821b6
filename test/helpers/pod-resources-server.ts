// A kubelet pod-resources API on a unix socket for tests: the real v1
// service (test/fixtures/podresources/api.proto) answering List with the
// allocations the test sets. stop() removes the socket as a kubelet restart
// does; start() serves again on the same path.
import { loadPackageDefinition, Server, ServerCredentials, type GrpcObject, type ServiceClientConstructor, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from './helm.js';

const definition = loadSync(path.join(projectRoot, 'test/fixtures/podresources/api.proto'), { keepCase: true, longs: Number, defaults: true });
const lister = (loadPackageDefinition(definition).v1 as GrpcObject).PodResourcesLister as ServiceClientConstructor;

export interface ContainerDevicesFixture {
  resourceName: string;
  deviceIds: string[];
}

export interface PodResourcesFixture {
  namespace: string;
  name: string;
  containers: Array<{ name: string; devices: ContainerDevicesFixture[] }>;
}

export class PodResourcesServer {
  pods: PodResourcesFixture[] = [];
  /** List calls answered so far. */
  calls = 0;
  private server: Server | undefined;

  constructor(readonly socketPath: string) {}

  async start(): Promise<void> {
    const server = new Server();
    server.addService(lister.service, {
      List: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        this.calls++;
        callback(null, {
          pod_resources: this.pods.map((pod) => ({
            name: pod.name,
            namespace: pod.namespace,
            containers: pod.containers.map((c) => ({
              name: c.name,
              // What a kubelet sends besides devices: exclusive CPUs, memory and NUMA topology.
              devices: c.devices.map((d) => ({ resource_name: d.resourceName, device_ids: d.deviceIds, topology: { nodes: [{ ID: 0 }] } })),
              cpu_ids: [2, 3],
              memory: [{ memory_type: 'memory', size: 1 << 30, topology: { nodes: [{ ID: 0 }] } }],
            })),
          })),
        });
      },
      GetAllocatableResources: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => callback(null, {}),
      Get: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => callback(null, {}),
    });
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${this.socketPath}`, ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
    this.server = server;
  }

  /** Goes away like a restarting kubelet: connections dropped, socket removed. */
  stop(): void {
    this.server?.forceShutdown();
    this.server = undefined;
    rmSync(this.socketPath, { force: true });
  }
}
