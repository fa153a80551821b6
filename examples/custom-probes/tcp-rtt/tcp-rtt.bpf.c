// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Custom probe example: smoothed TCP RTT per workload and peer address.
 * tcp_probe fires for every segment tcp_rcv_established takes, in softirq
 * on whatever task the CPU runs: the socket's own cgroup is the workload.
 * IPv4 peers are stored v4-mapped in the 16-byte address, so one key holds
 * both families. Layouts mirror tcp-rtt.yaml. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

#define AF_INET 2
#define AF_INET6 10

struct rtt_key {
	__u64 cgroup_id;
	__u8 peer[16];
};

struct rtt_value {
	struct pp_hist srtt;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rtt_key);
	__type(value, struct rtt_value);
} rtt SEC(".maps");

static const struct rtt_value zero_rtt;

SEC("tp_btf/tcp_probe")
int BPF_PROG(pp_tcp_probe, struct sock *sk, const struct sk_buff *skb)
{
	struct rtt_key key = { .cgroup_id = pp_sock_cgroup_id(sk) };
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	/* srtt_us holds 8 × the smoothed RTT in µs; 0 until the first sample. */
	__u32 srtt = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
	struct rtt_value *value;

	if (!srtt)
		return 0;
	if (family == AF_INET) {
		__be32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		key.peer[10] = 0xff;
		key.peer[11] = 0xff;
		__builtin_memcpy(&key.peer[12], &daddr, 4);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&key.peer, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		return 0;
	}
	value = pp_lookup_or_init(&rtt, &key, &zero_rtt);
	if (value)
		pp_hist_record(&value->srtt, (__u64)srtt * 1000);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
