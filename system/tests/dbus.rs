//! `nodeplaned` on a private bus configured like the system bus with the project's
//! policy file: readable properties, PropertiesChanged, Reload() semantics, and
//! root-only state changes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use nodeplane_bus::{self as bus, NodeProxy};
use nodeplane_testkit::{DbusDaemon, privileged};
use zbus::Connection;

async fn connect(bus: &DbusDaemon) -> Connection {
    zbus::connection::Builder::address(bus.address()).build().await.expect("connect to the private bus")
}

fn busctl_as_nobody(bus: &DbusDaemon, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl", "--address", bus.address()])
        .args(args)
        .output()
        .expect("run busctl")
}

#[test]
fn anyone_can_read_properties_and_introspect() {
    if !privileged("anyone_can_read_properties_and_introspect") {
        return;
    }
    let bus = bus();
    let _node = start(&bus, "", &[("net.ipv4.ip_local_port_range", "20000 40000")]);
    let get = |path: &str, iface: &str, prop: &str| {
        let out = busctl_as_nobody(&bus, &["get-property", bus::SERVICE, path, iface, prop]);
        assert!(out.status.success(), "{prop}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    assert_eq!(get(bus::NODE_PATH, "org.nodeplane.Node1", "Health"), "s \"healthy\"");
    assert_eq!(get(bus::NODE_PATH, "org.nodeplane.Node1", "Version"), format!("s \"{}\"", env!("CARGO_PKG_VERSION")));
    let components = get(bus::NODE_PATH, "org.nodeplane.Node1", "Components");
    assert!(components.starts_with("a(ssst) 4 \"datapath\" \"healthy\""), "{components}");
    assert!(components.contains("\"sysctl\" \"healthy\" \"ephemeral ports 20000-29999"), "{components}");
    let sysctl = bus::component_path("sysctl");
    assert_eq!(get(&sysctl, "org.nodeplane.Component1", "State"), "s \"healthy\"");
    let facts = get(&sysctl, "org.nodeplane.Component1", "Facts");
    assert!(facts.contains("\"ephemeral_range\" s \"20000-29999\"") && facts.contains("\"restored\" t 0"), "{facts}");
    let introspect = busctl_as_nobody(&bus, &["introspect", bus::SERVICE, bus::NODE_PATH]);
    assert!(text(&introspect.stdout).contains(".Reload"), "{}", text(&introspect.stderr));
}

#[tokio::test(flavor = "current_thread")]
async fn properties_changed_is_emitted_when_state_and_facts_change() {
    if !privileged("properties_changed_is_emitted_when_state_and_facts_change") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "[sysctl]\ncheck_interval = \"100ms\"\n", &[]);
    let connection = connect(&bus).await;
    let component = zbus::fdo::PropertiesProxy::builder(&connection)
        .destination(bus::SERVICE)
        .path(bus::component_path("sysctl"))
        .build()
        .await
        .unwrap();
    let node_props = zbus::fdo::PropertiesProxy::builder(&connection)
        .destination(bus::SERVICE)
        .path(bus::NODE_PATH)
        .build()
        .await
        .unwrap();
    let mut component_changes = component.receive_properties_changed().await.unwrap();
    let mut node_changes = node_props.receive_properties_changed().await.unwrap();

    // Drift changes a fact (the restore count).
    write_sysctl(&node, "net.ipv4.ip_local_port_range", "30000 40000");
    wait_for_change(&mut component_changes, "Facts", |facts| {
        let facts = HashMap::<String, zbus::OwnedVariant>::try_from(facts.try_clone().unwrap()).unwrap();
        facts.get("restored").is_some_and(|n| u64::try_from(n) == Ok(1))
    })
    .await;

    // A sysctl this kernel lacks degrades the component and the node.
    std::fs::write(
        node.config_path(),
        "[sysctl]\ncheck_interval = \"100ms\"\n[sysctl.extra]\nnet.ipv4.no_such_key = 1\n",
    )
    .unwrap();
    let proxy = NodeProxy::new(&connection).await.unwrap();
    proxy.reload().await.expect("a valid config reloads even when a key cannot be set");
    wait_for_change(&mut component_changes, "State", |v| <&str>::try_from(v) == Ok("degraded")).await;
    wait_for_change(&mut node_changes, "Health", |v| <&str>::try_from(v) == Ok("degraded")).await;
    assert_eq!(proxy.health().await.unwrap(), "degraded");
}

