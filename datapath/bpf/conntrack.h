/* Connection tracking: two entries per flow, one per direction, each saying
 * what to rewrite in its packets; TCP teardown recorded for the supervisor's GC. */
#ifndef NODEPLANE_CONNTRACK_H
#define NODEPLANE_CONNTRACK_H

#include "counters.h"
#include "maps.h"
#include "parse.h"

/* The key of the other direction of a flow whose packet now has tuple `t`. */
static __always_inline struct ct_key reversed(const struct ct_key *t)
{
	struct ct_key key = { .saddr = t->daddr, .daddr = t->saddr, .sport = t->dport, .dport = t->sport, .proto = t->proto };
	return key;
}

static __always_inline int closed(const struct ct_value *ct)
{
	return (ct->seen & CT_SEEN_RST) || (ct->seen & (CT_SEEN_FIN_ORIGINAL | CT_SEEN_FIN_REPLY)) ==
						 (CT_SEEN_FIN_ORIGINAL | CT_SEEN_FIN_REPLY);
}

/* Sets `bits` in both entries of the flow, atomically: the two directions of one
 * flow are often handled on two CPUs at once. */
static __always_inline void mark_both(struct ct_value *ct, const struct ct_key *after, __u32 bits)
{
	__sync_fetch_and_or(&ct->seen, bits);
	struct ct_key peer_key = reversed(after);
	struct ct_value *peer = bpf_map_lookup_elem(&np_conntrack, &peer_key);
	if (peer)
		__sync_fetch_and_or(&peer->seen, bits);
}

/* Records a FIN or RST in both entries of the flow, so the supervisor's GC can
 * expire them on the short close timeout. */
static __always_inline void track_teardown(struct packet *pkt, struct ct_value *ct, const struct ct_key *after)
{
	__u32 seen = pkt->rst ? CT_SEEN_RST : (ct->reply ? CT_SEEN_FIN_REPLY : CT_SEEN_FIN_ORIGINAL);
	mark_both(ct, after, seen);
}

/* Whether `owner` (a pod of this node, or 0) may open another flow: each pod
 * holds at most lb_config.ct_per_pod flows, so that one pod opening flows by
 * the thousand fills its share, not the map. */
static __always_inline int ct_admit(__be32 owner)
{
	if (!owner)
		return 1;
	__u32 zero = 0;
	struct lb_config *config = bpf_map_lookup_elem(&np_config, &zero);
	if (!config || !config->ct_per_pod)
		return 1;
	__u64 *opened = bpf_map_lookup_elem(&np_ct_opened, &owner);
	__u64 *closed = bpf_map_lookup_elem(&np_ct_closed, &owner);
	__u64 held = (opened ? *opened : 0) - (closed ? *closed : 0);
	if ((__s64)held < (__s64)config->ct_per_pod)
		return 1;
	count(COUNTER_CT_POD_LIMIT);
	return 0;
}

/* Counts a flow against `owner`'s share. */
static __always_inline void ct_charge(__be32 owner)
{
	if (!owner)
		return;
	__u64 *opened = bpf_map_lookup_elem(&np_ct_opened, &owner);
	if (!opened) {
		__u64 one = 1;
		if (!bpf_map_update_elem(&np_ct_opened, &owner, &one, BPF_NOEXIST))
			return;
		opened = bpf_map_lookup_elem(&np_ct_opened, &owner); /* another CPU made it first */
		if (!opened)
			return;
	}
	__sync_fetch_and_add(opened, 1);
}

/* Records a connection that is not translated, both ways, counted against
 * `owner`: its packets and replies then hit conntrack only. A live Service
 * flow's entry is never taken over. Returns 0 when recorded. */
static __always_inline int track_plain(const struct ct_key *flow, __be32 owner)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_value original = { .owner = owner, .last_seen_ns = now };
	struct ct_value reply = { .reply = 1, .owner = owner, .last_seen_ns = now };
	struct ct_key back = reversed(flow);
	struct ct_value *existing = bpf_map_lookup_elem(&np_conntrack, &back);
	if (existing && existing->service_id && !closed(existing))
		return -1;
	/* Recorded again (an unanswered flow decided anew): counted once. */
	int fresh = bpf_map_lookup_elem(&np_conntrack, flow) == NULL;
	if (fresh && !ct_admit(owner))
		return -1;
	if (bpf_map_update_elem(&np_conntrack, flow, &original, BPF_ANY) ||
	    bpf_map_update_elem(&np_conntrack, &back, &reply, BPF_ANY)) {
		count(COUNTER_CT_FULL);
		return -1;
	}
	if (fresh)
		ct_charge(owner);
	count(COUNTER_FLOW_TRACKED);
	return 0;
}

/* A new direct connection whose replies would match the reply entry of a closed
 * Service flow on the same tuple (the pod reused its source port, say, to reach
 * the backend by its own IP): drop that entry, or those replies would be taken
 * for the old flow's and rewritten to come from the VIP. */
static __always_inline void forget_stale_reply(struct packet *pkt)
{
	if (pkt->flow.proto != IPPROTO_TCP || !pkt->syn || pkt->ack)
		return;
	struct ct_key replies = reversed(&pkt->flow);
	struct ct_value *stale = bpf_map_lookup_elem(&np_conntrack, &replies);
	if (stale && stale->reply && closed(stale))
		bpf_map_delete_elem(&np_conntrack, &replies);
}

#endif
