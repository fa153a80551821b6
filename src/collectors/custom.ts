// Custom probes: each spec file under customProbes.paths is a collector
// named custom_<name>, read by the tracepoint collector from the user's own
// CO-RE object. A spec that does not parse, an object that does not load or
// a map that does not match its spec makes that one collector unavailable,
// with the reason in the logs and in probepilot_collector_up's reason.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { BpfObject } from '../bpf/addon.js';
import { describeError } from '../errors.js';
import type { FamilyDescriptor, MetricFamily } from '../metrics/model.js';
import { CollectorUnavailableError, type Collector, type CollectorContext, type CollectorHealth } from './collector.js';
import { checkMapLayout, KernelSymbols, keyLabeler, ProbeSpecError, readProbeSpec, type CustomMapSpec, type CustomProbeSpec } from './custom-spec.js';
import { TracepointCollector, type MapView, type ViewFamily } from './tracepoint.js';

const specExtensions = ['.yaml', '.yml'];
export const customPrefix = 'custom_';

/** Spec files a configured path names: the file itself, or a directory's *.yaml and *.yml in name order. */
export function specFiles(configured: string): string[] {
  let isDirectory = false;
  try {
    isDirectory = statSync(configured).isDirectory();
  } catch {
    // Missing: reported as the probe's unreadable spec.
  }
  if (!isDirectory) return [configured];
  return readdirSync(configured)
    .filter((name) => specExtensions.includes(path.extname(name)))
    .sort()
    .map((name) => path.join(configured, name));
}

/** Names a spec that has none yet (it did not parse): from its file name. */
function fallbackName(file: string): string {
  return `${customPrefix}${path.basename(file, path.extname(file)).toLowerCase().replace(/[^a-z0-9_]/g, '_')}`;
}

function loadKernelSymbols(): KernelSymbols {
  try {
    return new KernelSymbols(readFileSync('/proc/kallsyms', 'utf8'));
  } catch (err) {
    throw new CollectorUnavailableError(`a key field decodes kernel symbols, but /proc/kallsyms cannot be read: ${describeError(err)}`);
  }
}

/** A spec that could not be read: a collector that never starts, and says why. */
class UnusableProbe implements Collector {
  readonly families: readonly FamilyDescriptor[] = [];

  constructor(
    readonly name: string,
    private readonly reason: string,
  ) {}

  start(): Promise<void> {
    return Promise.reject(new CollectorUnavailableError(this.reason));
  }

  collect(): Promise<MetricFamily[]> {
    return Promise.reject(new Error(`${this.name} collector is not started`));
  }

  health(): CollectorHealth {
    return { eventsDropped: { map_full: 0 } };
  }

  programs(): [] {
    return [];
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }
}

function viewOf(map: CustomMapSpec, symbols: () => KernelSymbols | undefined): MapView {
  const cgroupField = map.key.find((f) => f.decoder === 'cgroup');
  const u64Fields = map.value.filter((f) => f.type === 'u64');
  const histograms = map.value.filter((f) => f.type === 'histogram');
  const labelNames = map.key.filter((f) => f.decoder !== 'cgroup').map((f) => f.name);
  let labeler: ReturnType<typeof keyLabeler> | undefined;
  const families = map.metrics.map((metric): ViewFamily => {
    if (metric.type === 'histogram') {
      return { descriptor: { name: metric.name, help: metric.help, type: 'histogram', labelNames }, histogram: histograms.findIndex((f) => f.name === metric.value) };
    }
    const index = u64Fields.findIndex((f) => f.name === metric.value);
    return { descriptor: { name: metric.name, help: metric.help, type: metric.type, labelNames }, value: (fields) => fields[index]! };
  });
  return {
    map: map.name,
    cgroupOffset: cgroupField ? cgroupField.offset : null,
    // The symbol table is read at start, after the view is built: the labeler is made on first use.
    keyLabels: (key) => (labeler ??= keyLabeler(map.key, symbols()))(key),
    fields: u64Fields.map((f) => f.offset),
    histograms: histograms.map((f) => f.offset),
    families,
  };
}

/** The probe as a tracepoint collector; its layout is checked against the object once it is loaded. */
function probeCollector(spec: CustomProbeSpec, ctx: CollectorContext): Collector {
  const needsSymbols = spec.maps.some((m) => m.key.some((f) => f.decoder === 'ksym'));
  let symbols: KernelSymbols | undefined;
  return new TracepointCollector(
    {
      name: `${customPrefix}${spec.name}`,
      object: spec.object,
      scope: spec.scope,
      attach: spec.attach,
      views: spec.maps.map((m) => viewOf(m, () => symbols)),
      beforeLoad: (object: BpfObject) => {
        for (const map of spec.maps) if (map.maxEntries !== undefined) object.setMapMaxEntries(map.name, map.maxEntries);
        if (needsSymbols) {
          symbols = loadKernelSymbols();
          if (symbols.empty) ctx.log.warn({ collector: `${customPrefix}${spec.name}` }, 'kernel symbol addresses are hidden (kernel.kptr_restrict); ksym key fields show raw addresses');
        }
      },
      afterLoad: (object: BpfObject) => {
        const maps = object.maps().filter((m) => !m.internal);
        const byName = new Map(maps.map((m) => [m.name, m]));
        for (const map of spec.maps) checkMapLayout(spec.name, map, byName.get(map.name), maps.map((m) => m.name));
        if (!byName.has('pp_stats')) throw new ProbeSpecError(`probe ${spec.name}: the object has no pp_stats map; include probepilot.h, whose pp_lookup_or_init counts updates a full map refused`);
      },
      // Its own pin directory: the object's file name may be any collector's.
      pinName: `${customPrefix}${spec.name}`,
      // A spec edited in place is another layout: pinned maps of the old one are not reused.
      pinLayout: JSON.stringify(spec.maps, (_key, value: unknown) => (value instanceof Map ? Object.fromEntries(value) : value)),
    },
    ctx,
  );
}

/**
 * One factory per spec file. The file is read again whenever its factory
 * runs (at start, and when the collector is enabled again), so an edited spec
 * takes effect on disable and enable.
 */
export function customProbeFactories(ctx: CollectorContext): Array<() => Collector> {
  const files = ctx.config.customProbes.paths.flatMap(specFiles);
  // By probe name and by metric name, the spec file that took it first: two collectors never export one family.
  const names = new Map<string, string>();
  const metrics = new Map<string, string>();
  return files.map((file) => () => {
    let spec: CustomProbeSpec;
    try {
      spec = readProbeSpec(file);
    } catch (err) {
      return new UnusableProbe(fallbackName(file), err instanceof ProbeSpecError ? err.message : describeError(err));
    }
    const owner = names.get(spec.name);
    if (owner !== undefined && owner !== file) return new UnusableProbe(fallbackName(file), `probe ${spec.name}: the name is already used by ${owner}`);
    const families = spec.maps.flatMap((m) => m.metrics.map((metric) => metric.name));
    const taken = families.find((family) => (metrics.get(family) ?? file) !== file);
    if (taken) return new UnusableProbe(`${customPrefix}${spec.name}`, `probe ${spec.name}: metric "${taken}" is already exported by ${metrics.get(taken)}`);
    names.set(spec.name, file);
    for (const family of families) metrics.set(family, file);
    return probeCollector(spec, ctx);
  });
}
