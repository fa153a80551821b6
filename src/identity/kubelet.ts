// The kubelet's cgroup layout: which pod (and container) a cgroup path
// belongs to, for both cgroup drivers and the common runtimes.
//   systemd:  …/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//   cgroupfs: …/kubepods/burstable/pod<uid>/<id>
// Guaranteed pods sit directly under kubepods. The path may have a prefix
// (a kubelet --cgroup-root, a kind node's own cgroup).

export type QosClass = 'guaranteed' | 'burstable' | 'besteffort';

export interface KubeletCgroup {
  podUid: string;
  /** The container's runtime id (64 hex), when the path goes below the pod. */
  containerId?: string;
  qos: QosClass;
}

const systemdPod = /^kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]{36})\.slice$/;
const cgroupfsPod = /^pod([0-9a-f-]{36})$/;
/** containerd (cri-containerd-), CRI-O (crio-, not its conmon), docker/cri-dockerd (docker-). */
const systemdContainer = /^(?:cri-containerd|crio|docker)-([0-9a-f]{64})\.scope$/;
const cgroupfsContainer = /^([0-9a-f]{64})$/;

/** The kubelet's top cgroup directory (by name: kubepods, kubepods.slice, or a prefixed …-kubepods.slice). */
export function isKubepodsDir(name: string): boolean {
  return name === 'kubepods' || name === 'kubepods.slice' || name.endsWith('-kubepods.slice');
}

export function parseKubeletCgroup(cgroupPath: string): KubeletCgroup | undefined {
  const parts = cgroupPath.split('/').filter(Boolean);
  for (let i = 0; i < parts.length; i++) {
    const systemd = systemdPod.exec(parts[i]!);
    const cgroupfs = systemd ? undefined : cgroupfsPod.exec(parts[i]!);
    if (!systemd && !cgroupfs) continue;
    // A pod cgroup only counts inside the kubelet's tree.
    if (!parts.slice(0, i).some(isKubepodsDir)) continue;
    const podUid = systemd ? systemd[2]!.replaceAll('_', '-') : cgroupfs![1]!;
    const qos: QosClass = systemd ? ((systemd[1] as QosClass | undefined) ?? 'guaranteed') : qosFromCgroupfs(parts[i - 1]);
    const child = parts[i + 1];
    const containerId = child ? (systemd ? systemdContainer : cgroupfsContainer).exec(child)?.[1] : undefined;
    return containerId ? { podUid, containerId, qos } : { podUid, qos };
  }
  return undefined;
}

function qosFromCgroupfs(parent: string | undefined): QosClass {
  return parent === 'burstable' || parent === 'besteffort' ? parent : 'guaranteed';
}

/** "containerd://<id>", "cri-o://<id>", "docker://<id>" from a pod's containerStatuses → the bare id. */
export function runtimeContainerId(containerID: string | undefined): string | undefined {
  const id = containerID?.split('://')[1];
  return id && /^[0-9a-f]{64}$/.test(id) ? id : undefined;
}
