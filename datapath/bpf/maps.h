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

struct svc_value {
	__u32 service_id;   /* names the Service in the backends map */
	__u16 backend_count;
	__u16 pad;
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

/* A flow as seen in one direction. */
struct ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum ct_dir {
	CT_ORIGINAL = 0, /* client -> VIP: rewrite the destination to the backend */
	CT_REPLY = 1,    /* backend -> client: rewrite the source back to the VIP */
};

struct ct_value {
	__be32 nat_addr; /* the address to write */
	__be16 nat_port; /* the port to write */
	__u8 dir;        /* enum ct_dir */
	__u8 pad;
	__u64 last_seen_ns;
};

#define NODEPLANE_MAX_SERVICES 65536
#define NODEPLANE_MAX_BACKENDS 262144
#define NODEPLANE_CT_ENTRIES 262144

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
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NODEPLANE_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_conntrack SEC(".maps");

#endif
