// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Drops collector: packets the kernel freed as dropped, by drop reason and
 * workload, counted per CPU in the kernel. skb:kfree_skb carries the reason
 * (enum skb_drop_reason, Linux >= 5.17); userspace names the numbers from
 * the kernel's own BTF (src/collectors/drops.ts).
 *
 * Who a dropped packet belongs to:
 *  1. its socket (skb->sk, else the tracepoint's rx_sk): the socket's cgroup;
 *  2. else (or a kernel socket, or a minisocket without cgroup data) the
 *     network namespace it was in (its device's, else its socket's): the
 *     namespace inode, which userspace resolves to the workload living there;
 *  3. else nothing: the node. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

/* From the kernel's BTF: the reason of a packet that was consumed, not
 * dropped. Kernels 6.0 to 6.2 report it on kfree_skb; later ones use
 * consume_skb instead. No such reason: ~0. */
const volatile __u32 consumed_reason = ~0U;

/* Mirrors src/collectors/drops-decode.ts. */
struct drop_key {
	__u64 cgroup_id;   /* the socket's cgroup; 0: see netns_inode */
	__u32 netns_inode; /* with cgroup_id 0: the namespace the packet was in; 0: the node */
	__u32 reason;      /* enum skb_drop_reason */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.drops.maxEntries) */
	__type(key, struct drop_key);
	__type(value, __u64);
} drop_counts SEC(".maps");

static const __u64 zero_count;

SEC("tp/skb/kfree_skb")
int pp_drops_kfree_skb(struct trace_event_raw_kfree_skb *ctx)
{
	struct sk_buff *skb = ctx->skbaddr;
	struct drop_key key = {};
	struct net_device *dev;
	struct sock *sk;
	__u64 *count;

	key.reason = ctx->reason;
	if (key.reason == consumed_reason)
		return 0;
	sk = BPF_CORE_READ(skb, sk);
	if (!sk && bpf_core_field_exists(ctx->rx_sk))
		sk = ctx->rx_sk;
	if (sk)
		key.cgroup_id = pp_sock_cgroup_id(sk);
	if (!key.cgroup_id) {
		dev = BPF_CORE_READ(skb, dev);
		if (dev)
			key.netns_inode = BPF_CORE_READ(dev, nd_net.net, ns.inum);
		else if (sk)
			key.netns_inode = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}

	count = pp_lookup_or_init(&drop_counts, &key, &zero_count);
	if (count)
		*count += 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
