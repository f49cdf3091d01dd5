//! The shipped systemd units: the notify protocol settings the supervisor
//! relies on, its place before containerd, and the hardening of it and of
//! nodeplane-health (systemd-analyze's own exposure score, offline).

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/nodeplaned.service")
}

#[test]
fn the_unit_uses_notify_watchdog_restart_and_starts_before_containerd() {
    let text = std::fs::read_to_string(unit()).unwrap();
    let settings: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for expected in [
        "Type=notify",
        "Restart=on-failure",
        "Before=containerd.service kubelet.service",
        "ExecReload=/usr/bin/nodeplanectl reload",
        "WantedBy=multi-user.target containerd.service",
        "ReadWritePaths=/proc/sys/net",
        "ReadWritePaths=-/var/lib/cni/networks",
    ] {
        assert!(settings.contains(&expected), "missing {expected}");
    }
    assert!(settings.iter().any(|l| l.starts_with("WatchdogSec=")), "no WatchdogSec=");
    // `systemctl clean` removes a unit's StateDirectory=: never host-local's data.
    assert!(!settings.iter().any(|l| l.starts_with("StateDirectory=")), "StateDirectory= in the unit");
    let tmpfiles = std::fs::read_to_string(unit().with_file_name("nodeplane-tmpfiles.conf")).unwrap();
    assert!(tmpfiles.lines().any(|l| l.trim() == "d /var/lib/cni/networks 0755 root root -"), "{tmpfiles}");
}

/// systemd-analyze's exposure score of `unit` is at most `threshold` (0.0-10.0).
fn assert_exposure_at_most(unit: &Path, threshold: f32) {
    // --threshold is on the 0-100 scale of the printed 0.0-10.0 score.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--threshold={}", (threshold * 10.0) as u32))
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    let report = String::from_utf8_lossy(&out.stdout);
    let score = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{report}"));
    eprintln!("{}: {score}", unit.display());
    assert!(out.status.success(), "exposure above {threshold}: {score}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn systemd_analyze_rates_the_unit_exposure_at_most_1_5() {
    assert_exposure_at_most(&unit(), 1.5);
}

/// The metrics endpoint's socket is systemd's, passed to nodeplaned: the
/// supervisor's unit still opens no IP socket, and the socket's default
/// address is the config's.
#[test]
fn the_metrics_socket_listens_where_the_config_says_and_passes_its_socket_to_nodeplaned() {
    let socket = unit().with_file_name("nodeplaned-metrics.socket");
    let check = Command::new("systemd-analyze").arg("verify").arg(&socket).output().expect("systemd-analyze");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let text = std::fs::read_to_string(&socket).unwrap();
    let settings: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    let listen = format!("ListenStream={}", nodeplane::config::MetricsConfig::default().listen_stream().unwrap());
    for expected in
        [listen.as_str(), "Service=nodeplaned.service", "FileDescriptorName=metrics", "WantedBy=sockets.target"]
    {
        assert!(settings.contains(&expected), "missing {expected}");
    }
    let service = std::fs::read_to_string(unit()).unwrap();
    assert!(service.lines().any(|l| l == "RestrictAddressFamilies=AF_UNIX AF_NETLINK"), "{service}");
}

/// The health check server holds IP sockets and nothing else.
#[test]
fn systemd_analyze_rates_the_health_unit_exposure_at_most_2_0() {
    let health = unit().with_file_name("nodeplane-health.service");
    assert_exposure_at_most(&health, 2.0);
    let text = std::fs::read_to_string(&health).unwrap();
    for expected in ["DynamicUser=yes", "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_UNIX AF_INET"] {
        assert!(text.lines().any(|l| l.trim() == expected), "missing {expected}");
    }
}

/// The image build writes slot a's boot entry and `nodeplanectl update` the
/// next slot's: one format, twice.
#[test]
fn the_image_and_the_updater_write_boot_entries_alike() {
    let hash = "ab".repeat(32);
    assert_eq!(
        nodeplane_image::boot_entry("a", "0.1.0+abc", 1, &hash),
        nodeplane::slots::entry("a", "0.1.0+abc", 1, &hash, nodeplane_image::KERNEL_ARGS)
    );
}
