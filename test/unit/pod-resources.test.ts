// The hand-written pod-resources decoder against what protobufjs encodes from
// the kubelet's v1 proto (the fixture's api.proto, every field a kubelet
// sends), and against broken input.
import t from 'tap';
import { loadSync } from '@grpc/proto-loader';
import { loadPackageDefinition, type GrpcObject, type ServiceClientConstructor } from '@grpc/grpc-js';
import path from 'node:path';
import { decodeListResponse } from '../../src/identity/pod-resources.js';
import { gpuUuidOfDeviceId } from '../../src/collectors/gpu.js';
import { projectRoot } from '../helpers/helm.js';

const definition = loadSync(path.join(projectRoot, 'test/fixtures/podresources/api.proto'), { keepCase: true, longs: Number, defaults: true });
const lister = (loadPackageDefinition(definition).v1 as GrpcObject).PodResourcesLister as ServiceClientConstructor;
const encode = (response: object): Buffer => lister.service.List!.responseSerialize(response);

t.test('List responses decode to one entry per container device, whatever else the kubelet sends', async (t) => {
  const bytes = encode({
    pod_resources: [
      {
        name: 'trainer-0',
        namespace: 'ml',
        containers: [
          {
            name: 'main',
            devices: [
              { resource_name: 'nvidia.com/gpu', device_ids: ['GPU-a::0', 'GPU-b'], topology: { nodes: [{ ID: 1 }] } },
              { resource_name: 'example.com/fpga', device_ids: ['fpga0'] },
            ],
            cpu_ids: [4, 5, 6],
            memory: [{ memory_type: 'hugepages-2Mi', size: 2 ** 33, topology: { nodes: [{ ID: 0 }] } }],
            dynamic_resources: [{ claim_name: 'gpu-claim', claim_namespace: 'ml', claim_resources: [{ cdi_devices: [{ name: 'nvidia.com/gpu=0' }], driver_name: 'gpu.nvidia.com' }] }],
          },
          { name: 'sidecar', devices: [], cpu_ids: [] },
        ],
      },
      { name: 'idle', namespace: 'default', containers: [] },
      { name: 'llm-0', namespace: 'serving', containers: [{ name: 'app', devices: [{ resource_name: 'nvidia.com/gpu', device_ids: ['GPU-a::1'] }] }] },
    ],
  });
  t.same(decodeListResponse(bytes), [
    { namespace: 'ml', pod: 'trainer-0', container: 'main', resourceName: 'nvidia.com/gpu', deviceId: 'GPU-a::0' },
    { namespace: 'ml', pod: 'trainer-0', container: 'main', resourceName: 'nvidia.com/gpu', deviceId: 'GPU-b' },
    { namespace: 'ml', pod: 'trainer-0', container: 'main', resourceName: 'example.com/fpga', deviceId: 'fpga0' },
    { namespace: 'serving', pod: 'llm-0', container: 'app', resourceName: 'nvidia.com/gpu', deviceId: 'GPU-a::1' },
  ]);
  t.same(decodeListResponse(encode({ pod_resources: [] })), [], 'an empty node');
  t.same(decodeListResponse(Buffer.alloc(0)), [], 'an empty message');
});

t.test('broken responses are errors, never a partial answer', async (t) => {
  const bytes = encode({ pod_resources: [{ name: 'p', namespace: 'n', containers: [{ name: 'c', devices: [{ resource_name: 'nvidia.com/gpu', device_ids: ['GPU-a'] }] }] }] });
  t.throws(() => decodeListResponse(bytes.subarray(0, bytes.length - 3)), /truncated/, 'a cut message');
  t.throws(() => decodeListResponse(Buffer.from([0x0b])), /wire type 3/, 'a group (wire type 3), which proto3 never sends');
  t.throws(() => decodeListResponse(Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])), /varint/, 'an overlong varint');
});

t.test('a time-sliced replica names its GPU', async (t) => {
  t.equal(gpuUuidOfDeviceId('GPU-5f3c1a2e::3'), 'GPU-5f3c1a2e');
  t.equal(gpuUuidOfDeviceId('GPU-5f3c1a2e'), 'GPU-5f3c1a2e');
});
