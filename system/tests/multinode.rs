//! Two nodes, each with its own nodeplaned, following one real API server.
//! Node-1 is the probe's stage (x, y, z; the control plane runs in its
//! namespace). Node-2 is a namespace of its own on a veth "L2" to node-1, with
//! its own bus, bpffs and nodeplaned (reaching the API server through a
//! forwarder on its loopback) and a pod attached through the real
//! `nodeplane-cni`. Both nodes' Node objects carry a pod CIDR and an
//! InternalIP, as their kubelets and the controller manager would set them.

mod common;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nodeplane_probe::Stage;
use nodeplane_testkit::{Bpffs, DbusDaemon, NamedNetns, Nodeplaned, in_netns_at, privileged};
use serde_json::{Value, json};

/// How long a change may take to reach both datapaths here.
const FOLLOW: Duration = Duration::from_secs(15);
const NODE_1_ADDRESS: &str = "192.168.77.1";
const NODE_2_ADDRESS: &str = "192.168.77.2";
const NODE_2_CIDR: &str = "10.244.2.0/24";

/// Node-2: its namespace, bus, bpffs, nodeplaned and pod `x/web2`, which
/// answers "x/web2" on port 8080. Field order is teardown order.
struct Node2 {
    nodeplaned: Nodeplaned,
    forwarder: TcpListener,
    pod: NamedNetns,
    pod_ip: Ipv4Addr,
    bus: DbusDaemon,
    _bpffs: Bpffs,
    node: nodeplane_sandbox::Node,
    _dir: tempfile::TempDir,
}

impl Drop for Node2 {
    fn drop(&mut self) {
        // Wakes the forwarding thread, which then ends.
        let _ = rustix::net::shutdown(&self.forwarder, rustix::net::Shutdown::Read);
    }
}

impl Node2 {
    /// Node-2 joined to `stage`'s node by a veth, its nodeplaned following
    /// `cluster` with `datapath` among its `[datapath]` keys.
    fn join(cluster: &Arc<TestCluster>, stage: &Stage, datapath: &str) -> Node2 {
        let node = nodeplane_sandbox::Node::new("mn").unwrap();
        let node_1 = stage.node_netns().file_name().unwrap().to_str().unwrap().to_owned();
        let ip1 = |args: &[&str]| {
            let status = Command::new("ip").args(["-n", &node_1]).args(args).status().unwrap();
            assert!(status.success(), "ip -n {node_1} {args:?}");
        };
        ip1(&["link", "add", "l2", "type", "veth", "peer", "name", "eth0", "netns", node.netns.name()]);
        ip1(&["addr", "add", &format!("{NODE_1_ADDRESS}/24"), "dev", "l2"]);
        ip1(&["link", "set", "l2", "up"]);
        node.netns.ip(&["addr", "add", &format!("{NODE_2_ADDRESS}/24"), "dev", "eth0"]).unwrap();
        node.netns.ip(&["link", "set", "eth0", "up"]).unwrap();
        node.netns.ip(&["link", "set", "lo", "up"]).unwrap();

        // The API server listens on node-1's loopback: node-2's is joined to it.
        let api = cluster.plane().port;
        let forwarder = node.netns.run(move || TcpListener::bind(("127.0.0.1", api))).unwrap().unwrap();
        let accepting = forwarder.try_clone().unwrap();
        let node_1_netns = stage.node_netns();
        std::thread::spawn(move || {
            nodeplane_sandbox::forward(&accepting, || {
                in_netns_at(&node_1_netns, move || TcpStream::connect(("127.0.0.1", api)))
                    .map_err(std::io::Error::other)?
            })
        });

        let plane = cluster.plane();
        let credentials = plane.node_credentials("node-2").unwrap();
        let kubeconfig = plane.node_kubeconfig("node-2").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bpffs = Bpffs::mount().unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        // Masquerading everything but pod CIDRs: traffic to the other node's
        // pods must keep its pod's address all the same.
        let keys = format!(
            "{datapath}node_ip = \"{NODE_2_ADDRESS}\"\npod_cidr = \"{NODE_2_CIDR}\"\nnon_masquerade_cidrs = []\nsync_interval = \"200ms\""
        );
        let config = nodeplane_testkit::datapath_config(&bpffs, &manifests, &keys)
            + &credentials.node_toml_at(&format!("https://127.0.0.1:{api}"))
            + &format!("kubeconfig = \"{}\"\n", kubeconfig.display());
        let bus = bus();
        let nodeplaned = start_in_netns(&node.netns.path(), &bus, &config);
        // Its pods are registered once it knows the cluster's policies.
        let listed = eventually(FOLLOW, || datapath_status(bus.address())["facts"]["api_synced"] == "true");
        assert!(listed, "node-2's nodeplaned never listed the API server:\n{}", nodeplaned.stderr());

        let pod = node.pod_netns(0).unwrap();
        let pod_ip = cni_add(&node, &bus, &pod, &dir.path().join("ipam"));
        let listener = pod.run(|| TcpListener::bind("0.0.0.0:8080")).unwrap().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = std::io::Write::write_all(&mut stream, b"x/web2");
            }
        });
        Node2 { nodeplaned, forwarder, pod, pod_ip, bus, _bpffs: bpffs, node, _dir: dir }
    }

    /// A TCP request from node-2's pod to `addr:port`: the reply.
    fn request(&self, addr: Ipv4Addr, port: u16) -> Result<String, String> {
        in_netns_at(self.pod.path(), move || nodeplane_testkit::tcp_request(addr, port).map_err(|e| e.to_string()))
            .unwrap()
    }

    fn datapath(&self) -> Value {
        datapath_status(self.bus.address())
    }

    /// nodeplane's routes in node-2's namespace.
    fn routes(&self) -> String {
        self.node.netns.ip(&["route", "show", "proto", "78"]).unwrap()
    }
}

