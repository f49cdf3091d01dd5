#!/bin/sh
# An A/B update, run on every boot of the disk image (both slots' entries
# carry the systemd.run= that starts it); $S/scenario says which:
# - update: slot a writes the bundle to slot b and reboots; slot b comes up,
#   is marked good, and /var is still there;
# - broken: as update (asked over D-Bus), but slot b's entry masks nodeplaned: b's boot check
#   fails, the node reboots, b's tries run out and a boots again, saying so;
# - tampered: as update, then the host flips a byte of slot b's root: b is
#   refused (dm-verity) until its tries run out and a boots again.
# Each boot appends its slot to results/boots.
. /mnt/lib.sh
set -u
scenario=$(cat "$S/scenario")
slot=$(sed -n 's/.*nodeplane\.slot=\([ab]\).*/\1/p' /proc/cmdline)
echo "$slot" >>"$R/boots"
sync

update() {
	nodeplaned_up || return 1
	wait_for 120 nodeplanectl status >/dev/null
	cat /proc/sys/kernel/random/boot_id >/var/lib/nodeplane-update-mark
	sync
	start=$(date +%s%N)
	echo "$start" >/var/lib/nodeplane-update-started
	if [ "$scenario" = broken ]; then
		# Over D-Bus, as a management agent would: systemd runs the update.
		busctl --timeout=10min call org.nodeplane.Node1 /org/nodeplane/Node1 org.nodeplane.Node1 \
			Update su "$S/nodeplane-update.tar" 2 || return 1
		journalctl -u 'nodeplane-update-*' -o cat --no-pager
	else
		nodeplanectl update "$S/nodeplane-update.tar" --tries 2 || return 1
	fi
	echo "update_ms=$((($(date +%s%N) - start) / 1000000))"
	entry=$(ls /efi/loader/entries/nodeplane-b+2.conf) || return 1
	# The test's systemd.run= (and the scenario's breakage) on b's entry too.
	options="$(grep '^options ' "$entry") $(cat "$S/entry-options")"
	{ grep -v '^options ' "$entry"; echo "$options"; } >/efi/entry.new && mv /efi/entry.new "$entry"
	sync
	cat "$entry"
	nodeplanectl status | sed -n '/^SLOT/,$p'
}

# On b: good once nodeplane-boot-check passed and systemd-bless-boot dropped the counter.
updated() {
	echo "mark: $(cat /var/lib/nodeplane-update-mark 2>&1)"
	[ -s /var/lib/nodeplane-update-mark ] || return 1
	wait_for 400 test -e /efi/loader/entries/nodeplane-b.conf || {
		ls /efi/loader/entries
		systemctl status nodeplane-boot-check systemd-bless-boot --no-pager
		return 1
	}
	journalctl -b -u nodeplane-boot-check -o cat --no-pager
	echo "slot b good $(($(cut -d' ' -f1 /proc/uptime | cut -d. -f1))) s after its kernel started"
	# The wall clock (QEMU's RTC, the host's) runs across the reboot.
	echo "update_to_good_ms=$((($(date +%s%N) - $(cat /var/lib/nodeplane-update-started)) / 1000000))"
	ls /efi/loader/entries
	nodeplanectl status | sed -n '/^SLOT/,$p'
	nodeplanectl status | grep -q '^b .*good (booted)$'
}

# Back on a after b went bad.
rolled_back() {
	nodeplaned_up || return 1
	ls /efi/loader/entries
	nodeplanectl status | sed -n '/^SLOT/,$p'
	ls /efi/loader/entries | grep -q '^nodeplane-b+0-2.conf$' || return 1
	nodeplanectl status | grep -q '^rolled back: slot b ' || return 1
	wait_for 120 sh -c 'journalctl -b -u nodeplane-console-status -o cat | grep -q "^rolled back: slot b "' || return 1
	echo "the journal says: $(journalctl -b -u nodeplane-console-status -o cat | grep '^rolled back')"
	[ -s /var/lib/nodeplane-update-mark ]
}

case "$slot" in
a)
	if [ ! -e "$R/update.rc" ]; then
		check update update
		# Tampered: off, so the host can flip a byte of b before it boots.
		if [ "$scenario" = tampered ]; then collect_then poweroff; else collect_then reboot; fi
	else
		check rolled-back rolled_back
		finish
	fi
	;;
b)
	case "$scenario" in
	update)
		check updated updated
		finish
		;;
	broken)
		# nodeplaned is masked: the boot check fails and reboots.
		journalctl -b -u nodeplane-boot-check -o cat --no-pager >>"$R/broken-boots.txt" 2>&1
		;;
	esac
	;;
esac
