#!/bin/sh
# The first boot of a fresh node (blank state disk, a valid node.toml through
# fw_cfg): boot, sysctls, D-Bus, datapath, IPAM and resilience checks.
. /mnt/lib.sh
set -u

ready() {
	nodeplaned_up || return 1
	wait_for 120 systemctl is-active containerd || return 1
	ready_at=$(systemctl show -P ActiveEnterTimestampMonotonic nodeplaned)
	containerd_at=$(systemctl show -P ExecMainStartTimestampMonotonic containerd)
	echo "nodeplaned_ready_us=$ready_at"
	echo "containerd_started_us=$containerd_at"
	[ "$ready_at" -gt 0 ] && [ "$containerd_at" -gt "$ready_at" ]
}

no_failed_units() {
	echo "system: $(timeout 300 systemctl is-system-running --wait)"
	echo "multi_user_us=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
	failed=$(systemctl list-units --failed --no-legend --plain)
	echo "failed units: ${failed:-none}"
	# Not crash-looping either: active, and never restarted.
	health="$(systemctl is-active nodeplane-health) $(systemctl show -P NRestarts nodeplane-health)"
	echo "nodeplane-health: $health"
	[ "$health" = "active 0" ] || journalctl -u nodeplane-health -n 20 --no-pager
	[ -z "$failed" ] && [ "$health" = "active 0" ]
}

root_read_only() {
	findmnt -n -o TARGET,FSTYPE,OPTIONS /
	if touch /usr/nodeplane-write-test; then
		echo "a write to the root file system succeeded"
		return 1
	fi
	[ "$(findmnt -n -o FSTYPE /)" = erofs ]
}

etc_volatile_overlay() {
	findmnt -n -o TARGET,FSTYPE /etc
	[ "$(findmnt -n -o FSTYPE /etc)" = overlay ] && touch /etc/nodeplane-write-test
}

mark_var() {
	findmnt -n -o TARGET,SOURCE,FSTYPE /var
	cat /proc/sys/kernel/random/boot_id >/var/lib/nodeplane-test-mark
}

sysctls() {
	show_ports
	range_clear_of_nodeports && nodeports_reserved || return 1
	echo "an extra sysctl.d file sets an overlapping range:"
	echo 'net.ipv4.ip_local_port_range = 20000 40000' >/etc/sysctl.d/99-overlapping.conf
	systemctl restart systemd-sysctl
	show_ports
	wait_for 30 range_clear_of_nodeports || return 1
	echo "nodeplaned restored it:"
	show_ports
	journalctl -b -u nodeplaned -o verbose --no-pager | grep -m1 'SYSCTL_RESTORED='
}

dbus() {
	health=$(busctl get-property org.nodeplane.Node1 /org/nodeplane/Node1 org.nodeplane.Node1 Health)
	echo "busctl: Health $health"
	nodeplanectl status
	[ "$health" = 's "healthy"' ]
}

# The idle node's supervisor (no pods yet): what its cgroup holds, and the
# maps' capacities and memory as it reports them.
memory() {
	echo "mem_total_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
	cgroup=/sys/fs/cgroup/system.slice/nodeplaned.service
	echo "memory_current_bytes=$(cat $cgroup/memory.current)"
	grep -E '^(anon|file|kernel|kernel_stack|percpu|slab|sock|vmalloc) ' $cgroup/memory.stat
	nodeplanectl status | tr ' ' '\n' | grep -E '^(map_np_|maps_memory_bytes|conntrack_memory_bytes|conntrack_capacity|conntrack_flows_per_pod)'
}

net_config() {
	echo '{"cniVersion":"1.0.0","name":"nodeplane","type":"nodeplane-cni","ipam":{"type":"host-local"}}'
}

# pod NAME: a pod network namespace through the real CNI path, with the CNI_ARGS
# containerd's CRI passes.
pod() {
	ip netns add "$1"
	net_config | CNI_COMMAND=ADD CNI_CONTAINERID="$1" CNI_NETNS="/run/netns/$1" CNI_IFNAME=eth0 \
		CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$1" /usr/lib/cni/nodeplane-cni
}

pod_ip() {
	ip -n "$1" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1
}

