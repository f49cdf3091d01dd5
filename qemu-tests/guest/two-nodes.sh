# The two-node boot (tests/two_nodes.rs), run on node-1: node-2 is another VM
# on a QEMU socket L2 (lan0, 192.168.100.0/24), both joined to the test control
# plane. The host writes $S/phase1 (an echo Deployment spread over both nodes, a
# ClusterIP + NodePort Service, a NetworkPolicy, a client and a denied pod on
# node-1) and, after powering node-2 off, $S/phase2; this script answers with
# results/phase1-done and results/phase2-done, then waits for $S/finish.
. /mnt/lib.sh

# "pod NAME IP NODE" lines of a phase file: NAME IP NODE.
echo_pods() {
	sed -n 's/^pod \([^ ]*\) \([^ ]*\) \([^ ]*\)$/\1 \2 \3/p' "$1"
}

value() {
	sed -n "s/^$1 //p" "$S/phase1"
}

# $1 runs `np-guest get $2 $3` twelve times; the distinct replies, sorted.
replies() {
	for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
		$1 "$G" get "$2" "$3" || echo "FAILED"
	done | sort -u
}

# node-2 is known and routed: its pod CIDR via its lan0 address.
routes() {
	nodeplanectl status
	ip route show proto 78 | tee /dev/stderr | grep -q " via 192.168.100.2 dev lan0" &&
		nodeplanectl status | grep -q "remote_nodes=1"
}

# The client on node-1 reaches every echo pod by its pod IP, node-2's included.
pods_across() {
	ns=$(netns_of "$(value client)") || { echo "no namespace holds the client"; return 1; }
	echo_pods "$S/phase1" | while read -r name ip node; do
		reply=$(ip netns exec "$ns" "$G" get "$ip" 8080) || { echo "client -> $name ($ip, $node): $reply"; return 1; }
		echo "client -> $name ($ip, $node): $reply"
		[ "$reply" = "$name" ] || return 1
	done
}

# The client's connections to the ClusterIP reach the pods of both nodes.
service_across() {
	ns=$(netns_of "$(value client)") || return 1
	seen=$(replies "ip netns exec $ns" "$(value vip)" 80)
	echo "client -> $(value vip):80: $seen"
	[ "$seen" = "$(echo_pods "$S/phase1" | cut -d' ' -f1 | sort)" ]
}

# node-1's host, outside node-2, reaches node-2's NodePort: its connections
# reach both nodes' pods (node-1's through node-2, translated back there).
node_port_across() {
	seen=$(replies "" 192.168.100.2 30080)
	echo "node-1 -> 192.168.100.2:30080: $seen"
	[ "$seen" = "$(echo_pods "$S/phase1" | cut -d' ' -f1 | sort)" ]
}

# The denied pod on node-1 reaches neither node-2's echo pod nor the ClusterIP:
# node-2 knows it by its address from the Pod watch.
policy_across() {
	ns=$(netns_of "$(value denied)") || return 1
	remote=$(echo_pods "$S/phase1" | awk '$3 == "node-2" {print $2}')
	# Not a dead network: the client, admitted, gets through.
	client=$(netns_of "$(value client)") || return 1
	ip netns exec "$client" "$G" get "$remote" 8080 || { echo "the client did not reach $remote:8080"; return 1; }
	if ip netns exec "$ns" "$G" get "$remote" 8080; then echo "denied reached $remote:8080"; return 1; fi
	if ip netns exec "$ns" "$G" get "$(value vip)" 80; then echo "denied reached the ClusterIP"; return 1; fi
	echo "denied: blocked at $remote:8080 (node-2) and $(value vip):80"
}

# node-2 powered off, its pod no longer ready: the ClusterIP keeps serving
# from node-1's pod alone.
survivor_serves() {
	ns=$(netns_of "$(value client)") || return 1
	survivor=$(echo_pods "$S/phase1" | awk '$3 == "node-1" {print $1}')
	seen=$(replies "ip netns exec $ns" "$(value vip)" 80)
	echo "client -> $(value vip):80 with node-2 off: $seen"
	[ "$seen" = "$survivor" ]
}

# The second card: named lan0 and addressed from the kernel command line
# (ifname=, ip=: systemd-network-generator). What udev and networkd did with
# it is kept either way.
lan_named() {
	wait_for 120 sh -c 'ip -4 -o addr show dev lan0 | grep -q " 192.168.100.1/24 "'
	ok=$?
	ip -br link
	ip -br -4 addr
	ls -l /run/systemd/network/
	journalctl -b --no-pager -o short-monotonic -u systemd-udevd -u systemd-networkd -u systemd-network-generator
	journalctl -b --no-pager -o short-monotonic -k | grep -Ei 'virtio|renamed|eth|lan0'
	return $ok
}

check lan lan_named
nodeplaned_up || true
wait_for 1500 test -e "$S/phase1"
check routes routes
check pods-across pods_across
check service-across service_across
check node-port-across node_port_across
check policy-across policy_across
touch "$R/phase1-done"
wait_for 900 test -e "$S/phase2"
check survivor-serves survivor_serves
touch "$R/phase2-done"
wait_for 600 test -e "$S/finish"
finish