/// `nodeplane-cni ADD` of pod x/web2 in `pod` on `node`, from node-2's pod CIDR: its address.
fn cni_add(node: &nodeplane_sandbox::Node, bus: &DbusDaemon, pod: &NamedNetns, ipam: &Path) -> Ipv4Addr {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "node-2", "type": "nodeplane-cni",
        "ipam": {"type": "host-local", "dataDir": ipam, "ranges": [[{"subnet": NODE_2_CIDR}]]},
    });
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node.netns.path().display()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_nodeplane-cni"))
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("{}web2", node.prefix()))
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=web2")
        .env("CNI_PATH", binaries().cni_path)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nodeplane-cni ADD on node-2: {out:?}");
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    result["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).unwrap().parse().unwrap()
}

/// Node-1 (the stage) and node-2, both nodeplaned following one API server with
/// `datapath` among their `[datapath]` keys; their Nodes and the pods' Pod
/// objects written as their kubelets would, x/a, x/b and x/c with their
/// addresses (peers of node-2's pod), x/web2 on node-2 labelled `pod: web2`.
fn two_nodes(datapath: &str) -> (Arc<TestCluster>, Stage, Node2) {
    let cluster = TestCluster::with_datapath(datapath);
    let stage = stage_following(&cluster);
    let node_2 = Node2::join(&cluster, &stage, datapath);
    add_node(&cluster, NODE_NAME, "10.244.0.0/24", NODE_1_ADDRESS);
    add_node(&cluster, "node-2", NODE_2_CIDR, NODE_2_ADDRESS);
    let web2 = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web2", "namespace": "x", "labels": {"pod": "web2"}},
        "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.2"}]},
    });
    cluster.kubectl(&["apply", "-f", "-"], Some(&web2.to_string())).unwrap();
    set_pod_ip(&cluster, "x", "web2", node_2.pod_ip);
    for pod in ["a", "b", "c"] {
        set_pod_ip(&cluster, "x", pod, ip(&stage, &format!("x/{pod}")));
    }
    (cluster, stage, node_2)
}

/// A TCP request from node-1's pod `from` to `addr:port`: the reply.
fn request(stage: &Stage, from: &str, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    in_netns_at(stage.pod_netns(index(stage, from)), move || {
        nodeplane_testkit::tcp_request(addr, port).map_err(|e| e.to_string())
    })
    .unwrap()
}

/// A NodePort Service `np` (30080) under externalTrafficPolicy `policy` whose
/// backends are node-1's `b` (port 80) and node-2's `web2` (port 8080).
fn node_port_service(policy: &str, b: Ipv4Addr, web2: Ipv4Addr) -> String {
    let slice = |name: &str, address: Ipv4Addr, port: u16, node: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "x", "labels": {"kubernetes.io/service-name": "np"}},
               "addressType": "IPv4", "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
               "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}, "nodeName": node}]})
    };
    documents(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "x"},
               "spec": {"type": "NodePort", "clusterIP": "10.96.8.3", "externalTrafficPolicy": policy,
                        "ports": [{"name": "p", "port": 80, "nodePort": 30080}]}}),
        slice("np-1", b, 80, NODE_NAME),
        slice("np-2", web2, 8080, "node-2"),
    ])
}

