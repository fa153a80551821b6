// A block device a test can own: a loop device over a sparse file.
import { rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { execChecked, execCommand } from './proc.js';

/** A loop device over a sparse file in the temp directory; removed at teardown even when the test fails. */
export async function createLoopDevice(t: Test, bytes: number): Promise<string> {
  const file = path.join(os.tmpdir(), `probepilot-block-${process.pid}.img`);
  writeFileSync(file, '');
  truncateSync(file, bytes);
  t.teardown(() => rmSync(file, { force: true }));
  const device = (await execChecked('losetup', ['--find', '--show', file])).trim();
  t.teardown(async () => {
    await execCommand('losetup', ['--detach', device]);
  });
  return path.basename(device);
}
