//! Logging under systemd: with stderr connected to the journal (`JOURNAL_STREAM`),
//! `nodeplaned` writes native journal entries with structured fields. The test
//! plays journald: its socket is mounted at `/run/systemd/journal/socket` in a
//! private mount namespace, and it parses what arrives.

mod common;

use std::time::Duration;

use common::*;
use nodeplane_testkit::privileged;

#[test]
fn under_systemd_logs_go_to_the_journal_with_structured_fields() {
    if !privileged("under_systemd_logs_go_to_the_journal_with_structured_fields") {
        return;
    }
    let mut journal = Journal::new().unwrap();
    let bus = bus();
    let node = spawn_with_journal(
        &bus,
        "[sysctl]\ncheck_interval = \"100ms\"\n",
        &[("net.ipv4.ip_local_port_range", "20000 40000")],
        &[],
        Some(journal.dir.path()),
    );
    node.wait_ready(READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", node.stderr()));
    write_sysctl(&node, "net.ipv4.ip_local_port_range", "30000 40000");
    let restored = |e: &Entry| e.contains_key("SYSCTL_RESTORED");
    journal.collect_until(Duration::from_secs(10), restored);
    let find = |what: &str, check: &dyn Fn(&Entry) -> bool| journal.find(what, check).clone();

    let set = find("setting the range", &|e| e.get("SYSCTL_SET").is_some());
    assert_eq!(set["NODEPLANE_COMPONENT"], "sysctl");
    assert_eq!(set["SYSCTL_KEY"], "net.ipv4.ip_local_port_range");
    assert_eq!(set["SYSCTL_FOUND"], "20000 40000");
    assert_eq!(set["SYSCTL_SET"], "20000 29999");
    assert_eq!(set["PRIORITY"], "6", "{set:#?}");
    assert_eq!(set["SYSLOG_IDENTIFIER"], "nodeplaned");
    assert!(set["MESSAGE"].starts_with("set net.ipv4.ip_local_port_range"), "{set:?}");

    let drift = find("restoring drift", &restored);
    assert_eq!(drift["NODEPLANE_COMPONENT"], "sysctl");
    assert_eq!(drift["SYSCTL_FOUND"], "30000 40000");
    assert_eq!(drift["SYSCTL_RESTORED"], "20000 29999");
    assert_eq!(drift["PRIORITY"], "4", "a restore is a warning");

    let state = find("the state change", &|e| {
        e.get("NODEPLANE_STATE").is_some() && e.get("NODEPLANE_COMPONENT").is_some_and(|c| c == "sysctl")
    });
    assert_eq!((state["NODEPLANE_COMPONENT"].as_str(), state["NODEPLANE_STATE"].as_str()), ("sysctl", "healthy"));
    let ready = find("the READY entry", &|e| e.get("NODEPLANE_HEALTH").is_some());
    assert_eq!(ready["NODEPLANE_HEALTH"], "healthy");

    assert!(!node.stderr().contains("nodeplaned is ready"), "logs went to stderr as well: {}", node.stderr());
}
