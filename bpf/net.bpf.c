// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Network collector: bytes and packets per workload, direction and L4
 * protocol, counted at TC on the node's interfaces and summed per CPU in the
 * kernel. It only observes: every packet continues (TC_ACT_UNSPEC, which is
 * also TCX_NEXT). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "probepilot.h"

#define TC_ACT_UNSPEC (-1)
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_HLEN 14
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_DSTOPTS 60
#define IPPROTO_ICMPV6 58
#define IPV6_EXT_HEADERS_MAX 4

/* Mirrors src/collectors/network-decode.ts. */
enum direction { DIR_INGRESS = 0, DIR_EGRESS = 1 };
enum protocol { PROTO_OTHER = 0, PROTO_TCP = 1, PROTO_UDP = 2, PROTO_ICMP = 3 };
enum family { FAMILY_OTHER = 0, FAMILY_IPV4 = 4, FAMILY_IPV6 = 6 };

/* How userspace told us to read an interface. */
enum attribution {
	/* host end of a veth: everything on it belongs to the workload behind it */
	ATTR_PEER_WORKLOAD = 0,
	/* an interface of the node itself: the sending socket's cgroup, when there is one */
	ATTR_SOCKET = 1,
};

struct iface_config {
	__u8 attribution;
	__u8 l3_offset; /* 14 on Ethernet, 0 on L3 devices (tun, wireguard) */
	__u8 pad[2];
};

struct traffic_key {
	__u64 cgroup_id; /* 0: attribute by ifindex (or unattributed) */
	__u32 ifindex;   /* 0 unless attribution is by interface */
	__u8 direction;  /* as seen by the workload */
	__u8 protocol;
	__u8 family;
	__u8 pad;
};

struct traffic_value {
	__u64 bytes;
	__u64 packets;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.network.maxEntries) */
	__type(key, struct traffic_key);
	__type(value, struct traffic_value);
} net_traffic SEC(".maps");

static const struct traffic_value zero_traffic;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct iface_config);
} net_ifaces SEC(".maps");

static __always_inline __u8 classify_l4(__u8 ip_proto)
{
	switch (ip_proto) {
	case IPPROTO_TCP:
		return PROTO_TCP;
	case IPPROTO_UDP:
		return PROTO_UDP;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return PROTO_ICMP;
	default:
		return PROTO_OTHER;
	}
}

/* The upper-layer protocol behind IPv6 extension headers, bounded. */
static __always_inline __u8 ipv6_l4(struct __sk_buff *skb, __u32 offset)
{
	__u8 next;

	if (bpf_skb_load_bytes(skb, offset + 6, &next, 1))
		return PROTO_OTHER;
	offset += 40;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_HEADERS_MAX; i++) {
		__u8 ext[2];

		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
		    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT)
			break;
		if (bpf_skb_load_bytes(skb, offset, ext, sizeof(ext)))
			return PROTO_OTHER;
		/* the fragment header has a fixed size; the others say theirs in 8-byte units */
		offset += next == IPPROTO_FRAGMENT ? 8 : ((__u32)ext[1] + 1) * 8;
		next = ext[0];
	}
	return classify_l4(next);
}

static __always_inline void count(struct __sk_buff *skb, bool tc_ingress)
{
	__u32 ifindex = skb->ifindex;
	struct iface_config *config = bpf_map_lookup_elem(&net_ifaces, &ifindex);
	struct traffic_key key = {};
	__u32 l3 = config ? config->l3_offset : ETH_HLEN;
	__u8 ip_proto;

	if (config && config->attribution == ATTR_PEER_WORKLOAD) {
		key.ifindex = ifindex;
		/* the host end receives what the workload sends */
		key.direction = tc_ingress ? DIR_EGRESS : DIR_INGRESS;
	} else {
		key.direction = tc_ingress ? DIR_INGRESS : DIR_EGRESS;
		/* on ingress no socket is known yet: the packet stays unattributed */
		if (!tc_ingress)
			key.cgroup_id = bpf_skb_cgroup_id(skb);
	}

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		key.family = FAMILY_IPV4;
		key.protocol = bpf_skb_load_bytes(skb, l3 + 9, &ip_proto, 1) ? PROTO_OTHER : classify_l4(ip_proto);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		key.family = FAMILY_IPV6;
		key.protocol = ipv6_l4(skb, l3);
	}

	struct traffic_value *value = pp_lookup_or_init(&net_traffic, &key, &zero_traffic);
	if (value) {
		value->bytes += skb->len;
		value->packets += 1;
	}
}

SEC("tc")
int pp_net_ingress(struct __sk_buff *skb)
{
	count(skb, true);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int pp_net_egress(struct __sk_buff *skb)
{
	count(skb, false);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
