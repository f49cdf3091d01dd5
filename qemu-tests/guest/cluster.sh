# The cluster boot (tests/cluster.rs): a node that joined the test control
# plane. The host drives the cluster with kubectl and hands over in phases
# through the share: it writes $S/phase1 (the pods, once Running), $S/phase2
# (after deleting one) and $S/finish; this script answers with
# results/phase1-done and results/phase2-done.
. /mnt/lib.sh

# The lines "pod NAME IP" of a phase file.
pods() {
	sed -n 's/^pod \([^ ]*\) \([^ ]*\)$/\1 \2/p' "$1"
}

# The network namespace (ip netns name) of the pod with address $1.
netns_of() {
	for ns in $(ip netns list | cut -d' ' -f1); do
		if ip -n "$ns" -4 -o addr show eth0 2>/dev/null | grep -q " $1/"; then
			echo "$ns"
			return 0
		fi
	done
	return 1
}

# Every pod of $1 reaches every other by pod IP (HTTP to the echo server), and
# gets its name back.
pods_reach_each_other() {
	pods "$1" | while read -r from from_ip; do
		ns=$(netns_of "$from_ip") || { echo "no namespace holds $from_ip ($from)"; return 1; }
		pods "$1" | while read -r to to_ip; do
			[ "$to" = "$from" ] && continue
			reply=$(ip netns exec "$ns" "$G" get "$to_ip" 8080) || { echo "$from -> $to ($to_ip): $reply"; return 1; }
			echo "$from ($from_ip) -> $to ($to_ip): $reply"
			[ "$reply" = "$to" ] || return 1
		done || return 1
	done
}

pod_cidr() {
	want=$(sed -n 's/^cidr //p' "$S/phase1")
	nodeplanectl status
	nodeplanectl status --json | grep -q "\"pod_cidr\": \"$want\"" || { echo "nodeplaned has no pod_cidr $want"; return 1; }
	# host-local allocated every pod from it (one /24: the first three octets).
	prefix=${want%.*}
	pods "$S/phase1" | while read -r name ip; do
		case "$ip" in "$prefix".*) echo "$name: $ip in $want" ;; *) echo "$name: $ip not in $want"; return 1 ;; esac
	done
}

services_shown() {
	nodeplanectl status | tee /dev/stderr | grep -q '^kubelet  *active (running)' &&
		nodeplanectl status | grep -q '^containerd  *active (running)'
}

# The kubelet holds a delay inhibitor: a poweroff waits for it to stop the pods.
graceful_shutdown() {
	systemd-inhibit --list --no-pager | tee /dev/stderr | grep -Eq 'kubelet.*shutdown.*delay'
}

ip_freed() {
	gone=$(sed -n 's/^deleted //p' "$S/phase2")
	ls /var/lib/cni/networks/nodeplane
	[ ! -e "/var/lib/cni/networks/nodeplane/$gone" ] || { echo "the deleted pod's $gone is still reserved"; return 1; }
	nodeplanectl sweep --dry-run | tee /dev/stderr | grep -q '^would free 0 reservation'
}

restarts() {
	restarts=$(systemctl show -P NRestarts nodeplaned)
	echo "restart the kubelet"
	systemctl restart kubelet || return 1
	echo "kill -9 nodeplaned (pid $(systemctl show -P MainPID nodeplaned))"
	kill -9 "$(systemctl show -P MainPID nodeplaned)"
	wait_for 120 restarted "$restarts" || return 1
	wait_for 60 systemctl is-active -q kubelet || return 1
	sleep 5
	pods_reach_each_other "$S/phase2"
}

restarted() {
	[ "$(systemctl show -P NRestarts nodeplaned)" -gt "$1" ] && systemctl is-active -q nodeplaned
}

nodeplaned_up || true
wait_for 1200 test -e "$S/phase1"
check pod-cidr pod_cidr
check pods-reach pods_reach_each_other "$S/phase1"
check services services_shown
check graceful-shutdown graceful_shutdown
touch "$R/phase1-done"
wait_for 900 test -e "$S/phase2"
check ip-freed ip_freed
check restarts restarts
touch "$R/phase2-done"
wait_for 600 test -e "$S/finish"
finish
