// `npm run bench` must keep working: CI runs its quick version (one short
// round) and checks it measured something on every row. No timing is asserted.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requirePrivileges } from '../helpers/env.js';

const bench = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/run.js');

t.test('the benchmark runs and measures every row', async (t) => {
  if (!requirePrivileges(t, 'benchmark')) return;
  const res = spawnSync(process.execPath, [bench, '--quick'], { encoding: 'utf8', timeout: 240_000 });
  t.equal(res.status, 0, `bench exits 0: ${res.stderr}`);
  const file = /raw samples: (\S+)/.exec(res.stdout)?.[1];
  t.ok(file, 'it names its results file');
  if (!file) return;
  const absolute = path.resolve(file);
  t.teardown(() => rmSync(absolute, { force: true }));
  const { rows } = JSON.parse(readFileSync(absolute, 'utf8')) as { rows: { measure: string; base: number; value: number; ratio: number }[] };
  t.same(
    rows.map((r) => r.measure),
    [
      'TC cost per packet (ns, bpf_stats)',
      'iperf3 TCP over veth (Gbit/s)',
      '64-byte UDP over veth (packets/s)',
      'sched programs per run (ns, bpf_stats)',
      'syscall programs per syscall (ns, enter+exit, bpf_stats)',
      'getppid loop (ns per call)',
      'GET /api/v1/flows p50 (ms)',
      'GET /api/v1/flows p99 (ms)',
      'agent event-loop max stall serving flows (ms)',
      'agent CPU per flows query (ms)',
      ...['~20k series', '~100k series'].flatMap((size) => [
        `GET /metrics (gzip) p50 (ms), ${size}`,
        `GET /metrics (gzip) p99 (ms), ${size}`,
        `GET /healthz p99 during scrapes (ms), ${size}`,
        `agent event-loop max stall during scrapes (ms), ${size}`,
        `agent CPU per scrape (ms), ${size}`,
      ]),
    ],
    'every section reports its rows',
  );
  for (const row of rows) {
    t.ok(row.base > 0 && row.value > 0 && Number.isFinite(row.ratio), `${row.measure}: ${row.base} → ${row.value}`);
    t.match(res.stdout, row.measure, 'printed in the table');
  }
});
