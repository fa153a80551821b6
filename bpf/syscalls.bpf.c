// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Syscalls collector: calls, failures and latency per workload and tracked
 * syscall, from raw_syscalls sys_enter/sys_exit. The caller is the cause,
 * so the current task's cgroup is the workload. This runs on every syscall
 * of the node: two lookups and one aggregate update in the steady state. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "probepilot.h"

/* Mirrors syscallNrMax in src/collectors/syscall-table.ts. */
#define SYSCALL_NR_MAX 512
#define MAX_ERRNO 4095

/* Syscall number → slot: 0 is "other", 1..N the tracked names in config
 * order. Written by userspace before load. */
const volatile __u8 slot_of_nr[SYSCALL_NR_MAX];

struct syscall_key {
	__u64 cgroup_id;
	__u32 slot;
	__u32 pad;
};

struct syscall_value {
	__u64 calls;
	__u64 errors;
	struct pp_hist latency;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.syscalls.maxEntries) */
	__type(key, struct syscall_key);
	__type(value, struct syscall_value);
} syscall_stats SEC(".maps");

/* Entry time per thread. An entry is reused by the thread's next syscall,
 * so steady state needs no insert; LRU bounds what exited threads (and
 * syscalls that never return, like exit) leave behind. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.syscalls.maxThreads) */
	__type(key, __u32);
	__type(value, __u64);
} syscall_start SEC(".maps");

static const struct syscall_value zero_syscall;

SEC("tp/raw_syscalls/sys_enter")
int pp_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();
	__u64 *start = bpf_map_lookup_elem(&syscall_start, &tid);

	if (start)
		*start = now;
	else
		bpf_map_update_elem(&syscall_start, &tid, &now, BPF_ANY);
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int pp_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *start = bpf_map_lookup_elem(&syscall_start, &tid);
	struct syscall_key key = {};
	struct syscall_value *value;
	long nr = ctx->id;
	long ret = ctx->ret;
	__u64 began;

	/* Started before we attached, or its entry was evicted: not counted,
	 * rather than counted with a made-up latency. */
	if (!start || !*start)
		return 0;
	began = *start;
	*start = 0;

	key.cgroup_id = bpf_get_current_cgroup_id();
	key.slot = nr >= 0 && nr < SYSCALL_NR_MAX ? slot_of_nr[nr] : 0;
	value = pp_lookup_or_init(&syscall_stats, &key, &zero_syscall);
	if (!value)
		return 0;
	value->calls += 1;
	if (ret < 0 && ret >= -MAX_ERRNO)
		value->errors += 1;
	pp_hist_record(&value->latency, bpf_ktime_get_ns() - began);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
