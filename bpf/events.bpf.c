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
#define TCP_LISTEN 10

/* Mirrors src/events/records.ts. */
enum pp_event_kind {
	PP_EVENT_SYSCALL = 1,
	PP_EVENT_TCP = 2,
	PP_EVENT_SECURITY = 3,
};

/* Mirrors securityOps in src/events/records.ts. */
enum pp_security_op {
	PP_SEC_EXEC = 1,
	PP_SEC_EXIT = 2,
	PP_SEC_OPEN_WRITE = 3,
	PP_SEC_OPEN_READ = 4,
	PP_SEC_UNLINK = 5,
	PP_SEC_RENAME = 6,
	PP_SEC_CHMOD = 7,
	PP_SEC_SETUID = 8,
	PP_SEC_SETGID = 9,
	PP_SEC_SETUID_EXEC = 10,
	PP_SEC_PTRACE = 11,
	PP_SEC_MODULE_LOAD = 12,
	PP_SEC_MOUNT = 13,
	PP_SEC_BPF_PROG_LOAD = 14,
	PP_SEC_CONNECT = 15,
	PP_SEC_LISTEN = 16,
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

#define SEC_PATH_MAX 256
#define SEC_ARGS_MAX 256
#define WATCH_PREFIX_MAX 64
#define WATCH_PATHS_MAX 16
#define WATCH_WRITE 1
#define WATCH_READ 2

struct pp_security_event {
	struct pp_event header;
	__u32 op;
	__u32 uid;
	__u32 euid;
	__u32 ppid;
	__s64 arg; /* exit code, open flags, mode, new uid/gid, ptrace target, mount flags */
	__u16 port; /* connect/listen: host order */
	__u8 family;
	__u8 pad;
	__u32 args_len; /* bytes of args used (argv: NUL-separated) */
	__u8 addr[16]; /* network order; IPv4 in the first 4 bytes */
	char parent_comm[16];
	char path[SEC_PATH_MAX];
	char args[SEC_ARGS_MAX]; /* exec: argv; rename: the new name; mount: the source */
};

/* Watched path prefixes, written by userspace (security.watchedPaths):
 * file operations elsewhere never leave the kernel. */
struct watched_path {
	__u32 len; /* 0: unused slot */
	__u32 flags; /* WATCH_WRITE: writes, unlink, rename, chmod; WATCH_READ: reads too */
	char prefix[WATCH_PREFIX_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WATCH_PATHS_MAX);
	__type(key, __u32);
	__type(value, struct watched_path);
} watched_paths SEC(".maps");

/* A path copied from userspace, before it is known to be watched. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[SEC_PATH_MAX]);
} path_scratch SEC(".maps");

/* Written by userspace whenever subscriptions change. */
struct trace_config {
	__u32 cgroup_filter_kinds; /* bit (1 << kind): only cgroups in trace_cgroups */
	__u32 syscall_filter;      /* 1: only syscalls flagged in trace_syscalls */
	__u64 event_cost_ns;       /* token bucket: credit one event costs (1e9 / rate); 0: no limit */
	__u64 burst_ns;            /* most credit a cgroup can save up */
	__u32 security_ops;        /* bit (1 << op) of every security op some subscriber wants */
	__u32 security_scoped;     /* 1: security events only from cgroups security_scope lets through */
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

/* Which cgroups' security events leave the kernel (security.namespaces,
 * security.cgroups, security.nodeProcesses). Userspace gives a verdict to a
 * few directories only: the root (the node's own processes), the kubelet's
 * kubepods directories (pods by default), the pods of listed namespaces and
 * the listed cgroup paths; the deepest ancestor of the task's cgroup with a
 * verdict decides. Chosen over a verdict per leaf cgroup kept in sync from
 * userspace: a container or process started below a decided directory is
 * decided from its first event, before userspace has seen its cgroup, and the
 * map stays as small as the configuration. The price is a helper call and a
 * hash lookup per level, bounded by SCOPE_LEVELS_MAX, paid by security events
 * only (rare ones, or file operations already past the path filter). */
#define SCOPE_LEVELS_MAX 16 /* deeper cgroups are decided by their ancestors up to this level */
#define SCOPE_INCLUDE 1
#define SCOPE_EXCLUDE 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32); /* SCOPE_INCLUDE or SCOPE_EXCLUDE */
} security_scope SEC(".maps");

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

/* What sys_enter reads from user memory for a syscall, by number (written
 * by userspace from src/events/syscall-args.ts): only the syscalls that
 * need it pay for the reads; every other traced syscall stays as cheap as
 * before. Mirrors decodeClasses there. */
enum pp_decode_class {
	PP_DECODE_NONE = 0,
	PP_DECODE_PATH0 = 1,     /* open, creat, unlink, chmod: a path in args[0] */
	PP_DECODE_PATH1 = 2,     /* openat, openat2, unlinkat, fchmodat, fchmodat2: a path in args[1] */
	PP_DECODE_PATH0_1 = 3,   /* rename: paths in args[0] and args[1] */
	PP_DECODE_PATH1_3 = 4,   /* renameat, renameat2: paths in args[1] and args[3] */
	PP_DECODE_SOCKADDR1 = 5, /* connect, bind: a sockaddr in args[1], its length in args[2] */
	PP_DECODE_EXECVE = 6,    /* execve: the path in args[0], argv in args[1] */
	PP_DECODE_EXECVEAT = 7,  /* execveat: the path in args[1], argv in args[2] */
};

#define DECODE_STR_MAX 256
#define DECODE_ARGV_MAX 8 /* argv entries read; the rest is cut */
#define DECODE_SOCKADDR_MAX 112 /* sizeof(struct sockaddr_un) rounded up */

/* The tail of a syscall record whose syscall has a decode class: first[]
 * is the path (or the sockaddr's bytes), second[] the second path or argv
 * (NUL-separated). A record without one ends before it. */
struct pp_syscall_decoded {
	__u32 decode_class;
	__u32 nr; /* an exit of another syscall (this one's exit was missed) is no match */
	__u32 first_len; /* bytes used, NUL included for strings */
	__u32 second_len;
	__u32 argc; /* argv entries in second[] (execve), 0 otherwise */
	__u32 pad;
	char first[DECODE_STR_MAX];
	/* Room for one more read at any used offset below DECODE_STR_MAX: what lets
	 * the verifier see argv reads in bounds; second_len stays below DECODE_STR_MAX + DECODE_STR_MAX. */
	char second[2 * DECODE_STR_MAX];
};

struct pp_syscall_event_decoded {
	struct pp_syscall_event event;
	struct pp_syscall_decoded decoded;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SYSCALL_NR_MAX);
	__type(key, __u32);
	__type(value, __u8);
} syscall_decode SEC(".maps");

