/* Delivering a translated packet past the host stack (FIB lookup and redirect). */
#ifndef NODEPLANE_DELIVER_H
#define NODEPLANE_DELIVER_H

#include "counters.h"
#include "parse.h"

/* Delivers a translated packet (tuple `after`) to the interface the routing
 * table sends its destination through, with that hop's MACs. What the FIB does
 * not forward (the node's own addresses, no route, forwarding off) goes up the
 * stack as usual. */
static __always_inline int deliver(struct __sk_buff *skb, const struct ct_key *after)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.l4_protocol = after->proto,
		.sport = after->sport,
		.dport = after->dport,
		/* No tot_len: the kernel then checks the packet against the MTU as
		 * forwarding does, a GSO packet by its segments; with one, a 64 KiB GSO
		 * packet (every bulk transfer's) is "too big" and took the host stack. */
		.ipv4_src = after->saddr,
		.ipv4_dst = after->daddr,
		.ifindex = skb->ingress_ifindex,
	};
	long found = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (found == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(COUNTER_REDIRECTED);
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);
	}
	if (found != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), fib.dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), fib.smac, ETH_ALEN, 0))
		return TC_ACT_OK;
	count(COUNTER_REDIRECTED);
	return bpf_redirect(fib.ifindex, 0);
}

#endif
