# Shared by the boot tests' guest scripts (sourced). They run in the guest as
# root through systemd.run=, with the test's directory shared over 9p at /mnt.
# Each check writes results/NAME.out and results/NAME.rc; the tests on the host
# assert on them one by one.
S=/mnt
R=$S/results
G=$S/np-guest
mkdir -p "$R"

# check NAME FUNCTION: runs FUNCTION, recording its output and exit code.
check() {
	name=$1
	shift
	"$@" >"$R/$name.out" 2>&1
	echo $? >"$R/$name.rc"
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds; 1 when time runs out.
wait_for() {
	tries=$(($1 * 5))
	shift
	while ! "$@" >/dev/null 2>&1; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || return 1
		sleep 0.2
	done
}

range_clear_of_nodeports() {
	set -- $(cat /proc/sys/net/ipv4/ip_local_port_range)
	[ "$2" -lt 30000 ] || [ "$1" -gt 32767 ]
}

nodeports_reserved() {
	grep -q '30000-32767' /proc/sys/net/ipv4/ip_local_reserved_ports
}

show_ports() {
	echo "ip_local_port_range: $(cat /proc/sys/net/ipv4/ip_local_port_range)"
	echo "ip_local_reserved_ports: $(cat /proc/sys/net/ipv4/ip_local_reserved_ports)"
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

# Waits for nodeplaned to be active (Type=notify: after READY=1).
nodeplaned_up() {
	wait_for 300 systemctl is-active nodeplaned || {
		systemctl status nodeplaned --no-pager
		return 1
	}
}

# The boot's journal, synced, and results/done: the host may cut the power.
collect() {
	journalctl -b --no-pager >"$R/journal.txt" 2>&1
	sync
	touch "$R/done"
}

finish() {
	collect
	systemctl poweroff
}

# collect_then ACTION: this boot's journal, synced, then `systemctl ACTION`
# (reboot or poweroff), not done: the host boots the VM again (a reboot ends
# QEMU too: -no-reboot).
collect_then() {
	journalctl -b --no-pager >"$R/journal-$(wc -l <"$R/boots").txt" 2>&1
	sync
	systemctl "$1"
}
