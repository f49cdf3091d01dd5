//! NetworkPolicy compiled for the datapath, in the style of the Kubernetes
//! netpol e2e tests: namespaces x, y, z with pods a, b, c each, ports 80 and
//! 81, and per scenario the expected reachability written out by hand from the
//! API's definitions (not from the implementation). Verdicts are read from the
//! compiled maps' contents with the lookups `bpf/policy.h` makes; the real
//! kernel runs them in `system/tests/policy.rs`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use nodeplane_model::Protocol;
use nodeplane_model::compile::{CompiledPolicy, PeerRules};
use nodeplane_model::policy::{Cluster, NamedPort, PodView, Policy};

/// One end of a connection.
#[derive(Clone, Copy)]
enum Endpoint<'a> {
    Pod(&'a PodView),
    /// This node itself (kubelet).
    Node,
    /// An address that is no pod's.
    Outside(Ipv4Addr),
}

/// Whether one direction's rules let `peer` use `port`/`protocol`: open when
/// not isolated, else the longest prefix holding `peer` must list the port.
fn permits(rules: Option<&PeerRules>, peer: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
    let Some(rules) = rules else { return true };
    let holds = |net: &Ipv4Addr, len: &u8| u64::from(u32::from(peer) ^ u32::from(*net)) >> (32 - u32::from(*len)) == 0;
    rules.iter().filter(|((net, len), _)| holds(net, len)).max_by_key(|((_, len), _)| *len).is_some_and(|(_, ports)| {
        ports.iter().any(|(p, low, high)| *p == protocol.number() && (*low..=*high).contains(&port))
    })
}

trait Verdict {
    /// The client's egress, then the server's ingress, as the datapath decides.
    fn allows(&self, from: Endpoint<'_>, to: Endpoint<'_>, port: u16, protocol: Protocol) -> bool;
}

impl Verdict for Cluster {
    fn allows(&self, from: Endpoint<'_>, to: Endpoint<'_>, port: u16, protocol: Protocol) -> bool {
        let compiled = CompiledPolicy::compile(self);
        let address = |end: Endpoint<'_>| match end {
            Endpoint::Pod(pod) => pod.ip,
            Endpoint::Outside(ip) => ip,
            Endpoint::Node => unimplemented!("the node as a destination is not asked"),
        };
        let egress = match from {
            Endpoint::Pod(client) => permits(compiled.pods[&client.ip].egress.as_ref(), address(to), port, protocol),
            _ => true,
        };
        let ingress = match (from, to) {
            (Endpoint::Node, _) => true,
            (_, Endpoint::Pod(server)) => {
                permits(compiled.pods[&server.ip].ingress.as_ref(), address(from), port, protocol)
            }
            _ => true,
        };
        egress && ingress
    }
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// x/a is 10.0.0.1, x/b 10.0.0.2, … z/c 10.0.2.3; every pod serves "serve-80-tcp" and "serve-81-udp".
fn cluster(policies: &[&str]) -> Cluster {
    let mut cluster = Cluster::default();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        cluster.namespaces.insert(ns.to_string(), labels(&[("ns", ns)]));
        for (p, pod) in PODS.iter().enumerate() {
            cluster.pods.push(PodView {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels: labels(&[("pod", pod)]),
                ip: Ipv4Addr::new(10, 0, n as u8, p as u8 + 1),
                ports: vec![
                    NamedPort { name: "serve-80-tcp".into(), port: 80, protocol: Protocol::Tcp },
                    NamedPort { name: "serve-81-udp".into(), port: 81, protocol: Protocol::Udp },
                ],
            });
        }
    }
    for yaml in policies {
        let policy: NetworkPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        cluster.policies.push(Policy::from_k8s(&policy).unwrap());
    }
    cluster
}

fn pod<'a>(cluster: &'a Cluster, name: &str) -> &'a PodView {
    let (ns, pod) = name.split_once('/').unwrap();
    cluster.pods.iter().find(|p| p.namespace == ns && p.name == pod).unwrap()
}