/// x/a on node-1 reaches x/web2 on node-2 by its pod IP, and x/web2 x/b.
fn assert_pods_reach_each_other(stage: &Stage, node_2: &Node2) {
    let (web2, b) = (node_2.pod_ip, ip(stage, "x/b"));
    let reached = eventually(FOLLOW, || {
        request(stage, "x/a", web2, 8080).as_deref() == Ok("x/web2") && node_2.request(b, 80).as_deref() == Ok("x/b")
    });
    assert!(
        reached,
        "pod to pod across nodes: {:?} / {:?}\nnode-1: {}\nnode-2: {}\n{}",
        request(stage, "x/a", web2, 8080),
        node_2.request(b, 80),
        datapath_status(stage.bus_address()),
        node_2.datapath(),
        node_2.nodeplaned.stderr()
    );
}

/// A ClusterIP Service `name` at `vip:80` whose one backend is `backend:port` on node `node`.
fn remote_service(name: &str, vip: &str, backend: Ipv4Addr, port: u16, node: &str) -> String {
    documents(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "x"},
               "spec": {"clusterIP": vip, "ports": [{"name": "p", "port": 80}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{name}-1"), "namespace": "x", "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4", "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
               "endpoints": [{"addresses": [backend.to_string()], "conditions": {"ready": true}, "nodeName": node}]}),
    ])
}

