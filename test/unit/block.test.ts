import t from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DeviceNames, devtName } from '../../src/collectors/block.js';

t.test('the kernel dev_t encoding', async (t) => {
  t.equal(devtName((7 << 20) | 3), '7:3');
  t.equal(devtName((259 << 20) | 0xfffff), '259:1048575');
});

t.test('device names come from sysfs; unknown devices stay major:minor', async (t) => {
  const root = mkdtempSync(path.join(os.tmpdir(), 'pp-sysfs-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(path.join(root, 'dev/block/259:0'), { recursive: true });
  writeFileSync(path.join(root, 'dev/block/259:0/uevent'), 'MAJOR=259\nMINOR=0\nDEVNAME=nvme0n1\nDEVTYPE=disk\n');
  const names = new DeviceNames(root);
  t.equal(names.nameOf(259 << 20), 'nvme0n1');
  t.equal(names.nameOf((8 << 20) | 16), '8:16', 'no sysfs entry: major:minor');
});
