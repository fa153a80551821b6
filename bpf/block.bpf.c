// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Block collector: reads and writes per workload and disk — requests,
 * bytes, and latency from issue to the driver until completion. The issuer
 * is the task submitting the request (block_io_start runs in its context),
 * recorded with the request until it completes. Kernel writeback is issued
 * by flusher threads, so it is the node's. Needs block_io_start/done (6.5+). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "probepilot.h"

#define REQ_OP_MASK 0xff
#define REQ_OP_FLUSH 2
#define REQ_OP_DISCARD 3
#define REQ_OP_DRV_IN 34 /* driver passthrough from here on: not block I/O of a workload */
#define MINORBITS 20

/* Mirrors src/collectors/block.ts. */
struct block_key {
	__u64 cgroup_id;
	__u32 dev; /* the disk's dev_t, kernel encoding (major << 20 | minor) */
	__u32 op;  /* 0 read, 1 write (the operation's direction) */
};

struct block_value {
	__u64 requests;
	__u64 bytes;
	struct pp_hist latency;
};

struct inflight {
	__u64 cgroup_id;
	__u64 issued_ns; /* 0 until the driver got it */
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.block.maxEntries) */
	__type(key, struct block_key);
	__type(value, struct block_value);
} block_stats SEC(".maps");

/* By request: LRU so requests whose completion we never see cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); /* sized by userspace (collectors.block.maxInflight) */
	__type(key, __u64);
	__type(value, struct inflight);
} block_inflight SEC(".maps");

static const struct block_value zero_block;

static __always_inline __u32 request_op(struct request *rq)
{
	return BPF_CORE_READ(rq, cmd_flags) & REQ_OP_MASK;
}

/* Grouped as /proc/diskstats groups them: every write-direction operation
 * (write, write-zeroes, zone append…) is a write (odd REQ_OP numbers), the
 * rest reads; flushes and discards have statistics of their own there and
 * are not counted here. */
static __always_inline bool counted_op(__u32 op)
{
	return op != REQ_OP_FLUSH && op != REQ_OP_DISCARD && op < REQ_OP_DRV_IN;
}

SEC("raw_tp/block_io_start")
int pp_block_io_start(struct bpf_raw_tracepoint_args *ctx)
{
	struct request *rq = (struct request *)ctx->args[0];
	__u64 id = (__u64)rq;
	__u32 op = request_op(rq);
	struct inflight started = { .cgroup_id = bpf_get_current_cgroup_id() };

	if (!counted_op(op))
		return 0;
	bpf_map_update_elem(&block_inflight, &id, &started, BPF_ANY);
	return 0;
}

/* The size is read here: by completion the request has counted it down. */
SEC("raw_tp/block_rq_issue")
int pp_block_rq_issue(struct bpf_raw_tracepoint_args *ctx)
{
	struct request *rq = (struct request *)ctx->args[0];
	__u64 id = (__u64)rq;
	struct inflight *inflight = bpf_map_lookup_elem(&block_inflight, &id);

	if (!inflight)
		return 0;
	inflight->issued_ns = bpf_ktime_get_ns();
	inflight->bytes = BPF_CORE_READ(rq, __data_len);
	return 0;
}

SEC("raw_tp/block_io_done")
int pp_block_io_done(struct bpf_raw_tracepoint_args *ctx)
{
	struct request *rq = (struct request *)ctx->args[0];
	__u64 id = (__u64)rq;
	struct inflight *inflight = bpf_map_lookup_elem(&block_inflight, &id);
	struct block_key key = {};
	struct block_value *value;
	struct gendisk *disk;

	if (!inflight)
		return 0;
	if (inflight->issued_ns) {
		disk = BPF_CORE_READ(rq, q, disk);
		key.cgroup_id = inflight->cgroup_id;
		key.op = request_op(rq) & 1; /* op_is_write() */
		if (disk)
			key.dev = ((__u32)BPF_CORE_READ(disk, major) << MINORBITS) | (__u32)BPF_CORE_READ(disk, first_minor);
		value = pp_lookup_or_init(&block_stats, &key, &zero_block);
		if (value) {
			value->requests += 1;
			value->bytes += inflight->bytes;
			pp_hist_record(&value->latency, bpf_ktime_get_ns() - inflight->issued_ns);
		}
	}
	bpf_map_delete_elem(&block_inflight, &id);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
