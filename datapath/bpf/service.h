/* Service load balancing: the backend for a new flow (sessionAffinity
 * included), and the flow it opens, policy permitting. */
#ifndef NODEPLANE_SERVICE_H
#define NODEPLANE_SERVICE_H

#include "conntrack.h"
#include "policy.h"

static __always_inline int backend_alive(__u32 service_id, __be32 addr, __be16 port)
{
	struct backend_id id = { .service_id = service_id, .addr = addr, .port = port };
	return bpf_map_lookup_elem(&np_backend_alive, &id) != NULL;
}

/* The backend for a new flow: the client's affinity backend while it lasts and
 * is still a backend, else a random one (remembered under affinity). */
static __always_inline struct backend_value *pick_backend(const struct svc_value *service, __be32 client, __u64 now)
{
	struct affinity_key affinity = { .service_id = service->service_id, .client = client };
	__u64 timeout_ns = (__u64)service->affinity_timeout_s * 1000000000ULL;
	if (timeout_ns) {
		struct affinity_value *sticky = bpf_map_lookup_elem(&np_affinity, &affinity);
		if (sticky && now - sticky->last_seen_ns < timeout_ns &&
		    backend_alive(service->service_id, sticky->backend.addr, sticky->backend.port)) {
			sticky->last_seen_ns = now;
			return &sticky->backend;
		}
	}
	struct backend_key slot = {
		.service_id = service->service_id,
		.slot = bpf_get_prandom_u32() % service->backend_count,
	};
	struct backend_value *backend = bpf_map_lookup_elem(&np_backends, &slot);
	if (backend && timeout_ns) {
		struct affinity_value sticky = { .backend = *backend, .last_seen_ns = now };
		bpf_map_update_elem(&np_affinity, &affinity, &sticky, BPF_ANY);
	}
	return backend;
}

/* Whether a local socket is waiting for this UDP datagram: the reply to the
 * node's own traffic from a port that is also a NodePort. */