/* What sys_enter read for a traced syscall with a decode class, by thread;
 * LRU like pending_syscalls, and smaller: few threads sit in these calls at once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pp_syscall_decoded);
} pending_decoded SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pp_syscall_decoded);
} decode_scratch SEC(".maps");

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

static __always_inline int read_path(char *dst, __u64 user_ptr)
{
	int n = bpf_probe_read_user_str(dst, DECODE_STR_MAX, (const void *)user_ptr);

	return n > 0 ? n : 0;
}

/* argv as NUL-separated strings in second[]: at most DECODE_ARGV_MAX entries
 * and DECODE_STR_MAX bytes in all (an entry that starts past it is cut). */
static __always_inline void read_argv(struct pp_syscall_decoded *d, __u64 user_argv)
{
	__u64 off = 0;

	for (__u32 i = 0; i < DECODE_ARGV_MAX; i++) {
		const char *arg = NULL;
		__u64 at = off;
		long n;

		if (off >= DECODE_STR_MAX)
			break;
		if (bpf_probe_read_user(&arg, sizeof(arg), (const void *)(user_argv + i * sizeof(arg))) || !arg)
			break;
		/* The compiler drops a mask it can prove useless; the verifier needs it. */
		asm volatile("%[at] &= %[mask]" : [at] "+r"(at) : [mask] "i"(DECODE_STR_MAX - 1));
		n = bpf_probe_read_user_str(&d->second[at], DECODE_STR_MAX, arg);
		if (n <= 0)
			break;
		off += n;
		d->argc = i + 1;
	}
	d->second_len = off;
}

