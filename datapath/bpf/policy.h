/* NetworkPolicy verdicts on new connections, from the maps nodeplaned compiles
 * (datapath/model compiles them, datapath/src/policy_maps.rs writes them): a pod isolated in a direction talks only to
 * the peers and ports some policy allows. Port ranges are prefixes in an LPM
 * trie; a peer is the longest prefix holding its address. */
#ifndef NODEPLANE_POLICY_H
#define NODEPLANE_POLICY_H

#include "conntrack.h"
#include "counters.h"
#include "maps.h"

/* Whether `pod`'s rules of `direction` allow `peer` on `port`/`proto`: 0, or
 * why not (enum policy_reason). */
static __always_inline int policy_check(__be32 pod, __u8 direction, __be32 peer, __be16 port, __u8 proto)
{
	int egress = direction == POLICY_EGRESS;
	struct policy_key key = { .prefixlen = POLICY_PEER_BITS + 32,
				  .data = { .pod = pod, .direction = direction, .peer = peer } };
	struct policy_value *allowed = bpf_map_lookup_elem(&np_policy, &key);
	if (!allowed || !allowed->port_set)
		return egress ? POLICY_DENIED_EGRESS_PEER : POLICY_DENIED_INGRESS_PEER;
	struct port_key ports = { .prefixlen = PORT_MATCH_BITS + 16,
				  .data = { .port_set = allowed->port_set, .proto = proto, .port = port } };
	if (!bpf_map_lookup_elem(&np_policy_ports, &ports))
		return egress ? POLICY_DENIED_EGRESS_PORT : POLICY_DENIED_INGRESS_PORT;
	return 0;
}

/* Whether `addr` is isolated for `flag` (ENDPOINT_F_*): a pod of this node
 * that policies of that direction select. */
static __always_inline int isolated(__be32 addr, __u32 flag)
{
	struct endpoint_value *endpoint = bpf_map_lookup_elem(&np_endpoints, &addr);
	return endpoint && (endpoint->flags & flag);
}

static __always_inline int is_local_pod(__be32 addr)
{
	return bpf_map_lookup_elem(&np_endpoints, &addr) != NULL;
}

/* The pod of this node a flow from `client` to `server` counts against: the
 * client when it is one, else the server; 0 when neither is. */
static __always_inline __be32 owner_of(__be32 client, __be32 server)
{
	if (is_local_pod(client))
		return client;
	return is_local_pod(server) ? server : 0;
}

/* The verdict on a new connection from `client` to `server` (after Service
 * translation: the backend) on `port`/`proto`: the client's egress, then the
 * server's ingress. 0 allows; else the reason. */
static __always_inline int policy_verdict(__be32 client, __be32 server, __be16 port, __u8 proto)
{
	int reason = 0;
	if (isolated(client, ENDPOINT_F_ISOLATED_EGRESS))
		reason = policy_check(client, POLICY_EGRESS, server, port, proto);
	if (!reason && isolated(server, ENDPOINT_F_ISOLATED_INGRESS))
		reason = policy_check(server, POLICY_INGRESS, client, port, proto);
	return reason;
}

/* Sends a drop to nodeplaned. Not inlined: drops are rare, and a function's
 * BTF carries the event's layout for the layout test. */
static __noinline void send_event(const struct policy_event *event)
{
	if (bpf_ringbuf_output(&np_policy_events, (void *)event, sizeof(*event), 0))
		count(COUNTER_POLICY_EVENT_LOST);
}

/* Counts a drop by reason and tells nodeplaned about it. */
static __always_inline void report_denial(const struct ct_key *flow, __be32 vip, __be16 vip_port, int reason)
{
	count((enum counter)(COUNTER_POLICY_DENIED_EGRESS_PEER + reason - 1));
	struct policy_event event = {
		.saddr = flow->saddr, .daddr = flow->daddr, .sport = flow->sport, .dport = flow->dport,
		.vip = vip, .vip_port = vip_port, .proto = flow->proto, .reason = reason,
	};
	send_event(&event);
}

/* A new connection without translation: when it is a pod's of this node,
 * policy decides, and an allowed one is recorded. Returns the reason to drop it,
 * or 0. */
static __always_inline int open_plain_flow(const struct packet *pkt)
{
	const struct ct_key *flow = &pkt->flow;
	__be32 owner = owner_of(flow->saddr, flow->daddr);
	if (!owner)
		return 0;
	int reason = policy_verdict(flow->saddr, flow->daddr, flow->dport, flow->proto);
	if (reason) {
		report_denial(flow, 0, 0, reason);
		return reason;
	}
	track_plain(flow, owner);
	return 0;
}

/* The egress reason for a packet of this kind that policy cannot judge as a
 * flow; its ingress reason is the next one. */
static __always_inline int unjudged_kind(int parsed)
{
	switch (parsed) {
	case PARSE_IPV6:
		return POLICY_EGRESS_IPV6;
	case PARSE_MALFORMED:
		return POLICY_EGRESS_MALFORMED;
	case PARSE_FRAGMENT:
		return POLICY_EGRESS_FRAGMENT;
	case PARSE_ICMP_ERROR:
		return POLICY_EGRESS_STRAY_ICMP;
	default:
		return POLICY_EGRESS_PROTOCOL;
	}
}

/* A packet policy cannot judge as a flow (`parsed` says what it is), from the
 * pod `sender` and to the pod `receiver` (0 where unknown or not a pod of this
 * node): dropped when the sender is isolated for egress or the receiver for
 * ingress, counted and reported. Returns the reason, or 0 to let it by. */
static __always_inline int unjudged(const struct packet *pkt, int parsed, __be32 sender, __be32 receiver)
{
	int reason = 0;
	if (sender && isolated(sender, ENDPOINT_F_ISOLATED_EGRESS))
		reason = unjudged_kind(parsed);
	else if (receiver && isolated(receiver, ENDPOINT_F_ISOLATED_INGRESS))
		reason = unjudged_kind(parsed) + 1;
	if (!reason)
		return 0;
	struct ct_key what = pkt->flow;
	if (!pkt->addresses) {
		what.saddr = sender;
		what.daddr = receiver;
	}
	report_denial(&what, 0, 0, reason);
	return reason;
}

#endif
