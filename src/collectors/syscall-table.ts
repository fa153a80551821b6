// Syscall numbers of the names the syscalls collector can track, per
// architecture (x86_64: asm/unistd_64.h; arm64: asm-generic/unistd.h). Only
// names a node operator plausibly asks about; everything else is "other".
// A name missing on an architecture (poll, open, … on arm64) is simply not
// trackable there.

export type SyscallArch = 'x64' | 'arm64';

type Numbers = Readonly<Record<SyscallArch, number | undefined>>;

const table: Readonly<Record<string, Numbers>> = {
  read: { x64: 0, arm64: 63 },
  write: { x64: 1, arm64: 64 },
  open: { x64: 2, arm64: undefined },
  close: { x64: 3, arm64: 57 },
  stat: { x64: 4, arm64: undefined },
  fstat: { x64: 5, arm64: 80 },
  poll: { x64: 7, arm64: undefined },
  lseek: { x64: 8, arm64: 62 },
  mmap: { x64: 9, arm64: 222 },
  mprotect: { x64: 10, arm64: 226 },
  munmap: { x64: 11, arm64: 215 },
  brk: { x64: 12, arm64: 214 },
  ioctl: { x64: 16, arm64: 29 },
  pread64: { x64: 17, arm64: 67 },
  pwrite64: { x64: 18, arm64: 68 },
  readv: { x64: 19, arm64: 65 },
  writev: { x64: 20, arm64: 66 },
  select: { x64: 23, arm64: undefined },
  sched_yield: { x64: 24, arm64: 124 },
  madvise: { x64: 28, arm64: 233 },
  nanosleep: { x64: 35, arm64: 101 },
  getpid: { x64: 39, arm64: 172 },
  sendfile: { x64: 40, arm64: 71 },
  socket: { x64: 41, arm64: 198 },
  connect: { x64: 42, arm64: 203 },
  accept: { x64: 43, arm64: 202 },
  sendto: { x64: 44, arm64: 206 },
  recvfrom: { x64: 45, arm64: 207 },
  sendmsg: { x64: 46, arm64: 211 },
  recvmsg: { x64: 47, arm64: 212 },
  shutdown: { x64: 48, arm64: 210 },
  bind: { x64: 49, arm64: 200 },
  listen: { x64: 50, arm64: 201 },
  clone: { x64: 56, arm64: 220 },
  execve: { x64: 59, arm64: 221 },
  wait4: { x64: 61, arm64: 260 },
  kill: { x64: 62, arm64: 129 },
  fcntl: { x64: 72, arm64: 25 },
  fsync: { x64: 74, arm64: 82 },
  fdatasync: { x64: 75, arm64: 83 },
  rename: { x64: 82, arm64: undefined },
  unlink: { x64: 87, arm64: undefined },
  chmod: { x64: 90, arm64: undefined },
  creat: { x64: 85, arm64: undefined },
  renameat: { x64: 264, arm64: 38 },
  execveat: { x64: 322, arm64: 281 },
  fchmodat2: { x64: 452, arm64: 452 },
  ptrace: { x64: 101, arm64: 117 },
  setuid: { x64: 105, arm64: 146 },
  getppid: { x64: 110, arm64: 173 },
  mount: { x64: 165, arm64: 40 },
  init_module: { x64: 175, arm64: 105 },
  futex: { x64: 202, arm64: 98 },
  getdents64: { x64: 217, arm64: 61 },
  clock_nanosleep: { x64: 230, arm64: 115 },
  exit_group: { x64: 231, arm64: 94 },
  epoll_wait: { x64: 232, arm64: undefined },
  epoll_ctl: { x64: 233, arm64: 21 },
  openat: { x64: 257, arm64: 56 },
  newfstatat: { x64: 262, arm64: 79 },
  unlinkat: { x64: 263, arm64: 35 },
  fchmodat: { x64: 268, arm64: 53 },
  pselect6: { x64: 270, arm64: 72 },
  ppoll: { x64: 271, arm64: 73 },
  splice: { x64: 275, arm64: 76 },
  epoll_pwait: { x64: 281, arm64: 22 },
  accept4: { x64: 288, arm64: 242 },
  dup3: { x64: 292, arm64: 24 },
  pipe2: { x64: 293, arm64: 59 },
  recvmmsg: { x64: 299, arm64: 243 },
  sendmmsg: { x64: 307, arm64: 269 },
  finit_module: { x64: 313, arm64: 273 },
  renameat2: { x64: 316, arm64: 276 },
  getrandom: { x64: 318, arm64: 278 },
  bpf: { x64: 321, arm64: 280 },
  statx: { x64: 332, arm64: 291 },
  io_uring_enter: { x64: 426, arm64: 426 },
  clone3: { x64: 435, arm64: 435 },
  close_range: { x64: 436, arm64: 436 },
  openat2: { x64: 437, arm64: 437 },
  epoll_pwait2: { x64: 441, arm64: 441 },
};

/** The BPF side's table size (syscalls.bpf.c, SYSCALL_NR_MAX): numbers at or above it count as "other". */
export const syscallNrMax = 512;

/** The default tracked set: I/O, networking, waiting, process life cycle and file metadata. */
export const defaultTrackedSyscalls: readonly string[] = [
  'read', 'write', 'pread64', 'pwrite64', 'readv', 'writev', 'openat', 'close', 'newfstatat', 'statx', 'lseek',
  'fsync', 'fdatasync', 'getdents64', 'unlinkat', 'renameat2', 'mmap', 'munmap', 'mprotect', 'brk', 'madvise',
  'ioctl', 'socket', 'connect', 'accept4', 'bind', 'listen', 'sendto', 'recvfrom', 'sendmsg', 'recvmsg',
  'epoll_pwait', 'epoll_ctl', 'ppoll', 'pselect6', 'futex', 'nanosleep', 'clock_nanosleep', 'clone', 'clone3',
  'execve', 'wait4', 'io_uring_enter',
];

export function currentSyscallArch(arch: string = process.arch): SyscallArch | undefined {
  return arch === 'x64' || arch === 'arm64' ? arch : undefined;
}

/** Names trackable on an architecture, sorted (what a config error lists). */
export function trackableSyscalls(arch: SyscallArch): string[] {
  return Object.keys(table)
    .filter((name) => table[name]![arch] !== undefined)
    .sort();
}

/** Every name the table knows on arch, by number (what a trace prints; other numbers are shown as such). */
export function syscallNamesByNumber(arch: SyscallArch): Map<number, string> {
  const names = new Map<number, string>();
  for (const [name, numbers] of Object.entries(table)) {
    const nr = numbers[arch];
    if (nr !== undefined) names.set(nr, name);
  }
  return names;
}

/** Tracked names that exist on arch, with their numbers; names missing there are returned apart. */
export function syscallNumbers(names: readonly string[], arch: SyscallArch): { numbers: Map<string, number>; missing: string[] } {
  const numbers = new Map<string, number>();
  const missing: string[] = [];
  for (const name of names) {
    const nr = table[name]?.[arch];
    if (nr === undefined) missing.push(name);
    else numbers.set(name, nr);
  }
  return { numbers, missing };
}
