// What outlives the agent process: one BPF object's maps and links pinned
// in bpffs under <pins.root>/<object>/, and a small JSON state file beside
// them in pins.stateDir for what bpffs cannot hold (final counts of kernel
// entries the agent deleted). A restarted agent reuses compatible map pins
// (its counters continue), adopts the links (programs kept counting while it
// was down), and reads the state back.
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
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
   * Returns true when every map was reused: counts continue.
   */
  pinMaps(object: BpfObject): boolean {
    mkdirSync(this.mapsDir, { recursive: true });
    const current = path.basename(this.mapsDir);
    for (const entry of readdirSync(this.dir)) {
      if (!entry.startsWith(mapsDirPrefix) || entry === current) continue;
      for (const map of readdirSync(path.join(this.dir, entry))) {
        this.log.warn({ map, pinPath: path.join(this.dir, entry, map), reason: `layout ${entry} pinned, ${current} wanted` }, 'pinned map has an incompatible layout; re-created (its counts start over)');
      }
      rmSync(path.join(this.dir, entry), { recursive: true, force: true });
    }
    let reused = true;
    for (const map of object.maps()) {
      if (map.internal) continue;
      const pinPath = path.join(this.mapsDir, map.name);
      const pinned = this.addon.pinnedMapInfo(pinPath);
      const reason = pinned ? layoutMismatch(map, pinned) : 'not pinned yet';
      if (pinned && reason) {
        this.log.warn({ map: map.name, pinPath, reason }, 'pinned map has an incompatible layout; re-created (its counts start over)');
        unlinkSync(pinPath);
      }
      if (reason) reused = false;
      object.setMapPinPath(map.name, pinPath);
    }
    return reused;
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

  /** Everything of this object: pins (unpinned links detach once our fds close) and state. */
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
    rmSync(this.statePath, { force: true });
  }
}
