// Whether this machine can run the tests that load BPF programs and build
// network namespaces. Outside CI such tests skip with the reason; in CI
// (CI=true) a machine that cannot run them fails them, so a broken runner can
// never turn the kernel tests into silent skips.
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import type { Test } from 'tap';

let cachedReason: string | undefined | null = null;

function probe(): string | undefined {
  if (process.getuid?.() !== 0) return 'not running as root';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'kernel has no BTF (/sys/kernel/btf/vmlinux missing): CO-RE programs cannot load';
  // Walking program ids is a real bpf() call that needs the same privileges as
  // loading (CAP_SYS_ADMIN or CAP_BPF): it fails under a seccomp profile or in
  // an unprivileged container, where root alone proves nothing.
  const res = spawnSync('bpftool', ['prog', 'show'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
  if (res.error) return `bpftool could not run (${res.error.message})`;
  if (res.status !== 0) return `the bpf() syscall is not permitted here (bpftool prog show: ${res.stderr.toString().trim()})`;
  return undefined;
}

/** Why BPF/netns tests cannot run here, or undefined when they can. Probed once per process. */
export function privilegesUnavailableReason(): string | undefined {
  if (cachedReason === null) cachedReason = probe();
  return cachedReason;
}

export function isCi(): boolean {
  return process.env.CI === 'true';
}

/**
 * Call at the top of a test that needs root and BPF: `if (!requirePrivileges(t, 'TC attach')) return;`.
 * Returns false after recording a skip (or, in CI, a failure).
 */
export function requirePrivileges(t: Test, what: string): boolean {
  const reason = privilegesUnavailableReason();
  if (reason === undefined) return true;
  const message = `${what} needs root and a BPF-capable kernel: ${reason}`;
  if (isCi()) t.fail(`${message} (CI=true: kernel tests must run in CI)`);
  else t.pass(what, { skip: message });
  return false;
}

/** Whether a BPF program of this id is still in the kernel (bpftool knows it). */
export function programLoaded(id: number): boolean {
  return spawnSync('bpftool', ['prog', 'show', 'id', String(id)], { stdio: 'ignore', timeout: 10_000 }).status === 0;
}
