//! NetworkPolicy through the real thing: pods attached by the real
//! `nodeplane-cni` (host-local IPAM), a real `nodeplaned` programming the eBPF
//! datapath, connections made from inside the pods' network namespaces — the
//! reachability probe's stage.
//!
//! The truth tables follow the Kubernetes netpol e2e tests: namespaces x, y, z
//! with pods a, b, c, ports 80 and 81 over TCP and UDP. Each scenario's
//! expectation is written from the NetworkPolicy API's definitions, as edits
//! of "everything connects"; a pod reaching its own IP never leaves it
//! (loopback), so those cells always connect, as upstream's tests allow.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use nodeplane_model::Protocol;
use nodeplane_probe::{Destination, Outcome, Selection, Stage, Target};
use nodeplane_testkit::privileged;
use serde_json::{Value, json};

mod common;
use common::*;

const TIMEOUT: Duration = Duration::from_secs(1);
const T80: (u16, Protocol) = (80, Protocol::Tcp);
const T81: (u16, Protocol) = (81, Protocol::Tcp);
const U80: (u16, Protocol) = (80, Protocol::Udp);
const U81: (u16, Protocol) = (81, Protocol::Udp);
const ALL: &[(u16, Protocol)] = &[T80, T81, U80, U81];

/// What should connect: (from, to, port, protocol) → connected.
#[derive(Clone)]
struct Expect(BTreeMap<(String, String, u16, Protocol), bool>);

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

/// `*`, `ns/*`, `*/pod` or `ns/pod`.
fn matches(pattern: &str, pod: &str) -> bool {
    let (ns, name) = pod.split_once('/').unwrap();
    match pattern.split_once('/') {
        None => pattern == "*",
        Some((pns, pname)) => (pns == "*" || pns == ns) && (pname == "*" || pname == name),
    }
}

impl Expect {
    fn everything() -> Self {
        let mut cells = BTreeMap::new();
        for from in PODS {
            for to in PODS {
                for (port, protocol) in ALL {
                    cells.insert((from.to_owned(), to.to_owned(), *port, *protocol), true);
                }
            }
        }
        Expect(cells)
    }

    fn set(mut self, from: &str, to: &str, ports: &[(u16, Protocol)], value: bool) -> Self {
        for ((f, t, port, protocol), cell) in self.0.iter_mut() {
            if matches(from, f) && matches(to, t) && ports.contains(&(*port, *protocol)) {
                *cell = value;
            }
        }
        self
    }

    fn block(self, from: &str, to: &str) -> Self {
        self.set(from, to, ALL, false)
    }

    fn allow(self, from: &str, to: &str) -> Self {
        self.set(from, to, ALL, true)
    }

    fn allow_ports(self, from: &str, to: &str, ports: &[(u16, Protocol)]) -> Self {
        self.set(from, to, ports, true)
    }

    /// Differences from what was probed, one line each.
    fn differences(&self, outcomes: &[Outcome]) -> Vec<String> {
        let mut wrong = Vec::new();
        for o in outcomes {
            let loopback = o.from == o.to;
            let expected = loopback || self.0[&(o.from.clone(), o.to.clone(), o.port, o.protocol)];
            if expected != o.connected {
                wrong.push(format!(
                    "{} -> {} {}/{}: expected {}, got {}",
                    o.from,
                    o.to,
                    o.protocol.name(),
                    o.port,
                    if expected { "connected" } else { "blocked" },
                    if o.connected { "connected" } else { "blocked" }
                ));
            }
        }
        wrong
    }
}

fn from_ns(ns: &str) -> Value {
    json!({"namespaceSelector": {"matchLabels": {"ns": ns}}})
}

fn pod_label(pod: &str) -> Value {
    json!({"matchLabels": {"pod": pod}})
}

fn ingress_x(rules: Value) -> Value {
    netpol("x", "ingress", json!({"podSelector": {}, "ingress": rules}))
}

