// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Per-event tracing: one ring buffer for every kind of event, filtered in
 * the kernel (event kinds, cgroups, syscall numbers) and rate-limited per
 * cgroup, so a trace costs nothing while no one traces (userspace attaches
 * a kind's programs only while someone subscribes to it) and one noisy
 * workload cannot flood userspace or crowd out the others. Metrics never
 * depend on these events: counters stay in the collectors' maps. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_SYN_SENT 2

/* Mirrors src/events/records.ts. */
enum pp_event_kind {
	PP_EVENT_SYSCALL = 1,
	PP_EVENT_TCP = 2,
};

enum pp_tcp_event_type {
	PP_TCP_STATE = 1,
	PP_TCP_RETRANSMIT = 2,
	PP_TCP_RESET_RECEIVED = 3,
};

#define SYSCALL_NR_MAX 512 /* mirrors syscallNrMax in src/collectors/syscall-table.ts */

struct pp_event {
	__u64 time_ns; /* bpf_ktime_get_ns */
	__u64 cgroup_id;
	__u32 pid; /* 0 when no task of the workload is on the CPU (softirq) */
	__u32 tid;
	__u32 kind;
	__u32 pad;
	char comm[16];
};

struct pp_syscall_event {
	struct pp_event header;
	__u32 nr;
	__u32 pad;
	__s64 ret;
	__u64 duration_ns;
	__u64 args[6];
};

struct pp_tcp_event {
	struct pp_event header;
	__u8 type;
	__u8 family;
	__u8 old_state;
	__u8 new_state;
	__u16 sport; /* host order, as the tracepoints give them */
	__u16 dport;
	__u8 saddr[16]; /* network order; IPv4 in the first 4 bytes */
	__u8 daddr[16];
};

/* Written by userspace whenever subscriptions change. */
struct trace_config {
	__u32 cgroup_filter_kinds; /* bit (1 << kind): only cgroups in trace_cgroups */
	__u32 syscall_filter;      /* 1: only syscalls flagged in trace_syscalls */
	__u64 event_cost_ns;       /* token bucket: credit one event costs (1e9 / rate); 0: no limit */
	__u64 burst_ns;            /* most credit a cgroup can save up */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* sized by userspace (events.ringBufferBytes) */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_config);
} trace_config SEC(".maps");

/* cgroup id → bit (1 << kind) of every kind that traces it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} trace_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SYSCALL_NR_MAX);
	__type(key, __u32);
	__type(value, __u8);
} trace_syscalls SEC(".maps");

struct rate_bucket {
	__u64 credit_ns;
	__u64 last_ns;
};

/* LRU: cgroups that stopped making events age out by themselves. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rate_bucket);
} rate_buckets SEC(".maps");

/* A traced syscall between entry and exit: what only entry knows. */
struct pending_syscall {
	__u64 start_ns;
	__u64 args[6];
	__u32 nr; /* an exit of another syscall (the entry's exit was missed) is no match */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct pending_syscall);
} pending_syscalls SEC(".maps");

static __always_inline struct trace_config *trace_settings(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&trace_config, &zero);
}

static __always_inline bool cgroup_wanted(struct trace_config *cfg, __u64 cgroup_id, __u32 kind)
{
	__u32 *kinds;

	if (!(cfg->cgroup_filter_kinds & (1u << kind)))
		return true;
	kinds = bpf_map_lookup_elem(&trace_cgroups, &cgroup_id);
	return kinds && (*kinds & (1u << kind));
}

/* Token bucket per cgroup, credit in nanoseconds of refill time. Racing
 * CPUs may both spend the same credit: the bound is approximate by a few
 * events, never by a factor, and needs no lock on the hot path. */
static __always_inline bool within_rate(struct trace_config *cfg, __u64 cgroup_id)
{
	struct rate_bucket *bucket, fresh;
	__u64 now, credit;

	if (!cfg->event_cost_ns)
		return true;
	now = bpf_ktime_get_ns();
	bucket = bpf_map_lookup_elem(&rate_buckets, &cgroup_id);
	if (!bucket) {
		fresh.credit_ns = cfg->burst_ns - cfg->event_cost_ns;
		fresh.last_ns = now;
		bpf_map_update_elem(&rate_buckets, &cgroup_id, &fresh, BPF_ANY);
		return true;
	}
	/* Another CPU may have moved last_ns past our now: no refill then, and
	 * last_ns never goes back (a wrapped difference would fill the bucket). */
	credit = bucket->credit_ns;
	if (now > bucket->last_ns) {
		credit += now - bucket->last_ns;
		bucket->last_ns = now;
	}
	if (credit > cfg->burst_ns)
		credit = cfg->burst_ns;
	if (credit < cfg->event_cost_ns) {
		bucket->credit_ns = credit;
		pp_stat_inc(PP_STAT_EVENTS_RATE_LIMITED);
		return false;
	}
	bucket->credit_ns = credit - cfg->event_cost_ns;
	return true;
}

static __always_inline void fill_header(struct pp_event *header, __u64 cgroup_id, __u32 kind, bool with_task)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	header->time_ns = bpf_ktime_get_ns();
	header->cgroup_id = cgroup_id;
	header->kind = kind;
	header->pad = 0;
	if (with_task) {
		header->pid = pid_tgid >> 32;
		header->tid = (__u32)pid_tgid;
		bpf_get_current_comm(header->comm, sizeof(header->comm));
	} else {
		header->pid = 0;
		header->tid = 0;
		__builtin_memset(header->comm, 0, sizeof(header->comm));
	}
}

