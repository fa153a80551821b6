// Who is at the other end of traffic. The kernel tells pods apart by exact
// address (net_peer_addresses) and folds every other peer into a class: the
// node's own addresses (host), the cluster's other nodes (node), configured
// CIDR names (net_peer_cidrs), and world. This keeps those two maps in step with what the identity knows and
// names the peers of the flow entries read back.
import os from 'node:os';
import type { BpfObject } from '../bpf/addon.js';
import type { NamedPrefix, PeerLabelSetting } from '../config.js';
import type { Peers } from '../identity/identity.js';
import { parseIp, parsePrefix } from '../ip.js';
import { sanitizeLabelValue, type Labels } from '../metrics/model.js';
import { PeerClass, encodePeerAddress, encodePeerClass, encodePeerPrefix, peerAddressId } from './network-decode.js';

export const peerLabelNames = (peerLabel: PeerLabelSetting): readonly string[] => ['peer_namespace', `peer_${peerLabel}`, 'peer_class'];

/** A pod whose address is in the kernel map could not be named (it went away before its entries were read). */
const unknownPod = 'unknown';

interface InstalledPeer {
  key: Buffer;
  peerClass: number;
  labels: Labels;
}

export class PeerDirectory {
  /** Class id → name; ids from PeerClass.firstNamed are the configured CIDR names, in order ("node" among them is the node class). */
  private readonly classNames: string[];
  private readonly classLabels: Labels[];
  private readonly installed = new Map<string, InstalledPeer>();
  /** Pod addresses taken out of the kernel map whose flow entries have not been retired yet. */
  private readonly departed = new Map<string, Labels>();
  private lastPeers: Peers | undefined;
  private lastHostAddresses = '';
  private readonly labelNames: readonly string[];
  /** Addresses that did not fit net_peer_addresses at the last change: their traffic counts as world. */
  overflow = 0;

  constructor(
    private readonly cidrs: readonly NamedPrefix[],
    private readonly peerLabel: PeerLabelSetting,
    private readonly maxPeers: number,
  ) {
    const names = new Set(cidrs.map((c) => c.name).filter((name) => name !== 'node'));
    this.classNames = ['world', 'pod', 'host', 'node', ...names];
    this.labelNames = peerLabelNames(peerLabel);
    this.classLabels = this.classNames.map((name) => this.freeze('', '', name));
  }

  /** Before any traffic is read: the configured CIDR names. */
  installCidrs(object: BpfObject): void {
    for (const { name, cidr } of this.cidrs) {
      const prefix = parsePrefix(cidr)!;
      object.update('net_peer_cidrs', encodePeerPrefix(prefix.family, prefix.bytes, prefix.length), encodePeerClass(this.classNames.indexOf(name)));
    }
  }

  /**
   * Brings net_peer_addresses in line with the pods, the other nodes and
   * this node's addresses; cheap when nothing changed. True when this change
   * left addresses out for lack of room.
   */
  sync(object: BpfObject, peers: Peers): boolean {
    const hostAddresses = Object.values(os.networkInterfaces())
      .flatMap((addrs) => addrs ?? [])
      .map((a) => a.address);
    const hostKey = hostAddresses.join(',');
    if (peers === this.lastPeers && hostKey === this.lastHostAddresses) return false;
    this.lastPeers = peers;
    this.lastHostAddresses = hostKey;

    const wanted = new Map<string, { family: 4 | 6; bytes: Uint8Array; peerClass: number; labels: Labels }>();
    // The node's addresses first: a host-network pod has them too, and is the host.
    for (const text of hostAddresses) {
      const ip = parseIp(text);
      if (ip) wanted.set(peerAddressId(ip.family, padded(ip.bytes)), { ...ip, peerClass: PeerClass.host, labels: this.classLabels[PeerClass.host]! });
    }
    for (const [text, pod] of peers.pods) {
      const ip = parseIp(text);
      if (!ip) continue;
      const id = peerAddressId(ip.family, padded(ip.bytes));
      if (!wanted.has(id)) wanted.set(id, { ...ip, peerClass: PeerClass.pod, labels: this.freeze(pod.namespace, this.peerLabel === 'pod' ? pod.pod : pod.workload, 'pod') });
    }
    for (const text of peers.nodes) {
      const ip = parseIp(text);
      if (!ip) continue;
      const id = peerAddressId(ip.family, padded(ip.bytes));
      if (!wanted.has(id)) wanted.set(id, { ...ip, peerClass: PeerClass.node, labels: this.classLabels[PeerClass.node]! });
    }

    for (const [id, peer] of this.installed) {
      const next = wanted.get(id);
      if (next && sameLabels(next.labels, peer.labels)) continue;
      if (!next) {
        object.deleteKeys('net_peer_addresses', peer.key);
        this.installed.delete(id);
      }
      if (peer.peerClass === PeerClass.pod) this.departed.set(id, peer.labels);
    }
    this.overflow = 0;
    for (const [id, peer] of wanted) {
      const current = this.installed.get(id);
      if (current && sameLabels(current.labels, peer.labels)) continue;
      if (!current && this.installed.size >= this.maxPeers) {
        this.overflow++;
        continue;
      }
      const key = encodePeerAddress(peer.family, peer.bytes);
      if (current?.peerClass !== peer.peerClass) object.update('net_peer_addresses', key, encodePeerClass(peer.peerClass));
      this.installed.set(id, { key, peerClass: peer.peerClass, labels: peer.labels });
    }
    return this.overflow > 0;
  }

  /**
   * Peer labels of a flow entry, and whether they are still current: a pod
   * address that went away or now names another pod is not, and its entry
   * must be retired under the labels it had.
   */
  labelsOf(peerClass: number, peerAddress: string): { labels: Labels; current: boolean } {
    if (peerClass !== PeerClass.pod) return { labels: this.classLabels[peerClass] ?? this.classLabels[PeerClass.world]!, current: true };
    const departed = this.departed.get(peerAddress);
    if (departed) return { labels: departed, current: false };
    const installed = this.installed.get(peerAddress);
    if (installed?.peerClass === PeerClass.pod) return { labels: installed.labels, current: true };
    return { labels: this.freeze(unknownPod, unknownPod, 'pod'), current: false };
  }

  /** After a collection has retired the entries of departed addresses. */
  forgetDeparted(): void {
    this.departed.clear();
  }

  private freeze(namespace: string, name: string, peerClass: string): Labels {
    const [namespaceLabel, nameLabel, classLabel] = this.labelNames as [string, string, string];
    return Object.freeze({ [namespaceLabel]: sanitizeLabelValue(namespace), [nameLabel]: sanitizeLabelValue(name), [classLabel]: peerClass });
  }
}

/** Peer labels include the class, so equal labels mean the same peer. */
function sameLabels(a: Labels, b: Labels): boolean {
  return a === b || Object.keys(a).every((k) => a[k] === b[k]);
}

/** Kernel keys hold 16 address bytes whatever the family. */
function padded(bytes: Uint8Array): Uint8Array {
  if (bytes.length === 16) return bytes;
  const out = new Uint8Array(16);
  out.set(bytes);
  return out;
}
