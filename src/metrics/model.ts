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

/** Longest label value kept, in UTF-16 code units (at most 768 bytes of UTF-8), before the "…" that marks a cut. */
export const maxLabelValueLength = 256;

// C0 controls and DEL (newlines, escapes, NUL): legal in the exposition once escaped, but they break one-line logs, tables and terminals.
const controlCharacters = /[\u0000-\u001f\u007f]/g;

/**
 * Label values from the kernel, cgroup names or user data: valid UTF-8 (a
 * lone surrogate, or bytes that were no UTF-8 when decoded, become U+FFFD),
 * control characters replaced by U+FFFD, and a bounded length so one hostile
 * value cannot bloat every scrape. Quotes and backslashes stay: exporters
 * escape them.
 */
export function sanitizeLabelValue(value: string): string {
  // Cut before the work: a value of megabytes costs no more than a short one.
  const cut = value.length > maxLabelValueLength;
  let clean = (cut ? value.slice(0, maxLabelValueLength + 1) : value).toWellFormed().replace(controlCharacters, '\ufffd');
  if (cut) {
    // Do not cut a surrogate pair in half.
    let end = maxLabelValueLength;
    const code = clean.charCodeAt(end - 1);
    if (code >= 0xd800 && code <= 0xdbff) end -= 1;
    clean = `${clean.slice(0, end)}…`;
  }
  return clean;
}