fn egress_x(rules: Value) -> Value {
    netpol("x", "egress", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": rules}))
}

fn port(spec: Value) -> Value {
    json!([{"ports": [spec]}])
}

/// The scenarios, in the order they are applied (each replaces the policies
/// before it: later ones update and delete earlier ones).
fn scenarios(stage: &Stage) -> Vec<(&'static str, Vec<Value>, Expect)> {
    let all = Expect::everything;
    let none_into_x = || all().block("*", "x/*");
    let none_out_of_x = || all().block("x/*", "*");
    let ip = |pod| ip(stage, pod);
    vec![
        ("no policies", vec![], all()),
        (
            "default deny ingress in x",
            vec![netpol("x", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))],
            none_into_x(),
        ),
        (
            "default deny egress in x",
            vec![netpol("x", "deny", json!({"podSelector": {}, "policyTypes": ["Egress"]}))],
            none_out_of_x(),
        ),
        (
            "default deny both ways in x",
            vec![netpol("x", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))],
            none_into_x().block("x/*", "*"),
        ),
        ("an empty ingress rule allows everything", vec![ingress_x(json!([{}]))], all()),
        ("an empty egress rule allows everything", vec![egress_x(json!([{}]))], all()),
        (
            "deny ingress to x/a only",
            vec![netpol("x", "deny-a", json!({"podSelector": pod_label("a"), "policyTypes": ["Ingress"]}))],
            all().block("*", "x/a"),
        ),
        (
            "allow from namespace y",
            vec![netpol("x", "allow-from", json!({"podSelector": {}, "ingress": [{"from": [from_ns("y")]}]}))],
            none_into_x().allow("y/*", "x/*"),
        ),
        (
            "policy update: the same policy now allows from namespace z",
            vec![netpol("x", "allow-from", json!({"podSelector": {}, "ingress": [{"from": [from_ns("z")]}]}))],
            none_into_x().allow("z/*", "x/*"),
        ),
        ("policy deletion: everything connects again", vec![], all()),
        (
            "allow from pod b of the policy's namespace",
            vec![ingress_x(json!([{"from": [{"podSelector": pod_label("b")}]}]))],
            none_into_x().allow("x/b", "x/*"),
        ),
        (
            "allow from pods b of every namespace",
            vec![ingress_x(json!([{"from": [{"namespaceSelector": {}, "podSelector": pod_label("b")}]}]))],
            none_into_x().allow("*/b", "x/*"),
        ),
        (
            "namespace and pod selectors in one peer: both must match",
            vec![ingress_x(
                json!([{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": pod_label("c")}]}]),
            )],
            none_into_x().allow("y/c", "x/*"),
        ),
        (
            "two peers: either matches",
            vec![ingress_x(json!([{"from": [from_ns("y"), {"podSelector": pod_label("c")}]}]))],
            none_into_x().allow("y/*", "x/*").allow("x/c", "x/*"),
        ),
        (
            "matchExpressions: namespace In [y, z]",
            vec![ingress_x(
                json!([{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["y", "z"]}]}}]}]),
            )],
            none_into_x().allow("y/*", "x/*").allow("z/*", "x/*"),
        ),
        (
            "matchExpressions: namespace NotIn [y]",
            vec![ingress_x(
                json!([{"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]),
            )],
            none_into_x().allow("x/*", "x/*").allow("z/*", "x/*"),
        ),
        (
            "matchExpressions: pod label Exists (the policy's namespace)",
            vec![ingress_x(
                json!([{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]}}]}]),
            )],
            none_into_x().allow("x/*", "x/*"),
        ),
        (
            "matchExpressions: pod label DoesNotExist selects nobody",
            vec![ingress_x(
                json!([{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "DoesNotExist"}]}}]}]),
            )],
            none_into_x(),
        ),
        (
            "matchExpressions: pod In [a, b]",
            vec![ingress_x(
                json!([{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]}}]}]),
            )],
            none_into_x().allow("x/a", "x/*").allow("x/b", "x/*"),
        ),
        (
            "matchExpressions: pod NotIn [a] in every namespace",
            vec![ingress_x(
                json!([{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]}}]}]),
            )],
            none_into_x().allow("*/b", "x/*").allow("*/c", "x/*"),
        ),
        (
            "ports: TCP 80 from anywhere",
            vec![ingress_x(port(json!({"port": 80, "protocol": "TCP"})))],
            none_into_x().allow_ports("*", "x/*", &[T80]),
        ),
        (
            "ports: UDP 81 from anywhere",
            vec![ingress_x(port(json!({"port": 81, "protocol": "UDP"})))],
            none_into_x().allow_ports("*", "x/*", &[U81]),
        ),
        (
            "ports: a port without a protocol is TCP",
            vec![ingress_x(port(json!({"port": 81})))],
            none_into_x().allow_ports("*", "x/*", &[T81]),
        ),
        (
            "named port serve-81-udp",
            vec![ingress_x(port(json!({"port": "serve-81-udp", "protocol": "UDP"})))],
            none_into_x().allow_ports("*", "x/*", &[U81]),
        ),
        (
            "named port serve-80-tcp, protocol defaulted",
            vec![ingress_x(port(json!({"port": "serve-80-tcp"})))],
            none_into_x().allow_ports("*", "x/*", &[T80]),
        ),
        (
            "named port with another protocol than its container port's matches nothing",
            vec![ingress_x(port(json!({"port": "serve-80-tcp", "protocol": "UDP"})))],
            none_into_x(),
        ),
        (
            "endPort 79-80 over TCP: 80 at the upper edge, 81 just above",
            vec![ingress_x(port(json!({"port": 79, "endPort": 80, "protocol": "TCP"})))],
            none_into_x().allow_ports("*", "x/*", &[T80]),
        ),
        (
            "endPort 81-90 over TCP: 81 at the lower edge, 80 just below",
            vec![ingress_x(port(json!({"port": 81, "endPort": 90, "protocol": "TCP"})))],
            none_into_x().allow_ports("*", "x/*", &[T81]),
        ),
        (
            "endPort 80-81 over UDP: both, and no TCP",
            vec![ingress_x(port(json!({"port": 80, "endPort": 81, "protocol": "UDP"})))],
            none_into_x().allow_ports("*", "x/*", &[U80, U81]),
        ),
        ("endPort 1-79: below both ports", vec![ingress_x(port(json!({"port": 1, "endPort": 79})))], none_into_x()),
        (
            "endPort 82-65535: above both ports",
            vec![ingress_x(port(json!({"port": 82, "endPort": 65535})))],
            none_into_x(),
        ),
        (
            "egress endPort 80-80 over TCP",
            vec![egress_x(port(json!({"port": 80, "endPort": 80, "protocol": "TCP"})))],
            none_out_of_x().allow_ports("x/*", "*", &[T80]),
        ),
        (
            "ipBlock: the pods' subnet except y/b",
            vec![ingress_x(
                json!([{"from": [{"ipBlock": {"cidr": "10.244.0.0/24", "except": [format!("{}/32", ip("y/b"))]}}]}]),
            )],
            none_into_x().allow("*", "x/*").block("y/b", "x/*"),
        ),
        (
            "egress ipBlock: only y/a's address",
            vec![egress_x(json!([{"to": [{"ipBlock": {"cidr": format!("{}/32", ip("y/a"))}}]}]))],
            none_out_of_x().allow("x/*", "y/a"),
        ),
        (
            "ipBlock: a /16 except the pods' /24 allows no pod",
            vec![ingress_x(json!([{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.0.0/24"]}}]}]))],
            none_into_x(),
        ),
        (
            "two policies on x/a: their union (from y, from z)",
            vec![
                netpol("x", "from-y", json!({"podSelector": pod_label("a"), "ingress": [{"from": [from_ns("y")]}]})),
                netpol("x", "from-z", json!({"podSelector": pod_label("a"), "ingress": [{"from": [from_ns("z")]}]})),
            ],
            all().block("*", "x/a").allow("y/*", "x/a").allow("z/*", "x/a"),
        ),
        (
            "deny-all in x and allow-all on x/a: the union allows x/a",
            vec![
                netpol("x", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]})),
                netpol("x", "allow-a", json!({"podSelector": pod_label("a"), "ingress": [{}]})),
            ],
            none_into_x().allow("*", "x/a"),
        ),
        (
            "egress deny on x/a beats ingress allow on y",
            vec![
                netpol("x", "deny-out", json!({"podSelector": pod_label("a"), "policyTypes": ["Egress"]})),
                netpol("y", "allow-in", json!({"podSelector": {}, "ingress": [{}]})),
            ],
            all().block("x/a", "*"),
        ),
        (
            "ingress deny on y beats egress allow on x",
            vec![egress_x(json!([{}])), netpol("y", "deny-in", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))],
            all().block("*", "y/*"),
        ),
        (
            "egress only to namespace y",
            vec![egress_x(json!([{"to": [from_ns("y")]}]))],
            none_out_of_x().allow("x/*", "y/*"),
        ),
        (
            "egress to pods c of every namespace",
            vec![egress_x(json!([{"to": [{"namespaceSelector": {}, "podSelector": pod_label("c")}]}]))],
            none_out_of_x().allow("x/*", "*/c"),
        ),
        (
            "egress: UDP only",
            vec![egress_x(port(json!({"protocol": "UDP"})))],
            none_out_of_x().allow_ports("x/*", "*", &[U80, U81]),
        ),
        (
            "x talks only to x, both ways",
            vec![netpol(
                "x",
                "x-only",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [{"podSelector": {}}]}], "egress": [{"to": [{"podSelector": {}}]}]}),
            )],
            none_into_x().block("x/*", "*").allow("x/*", "x/*"),
        ),
        (
            "a rule with ports only, and one with peers only",
            vec![ingress_x(json!([{"ports": [{"port": 81, "protocol": "UDP"}]}, {"from": [from_ns("z")]}]))],
            none_into_x().allow_ports("*", "x/*", &[U81]).allow("z/*", "x/*"),
        ),
        (
            "policies in two namespaces: y sends nothing, z receives only from x",
            vec![
                netpol("y", "deny-out", json!({"podSelector": {}, "policyTypes": ["Egress"]})),
                netpol("z", "from-x", json!({"podSelector": {}, "ingress": [{"from": [from_ns("x")]}]})),
            ],
            all().block("y/*", "*").block("*", "z/*").allow("x/*", "z/*"),
        ),
        (
            "namespaceSelector {} allows every pod",
            vec![ingress_x(json!([{"from": [{"namespaceSelector": {}}]}]))],
            all(),
        ),
        (
            "a policy that selects no pod changes nothing",
            vec![netpol("x", "nobody", json!({"podSelector": pod_label("d"), "policyTypes": ["Ingress", "Egress"]}))],
            all(),
        ),
        (
            "policyTypes defaulted from egress rules: Ingress and Egress",
            vec![netpol("x", "defaulted", json!({"podSelector": {}, "egress": [{"to": [from_ns("y")]}]}))],
            none_into_x().block("x/*", "*").allow("x/*", "y/*"),
        ),
    ]
}

