import t from 'tap';
import { resolveConfig } from '../../src/config.js';
import { syscallSlots } from '../../src/collectors/syscalls.js';
import { defaultTrackedSyscalls, syscallNrMax, syscallNumbers, trackableSyscalls } from '../../src/collectors/syscall-table.js';

t.test('numbers match the kernel headers on both architectures', async (t) => {
  const x64 = syscallNumbers(['read', 'openat', 'getppid', 'clone3', 'epoll_wait', 'epoll_pwait2'], 'x64');
  t.same([...x64.numbers], [['read', 0], ['openat', 257], ['getppid', 110], ['clone3', 435], ['epoll_wait', 232], ['epoll_pwait2', 441]]);
  const arm64 = syscallNumbers(['read', 'openat', 'getppid', 'newfstatat', 'epoll_wait', 'mmap'], 'arm64');
  t.same([...arm64.numbers], [['read', 63], ['openat', 56], ['getppid', 173], ['newfstatat', 79], ['mmap', 222]]);
  t.same(arm64.missing, ['epoll_wait'], 'a legacy syscall arm64 does not have');
  t.notOk(trackableSyscalls('arm64').includes('open'));
});

t.test('every number fits the kernel table and no two names share one', async (t) => {
  for (const arch of ['x64', 'arm64'] as const) {
    const { numbers } = syscallNumbers(trackableSyscalls(arch), arch);
    t.ok([...numbers.values()].every((nr) => nr >= 0 && nr < syscallNrMax), `${arch}: below ${syscallNrMax}`);
    t.equal(new Set(numbers.values()).size, numbers.size, `${arch}: numbers are unique`);
    t.same(syscallNumbers(defaultTrackedSyscalls, arch).missing, [], `${arch}: the default set exists`);
  }
});

t.test('slots: 0 is other, tracked names in config order', async (t) => {
  const { names, slotOfNr } = syscallSlots(['close', 'read'], 'x64');
  t.same(names, ['other', 'close', 'read']);
  t.equal(slotOfNr.length, syscallNrMax);
  t.equal(slotOfNr[3], 1, 'close (3) → slot 1');
  t.equal(slotOfNr[0], 2, 'read (0) → slot 2');
  t.equal(slotOfNr[110], 0, 'untracked getppid → other');
  t.throws(() => syscallSlots(['read'], 'ia32'), { name: 'CollectorUnavailableError', reason: /no syscall table for architecture ia32/ });
});

t.test('tracked names are validated with the key and the allowed values', async (t) => {
  t.same(resolveConfig().collectors.syscalls.tracked, defaultTrackedSyscalls);
  t.same(resolveConfig({ env: { PROBEPILOT_COLLECTORS_SYSCALLS_TRACKED: 'read, write,read' } }).collectors.syscalls.tracked, ['read', 'write']);
  t.throws(() => resolveConfig({ file: { collectors: { syscalls: { tracked: ['read', 'sys_nope'] } } } }), {
    message: /config key "collectors\.syscalls\.tracked": got "sys_nope", allowed values: .*\bopenat\b/,
  });
  t.throws(() => resolveConfig({ file: { collectors: { syscalls: { tracked: 'read' } } } }), { message: /collectors\.syscalls\.tracked": got "read", expected a list of names from: / });
});
