/* NAT: rewriting a packet's addresses and ports as a conntrack entry says,
 * keeping the IP and L4 checksums right. */
#ifndef NODEPLANE_NAT_H
#define NODEPLANE_NAT_H

#include "parse.h"

/* Rewrites the address and port at one end of the packet, keeping both
 * checksums. A later fragment has no L4 header: its address alone changes
 * (the first fragment carried the datagram's L4 checksum and ports). */
static __always_inline int rewrite_end(struct __sk_buff *skb, struct packet *pkt, int dst, __be32 old_addr,
				       __be32 new_addr, __be16 old_port, __be16 new_port)
{
	__u32 addr_off = dst ? IP_DST_OFF : IP_SRC_OFF;
	__u32 port_off = pkt->l4_off + (dst ? 2 : 0); /* dest follows source in TCP and UDP */

	if (pkt->l4_off &&
	    (bpf_l4_csum_replace(skb, pkt->l4_csum_off, old_addr, new_addr, pkt->csum_flags | BPF_F_PSEUDO_HDR | 4) ||
	     bpf_l4_csum_replace(skb, pkt->l4_csum_off, old_port, new_port, pkt->csum_flags | 2) ||
	     bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0)))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) ||
	    bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0))
		return -1;
	return 0;
}

/* Applies a conntrack entry; `after` becomes the packet's tuple once rewritten. */
static __always_inline int translate(struct __sk_buff *skb, struct packet *pkt, const struct ct_value *ct,
				     struct ct_key *after)
{
	*after = pkt->flow;
	if (ct->rewrite & CT_REWRITE_SRC) {
		if (rewrite_end(skb, pkt, 0, pkt->flow.saddr, ct->src_addr, pkt->flow.sport, ct->src_port))
			return -1;
		after->saddr = ct->src_addr;
		after->sport = ct->src_port;
	}
	if (ct->rewrite & CT_REWRITE_DST) {
		if (rewrite_end(skb, pkt, 1, pkt->flow.daddr, ct->dst_addr, pkt->flow.dport, ct->dst_port))
			return -1;
		after->daddr = ct->dst_addr;
		after->dport = ct->dst_port;
	}
	return 0;
}

#endif