SEC("tp/raw_syscalls/sys_enter")
int pp_trace_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct trace_config *cfg = trace_settings();
	struct pending_syscall pending;
	__u32 nr = (__u32)ctx->id, tid;
	__u64 cgroup_id;
	__u8 *wanted;

	if (!cfg)
		return 0;
	if (cfg->syscall_filter) {
		wanted = bpf_map_lookup_elem(&trace_syscalls, &nr);
		if (!wanted || !*wanted)
			return 0;
	}
	cgroup_id = bpf_get_current_cgroup_id();
	if (!cgroup_wanted(cfg, cgroup_id, PP_EVENT_SYSCALL) || !within_rate(cfg, cgroup_id))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	pending.start_ns = bpf_ktime_get_ns();
	pending.nr = nr;
	pending.pad = 0;
	/* One load per field: the verifier refuses a context pointer moved by an offset. */
	pending.args[0] = ctx->args[0];
	pending.args[1] = ctx->args[1];
	pending.args[2] = ctx->args[2];
	pending.args[3] = ctx->args[3];
	pending.args[4] = ctx->args[4];
	pending.args[5] = ctx->args[5];
	bpf_map_update_elem(&pending_syscalls, &tid, &pending, BPF_ANY);
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int pp_trace_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending_syscall *pending = bpf_map_lookup_elem(&pending_syscalls, &tid);
	struct pp_syscall_event *event;

	if (!pending)
		return 0;
	if (pending->nr != (__u32)ctx->id) {
		bpf_map_delete_elem(&pending_syscalls, &tid);
		return 0;
	}
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		pp_stat_inc(PP_STAT_EVENTS_RINGBUF_FULL);
		bpf_map_delete_elem(&pending_syscalls, &tid);
		return 0;
	}
	fill_header(&event->header, bpf_get_current_cgroup_id(), PP_EVENT_SYSCALL, true);
	event->nr = (__u32)ctx->id;
	event->pad = 0;
	event->ret = ctx->ret;
	event->duration_ns = event->header.time_ns - pending->start_ns;
	__builtin_memcpy(event->args, pending->args, sizeof(event->args));
	bpf_ringbuf_submit(event, 0);
	bpf_map_delete_elem(&pending_syscalls, &tid);
	return 0;
}

/* Sockets are attributed like the tcp collector does: to the cgroup that
 * created them, whatever runs on the CPU. */
static __always_inline void emit_tcp(__u8 type, struct sock *sk, int family, __u8 old_state, __u8 new_state, __u16 sport,
				     __u16 dport, const __u8 *saddr4, const __u8 *daddr4, const __u8 *saddr6, const __u8 *daddr6)
{
	struct trace_config *cfg = trace_settings();
	struct pp_tcp_event *event;
	__u64 cgroup_id;

	if (!cfg || (family != AF_INET && family != AF_INET6))
		return;
	cgroup_id = pp_sock_cgroup_id(sk);
	if (!cgroup_wanted(cfg, cgroup_id, PP_EVENT_TCP) || !within_rate(cfg, cgroup_id))
		return;
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		pp_stat_inc(PP_STAT_EVENTS_RINGBUF_FULL);
		return;
	}
	/* connect() runs in the caller's context; everything else may be softirq. */
	fill_header(&event->header, cgroup_id, PP_EVENT_TCP, type == PP_TCP_STATE && new_state == TCP_SYN_SENT);
	event->type = type;
	event->family = family;
	event->old_state = old_state;
	event->new_state = new_state;
	event->sport = sport;
	event->dport = dport;
	__builtin_memset(event->saddr, 0, sizeof(event->saddr));
	__builtin_memset(event->daddr, 0, sizeof(event->daddr));
	if (family == AF_INET) {
		__builtin_memcpy(event->saddr, saddr4, 4);
		__builtin_memcpy(event->daddr, daddr4, 4);
	} else {
		__builtin_memcpy(event->saddr, saddr6, 16);
		__builtin_memcpy(event->daddr, daddr6, 16);
	}
	bpf_ringbuf_submit(event, 0);
}

/* The tracepoints' records are copied to the stack first: the verifier
 * refuses a context pointer moved by an offset, as the address copies need. */
SEC("tp/sock/inet_sock_set_state")
int pp_trace_tcp_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct trace_event_raw_inet_sock_set_state tp;

	if (bpf_probe_read_kernel(&tp, sizeof(tp), ctx) || tp.protocol != IPPROTO_TCP)
		return 0;
	emit_tcp(PP_TCP_STATE, (struct sock *)tp.skaddr, tp.family, tp.oldstate, tp.newstate, tp.sport, tp.dport, tp.saddr,
		 tp.daddr, tp.saddr_v6, tp.daddr_v6);
	return 0;
}

SEC("tp/tcp/tcp_retransmit_skb")
int pp_trace_tcp_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	struct trace_event_raw_tcp_retransmit_skb tp;

	if (bpf_probe_read_kernel(&tp, sizeof(tp), ctx))
		return 0;
	emit_tcp(PP_TCP_RETRANSMIT, (struct sock *)tp.skaddr, tp.family, tp.state, tp.state, tp.sport, tp.dport, tp.saddr,
		 tp.daddr, tp.saddr_v6, tp.daddr_v6);
	return 0;
}

SEC("tp/tcp/tcp_receive_reset")
int pp_trace_tcp_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	struct trace_event_raw_tcp_event_sk tp;
	struct sock *sk;
	__u8 state;

	if (bpf_probe_read_kernel(&tp, sizeof(tp), ctx))
		return 0;
	sk = (struct sock *)tp.skaddr;
	state = BPF_CORE_READ(sk, __sk_common.skc_state);
	emit_tcp(PP_TCP_RESET_RECEIVED, sk, tp.family, state, state, tp.sport, tp.dport, tp.saddr, tp.daddr, tp.saddr_v6,
		 tp.daddr_v6);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
