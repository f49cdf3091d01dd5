#!/bin/sh
# The same node booted again (its state disk kept) with an invalid node.toml
# through fw_cfg: /var persisted, the bad config reported, the node up with the
# last good one.
. /mnt/lib.sh
set -u

var_persisted() {
	echo "mark from the first boot: $(cat /var/lib/nodeplane-test-mark)"
	echo "this boot:                $(cat /proc/sys/kernel/random/boot_id)"
	[ "$(cat /var/lib/nodeplane-test-mark)" != "$(cat /proc/sys/kernel/random/boot_id)" ]
}

bad_config_reported() {
	nodeplaned_up || return 1
	journalctl -b -u nodeplane-config --no-pager -o cat
	journalctl -b -u nodeplane-config -o cat | grep -q 'is invalid' || return 1
	echo "in use:"
	cat /etc/nodeplane/node.toml
	# The first boot's config (check_interval = "1s"), not the bad one.
	grep -q 'check_interval = "1s"' /etc/nodeplane/node.toml || return 1
	nodeplanectl status && range_clear_of_nodeports && nodeports_reserved
}

check var-persisted var_persisted
check bad-config bad_config_reported
finish
