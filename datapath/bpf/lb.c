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
 * not watch. A pod sends only from its own address. What policy cannot judge as
 * a flow (IPv6, malformed IPv4, other protocols, fragments of no known
 * datagram, ICMP errors about no known flow) is dropped where an isolated pod
 * sends or receives it, never let by. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "conntrack.h"
#include "deliver.h"
#include "frag.h"
#include "icmp.h"
#include "nat.h"
#include "policy.h"
#include "service.h"
#include "socket_lb.h"

char LICENSE[] SEC("license") = "GPL";

/* The pod whose host-side interface `ifindex` is, when nodeplaned registered
 * it; else, for a packet with addresses, the pod of this node at `addr`. */
static __always_inline __be32 pod_at(__u32 ifindex, const struct packet *pkt, __be32 addr)
{
	struct pod_iface *pod = bpf_map_lookup_elem(&np_pod_ifaces, &ifindex);
	if (pod)
		return pod->addr;
	return pkt->addresses && is_local_pod(addr) ? addr : 0;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct packet pkt = {};
	int parsed = parse(skb, &pkt);
	if (parsed == PARSE_NOT_IP)
		return TC_ACT_OK;
	__be32 sender = pod_at(skb->ingress_ifindex, &pkt, pkt.flow.saddr);
	/* A pod sends from its own address only: a spoofed packet never reaches
	 * conntrack, where it could open or refresh another's flow. */
	if (sender && pkt.addresses && pkt.flow.saddr != sender) {
		count(COUNTER_SPOOFED);
		return TC_ACT_SHOT;
	}
	int later = parsed == PARSE_FRAGMENT;
	if (later)
		parsed = recover_fragment(&pkt);
	__be32 receiver = pkt.addresses && is_local_pod(pkt.flow.daddr) ? pkt.flow.daddr : 0;
	if (parsed == PARSE_ICMP_ERROR)
		return icmp_error(skb, &pkt, sender, receiver);
	if (parsed != PARSE_FLOW)
		return unjudged(&pkt, parsed, sender, receiver) ? TC_ACT_SHOT : TC_ACT_OK;

	struct ct_value *ct = bpf_map_lookup_elem(&np_conntrack, &pkt.flow);
	/* A new connection on the tuple of a closed flow, or of one whose backend is
	 * gone, is a new flow; so is any UDP packet of a flow whose backend is gone.
	 * A Service flow's reply entry is left to forget_stale_reply. An untranslated
	 * flow no reply has come back for is decided again by each packet that can
	 * open one: its destination may have become a Service since (or its policy
	 * changed); once answered, it is established and hits conntrack only. A later
	 * fragment opens nothing: it follows its datagram's flow. */
	if (ct && !later) {
		int syn = pkt.syn && !pkt.ack;
		int service = ct->service_id != 0;
		int opening = syn || pkt.flow.proto != IPPROTO_TCP;
		/* Only a packet that can open a flow pays for the backend lookup. */
		if ((syn && closed(ct) && !(service && ct->reply)) ||
		    (service && !ct->reply && opening && !backend_alive(ct->service_id, ct->dst_addr, ct->dst_port)) ||
		    (!service && !ct->reply && opening && !(ct->seen & CT_SEEN_REPLY)))
			ct = NULL;
	}
	if (!ct && later)
		return unjudged(&pkt, PARSE_FRAGMENT, sender, receiver) ? TC_ACT_SHOT : TC_ACT_OK;
	if (!ct) {
		enum unopened why = NOT_A_SERVICE;
		ct = open_flow(skb, &pkt, &why);
		if (!ct && (why == POLICY_DENIED || why == FLOW_REFUSED))
			return TC_ACT_SHOT;
		/* Not recorded: a UDP flow must be balanced once backends appear. */
		if (!ct && why == SERVICE_UNSERVED)
			return TC_ACT_OK;
	}
	if (!ct) {
		forget_stale_reply(&pkt);
		if (open_plain_flow(&pkt))
			return TC_ACT_SHOT;
		fragment_let_through(&pkt, &pkt.flow);
		return TC_ACT_OK;
	}
	ct->last_seen_ns = bpf_ktime_get_ns();

	struct ct_key after;
	if (translate(skb, &pkt, ct, &after)) {
		count(COUNTER_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	fragment_let_through(&pkt, &after);
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
	int parsed = parse(skb, &pkt);
	if (parsed == PARSE_NOT_IP)
		return TC_ACT_OK;
	/* The node's own traffic (kubelet probes): always allowed. */
	int from_node = !skb->ingress_ifindex;
	int later = parsed == PARSE_FRAGMENT;
	if (later)
		parsed = recover_fragment(&pkt);
	__be32 receiver = pod_at(skb->ifindex, &pkt, pkt.flow.daddr);
	/* Routing sends a pod what is addressed to it and nothing else: anything
	 * else was forged onto its interface, and would be judged as another's. */
	if (receiver && pkt.addresses && pkt.flow.daddr != receiver) {
		count(COUNTER_SPOOFED);
		return TC_ACT_SHOT;
	}
	if (parsed == PARSE_ICMP_ERROR) {
		if (from_node || icmp_error_related(&pkt))
			return TC_ACT_OK;
		return unjudged(&pkt, parsed, 0, receiver) ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (parsed != PARSE_FLOW)
		return from_node || !unjudged(&pkt, parsed, 0, receiver) ? TC_ACT_OK : TC_ACT_SHOT;
	/* Both ends of every flow from_pod recorded: the other direction's entry is
	 * keyed by this packet's tuple reversed. */
	struct ct_key back = reversed(&pkt.flow);
	if (bpf_map_lookup_elem(&np_conntrack, &back))
		return TC_ACT_OK;
	if (later)
		return from_node || !unjudged(&pkt, PARSE_FRAGMENT, 0, receiver) ? TC_ACT_OK : TC_ACT_SHOT;
	/* The node's own connection, recorded so the pod's replies are known to from_pod. */
	if (from_node) {
		if (is_local_pod(pkt.flow.daddr) && !track_plain(&pkt.flow, pkt.flow.daddr))
			fragment_let_through(&pkt, &pkt.flow);
		return TC_ACT_OK;
	}
	/* Forwarded from an interface without from_pod: decided here. */
	if (open_plain_flow(&pkt))
		return TC_ACT_SHOT;
	fragment_let_through(&pkt, &pkt.flow);
	return TC_ACT_OK;
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
