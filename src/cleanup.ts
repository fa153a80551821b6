// probepilot agent --cleanup: takes out of the kernel what the agent leaves
// running across restarts (see "Restarts and pins" in the README) — the
// pinned maps and links under pins.root, the clsact filters whose programs
// write to those maps, the clsact qdiscs it created — and nothing else: a
// filter or qdisc of another program stays where it is.
import { readdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import type { NativeAddon, TcDirection } from './bpf/addon.js';
import { ObjectPins } from './bpf/pins.js';
import type { NetworkState } from './collectors/network.js';
import type { AgentConfig } from './config.js';
import type { Logger } from './log.js';

const directions: readonly TcDirection[] = ['ingress', 'egress'];

export interface CleanupReport {
  /** Object directories removed under pins.root (maps, links). */
  objects: string[];
  filters: number;
  qdiscs: number;
}

function entriesOf(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Ids of every map pinned under root (<root>/<object>/maps-v<N>/<map>). */
function pinnedMapIds(addon: NativeAddon, root: string): Set<number> {
  const ids = new Set<number>();
  for (const object of entriesOf(root)) {
    for (const mapsDir of entriesOf(path.join(root, object)).filter((d) => d.startsWith('maps-v'))) {
      for (const map of entriesOf(path.join(root, object, mapsDir))) {
        const info = addon.pinnedMapInfo(path.join(root, object, mapsDir, map));
        if (info) ids.add(info.id);
      }
    }
  }
  return ids;
}

/** Removes an interface's clsact qdisc once no filter of anyone hangs off it; returns whether it did. */
export function removeClsactIfEmpty(addon: NativeAddon, ifindex: number): boolean {
  if (directions.some((d) => addon.listTcFilters(ifindex, d).length > 0)) return false;
  addon.removeClsact(ifindex);
  return true;
}

export function cleanup(settings: AgentConfig['pins'], addon: NativeAddon, log: Logger): CleanupReport {
  const report: CleanupReport = { objects: [], filters: 0, qdiscs: 0 };
  const ours = pinnedMapIds(addon, settings.root);
  const links = addon.listLinks();
  for (const link of links) {
    for (const direction of directions) {
      for (const filter of addon.listTcFilters(link.ifindex, direction)) {
        const program = addon.programById(filter.programId);
        if (!program?.mapIds.some((id) => ours.has(id))) continue;
        addon.detachTcFilter(link.ifindex, direction, filter.handle, filter.priority);
        report.filters++;
        log.info({ interface: link.name, direction, program: program.name, handle: filter.handle, priority: filter.priority }, 'removed clsact filter');
      }
    }
  }
  const objects = entriesOf(settings.root).map((name) => new ObjectPins(addon, log, settings, `${name}.bpf.o`));
  const network = new ObjectPins(addon, log, settings, 'net.bpf.o').readState<NetworkState>();
  for (const { ifindex, name } of network?.createdQdiscs ?? []) {
    // Only our own qdisc, and only once nobody else's filter hangs off it.
    const link = links.find((l) => l.ifindex === ifindex && l.name === name);
    if (!link || !removeClsactIfEmpty(addon, ifindex)) continue;
    report.qdiscs++;
    log.info({ interface: name }, 'removed the clsact qdisc the agent created');
  }
  // Unpinned, with no process holding them, links detach and programs and maps are freed.
  for (const object of objects) {
    object.remove();
    report.objects.push(path.basename(object.dir));
  }
  const leftovers = entriesOf(settings.root);
  for (const leftover of leftovers) log.warn({ path: path.join(settings.root, leftover) }, 'left in place: not ours');
  if (leftovers.length === 0) rmSync(settings.root, { recursive: true, force: true });
  return report;
}
