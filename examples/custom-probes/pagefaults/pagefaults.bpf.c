// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Custom probe example: user-space page faults per workload, split by
 * access (read or write). The x86 tracepoint exceptions:page_fault_user
 * fires in the faulting task, so the current task's cgroup is the workload.
 * Layouts mirror pagefaults.yaml. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "probepilot.h"

/* arch/x86/include/asm/trap_pf.h: the fault was a write. */
#define X86_PF_WRITE (1UL << 1)

struct fault_key {
	__u64 cgroup_id;
	__u32 access; /* 0 read, 1 write */
	__u32 pad;
};

struct fault_value {
	__u64 faults;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct fault_key);
	__type(value, struct fault_value);
} faults SEC(".maps");

static const struct fault_value zero_faults;

/* TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code) */
SEC("raw_tp/page_fault_user")
int pp_page_fault_user(struct bpf_raw_tracepoint_args *ctx)
{
	struct fault_key key = {
		.cgroup_id = bpf_get_current_cgroup_id(),
		.access = (ctx->args[2] & X86_PF_WRITE) ? 1 : 0,
	};
	struct fault_value *value = pp_lookup_or_init(&faults, &key, &zero_faults);

	if (value)
		value->faults += 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
