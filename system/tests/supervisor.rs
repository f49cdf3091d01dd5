//! The real `nodeplaned` binary under the systemd notify protocol: READY only after
//! the sysctls are applied, the watchdog, reload and stop, drift restored, fatal
//! start-up errors. Each test runs it in a network namespace of its own.

mod common;

use std::time::Duration;

use common::*;
use nodeplane_testkit::privileged;
use rustix::process::Signal;

const RANGE: &str = "net.ipv4.ip_local_port_range";
const RESERVED: &str = "net.ipv4.ip_local_reserved_ports";

#[test]
fn ready_comes_only_after_the_sysctls_are_applied() {
    if !privileged("ready_comes_only_after_the_sysctls_are_applied") {
        return;
    }
    let bus = bus();
    let node = spawn(&bus, "", &[(RANGE, "20000 40000"), (RESERVED, "8080")], &[]);
    let messages = node.wait_ready(READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", node.stderr()));
    // At READY=1 the kernel already holds the guarded values.
    assert_eq!(read_sysctl(&node, RANGE), "20000 29999");
    assert_eq!(read_sysctl(&node, RESERVED), "8080,30000-32767");
    let ready = messages.last().unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=healthy; ") && l.contains("; sysctl healthy: ephemeral ports 20000-29999")),
        "{ready}"
    );
    assert!(
        messages.iter().any(|m| m.contains("STATUS=starting: connecting to the system bus, applying sysctls")),
        "{messages:?}"
    );
}

#[test]
fn no_ready_and_a_clear_exit_when_the_port_range_cannot_be_guarded() {
    if !privileged("no_ready_and_a_clear_exit_when_the_port_range_cannot_be_guarded") {
        return;
    }
    let bus = bus();
    // The kernel refuses a local port range below ip_unprivileged_port_start (1024).
    let node = spawn(&bus, "[sysctl]\nephemeral_range = \"1000-2000\"\n", &[], &[]);
    let messages = node.notify().wait_for("READY=1", Duration::from_secs(5)).expect_err("READY=1 must not be sent");
    let (status, stderr) = node.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot guard the port range") && stderr.contains("net.ipv4.ip_local_port_range"),
        "{stderr}"
    );
    assert!(messages.iter().any(|m| m.contains("STATUS=failed: sysctl: cannot guard the port range")), "{messages:?}");
}

#[test]
fn the_watchdog_is_fed_at_half_its_timeout_only_when_enabled() {
    if !privileged("the_watchdog_is_fed_at_half_its_timeout_only_when_enabled") {
        return;
    }
    let bus = bus();
    let watched = spawn(&bus, "", &[], &[("WATCHDOG_USEC", "400000")]);
    watched.wait_ready(READY_TIMEOUT).unwrap();
    let mut pets = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        if watched.notify().recv(Duration::from_millis(500)).is_some_and(|m| m.lines().any(|l| l == "WATCHDOG=1")) {
            pets += 1;
        }
    }
    // Every 200 ms for 1.5 s: about 8; a loose bound keeps a loaded machine green.
    assert!(pets >= 4, "only {pets} WATCHDOG=1 in 1.5 s with WATCHDOG_USEC=400000");
    drop(watched);

    let unwatched = start(&bus, "", &[]);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let message = unwatched.notify().recv(Duration::from_millis(300)).unwrap_or_default();
        assert!(!message.contains("WATCHDOG=1"), "{message:?} without WATCHDOG_USEC");
    }
}

#[test]
fn sighup_reloads_with_reloading_then_ready_and_sigterm_stops_cleanly() {
    if !privileged("sighup_reloads_with_reloading_then_ready_and_sigterm_stops_cleanly") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "", &[]);
    std::fs::write(node.config_path(), "[sysctl.extra]\nnet.core.somaxconn = 2345\n").unwrap();
    node.signal(Signal::HUP);
    let messages = node.notify().wait_for("READY=1", Duration::from_secs(10)).unwrap();
    assert!(messages.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")), "{messages:?}");
    assert_eq!(read_sysctl(&node, "net.core.somaxconn"), "2345");

    node.signal(Signal::TERM);
    let stopping = node.notify().wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(stopping.is_ok(), "{stopping:?}");
    let (status, stderr) = node.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}: {stderr}");
}

#[test]
fn drift_is_restored_logged_with_key_and_values() {
    if !privileged("drift_is_restored_logged_with_key_and_values") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "[sysctl]\ncheck_interval = \"100ms\"\n", &[(RANGE, "20000 40000")]);
    write_sysctl(&node, RANGE, "30000 40000");
    assert!(eventually(Duration::from_secs(10), || read_sysctl(&node, RANGE) == "20000 29999"), "drift not restored");
    assert!(
        eventually(Duration::from_secs(5), || {
            node
            .stderr()
            .contains(r#"net.ipv4.ip_local_port_range was changed to "30000 40000" by something else; restored "20000 29999""#)
        }),
        "{}",
        node.stderr()
    );
    let restores = || {
        let metrics = scrape(node.metrics().address(), Exposition::Text).unwrap();
        metrics.value("nodeplane_sysctl_restores_total", &[])
    };
    assert!(eventually(Duration::from_secs(5), || restores() >= Some(1.0)), "{:?}", restores());
}

#[test]
fn a_missing_or_invalid_config_is_a_fatal_start_up_error() {
    if !privileged("a_missing_or_invalid_config_is_a_fatal_start_up_error") {
        return;
    }
    let bus = bus();
    let node = spawn(&bus, "[sysctl]\nnodeport_range = \"32767-30000\"\n", &[], &[]);
    let config = node.config_path().display().to_string();
    let (status, stderr) = node.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{config}:2:18: sysctl.nodeport_range: start 32767 is after end 30000")),
        "{stderr}"
    );

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_nodeplaned"))
        .args(["--config", "/nonexistent/node.toml"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("/nonexistent/node.toml: cannot read"), "{}", text(&output.stderr));
}
