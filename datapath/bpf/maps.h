/* The kernel/userspace contract: every map and every key/value struct the
 * datapath shares with nodeplaned. Each struct has one #[repr(C)] twin in
 * datapath/src/maps.rs, and a test checks both against this object's BTF. */
#ifndef NODEPLANE_MAPS_H
#define NODEPLANE_MAPS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* A Service port: the virtual IP, port and protocol a client dials. */
struct svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

#define SVC_F_NODE_PORT 1 /* a NodePort: key is the node's IP */

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
	__u64 last_seen_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

/* NetworkPolicy, compiled by nodeplaned (datapath/src/policy_maps.rs) and
 * consulted once per new connection; established flows hit conntrack only. */

/* A pod on this node, by IP: which directions its policies isolate. Pods not
 * isolated in a direction are open in it. */
#define ENDPOINT_F_ISOLATED_INGRESS 1
#define ENDPOINT_F_ISOLATED_EGRESS 2

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

/* Longest-prefix match over policy_peer: prefixlen is 64 + the peer's prefix length. */
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

/* Longest-prefix match over port_match: prefixlen is 48 + the port's prefix
 * length, so a port range is a handful of prefixes, never one entry per port. */
struct port_key {
	__u32 prefixlen;
	struct port_match data;
};

/* Why a new connection was dropped. */
enum policy_reason {
	POLICY_DENIED_EGRESS_PEER = 1,  /* the client's egress allows nothing to this peer */
	POLICY_DENIED_EGRESS_PORT = 2,  /* ... allows this peer, not this port and protocol */
	POLICY_DENIED_INGRESS_PEER = 3, /* the server's ingress allows nothing from this peer */
	POLICY_DENIED_INGRESS_PORT = 4, /* ... allows this peer, not this port and protocol */
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
	__u32 pad;
	__u64 node_netns;    /* the node's network namespace (its cookie): socket LB is for its sockets only */
};

/* Per-CPU counters, indexed by enum counter. */
enum counter {
	COUNTER_NEW_FLOW = 0,    /* a Service flow opened */
	COUNTER_TRANSLATED,      /* a packet rewritten */
	COUNTER_HAIRPIN_FLOW,    /* a flow from a pod to itself through a VIP */
	COUNTER_NO_BACKEND,      /* a Service without backends: passed on untranslated */
	COUNTER_CT_FULL,         /* conntrack insert failed: packet passed on untranslated */
	COUNTER_REWRITE_FAILED,  /* checksum or store failed: packet dropped */
	COUNTER_CT_CLASH,        /* a new flow's reply tuple is a live flow's: passed on untranslated */
	COUNTER_REDIRECTED,      /* a translated packet delivered past the host stack */
	COUNTER_SOCK_BALANCED,   /* a host socket's connect/sendmsg to a VIP sent to a backend */
	COUNTER_POLICY_DENIED_EGRESS_PEER,  /* drops by enum policy_reason, in its order */
	COUNTER_POLICY_DENIED_EGRESS_PORT,
	COUNTER_POLICY_DENIED_INGRESS_PEER,
	COUNTER_POLICY_DENIED_INGRESS_PORT,
	COUNTER_POLICY_EVENT_LOST, /* a drop np_policy_events had no room for */
	COUNTER_FLOW_TRACKED,    /* a pod's connection without translation recorded in conntrack */
	COUNTER_MAX,
};

#define NODEPLANE_MAX_SERVICES 65536
#define NODEPLANE_MAX_BACKENDS 262144
#define NODEPLANE_CT_ENTRIES 262144
#define NODEPLANE_SOCK_REVNAT_ENTRIES 65536
#define NODEPLANE_MAX_ENDPOINTS 65536
#define NODEPLANE_POLICY_ENTRIES 1048576
#define NODEPLANE_POLICY_EVENTS_BYTES (256 * 1024)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_BACKENDS);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_BACKENDS);
	__type(key, struct backend_id);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_backend_alive SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NODEPLANE_CT_ENTRIES);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NODEPLANE_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NODEPLANE_SOCK_REVNAT_ENTRIES);
	__type(key, struct sock_revnat_key);
	__type(value, struct sock_revnat_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_sock_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_ENDPOINTS);
	__type(key, __be32);
	__type(value, struct endpoint_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NODEPLANE_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NODEPLANE_POLICY_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_policy_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NODEPLANE_POLICY_EVENTS_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_policy_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32); /* enum counter; names in datapath/src/maps.rs COUNTERS */
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_counters SEC(".maps");

#endif
