// What `probepilot top` shows, as plain text: the columns of a workloads
// answer, fitted to a width (the workload name truncated, the columns of
// least interest dropped), for the live TUI and for the one snapshot printed
// without a terminal.
import { formatBytes, renderTable, renderUnreachable } from './client.js';
import type { Unreachable } from './cluster.js';
import { compareWorkloads, workloadName, workloadSorts, type WorkloadEntry, type WorkloadSort } from './api/service.js';

/** A workload as top lists it; in cluster mode it names its node. */
export interface TopRow extends WorkloadEntry {
  node?: string;
}

/** One refresh: every agent's answer merged. */
export interface TopSnapshot {
  total: number;
  intervalSeconds: number | null;
  collectorsOff: string[];
  workloads: TopRow[];
  unreachable: Unreachable[];
}

interface Column {
  header: string;
  /** The sort that orders by this column. */
  sort: WorkloadSort;
  cell: (row: TopRow) => string;
}

const missing = '-';
const number = (value: number | null, format: (n: number) => string) => (value === null ? missing : format(value));
const perSecond = (n: number) => (n >= 100 ? n.toFixed(0) : n.toFixed(1));
const bytesPerSecond = (n: number) => formatBytes(Math.round(n));

export function formatDuration(seconds: number): string {
  if (seconds >= 1) return `${seconds.toFixed(2)} s`;
  if (seconds >= 1e-3) return `${(seconds * 1e3).toFixed(2)} ms`;
  return `${(seconds * 1e6).toFixed(1)} us`;
}

/** In display order; when the width is short the last ones go first. */
const metricColumns: readonly Column[] = [
  { header: 'RX/S', sort: 'rx', cell: (r) => number(r.rxBytesPerSecond, bytesPerSecond) },
  { header: 'TX/S', sort: 'tx', cell: (r) => number(r.txBytesPerSecond, bytesPerSecond) },
  { header: 'RX PKT/S', sort: 'rxPackets', cell: (r) => number(r.rxPacketsPerSecond, perSecond) },
  { header: 'TX PKT/S', sort: 'txPackets', cell: (r) => number(r.txPacketsPerSecond, perSecond) },
  { header: 'RUNQ P99', sort: 'runqueue', cell: (r) => number(r.runqueueLatencyP99Seconds, formatDuration) },
  { header: 'SYSCALLS/S', sort: 'syscalls', cell: (r) => number(r.syscallsPerSecond, perSecond) },
  { header: 'RETRANS/S', sort: 'retransmits', cell: (r) => number(r.tcpRetransmitsPerSecond, perSecond) },
  { header: 'GPU', sort: 'gpu', cell: (r) => number(r.gpuUtilization, (n) => `${(n * 100).toFixed(0)}%`) },
];

/** The header of the column a sort orders by (NAME for the workload name). */
export function sortHeader(sort: WorkloadSort): string {
  return metricColumns.find((c) => c.sort === sort)?.header ?? 'WORKLOAD';
}

/** The next sort in column order (`s`), or the previous one (`S`). */
export function nextSort(sort: WorkloadSort, step: 1 | -1): WorkloadSort {
  const i = workloadSorts.indexOf(sort);
  return workloadSorts[(i + step + workloadSorts.length) % workloadSorts.length]!;
}

/** Rows whose workload (or node) contains the filter text, in the sort's order. */
export function visibleRows(rows: readonly TopRow[], sort: WorkloadSort, filter: string): TopRow[] {
  const needle = filter.toLowerCase();
  const shown = needle ? rows.filter((r) => `${r.node ?? ''} ${workloadName(r.workload)}`.toLowerCase().includes(needle)) : [...rows];
  return shown.sort(compareWorkloads(sort));
}

