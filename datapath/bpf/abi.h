/* The kernel/userspace contract: every key, value and event struct and every
 * constant the datapath shares with nodeplaned. Each has one Rust twin in
 * datapath/abi/src/lib.rs; a test checks the structs against the program's BTF
 * and the constants (enums, so BTF carries them) against abi.c's. */
#ifndef NODEPLANE_ABI_H
#define NODEPLANE_ABI_H

#include <linux/types.h>

/* A Service port: the virtual IP, port and protocol a client dials. */
struct svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

enum svc_flags {
	SVC_F_NODE_PORT = 1, /* a NodePort: key is the node's IP */
};

struct svc_value {
	__u32 service_id;   /* names the Service in the backends map */
	__u16 backend_count;
	__u16 flags;        /* SVC_F_* */
	__u32 affinity_timeout_s; /* sessionAffinity: ClientIP; 0 for none */
};

/* Backend number `slot` (0..backend_count) of a Service. */
struct backend_key {
	__u32 service_id;
	__u32 slot;
};

struct backend_value {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* A backend of a Service, by address: present while it is one. */
struct backend_id {
	__u32 service_id;
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* A client's backend under ClientIP session affinity. */
struct affinity_key {
	__u32 service_id;
	__be32 client;
};

struct affinity_value {
	struct backend_value backend;
	__u64 last_seen_ns;
};

/* A host socket's unconnected UDP exchange with a backend it reached through a
 * VIP: replies are reported as coming from the VIP. */
struct sock_revnat_key {
	__u64 cookie;       /* bpf_get_socket_cookie() */
	__be32 addr;        /* the backend */
	__be16 port;
	__u16 pad;
};

struct sock_revnat_value {
	__be32 vip;
	__be16 port;
	__u16 pad;
};

/* A flow as seen in one direction. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What a conntrack entry rewrites in the packets of its direction. */
enum ct_rewrite {
	CT_REWRITE_SRC = 1,
	CT_REWRITE_DST = 2,
};

/* What the flow has seen (both entries of a flow carry the same bits). */
enum ct_seen {
	CT_SEEN_FIN_ORIGINAL = 1,
	CT_SEEN_FIN_REPLY = 2,
	CT_SEEN_RST = 4,
	CT_SEEN_REPLY = 8, /* a packet in the reply direction: the flow is established */
};

struct ct_value {
	__be32 src_addr; /* written when rewrite has CT_REWRITE_SRC */
	__be32 dst_addr; /* written when rewrite has CT_REWRITE_DST */
	__be16 src_port;
	__be16 dst_port;
	__u8 rewrite;    /* enum ct_rewrite */
	__u8 reply;      /* 1: this entry is the flow's reply direction */
	__u16 pad;
	__u32 seen;      /* enum ct_seen; a u32 for atomic updates from several CPUs */
	__u32 service_id;   /* the Service the flow was balanced for */
	__be32 owner;       /* the pod of this node the flow counts against (np_ct_opened); 0 for none */
	__u32 pad2;
	__u64 last_seen_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

/* An IP datagram sent in fragments, by what every fragment carries. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

/* The datagram's ports, which only its first fragment carries. */
struct frag_value {
	__be16 sport;
	__be16 dport;
};

/* A pod's host-side interface (np_pod_ifaces, by ifindex): the address the
 * pod may send from, and the id of the pod's network namespace as the node's
 * sees it (IFLA_LINK_NETNSID; NO_NETNS_ID when unknown). */
struct pod_iface {
	__be32 addr;
	__u32 netns_id;
};

enum pod_netns {
	NO_NETNS_ID = 0xffffffff,
};

/* NetworkPolicy, compiled by nodeplaned (datapath/model, programmed by
 * datapath/src/policy_maps.rs) and consulted once per new connection;
 * established flows hit conntrack only. */

/* A pod on this node, by IP: which directions its policies isolate. Pods not
 * isolated in a direction are open in it. */
enum endpoint_flags {
	ENDPOINT_F_ISOLATED_INGRESS = 1,
	ENDPOINT_F_ISOLATED_EGRESS = 2,
};

struct endpoint_value {
	__u32 flags; /* ENDPOINT_F_* */
};

enum policy_direction {
	POLICY_INGRESS = 0,
	POLICY_EGRESS = 1,
};

/* The data of an np_policy key: a pod, a direction, and the peer's address. */
struct policy_peer {
	__be32 pod;
	__u8 direction; /* enum policy_direction */
	__u8 pad[3];
	__be32 peer;
};

/* The part of each LPM key that is matched whole, in bits: the prefix length of
 * an entry is this plus its peer's (or port's) prefix length. */
enum policy_bits {
	POLICY_PEER_BITS = 64, /* pod and direction */
	PORT_MATCH_BITS = 48,  /* port set, protocol and padding */
};

/* Longest-prefix match over policy_peer: prefixlen is POLICY_PEER_BITS + the peer's prefix length. */
struct policy_key {
	__u32 prefixlen;
	struct policy_peer data;
};

/* The ports a pod may use with the peers of one np_policy prefix. */
struct policy_value {
	__u32 port_set; /* 0: none */
};

/* The data of an np_policy_ports key: a port set, a protocol, a port. */
struct port_match {
	__u32 port_set;
	__u8 proto;
	__u8 pad;
	__be16 port;
};

/* Longest-prefix match over port_match: prefixlen is PORT_MATCH_BITS + the
 * port's prefix length, so a port range is a handful of prefixes, never one
 * entry per port. */
struct port_key {
	__u32 prefixlen;
	struct port_match data;
};

/* Why a packet was dropped by policy: a new connection not allowed, or a
 * packet from or to an isolated pod that cannot be judged (egress: the
 * sender's isolation; ingress: the receiver's). */
enum policy_reason {
	POLICY_DENIED_EGRESS_PEER = 1,  /* the client's egress allows nothing to this peer */
	POLICY_DENIED_EGRESS_PORT = 2,  /* ... allows this peer, not this port and protocol */
	POLICY_DENIED_INGRESS_PEER = 3, /* the server's ingress allows nothing from this peer */
	POLICY_DENIED_INGRESS_PORT = 4, /* ... allows this peer, not this port and protocol */
	POLICY_EGRESS_IPV6 = 5,         /* IPv6: no policy speaks it yet */
	POLICY_INGRESS_IPV6 = 6,
	POLICY_EGRESS_MALFORMED = 7,    /* IPv4 that does not parse */
	POLICY_INGRESS_MALFORMED = 8,
	POLICY_EGRESS_PROTOCOL = 9,     /* neither TCP, UDP, SCTP nor ICMP (echo or error) */
	POLICY_INGRESS_PROTOCOL = 10,
	POLICY_EGRESS_FRAGMENT = 11,    /* a later fragment of no datagram that was let through */
	POLICY_INGRESS_FRAGMENT = 12,
	POLICY_EGRESS_STRAY_ICMP = 13,  /* an ICMP error about no flow of this node */
	POLICY_INGRESS_STRAY_ICMP = 14,
};

/* A dropped connection attempt, as sent to nodeplaned through np_policy_events. */
struct policy_event {
	__be32 saddr;
	__be32 daddr;    /* the server: a pod, after Service translation */
	__be16 sport;
	__be16 dport;
	__be32 vip;      /* the Service address the client dialled; 0 for none */
	__be16 vip_port;
	__u8 proto;
	__u8 reason;     /* enum policy_reason */
};

/* Settings nodeplaned writes once: slot 0 of np_config. */
struct lb_config {
	__be32 hairpin_addr; /* source for a pod reaching itself through a VIP */
	__u32 ct_per_pod;    /* flows a pod of this node may hold in conntrack; 0: no limit */
	__u64 node_netns;    /* the node's network namespace (its cookie): socket LB is for its sockets only */
};

/* Per-CPU counters, indexed by enum counter. */
enum counter {
	COUNTER_NEW_FLOW = 0,    /* a Service flow opened */
	COUNTER_TRANSLATED,      /* a packet rewritten */
	COUNTER_HAIRPIN_FLOW,    /* a flow from a pod to itself through a VIP */
	COUNTER_NO_BACKEND,      /* a Service without backends: passed on untranslated */
	COUNTER_CT_FULL,         /* conntrack insert failed: a Service flow's packet dropped, a plain one passed untracked */
	COUNTER_REWRITE_FAILED,  /* checksum or store failed: packet dropped */
	COUNTER_CT_CLASH,        /* a new flow's tuple is a live flow's or a backend socket's: it got another source port */
	COUNTER_REDIRECTED,      /* a translated packet delivered past the host stack */
	COUNTER_SOCK_BALANCED,   /* a host socket's connect/sendmsg to a VIP sent to a backend */
	COUNTER_POLICY_DENIED_EGRESS_PEER,  /* drops by enum policy_reason, in its order */
	COUNTER_POLICY_DENIED_EGRESS_PORT,
	COUNTER_POLICY_DENIED_INGRESS_PEER,
	COUNTER_POLICY_DENIED_INGRESS_PORT,
	COUNTER_POLICY_EGRESS_IPV6,
	COUNTER_POLICY_INGRESS_IPV6,
	COUNTER_POLICY_EGRESS_MALFORMED,
	COUNTER_POLICY_INGRESS_MALFORMED,
	COUNTER_POLICY_EGRESS_PROTOCOL,
	COUNTER_POLICY_INGRESS_PROTOCOL,
	COUNTER_POLICY_EGRESS_FRAGMENT,
	COUNTER_POLICY_INGRESS_FRAGMENT,
	COUNTER_POLICY_EGRESS_STRAY_ICMP,
	COUNTER_POLICY_INGRESS_STRAY_ICMP,
	COUNTER_POLICY_EVENT_LOST, /* a drop np_policy_events had no room for */
	COUNTER_FLOW_TRACKED,    /* a pod's connection without translation recorded in conntrack */
	COUNTER_SPOOFED,         /* on a pod's interface, a packet from or to an address not the pod's: dropped */
	COUNTER_CT_POD_LIMIT,    /* a new flow of a pod at its conntrack share: not recorded */
	COUNTER_CT_CLASH_UNRESOLVED, /* no free source port for a clashing flow: dropped */
	COUNTER_FRAGMENTED,      /* the first fragment of a datagram let through: its later ones follow */
	COUNTER_ICMP_TRANSLATED, /* an ICMP error about a translated flow, translated back */
	COUNTER_NODE_PORT_SNAT,  /* a NodePort flow from outside to another node's backend, sent on from this node's address */
	COUNTER_MAX,
};

/* The maps' capacities (max_entries). */
enum map_capacity {
	NODEPLANE_MAX_SERVICES = 65536,
	NODEPLANE_MAX_BACKENDS = 262144,
	NODEPLANE_CT_ENTRIES = 262144,
	NODEPLANE_SOCK_REVNAT_ENTRIES = 65536,
	NODEPLANE_MAX_ENDPOINTS = 65536,
	NODEPLANE_POLICY_ENTRIES = 1048576,
	NODEPLANE_POLICY_EVENTS_BYTES = 256 * 1024,
	NODEPLANE_FRAGMENT_ENTRIES = 16384,
};

#endif