/// Pods on two nodes with natively routed pod CIDRs: each reaches the other's
/// pod directly and through a ClusterIP whose only backend is across; node-2's
/// NodePort reaches both nodes' pods under Cluster, its own under Local; a
/// NetworkPolicy table across nodes (node-2's ingress rule selecting node-1's
/// pods by label, node-1's egress isolation) holds both ways and lifts; the
/// Node deleted takes node-1's route to node-2's pods.
#[test]
fn two_nodeplaned_nodes_route_balance_and_enforce_policy_across_nodes() {
    if !privileged("two_nodeplaned_nodes_route_balance_and_enforce_policy_across_nodes") {
        return;
    }
    let (cluster, stage, node_2) = two_nodes("");
    let (web2, b) = (node_2.pod_ip, ip(&stage, "x/b"));
    assert_pods_reach_each_other(&stage, &node_2);
    assert!(
        node_2.routes().starts_with(&format!("10.244.0.0/24 via {NODE_1_ADDRESS} dev eth0")),
        "{}",
        node_2.routes()
    );
    assert_eq!(node_2.datapath()["facts"]["node_routes_to"], format!("10.244.0.0/24 via {NODE_1_ADDRESS} (node-1)"));

    // Node-2 masquerades all but pod CIDRs, the other node's included: its
    // pod arrives at x/b with its own address, which x/b's policy admits.
    let b_from_web2 = netpol(
        "x",
        "b-from-web2",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "web2"}}}]}]}),
    );
    cluster.kubectl(&["apply", "-f", "-"], Some(&b_from_web2.to_string())).unwrap();
    let admitted =
        eventually(FOLLOW, || request(&stage, "x/a", b, 80).is_err() && node_2.request(b, 80).as_deref() == Ok("x/b"));
    assert!(admitted, "x/b admits node-2's pod by its own address: {:?}", node_2.request(b, 80));
    cluster.kubectl(&["delete", "-n", "x", "networkpolicy/b-from-web2"], None).unwrap();
    assert!(eventually(FOLLOW, || request(&stage, "x/a", b, 80).is_ok()), "x/b still isolated");

    // ClusterIPs whose only backend is on the other node, from both sides.
    let to_node_2 = remote_service("to-node-2", "10.96.8.1", web2, 8080, "node-2");
    let to_node_1 = remote_service("to-node-1", "10.96.8.2", b, 80, NODE_NAME);
    cluster.kubectl(&["apply", "-f", "-"], Some(&format!("{to_node_2}\n---\n{to_node_1}"))).unwrap();
    let vip = |last| Ipv4Addr::new(10, 96, 8, last);
    let balanced = eventually(FOLLOW, || {
        request(&stage, "x/a", vip(1), 80).as_deref() == Ok("x/web2")
            && node_2.request(vip(2), 80).as_deref() == Ok("x/b")
    });
    assert!(
        balanced,
        "ClusterIPs across nodes: {:?} / {:?}",
        request(&stage, "x/a", vip(1), 80),
        node_2.request(vip(2), 80)
    );

    // Node-2's NodePort from node-1's host, a client outside node-2: under
    // Cluster both nodes' pods answer (x/b through node-2, translated back
    // there); under Local only node-2's.
    let from_node_1 = || {
        let node_port = NODE_2_ADDRESS.parse().unwrap();
        in_netns_at(stage.node_netns(), move || {
            nodeplane_testkit::tcp_request(node_port, 30080).map_err(|e| e.to_string())
        })
        .unwrap()
    };
    cluster.kubectl(&["apply", "-f", "-"], Some(&node_port_service("Cluster", b, web2))).unwrap();
    let mut answers = std::collections::BTreeSet::new();
    let both = eventually(FOLLOW, || {
        answers.extend(from_node_1());
        answers.len() == 2
    });
    assert!(both, "node-2's NodePort under Cluster reached {answers:?}: {}", node_2.datapath());
    cluster.kubectl(&["apply", "-f", "-"], Some(&node_port_service("Local", b, web2))).unwrap();
    let local = eventually(FOLLOW, || (0..12).all(|_| from_node_1().as_deref() == Ok("x/web2")));
    assert!(local, "node-2's NodePort under Local: {:?}", from_node_1());

    // Policy across nodes: node-2's pod lets in x/a only (selected by labels
    // through node-2's Pod watch); x/c may send nothing (node-1's egress).
    let only_a = netpol(
        "x",
        "web2-from-a",
        json!({"podSelector": {"matchLabels": {"pod": "web2"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let c_silent = netpol(
        "x",
        "c-sends-nothing",
        json!({"podSelector": {"matchLabels": {"pod": "c"}}, "policyTypes": ["Egress"]}),
    );
    cluster.kubectl(&["apply", "-f", "-"], Some(&documents(&[only_a, c_silent]))).unwrap();
    let table = || {
        ["x/a", "x/b", "x/c"]
            .map(|from| (from, request(&stage, from, web2, 8080).is_ok(), request(&stage, from, vip(1), 80).is_ok()))
    };
    let expected = [("x/a", true, true), ("x/b", false, false), ("x/c", false, false)];
    assert!(eventually(FOLLOW, || table() == expected), "(from, direct, through the VIP): {:?}", table());
    let drops = node_2.datapath()["facts"]["count_policy_denied_ingress_peer"].as_u64();
    assert!(drops > Some(0), "node-2 enforced the ingress rule: {}", node_2.datapath());
    cluster
        .kubectl(&["delete", "-n", "x", "networkpolicy/web2-from-a", "networkpolicy/c-sends-nothing"], None)
        .unwrap();
    let open = [("x/a", true, true), ("x/b", true, true), ("x/c", true, true)];
    assert!(eventually(FOLLOW, || table() == open), "once the policies are gone: {:?}", table());

    cluster.kubectl(&["delete", "node", "node-2"], None).unwrap();
    let node_1 = stage.node_netns().file_name().unwrap().to_str().unwrap().to_owned();
    let route = || {
        let out = Command::new("ip").args(["-n", &node_1, "route", "show", "proto", "78"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(eventually(FOLLOW, || route().is_empty()), "node-1 keeps its route to node-2: {}", route());
    assert!(request(&stage, "x/a", web2, 8080).is_err(), "node-2's pod is still reached without its Node");
}

/// Both nodes with `routing = "vxlan"`: each nodeplaned makes its own
/// `np-vxlan`, and pods reach each other through the tunnel between them.
#[test]
fn two_nodeplaned_nodes_with_vxlan_reach_each_others_pods_through_their_tunnels() {
    if !privileged("two_nodeplaned_nodes_with_vxlan_reach_each_others_pods_through_their_tunnels") {
        return;
    }
    let (_cluster, stage, node_2) = two_nodes("routing = \"vxlan\"\n");
    assert_pods_reach_each_other(&stage, &node_2);
    assert!(node_2.routes().starts_with("10.244.0.0/24 via 10.244.0.0 dev np-vxlan onlink"), "{}", node_2.routes());
    let tunnel = node_2.node.netns.ip(&["-d", "link", "show", "np-vxlan"]).unwrap();
    assert!(tunnel.contains("vxlan id 78"), "{tunnel}");
}
