/* Parsing a packet into its flow key and the offsets of what may be rewritten. */
#ifndef NODEPLANE_PARSE_H
#define NODEPLANE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

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

#endif