/* Reads what the syscall's decode class needs; nothing for the others. */
static __always_inline void decode_enter(__u32 nr, __u32 tid, const __u64 *args)
{
	struct pp_syscall_decoded *d;
	__u32 zero = 0, len;
	__u8 *cls;

	cls = bpf_map_lookup_elem(&syscall_decode, &nr);
	if (!cls || !*cls)
		return;
	d = bpf_map_lookup_elem(&decode_scratch, &zero);
	if (!d)
		return;
	d->decode_class = *cls;
	d->nr = nr;
	d->pad = 0;
	d->first_len = 0;
	d->second_len = 0;
	d->argc = 0;
	d->first[0] = 0;
	d->second[0] = 0;
	switch (*cls) {
	case PP_DECODE_PATH0:
		d->first_len = read_path(d->first, args[0]);
		break;
	case PP_DECODE_PATH1:
		d->first_len = read_path(d->first, args[1]);
		break;
	case PP_DECODE_PATH0_1:
		d->first_len = read_path(d->first, args[0]);
		d->second_len = read_path(d->second, args[1]);
		break;
	case PP_DECODE_PATH1_3:
		d->first_len = read_path(d->first, args[1]);
		d->second_len = read_path(d->second, args[3]);
		break;
	case PP_DECODE_SOCKADDR1:
		len = args[2] < DECODE_SOCKADDR_MAX ? (__u32)args[2] : DECODE_SOCKADDR_MAX;
		if (len && !bpf_probe_read_user(d->first, len & 0x7f, (const void *)args[1]))
			d->first_len = len;
		break;
	case PP_DECODE_EXECVE:
		d->first_len = read_path(d->first, args[0]);
		read_argv(d, args[1]);
		break;
	case PP_DECODE_EXECVEAT:
		d->first_len = read_path(d->first, args[1]);
		read_argv(d, args[2]);
		break;
	default:
		return;
	}
	bpf_map_update_elem(&pending_decoded, &tid, d, BPF_ANY);
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
	decode_enter(nr, tid, pending.args);
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int pp_trace_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending_syscall *pending = bpf_map_lookup_elem(&pending_syscalls, &tid);
	struct pp_syscall_event_decoded *with_args = NULL;
	struct pp_syscall_decoded *decoded;
	struct pp_syscall_event *event;

	if (!pending)
		return 0;
	if (pending->nr != (__u32)ctx->id) {
		bpf_map_delete_elem(&pending_syscalls, &tid);
		bpf_map_delete_elem(&pending_decoded, &tid);
		return 0;
	}
	decoded = bpf_map_lookup_elem(&pending_decoded, &tid);
	if (decoded && decoded->nr != (__u32)ctx->id) {
		bpf_map_delete_elem(&pending_decoded, &tid);
		decoded = NULL;
	}
	if (decoded) {
		with_args = bpf_ringbuf_reserve(&events, sizeof(*with_args), 0);
		event = with_args ? &with_args->event : NULL;
	} else {
		event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	}
	if (!event) {
		pp_stat_inc(PP_STAT_EVENTS_RINGBUF_FULL);
		bpf_map_delete_elem(&pending_syscalls, &tid);
		if (decoded)
			bpf_map_delete_elem(&pending_decoded, &tid);
		return 0;
	}
	if (decoded) {
		__builtin_memcpy(&with_args->decoded, decoded, sizeof(*decoded));
		bpf_map_delete_elem(&pending_decoded, &tid);
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

/* Level 0 is the root, which userspace always decides when scoping is on. */
static __always_inline bool security_in_scope(struct trace_config *cfg)
{
	__u32 verdict = SCOPE_INCLUDE, *found;

	if (!cfg->security_scoped)
		return true;
	for (int level = 0; level < SCOPE_LEVELS_MAX; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

		if (!id)
			break;
		found = bpf_map_lookup_elem(&security_scope, &id);
		if (found)
			verdict = *found;
	}
	return verdict != SCOPE_EXCLUDE;
}

/* Security events: the calling task's view (uid, euid, parent) is what
 * rules look at; records are large, so they are reserved only once the
 * event is known to be wanted. */
static __always_inline struct pp_security_event *security_reserve(__u32 op)
{
	struct trace_config *cfg = trace_settings();
	struct pp_security_event *event;
	struct task_struct *task;
	__u64 cgroup_id;

	if (!cfg || !(cfg->security_ops & (1u << op)))
		return NULL;
	cgroup_id = bpf_get_current_cgroup_id();
	/* Out of scope before the rate limit: an excluded workload spends no credit and counts as no loss. */
	if (!cgroup_wanted(cfg, cgroup_id, PP_EVENT_SECURITY) || !security_in_scope(cfg) || !within_rate(cfg, cgroup_id))
		return NULL;
	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		pp_stat_inc(PP_STAT_EVENTS_RINGBUF_FULL);
		return NULL;
	}
	fill_header(&event->header, cgroup_id, PP_EVENT_SECURITY, true);
	task = (struct task_struct *)bpf_get_current_task();
	event->op = op;
	event->uid = (__u32)bpf_get_current_uid_gid();
	event->euid = BPF_CORE_READ(task, cred, euid.val);
	event->ppid = BPF_CORE_READ(task, real_parent, tgid);
	BPF_CORE_READ_STR_INTO(&event->parent_comm, task, real_parent, comm);
	event->arg = 0;
	event->port = 0;
	event->family = 0;
	event->pad = 0;
	event->args_len = 0;
	__builtin_memset(event->addr, 0, sizeof(event->addr));
	event->path[0] = 0;
	event->args[0] = 0;
	return event;
}

SEC("tp/sched/sched_process_exec")
int pp_sec_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct pp_security_event *event = security_reserve(PP_SEC_EXEC);
	struct task_struct *task;
	unsigned long start, end, len;
	__u32 uid, euid;

	if (!event)
		return 0;
	bpf_probe_read_kernel_str(event->path, sizeof(event->path), (void *)ctx + (ctx->__data_loc_filename & 0xFFFF));
	task = (struct task_struct *)bpf_get_current_task();
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > SEC_ARGS_MAX)
		len = SEC_ARGS_MAX;
	if (len && !bpf_probe_read_user(event->args, len & (SEC_ARGS_MAX - 1) ? len & (SEC_ARGS_MAX - 1) : SEC_ARGS_MAX, (void *)start))
		event->args_len = len;
	uid = event->uid;
	euid = event->euid;
	bpf_ringbuf_submit(event, 0);
	/* A set-user-ID binary gave root to a user who was not: its own event. */
	if (euid == 0 && uid != 0) {
		event = security_reserve(PP_SEC_SETUID_EXEC);
		if (!event)
			return 0;
		bpf_probe_read_kernel_str(event->path, sizeof(event->path), (void *)ctx + (ctx->__data_loc_filename & 0xFFFF));
		bpf_ringbuf_submit(event, 0);
	}
	return 0;
}