function truncate(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

const gap = 2;
const minNameWidth = 12;

export interface FittedTable {
  /** Header line, then one line per row, each at most `width` characters. */
  lines: string[];
  /** Index in `lines[0]` and length of the sorted column's header, to highlight it. */
  sortedHeader: { start: number; length: number } | undefined;
  /** Headers of the columns that did not fit. */
  dropped: string[];
}

/** The table fitted to `width`: metric columns dropped from the right (never the sorted one), then the workload name truncated. */
export function fitTable(rows: readonly TopRow[], sort: WorkloadSort, width: number): FittedTable {
  const cluster = rows.some((r) => r.node !== undefined);
  const lead: Column[] = [
    ...(cluster ? [{ header: 'NODE', sort: 'name' as const, cell: (r: TopRow) => r.node ?? '' }] : []),
    { header: 'WORKLOAD', sort: 'name', cell: (r) => workloadName(r.workload) },
  ];
  const cells = (column: Column) => rows.map(column.cell);
  const widthOf = (column: Column, values: readonly string[]) => Math.max(column.header.length, ...values.map((v) => v.length));
  const leadValues = lead.map(cells);
  const metrics = metricColumns.map((column) => ({ column, values: cells(column) }));
  const kept = [...metrics];
  const dropped: string[] = [];
  const total = (nameWidth: number) =>
    leadValues.slice(0, -1).reduce((n, values, i) => n + widthOf(lead[i]!, values) + gap, 0) + nameWidth + kept.reduce((n, m) => n + gap + widthOf(m.column, m.values), 0);
  while (total(minNameWidth) > width) {
    const index = kept.findLastIndex((m) => m.column.sort !== sort);
    if (index < 0) break;
    dropped.unshift(kept[index]!.column.header);
    kept.splice(index, 1);
  }
  const nameIndex = lead.length - 1;
  const nameWidth = Math.max(minNameWidth, Math.min(widthOf(lead[nameIndex]!, leadValues[nameIndex]!), width - total(0)));
  const columns = [...lead.map((column, i) => ({ column, values: leadValues[i]! })), ...kept];
  const widths = columns.map((c, i) => (i === nameIndex ? nameWidth : widthOf(c.column, c.values)));
  // Names and nodes are left-aligned, numbers right-aligned.
  const line = (texts: readonly string[]) =>
    texts
      .map((text, i) => (i <= nameIndex ? truncate(text, widths[i]!).padEnd(widths[i]!) : text.padStart(widths[i]!)))
      .join(' '.repeat(gap))
      .trimEnd()
      .slice(0, width);
  const headerCells = columns.map((c) => c.column.header);
  const lines = [line(headerCells), ...rows.map((_, r) => line(columns.map((c) => c.values[r]!)))];
  const sortedIndex = sort === 'name' ? nameIndex : columns.findIndex((c) => c.column.sort === sort);
  let start = 0;
  for (let i = 0; i < sortedIndex; i++) start += widths[i]! + gap;
  const header = headerCells[sortedIndex] ?? '';
  const sortedHeader = sortedIndex < 0 ? undefined : { start: sortedIndex <= nameIndex ? start : start + widths[sortedIndex]! - header.length, length: header.length };
  return { lines, sortedHeader, dropped };
}

/** The line under a table: how many, over what interval, which collectors are off. */
export function summaryLine(snapshot: TopSnapshot, shown: number): string {
  const rates = snapshot.intervalSeconds === null ? 'rates need a second query' : `rates over ${snapshot.intervalSeconds.toFixed(1)} s`;
  const off = snapshot.collectorsOff.length ? `; off: ${snapshot.collectorsOff.join(', ')}` : '';
  return `${shown} of ${snapshot.total} workloads; ${rates}${off}`;
}

/** One snapshot as a plain table, every column (no terminal to fit). */
export function renderTop(snapshot: TopSnapshot, sort: WorkloadSort): string {
  const rows = visibleRows(snapshot.workloads, sort, '');
  const cluster = rows.some((r) => r.node !== undefined);
  const headers = [...(cluster ? ['NODE'] : []), 'WORKLOAD', ...metricColumns.map((c) => c.header)];
  const table = renderTable(
    headers,
    rows.map((r) => [...(cluster ? [r.node ?? ''] : []), workloadName(r.workload), ...metricColumns.map((c) => c.cell(r))]),
  );
  return `${table}${summaryLine(snapshot, rows.length)}\n${renderUnreachable(snapshot.unreachable)}`;
}
