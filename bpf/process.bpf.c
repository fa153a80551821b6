// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Process collector: execs and OOM kills per workload. An exec is the
 * exec'ing task's (current); an OOM kill is the victim's, read from the
 * victim task itself, since the task that triggered the OOM killer may
 * belong to another workload (a global OOM). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

struct process_key {
	__u64 cgroup_id;
};

struct process_value {
	__u64 execs;
	__u64 oom_kills;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.process.maxEntries) */
	__type(key, struct process_key);
	__type(value, struct process_value);
} process_events SEC(".maps");

static const struct process_value zero_process;

static __always_inline struct process_value *entry(__u64 cgroup_id)
{
	struct process_key key = { .cgroup_id = cgroup_id };

	return pp_lookup_or_init(&process_events, &key, &zero_process);
}

SEC("tp/sched/sched_process_exec")
int pp_process_exec(void *ctx)
{
	struct process_value *value = entry(bpf_get_current_cgroup_id());

	if (value)
		value->execs += 1;
	return 0;
}

/* Since 6.8 mark_victim passes the victim task (the same change added the
 * uid field); before, only its pid, and current — the task whose
 * allocation failed, in a memory-cgroup OOM normally the same workload —
 * is the best attribution left. */
SEC("raw_tp/mark_victim")
int pp_process_oom_victim(struct bpf_raw_tracepoint_args *ctx)
{
	struct process_value *value;
	__u64 cgroup_id;

	if (bpf_core_field_exists(((struct trace_event_raw_mark_victim *)0)->uid))
		cgroup_id = pp_task_cgroup_id((struct task_struct *)ctx->args[0]);
	else
		cgroup_id = bpf_get_current_cgroup_id();
	value = entry(cgroup_id);
	if (value)
		value->oom_kills += 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
