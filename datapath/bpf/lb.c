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
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "conntrack.h"
#include "deliver.h"
#include "nat.h"
#include "policy.h"
#include "service.h"
#include "socket_lb.h"

char LICENSE[] SEC("license") = "GPL";

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