/// The connections allowed among all pods on `port`/`protocol`, as "x/a->y/b".
fn allowed(cluster: &Cluster, port: u16, protocol: Protocol) -> Vec<String> {
    let mut out = Vec::new();
    for from in &cluster.pods {
        for to in &cluster.pods {
            if cluster.allows(Endpoint::Pod(from), Endpoint::Pod(to), port, protocol) {
                out.push(format!("{}/{}->{}/{}", from.namespace, from.name, to.namespace, to.name));
            }
        }
    }
    out
}

fn all_pods() -> Vec<String> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}"))).collect()
}

/// Every pair except those whose destination is in `closed_to` unless the source is in `open_from`.
fn everything_but(closed_to: &[&str], open_from: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for from in all_pods() {
        for to in all_pods() {
            if !closed_to.contains(&to.as_str()) || open_from.contains(&from.as_str()) {
                out.push(format!("{from}->{to}"));
            }
        }
    }
    out
}

#[test]
fn without_policies_everything_is_open() {
    let c = cluster(&[]);
    assert_eq!(allowed(&c, 80, Protocol::Tcp).len(), 81);
    assert_eq!(allowed(&c, 81, Protocol::Udp).len(), 81);
}

#[test]
fn default_deny_ingress_closes_the_namespace_but_not_its_egress() {
    let c = cluster(&["metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n"]);
    assert_eq!(allowed(&c, 80, Protocol::Tcp), everything_but(&["x/a", "x/b", "x/c"], &[]));
    // The node itself (kubelet probes) still reaches them.
    assert!(c.allows(Endpoint::Node, Endpoint::Pod(pod(&c, "x/a")), 80, Protocol::Tcp));
}

#[test]
fn default_deny_egress_closes_what_the_namespace_sends() {
    let c = cluster(&["metadata: {name: deny, namespace: y}\nspec: {podSelector: {}, policyTypes: [Egress]}\n"]);
    let expected: Vec<String> =
        allowed(&cluster(&[]), 80, Protocol::Tcp).into_iter().filter(|p| !p.starts_with("y/")).collect();
    assert_eq!(allowed(&c, 80, Protocol::Tcp), expected);
}

