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

/**
 * The length-delimited fields of a message (strings, nested messages) by
 * field number, in order; varint and fixed-size fields are stepped over.
 */
function delimited(buf: Buffer): Map<number, Buffer[]> {
  const out = new Map<number, Buffer[]>();
  let offset = 0;
  while (offset < buf.length) {
    const [tag, next] = readVarint(buf, offset);
    offset = next;
    const number = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    switch (wire) {
      case 0:
        offset = readVarint(buf, offset)[1];
        break;
      case 1:
      case 5:
        offset += wire === 1 ? 8 : 4;
        if (offset > buf.length) throw new Error('pod-resources response: truncated fixed-size field');
        break;
      case 2: {
        const [length, after] = readVarint(buf, offset);
        const end = after + Number(length);
        if (end > buf.length) throw new Error('pod-resources response: truncated length-delimited field');
        const list = out.get(number);
        if (list) list.push(buf.subarray(after, end));
        else out.set(number, [buf.subarray(after, end)]);
        offset = end;
        break;
      }
      default:
        throw new Error(`pod-resources response: unsupported wire type ${wire}`);
    }
  }
  return out;
}

/** A string field; the last occurrence wins, as in proto3. */
function text(message: Map<number, Buffer[]>, number: number): string {
  return message.get(number)?.at(-1)?.toString('utf8') ?? '';
}

/**
 * ListPodResourcesResponse { repeated PodResources pod_resources = 1 }, with
 * PodResources { name = 1; namespace = 2; repeated ContainerResources containers = 3 },
 * ContainerResources { name = 1; repeated ContainerDevices devices = 2; … } and
 * ContainerDevices { resource_name = 1; repeated string device_ids = 2; … }:
 * one entry per container device.
 */
export function decodeListResponse(buf: Buffer): DeviceAllocation[] {
  const out: DeviceAllocation[] = [];
  for (const podBytes of delimited(buf).get(1) ?? []) {
    const pod = delimited(podBytes);
    for (const containerBytes of pod.get(3) ?? []) {
      const container = delimited(containerBytes);
      for (const deviceBytes of container.get(2) ?? []) {
        const devices = delimited(deviceBytes);
        for (const id of devices.get(2) ?? []) {
          out.push({ namespace: text(pod, 2), pod: text(pod, 1), container: text(container, 1), resourceName: text(devices, 1), deviceId: id.toString('utf8') });
        }
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
