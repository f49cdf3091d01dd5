// SPDX-License-Identifier: GPL-2.0
/* nodeplane's datapath: the Service load balancer and NetworkPolicy, attached
 * to tc ingress (from_pod) and egress (to_pod) of every pod's host-side veth,
 * and to tc ingress of the node's own interface (NodePorts, outside traffic to
 * pods). A readable pipeline: parse ->
 * conntrack -> service lookup -> policy -> NAT -> deliver.
 *
 * Each flow has two conntrack entries, one per direction, each saying what to
 * rewrite in its packets. A pod reaching itself through a Service (hairpin) gets
 * its source rewritten to a link-local address, so the reply comes back through
 * the node and is translated like any other. A translated packet is delivered
 * straight to the interface its new destination is routed through, past the
 * host's netfilter: that sees the two directions of a translated flow under
 * different tuples and, where rules drop `ctstate INVALID` (kube-proxy and
 * Docker install them), would drop the replies.
 *
 * Every connection from or to a pod of this node is decided by policy once, at
 * its first packet, and recorded in conntrack (untranslated ones too), so its
 * later packets and its replies only hit conntrack. from_pod decides what pods
 * and the node's interface send; to_pod records what the node itself sends to a
 * pod (always allowed) and decides what arrives by an interface nodeplane does
 * not watch. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "counters.h"
#include "maps.h"
#include "policy.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2 /* for the FIB lookup; the socket headers do not build for BPF */
#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* An ICMP echo request or reply (linux/icmp.h pulls in socket headers that do
 * not build for BPF). */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

struct icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

/* The start of an SCTP common header: ports where TCP and UDP have them. */
struct sctp_ports {
	__be16 source;
	__be16 dest;
};

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))

/* The parsed packet: its flow key, TCP flags, and where its L4 header lives. */
struct packet {
	struct ct_key flow;
	__u32 l4_off;
	__u32 l4_csum_off;
	__u64 csum_flags; /* UDP: a zero checksum stays "none" */
	__u8 syn, ack, fin, rst;
};

static __always_inline int parse(struct __sk_buff *skb, struct packet *pkt)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
		return -1; /* options or fragments: not load-balanced */
	pkt->l4_off = IP_OFF + sizeof(*ip);
	pkt->flow.saddr = ip->saddr;
	pkt->flow.daddr = ip->daddr;
	pkt->flow.proto = ip->protocol;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = data + pkt->l4_off;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		pkt->flow.sport = tcp->source;
		pkt->flow.dport = tcp->dest;
		pkt->l4_csum_off = pkt->l4_off + offsetof(struct tcphdr, check);
		pkt->syn = tcp->syn;
		pkt->ack = tcp->ack;
		pkt->fin = tcp->fin;
		pkt->rst = tcp->rst;
		return 0;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = data + pkt->l4_off;
		if ((void *)(udp + 1) > data_end)
			return -1;
		pkt->flow.sport = udp->source;
		pkt->flow.dport = udp->dest;
		pkt->l4_csum_off = pkt->l4_off + offsetof(struct udphdr, check);
		pkt->csum_flags = BPF_F_MARK_MANGLED_0;
		return 0;
	}
	/* ICMP echo, for policy only: a request and its reply are one flow, the
	 * echo identifier standing for both ports. Other ICMP (errors) passes. */
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmp_echo *icmp = data + pkt->l4_off;
		if ((void *)(icmp + 1) > data_end || (icmp->type != ICMP_ECHO && icmp->type != ICMP_ECHOREPLY))
			return -1;
		pkt->flow.sport = icmp->id;
		pkt->flow.dport = icmp->id;
		return 0;
	}
	/* SCTP: for policy only (no Service is SCTP, and nothing rewrites it). */
	if (ip->protocol == IPPROTO_SCTP) {
		struct sctp_ports *sctp = data + pkt->l4_off;
		if ((void *)(sctp + 1) > data_end)
			return -1;
		pkt->flow.sport = sctp->source;
		pkt->flow.dport = sctp->dest;
		return 0;
	}
	return -1;
}

/* Rewrites the address and port at one end of the packet, keeping both checksums. */
static __always_inline int rewrite_end(struct __sk_buff *skb, struct packet *pkt, int dst, __be32 old_addr,
				       __be32 new_addr, __be16 old_port, __be16 new_port)
{
	__u32 addr_off = dst ? IP_DST_OFF : IP_SRC_OFF;
	__u32 port_off = pkt->l4_off + (dst ? 2 : 0); /* dest follows source in TCP and UDP */

	if (bpf_l4_csum_replace(skb, pkt->l4_csum_off, old_addr, new_addr, pkt->csum_flags | BPF_F_PSEUDO_HDR | 4) ||
	    bpf_l4_csum_replace(skb, pkt->l4_csum_off, old_port, new_port, pkt->csum_flags | 2) ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) ||
	    bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) ||
	    bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0))
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
};

