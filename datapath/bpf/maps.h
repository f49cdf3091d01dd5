/* Every map of the datapath, pinned by name under nodeplaned's bpffs
 * directory (a later load reuses them: traffic outlives the supervisor). Their
 * names and capacities are checked against datapath/abi/src/lib.rs by a test.
 * The capacities here are a node of 64 GiB's: the loader sizes most maps from
 * the node's memory (datapath/src/capacity.rs). The tables only userspace
 * writes are not preallocated (BPF_F_NO_PREALLOC): an entry costs memory once
 * it is added, and their capacity is only a limit. */
#ifndef NODEPLANE_MAPS_H
#define NODEPLANE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
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

/* Not an LRU: a full map refuses new flows rather than evict live ones, and
 * each pod's share is limited (np_ct_opened, lb_config.ct_per_pod). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_CT_ENTRIES);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_conntrack SEC(".maps");

/* Flows each pod of this node opened (by its address), counted here; the
 * supervisor's GC keeps np_ct_closed, so opened - closed is what a pod holds. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_ct_opened SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_ct_closed SEC(".maps");

/* Datagrams in fragments whose first fragment was let through: the ports of
 * their later fragments, under the addresses before and after translation. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NODEPLANE_FRAGMENT_ENTRIES);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_fragments SEC(".maps");

/* The pods' host-side interfaces, by ifindex: the address each pod may use. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NODEPLANE_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct pod_iface);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_pod_ifaces SEC(".maps");

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
	__uint(map_flags, BPF_F_NO_PREALLOC);
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
	__type(key, __u32); /* enum counter; names in the ABI crate's COUNTERS */
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_counters SEC(".maps");

#endif
