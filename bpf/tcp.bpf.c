// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* TCP collector: connection life cycle (how each connect ended, how long
 * each connection lived), connect latency, smoothed RTT, retransmits and
 * resets per workload. Most of these fire in softirq, on
 * whatever task the CPU was running: the socket's own cgroup (the workload
 * that created it, or the listener's for accepted connections) is the
 * workload, never the current task. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_FIN_WAIT2 5
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_CLOSING 11
#define ECONNRESET 104
#define ECONNREFUSED 111
#define EPIPE 32

/* Mirrors valueLayout in src/collectors/tcp.ts. */
struct tcp_stats_value {
	__u64 opened_client;   /* SYN_SENT → ESTABLISHED */
	__u64 opened_server;   /* SYN_RECV → ESTABLISHED */
	__u64 left_established; /* ESTABLISHED → anything: active = opened - left */
	__u64 retransmits; /* segments */
	__u64 resets_sent;
	__u64 resets_received;
	struct pp_hist connect_latency;
	struct pp_hist rtt; /* smoothed RTT when a connection leaves ESTABLISHED */
	/* How connects and connections ended (established = opened_client + opened_server). */
	__u64 refused;   /* SYN_SENT → CLOSE on a reset (or an ICMP refusal): sk_err ECONNREFUSED */
	__u64 timed_out; /* SYN_SENT → CLOSE otherwise: SYN retries ran out, or the caller gave up */
	__u64 reset;     /* an established connection ended by a reset, received or sent */
	struct pp_hist duration; /* ESTABLISHED until CLOSE */
};

struct tcp_stats_key {
	__u64 cgroup_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.tcp.maxEntries) */
	__type(key, struct tcp_stats_key);
	__type(value, struct tcp_stats_value);
} tcp_stats SEC(".maps");

/* SYN sent, by socket: LRU so connects that never finish cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.tcp.maxConnecting) */
	__type(key, __u64);
	__type(value, __u64);
} tcp_connecting SEC(".maps");

/* When each connection became ESTABLISHED, by socket: for its duration at CLOSE. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* sized by userspace (collectors.tcp.maxEstablished) */
	__type(key, __u64);
	__type(value, __u64);
} tcp_established SEC(".maps");

static const struct tcp_stats_value zero_tcp_stats;

/* States a connection reaches only after its handshake. */
static __always_inline bool synchronized(int state)
{
	return state == TCP_ESTABLISHED || state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 ||
	       state == TCP_CLOSE_WAIT || state == TCP_LAST_ACK || state == TCP_CLOSING;
}

static __always_inline void established(__u64 sk_id)
{
	__u64 now = bpf_ktime_get_ns();

	bpf_map_update_elem(&tcp_established, &sk_id, &now, BPF_ANY);
}

static __always_inline struct tcp_stats_value *stats_of(struct sock *sk)
{
	struct tcp_stats_key key = { .cgroup_id = pp_sock_cgroup_id(sk) };

	return pp_lookup_or_init(&tcp_stats, &key, &zero_tcp_stats);
}

