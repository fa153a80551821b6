/* Shared by every ProbePilot BPF program: the collector self-statistics
 * layout that userspace reads generically (see src/collectors/). */
#ifndef PROBEPILOT_H
#define PROBEPILOT_H

/* Slots of each object's `pp_stats` per-CPU array. Only off-hot-path
 * outcomes live here: the common path must not pay for an extra map. */
enum pp_stat {
	PP_STAT_DROPPED_MAP_FULL = 0, /* an update found its map full: the event is not counted */
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

#endif /* PROBEPILOT_H */
