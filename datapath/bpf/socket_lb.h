/* Socket-level load balancing for the node's own processes (sockets of the
 * node's network namespace in a cgroup v2 subtree, the whole node by default):
 * their connect() or sendmsg() to a VIP goes straight to a backend, so no
 * packet of theirs needs translating. An unconnected UDP socket's replies are
 * reported as coming from the VIP. The node is one client for sessionAffinity. */
#ifndef NODEPLANE_SOCKET_LB_H
#define NODEPLANE_SOCKET_LB_H

#include "service.h"

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

#endif