/* A new flow to a Service: pick a backend, ask policy, record both directions.
 * When it opens none, `*why` says why. */
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

	struct ct_value original = {
		.dst_addr = backend->addr, .dst_port = backend->port, .rewrite = CT_REWRITE_DST,
		.service_id = service->service_id, .last_seen_ns = now,
	};
	/* The reply's source becomes the VIP again; a hairpin reply also goes back to the pod. */
	struct ct_value reply = {
		.src_addr = svc.vip, .src_port = svc.port, .rewrite = CT_REWRITE_SRC, .reply = 1,
		.service_id = service->service_id, .last_seen_ns = now,
	};
	struct ct_key after = { .saddr = pkt->flow.saddr, .daddr = backend->addr, .sport = pkt->flow.sport,
				.dport = backend->port, .proto = pkt->flow.proto };
	if (backend->addr == pkt->flow.saddr) {
		__u32 zero = 0;
		struct lb_config *config = bpf_map_lookup_elem(&np_config, &zero);
		if (!config || !config->hairpin_addr)
			return NULL;
		original.src_addr = config->hairpin_addr;
		original.src_port = pkt->flow.sport;
		original.rewrite |= CT_REWRITE_SRC;
		reply.dst_addr = pkt->flow.saddr;
		reply.dst_port = pkt->flow.sport;
		reply.rewrite |= CT_REWRITE_DST;
		after.saddr = config->hairpin_addr;
		count(COUNTER_HAIRPIN_FLOW);
	}
	struct ct_key back = reversed(&after);
	/* The reply tuple may belong to a live flow (the client reused its source
	 * port towards the same backend): never take over its entry. */
	struct ct_value *existing = bpf_map_lookup_elem(&np_conntrack, &back);
	if (existing && !closed(existing) && bpf_map_lookup_elem(&np_conntrack, &pkt->flow) == NULL) {
		count(COUNTER_CT_CLASH);
		return NULL;
	}
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
	count(COUNTER_NEW_FLOW);
	return bpf_map_lookup_elem(&np_conntrack, &pkt->flow);
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

/* Records a connection that is not translated, both ways: its packets and
 * replies then hit conntrack only. A live Service flow's entry is never taken
 * over. */
static __always_inline void track_plain(const struct ct_key *flow)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_value original = { .last_seen_ns = now };
	struct ct_value reply = { .reply = 1, .last_seen_ns = now };
	struct ct_key back = reversed(flow);
	struct ct_value *existing = bpf_map_lookup_elem(&np_conntrack, &back);
	if (existing && existing->service_id && !closed(existing))
		return;
	if (bpf_map_update_elem(&np_conntrack, flow, &original, BPF_ANY) ||
	    bpf_map_update_elem(&np_conntrack, &back, &reply, BPF_ANY)) {
		count(COUNTER_CT_FULL);
		return;
	}
	count(COUNTER_FLOW_TRACKED);
}

/* A new connection without translation: when it is a pod's of this node,
 * policy decides, and an allowed one is recorded. Returns the reason to drop it,
 * or 0. */
