//! Logging under systemd: with stderr connected to the journal (`JOURNAL_STREAM`),
//! `nodeplaned` writes native journal entries with structured fields. The test
//! plays journald: its socket is mounted at `/run/systemd/journal/socket` in a
//! private mount namespace, and it parses what arrives.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nodeplane_testkit::privileged;

type Entry = HashMap<String, String>;

/// Parses one datagram of the journal's native protocol: `KEY=value\n`, or for
/// values with newlines `KEY\n<u64 LE length><value>\n`.
fn parse_entry(mut data: &[u8]) -> Entry {
    let mut entry = Entry::new();
    while !data.is_empty() {
        let line_end = data.iter().position(|&b| b == b'\n').expect("fields end with a newline");
        let line = &data[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            entry.insert(text(&line[..eq]), text(&line[eq + 1..]));
            data = &data[line_end + 1..];
        } else {
            let rest = &data[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            entry.insert(text(line), text(&rest[8..8 + len]));
            data = &rest[8 + len + 1..];
        }
    }
    entry
}

#[test]
fn under_systemd_logs_go_to_the_journal_with_structured_fields() {
    if !privileged("under_systemd_logs_go_to_the_journal_with_structured_fields") {
        return;
    }
    let journal = tempfile::tempdir().unwrap();
    let socket = UnixDatagram::bind(journal.path().join("socket")).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let bus = bus();
    let node = spawn_with_journal(
        &bus,
        "[sysctl]\ncheck_interval = \"100ms\"\n",
        &[("net.ipv4.ip_local_port_range", "20000 40000")],
        &[],
        Some(journal.path()),
    );
    node.wait_ready(READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", node.stderr()));
    write_sysctl(&node, "net.ipv4.ip_local_port_range", "30000 40000");

    let mut entries = Vec::new();
    let restored = |e: &Entry| e.contains_key("SYSCTL_RESTORED");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && !entries.iter().any(restored) {
        if let Ok(len) = socket.recv(&mut buf) {
            entries.push(parse_entry(&buf[..len]));
        }
    }
    let find = |what: &str, check: &dyn Fn(&Entry) -> bool| {
        entries.iter().find(|e| check(e)).unwrap_or_else(|| panic!("no journal entry {what} in {entries:#?}")).clone()
    };

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

    let state = find("the state change", &|e| e.get("NODEPLANE_STATE").is_some());
    assert_eq!((state["NODEPLANE_COMPONENT"].as_str(), state["NODEPLANE_STATE"].as_str()), ("sysctl", "healthy"));
    let ready = find("the READY entry", &|e| e.get("NODEPLANE_HEALTH").is_some());
    assert_eq!(ready["NODEPLANE_HEALTH"], "healthy");

    assert!(!node.stderr().contains("nodeplaned is ready"), "logs went to stderr as well: {}", node.stderr());
}
