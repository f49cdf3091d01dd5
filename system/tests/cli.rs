//! `nodeplanectl` and `nodeplaned --check-config` as a user runs them.

mod common;

use std::process::Command;

use common::*;
use nodeplane_testkit::privileged;

#[test]
fn status_prints_a_table_and_json_and_exits_0_only_when_healthy() {
    if !privileged("status_prints_a_table_and_json_and_exits_0_only_when_healthy") {
        return;
    }
    let bus = bus();
    let node = start(&bus, "", &[("net.ipv4.ip_local_port_range", "20000 40000")]);
    let table = ctl_as_nobody(&bus, &["status"]);
    assert_eq!(table.status.code(), Some(0), "{}", text(&table.stderr));
    let table = text(&table.stdout);
    assert!(table.starts_with(&format!("node: healthy (nodeplaned {})", env!("CARGO_PKG_VERSION"))), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("sysctl") && l.contains("healthy") && l.contains("ephemeral ports 20000-29999")),
        "{table}"
    );
    assert!(table.contains("restored=0"), "{table}");

    let json = ctl(&bus, &["status", "--json"]);
    assert_eq!(json.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json is JSON");
    assert_eq!(json["health"], "healthy");
    let components = json["components"].as_array().unwrap();
    let names: Vec<&str> = components.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datapath", "ipam", "kubernetes", "sysctl"]);
    assert_eq!(components[2]["detail"], "standalone: node.toml has no [kubernetes] section");
    let sysctl = &components[3];
    assert_eq!(sysctl["state"], "healthy");
    assert_eq!(sysctl["facts"]["ephemeral_range"], "20000-29999");
    assert_eq!(sysctl["facts"]["restored"], 0);
    assert_eq!(components[1]["detail"], "first sweep in 2m");

    // A degraded node exits 1.
    std::fs::write(node.config_path(), "[sysctl.extra]\nnet.ipv4.no_such_key = 1\n").unwrap();
    assert!(ctl(&bus, &["reload"]).status.success());
    let degraded = ctl(&bus, &["status"]);
    assert_eq!(degraded.status.code(), Some(1));
    assert!(
        text(&degraded.stdout).contains("net.ipv4.no_such_key: not present in this kernel"),
        "{}",
        text(&degraded.stdout)
    );
}

#[test]
fn status_without_a_supervisor_says_so_and_exits_3() {
    if !privileged("status_without_a_supervisor_says_so_and_exits_3") {
        return;
    }
    let bus = bus();
    let out = ctl(&bus, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("nodeplaned is not running: nobody owns org.nodeplane.Node1"),
        "{}",
        text(&out.stderr)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
        .arg("status")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).starts_with("nodeplanectl: cannot connect to the system bus at unix:path=/nonexistent/bus"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_prints_the_effective_config_or_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&good, "[sysctl]\nephemeral_range = \"40000-50000\"\n").unwrap();
    std::fs::write(&bad, "[sysctl]\nnodeport_range = \"32767-30000\"\n").unwrap();
    for (binary, args) in [
        (env!("CARGO_BIN_EXE_nodeplaned"), &["--check-config"][..]),
        (env!("CARGO_BIN_EXE_nodeplanectl"), &["check-config"][..]),
    ] {
        let ok = Command::new(binary).args(args).arg(&good).output().unwrap();
        assert_eq!(ok.status.code(), Some(0), "{binary}: {}", text(&ok.stderr));
        let effective = text(&ok.stdout);
        for line in [
            "ephemeral_range = \"40000-50000\"",
            "nodeport_range = \"30000-32767\"",
            "check_interval = \"30s\"",
            "reserve_nodeport_range = true",
        ] {
            assert!(effective.contains(line), "{binary}: {effective}");
        }
        let invalid = Command::new(binary).args(args).arg(&bad).output().unwrap();
        assert_eq!(invalid.status.code(), Some(2), "{binary}");
        assert_eq!(
            text(&invalid.stderr).trim(),
            format!("error: {}:2:18: sysctl.nodeport_range: start 32767 is after end 30000", bad.display())
        );
    }
}
