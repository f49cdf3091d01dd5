/* Parsing a packet into its flow key and the offsets of what may be rewritten:
 * IPv4 with any header length (options included), the first fragment of a
 * datagram like any packet, later fragments by their datagram, ICMP errors by
 * the flow they are about. What does not parse says why, so that policy can
 * drop it for isolated pods rather than let it by. */
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

#define AF_INET 2 /* for FIB lookups; the socket headers do not build for BPF */

#include "abi.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* ICMP (linux/icmp.h pulls in socket headers that do not build for BPF). */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

struct icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

/* An ICMP error: its header, then the IP header and first 8 bytes of the
 * datagram it is about. */
struct icmp_error {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__u32 unused; /* or the next-hop MTU of a "fragmentation needed" */
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
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
/* Everything parsing may read: Ethernet, the longest IPv4 header, an ICMP
 * error header, the longest inner IPv4 header and 8 bytes of its payload. */
#define PARSE_LEN (ETH_HLEN + 60 + 8 + 60 + 8)

/* What parsing made of a packet. */
enum parsed {
	PARSE_FLOW = 0,    /* IPv4 with a flow tuple: TCP, UDP, SCTP, ICMP echo */
	PARSE_FRAGMENT,    /* a later fragment: addresses, protocol and id, no ports */
	PARSE_ICMP_ERROR,  /* an ICMP error about the flow in pkt->inner */
	PARSE_NOT_IP,      /* ARP and other link-level protocols: not for policy */
	PARSE_IPV6,
	PARSE_MALFORMED,   /* IPv4 that does not parse: bad version or header length, truncated */
	PARSE_PROTOCOL,    /* IPv4 of another protocol, or ICMP neither echo nor error */
};

/* The parsed packet: its flow key, TCP flags, and where its headers live. */
struct packet {
	struct ct_key flow;
	/* The flow an ICMP error is about, as that flow's packet was sent. */
	struct ct_key inner;
	__u32 l4_off;      /* 0: no L4 header here (a later fragment) */
	__u32 l4_csum_off; /* 0: no L4 checksum to keep (ICMP echo, SCTP, a later fragment) */
	__u32 inner_off;   /* ICMP errors: the inner IPv4 header */
	__u32 inner_l4_off;
	__u64 csum_flags;  /* UDP: a zero checksum stays "none" */
	__be16 ip_id;
	__u8 first_fragment; /* the first fragment of a datagram in several */
	__u8 addresses;      /* flow.saddr and flow.daddr were read */
	__u8 syn, ack, fin, rst;
};

/* The linear part holds every header parsing reads (or the whole packet):
 * data beyond it is pulled in rather than given up on. */
static __always_inline int pull(struct __sk_buff *skb)
{
	__u32 want = skb->len < PARSE_LEN ? skb->len : PARSE_LEN;
	if ((long)skb->data_end - (long)skb->data >= (long)want)
		return 0;
	return bpf_skb_pull_data(skb, want);
}

/* The ports (or echo id) of the L4 header at `off`, for `proto`: 0 when read,
 * -1 when the header is not all there. */
static __always_inline int read_ports(void *data, void *data_end, __u32 off, __u8 proto, __be16 *sport,
				      __be16 *dport)
{
	if (proto == IPPROTO_ICMP) {
		struct icmp_echo *icmp = data + off;
		if ((void *)(icmp + 1) > data_end)
			return -1;
		*sport = icmp->id;
		*dport = icmp->id;
		return 0;
	}
	/* TCP, UDP and SCTP have their ports first, source then destination. */
	struct sctp_ports *ports = data + off;
	if ((void *)(ports + 1) > data_end)
		return -1;
	*sport = ports->source;
	*dport = ports->dest;
	return 0;
}

/* An ICMP error's inner packet: the flow it belonged to. */
static __always_inline int parse_icmp_error(void *data, void *data_end, __u32 l4_off, struct packet *pkt)
{
	__u32 inner_off = l4_off + sizeof(struct icmp_error);
	struct iphdr *inner = data + inner_off;
	if ((void *)(inner + 1) > data_end || inner->version != 4 || inner->ihl < 5)
		return PARSE_MALFORMED;
	__u32 inner_l4_off = inner_off + inner->ihl * 4;
	pkt->inner_off = inner_off;
	pkt->inner_l4_off = inner_l4_off;
	__u8 proto = inner->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_SCTP && proto != IPPROTO_ICMP)
		return PARSE_PROTOCOL;
	pkt->inner.saddr = inner->saddr;
	pkt->inner.daddr = inner->daddr;
	pkt->inner.proto = proto;
	if (read_ports(data, data_end, inner_l4_off, proto, &pkt->inner.sport, &pkt->inner.dport))
		return PARSE_MALFORMED;
	return PARSE_ICMP_ERROR;
}

static __always_inline int parse(struct __sk_buff *skb, struct packet *pkt)
{
	if (pull(skb))
		return PARSE_MALFORMED;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return PARSE_IPV6;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IP;
	struct iphdr *ip = data + IP_OFF;
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	pkt->flow.saddr = ip->saddr;
	pkt->flow.daddr = ip->daddr;
	pkt->flow.proto = ip->protocol;
	pkt->ip_id = ip->id;
	pkt->addresses = 1;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return PARSE_FRAGMENT;
	pkt->first_fragment = (ip->frag_off & bpf_htons(IP_MF)) != 0;
	__u32 l4_off = IP_OFF + ip->ihl * 4;
	pkt->l4_off = l4_off;
	__u8 proto = ip->protocol;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4_off;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_MALFORMED;
		pkt->flow.sport = tcp->source;
		pkt->flow.dport = tcp->dest;
		pkt->l4_csum_off = l4_off + offsetof(struct tcphdr, check);
		pkt->syn = tcp->syn;
		pkt->ack = tcp->ack;
		pkt->fin = tcp->fin;
		pkt->rst = tcp->rst;
		return PARSE_FLOW;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = data + l4_off;
		if ((void *)(udp + 1) > data_end)
			return PARSE_MALFORMED;
		pkt->flow.sport = udp->source;
		pkt->flow.dport = udp->dest;
		pkt->l4_csum_off = l4_off + offsetof(struct udphdr, check);
		pkt->csum_flags = BPF_F_MARK_MANGLED_0;
		return PARSE_FLOW;
	}
	if (proto == IPPROTO_ICMP) {
		/* An echo request and its reply are one flow, the echo identifier
		 * standing for both ports; an error is about another flow. */
		struct icmp_echo *icmp = data + l4_off;
		if ((void *)(icmp + 1) > data_end)
			return PARSE_MALFORMED;
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY) {
			pkt->flow.sport = icmp->id;
			pkt->flow.dport = icmp->id;
			return PARSE_FLOW;
		}
		if (icmp->type == ICMP_DEST_UNREACH || icmp->type == ICMP_TIME_EXCEEDED ||
		    icmp->type == ICMP_PARAMETERPROB)
			return parse_icmp_error(data, data_end, l4_off, pkt);
		return PARSE_PROTOCOL;
	}
	/* SCTP: for policy only (no Service is SCTP, and nothing rewrites it). */
	if (proto == IPPROTO_SCTP) {
		if (read_ports(data, data_end, l4_off, proto, &pkt->flow.sport, &pkt->flow.dport))
			return PARSE_MALFORMED;
		return PARSE_FLOW;
	}
	return PARSE_PROTOCOL;
}

#endif
