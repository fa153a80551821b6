// The block collector against the kernel's own accounting: a workload does
// O_DIRECT writes and reads of known size to a loop device, and its exported
// bytes and requests must match what it moved and the device's
// /proc/diskstats deltas.
import t from 'tap';
import { readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { requirePrivileges } from '../helpers/env.js';
import { createTestNetwork } from '../helpers/pods.js';
import { startAgent } from '../helpers/agent.js';
import { parseExposition, sumSamples } from '../helpers/exposition.js';
import { execChecked } from '../helpers/proc.js';

const tolerance = 0.01;
const blockSize = 64 * 1024;
const blocks = 256;
const bytesMoved = blockSize * blocks;

interface DiskStats {
  reads: number;
  sectorsRead: number;
  writes: number;
  sectorsWritten: number;
}

/** A device's line of /proc/diskstats: completed reads, sectors read, completed writes, sectors written. */
function diskstats(device: string): DiskStats {
  const line = readFileSync('/proc/diskstats', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((fields) => fields[2] === device);
  if (!line) throw new Error(`${device} is not in /proc/diskstats`);
  const n = line.map(Number);
  return { reads: n[3]!, sectorsRead: n[5]!, writes: n[7]!, sectorsWritten: n[9]! };
}

function within(actual: number, expected: number): { ok: boolean; detail: string } {
  const error = expected === 0 ? actual : Math.abs(actual - expected) / expected;
  return { ok: error <= tolerance, detail: `${(error * 100).toFixed(3)} % off, tolerance ${tolerance * 100} %` };
}

t.test('O_DIRECT reads and writes to a loop device match diskstats and the bytes moved', async (t) => {
  if (!requirePrivileges(t, 'block collector on raw tracepoints')) return;
  const image = path.join(os.tmpdir(), `pp-block-${process.pid}.img`);
  await execChecked('truncate', ['-s', `${bytesMoved * 2}`, image]);
  t.teardown(() => rmSync(image, { force: true }));
  const loop = (await execChecked('losetup', ['-f', '--show', image])).trim();
  t.teardown(() => execChecked('losetup', ['-d', loop]).then(() => undefined));
  const device = path.basename(loop);

  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const worker = await net.addPod({ layout: 'plain' });
  const bystander = await net.addPod({ layout: 'plain' });
  const agent = await startAgent({
    env: {
      PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SCHED_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_SYSCALLS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_TCP_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_DROPS_ENABLED: 'false',
      PROBEPILOT_COLLECTORS_PROCESS_ENABLED: 'false',
    },
  });
  t.teardown(() => agent.stop());

  const before = diskstats(device);
  const dd = ['bs=' + blockSize, 'count=' + blocks];
  const write = await worker.exec('dd', ['if=/dev/zero', `of=${loop}`, 'oflag=direct', ...dd]);
  t.equal(write.code, 0, `dd wrote ${bytesMoved} bytes to ${loop} (${write.stderr.trim().split('\n').at(-1)})`);
  const read = await worker.exec('dd', [`if=${loop}`, 'of=/dev/null', 'iflag=direct', ...dd]);
  t.equal(read.code, 0, `dd read ${bytesMoved} bytes from ${loop}`);
  const after = diskstats(device);
  const kernel = {
    write: { requests: after.writes - before.writes, bytes: (after.sectorsWritten - before.sectorsWritten) * 512 },
    read: { requests: after.reads - before.reads, bytes: (after.sectorsRead - before.sectorsRead) * 512 },
  };

  const families = parseExposition(await agent.metrics());
  for (const op of ['write', 'read'] as const) {
    const mine = { cgroup: worker.cgroupPath, device, op };
    const bytes = sumSamples(families, 'probepilot_block_io_bytes_total', mine);
    const requests = sumSamples(families, 'probepilot_block_io_requests_total', mine);
    let check = within(bytes, bytesMoved);
    t.ok(check.ok, `${op}: exported ${bytes} bytes, dd moved ${bytesMoved} (${check.detail})`);
    check = within(bytes, kernel[op].bytes);
    t.ok(check.ok, `${op}: exported ${bytes} bytes, diskstats sectors say ${kernel[op].bytes} (${check.detail})`);
    check = within(requests, kernel[op].requests);
    t.ok(check.ok, `${op}: exported ${requests} requests, diskstats completed ${kernel[op].requests} (${check.detail})`);
    t.equal(sumSamples(families, 'probepilot_block_io_latency_seconds_count', mine), requests, `${op}: one latency observation per request`);
    const latency = sumSamples(families, 'probepilot_block_io_latency_seconds_sum', mine);
    t.ok(latency > 0, `${op}: mean latency ${((latency / requests) * 1e6).toFixed(1)} µs`);
    t.equal(sumSamples(families, 'probepilot_block_io_bytes_total', { cgroup: bystander.cgroupPath, device }), 0, `${op}: the other pod is charged nothing`);
  }
  t.equal(await agent.stop(), 0, 'agent exits cleanly');
  t.equal(agent.stderr(), '', 'agent wrote nothing to stderr');
});
