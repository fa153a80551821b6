// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The floor for TC per-packet cost: a classifier that does nothing. What the
 * kernel charges to run it is the price of being attached at all. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tc")
int pp_empty_tc(struct __sk_buff *skb)
{
	return -1; /* TC_ACT_UNSPEC / TCX_NEXT */
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
