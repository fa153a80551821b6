// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* DNS collector: queries a workload sends and the answers it receives,
 * parsed at TC (UDP and TCP, IPv4 and IPv6, to the configured server ports),
 * counted per workload by query type and response code, and the time from a
 * query to its answer as a log2 histogram. A query waits in a bounded LRU
 * (dns_pending) keyed by its id and 5-tuple until its answer comes;
 * userspace sweeps the entries older than the timeout into dns_timeouts.
 * Only the client side counts: a query a workload receives (it is the
 * server) is not its query. It only observes: every packet continues. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "probepilot.h"

#define TC_ACT_UNSPEC (-1)
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_HLEN 14
#define DNS_HEADER_LEN 12
#define DNS_PORTS_MAX 8
/* Labels of a question name walked at most: a name is at most 255 bytes, so 128 labels. */
#define DNS_LABELS_MAX 128

/* Mirrors src/collectors/dns-decode.ts. */
enum attribution { ATTR_PEER_WORKLOAD = 0, ATTR_SOCKET = 1 };

/* Set by userspace before load (collectors.dns.ports). */
const volatile __u16 dns_ports[DNS_PORTS_MAX] = { 53 };
const volatile __u32 dns_port_count = 1;

/* The same layout as net.bpf.c's net_ifaces, written by userspace per interface. */
struct iface_config {
	__u8 attribution;
	__u8 l3_offset;
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct iface_config);
} dns_ifaces SEC(".maps");

/* Who asked: a cgroup (node interfaces, egress) or the veth of a pod. */
struct dns_workload {
	__u64 cgroup_id;
	__u32 ifindex;
	__u32 pad;
};

struct dns_code_key {
	__u64 cgroup_id;
	__u32 ifindex;
	__u16 code; /* qtype of a request (0: a type not named), rcode of a response */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.dns.maxEntries) */
	__type(key, struct dns_code_key);
	__type(value, __u64);
} dns_requests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.dns.maxEntries) */
	__type(key, struct dns_code_key);
	__type(value, __u64);
} dns_responses SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.dns.maxEntries) */
	__type(key, struct dns_workload);
	__type(value, struct pp_hist);
} dns_latency SEC(".maps");

/* Written by userspace only, when it sweeps unanswered queries out of dns_pending. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.dns.maxEntries) */
	__type(key, struct dns_workload);
	__type(value, __u64);
} dns_timeouts SEC(".maps");

/* A query as its answer will name it: addresses and ports from the client's side. */
struct dns_query_key {
	__u8 family;
	__u8 protocol;
	__u16 id;
	__u16 client_port;
	__u16 server_port;
	__u8 client[16];
	__u8 server[16];
};

struct dns_pending_value {
	__u64 sent_ns;
	struct dns_workload workload;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.dns.maxPending) */
	__type(key, struct dns_query_key);
	__type(value, struct dns_pending_value);
} dns_pending SEC(".maps");

static const __u64 zero_count;
static const struct pp_hist zero_hist;

struct dns_packet {
	struct dns_query_key tuple; /* as the packet carries it: client = source */
	__u32 dns_offset;
	__u16 flags;
};

static __always_inline bool is_dns_port(__u16 port)
{
#pragma unroll
	for (int i = 0; i < DNS_PORTS_MAX; i++) {
		if (i >= dns_port_count)
			break;
		if (dns_ports[i] == port)
			return true;
	}
	return false;
}

/* Fills the addresses, ports and where the DNS header starts; false when the packet is no DNS candidate. */
static __always_inline bool parse_packet(struct __sk_buff *skb, __u32 l3, struct dns_packet *p)
{
	__u32 l4;
	__u8 ip_proto;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 vihl;
		__u16 frag;

		if (bpf_skb_load_bytes(skb, l3, &vihl, 1) || bpf_skb_load_bytes(skb, l3 + 6, &frag, 2) ||
		    bpf_skb_load_bytes(skb, l3 + 9, &ip_proto, 1))
			return false;
		/* a later fragment has no L4 header */
		if (bpf_ntohs(frag) & 0x1fff)
			return false;
		p->tuple.family = 4;
		if (bpf_skb_load_bytes(skb, l3 + 12, p->tuple.client, 4) || bpf_skb_load_bytes(skb, l3 + 16, p->tuple.server, 4))
			return false;
		l4 = l3 + (vihl & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		/* extension headers before UDP/TCP are rare for DNS: such packets are not parsed */
		if (bpf_skb_load_bytes(skb, l3 + 6, &ip_proto, 1))
			return false;
		p->tuple.family = 6;
		if (bpf_skb_load_bytes(skb, l3 + 8, p->tuple.client, 16) || bpf_skb_load_bytes(skb, l3 + 24, p->tuple.server, 16))
			return false;
		l4 = l3 + 40;
	} else {
		return false;
	}

	__be16 ports[2];

	if (ip_proto != IPPROTO_UDP && ip_proto != IPPROTO_TCP)
		return false;
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
		return false;
	p->tuple.protocol = ip_proto;
	p->tuple.client_port = bpf_ntohs(ports[0]);
	p->tuple.server_port = bpf_ntohs(ports[1]);
	if (ip_proto == IPPROTO_UDP) {
		p->dns_offset = l4 + 8;
	} else {
		__u8 doff;

		if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1))
			return false;
		/* DNS over TCP: a 2-byte length, then the message */
		p->dns_offset = l4 + (doff >> 4) * 4 + 2;
	}
	if (skb->len < p->dns_offset + DNS_HEADER_LEN)
		return false;
	__be16 header[2];

	if (bpf_skb_load_bytes(skb, p->dns_offset, header, sizeof(header)))
		return false;
	p->tuple.id = bpf_ntohs(header[0]);
	p->flags = bpf_ntohs(header[1]);
	return true;
}

