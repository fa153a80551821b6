// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The peer for TC per-packet cost: the least a classifier that counts can do,
 * bytes and packets in one per-CPU array slot, no parsing, no identity. The
 * network collector does more (headers, a per-workload key, a hash map), so
 * matching this is its target. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct counts {
	__u64 bytes;
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counts);
} pp_counter_tc_totals SEC(".maps");

SEC("tc")
int pp_counter_tc(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct counts *c = bpf_map_lookup_elem(&pp_counter_tc_totals, &key);

	if (c) {
		c->bytes += skb->len;
		c->packets++;
	}
	return -1; /* TC_ACT_UNSPEC / TCX_NEXT */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
