/* IP fragments: a datagram's first fragment is decided and translated like
 * any packet and, once let through, leaves its ports in np_fragments under the
 * datagram's addresses before and after translation; its later fragments,
 * which carry no L4 header, take their ports from there and so follow its
 * verdict and translation. A later fragment of no such datagram is left to
 * policy as a packet it cannot judge. */
#ifndef NODEPLANE_FRAG_H
#define NODEPLANE_FRAG_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

/* A later fragment's ports, from its datagram: PARSE_FLOW with them, else
 * PARSE_FRAGMENT. */
static __always_inline int recover_fragment(struct packet *pkt)
{
	struct frag_key key = { .saddr = pkt->flow.saddr, .daddr = pkt->flow.daddr, .id = pkt->ip_id,
				.proto = pkt->flow.proto };
	struct frag_value *ports = bpf_map_lookup_elem(&np_fragments, &key);
	if (!ports)
		return PARSE_FRAGMENT;
	pkt->flow.sport = ports->sport;
	pkt->flow.dport = ports->dport;
	return PARSE_FLOW;
}

/* Records a first fragment let through, under the tuple `as` it has. */
static __always_inline void remember_fragment(const struct packet *pkt, const struct ct_key *as)
{
	struct frag_key key = { .saddr = as->saddr, .daddr = as->daddr, .id = pkt->ip_id, .proto = as->proto };
	struct frag_value ports = { .sport = as->sport, .dport = as->dport };
	bpf_map_update_elem(&np_fragments, &key, &ports, BPF_ANY);
}

/* After a first fragment's verdict: its datagram's later fragments follow,
 * under its tuple as it arrived and, translated, as it leaves. */
static __always_inline void fragment_let_through(const struct packet *pkt, const struct ct_key *after)
{
	if (!pkt->first_fragment)
		return;
	remember_fragment(pkt, &pkt->flow);
	if (after->saddr != pkt->flow.saddr || after->daddr != pkt->flow.daddr || after->sport != pkt->flow.sport ||
	    after->dport != pkt->flow.dport)
		remember_fragment(pkt, after);
	count(COUNTER_FRAGMENTED);
}

#endif