static __always_inline int open_plain_flow(const struct packet *pkt)
{
	const struct ct_key *flow = &pkt->flow;
	if (!is_local_pod(flow->saddr) && !is_local_pod(flow->daddr))
		return 0;
	int reason = policy_verdict(flow->saddr, flow->daddr, flow->dport, flow->proto);
	if (reason) {
		report_denial(flow, 0, 0, reason);
		return reason;
	}
	track_plain(flow);
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
		.tot_len = skb->len - ETH_HLEN, /* host order, for the MTU check */
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

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct packet pkt = {};
	if (parse(skb, &pkt))
		return TC_ACT_OK;

	struct ct_value *ct = bpf_map_lookup_elem(&np_conntrack, &pkt.flow);
	/* A new connection on the tuple of a closed flow, or of one whose backend is
	 * gone, is a new flow; so is any UDP packet of a flow whose backend is gone.
	 * A Service flow's reply entry is left to forget_stale_reply. An untranslated
	 * flow no reply has come back for is decided again by each packet that can
	 * open one: its destination may have become a Service since (or its policy
	 * changed); once answered, it is established and hits conntrack only. */
	if (ct) {
		int syn = pkt.syn && !pkt.ack;
		int service = ct->service_id != 0;
		int opening = syn || pkt.flow.proto != IPPROTO_TCP;
		/* Only a packet that can open a flow pays for the backend lookup. */
		if ((syn && closed(ct) && !(service && ct->reply)) ||
		    (service && !ct->reply && opening && !backend_alive(ct->service_id, ct->dst_addr, ct->dst_port)) ||
		    (!service && !ct->reply && opening && !(ct->seen & CT_SEEN_REPLY)))
			ct = NULL;
	}
	if (!ct) {
		enum unopened why = NOT_A_SERVICE;
		ct = open_flow(skb, &pkt, &why);
		if (!ct && why == POLICY_DENIED)
			return TC_ACT_SHOT;
		/* Not recorded: a UDP flow must be balanced once backends appear. */
		if (!ct && why == SERVICE_UNSERVED)
			return TC_ACT_OK;
	}
	if (!ct) {
		forget_stale_reply(&pkt);
		return open_plain_flow(&pkt) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	ct->last_seen_ns = bpf_ktime_get_ns();

	struct ct_key after;
	if (translate(skb, &pkt, ct, &after)) {
		count(COUNTER_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	if (ct->reply && !(ct->seen & CT_SEEN_REPLY))
		mark_both(ct, &after, CT_SEEN_REPLY);
	if (pkt.fin || pkt.rst)
		track_teardown(&pkt, ct, &after);
	if (!ct->rewrite)
		return TC_ACT_OK; /* a recorded untranslated connection */
	count(COUNTER_TRANSLATED);
	return deliver(skb, &after);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	struct packet pkt = {};
	if (parse(skb, &pkt))
		return TC_ACT_OK;
	/* Both ends of every flow from_pod recorded: the other direction's entry is
	 * keyed by this packet's tuple reversed. */
	struct ct_key back = reversed(&pkt.flow);
	if (bpf_map_lookup_elem(&np_conntrack, &back))
		return TC_ACT_OK;
	/* The node's own traffic (kubelet probes): always allowed, recorded so the
	 * pod's replies are known to from_pod. */
	if (!skb->ingress_ifindex) {
		if (is_local_pod(pkt.flow.daddr))
			track_plain(&pkt.flow);
		return TC_ACT_OK;
	}
	/* Forwarded from an interface without from_pod: decided here. */
	return open_plain_flow(&pkt) ? TC_ACT_SHOT : TC_ACT_OK;
}

/* Socket-level load balancing for the node's own processes (sockets of the
 * node's network namespace in a cgroup v2 subtree, the whole node by default):
 * their connect() or sendmsg() to a VIP
 * goes straight to a backend, so no packet of theirs needs translating. An
 * unconnected UDP socket's replies are reported as coming from the VIP. The
 * node is one client for sessionAffinity. */

/* Whether the socket is the node's own: pods' processes live in cgroups below
 * the node's too, but their sockets are in their own network namespaces, and
 * their traffic goes through from_pod (NetworkPolicy included). */
static __always_inline int node_socket(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct lb_config *config = bpf_map_lookup_elem(&np_config, &zero);
	return config && config->node_netns && bpf_get_netns_cookie(ctx) == config->node_netns;
}

/* Rewrites the socket address of a VIP to one of its backends. */
static __always_inline void balance_socket(struct bpf_sock_addr *ctx, int unconnected_udp)
{
	if (!node_socket(ctx))
		return;
	struct svc_key svc = { .vip = ctx->user_ip4, .port = (__be16)ctx->user_port, .proto = (__u8)ctx->protocol };
	struct svc_value *service = bpf_map_lookup_elem(&np_services, &svc);
	/* NodePorts are for traffic arriving at the node, not for its own sockets. */
	if (!service || (service->flags & SVC_F_NODE_PORT))
		return;
	if (service->backend_count == 0) {
		count(COUNTER_NO_BACKEND);
		return;
	}
	struct backend_value *backend = pick_backend(service, 0, bpf_ktime_get_ns());
	if (!backend)
		return;
	if (unconnected_udp) {
		struct sock_revnat_key key = { .cookie = bpf_get_socket_cookie(ctx), .addr = backend->addr,
					       .port = backend->port };
		struct sock_revnat_value vip = { .vip = svc.vip, .port = svc.port };
		bpf_map_update_elem(&np_sock_revnat, &key, &vip, BPF_ANY);
	}
	ctx->user_ip4 = backend->addr;
	ctx->user_port = backend->port;
	count(COUNTER_SOCK_BALANCED);
}

SEC("cgroup/connect4")
int sock_connect(struct bpf_sock_addr *ctx)
{
	balance_socket(ctx, 0);
	return 1;
}

SEC("cgroup/sendmsg4")
int sock_sendmsg(struct bpf_sock_addr *ctx)
{
	balance_socket(ctx, 1);
	return 1;
}

SEC("cgroup/recvmsg4")
int sock_recvmsg(struct bpf_sock_addr *ctx)
{
	struct sock_revnat_key key = { .cookie = bpf_get_socket_cookie(ctx), .addr = ctx->user_ip4,
				       .port = (__be16)ctx->user_port };
	struct sock_revnat_value *vip = bpf_map_lookup_elem(&np_sock_revnat, &key);
	if (vip) {
		ctx->user_ip4 = vip->vip;
		ctx->user_port = vip->port;
	}
	return 1;
}