#[test]
fn the_netpol_truth_tables_hold_through_the_real_datapath() {
    if !privileged("the_netpol_truth_tables_hold_through_the_real_datapath") {
        return;
    }
    truth_tables(&stage());
}

/// The same tables with the NetworkPolicies, Namespaces and Pods as objects
/// in a real API server that nodeplaned follows.
#[test]
fn the_netpol_truth_tables_hold_through_the_api_server() {
    if !privileged("the_netpol_truth_tables_hold_through_the_api_server") {
        return;
    }
    let cluster = TestCluster::new();
    truth_tables(&stage_following(&cluster));
}

fn truth_tables(stage: &Stage) {
    let targets = stage.targets(&Selection::default());
    assert_eq!(targets.len(), 9 * 9 * 4, "every pair on TCP and UDP 80 and 81");
    let scenarios = scenarios(stage);
    assert!(scenarios.len() >= 40, "{} scenarios", scenarios.len());
    let mut failures = Vec::new();
    for (name, policies, expected) in &scenarios {
        let text = (!policies.is_empty()).then(|| documents(policies));
        stage.set_manifest("policies.yaml", text.as_deref()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let outcomes = stage.probe(&targets, TIMEOUT).unwrap();
        let wrong = expected.differences(&outcomes);
        if !wrong.is_empty() {
            failures.push(format!(
                "{name}: {} cell(s) wrong:\n  {}\n{}",
                wrong.len(),
                wrong.join("\n  "),
                nodeplane_probe::table(&outcomes)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);

/// A Service at [`VIP`]:8080 → port 80 of `backends`, with its EndpointSlice.
fn service(stage: &Stage, backends: &[&str]) -> String {
    let addresses: Vec<Value> = backends
        .iter()
        .map(|b| json!({"addresses": [ip(stage, b).to_string()], "conditions": {"ready": true}}))
        .collect();
    documents(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "self", "namespace": "x"},
               "spec": {"clusterIP": VIP.to_string(), "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "self-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "self"}},
               "addressType": "IPv4", "endpoints": addresses,
               "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
    ])
}

/// `count` new TCP connections from x/a to the VIP, at once; how many connected.
fn through_vip(stage: &Stage, count: usize) -> usize {
    let from = index(stage, "x/a");
    let to = Destination::Service { id: "x/self".into(), vip: VIP };
    let targets = vec![Target { from, to, port: 8080, protocol: Protocol::Tcp }; count];
    stage.probe(&targets, Duration::from_secs(3)).unwrap().iter().filter(|o| o.connected).count()
}

/// An ingress policy on x/a and x/b that allows pods labelled `allowed`.
fn ingress_from_pod(allowed: &str) -> String {
    documents(&[netpol(
        "x",
        "self",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
               "ingress": [{"from": [{"podSelector": pod_label(allowed)}]}]}),
    )])
}

