// Which pinned maps a restarted agent may reuse: the kernel's view of the
// pin against what the object wants, every difference named.
import t from 'tap';
import { layoutMismatch } from '../../src/bpf/pins.js';
import type { MapInfo, PinnedMapInfo } from '../../src/bpf/addon.js';

const wanted: MapInfo = { name: 'net_traffic', type: 10, keySize: 24, valueSize: 16, maxEntries: 65536, perCpu: true, valueStride: 16, flags: 0, internal: false, id: 0 };
const pinned: PinnedMapInfo = { id: 7, name: 'net_traffic', type: 10, keySize: 24, valueSize: 16, maxEntries: 65536, flags: 0 };

t.test('a pin of the same shape is reused', async (t) => {
  t.equal(layoutMismatch(wanted, pinned), '');
});

t.test('every difference is named, with both values', async (t) => {
  t.equal(layoutMismatch({ ...wanted, maxEntries: 4096 }, pinned), 'max entries 65536 pinned, 4096 wanted');
  t.equal(
    layoutMismatch({ ...wanted, type: 5, keySize: 16, valueSize: 8, flags: 1 }, pinned),
    'type 10 pinned, 5 wanted, key size 24 pinned, 16 wanted, value size 16 pinned, 8 wanted, flags 0 pinned, 1 wanted',
  );
});
