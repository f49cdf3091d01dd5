/* ICMP errors (destination unreachable, fragmentation needed, time exceeded,
 * parameter problem) about a flow of this node. One about a translated flow is
 * translated back the way the flow's replies are, its inner packet included,
 * so the client's stack matches it to its socket (a UDP client of a VIP gets
 * ECONNREFUSED as it would from the backend's address). One about no flow this
 * node knows is a packet policy cannot judge. */
#ifndef NODEPLANE_ICMP_H
#define NODEPLANE_ICMP_H

#include "conntrack.h"
#include "deliver.h"
#include "policy.h"

#define ICMP_CSUM_OFF(pkt) ((pkt)->l4_off + offsetof(struct icmp_error, checksum))

/* Rewrites one address of the inner IP header (its own checksum kept: the
 * header then sums as before, so the ICMP checksum needs no change for it). */
static __always_inline int rewrite_inner_addr(struct __sk_buff *skb, struct packet *pkt, int dst, __be32 old_addr,
					      __be32 new_addr)
{
	__u32 off = pkt->inner_off + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	return bpf_l3_csum_replace(skb, pkt->inner_off + offsetof(struct iphdr, check), old_addr, new_addr, 4) ||
	       bpf_skb_store_bytes(skb, off, &new_addr, 4, 0);
}

/* Rewrites one port of the inner TCP or UDP header, keeping the ICMP checksum. */
static __always_inline int rewrite_inner_port(struct __sk_buff *skb, struct packet *pkt, int dst, __be16 old_port,
					      __be16 new_port)
{
	return bpf_l4_csum_replace(skb, ICMP_CSUM_OFF(pkt), old_port, new_port, 2) ||
	       bpf_skb_store_bytes(skb, pkt->inner_l4_off + (dst ? 2 : 0), &new_port, 2, 0);
}

/* Rewrites one address of the outer IP header. */
static __always_inline int rewrite_outer_addr(struct __sk_buff *skb, int dst, __be32 old_addr, __be32 new_addr)
{
	return bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) ||
	       bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &new_addr, 4, 0);
}

/* Applies `ct`, the entry of the direction the error travels (the flow's
 * replies), to the error; `after` becomes its outer tuple. The outer source
 * changes only when the error came from the translated end itself. */
static __always_inline int translate_icmp_error(struct __sk_buff *skb, struct packet *pkt,
						const struct ct_value *ct, struct ct_key *after)
{
	*after = pkt->flow;
	if (ct->rewrite & CT_REWRITE_SRC) {
		if (pkt->flow.saddr == pkt->inner.daddr) {
			if (rewrite_outer_addr(skb, 0, pkt->flow.saddr, ct->src_addr))
				return -1;
			after->saddr = ct->src_addr;
		}
		if (rewrite_inner_addr(skb, pkt, 1, pkt->inner.daddr, ct->src_addr) ||
		    rewrite_inner_port(skb, pkt, 1, pkt->inner.dport, ct->src_port))
			return -1;
	}
	if (ct->rewrite & CT_REWRITE_DST) {
		if (rewrite_outer_addr(skb, 1, pkt->flow.daddr, ct->dst_addr) ||
		    rewrite_inner_addr(skb, pkt, 0, pkt->inner.saddr, ct->dst_addr) ||
		    rewrite_inner_port(skb, pkt, 0, pkt->inner.sport, ct->dst_port))
			return -1;
		after->daddr = ct->dst_addr;
	}
	return 0;
}

/* Whether an ICMP error is about a flow this node knows: by the entry of the
 * direction it travels, or (translated back already) by the flow's own. */
static __always_inline int icmp_error_related(const struct packet *pkt)
{
	struct ct_key travels = reversed(&pkt->inner);
	return bpf_map_lookup_elem(&np_conntrack, &travels) || bpf_map_lookup_elem(&np_conntrack, &pkt->inner);
}

/* An ICMP error from `sender` (a pod of this node, or 0) to `receiver`: let by,
 * translated back, or dropped (an unknown flow, where policy isolates). */
static __always_inline int icmp_error(struct __sk_buff *skb, struct packet *pkt, __be32 sender, __be32 receiver)
{
	struct ct_key travels = reversed(&pkt->inner);
	struct ct_value *ct = bpf_map_lookup_elem(&np_conntrack, &travels);
	if (!ct)
		return unjudged(pkt, PARSE_ICMP_ERROR, sender, receiver) ? TC_ACT_SHOT : TC_ACT_OK;
	if (!ct->rewrite || pkt->inner.proto == IPPROTO_ICMP)
		return TC_ACT_OK;
	struct ct_key after;
	if (translate_icmp_error(skb, pkt, ct, &after)) {
		count(COUNTER_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	count(COUNTER_ICMP_TRANSLATED);
	return deliver(skb, &after);
}

#endif