diagnose() {
	echo "--- diagnostics"
	sysctl net.ipv4.ip_forward
	ip -br addr
	ip route
	ip neigh
	ip -n client addr
	ip -n client route
	ip -n client neigh
	bpftool net show
	nodeplanectl status
	nodeplanectl services
	nodeplanectl conntrack
}

vip_serves() {
	[ "$(ip netns exec client "$G" request 10.96.0.10 80)" = served ]
}

datapath() {
	pod client && pod server || return 1
	# Their sandboxes exist, as containerd's CRI would record them.
	"$G" containers k8s.io client server || return 1
	server_ip=$(pod_ip server)
	ip netns exec server "$G" serve 8080 served &
	wait_for 10 ip netns exec client "$G" request "$server_ip" 8080 || {
		diagnose
		return 1
	}
	echo "pod to pod ($server_ip): $(ip netns exec client "$G" request "$server_ip" 8080)"
	"$G" manifest demo 10.96.0.10 "$server_ip" >/etc/nodeplane/manifests/demo.yaml
	wait_for 30 vip_serves || {
		diagnose
		return 1
	}
	echo "pod to Service VIP 10.96.0.10:80: $(ip netns exec client "$G" request 10.96.0.10 80)"
	echo "pinned:"
	ls /sys/fs/bpf/nodeplane /sys/fs/bpf/nodeplane/links
	bpftool net show
	nodeplanectl services
	[ -e /sys/fs/bpf/nodeplane/np_conntrack ] && [ "$(ls /sys/fs/bpf/nodeplane/links | wc -l)" -ge 2 ]
}

sock_balanced_counted() {
	nodeplanectl status | grep -q 'count_sock_balanced=[1-9]'
}

# The node's own processes reach a ClusterIP: their sockets are balanced.
socket_lb() {
	reply=$("$G" request 10.96.0.10 80) || return 1
	echo "a process of the node itself to the Service VIP: $reply"
	# The counter reaches the status at the next sync.
	wait_for 10 sock_balanced_counted
	nodeplanectl status | grep -o 'count_sock_balanced=[0-9]*'
	nodeplanectl services | tail -1
	nodeplanectl services | grep -q 'sock_connect, sock_recvmsg, sock_sendmsg attached' && [ "$reply" = served ]
}

node_port_listed() {
	nodeplanectl services | grep -q '^10.0.2.15:30080 .*NodePort'
}

# The host connects to the NodePort through QEMU's network when asked to
# (results/host-request), and answers in host-reply.
node_port() {
	"$G" manifest web 10.96.0.11 --node-port 30080 "$(pod_ip server)" >/etc/nodeplane/manifests/web.yaml
	wait_for 30 node_port_listed || {
		diagnose
		return 1
	}
	nodeplanectl services
	touch "$R/host-request"
	wait_for 60 test -e "$S/host-reply" || return 1
	echo "the host, through QEMU's network to 10.0.2.15:30080: $(cat "$S/host-reply")"
	[ "$(cat "$S/host-reply")" = served ]
}

ipam() {
	dir=/var/lib/cni/networks/nodeplane
	printf 'gone-sandbox\r\neth0' >"$dir/10.244.0.200"
	printf 'live-sandbox\r\neth0' >"$dir/10.244.0.201"
	touch -d '2 hours ago' "$dir/10.244.0.200" "$dir/10.244.0.201"
	"$G" containers k8s.io live-sandbox || return 1
	nodeplanectl sweep || return 1
	ls "$dir"
	[ ! -e "$dir/10.244.0.200" ] && [ -e "$dir/10.244.0.201" ] && [ -e "$dir/$(pod_ip client)" ]
}

restarted() {
	[ "$(systemctl show -P NRestarts nodeplaned)" -gt "$1" ] && systemctl is-active -q nodeplaned
}

