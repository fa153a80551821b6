// Workloads whose behaviour we know exactly: small C programs compiled for
// the test (gcc), so no runtime adds syscalls, execs or allocations of its own.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { execChecked } from './proc.js';

/** Compiles `source` into a binary removed at the test's teardown; resolves with its path. */
export async function compileWorkload(t: Test, name: string, source: string): Promise<string> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `pp-${name}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(path.join(dir, `${name}.c`), source);
  const binary = path.join(dir, name);
  await execChecked('gcc', ['-O1', '-o', binary, path.join(dir, `${name}.c`)]);
  return binary;
}