#[test]
fn allow_from_a_namespace_by_label() {
    let c = cluster(&["metadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
                       ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n"]);
    assert_eq!(allowed(&c, 80, Protocol::Tcp), everything_but(&["x/a"], &["y/a", "y/b", "y/c"]));
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let and = cluster(&["metadata: {name: and, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
                         ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]\n"]);
    assert_eq!(allowed(&and, 80, Protocol::Tcp), everything_but(&["x/a"], &["y/b"]));
    let or = cluster(&["metadata: {name: or, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
                        ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]\n"]);
    // A podSelector alone means the policy's own namespace: x/b.
    assert_eq!(allowed(&or, 80, Protocol::Tcp), everything_but(&["x/a"], &["y/a", "y/b", "y/c", "x/b"]));
}

#[test]
fn match_expressions_in_not_in_exists_does_not_exist() {
    let policy = |expression: &str| {
        format!(
            "metadata: {{name: e, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  \
             ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchExpressions: [{expression}]}}}}]}}]\n"
        )
    };
    let sources = |c: &Cluster| -> Vec<String> {
        let to = pod(c, "x/a");
        c.pods
            .iter()
            .filter(|p| c.allows(Endpoint::Pod(p), Endpoint::Pod(to), 80, Protocol::Tcp))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    };
    let c = cluster(&[&policy("{key: pod, operator: In, values: [b, c]}")]);
    assert_eq!(sources(&c), ["x/b", "x/c", "y/b", "y/c", "z/b", "z/c"]);
    let c = cluster(&[&policy("{key: pod, operator: NotIn, values: [b, c]}")]);
    assert_eq!(sources(&c), ["x/a", "y/a", "z/a"]);
    let c = cluster(&[&policy("{key: pod, operator: Exists}")]);
    assert_eq!(sources(&c).len(), 9);
    let c = cluster(&[&policy("{key: pod, operator: DoesNotExist}")]);
    assert!(sources(&c).is_empty());
}

#[test]
fn named_ports_resolve_on_the_destination_pod_with_their_protocol() {
    let c = cluster(&["metadata: {name: named, namespace: x}\nspec:\n  podSelector: {}\n  \
                       ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]\n"]);
    let (from, to) = (pod(&c, "y/a"), pod(&c, "x/b"));
    assert!(c.allows(Endpoint::Pod(from), Endpoint::Pod(to), 81, Protocol::Udp));
    assert!(!c.allows(Endpoint::Pod(from), Endpoint::Pod(to), 81, Protocol::Tcp), "the name is for UDP");
    assert!(!c.allows(Endpoint::Pod(from), Endpoint::Pod(to), 80, Protocol::Tcp));
}

#[test]
fn end_port_ranges_include_both_edges_and_nothing_beyond() {
    let c = cluster(&["metadata: {name: range, namespace: x}\nspec:\n  podSelector: {}\n  \
                       ingress: [{ports: [{port: 80, endPort: 81}]}]\n"]);
    let (from, to) = (Endpoint::Pod(pod(&c, "z/c")), Endpoint::Pod(pod(&c, "x/a")));
    let open: Vec<u16> = (78..=83).filter(|p| c.allows(from, to, *p, Protocol::Tcp)).collect();
    assert_eq!(open, [80, 81]);
    assert!(!c.allows(from, to, 80, Protocol::Udp), "TCP by default");
}

#[test]
fn ip_blocks_with_except() {
    let c = cluster(&["metadata: {name: block, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
                       ingress: [{from: [{ipBlock: {cidr: 10.0.1.0/24, except: [10.0.1.2/32]}}]}]\n"]);
    assert_eq!(allowed(&c, 80, Protocol::Tcp), everything_but(&["x/a"], &["y/a", "y/c"]));
    let to = Endpoint::Pod(pod(&c, "x/a"));
    assert!(c.allows(Endpoint::Outside(Ipv4Addr::new(10, 0, 1, 200)), to, 80, Protocol::Tcp));
    assert!(!c.allows(Endpoint::Outside(Ipv4Addr::new(192, 0, 2, 1)), to, 80, Protocol::Tcp));
}

#[test]
fn policies_add_up_and_egress_deny_beats_ingress_allow() {
    let from_y = "metadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {}\n  \
                  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n";
    let from_z = "metadata: {name: from-z, namespace: x}\nspec:\n  podSelector: {}\n  \
                  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]\n";
    let c = cluster(&[from_y, from_z]);
    let x = ["x/a", "x/b", "x/c"];
    assert_eq!(allowed(&c, 80, Protocol::Tcp), everything_but(&x, &["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]));
    let deny_y_egress = "metadata: {name: deny, namespace: y}\nspec: {podSelector: {}, policyTypes: [Egress]}\n";
    let c = cluster(&[from_y, from_z, deny_y_egress]);
    assert!(!c.allows(Endpoint::Pod(pod(&c, "y/a")), Endpoint::Pod(pod(&c, "x/a")), 80, Protocol::Tcp));
    assert!(c.allows(Endpoint::Pod(pod(&c, "z/a")), Endpoint::Pod(pod(&c, "x/a")), 80, Protocol::Tcp));
}

#[test]
fn a_pod_reaching_itself_is_subject_to_its_policies() {
    let c = cluster(&[
        "metadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}\n",
    ]);
    let a = Endpoint::Pod(pod(&c, "x/a"));
    assert!(!c.allows(a, a, 80, Protocol::Tcp));
    let c = cluster(&["metadata: {name: self, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
                       ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]\n"]);
    let a = Endpoint::Pod(pod(&c, "x/a"));
    assert!(c.allows(a, a, 80, Protocol::Tcp));
}

#[test]
fn policy_types_default_to_egress_when_there_are_egress_rules() {
    let c = cluster(&["metadata: {name: e, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  \
                       egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]\n"]);
    let a = pod(&c, "x/a");
    assert!(c.allows(Endpoint::Pod(a), Endpoint::Pod(pod(&c, "x/b")), 80, Protocol::Tcp));
    assert!(!c.allows(Endpoint::Pod(a), Endpoint::Pod(pod(&c, "x/c")), 80, Protocol::Tcp), "egress is restricted");
    // Ingress is affected too (always, when policyTypes is absent), with no rule: closed but for the node.
    assert!(!c.allows(Endpoint::Pod(pod(&c, "x/b")), Endpoint::Pod(a), 80, Protocol::Tcp));
}

#[test]
fn bad_policies_are_refused_with_the_field() {
    let refused = |yaml: &str| {
        let policy: NetworkPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        Policy::from_k8s(&policy).unwrap_err().to_string()
    };
    let base = "metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n";
    assert_eq!(
        refused(&format!("{base}  ingress: [{{ports: [{{port: http, endPort: 90}}]}}]\n")),
        "spec.ingress[0].ports[0].endPort: needs a numeric port, not a named one"
    );
    assert_eq!(
        refused(&format!("{base}  ingress: [{{ports: [{{port: 90, endPort: 80}}]}}]\n")),
        "spec.ingress[0].ports[0].endPort: 80 is below port 90"
    );
    assert_eq!(
        refused(&format!("{base}  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}}}]}}]\n")),
        "spec.egress[0].to[0].ipBlock.except[0]: \"192.168.0.0/16\" is not inside 10.0.0.0/8"
    );
    assert_eq!(
        refused(&format!(
            "{base}  ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: a, operator: Near}}]}}}}]}}]\n"
        )),
        "spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: \"Near\" is not In, NotIn, Exists or DoesNotExist"
    );
    assert_eq!(
        refused(&format!("{base}  ingress: [{{ports: [{{port: 80, protocol: ICMP}}]}}]\n")),
        "spec.ingress[0].ports[0].protocol: \"ICMP\" is not TCP, UDP or SCTP"
    );
}

/// A pod of another node is a peer like one of this node's — selected by its
/// labels and namespace, known by its address, named ports included — and
/// gets no rules of its own.
#[test]
fn a_pod_of_another_node_is_selected_as_a_peer_by_its_labels() {
    let mut cluster = cluster(&[
        r#"{metadata: {name: friends, namespace: x}, spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {role: friend}}}]}]}}"#,
        r#"{metadata: {name: to-friends, namespace: x}, spec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {role: friend}}}], ports: [{port: serve-80-tcp}]}]}}"#,
    ]);
    let remote = |name: &str, role: &str, last: u8| PodView {
        namespace: "x".into(),
        name: name.into(),
        labels: labels(&[("role", role)]),
        ip: Ipv4Addr::new(10, 9, 0, last),
        ports: vec![NamedPort { name: "serve-80-tcp".into(), port: 8080, protocol: Protocol::Tcp }],
    };
    cluster.remote_pods = vec![remote("friend", "friend", 5), remote("stranger", "stranger", 6)];
    let compiled = CompiledPolicy::compile(&cluster);
    assert_eq!(compiled.pods.len(), 9, "rules for this node's pods only");
    let a = &compiled.pods[&pod(&cluster, "x/a").ip];
    assert!(permits(a.ingress.as_ref(), Ipv4Addr::new(10, 9, 0, 5), 80, Protocol::Tcp));
    assert!(!permits(a.ingress.as_ref(), Ipv4Addr::new(10, 9, 0, 6), 80, Protocol::Tcp));
    let b = &compiled.pods[&pod(&cluster, "x/b").ip];
    assert!(permits(b.egress.as_ref(), Ipv4Addr::new(10, 9, 0, 5), 8080, Protocol::Tcp), "the peer's named port");
    assert!(!permits(b.egress.as_ref(), Ipv4Addr::new(10, 9, 0, 5), 80, Protocol::Tcp));
    assert!(!permits(b.egress.as_ref(), Ipv4Addr::new(10, 9, 0, 6), 8080, Protocol::Tcp));
}
