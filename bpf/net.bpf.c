// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Network collector: bytes and packets per workload, direction and L4
 * protocol, counted at TC on the node's interfaces and summed per CPU in the
 * kernel; and, per workload and direction, the same per peer (the flow
 * matrix); and the live 5-tuple flow table (an LRU: one lookup per packet
 * for a known flow), with SYN/FIN/RST counts per workload. It only observes: every packet continues (TC_ACT_UNSPEC, which is
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
/* Set by userspace before load: whether the 5-tuple flow table is kept. */
const volatile bool conns_enabled = true;

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

/* What the peer matrix and the flow table read of a packet, loaded once. */
struct packet {
	__u8 saddr[16]; /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport; /* network byte order; 0 when there is no port (ICMP, a later fragment) */
	__u16 dport;
	__u8 ip_proto;
	__u8 tcp_flags;
};

/* Mirrors src/collectors/network-decode.ts (connKey*). The addresses and
 * ports are the workload's (local) and the far end's (remote), so both
 * directions of a connection are one entry. */
struct conn_key {
	__u64 cgroup_id; /* as traffic_key */
	__u32 ifindex;   /* as traffic_key */
	__u8 family;
	__u8 ip_proto;
	__u16 local_port;
	__u16 remote_port;
	__u8 pad[2];
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u8 pad2[4];
};

struct conn_value {
	__u64 first_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 last_ns;
	__u64 bytes[2];   /* by direction as the workload sees it */
	__u64 packets[2];
	__u8 tcp_flags[2]; /* flags seen, by direction */
	__u8 opened_by;    /* direction of the first packet seen */
	__u8 pad[5];
};

/* Shared, not per-CPU: a flow's packets land on several CPUs, and one entry
 * per flow is what bounds the table. LRU: the idle-most flows make room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.network.flowTable.maxEntries) */
	__type(key, struct conn_key);
	__type(value, struct conn_value);
} net_conns SEC(".maps");

/* Mirrors src/collectors/network-decode.ts (tcpFlags). */
enum tcp_flag { FLAG_SYN = 0, FLAG_FIN = 1, FLAG_RST = 2 };
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

struct tcp_flag_key {
	__u64 cgroup_id; /* as traffic_key */
	__u32 ifindex;
	__u8 direction;
	__u8 flag;
	__u8 pad[2];
};

/* Control segments only: updated for the few packets that carry SYN, FIN or RST. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.network.maxEntries / 4) */
	__type(key, struct tcp_flag_key);
	__type(value, __u64);
} net_tcp_flags SEC(".maps");

static const __u64 zero_u64;

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

/* The upper-layer protocol behind IPv6 extension headers, bounded; *l4 is
 * where its header starts, 0 when it has none here (a later fragment). */
static __always_inline __u8 ipv6_l4(struct __sk_buff *skb, __u32 offset, __u32 *l4)
{
	__u8 next;

	*l4 = 0;
	if (bpf_skb_load_bytes(skb, offset + 6, &next, 1))
		return IPPROTO_RAW;
	offset += 40;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_HEADERS_MAX; i++) {
		__u8 ext[4];

		if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
		    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT)
			break;
		if (bpf_skb_load_bytes(skb, offset, ext, sizeof(ext)))
			return IPPROTO_RAW;
		if (next == IPPROTO_FRAGMENT) {
			/* the fragment header has a fixed size; only the first fragment carries ports */
			if (((ext[2] << 8) | ext[3]) & 0xFFF8)
				return ext[0];
			offset += 8;
		} else {
			offset += ((__u32)ext[1] + 1) * 8;
		}
		next = ext[0];
	}
	*l4 = offset;
	return next;
}

/* Addresses, ports and TCP flags, for the peer matrix and the flow table. */
static __always_inline int parse_packet(struct __sk_buff *skb, __u8 family, __u8 ip_proto, __u32 l3, __u32 l4, struct packet *pkt)
{
	pkt->ip_proto = ip_proto;
	if (family == FAMILY_IPV4) {
		if (bpf_skb_load_bytes(skb, l3 + 12, pkt->saddr, 4) || bpf_skb_load_bytes(skb, l3 + 16, pkt->daddr, 4))
			return -1;
	} else {
		if (bpf_skb_load_bytes(skb, l3 + 8, pkt->saddr, 32))
			return -1;
	}
	if (!l4)
		return 0;
	if (ip_proto == IPPROTO_TCP || ip_proto == IPPROTO_UDP) {
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
			return 0;
		pkt->sport = ports[0];
		pkt->dport = ports[1];
		if (ip_proto == IPPROTO_TCP && bpf_skb_load_bytes(skb, l4 + 13, &pkt->tcp_flags, 1))
			pkt->tcp_flags = 0;
	}
	return 0;
}