SEC("tp/sched/sched_process_exit")
int pp_sec_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pp_security_event *event;

	/* A process exits once: its threads' exits are not events. */
	if ((__u32)pid_tgid != pid_tgid >> 32)
		return 0;
	event = security_reserve(PP_SEC_EXIT);
	if (!event)
		return 0;
	/* wait(2) status: code << 8, or the signal's number. */
	event->arg = BPF_CORE_READ(task, exit_code);
	bpf_ringbuf_submit(event, 0);
	return 0;
}

/* The flags of the first watched prefix path starts with; 0: unwatched. */
static __always_inline __u32 watched(const char *path)
{
	for (__u32 i = 0; i < WATCH_PATHS_MAX; i++) {
		__u32 key = i;
		struct watched_path *w = bpf_map_lookup_elem(&watched_paths, &key);
		bool match = true;

		if (!w || !w->len)
			return 0;
		for (__u32 j = 0; j < WATCH_PREFIX_MAX; j++) {
			if (j >= w->len)
				break;
			if (path[j] != w->prefix[j]) {
				match = false;
				break;
			}
		}
		if (match)
			return w->flags;
	}
	return 0;
}

/* A file operation on a user path: emitted only when the path is watched for what op needs. */
static __always_inline void file_event(__u32 op, const char *user_path, __u32 need, __s64 arg, const char *second)
{
	struct pp_security_event *event;
	__u32 zero = 0, flags;
	char *path = bpf_map_lookup_elem(&path_scratch, &zero);

	if (!path || bpf_probe_read_user_str(path, SEC_PATH_MAX, user_path) <= 0)
		return;
	flags = watched(path);
	if (!(flags & need)) {
		if (!second || bpf_probe_read_user_str(path, SEC_PATH_MAX, second) <= 0 || !(watched(path) & need))
			return;
		bpf_probe_read_user_str(path, SEC_PATH_MAX, user_path);
	}
	event = security_reserve(op);
	if (!event)
		return;
	__builtin_memcpy(event->path, path, SEC_PATH_MAX);
	event->arg = arg;
	if (second)
		bpf_probe_read_user_str(event->args, sizeof(event->args), second);
	bpf_ringbuf_submit(event, 0);
}

