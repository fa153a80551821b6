// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Sched collector: run-queue latency per workload — how long a runnable
 * task waited for a CPU, from its wakeup, or from being preempted while
 * still runnable, until sched_switch runs it. The waiting task is the
 * workload (its own cgroup), not whatever ran on the CPU meanwhile. Raw
 * tracepoints hand us the task_struct pointers; CO-RE reads them. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

#define TASK_RUNNING 0

struct runq_key {
	__u64 cgroup_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.sched.maxEntries) */
	__type(key, struct runq_key);
	__type(value, struct pp_hist);
} runq_latency SEC(".maps");

/* When each runnable task started waiting. LRU: a task that exits while
 * runnable leaves its entry to be evicted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.sched.maxTasks) */
	__type(key, __u32);
	__type(value, __u64);
} runq_enqueued SEC(".maps");

static const struct pp_hist zero_hist;

/* Kernels before 5.14 call it state. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *task)
{
	if (bpf_core_field_exists(task->__state))
		return BPF_CORE_READ(task, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)task, state);
}

static __always_inline void mark_enqueued(struct task_struct *task)
{
	__u32 pid = BPF_CORE_READ(task, pid);
	__u64 now;

	if (!pid) /* the idle task never waits */
		return;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&runq_enqueued, &pid, &now, BPF_ANY);
}

SEC("raw_tp/sched_wakeup")
int pp_sched_wakeup(struct bpf_raw_tracepoint_args *ctx)
{
	mark_enqueued((struct task_struct *)ctx->args[0]);
	return 0;
}

SEC("raw_tp/sched_wakeup_new")
int pp_sched_wakeup_new(struct bpf_raw_tracepoint_args *ctx)
{
	mark_enqueued((struct task_struct *)ctx->args[0]);
	return 0;
}

SEC("raw_tp/sched_switch")
int pp_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *prev = (struct task_struct *)ctx->args[1];
	struct task_struct *next = (struct task_struct *)ctx->args[2];
	struct runq_key key = {};
	struct pp_hist *hist;
	__u64 *enqueued, waited;
	__u32 pid;

	/* Preempted, still runnable: it waits again from now. */
	if (task_state(prev) == TASK_RUNNING)
		mark_enqueued(prev);

	pid = BPF_CORE_READ(next, pid);
	enqueued = bpf_map_lookup_elem(&runq_enqueued, &pid);
	if (!enqueued)
		return 0;
	waited = bpf_ktime_get_ns() - *enqueued;
	bpf_map_delete_elem(&runq_enqueued, &pid);

	key.cgroup_id = pp_task_cgroup_id(next);
	hist = pp_lookup_or_init(&runq_latency, &key, &zero_hist);
	if (hist)
		pp_hist_record(hist, waited);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