/// Waits for a PropertiesChanged signal that sets `property` to a value `matches`
/// accepts (earlier changes, such as the start-up transition, are passed over).
async fn wait_for_change(
    stream: &mut zbus::fdo::PropertiesChangedStream,
    property: &str,
    matches: impl Fn(&zbus::OwnedVariant) -> bool,
) {
    let wait = async {
        while let Some(signal) = stream.next().await {
            let args = signal.args().unwrap();
            let changed: HashMap<_, _> =
                args.changed_properties().iter().map(|(k, v)| (k.to_string(), v.try_to_owned().unwrap())).collect();
            if changed.get(property).is_some_and(&matches) {
                return;
            }
        }
        panic!("the signal stream ended");
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no matching PropertiesChanged for {property}"))
}

#[tokio::test(flavor = "current_thread")]
async fn reload_with_a_bad_config_returns_the_error_and_keeps_the_running_config() {
    if !privileged("reload_with_a_bad_config_returns_the_error_and_keeps_the_running_config") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "[sysctl]\ncheck_interval = \"100ms\"\n[sysctl.extra]\nnet.core.somaxconn = 1234\n", &[]);
    std::fs::write(
        node.config_path(),
        "[sysctl.extra]\nnet.core.somaxconn = 999\n[sysctl]\nephemeral_range = \"30000-31000\"\n",
    )
    .unwrap();
    let connection = connect(&bus).await;
    let error = NodeProxy::new(&connection).await.unwrap().reload().await.expect_err("an invalid config is refused");
    match &error {
        zbus::Error::MethodError(name, Some(message), _) => {
            assert_eq!(name.as_str(), bus::ERROR_INVALID_CONFIG);
            assert!(
                message.contains(":4:19: sysctl.ephemeral_range: 30000-31000 overlaps the NodePort range"),
                "{message}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    // The running config (somaxconn 1234, re-checked every 100 ms) still holds.
    assert_eq!(read_sysctl(&node, "net.core.somaxconn"), "1234");
    write_sysctl(&node, "net.core.somaxconn", "50");
    assert!(eventually(Duration::from_secs(10), || read_sysctl(&node, "net.core.somaxconn") == "1234"));

    let cli = ctl(&bus, &["reload"]);
    assert_eq!(cli.status.code(), Some(2), "{}", text(&cli.stderr));
    assert!(
        text(&cli.stderr).contains("keeps the running one") && text(&cli.stderr).contains("sysctl.ephemeral_range"),
        "{}",
        text(&cli.stderr)
    );
}

#[test]
fn a_non_root_caller_is_denied_reload_by_the_bus_policy() {
    if !privileged("a_non_root_caller_is_denied_reload_by_the_bus_policy") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "[sysctl.extra]\nnet.core.somaxconn = 1234\n", &[]);
    std::fs::write(node.config_path(), "[sysctl.extra]\nnet.core.somaxconn = 777\n").unwrap();
    let cli = ctl_as_nobody(&bus, &["reload"]);
    assert_eq!(cli.status.code(), Some(1));
    assert!(
        text(&cli.stderr).contains("reload is for root only") && text(&cli.stderr).contains("AccessDenied"),
        "{}",
        text(&cli.stderr)
    );
    let raw = busctl_as_nobody(&bus, &["call", bus::SERVICE, bus::NODE_PATH, "org.nodeplane.Node1", "Reload"]);
    assert!(!raw.status.success());
    assert!(
        text(&raw.stderr).contains("Access denied") || text(&raw.stderr).contains("AccessDenied"),
        "{}",
        text(&raw.stderr)
    );
    assert_eq!(read_sysctl(&node, "net.core.somaxconn"), "1234", "a denied reload must not apply");
    // Root may.
    let cli = ctl(&bus, &["reload"]);
    assert!(cli.status.success(), "{}", text(&cli.stderr));
    assert_eq!(read_sysctl(&node, "net.core.somaxconn"), "777");
}

#[test]
fn nodeplaned_itself_refuses_non_root_reload_under_a_permissive_policy() {
    if !privileged("nodeplaned_itself_refuses_non_root_reload_under_a_permissive_policy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let permissive = dir.path().join("permissive.conf");
    std::fs::write(
        &permissive,
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><policy context="default"><allow send_destination="org.nodeplane.Node1"/></policy></busconfig>"#,
    )
    .unwrap();
    let bus = bus_with(&[&permissive]);
    let _node = start(&bus, "", &[]);
    let cli = ctl_as_nobody(&bus, &["reload"]);
    assert_eq!(cli.status.code(), Some(1));
    assert!(text(&cli.stderr).contains("Reload() is for root only (caller uid 65534)"), "{}", text(&cli.stderr));
    let update = ["call", bus::SERVICE, bus::NODE_PATH, "org.nodeplane.Node1", "Update", "su", "/x.tar", "2"];
    let raw = busctl_as_nobody(&bus, &update);
    assert!(text(&raw.stderr).contains("Update() is for root only (caller uid 65534)"), "{}", text(&raw.stderr));
}

/// `Update()` checks its arguments, and says when systemd (which runs the
/// update: nodeplaned writes no disk) cannot be asked, as on this private bus.
#[test]
fn an_update_over_the_bus_names_what_is_wrong() {
    if !privileged("an_update_over_the_bus_names_what_is_wrong") {
        return;
    }
    let bus = bus();
    let _node = start(&bus, "", &[]);
    let call = |bundle: &str, tries: &str| {
        let out = std::process::Command::new("busctl")
            .args(["--address", bus.address(), "call", bus::SERVICE, bus::NODE_PATH, "org.nodeplane.Node1"])
            .args(["Update", "su", bundle, tries])
            .output()
            .unwrap();
        assert!(!out.status.success());
        text(&out.stderr)
    };
    assert!(call("relative.tar", "2").contains("expected an absolute path and 1 to 9 tries"));
    assert!(call("/x.tar", "0").contains("expected an absolute path and 1 to 9 tries"));
    let err = call("/x.tar", "2");
    assert!(err.contains("asking systemd to run the update"), "{err}");
}

#[test]
fn a_reload_the_kernel_refuses_fails_and_keeps_the_node_guarded() {
    if !privileged("a_reload_the_kernel_refuses_fails_and_keeps_the_node_guarded") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "", &[("net.ipv4.ip_local_port_range", "20000 40000")]);
    let somaxconn = read_sysctl(&node, "net.core.somaxconn");
    // A valid config, but the kernel refuses a local port range below 1024 — after
    // the reservation for the new NodePort range was written.
    std::fs::write(
        node.config_path(),
        "[sysctl]\nnodeport_range = \"40000-41000\"\nephemeral_range = \"1000-2000\"\n[sysctl.extra]\nnet.core.somaxconn = 999\n",
    )
    .unwrap();
    let cli = ctl(&bus, &["reload"]);
    assert_eq!(cli.status.code(), Some(1));
    let stderr = text(&cli.stderr);
    assert!(stderr.contains(bus::ERROR_RELOAD_FAILED) && stderr.contains("kept the previous settings"), "{stderr}");
    assert_eq!(read_sysctl(&node, "net.ipv4.ip_local_reserved_ports"), "30000-32767", "the reservation was undone");
    assert_eq!(read_sysctl(&node, "net.core.somaxconn"), somaxconn, "extras of the refused config were not applied");
    assert_eq!(read_sysctl(&node, "net.ipv4.ip_local_port_range"), "20000 29999");
    let status = ctl(&bus, &["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stdout));
}
