// The one shape every collector produces and every exporter renders: a
// snapshot of metric families, read from BPF maps at collection time.

export type Labels = Readonly<Record<string, string>>;

export interface FamilyDescriptor {
  /** Full Prometheus name, e.g. probepilot_network_bytes_total. */
  name: string;
  help: string;
  type: 'counter' | 'gauge' | 'histogram';
  /** Label names every sample carries, identity labels included. */
  labelNames: readonly string[];
}

export interface ScalarSample {
  labels: Labels;
  value: number;
}

export interface HistogramSample {
  labels: Labels;
  /** Upper bounds in base units, strictly increasing, without +Inf. */
  bounds: readonly number[];
  /** Per-bucket (not cumulative) counts, one more than bounds: the last is the +Inf overflow. */
  counts: readonly number[];
  sum: number;
  count: number;
}

export type MetricFamily =
  | (FamilyDescriptor & { type: 'counter' | 'gauge'; samples: ScalarSample[] })
  | (FamilyDescriptor & { type: 'histogram'; samples: HistogramSample[] });

export function counterFamily(descriptor: FamilyDescriptor, samples: ScalarSample[]): MetricFamily {
  if (descriptor.type === 'histogram') throw new Error(`${descriptor.name} is a histogram`);
  return { ...descriptor, type: descriptor.type, samples };
}

const maxLabelValueLength = 256;

/**
 * Label values from the kernel, cgroup names or user data: valid UTF-8 (a
 * lone surrogate would be encoded as U+FFFD, which we make explicit), no NUL,
 * bounded length so one hostile value cannot bloat every scrape.
 */
export function sanitizeLabelValue(value: string): string {
  let clean = value.toWellFormed().replaceAll('\0', '');
  if (clean.length > maxLabelValueLength) {
    // Do not cut a surrogate pair in half.
    let end = maxLabelValueLength;
    const code = clean.charCodeAt(end - 1);
    if (code >= 0xd800 && code <= 0xdbff) end -= 1;
    clean = `${clean.slice(0, end)}…`;
  }
  return clean;
}