#define O_ACCMODE 3
#define O_CREAT 0100
#define O_TRUNC 01000

SEC("tp/syscalls/sys_enter_openat")
int pp_sec_openat(struct trace_event_raw_sys_enter *ctx)
{
	long flags = ctx->args[2];
	bool write = (flags & O_ACCMODE) || (flags & (O_CREAT | O_TRUNC));

	file_event(write ? PP_SEC_OPEN_WRITE : PP_SEC_OPEN_READ, (const char *)ctx->args[1], write ? WATCH_WRITE : WATCH_READ, flags, NULL);
	return 0;
}

SEC("tp/syscalls/sys_enter_unlinkat")
int pp_sec_unlinkat(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_UNLINK, (const char *)ctx->args[1], WATCH_WRITE, ctx->args[2], NULL);
	return 0;
}

SEC("tp/syscalls/sys_enter_renameat2")
int pp_sec_renameat2(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_RENAME, (const char *)ctx->args[1], WATCH_WRITE, ctx->args[4], (const char *)ctx->args[3]);
	return 0;
}

SEC("tp/syscalls/sys_enter_fchmodat")
int pp_sec_fchmodat(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_CHMOD, (const char *)ctx->args[1], WATCH_WRITE, ctx->args[2], NULL);
	return 0;
}

/* The calls without a directory fd, and fchmodat2: glibc's unlink(),
 * rename() and chmod() make the old ones (Python's os.unlink, os.rename and
 * os.chmod do), and a workload must not get past the watch by using them. */
SEC("tp/syscalls/sys_enter_open")
int pp_sec_open(struct trace_event_raw_sys_enter *ctx)
{
	long flags = ctx->args[1];
	bool write = (flags & O_ACCMODE) || (flags & (O_CREAT | O_TRUNC));

	file_event(write ? PP_SEC_OPEN_WRITE : PP_SEC_OPEN_READ, (const char *)ctx->args[0], write ? WATCH_WRITE : WATCH_READ, flags, NULL);
	return 0;
}

SEC("tp/syscalls/sys_enter_unlink")
int pp_sec_unlink(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_UNLINK, (const char *)ctx->args[0], WATCH_WRITE, 0, NULL);
	return 0;
}

SEC("tp/syscalls/sys_enter_rename")
int pp_sec_rename(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_RENAME, (const char *)ctx->args[0], WATCH_WRITE, 0, (const char *)ctx->args[1]);
	return 0;
}

SEC("tp/syscalls/sys_enter_renameat")
int pp_sec_renameat(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_RENAME, (const char *)ctx->args[1], WATCH_WRITE, 0, (const char *)ctx->args[3]);
	return 0;
}

SEC("tp/syscalls/sys_enter_chmod")
int pp_sec_chmod(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_CHMOD, (const char *)ctx->args[0], WATCH_WRITE, ctx->args[1], NULL);
	return 0;
}

SEC("tp/syscalls/sys_enter_fchmodat2")
int pp_sec_fchmodat2(struct trace_event_raw_sys_enter *ctx)
{
	file_event(PP_SEC_CHMOD, (const char *)ctx->args[1], WATCH_WRITE, ctx->args[2], NULL);
	return 0;
}