resilience() {
	rm -f /run/stop-loop
	ip netns exec client "$G" loop 10.96.0.10 80 /run/stop-loop >/run/loop.out &
	loop=$!
	sleep 3
	restarts=$(systemctl show -P NRestarts nodeplaned)
	echo "kill -9 of nodeplaned (pid $(systemctl show -P MainPID nodeplaned)) under a request loop"
	kill -9 "$(systemctl show -P MainPID nodeplaned)"
	wait_for 120 restarted "$restarts" || return 1
	echo "restarted by systemd and READY again (NRestarts $(systemctl show -P NRestarts nodeplaned))"
	sleep 3
	touch /run/stop-loop
	wait "$loop"
	cat /run/loop.out
	nodeplanectl status
	echo "untranslated entries towards the VIP:"
	nodeplanectl conntrack | grep '10.96.0.10:80' | grep -v 'dst→' | head -20
	grep -q ' failed=0$' /run/loop.out
}

# Applies the manifests directory now (rather than at the next sync).
apply_manifests() {
	busctl call org.nodeplane.Node1 /org/nodeplane/Node1/datapath org.nodeplane.Datapath1 Sync
}

# Pod manifests for the two pods: their labels and named ports.
pod_manifests() {
	cat >/etc/nodeplane/manifests/pods.yaml <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {role: server}}
spec: {containers: [{name: s, ports: [{name: http, containerPort: 8080}]}]}
EOF
}

# server_policy ROLE: the server accepts only pods labelled ROLE, on its port "http".
server_policy() {
	cat >/etc/nodeplane/manifests/policy.yaml <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: default}
spec:
  podSelector: {matchLabels: {role: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: $1}}}]
    ports: [{port: http}]
EOF
	apply_manifests
}

network_policy() {
	server_ip=$(pod_ip server)
	pod_manifests
	nodeplanectl monitor --json >/run/monitor.out 2>&1 &
	monitor=$!
	sleep 1
	server_policy friend || return 1
	if ip netns exec client "$G" request "$server_ip" 8080 || ip netns exec client "$G" request 10.96.0.10 80; then
		echo "the client reached the server although only role=friend may"
		return 1
	fi
	echo "role=friend only: the client is blocked, directly and through the VIP"
	nodeplanectl policy default/server
	server_policy client || return 1
	direct=$(ip netns exec client "$G" request "$server_ip" 8080)
	via=$(ip netns exec client "$G" request 10.96.0.10 80)
	echo "role=client allowed: directly '$direct', through the VIP '$via'"
	nodeplanectl policy default/server
	sleep 1
	kill "$monitor"
	echo "nodeplanectl monitor saw:"
	cat /run/monitor.out
	nodeplanectl status | grep -o 'count_policy_denied_ingress_peer=[0-9]*'
	rm /etc/nodeplane/manifests/policy.yaml /etc/nodeplane/manifests/pods.yaml
	apply_manifests
	[ "$direct" = served ] && [ "$via" = served ] && grep -q '"reason":"ingress-denied-peer"' /run/monitor.out &&
		grep -q '"service":"10.96.0.10:80"' /run/monitor.out
}

# The host scrapes the metrics endpoint through QEMU's network when asked to
# (results/metrics-request; [metrics] listen = "all" on this boot), and
# answers in metrics-reply. After the kill -9: systemd kept the socket.
metrics() {
	systemctl is-active nodeplaned-metrics.socket || return 1
	systemctl show -P Listen nodeplaned-metrics.socket
	echo "nodeplaned restarts: $(systemctl show -P NRestarts nodeplaned)"
	touch "$R/metrics-request"
	wait_for 90 test -e "$S/metrics-reply" || return 1
	cat "$S/metrics-reply"
	[ "$(head -n 1 "$S/metrics-reply")" = scraped ]
}

# The reachability probe, on the node, over the netpol e2e example it carries.
probe() {
	nodeplanectl probe /usr/share/doc/nodeplane/examples/xyz --ports 80 --protocols tcp --json >"$R/probe.json"
	rc=$?
	echo "nodeplanectl probe: exit $rc"
	left=$(ip netns list | grep npprobe)
	echo "namespaces left: ${left:-none}"
	[ "$rc" -eq 0 ] && [ -z "$left" ]
}

check ready ready
check no-failed-units no_failed_units
check root-read-only root_read_only
check etc-overlay etc_volatile_overlay
check mark-var mark_var
check sysctls sysctls
check dbus dbus
check memory memory
check datapath datapath
check socket-lb socket_lb
check node-port node_port
check ipam ipam
check resilience resilience
check network-policy network_policy
check metrics metrics
check probe probe
finish