SEC("tp/sock/inet_sock_set_state")
int pp_tcp_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct sock *sk = (struct sock *)ctx->skaddr;
	__u64 sk_id = (__u64)sk, now, *started;
	int oldstate = ctx->oldstate, newstate = ctx->newstate;
	struct tcp_stats_value *value;

	if (ctx->protocol != IPPROTO_TCP || (ctx->family != AF_INET && ctx->family != AF_INET6))
		return 0;

	if (newstate == TCP_SYN_SENT) {
		now = bpf_ktime_get_ns();
		bpf_map_update_elem(&tcp_connecting, &sk_id, &now, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT) {
		started = bpf_map_lookup_elem(&tcp_connecting, &sk_id);
		if (newstate == TCP_ESTABLISHED) {
			established(sk_id);
			value = stats_of(sk);
			if (value) {
				value->opened_client += 1;
				if (started)
					pp_hist_record(&value->connect_latency, bpf_ktime_get_ns() - *started);
			}
		} else if (newstate == TCP_CLOSE) {
			/* tcp_reset and tcp_write_err set sk_err before tcp_done moves the socket to CLOSE. */
			value = stats_of(sk);
			if (value) {
				if (BPF_CORE_READ(sk, sk_err) == ECONNREFUSED)
					value->refused += 1;
				else
					value->timed_out += 1;
			}
		}
		if (started)
			bpf_map_delete_elem(&tcp_connecting, &sk_id);
		return 0;
	}
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		established(sk_id);
		value = stats_of(sk);
		if (value)
			value->opened_server += 1;
		return 0;
	}
	if (oldstate == TCP_ESTABLISHED) {
		value = stats_of(sk);
		if (value) {
			value->left_established += 1;
			/* srtt_us holds 8 × the smoothed RTT in µs. */
			pp_hist_record(&value->rtt, (__u64)(BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3) * 1000);
		}
	}
	if (newstate == TCP_CLOSE) {
		started = bpf_map_lookup_elem(&tcp_established, &sk_id);
		if (started) {
			value = stats_of(sk);
			if (value)
				pp_hist_record(&value->duration, bpf_ktime_get_ns() - *started);
			bpf_map_delete_elem(&tcp_established, &sk_id);
		}
	}
	return 0;
}

/* Segments, as TcpRetransSegs counts them: a retransmitted GSO skb carries
 * several (tcp_skb_pcount, kept in the skb's control block). */
SEC("tp/tcp/tcp_retransmit_skb")
int pp_tcp_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx->skbaddr;
	struct tcp_skb_cb *cb = (struct tcp_skb_cb *)__builtin_preserve_access_index(&skb->cb);
	struct tcp_stats_value *value = stats_of((struct sock *)ctx->skaddr);
	__u16 segments = BPF_CORE_READ(cb, tcp_gso_segs);

	if (value)
		value->retransmits += segments ? segments : 1;
	return 0;
}

/* A SYN-ACK sent again for a connection still being accepted (counted in
 * TcpRetransSegs too): the listener's workload. */
SEC("tp/tcp/tcp_retransmit_synack")
int pp_tcp_retransmit_synack(struct trace_event_raw_tcp_retransmit_synack *ctx)
{
	struct tcp_stats_value *value = stats_of((struct sock *)ctx->skaddr);

	if (value)
		value->retransmits += 1;
	return 0;
}

/* A reset answering a segment no socket wants (a closed port) has no
 * socket: it is the node's (cgroup 0). */
SEC("tp/tcp/tcp_send_reset")
int pp_tcp_send_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	struct sock *sk = (struct sock *)ctx->skaddr;
	struct tcp_stats_value *value = stats_of(sk);
	int state, err;

	if (!value)
		return 0;
	value->resets_sent += 1;
	if (!sk || !pp_sock_cgroup_id(sk))
		return 0; /* a reply for no socket, a minisocket, a namespace's own socket */
	/* An abort (close with unread data, SO_LINGER 0) moves to CLOSE before its
	 * reset leaves. A socket that tcp_reset already closed (data after our FIN)
	 * was counted there: its sk_err says so. */
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	err = BPF_CORE_READ(sk, sk_err);
	if ((synchronized(state) || state == TCP_CLOSE) && err != ECONNRESET && err != EPIPE)
		value->reset += 1;
	return 0;
}

SEC("tp/tcp/tcp_receive_reset")
int pp_tcp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	struct sock *sk = (struct sock *)ctx->skaddr;
	struct tcp_stats_value *value = stats_of(sk);

	if (!value)
		return 0;
	value->resets_received += 1;
	/* In SYN_SENT this is a refusal, counted at CLOSE. */
	if (synchronized(BPF_CORE_READ(sk, __sk_common.skc_state)))
		value->reset += 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
