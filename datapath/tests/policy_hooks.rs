//! The policy datapath's two hooks through the real kernel: `to_pod` decides
//! what reaches a pod from an interface `from_pod` does not watch, and lets the
//! node's own connections (kubelet probes) through whatever the policies say;
//! in both cases the pod's replies get back.

use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use nodeplane_datapath::Datapath;
use nodeplane_model::compile::CompiledPolicy;
use nodeplane_model::policy::{Cluster, PodView, Policy};
use nodeplane_testkit::{Bpffs, Node, privileged, tcp_request};

const POD: Ipv4Addr = Ipv4Addr::new(10, 200, 30, 2);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 90, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 90, 2);

/// The pod, and a policy that lets only `allowed` in and the pod start
/// nothing itself: what gets back out are replies only.
fn cluster(allowed: &str) -> Cluster {
    let yaml = format!(
        "metadata: {{name: only, namespace: default}}\n\
         spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress], ingress: [{{from: [{{ipBlock: {{cidr: {allowed}}}}}]}}]}}\n"
    );
    let policy: NetworkPolicy = serde_yaml_ng::from_str(&yaml).unwrap();
    Cluster {
        namespaces: Default::default(),
        pods: vec![PodView {
            namespace: "default".into(),
            name: "web".into(),
            labels: Default::default(),
            ip: POD,
            ports: Vec::new(),
        }],
        remote_pods: Vec::new(),
        policies: vec![Policy::from_k8s(&policy).unwrap()],
    }
}

#[test]
fn to_pod_decides_unwatched_interfaces_and_lets_the_node_through() {
    if !privileged("to_pod_decides_unwatched_interfaces_and_lets_the_node_through") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let pod = node.add_pod(POD).unwrap();
    // A link the datapath is not attached to (no node_ip here), routed to pods.
    let outside = node.add_external(NODE_IP, OUTSIDE).unwrap();
    outside.netns.ip(&["route", "add", "10.200.30.0/24", "via", &NODE_IP.to_string()]).unwrap();
    let _server = pod.serve_tcp(8080, "web");
    let (pin, interface) = (bpffs.path().to_owned(), pod.host_if.clone());
    let mut datapath = node.run(move || {
        let mut datapath = Datapath::load(&pin).unwrap();
        datapath.attach_pod_interface(&interface).unwrap();
        datapath
    });
    assert_eq!(outside.tcp_request(POD, 8080).unwrap(), "web", "no policy yet");

    datapath.policy().apply(&CompiledPolicy::compile(&cluster("192.168.90.3/32"))).unwrap();
    assert!(outside.tcp_request(POD, 8080).is_err(), "a peer the policy does not name is dropped");
    let counters = datapath.counters().unwrap();
    let denied = counters.iter().find(|(name, _)| *name == "policy_denied_ingress_peer").unwrap().1;
    assert!(denied >= 1, "{counters:?}");
    // The node itself: allowed whatever the policies, and its replies come back.
    assert_eq!(node.run(|| tcp_request(POD, 8080)).unwrap(), "web", "the node reaches its pod");

    datapath.policy().apply(&CompiledPolicy::compile(&cluster("192.168.90.2/32"))).unwrap();
    assert_eq!(outside.tcp_request(POD, 8080).unwrap(), "web", "the named peer gets in, and the replies out");
}

#[test]
fn incremental_policy_updates_leave_the_maps_as_a_fresh_apply_would() {
    if !privileged("incremental_policy_updates_leave_the_maps_as_a_fresh_apply_would") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let with_ports = |spec: &str| {
        let mut cluster = cluster("10.0.0.0/8");
        let yaml = format!("metadata: {{name: more, namespace: default}}\nspec: {spec}\n");
        let policy: NetworkPolicy = serde_yaml_ng::from_str(&yaml).unwrap();
        cluster.policies.push(Policy::from_k8s(&policy).unwrap());
        CompiledPolicy::compile(&cluster)
    };
    let first =
        with_ports("{podSelector: {}, ingress: [{ports: [{port: 80, endPort: 90}, {port: 53, protocol: UDP}]}]}");
    let second = with_ports(
        "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}], ports: [{port: 1000, endPort: 2000}]}]}",
    );
    for (before, after) in [(&first, &second), (&second, &first)] {
        let mut datapath = Datapath::load(bpffs.path()).unwrap();
        datapath.policy().apply(before).unwrap();
        datapath.policy().apply(after).unwrap();
        drop(datapath);
        // A new instance reads the maps back: they hold `after`, nothing to write,
        // and nothing more (emptying them removes its rules and pod, no other).
        let mut fresh = Datapath::load(bpffs.path()).unwrap();
        let stats = fresh.policy().apply(after).unwrap();
        assert_eq!((stats.written, stats.removed, stats.port_sets), (0, 0, 0), "{stats:?}");
        let emptied = fresh.policy().apply(&CompiledPolicy::default()).unwrap();
        assert_eq!(emptied.removed as usize, after.rule_count() + after.pods.len(), "{emptied:?}");
    }
}
