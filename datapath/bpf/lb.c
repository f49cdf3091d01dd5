// SPDX-License-Identifier: GPL-2.0
/* nodeplane's Service load balancer, attached to tc ingress of every pod's
 * host-side veth. A readable pipeline: parse -> conntrack -> service lookup ->
 * NAT -> let the stack route it. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

char LICENSE[] SEC("license") = "GPL";

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))

/* The parsed packet: its flow key and where its L4 header lives. */
struct packet {
	struct ct_key flow;
	__u32 l4_off;
	__u32 l4_csum_off;
	__u64 csum_flags; /* UDP: a zero checksum stays "none" */
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
		pkt->csum_flags = 0;
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
	return -1;
}

/* Rewrites one address and one port, keeping both checksums right. */
static __always_inline int rewrite(struct __sk_buff *skb, struct packet *pkt, int to_dst, __be32 old_addr,
				   __be32 new_addr, __be16 old_port, __be16 new_port)
{
	__u32 addr_off = to_dst ? IP_DST_OFF : IP_SRC_OFF;
	__u32 port_off = pkt->l4_off + (to_dst ? 2 : 0); /* dest follows source in TCP and UDP */

	if (bpf_l4_csum_replace(skb, pkt->l4_csum_off, old_addr, new_addr, pkt->csum_flags | BPF_F_PSEUDO_HDR | 4) ||
	    bpf_l4_csum_replace(skb, pkt->l4_csum_off, old_port, new_port, pkt->csum_flags | 2) ||
	    bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, 4) ||
	    bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) ||
	    bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0))
		return -1;
	return 0;
}

/* The reverse of `flow` after its destination became addr:port. */
static __always_inline struct ct_key reply_key(const struct ct_key *flow, __be32 addr, __be16 port)
{
	struct ct_key key = {
		.saddr = addr,
		.daddr = flow->saddr,
		.sport = port,
		.dport = flow->sport,
		.proto = flow->proto,
	};
	return key;
}

/* A new flow to a Service: pick a backend, record both directions. */
static __always_inline struct ct_value *open_flow(struct packet *pkt)
{
	struct svc_key svc = { .vip = pkt->flow.daddr, .port = pkt->flow.dport, .proto = pkt->flow.proto };
	struct svc_value *service = bpf_map_lookup_elem(&np_services, &svc);
	if (!service || service->backend_count == 0)
		return NULL;
	struct backend_key slot = {
		.service_id = service->service_id,
		.slot = bpf_get_prandom_u32() % service->backend_count,
	};
	struct backend_value *backend = bpf_map_lookup_elem(&np_backends, &slot);
	if (!backend)
		return NULL;

	__u64 now = bpf_ktime_get_ns();
	struct ct_value original = { .nat_addr = backend->addr, .nat_port = backend->port, .dir = CT_ORIGINAL, .last_seen_ns = now };
	struct ct_value reply = { .nat_addr = svc.vip, .nat_port = svc.port, .dir = CT_REPLY, .last_seen_ns = now };
	struct ct_key back = reply_key(&pkt->flow, backend->addr, backend->port);
	if (bpf_map_update_elem(&np_conntrack, &back, &reply, BPF_ANY) ||
	    bpf_map_update_elem(&np_conntrack, &pkt->flow, &original, BPF_ANY))
		return NULL;
	return bpf_map_lookup_elem(&np_conntrack, &pkt->flow);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	struct packet pkt = {};
	if (parse(skb, &pkt))
		return TC_ACT_OK;

	struct ct_value *ct = bpf_map_lookup_elem(&np_conntrack, &pkt.flow);
	if (!ct)
		ct = open_flow(&pkt);
	if (!ct)
		return TC_ACT_OK; /* not Service traffic */
	ct->last_seen_ns = bpf_ktime_get_ns();

	if (ct->dir == CT_ORIGINAL) {
		if (rewrite(skb, &pkt, 1, pkt.flow.daddr, ct->nat_addr, pkt.flow.dport, ct->nat_port))
			return TC_ACT_SHOT;
	} else {
		if (rewrite(skb, &pkt, 0, pkt.flow.saddr, ct->nat_addr, pkt.flow.sport, ct->nat_port))
			return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}
