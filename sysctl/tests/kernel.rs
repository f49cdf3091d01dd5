//! The guard against the real kernel, in throwaway network namespaces (both port
//! sysctls are per namespace, so nothing here touches the host's values).

use std::net::{TcpListener, UdpSocket};

use nodeplane_sysctl::{Extra, Guard, PortRange, SysctlConfig, SysctlError, SysctlKey, Value, kernel};
use nodeplane_testkit::{in_new_netns, privileged};

fn key(name: &str) -> SysctlKey {
    SysctlKey::parse(name).unwrap()
}

fn read(name: &str) -> String {
    kernel::read(&key(name)).unwrap()
}

fn set(name: &str, value: &str) {
    kernel::write(&key(name), value).unwrap();
}

const RANGE: &str = SysctlKey::IP_LOCAL_PORT_RANGE;
const RESERVED: &str = SysctlKey::IP_LOCAL_RESERVED_PORTS;

#[test]
fn apply_trims_an_overlapping_range_and_merges_reserved_ports() {
    if !privileged("apply_trims_an_overlapping_range_and_merges_reserved_ports") {
        return;
    }
    in_new_netns(|| {
        set(RANGE, "20000 40000");
        set(RESERVED, "8080,50000-50010");
        let (guard, report) = Guard::apply(&SysctlConfig::default());
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(read(RANGE), "20000 29999");
        assert_eq!(read(RESERVED), "8080,30000-32767,50000-50010");
        assert_eq!(report.changes.len(), 2, "{:?}", report.changes);
        assert_eq!(report.changes[0].found, "20000 40000");
        assert_eq!(guard.plan().unwrap().ephemeral_range, PortRange::new(20000, 29999).unwrap());
    })
    .unwrap();
}

#[test]
fn port_zero_binds_never_land_in_the_nodeport_range() {
    if !privileged("port_zero_binds_never_land_in_the_nodeport_range") {
        return;
    }
    in_new_netns(|| {
        // An overlapping range set before the supervisor ran.
        set(RANGE, "29000 33000");
        let (_guard, report) = Guard::apply(&SysctlConfig::default());
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        // 29000-29999 (1000 ports) beats 32768-33000 (233): bind more sockets than the
        // range has ports, so the kernel had every chance to reach outside it.
        let nodeports = PortRange::KUBERNETES_NODEPORTS;
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for _ in 0..1000 {
            let listener = TcpListener::bind("0.0.0.0:0").expect("a free ephemeral port");
            let port = listener.local_addr().unwrap().port();
            assert!((29000..=29999).contains(&port) && !nodeports.contains(port), "TCP got port {port}");
            tcp.push(listener);
            let socket = UdpSocket::bind("0.0.0.0:0").expect("a free ephemeral port");
            let port = socket.local_addr().unwrap().port();
            assert!((29000..=29999).contains(&port) && !nodeports.contains(port), "UDP got port {port}");
            udp.push(socket);
        }
        // The range is now exhausted: the next bind must fail, not spill into NodePorts.
        assert!(TcpListener::bind("0.0.0.0:0").is_err(), "a 1001st TCP port was handed out");
    })
    .unwrap();
}

#[test]
fn recheck_restores_drift_counts_it_and_keeps_new_reservations() {
    if !privileged("recheck_restores_drift_counts_it_and_keeps_new_reservations") {
        return;
    }
    in_new_netns(|| {
        let mut config = SysctlConfig::default();
        config.extra.0.insert(key("net.core.somaxconn"), Value::Integer(1234));
        let (mut guard, report) = Guard::apply(&config);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(read("net.core.somaxconn"), "1234");
        assert!(guard.recheck().changes.is_empty(), "a clean re-check changes nothing");

        set(RANGE, "30000 40000");
        set(RESERVED, "9090");
        set("net.core.somaxconn", "99");
        let report = guard.recheck();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let mut restored: Vec<_> =
            report.changes.iter().map(|c| (c.key.as_str(), c.found.as_str(), c.restored.as_str())).collect();
        restored.sort();
        assert_eq!(
            restored,
            [
                ("net.core.somaxconn", "99", "1234"),
                (RANGE, "30000 40000", "32768 60999"),
                (RESERVED, "9090", "9090,30000-32767"),
            ]
        );
        assert_eq!(guard.restored(), 3);
        assert_eq!(read(RANGE), "32768 60999");
        assert!(guard.recheck().changes.is_empty());
        assert_eq!(guard.restored(), 3);
    })
    .unwrap();
}

#[test]
fn a_missing_or_rejected_extra_key_fails_alone() {
    if !privileged("a_missing_or_rejected_extra_key_fails_alone") {
        return;
    }
    in_new_netns(|| {
        set(RANGE, "20000 40000");
        let config = SysctlConfig {
            extra: Extra(
                [
                    (key("net.ipv4.no_such_sysctl"), Value::Integer(1)),
                    (key("net.ipv4.tcp_fin_timeout"), Value::Text("not-a-number".into())),
                    (key("net.core.somaxconn"), Value::Integer(777)),
                ]
                .into(),
            ),
            ..SysctlConfig::default()
        };
        let (_guard, report) = Guard::apply(&config);
        assert!(!report.port_guard_failed());
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert!(
            report.failures.contains(&SysctlError::Missing { key: key("net.ipv4.no_such_sysctl") }),
            "{:?}",
            report.failures
        );
        assert!(
            report
                .failures
                .iter()
                .any(|f| matches!(f, SysctlError::Rejected { key: k, .. } if k.as_str() == "net.ipv4.tcp_fin_timeout")),
            "{:?}",
            report.failures
        );
        assert_eq!(read("net.core.somaxconn"), "777");
        assert_eq!(read(RANGE), "20000 29999");
    })
    .unwrap();
}

#[test]
fn the_sysctl_d_drop_in_sets_a_range_clear_of_nodeports() {
    let settings: Vec<(&str, &str)> = nodeplane_sysctl::SYSCTL_D_DROP_IN
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').map(|(k, v)| (k.trim(), v.trim())).expect("key = value"))
        .collect();
    assert_eq!(settings.len(), 1, "{settings:?}");
    assert_eq!(settings[0].0, RANGE);
    let range = PortRange::from_kernel(settings[0].1).unwrap();
    assert!(!range.overlaps(PortRange::KUBERNETES_NODEPORTS));
}
