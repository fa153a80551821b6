// What outlives the agent process: one BPF object's maps and links pinned
// in bpffs under <pins.root>/<object>/, and a small JSON state file beside
// them in pins.stateDir for what bpffs cannot hold (final counts of kernel
// entries the agent deleted). A restarted agent reuses compatible map pins
// (its counters continue), adopts the links (programs kept counting while it
// was down), and reads the state back.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.js';
import type { AgentConfig } from '../config.js';
import type { BpfObject, MapInfo, NativeAddon, PinnedMapInfo } from './addon.js';

/**
 * Layout version of each object's maps, part of the pin directory
 * (maps-v<N>, plus a hash of the configuration that gives keys their
 * meaning when a collector has such: see ObjectPins). The kernel checks what it can see of a reused map — type, key
 * and value size, max entries, flags — but not what the bytes mean: bump an
 * object's version when a key or value struct changes meaning at the same
 * size (fields reordered, a unit changed), and its old pins are re-created.
 */
const layoutVersions: Readonly<Record<string, number>> = {
  'net.bpf.o': 1,
  'sched.bpf.o': 1,
  'syscalls.bpf.o': 1,
  'tcp.bpf.o': 1,
  'block.bpf.o': 1,
  'drops.bpf.o': 1,
  'process.bpf.o': 1,
};

const mapsDirPrefix = 'maps-v';

/** reused: the pin of an earlier run, counts continue; recreated: an incompatible pin was replaced; created: none was there. */
export type MapPinOutcome = 'reused' | 'recreated' | 'created';

export interface PinnedMaps {
  outcomes: ReadonlyMap<string, MapPinOutcome>;
  /**
   * Kernel ids of the earlier run's maps this one replaced. Its programs may
   * still be attached (a clsact filter holds them): with every map
   * re-created, these ids are what tell those programs are ours.
   */
  replacedIds: ReadonlySet<number>;
  /** The map's counts continue, so its saved state applies. */
  reused(map: string): boolean;
}

/** Why a pinned map cannot serve as the object's map; "" when it can. */
export function layoutMismatch(wanted: MapInfo, pinned: PinnedMapInfo): string {
  const checks: Array<[string, number, number]> = [
    ['type', wanted.type, pinned.type],
    ['key size', wanted.keySize, pinned.keySize],
    ['value size', wanted.valueSize, pinned.valueSize],
    ['max entries', wanted.maxEntries, pinned.maxEntries],
    ['flags', wanted.flags, pinned.flags],
  ];
  return checks
    .filter(([, want, have]) => want !== have)
    .map(([what, want, have]) => `${what} ${have} pinned, ${want} wanted`)
    .join(', ');
}

export class ObjectPins {
  /** <root>/<object name without .bpf.o> */
  readonly dir: string;
  private readonly mapsDir: string;
  private readonly linksDir: string;
  private readonly statePath: string;
  private readonly layoutVersion: number;
  /** saveStateSoon: the write in flight, and the newest state asked for after it started. */
  private stateWrite: Promise<void> | undefined;
  private pendingState: (() => unknown) | undefined;
  private outcomes: ReadonlyMap<string, MapPinOutcome> = new Map();

  constructor(
    private readonly addon: NativeAddon,
    private readonly log: Logger,
    settings: AgentConfig['pins'],
    objectFile: string,
    /** Configuration that gives map keys their meaning (e.g. which syscall each slot is): part of the layout. */
    layoutDetail = '',
  ) {
    const name = objectFile.replace(/\.bpf\.o$/, '');
    this.layoutVersion = layoutVersions[objectFile] ?? 1;
    this.dir = path.join(settings.root, name);
    const detail = layoutDetail ? `-${createHash('sha256').update(layoutDetail).digest('hex').slice(0, 12)}` : '';
    this.mapsDir = path.join(this.dir, `${mapsDirPrefix}${this.layoutVersion}${detail}`);
    this.linksDir = path.join(this.dir, 'links');
    this.statePath = path.join(settings.stateDir, `${name}.json`);
  }