#[test]
fn a_pod_reaching_itself_through_a_vip_is_judged_by_its_own_policies_every_time() {
    if !privileged("a_pod_reaching_itself_through_a_vip_is_judged_by_its_own_policies_every_time") {
        return;
    }
    let stage = stage();
    for backends in [&["x/a"][..], &["x/a", "x/b"][..]] {
        stage.set_manifest("service.yaml", Some(&service(&stage, backends))).unwrap();
        // The policy allows the pod's own labels (and x/b is open to x/a too).
        let own = documents(&[netpol(
            "x",
            "self",
            json!({"podSelector": pod_label("a"), "ingress": [{"from": [{"podSelector": pod_label("a")}]}]}),
        )]);
        stage.set_manifest("policies.yaml", Some(&own)).unwrap();
        assert_eq!(through_vip(&stage, 200), 200, "allowed, {} backend(s): every connection", backends.len());
        // Now x/a and x/b accept only x/c: neither the hairpin nor x/b.
        stage.set_manifest("policies.yaml", Some(&ingress_from_pod("c"))).unwrap();
        assert_eq!(through_vip(&stage, 200), 0, "not allowed, {} backend(s): no connection", backends.len());
    }
}

#[test]
fn policies_hold_while_nodeplaned_is_killed_and_after_it_restarts() {
    if !privileged("policies_hold_while_nodeplaned_is_killed_and_after_it_restarts") {
        return;
    }
    let mut stage = stage();
    stage.set_manifest("service.yaml", Some(&service(&stage, &["x/a", "x/b"]))).unwrap();
    let policies = documents(&[netpol(
        "x",
        "allow-from",
        json!({"podSelector": {}, "ingress": [{"from": [from_ns("y")]}, {"from": [{"podSelector": pod_label("a")}]}]}),
    )]);
    stage.set_manifest("policies.yaml", Some(&policies)).unwrap();
    let expected = Expect::everything().block("*", "x/*").allow("y/*", "x/*").allow("x/a", "x/*");
    let targets = stage.targets(&Selection::default());
    let check = |stage: &Stage, when: &str| {
        let wrong = expected.differences(&stage.probe(&targets, TIMEOUT).unwrap());
        assert!(wrong.is_empty(), "{when}:\n{}", wrong.join("\n"));
        assert_eq!(through_vip(stage, 50), 50, "{when}: x/a through the VIP (hairpin and x/b)");
    };
    check(&stage, "nodeplaned running");
    stage.kill_nodeplaned();
    check(&stage, "nodeplaned killed (SIGKILL)");
    stage.restart_nodeplaned(&binaries()).unwrap();
    check(&stage, "nodeplaned started again");
    // The new instance enforces changes too.
    stage.set_manifest("policies.yaml", Some(&ingress_from_pod("c"))).unwrap();
    assert_eq!(through_vip(&stage, 50), 0, "after the restart, a policy change applies");
}

