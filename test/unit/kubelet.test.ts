import t from 'tap';
import { parseKubeletCgroup, runtimeContainerId } from '../../src/identity/kubelet.js';

const uid = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
const uidUnderscored = uid.replaceAll('-', '_');
const id = 'ab'.repeat(32);

t.test('real-world kubelet cgroup paths', async (t) => {
  const cases: Array<[string, ReturnType<typeof parseKubeletCgroup>]> = [
    // systemd driver, three runtimes, three QoS classes
    [`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uidUnderscored}.slice/cri-containerd-${id}.scope`, { podUid: uid, containerId: id, qos: 'burstable' }],
    [`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${uidUnderscored}.slice/crio-${id}.scope`, { podUid: uid, containerId: id, qos: 'besteffort' }],
    [`/kubepods.slice/kubepods-pod${uidUnderscored}.slice/docker-${id}.scope`, { podUid: uid, containerId: id, qos: 'guaranteed' }],
    [`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uidUnderscored}.slice`, { podUid: uid, qos: 'burstable' }],
    // CRI-O's monitor process is no container of the pod
    [`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uidUnderscored}.slice/crio-conmon-${id}.scope`, { podUid: uid, qos: 'burstable' }],
    // cgroupfs driver
    [`/kubepods/burstable/pod${uid}/${id}`, { podUid: uid, containerId: id, qos: 'burstable' }],
    [`/kubepods/besteffort/pod${uid}/${id}`, { podUid: uid, containerId: id, qos: 'besteffort' }],
    [`/kubepods/pod${uid}/${id}`, { podUid: uid, containerId: id, qos: 'guaranteed' }],
    [`/kubepods/pod${uid}`, { podUid: uid, qos: 'guaranteed' }],
    // a prefix before the kubelet's tree (kind nodes, --cgroup-root)
    [`/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubepods-besteffort-pod${uidUnderscored}.slice/cri-containerd-${id}.scope`, { podUid: uid, containerId: id, qos: 'besteffort' }],
    [`/probepilot-test/123-abcd/kubepods/burstable/pod${uid}/${id}`, { podUid: uid, containerId: id, qos: 'burstable' }],
    // not pods
    ['/system.slice/containerd.service', undefined],
    ['/', undefined],
    [`/user.slice/pod${uid}`, undefined],
    ['/kubepods.slice/kubepods-burstable.slice', undefined],
  ];
  for (const [path, expected] of cases) t.same(parseKubeletCgroup(path), expected, path);
});

t.test('container ids from containerStatuses', async (t) => {
  t.equal(runtimeContainerId(`containerd://${id}`), id);
  t.equal(runtimeContainerId(`cri-o://${id}`), id);
  t.equal(runtimeContainerId(`docker://${id}`), id);
  t.equal(runtimeContainerId(undefined), undefined);
  t.equal(runtimeContainerId('containerd://short'), undefined);
});
