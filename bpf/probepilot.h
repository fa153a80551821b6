/* Shared by every ProbePilot BPF program: the collector self-statistics
 * layout that userspace reads generically (see src/collectors/). */
#ifndef PROBEPILOT_H
#define PROBEPILOT_H

#include <bpf/bpf_core_read.h>

/* Slots of each object's `pp_stats` per-CPU array. Only off-hot-path
 * outcomes live here: the common path must not pay for an extra map. */
enum pp_stat {
	PP_STAT_DROPPED_MAP_FULL = 0, /* an update found its map full: the event is not counted */
	PP_STAT_EVENTS_RINGBUF_FULL = 1, /* a traced event found the ring buffer full: userspace is behind */
	PP_STAT_EVENTS_RATE_LIMITED = 2, /* a traced event over its cgroup's rate: not sent */
	PP_STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} pp_stats SEC(".maps");

static __always_inline void pp_stat_inc(enum pp_stat stat)
{
	__u32 slot = stat;
	__u64 *counter = bpf_map_lookup_elem(&pp_stats, &slot);

	if (counter)
		*counter += 1;
}

/* The entry for key, created from *zero when missing (zero may be a .rodata
 * global, so large values need no stack). NULL when the map is full, which is
 * counted. A racing CPU may create the key first: EEXIST is not a failure. */
static __always_inline void *pp_lookup_or_init(void *map, const void *key, const void *zero)
{
	void *value = bpf_map_lookup_elem(map, key);
	long err;

	if (value)
		return value;
	err = bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST */) {
		pp_stat_inc(PP_STAT_DROPPED_MAP_FULL);
		return NULL;
	}
	return bpf_map_lookup_elem(map, key);
}

/* The cgroup v2 id of a task (the kernfs inode number userspace sees with
 * stat), whatever task is running: for attribution to the task an event is
 * about, not the one that happens to be on the CPU. */
static __always_inline __u64 pp_task_cgroup_id(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

/* include/net/tcp_states.h: minisockets, which end before sk_cgrp_data. */
#define PP_TCP_TIME_WAIT 6
#define PP_TCP_NEW_SYN_RECV 12

/* The cgroup of the workload that created a socket; 0 when the socket
 * cannot say: a minisocket (time-wait, SYN-received) has no cgroup data,
 * and a kernel socket (a namespace's ICMP or TCP reset socket) has the
 * cgroup of whoever created the namespace — it speaks for the namespace. */
static __always_inline __u64 pp_sock_cgroup_id(struct sock *sk)
{
	__u8 state;

	if (!sk)
		return 0;
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (state == PP_TCP_TIME_WAIT || state == PP_TCP_NEW_SYN_RECV)
		return 0;
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_kern_sock))
		return 0;
	return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
}

/* Latency histograms: slot k counts values in [2^k, 2^(k+1)) ns (slot 0
 * also takes 0); the last slot takes everything above. Userspace folds the
 * slots into Prometheus buckets with le = 2^(k+1) ns (src/metrics/histogram.ts). */
#define PP_HIST_SLOTS 40

struct pp_hist {
	__u64 slots[PP_HIST_SLOTS];
	__u64 sum_ns;
};

static __always_inline __u32 pp_log2(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xFFFFFFFFULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xFFFF) << 4; v >>= shift; r |= shift;
	shift = (v > 0xFF) << 3; v >>= shift; r |= shift;
	shift = (v > 0xF) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

/* For per-CPU maps: plain adds, no atomics on the hot path. */
static __always_inline void pp_hist_record(struct pp_hist *hist, __u64 value_ns)
{
	__u32 slot = pp_log2(value_ns);

	if (slot >= PP_HIST_SLOTS)
		slot = PP_HIST_SLOTS - 1;
	hist->slots[slot] += 1;
	hist->sum_ns += value_ns;
}

#endif /* PROBEPILOT_H */
