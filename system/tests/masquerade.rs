//! Egress masquerade through the real kernel's netfilter, in namespaces the test
//! makes: pods reaching an outside address leave with the node's, and never from
//! a port in the NodePort range, however many connections they make.

use std::net::{Ipv4Addr, SocketAddr};

use nodeplane::config::DatapathConfig;
use nodeplane::masquerade;
use nodeplane_testkit::{Node, privileged};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 79, 2);
const CONNECTIONS: usize = 10_000;

#[test]
fn ten_thousand_masqueraded_connections_never_use_a_node_port() {
    if !privileged("ten_thousand_masqueraded_connections_never_use_a_node_port") {
        return;
    }
    let mut node = Node::new().unwrap();
    let pod = node.add_pod(Ipv4Addr::new(10, 200, 15, 2)).unwrap();
    let outside = node.add_external(NODE_IP, OUTSIDE).unwrap();
    // The pod's own source ports overlap the NodePorts (as with many distributions'
    // tuning): masquerade keeping a flow's port, or choosing among all, would show.
    pod.netns.sysctl("net.ipv4.ip_local_port_range", "1024 65000").unwrap();
    let _server = outside.serve_tcp_peer(9000);
    // The outside address is private, like the test's: only the pods' own subnet stays unmasqueraded.
    let config = DatapathConfig {
        pod_cidr: Some("10.200.15.0/24".into()),
        non_masquerade_cidrs: Vec::new(),
        ..DatapathConfig::default()
    };
    let rules = config.masquerade_rules((30000, 32767), &[]).expect("masquerade is on with a pod CIDR");
    assert_eq!(rules.ports, (32768, 65535));
    node.run(move || rules.apply()).unwrap();

    let peers: Vec<std::io::Result<String>> =
        pod.run(|| (0..CONNECTIONS).map(|_| nodeplane_testkit::tcp_request(OUTSIDE, 9000)).collect());
    for (i, peer) in peers.into_iter().enumerate() {
        let peer: SocketAddr = peer.unwrap_or_else(|e| panic!("connection {i}: {e}")).parse().unwrap();
        assert_eq!(peer.ip(), NODE_IP, "connection {i} was not masqueraded");
        assert!(
            peer.port() >= 32768,
            "connection {i} left from port {}, below the range clear of NodePorts",
            peer.port()
        );
    }

    // Removing the rules leaves the pod's own address on its traffic.
    node.run(masquerade::remove).unwrap();
    outside.netns.ip(&["route", "add", "10.200.15.0/24", "via", &NODE_IP.to_string()]).unwrap();
    let peer: SocketAddr = pod.tcp_request(OUTSIDE, 9000).unwrap().parse().unwrap();
    assert_eq!(peer.ip(), pod.ip);
}