  /**
   * Before load: points every map of the object at its pin (libbpf reuses
   * it, or creates and pins it). Pins of another layout version or of an
   * incompatible shape are removed first, with a log line naming the map.
   * Says per map whether its counts continue: some maps of an object can be
   * reused while others are re-created, and each one's saved state goes
   * with its own outcome.
   */
  pinMaps(object: BpfObject): PinnedMaps {
    mkdirSync(this.mapsDir, { recursive: true });
    const current = path.basename(this.mapsDir);
    const replacedIds = new Set<number>();
    const replacedNames = new Set<string>();
    for (const entry of readdirSync(this.dir)) {
      if (!entry.startsWith(mapsDirPrefix) || entry === current) continue;
      for (const map of readdirSync(path.join(this.dir, entry))) {
        const pinPath = path.join(this.dir, entry, map);
        const pinned = this.addon.pinnedMapInfo(pinPath);
        if (pinned) replacedIds.add(pinned.id);
        replacedNames.add(map);
        this.log.warn({ map, pinPath, reason: `layout ${entry} pinned, ${current} wanted` }, 'pinned map has an incompatible layout; re-created (its counts start over)');
      }
      rmSync(path.join(this.dir, entry), { recursive: true, force: true });
    }
    const outcomes = new Map<string, MapPinOutcome>();
    for (const map of object.maps()) {
      if (map.internal) continue;
      const pinPath = path.join(this.mapsDir, map.name);
      const pinned = this.addon.pinnedMapInfo(pinPath);
      const reason = pinned ? layoutMismatch(map, pinned) : '';
      if (pinned && reason) {
        this.log.warn({ map: map.name, pinPath, reason }, 'pinned map has an incompatible layout; re-created (its counts start over)');
        replacedIds.add(pinned.id);
        unlinkSync(pinPath);
      }
      outcomes.set(map.name, pinned && !reason ? 'reused' : pinned || replacedNames.has(map.name) ? 'recreated' : 'created');
      object.setMapPinPath(map.name, pinPath);
    }
    const byOutcome = (wanted: MapPinOutcome) => [...outcomes].filter(([, o]) => o === wanted).map(([name]) => name);
    this.log.info({ reused: byOutcome('reused'), recreated: byOutcome('recreated'), created: byOutcome('created') }, 'pinned maps');
    this.outcomes = outcomes;
    return { outcomes, replacedIds, reused: (map) => outcomes.get(map) === 'reused' };
  }

  /** Each map's outcome at the last pinMaps. */
  mapOutcomes(): ReadonlyMap<string, MapPinOutcome> {
    return this.outcomes;
  }

  /**
   * Attaches `program` through its pinned link when an earlier run left one
   * (kept when identical, else updated in place where the link type
   * allows), otherwise with `attach`, and pins the new link as `pinName`.
   */
  adoptOrAttach(object: BpfObject, program: string, pinName: string, attach: () => number): number {
    const pinPath = this.linkPath(pinName);
    const adoption = object.adoptLink(program, pinPath);
    if (adoption.outcome === 'kept') {
      this.log.debug({ program, pinPath }, 'kept the pinned link of the previous run');
      return adoption.id;
    }
    if (adoption.outcome === 'updated') {
      this.log.info({ program, pinPath, reason: adoption.reason }, 'pinned link updated in place to the new program');
      return adoption.id;
    }
    if (adoption.outcome === 'stale') {
      this.log.warn({ program, pinPath, reason: adoption.reason }, 'pinned link cannot be updated in place: detached it and attached anew (events in between are not counted)');
    }
    const id = attach();
    object.pinAttachment(id, pinPath);
    return id;
  }

  linkPath(pinName: string): string {
    mkdirSync(this.linksDir, { recursive: true });
    return path.join(this.linksDir, pinName);
  }

  /** Removing a link's pin detaches it once no fd holds it. */
  removeLink(pinName: string): void {
    rmSync(path.join(this.linksDir, pinName), { force: true });
  }

  /** Link pins (by pin name) not in `keep`: removing them detaches links left for interfaces that went away. */
  removeLinksExcept(keep: ReadonlySet<string>): void {
    let names: string[];
    try {
      names = readdirSync(this.linksDir);
    } catch {
      return;
    }
    for (const name of names) {
      if (keep.has(name)) continue;
      unlinkSync(path.join(this.linksDir, name));
      this.log.debug({ pinPath: path.join(this.linksDir, name) }, 'removed a link pin nothing uses any more');
    }
  }

  readState<T>(): T | undefined {
    try {
      return JSON.parse(readFileSync(this.statePath, 'utf8')) as T;
    } catch {
      return undefined;
    }
  }

  /** Written whole to a temporary file and renamed: a kill mid-write leaves the previous state. */
  writeState(state: unknown): void {
    mkdirSync(path.dirname(this.statePath), { recursive: true });
    const temporary = `${this.statePath}.${process.pid}.tmp`;
    writeFileSync(temporary, JSON.stringify(state));
    renameSync(temporary, this.statePath);
  }

  /**
   * The same state, off the collection path: while one write is in flight,
   * every later request becomes one write of the newest state (a churn of
   * retiring entries is a few writes, not one synchronous write per collection).
   */
  saveStateSoon(produce: () => unknown, onError: (err: unknown) => void): void {
    this.pendingState = produce;
    this.stateWrite ??= (async () => {
      while (this.pendingState) {
        const next = this.pendingState;
        this.pendingState = undefined;
        try {
          await mkdir(path.dirname(this.statePath), { recursive: true });
          const temporary = `${this.statePath}.${process.pid}.async.tmp`;
          await writeFile(temporary, JSON.stringify(next()));
          await rename(temporary, this.statePath);
        } catch (err) {
          onError(err);
        }
      }
      this.stateWrite = undefined;
    })();
  }

  /** Waits for saveStateSoon's writes, so a writeState after it is the last word. */
  async flushState(): Promise<void> {
    await this.stateWrite;
  }

  /** Everything of this object: pins (unpinned links detach once our fds close) and state. */
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
    rmSync(this.statePath, { force: true });
  }
}