/* Only a change to root by a task that was not root already. */
static __always_inline void to_root(__u32 op, long id)
{
	struct pp_security_event *event;

	if (id != 0 || (__u32)bpf_get_current_uid_gid() == 0)
		return;
	event = security_reserve(op);
	if (event)
		bpf_ringbuf_submit(event, 0);
}

SEC("tp/syscalls/sys_enter_setuid")
int pp_sec_setuid(struct trace_event_raw_sys_enter *ctx)
{
	to_root(PP_SEC_SETUID, ctx->args[0]);
	return 0;
}

SEC("tp/syscalls/sys_enter_setgid")
int pp_sec_setgid(struct trace_event_raw_sys_enter *ctx)
{
	to_root(PP_SEC_SETGID, ctx->args[0]);
	return 0;
}

#define PTRACE_ATTACH 16
#define PTRACE_SEIZE 0x4206
#define BPF_PROG_LOAD_CMD 5

SEC("tp/syscalls/sys_enter_ptrace")
int pp_sec_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	struct pp_security_event *event;

	if (ctx->args[0] != PTRACE_ATTACH && ctx->args[0] != PTRACE_SEIZE)
		return 0;
	event = security_reserve(PP_SEC_PTRACE);
	if (!event)
		return 0;
	event->arg = ctx->args[1];
	bpf_ringbuf_submit(event, 0);
	return 0;
}

static __always_inline void plain_event(__u32 op, __s64 arg)
{
	struct pp_security_event *event = security_reserve(op);

	if (!event)
		return;
	event->arg = arg;
	bpf_ringbuf_submit(event, 0);
}

SEC("tp/syscalls/sys_enter_init_module")
int pp_sec_init_module(struct trace_event_raw_sys_enter *ctx)
{
	plain_event(PP_SEC_MODULE_LOAD, -1);
	return 0;
}

SEC("tp/syscalls/sys_enter_finit_module")
int pp_sec_finit_module(struct trace_event_raw_sys_enter *ctx)
{
	plain_event(PP_SEC_MODULE_LOAD, ctx->args[0]);
	return 0;
}

SEC("tp/syscalls/sys_enter_bpf")
int pp_sec_bpf(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[0] == BPF_PROG_LOAD_CMD)
		plain_event(PP_SEC_BPF_PROG_LOAD, ctx->args[0]);
	return 0;
}

SEC("tp/syscalls/sys_enter_mount")
int pp_sec_mount(struct trace_event_raw_sys_enter *ctx)
{
	struct pp_security_event *event = security_reserve(PP_SEC_MOUNT);

	if (!event)
		return 0;
	bpf_probe_read_user_str(event->path, sizeof(event->path), (const char *)ctx->args[1]);
	bpf_probe_read_user_str(event->args, sizeof(event->args), (const char *)ctx->args[0]);
	event->arg = ctx->args[3];
	bpf_ringbuf_submit(event, 0);
	return 0;
}

/* connect() and listen() set their states in the caller's context. */
SEC("tp/sock/inet_sock_set_state")
int pp_sec_sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct trace_event_raw_inet_sock_set_state tp;
	struct pp_security_event *event;
	__u32 op;

	if (bpf_probe_read_kernel(&tp, sizeof(tp), ctx) || tp.protocol != IPPROTO_TCP)
		return 0;
	if (tp.newstate == TCP_SYN_SENT)
		op = PP_SEC_CONNECT;
	else if (tp.newstate == TCP_LISTEN)
		op = PP_SEC_LISTEN;
	else
		return 0;
	if (tp.family != AF_INET && tp.family != AF_INET6)
		return 0;
	event = security_reserve(op);
	if (!event)
		return 0;
	event->family = tp.family;
	if (op == PP_SEC_CONNECT) {
		event->port = tp.dport;
		if (tp.family == AF_INET)
			__builtin_memcpy(event->addr, tp.daddr, 4);
		else
			__builtin_memcpy(event->addr, tp.daddr_v6, 16);
	} else {
		event->port = tp.sport;
		if (tp.family == AF_INET)
			__builtin_memcpy(event->addr, tp.saddr, 4);
		else
			__builtin_memcpy(event->addr, tp.saddr_v6, 16);
	}
	bpf_ringbuf_submit(event, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