#[test]
fn an_open_flow_keeps_going_after_a_policy_change_and_new_ones_follow_it() {
    if !privileged("an_open_flow_keeps_going_after_a_policy_change_and_new_ones_follow_it") {
        return;
    }
    let stage = stage();
    let (client, server) = (index(&stage, "x/b"), ip(&stage, "x/a"));
    let udp = |socket: &std::net::UdpSocket| {
        socket.send_to(b"hello", (server, 80)).unwrap();
        let mut buffer = [0u8; 64];
        socket.recv(&mut buffer).map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned()).ok()
    };
    let open = || {
        nodeplane_testkit::in_netns_at(stage.pod_netns(client), || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            socket
        })
        .unwrap()
    };
    let existing = open();
    assert_eq!(udp(&existing).as_deref(), Some("x/a"));
    stage
        .set_manifest(
            "policies.yaml",
            Some(&documents(&[netpol("x", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))])),
        )
        .unwrap();
    assert_eq!(udp(&existing).as_deref(), Some("x/a"), "the flow opened before the policy keeps going");
    assert_eq!(udp(&open()), None, "a new flow is decided by the policy in force");
}

#[test]
fn drops_are_counted_reported_on_the_bus_and_explained_per_pod() {
    if !privileged("drops_are_counted_reported_on_the_bus_and_explained_per_pod") {
        return;
    }
    let stage = stage();
    stage
        .set_manifest(
            "policies.yaml",
            Some(&documents(&[netpol("x", "allow-from", json!({"podSelector": {}, "ingress": [{"from": [from_ns("y")], "ports": [{"port": 80, "endPort": 81}]}]}))])),
        )
        .unwrap();
    let ctl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", stage.bus_address())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let policy = ctl(&["policy", "x/a"]).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&policy.stdout);
    assert!(policy.status.success(), "{text}{}", String::from_utf8_lossy(&policy.stderr));
    for (i, pod) in ["y/a", "y/b", "y/c"].iter().enumerate() {
        assert!(text.contains(&format!("from {pod} ({}): TCP 80-81", ip(&stage, pod))), "row {i} for {pod}:\n{text}");
    }
    assert!(text.contains("sends: everything"), "{text}");

    let mut monitor = ctl(&["monitor", "--json"]);
    std::thread::sleep(Duration::from_millis(500)); // subscribed
    let from = index(&stage, "z/b");
    let to = Destination::Pod(index(&stage, "x/a"));
    let denied = [("direction", "ingress"), ("reason", "peer")];
    let scraped = metric(&stage, "nodeplane_datapath_policy_drops_total", &denied);
    let outcome = stage.probe(&[Target { from, to, port: 80, protocol: Protocol::Tcp }], TIMEOUT).unwrap();
    assert!(!outcome[0].connected);
    // Prometheus' view: the drop by its direction and reason.
    assert!(metric(&stage, "nodeplane_datapath_policy_drops_total", &denied) > scraped);
    let egress = [("direction", "egress"), ("reason", "peer")];
    assert_eq!(metric(&stage, "nodeplane_datapath_policy_drops_total", &egress), 0.0);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(monitor.stdout.take().unwrap()), &mut line).unwrap();
    let _ = monitor.kill();
    let _ = monitor.wait();
    let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert!(event["from"].as_str().unwrap().starts_with(&format!("z/b ({}:", ip(&stage, "z/b"))), "{event}");
    assert_eq!(event["to"], format!("x/a ({}:80)", ip(&stage, "x/a")), "{event}");
    assert_eq!((event["port"].as_u64(), event["protocol"].as_str()), (Some(80), Some("TCP")), "{event}");
    assert_eq!(event["reason"], "ingress-denied-peer", "{event}");
    assert_eq!(event["direction"], "ingress", "{event}");

    let status = ctl(&["status", "--json"]).wait_with_output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let datapath = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "datapath").unwrap().clone();
    let facts = &datapath["facts"];
    assert!(facts["count_policy_denied_ingress_peer"].as_u64() >= Some(1), "{datapath}");
    assert_eq!(facts["policies"], 1, "{datapath}");
    assert_eq!(facts["policy_isolated_pods"], 3, "{datapath}");
    assert_eq!(datapath["state"], "healthy", "{datapath}");
}