static __always_inline int local_udp_socket(struct __sk_buff *skb, const struct packet *pkt)
{
	struct bpf_sock_tuple tuple = { .ipv4 = { .saddr = pkt->flow.saddr, .daddr = pkt->flow.daddr,
						  .sport = pkt->flow.sport, .dport = pkt->flow.dport } };
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Only a packet that can start a connection opens a flow: a TCP SYN, any UDP
 * datagram, but to a NodePort none that a local socket owns. A stray TCP segment
 * (a reply to the node's own connection from a NodePort-numbered port) passes. */
static __always_inline int may_open(struct __sk_buff *skb, const struct packet *pkt, const struct svc_value *service)
{
	if (pkt->flow.proto == IPPROTO_TCP)
		return pkt->syn && !pkt->ack;
	return !(service->flags & SVC_F_NODE_PORT) || !local_udp_socket(skb, pkt);
}

/* What open_flow made of a packet it opened no flow for. */
enum unopened {
	NOT_A_SERVICE = 0,
	SERVICE_UNSERVED, /* a Service, but no backend or not a packet that opens one */
	POLICY_DENIED,
	FLOW_REFUSED,     /* no room: conntrack full, the pod's share used, no free source port */
};

/* Ports a flow may get when its own source port clashes or, sent on from this
 * node's address, falls short of them: above the NodePort range and the
 * privileged ports. */
#define CLASH_PORT_FIRST 32768
#define CLASH_PORT_COUNT 28232
#define CLASH_TRIES 8

/* Whether a socket of this node holds the tuple a reply to `after` (sent from
 * the node's address) would come back on: a listener on that port included. */
static __always_inline int local_socket_owns(struct __sk_buff *skb, const struct ct_key *after)
{
	struct bpf_sock_tuple tuple = { .ipv4 = { .saddr = after->daddr, .daddr = after->saddr,
						  .sport = after->dport, .dport = after->sport } };
	struct bpf_sock *sk;
	if (after->proto == IPPROTO_TCP)
		sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	else if (after->proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		return 0;
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* The network namespace of the pod of this node that `after`'s destination is
 * (its interface as routing has it), for a TCP flow; NO_NETNS_ID otherwise. */
static __always_inline __u32 backend_netns(struct __sk_buff *skb, const struct ct_key *after)
{
	if (after->proto != IPPROTO_TCP)
		return NO_NETNS_ID;
	struct bpf_fib_lookup fib = { .family = AF_INET, .ipv4_src = after->saddr, .ipv4_dst = after->daddr,
				      .ifindex = skb->ingress_ifindex };
	long found = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (found != BPF_FIB_LKUP_RET_SUCCESS && found != BPF_FIB_LKUP_RET_NO_NEIGH)
		return NO_NETNS_ID;
	__u32 ifindex = fib.ifindex;
	struct pod_iface *pod = bpf_map_lookup_elem(&np_pod_ifaces, &ifindex);
	return pod && pod->addr == after->daddr ? pod->netns_id : NO_NETNS_ID;
}

/* Whether a socket of the backend pod in `netns` other than its listener holds
 * `after`'s tuple: a connection in TIME_WAIT, most often, from a direct
 * connection of the client's on the same source port. The client's TCP
 * timestamps for the VIP run on another offset than for the pod's address
 * (Linux derives them per address pair), so the backend would refuse the new
 * SYN as an old duplicate and the client retry. */
static __always_inline int backend_socket_holds(struct __sk_buff *skb, const struct ct_key *after, __u32 netns)
{
	if (netns == NO_NETNS_ID)
		return 0;
	struct bpf_sock_tuple tuple = { .ipv4 = { .saddr = after->saddr, .daddr = after->daddr,
						  .sport = after->sport, .dport = after->dport } };
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), netns, 0);
	if (!sk)
		return 0;
	int held = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return held;
}

/* Whether a live flow's reply entry has `after`'s reply tuple. */
static __always_inline int reply_entry_live(const struct ct_key *after)
{
	struct ct_key back = reversed(after);
	struct ct_value *existing = bpf_map_lookup_elem(&np_conntrack, &back);
	return existing && !closed(existing);
}

/* Whether a flow sent on from the node's address may not use `after`'s source
 * port: below the range this node's translations use, or a local socket's. */
static __always_inline int node_port_unusable(struct __sk_buff *skb, const struct ct_key *after)
{
	return bpf_ntohs(after->sport) < CLASH_PORT_FIRST || local_socket_owns(skb, after);
}

/* Gives the flow about to be opened (`after`, as the backend will see it) a
 * source port whose reply tuple is free: the client's own when it is, else a
 * random one. `from_node`: sent on from the node's address. 0 when one was
 * found. */
static __always_inline int free_source_port(struct __sk_buff *skb, struct ct_key *after, const struct ct_key *flow,
					    int from_node)
{
	__u32 netns = backend_netns(skb, after);
	/* A reply entry of this very flow (reopened) is no clash. */
	int clash = (reply_entry_live(after) && !bpf_map_lookup_elem(&np_conntrack, flow)) ||
		    backend_socket_holds(skb, after, netns);
	if (!clash && !(from_node && node_port_unusable(skb, after)))
		return 0;
	if (clash)
		count(COUNTER_CT_CLASH);
	for (int i = 0; i < CLASH_TRIES; i++) {
		after->sport = bpf_htons(CLASH_PORT_FIRST + bpf_get_prandom_u32() % CLASH_PORT_COUNT);
		if (!reply_entry_live(after) && !(from_node && local_socket_owns(skb, after)) &&
		    !backend_socket_holds(skb, after, netns))
			return 0;
	}
	count(COUNTER_CT_CLASH_UNRESOLVED);
	return -1;
}

/* A new flow to a Service: pick a backend, ask policy, record both directions
 * (charged to the pod of this node that takes part). When it opens none,
 * `*why` says why. */
static __always_inline struct ct_value *open_flow(struct __sk_buff *skb, struct packet *pkt, enum unopened *why)
{
	struct svc_key svc = { .vip = pkt->flow.daddr, .port = pkt->flow.dport, .proto = pkt->flow.proto };
	struct svc_value *service = bpf_map_lookup_elem(&np_services, &svc);
	if (!service)
		return NULL;
	*why = SERVICE_UNSERVED;
	if (!may_open(skb, pkt, service))
		return NULL;
	if (service->backend_count == 0) {
		count(COUNTER_NO_BACKEND);
		return NULL;
	}
	__u64 now = bpf_ktime_get_ns();
	struct backend_value *backend = pick_backend(service, pkt->flow.saddr, now);
	if (!backend)
		return NULL;
	/* The client is the pod itself for a hairpin too: its own policies decide. */
	int reason = policy_verdict(pkt->flow.saddr, backend->addr, backend->port, pkt->flow.proto);
	if (reason) {
		struct ct_key tried = { .saddr = pkt->flow.saddr, .daddr = backend->addr, .sport = pkt->flow.sport,
					.dport = backend->port, .proto = pkt->flow.proto };
		report_denial(&tried, svc.vip, svc.port, reason);
		*why = POLICY_DENIED;
		return NULL;
	}
	*why = FLOW_REFUSED;
	__be32 owner = owner_of(pkt->flow.saddr, backend->addr);
	int fresh = bpf_map_lookup_elem(&np_conntrack, &pkt->flow) == NULL;
	if (fresh && !ct_admit(owner))
		return NULL;

	struct ct_value original = {
		.dst_addr = backend->addr, .dst_port = backend->port, .rewrite = CT_REWRITE_DST,
		.service_id = service->service_id, .owner = owner, .last_seen_ns = now,
	};
	/* The reply's source becomes the VIP again; a hairpin reply also goes back to the pod. */
	struct ct_value reply = {
		.src_addr = svc.vip, .src_port = svc.port, .rewrite = CT_REWRITE_SRC, .reply = 1,
		.service_id = service->service_id, .owner = owner, .last_seen_ns = now,
	};
	struct ct_key after = { .saddr = pkt->flow.saddr, .daddr = backend->addr, .sport = pkt->flow.sport,
				.dport = backend->port, .proto = pkt->flow.proto };
	if (backend->addr == pkt->flow.saddr) {
		__u32 zero = 0;
		struct lb_config *config = bpf_map_lookup_elem(&np_config, &zero);
		if (!config || !config->hairpin_addr)
			return NULL;
		after.saddr = config->hairpin_addr;
		count(COUNTER_HAIRPIN_FLOW);
	}
	/* A NodePort flow from outside to a backend on another node is sent on from
	 * this node's address (the key's), so its replies come back here to be
	 * translated rather than straight to a client that never dialled the pod. */
	int from_node = (service->flags & SVC_F_NODE_PORT) && !owner;
	if (from_node) {
		after.saddr = svc.vip;
		count(COUNTER_NODE_PORT_SNAT);
	}
	/* The reply tuple may be a live flow's (the client reused its source port
	 * towards the same backend, or two Services share the backend): never take
	 * over its entry; give this flow another source port instead. */
	if (free_source_port(skb, &after, &pkt->flow, from_node))
		return NULL;
	if (after.saddr != pkt->flow.saddr || after.sport != pkt->flow.sport) {
		original.src_addr = after.saddr;
		original.src_port = after.sport;
		original.rewrite |= CT_REWRITE_SRC;
		reply.dst_addr = pkt->flow.saddr;
		reply.dst_port = pkt->flow.sport;
		reply.rewrite |= CT_REWRITE_DST;
	}
	struct ct_key back = reversed(&after);
	if (bpf_map_update_elem(&np_conntrack, &back, &reply, BPF_ANY)) {
		count(COUNTER_CT_FULL);
		return NULL;
	}
	/* Two CPUs may open the same flow at once: the first entry written wins. */
	if (bpf_map_update_elem(&np_conntrack, &pkt->flow, &original, BPF_NOEXIST) &&
	    bpf_map_update_elem(&np_conntrack, &pkt->flow, &original, BPF_EXIST)) {
		count(COUNTER_CT_FULL);
		return NULL;
	}
	if (fresh)
		ct_charge(owner);
	count(COUNTER_NEW_FLOW);
	return bpf_map_lookup_elem(&np_conntrack, &pkt->flow);
}

#endif
