// Workloads whose behaviour we know exactly: small C programs compiled for
// the test or benchmark (gcc), so no runtime adds syscalls, execs or
// allocations of its own.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { execChecked } from './proc.js';

export interface CompiledProgram {
  binary: string;
  /** Removes the binary and its source. */
  remove(): void;
}

/** gccArgs go before the others, e.g. ['-shared', '-fPIC'] for a library. */
export async function compileC(name: string, source: string, gccArgs: readonly string[] = []): Promise<CompiledProgram> {
  const dir = mkdtempSync(path.join(os.tmpdir(), `pp-${name}-`));
  const remove = (): void => rmSync(dir, { recursive: true, force: true });
  try {
    writeFileSync(path.join(dir, `${name}.c`), source);
    const binary = path.join(dir, name);
    await execChecked('gcc', [...gccArgs, '-O1', '-o', binary, path.join(dir, `${name}.c`)]);
    return { binary, remove };
  } catch (err) {
    remove();
    throw err;
  }
}

/** Compiles `source` into a binary removed at the test's teardown; resolves with its path. */
export async function compileWorkload(t: Test, name: string, source: string, gccArgs: readonly string[] = []): Promise<string> {
  const program = await compileC(name, source, gccArgs);
  t.teardown(program.remove);
  return program.binary;
}
