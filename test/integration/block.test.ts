// The block collector against the kernel's own accounting: two test
// workloads do O_DIRECT I/O to a loop device with dd, and the exported
// bytes, requests and latency per workload and device must match what dd
// moved, and per device what /proc/diskstats counted.
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAgent } from '../helpers/agent.js';
import { requirePrivileges } from '../helpers/env.js';
import { createLoopDevice } from '../helpers/loop-device.js';
import { checkExposition, parseExposition, sampleValue, sumSamples } from '../helpers/exposition.js';
import { createTestNetwork, type Pod } from '../helpers/pods.js';
import { promtoolCheckMetrics } from '../helpers/prometheus.js';
import { execChecked, execCommand } from '../helpers/proc.js';
import { waitFor } from '../helpers/wait.js';

const tolerance = 0.01;
const sectorBytes = 512;

interface DiskStats {
  reads: number;
  readBytes: number;
  writes: number;
  writeBytes: number;
  /** Time spent on completed reads and writes (ms), from each request's start. */
  readMs: number;
  writeMs: number;
}

/** The device's line of /proc/diskstats (Documentation/admin-guide/iostats.rst). */
function diskStats(device: string): DiskStats {
  const line = readFileSync('/proc/diskstats', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((fields) => fields[2] === device);
  if (!line) throw new Error(`${device} is not in /proc/diskstats`);
  const field = (n: number) => Number(line[n + 2]);
  return { reads: field(1), readBytes: field(3) * sectorBytes, readMs: field(4), writes: field(5), writeBytes: field(7) * sectorBytes, writeMs: field(8) };
}

function delta(before: DiskStats, after: DiskStats): DiskStats {
  const out = { ...after };
  for (const key of Object.keys(out) as Array<keyof DiskStats>) out[key] -= before[key];
  return out;
}

function within(t: Test, actual: number, expected: number, what: string, oracle: string): void {
  const error = expected === 0 ? actual : Math.abs(actual - expected) / expected;
  t.ok(error <= tolerance, `${what}: exported ${actual}, ${oracle} ${expected} (${(error * 100).toFixed(3)} % off, tolerance ${tolerance * 100} %)`);
}

/** dd's own account of what it moved: "N+0 records out", "N bytes (…) copied". */
async function dd(pod: Pod, args: string[]): Promise<{ bytes: number; records: number }> {
  const res = await pod.exec('dd', args, { timeoutMs: 60_000 });
  if (res.code !== 0) throw new Error(`dd ${args.join(' ')} in ${pod.name}: exit ${res.code}: ${res.stderr}`);
  const records = /^(\d+)\+0 records out$/m.exec(res.stderr);
  const bytes = /^(\d+) bytes/m.exec(res.stderr);
  if (!records || !bytes) throw new Error(`dd did not report full records and bytes: ${res.stderr}`);
  return { bytes: Number(bytes[1]), records: Number(records[1]) };
}

/** Waits until the device's diskstats stop changing (a partition scan, a journal commit). */
async function quiet(device: string): Promise<void> {
  let last = JSON.stringify(diskStats(device));
  let quietSince = Date.now();
  await waitFor(
    () => {
      const now = JSON.stringify(diskStats(device));
      if (now !== last) [last, quietSince] = [now, Date.now()];
      return Date.now() - quietSince >= 300;
    },
    { timeoutMs: 10_000, intervalMs: 25, what: `${device} to go quiet` },
  );
}

t.test('block collector matches dd and /proc/diskstats per workload and device', async (t) => {
  if (!requirePrivileges(t, 'block collector on a loop device')) return;
  const device = await createLoopDevice(t, 64 * 1024 * 1024);
  const net = await createTestNetwork();
  t.teardown(() => net.destroy());
  const writer = await net.addPod({ layout: 'plain' });
  const reader = await net.addPod({ layout: 'plain' });
  const idle = await net.addPod({ layout: 'plain' });

  const agent = await startAgent({ env: { PROBEPILOT_COLLECTORS_NETWORK_ENABLED: 'false' } });
  t.teardown(() => agent.stop());

  // Attaching a loop device makes the kernel scan it for partitions: let that finish first.
  await quiet(device);

  const before = { disk: diskStats(device), metrics: parseExposition(await agent.metrics()) };
  const writeBlocks = 2000;
  const readBlocks = 300;
  const written = await dd(writer, ['if=/dev/zero', `of=/dev/${device}`, 'oflag=direct', 'bs=4k', `count=${writeBlocks}`]);
  const read = await dd(reader, [`if=/dev/${device}`, 'of=/dev/null', 'iflag=direct', 'bs=64k', `count=${readBlocks}`]);
  const text = await agent.metrics();
  const after = { disk: diskStats(device), metrics: parseExposition(text) };
  const disk = delta(before.disk, after.disk);

  const exported = (name: string, labels: Record<string, string>) =>
    sumSamples(after.metrics, name, { device, ...labels }) - sumSamples(before.metrics, name, { device, ...labels });
  const forPod = (pod: Pod, metric: string, op: string) => exported(metric, { cgroup: pod.cgroupPath, op });
  const bytes = 'probepilot_block_io_bytes_total';
  const requests = 'probepilot_block_io_requests_total';
  const latencyCount = 'probepilot_block_io_latency_seconds_count';
  const latencySum = 'probepilot_block_io_latency_seconds_sum';

  t.same([written.records, written.bytes], [writeBlocks, writeBlocks * 4096], 'dd wrote every block');
  t.same([read.records, read.bytes], [readBlocks, readBlocks * 65536], 'dd read every block');
  t.comment(`diskstats delta of ${device}: ${JSON.stringify(disk)}`);

  // Each workload's own I/O, against dd.
  within(t, forPod(writer, bytes, 'write'), written.bytes, `${writer.name} write bytes`, 'dd');
  within(t, forPod(reader, bytes, 'read'), read.bytes, `${reader.name} read bytes`, 'dd');
  within(t, forPod(writer, requests, 'write'), writeBlocks, `${writer.name} write requests (O_DIRECT: one per block)`, 'dd records');
  within(t, forPod(reader, requests, 'read'), readBlocks, `${reader.name} read requests`, 'dd records');
  t.equal(forPod(writer, latencyCount, 'write'), forPod(writer, requests, 'write'), 'the writer latency histogram counts every write request');
  t.equal(forPod(reader, latencyCount, 'read'), forPod(reader, requests, 'read'), 'the reader latency histogram counts every read request');

  // Attribution: nobody else gets any of it.
  t.equal(forPod(writer, bytes, 'read'), 0, `${writer.name} did not read`);
  t.equal(forPod(reader, bytes, 'write'), 0, `${reader.name} did not write`);
  for (const op of ['read', 'write']) {
    t.equal(forPod(idle, bytes, op), 0, `${idle.name} gets no ${op} bytes`);
    t.equal(forPod(idle, requests, op), 0, `${idle.name} gets no ${op} requests`);
  }

  // The device as a whole, against the kernel's own accounting.
  within(t, exported(bytes, { op: 'write' }), disk.writeBytes, `${device} write bytes`, 'diskstats sectors written × 512');
  within(t, exported(bytes, { op: 'read' }), disk.readBytes, `${device} read bytes`, 'diskstats sectors read × 512');
  within(t, exported(requests, { op: 'write' }), disk.writes, `${device} write requests`, 'diskstats writes completed');
  within(t, exported(requests, { op: 'read' }), disk.reads, `${device} read requests`, 'diskstats reads completed');

  // Latency: diskstats times the same requests, in ms (rounded down), from
  // the request's allocation to its completion with the block layer's
  // plug-cached clock (blk_time_get_ns), which lags in a completing worker
  // that handles many requests: a sanity check of unit and scale, not of
  // precision, hence the loose bound.
  const latencySeconds = exported(latencySum, { op: 'write' }) + exported(latencySum, { op: 'read' });
  const diskSeconds = (disk.writeMs + disk.readMs) / 1000;
  t.ok(
    Math.abs(latencySeconds - diskSeconds) <= 0.25 * diskSeconds + 0.005,
    `latency sum ${latencySeconds.toFixed(6)} s agrees with diskstats time ${diskSeconds.toFixed(3)} s within 25 % + 5 ms`,
  );

  t.equal(sampleValue(after.metrics, 'probepilot_collector_up', { collector: 'block' }), 1, 'the block collector is up');
  t.same(checkExposition(text), [], 'our exposition checker finds nothing');
  const promtool = await promtoolCheckMetrics(text);
  t.ok(promtool.ok, `promtool check metrics is clean: ${promtool.output}`);

  await t.test('write-zeroes requests count as writes, as diskstats counts them', async (t) => {
    await quiet(device);
    const before = { disk: diskStats(device), metrics: parseExposition(await agent.metrics()) };
    const zeroed = 1024 * 1024;
    // BLKZEROOUT: the loop device gets REQ_OP_WRITE_ZEROES requests (ext4's lazy inode-table init sends them too).
    const res = await writer.exec('blkdiscard', ['-z', '-o', '0', '-l', String(zeroed), `/dev/${device}`]);
    t.equal(res.code, 0, `blkdiscard -z ran (${res.stderr.trim()})`);
    const after = { disk: diskStats(device), metrics: parseExposition(await agent.metrics()) };
    const disk = delta(before.disk, after.disk);
    const written = (filter: Record<string, string>) =>
      sumSamples(after.metrics, bytes, { device, op: 'write', ...filter }) - sumSamples(before.metrics, bytes, { device, op: 'write', ...filter });
    within(t, written({ cgroup: writer.cgroupPath }), zeroed, `${writer.name} zeroed bytes`, 'the range blkdiscard zeroed');
    within(t, written({}), disk.writeBytes, `${device} write bytes`, 'diskstats sectors written × 512');
  });

  await t.test('buffered writes: fsync is the writer\'s, flusher writeback is the node\'s', async (t) => {
    await execChecked('mkfs.ext4', ['-q', '-F', `/dev/${device}`], { timeoutMs: 30_000 });
    const mountPoint = mkdtempSync(path.join(os.tmpdir(), 'probepilot-block-mnt-'));
    t.teardown(() => rmSync(mountPoint, { recursive: true, force: true }));
    await execChecked('mount', ['-t', 'ext4', `/dev/${device}`, mountPoint]);
    t.teardown(async () => {
      await execCommand('umount', [mountPoint]);
    });
    await quiet(device);
    const before = { disk: diskStats(device), metrics: parseExposition(await agent.metrics()) };
    // fsync writes the file's dirty pages from the caller (file_write_and_wait_range).
    const fsynced = await dd(writer, ['if=/dev/zero', `of=${mountPoint}/fsynced`, 'bs=64k', 'count=16', 'conv=fsync']);
    // Without fsync the pages stay dirty; syncfs hands them to the flusher threads, which write them.
    const buffered = await dd(reader, ['if=/dev/zero', `of=${mountPoint}/buffered`, 'bs=64k', 'count=16']);
    await execChecked('sync', ['-f', mountPoint], { timeoutMs: 30_000 });
    const after = { disk: diskStats(device), metrics: parseExposition(await agent.metrics()) };
    const disk = delta(before.disk, after.disk);
    const written = (cgroup: string) =>
      sumSamples(after.metrics, bytes, { device, op: 'write', cgroup }) - sumSamples(before.metrics, bytes, { device, op: 'write', cgroup });
    t.comment(`diskstats delta: ${JSON.stringify(disk)}; writer ${written(writer.cgroupPath)}, reader ${written(reader.cgroupPath)}, node ${written('/')}`);
    within(t, written(writer.cgroupPath), fsynced.bytes, `${writer.name} fsync'd file bytes`, 'dd');
    t.equal(written(reader.cgroupPath), 0, `${reader.name}'s buffered writes are written back by the flusher, not by it`);
    t.ok(written('/') >= buffered.bytes, `the node gets the flusher's writeback (${written('/')} ≥ ${buffered.bytes} bytes of data, plus ext4 metadata and journal)`);
    const total = sumSamples(after.metrics, bytes, { device, op: 'write' }) - sumSamples(before.metrics, bytes, { device, op: 'write' });
    within(t, total, disk.writeBytes, `${device} write bytes`, 'diskstats sectors written × 512');
  });
});