#[test]
fn nodeplanectl_probe_prints_json_and_leaves_nothing_behind() {
    if !privileged("nodeplanectl_probe_prints_json_and_leaves_nothing_behind") {
        return;
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/examples/xyz");
    let probe = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
            .arg("probe")
            .arg(&examples)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = probe(&["--json", "--services", "--protocols", "tcp"]).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 9 * 9 * 2 + 9, "pairs on TCP 80 and 81, and every pod to y/web");
    let find = |from: &str, to: &str, port: u64| {
        rows.iter()
            .find(|r| r["from"] == from && r["to"] == to && r["port"] == port)
            .unwrap_or_else(|| panic!("no {from} -> {to}:{port}"))["connected"]
            .clone()
    };
    // examples/xyz/policy.yaml: x accepts y on TCP 80, and x/b on anything.
    assert_eq!(find("y/a", "x/c", 80), true);
    assert_eq!(find("y/a", "x/c", 81), false);
    assert_eq!(find("x/b", "x/c", 81), true);
    assert_eq!(find("z/a", "x/a", 80), false);
    assert_eq!(find("z/a", "y/web", 8080), true);
    assert!(rows.iter().all(|r| r["protocol"] == "TCP"));

    // Interrupted while standing up: everything it made goes.
    let mut child = probe(&[]);
    let pid = child.id();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 && !line.contains("pod y/") {
        line.clear();
    }
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::INT)
        .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(!status.success(), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    let leftovers: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let mine = format!("npprobe{pid}s");
    assert!(!leftovers.iter().any(|n| n.starts_with(&mine)), "{leftovers:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let bpffs: Vec<&str> = mounts.lines().filter(|l| l.contains(&format!("nodeplane-bpffs-{pid}-"))).collect();
    assert!(bpffs.is_empty(), "bpffs mounts left: {bpffs:?}");
}

/// An SCTP packet from `from` to `to`:80 (a source port of its own: a new
/// flow); whether it arrived.
fn sctp_arrives(stage: &Stage, from: &str, to: &str) -> bool {
    static SOURCE: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(5000);
    let source = SOURCE.fetch_add(1, std::sync::atomic::Ordering::SeqCst).to_be_bytes();
    // Ports, verification tag and checksum zero.
    let header = [source[0], source[1], 0x00, 0x50, 0, 0, 0, 0, 0, 0, 0, 0];
    let arrived = |packet: &[u8]| packet.len() >= 24 && packet[20..24] == header[..4];
    raw_seen(stage, (from, to, to), rustix::net::ipproto::SCTP, &header, arrived)
}

#[test]
fn sctp_follows_the_policies_too() {
    if !privileged("sctp_follows_the_policies_too") {
        return;
    }
    let stage = stage();
    assert!(sctp_arrives(&stage, "y/a", "x/a"), "no policy: SCTP arrives");
    stage
        .set_manifest("policies.yaml", Some(&documents(&[ingress_x(port(json!({"port": 80, "protocol": "TCP"})))])))
        .unwrap();
    assert!(!sctp_arrives(&stage, "y/a", "x/a"), "x accepts TCP 80 only: SCTP is dropped");
    stage
        .set_manifest("policies.yaml", Some(&documents(&[ingress_x(port(json!({"port": 80, "protocol": "SCTP"})))])))
        .unwrap();
    assert!(sctp_arrives(&stage, "y/a", "x/a"), "x accepts SCTP 80");
}

/// A TCP request from `pod`'s `source` port to `addr`:`port`; its reply.
fn request_from(stage: &Stage, pod: &str, source: u16, addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    nodeplane_testkit::in_netns_at(stage.pod_netns(index(stage, pod)), move || {
        nodeplane_testkit::tcp_request_from(source, addr, port)
    })
    .unwrap()
}

#[test]
fn a_connection_tried_before_its_service_existed_does_not_hide_the_service() {
    if !privileged("a_connection_tried_before_its_service_existed_does_not_hide_the_service") {
        return;
    }
    let stage = stage();
    // No Service yet: the VIP is no address; the attempt is an ordinary flow.
    assert!(request_from(&stage, "x/b", 41000, VIP, 8080).is_err());
    stage.set_manifest("service.yaml", Some(&service(&stage, &["x/a"]))).unwrap();
    // The same source port again (the client's ports wrap around): translated.
    assert_eq!(request_from(&stage, "x/b", 41000, VIP, 8080).unwrap(), "x/a");
}

/// An ICMP echo request from `from` to `to` (a fresh echo identifier: a new
/// flow); whether `to`'s reply came back.
fn echo_answered(stage: &Stage, from: &str, to: &str) -> bool {
    static ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0x4e50);
    let id = ID.fetch_add(1, std::sync::atomic::Ordering::SeqCst).to_be_bytes();
    // Type 8, code 0, checksum, identifier, sequence 1.
    let mut request = [8u8, 0, 0, 0, id[0], id[1], 0, 1];
    let sum = request.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    request[2..4].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
    let server = ip(stage, to).octets();
    let reply =
        |packet: &[u8]| packet.len() >= 28 && packet[12..16] == server && packet[20] == 0 && packet[24..26] == id;
    raw_seen(stage, (from, to, from), rustix::net::ipproto::ICMP, &request, reply)
}

#[test]
fn ping_follows_the_policies_too() {
    if !privileged("ping_follows_the_policies_too") {
        return;
    }
    let stage = stage();
    assert!(echo_answered(&stage, "y/a", "x/a"), "no policy: answered");
    let deny = documents(&[netpol("x", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    stage.set_manifest("policies.yaml", Some(&deny)).unwrap();
    assert!(!echo_answered(&stage, "y/a", "x/a"), "default deny ingress: dropped");
    assert!(echo_answered(&stage, "x/a", "y/a"), "x's pods may still ping out, and get the replies");
    let from_y = documents(&[ingress_x(json!([{"from": [from_ns("y")]}]))]);
    stage.set_manifest("policies.yaml", Some(&from_y)).unwrap();
    assert!(echo_answered(&stage, "y/a", "x/a"), "a rule without ports allows every protocol");
    assert!(!echo_answered(&stage, "z/a", "x/a"), "but only from y");
    let tcp_only = documents(&[ingress_x(json!([{"from": [from_ns("y")], "ports": [{"port": 80}]}]))]);
    stage.set_manifest("policies.yaml", Some(&tcp_only)).unwrap();
    assert!(!echo_answered(&stage, "y/a", "x/a"), "a rule with ports allows only those");
}