/* The query type after the first question's name; 0 when it cannot be read. */
static __always_inline __u16 question_type(struct __sk_buff *skb, __u32 offset)
{
	__be16 qtype;

	offset += DNS_HEADER_LEN;
	for (int i = 0; i < DNS_LABELS_MAX; i++) {
		__u8 len;

		if (bpf_skb_load_bytes(skb, offset, &len, 1))
			return 0;
		if (len == 0) {
			offset += 1;
			break;
		}
		/* a pointer ends a name (not expected in a question, but legal) */
		if ((len & 0xc0) == 0xc0) {
			offset += 2;
			break;
		}
		offset += len + 1;
		if (offset > 0xffff)
			return 0;
	}
	if (bpf_skb_load_bytes(skb, offset, &qtype, sizeof(qtype)))
		return 0;
	return bpf_ntohs(qtype);
}

/* Types exported by name (src/collectors/dns-decode.ts); others fold into 0 so the map stays small whatever packets say. */
static __always_inline __u16 named_qtype(__u16 qtype)
{
	switch (qtype) {
	case 1:   /* A */
	case 2:   /* NS */
	case 5:   /* CNAME */
	case 6:   /* SOA */
	case 12:  /* PTR */
	case 15:  /* MX */
	case 16:  /* TXT */
	case 28:  /* AAAA */
	case 33:  /* SRV */
	case 255: /* ANY */
		return qtype;
	default:
		return 0;
	}
}

static __always_inline void count_code(void *map, const struct dns_workload *who, __u16 code)
{
	struct dns_code_key key = { .cgroup_id = who->cgroup_id, .ifindex = who->ifindex, .code = code };
	__u64 *counter = pp_lookup_or_init(map, &key, &zero_count);

	if (counter)
		*counter += 1;
}

static __always_inline void handle(struct __sk_buff *skb, bool tc_ingress)
{
	__u32 ifindex = skb->ifindex;
	struct iface_config *config = bpf_map_lookup_elem(&dns_ifaces, &ifindex);
	struct dns_packet p = {};
	struct dns_workload who = {};
	bool workload_egress;

	if (config && config->attribution == ATTR_PEER_WORKLOAD) {
		/* the host end of a veth receives what the workload sends */
		workload_egress = tc_ingress;
		who.ifindex = ifindex;
	} else {
		workload_egress = !tc_ingress;
		if (workload_egress)
			who.cgroup_id = bpf_skb_cgroup_id(skb);
	}
	if (!parse_packet(skb, config ? config->l3_offset : ETH_HLEN, &p))
		return;

	bool response = p.flags & 0x8000;

	if (!response) {
		if (!workload_egress || !is_dns_port(p.tuple.server_port))
			return;
		count_code(&dns_requests, &who, named_qtype(question_type(skb, p.dns_offset)));
		struct dns_pending_value pending = { .sent_ns = bpf_ktime_get_ns(), .workload = who };

		bpf_map_update_elem(&dns_pending, &p.tuple, &pending, BPF_ANY);
		return;
	}
	if (workload_egress || !is_dns_port(p.tuple.client_port))
		return;

	/* the answer names the client as its destination */
	struct dns_query_key query = {
		.family = p.tuple.family,
		.protocol = p.tuple.protocol,
		.id = p.tuple.id,
		.client_port = p.tuple.server_port,
		.server_port = p.tuple.client_port,
	};
	__builtin_memcpy(query.client, p.tuple.server, sizeof(query.client));
	__builtin_memcpy(query.server, p.tuple.client, sizeof(query.server));

	struct dns_pending_value *pending = bpf_map_lookup_elem(&dns_pending, &query);

	if (pending) {
		/* the answer belongs to whoever asked, also where the way in cannot say (a node interface's ingress) */
		who = pending->workload;
		__u64 elapsed = bpf_ktime_get_ns() - pending->sent_ns;
		struct pp_hist *hist = pp_lookup_or_init(&dns_latency, &who, &zero_hist);

		if (hist)
			pp_hist_record(hist, elapsed);
		bpf_map_delete_elem(&dns_pending, &query);
	}
	count_code(&dns_responses, &who, p.flags & 0xf);
}

SEC("tc")
int pp_dns_ingress(struct __sk_buff *skb)
{
	handle(skb, true);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int pp_dns_egress(struct __sk_buff *skb)
{
	handle(skb, false);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
