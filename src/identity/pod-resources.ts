// The kubelet's pod-resources API (v1.PodResourcesLister/List, gRPC over the
// unix socket under /var/lib/kubelet/pod-resources): which container holds
// which device. The response is decoded by hand (four nested messages, three
// field kinds) so the agent ships no .proto file; fields it does not know
// (CPU ids, memory, dynamic resources, topology) are skipped by wire type.
import { Client, credentials, status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { describeError } from '../errors.js';

export interface DeviceAllocation {
  namespace: string;
  pod: string;
  container: string;
  resourceName: string;
  /** As the device plugin names it: a GPU UUID, or UUID::N for a time-sliced replica. */
  deviceId: string;
}

type Field = { number: number; wire: 0 | 1 | 5; value: bigint } | { number: number; wire: 2; bytes: Buffer };

function readVarint(buf: Buffer, offset: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (let i = offset; i < buf.length; i++) {
    const byte = buf[i]!;
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [result, i + 1];
    shift += 7n;
    if (shift > 63n) break;
  }
  throw new Error('pod-resources response: truncated or overlong varint');
}

/** The fields of one protobuf message, in order. */
function* fields(buf: Buffer): Generator<Field> {
  let offset = 0;
  while (offset < buf.length) {
    const [tag, next] = readVarint(buf, offset);
    offset = next;
    const number = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    switch (wire) {
      case 0: {
        const [value, after] = readVarint(buf, offset);
        offset = after;
        yield { number, wire, value };
        break;
      }
      case 1:
      case 5: {
        const size = wire === 1 ? 8 : 4;
        if (offset + size > buf.length) throw new Error('pod-resources response: truncated fixed-size field');
        yield { number, wire, value: wire === 1 ? buf.readBigUInt64LE(offset) : BigInt(buf.readUInt32LE(offset)) };
        offset += size;
        break;
      }
      case 2: {
        const [length, after] = readVarint(buf, offset);
        const end = after + Number(length);
        if (end > buf.length) throw new Error('pod-resources response: truncated length-delimited field');
        yield { number, wire, bytes: buf.subarray(after, end) };
        offset = end;
        break;
      }
      default:
        throw new Error(`pod-resources response: unsupported wire type ${wire}`);
    }
  }
}

function bytesOf(field: Field): Buffer | undefined {
  return field.wire === 2 ? field.bytes : undefined;
}

/** ListPodResourcesResponse { repeated PodResources pod_resources = 1 } → one entry per container device. */
export function decodeListResponse(buf: Buffer): DeviceAllocation[] {
  const out: DeviceAllocation[] = [];
  for (const podField of fields(buf)) {
    const podBytes = podField.number === 1 ? bytesOf(podField) : undefined;
    if (!podBytes) continue;
    // PodResources { name = 1; namespace = 2; repeated ContainerResources containers = 3 }
    let pod = '';
    let namespace = '';
    const containers: Buffer[] = [];
    for (const f of fields(podBytes)) {
      const bytes = bytesOf(f);
      if (!bytes) continue;
      if (f.number === 1) pod = bytes.toString('utf8');
      else if (f.number === 2) namespace = bytes.toString('utf8');
      else if (f.number === 3) containers.push(bytes);
    }
    for (const containerBytes of containers) {
      // ContainerResources { name = 1; repeated ContainerDevices devices = 2; … }
      let container = '';
      const devices: Buffer[] = [];
      for (const f of fields(containerBytes)) {
        const bytes = bytesOf(f);
        if (!bytes) continue;
        if (f.number === 1) container = bytes.toString('utf8');
        else if (f.number === 2) devices.push(bytes);
      }
      for (const deviceBytes of devices) {
        // ContainerDevices { resource_name = 1; repeated string device_ids = 2; topology = 3 }
        let resourceName = '';
        const ids: string[] = [];
        for (const f of fields(deviceBytes)) {
          const bytes = bytesOf(f);
          if (!bytes) continue;
          if (f.number === 1) resourceName = bytes.toString('utf8');
          else if (f.number === 2) ids.push(bytes.toString('utf8'));
        }
        for (const deviceId of ids) out.push({ namespace, pod, container, resourceName, deviceId });
      }
    }
  }
  return out;
}

const listMethod = '/v1.PodResourcesLister/List';
const callTimeoutMs = 2000;

/**
 * Lists allocations on demand. The channel reconnects by itself (with a
 * short backoff) when the kubelet restarts and recreates its socket; until
 * then list() answers with the last allocations it got.
 */
export class PodResourcesClient {
  private readonly client: Client;
  private last: DeviceAllocation[] = [];
  private healthy: boolean | undefined;

  constructor(
    readonly socketPath: string,
    private readonly log: Logger,
  ) {
    this.client = new Client(`unix://${socketPath}`, credentials.createInsecure(), {
      'grpc.initial_reconnect_backoff_ms': 250,
      'grpc.max_reconnect_backoff_ms': 5000,
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    });
  }

  /** Whether the last list() reached the kubelet. */
  get reachable(): boolean {
    return this.healthy === true;
  }

  async list(): Promise<DeviceAllocation[]> {
    try {
      this.last = await this.call();
      if (this.healthy !== true) this.log.info({ socket: this.socketPath, allocations: this.last.length }, 'kubelet pod-resources API reachable');
      this.healthy = true;
    } catch (err) {
      if (this.healthy !== false) {
        this.log.warn({ socket: this.socketPath, err: describeError(err) }, 'kubelet pod-resources API unreachable; keeping the last known GPU allocations');
      }
      this.healthy = false;
    }
    return this.last;
  }

  private call(): Promise<DeviceAllocation[]> {
    return new Promise((resolve, reject) => {
      this.client.makeUnaryRequest(
        listMethod,
        () => Buffer.alloc(0),
        (response: Buffer) => response,
        {},
        { deadline: Date.now() + callTimeoutMs },
        (err: ServiceError | null, response?: Buffer) => {
          if (err) {
            reject(new Error(`${listMethod}: ${grpcStatus[err.code] ?? err.code} ${err.details}`));
            return;
          }
          try {
            resolve(decodeListResponse(response ?? Buffer.alloc(0)));
          } catch (decodeError) {
            reject(decodeError as Error);
          }
        },
      );
    });
  }

  close(): void {
    this.client.close();
  }
}