static __always_inline void count_tcp_flag(const struct traffic_key *traffic, __u8 flag)
{
	struct tcp_flag_key key = {
		.cgroup_id = traffic->cgroup_id,
		.ifindex = traffic->ifindex,
		.direction = traffic->direction,
		.flag = flag,
	};
	__u64 *value = pp_lookup_or_init(&net_tcp_flags, &key, &zero_u64);

	if (value)
		*value += 1;
}

/* The hot path for a known flow: one LRU lookup, then adds in place. */
static __always_inline void count_conn(struct __sk_buff *skb, const struct traffic_key *traffic, const struct packet *pkt)
{
	bool egress = traffic->direction == DIR_EGRESS;
	struct conn_key key = {
		.cgroup_id = traffic->cgroup_id,
		.ifindex = traffic->ifindex,
		.family = traffic->family,
		.ip_proto = pkt->ip_proto,
		.local_port = egress ? pkt->sport : pkt->dport,
		.remote_port = egress ? pkt->dport : pkt->sport,
	};
	__u64 now = bpf_ktime_get_ns();
	struct conn_value *value;

	__builtin_memcpy(key.local_addr, egress ? pkt->saddr : pkt->daddr, 16);
	__builtin_memcpy(key.remote_addr, egress ? pkt->daddr : pkt->saddr, 16);
	value = bpf_map_lookup_elem(&net_conns, &key);
	if (!value) {
		struct conn_value fresh = { .first_ns = now, .last_ns = now, .opened_by = traffic->direction };

		/* A racing CPU may have created it: then its entry stays, and we add to it. */
		bpf_map_update_elem(&net_conns, &key, &fresh, BPF_NOEXIST);
		value = bpf_map_lookup_elem(&net_conns, &key);
		if (!value)
			return;
	}
	if (egress) {
		__sync_fetch_and_add(&value->bytes[DIR_EGRESS], skb->len);
		__sync_fetch_and_add(&value->packets[DIR_EGRESS], 1);
	} else {
		__sync_fetch_and_add(&value->bytes[DIR_INGRESS], skb->len);
		__sync_fetch_and_add(&value->packets[DIR_INGRESS], 1);
	}
	if (value->last_ns < now)
		value->last_ns = now;
	if (pkt->tcp_flags) {
		/* A plain OR (no 8-bit atomics before BPF v3): one direction's
		 * control segments come one at a time. */
		__u8 *seen = egress ? &value->tcp_flags[DIR_EGRESS] : &value->tcp_flags[DIR_INGRESS];

		if ((*seen & pkt->tcp_flags) != pkt->tcp_flags)
			*seen |= pkt->tcp_flags;
		if (pkt->tcp_flags & TCP_SYN)
			count_tcp_flag(traffic, FLAG_SYN);
		if (pkt->tcp_flags & TCP_FIN)
			count_tcp_flag(traffic, FLAG_FIN);
		if (pkt->tcp_flags & TCP_RST)
			count_tcp_flag(traffic, FLAG_RST);
	}
}

/* The peer is the far end as the workload sees it: the destination of what
 * it sends, the source of what it receives. */
static __always_inline void count_flow(struct __sk_buff *skb, const struct traffic_key *traffic, const struct packet *pkt)
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

	__builtin_memcpy(peer.addr, peer_is_destination ? pkt->daddr : pkt->saddr, sizeof(peer.addr));
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
	__u32 l3 = config ? config->l3_offset : ETH_HLEN, l4 = 0;
	__u8 ip_proto = IPPROTO_RAW;

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
		__u8 header[8];

		key.family = FAMILY_IPV4;
		if (!bpf_skb_load_bytes(skb, l3, header, sizeof(header)) && !bpf_skb_load_bytes(skb, l3 + 9, &ip_proto, 1)) {
			/* a later fragment carries no ports */
			if (!(((header[6] << 8) | header[7]) & 0x1FFF))
				l4 = l3 + (header[0] & 0x0F) * 4;
		}
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		key.family = FAMILY_IPV6;
		ip_proto = ipv6_l4(skb, l3, &l4);
	}
	key.protocol = key.family == FAMILY_OTHER ? PROTO_OTHER : classify_l4(ip_proto);

	struct traffic_value *value = pp_lookup_or_init(&net_traffic, &key, &zero_traffic);
	if (value) {
		value->bytes += skb->len;
		value->packets += 1;
	}
	if ((!flows_enabled && !conns_enabled) || key.family == FAMILY_OTHER)
		return;
	struct packet pkt = {};
	if (parse_packet(skb, key.family, ip_proto, l3, l4, &pkt))
		return;
	if (flows_enabled)
		count_flow(skb, &key, &pkt);
	if (conns_enabled)
		count_conn(skb, &key, &pkt);
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
