// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The floor for per-syscall cost: programs on the syscalls collector's
 * hooks that do nothing. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tp/raw_syscalls/sys_enter")
int pp_empty_sys_enter(void *ctx)
{
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int pp_empty_sys_exit(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
