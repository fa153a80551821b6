// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Network collector: bytes and packets per workload, direction and L4
 * protocol, counted at TC on the node's interfaces and summed per CPU in the
 * kernel; and, per workload and direction, the same per peer (the flow
 * matrix). It only observes: every packet continues (TC_ACT_UNSPEC, which is
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

/* Set by userspace before load: whether the peer matrix is counted at all. */
const volatile bool flows_enabled = true;

/* Peer classes; userspace numbers configured CIDR names from PEER_FIRST_NAMED. */
enum peer_class { PEER_WORLD = 0, PEER_POD = 1, PEER_HOST = 2, PEER_NODE = 3, PEER_FIRST_NAMED = 4 };

struct peer_address {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct peer_prefix {
	__u32 prefixlen; /* bits of what follows: 8 for the family, then the address's */
	__u8 family;
	__u8 addr[16];
};

struct flow_key {
	__u64 cgroup_id; /* as traffic_key */
	__u32 ifindex;   /* as traffic_key */
	__u8 direction;
	__u8 family;
	__u16 peer_class;
	/* Only pods keep their address: every other peer folds into its class, so
	 * the map stays bounded by workloads x known pods whatever the world sends. */
	__u8 peer_addr[16];
};

/* Exact addresses of known peers (pods, the node's own addresses): one hash
 * lookup per packet for the common case. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.network.flows.maxPeers) */
	__type(key, struct peer_address);
	__type(value, __u16);
} net_peer_addresses SEC(".maps");

/* Configured CIDR names, longest prefix wins; only looked up on a miss above. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_prefix);
	__type(value, __u16);
} net_peer_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.network.flows.maxEntries) */
	__type(key, struct flow_key);
	__type(value, struct traffic_value);
} net_flows SEC(".maps");

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

/* The peer is the far end as the workload sees it: the destination of what
 * it sends, the source of what it receives. */
static __always_inline void count_flow(struct __sk_buff *skb, const struct traffic_key *traffic, __u32 l3)
{
	bool peer_is_destination = traffic->direction == DIR_EGRESS;
	struct flow_key key = {
		.cgroup_id = traffic->cgroup_id,
		.ifindex = traffic->ifindex,
		.direction = traffic->direction,
		.family = traffic->family,
	};
	struct peer_address peer = { .family = traffic->family };
	__u16 *class;

	if (traffic->family == FAMILY_IPV4) {
		if (bpf_skb_load_bytes(skb, l3 + (peer_is_destination ? 16 : 12), peer.addr, 4))
			return;
	} else {
		if (bpf_skb_load_bytes(skb, l3 + (peer_is_destination ? 24 : 8), peer.addr, 16))
			return;
	}

	class = bpf_map_lookup_elem(&net_peer_addresses, &peer);
	if (!class) {
		struct peer_prefix prefix = {
			.prefixlen = 8 + (traffic->family == FAMILY_IPV4 ? 32 : 128),
			.family = traffic->family,
		};

		__builtin_memcpy(prefix.addr, peer.addr, sizeof(prefix.addr));
		class = bpf_map_lookup_elem(&net_peer_cidrs, &prefix);
	}
	key.peer_class = class ? *class : PEER_WORLD;
	if (key.peer_class == PEER_POD)
		__builtin_memcpy(key.peer_addr, peer.addr, sizeof(key.peer_addr));

	struct traffic_value *value = pp_lookup_or_init(&net_flows, &key, &zero_traffic);
	if (value) {
		value->bytes += skb->len;
		value->packets += 1;
	}
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
	if (flows_enabled && key.family != FAMILY_OTHER)
		count_flow(skb, &key, l3);
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
