//! nodeplaned following a real API server: etcd, kube-apiserver and the
//! controllers (`nodeplane-cluster`, built from source) run in the test node's
//! network namespace; pods come up through the real `nodeplane-cni`; objects
//! are written with kubectl. Services and NetworkPolicies follow the API, and
//! neither an API server that goes away nor one that comes back with a
//! forgotten history (`410 Gone`) leaves stale state or stops traffic.

mod common;

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use base64::Engine;
use common::*;
use nodeplane_probe::Stage;
use nodeplane_testkit::{in_netns_at, privileged};
use serde_json::{Value, json};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);
/// How long a change may take to reach the datapath here (the goal is milliseconds).
const FOLLOW: Duration = Duration::from_secs(15);

/// A Service `web` in x at VIP:`port` → `target` of `backends`, and its EndpointSlice.
fn web(stage: &Stage, port: u16, target: u16, backends: &[&str]) -> String {
    service(stage, "web", VIP, port, target, "TCP", backends)
}

/// A NetworkPolicy isolating x's pod `pod` for ingress.
fn isolate(pod: &str) -> String {
    documents(&[netpol("x", &format!("isolate-{pod}"), json!({"podSelector": {"matchLabels": {"pod": pod}}}))])
}

/// A TCP request from pod `from` to `addr:port`: the reply (the serving pod's name).
fn request(stage: &Stage, from: &str, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    in_netns_at(stage.pod_netns(index(stage, from)), move || {
        nodeplane_testkit::tcp_request(addr, port).map_err(|e| e.to_string())
    })
    .unwrap()
}

/// The datapath component: state, detail and facts.
fn datapath(stage: &Stage) -> Value {
    datapath_status(stage.bus_address())
}

fn apply(cluster: &TestCluster, documents: &str) {
    cluster.kubectl(&["apply", "-f", "-"], Some(documents)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_service_created_scaled_changed_and_deleted_through_the_api_is_followed() {
    if !privileged("a_service_created_scaled_changed_and_deleted_through_the_api_is_followed") {
        return;
    }
    let cluster = TestCluster::new();
    let stage = stage_following(&cluster);

    // Created with kubectl alone: the watch brings it, no sync asked for.
    apply(&cluster, &web(&stage, 80, 80, &["x/b"]));
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", VIP, 80).as_deref() == Ok("x/b")),
        "the Service created through the API did not reach x/b: {:?}\n{}",
        request(&stage, "x/a", VIP, 80),
        stage.nodeplaned_log()
    );
    let facts = datapath(&stage)["facts"].clone();
    assert!(facts["api_services"].as_u64() >= Some(1), "{facts}");
    assert!(facts["api_event_to_datapath_us"].as_u64().is_some(), "{facts}");
    let changes = metric(&stage, "nodeplane_datapath_api_event_to_map_duration_seconds_count", &[]);
    assert!(changes >= 1.0, "no event-to-map latency observed");

    // Scaled: both endpoints serve.
    apply(&cluster, &web(&stage, 80, 80, &["x/b", "x/c"]));
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || {
            seen.extend(request(&stage, "x/a", VIP, 80));
            seen.len() == 2
        }),
        "scaled to x/b and x/c, the VIP reached {seen:?}"
    );

    // Each change applied is one more observation of its latency.
    let observed = metric(&stage, "nodeplane_datapath_api_event_to_map_duration_seconds_count", &[]);
    assert!(observed > changes, "{observed} after the scaling, {changes} before");

    // Changed: the port moves; the old one no longer answers.
    apply(&cluster, &web(&stage, 81, 81, &["x/c"]));
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", VIP, 81).as_deref() == Ok("x/c")
            && request(&stage, "x/a", VIP, 80).is_err()),
        "after the port change: :81 {:?}, :80 {:?}",
        request(&stage, "x/a", VIP, 81),
        request(&stage, "x/a", VIP, 80)
    );

    // Deleted: nothing answers at the VIP.
    cluster.kubectl(&["delete", "-n", "x", "service/web", "endpointslice/web-1"], None).unwrap();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", VIP, 81).is_err()),
        "the deleted Service still answers"
    );
    assert_eq!(datapath(&stage)["state"], "healthy", "{}", datapath(&stage));
}

#[test]
fn a_network_policy_created_through_the_api_isolates_a_pod() {
    if !privileged("a_network_policy_created_through_the_api_isolates_a_pod") {
        return;
    }
    let cluster = TestCluster::new();
    let stage = stage_following(&cluster);
    let b = ip(&stage, "x/b");
    assert_eq!(request(&stage, "x/a", b, 80).as_deref(), Ok("x/b"));
    apply(&cluster, &isolate("b"));
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", b, 80).is_err()),
        "x/b is still reachable under a policy isolating it"
    );
    cluster.kubectl(&["delete", "-n", "x", "networkpolicy/isolate-b"], None).unwrap();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", b, 80).is_ok()),
        "x/b is still isolated once its policy is deleted"
    );
}

/// Deletes `key` straight from etcd (its JSON gateway, in the node's namespace),
/// behind the API server's back.
fn etcd_delete(stage: &Stage, key: &str) {
    use std::io::{Read, Write};
    let body = json!({"key": base64::engine::general_purpose::STANDARD.encode(key)}).to_string();
    let reply = in_netns_at(stage.node_netns(), move || {
        let mut stream = TcpStream::connect(("127.0.0.1", 16444))?;
        write!(
            stream,
            "POST /v3/kv/deleterange HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok::<_, std::io::Error>(reply)
    })
    .unwrap()
    .unwrap();
    assert!(reply.contains("\"deleted\":\"1\""), "deleting {key} from etcd: {reply}");
}

#[test]
fn an_api_server_that_goes_away_and_comes_back_without_its_history_leaves_no_stale_state() {
    if !privileged("an_api_server_that_goes_away_and_comes_back_without_its_history_leaves_no_stale_state") {
        return;
    }
    let cluster = TestCluster::new();
    let stage = stage_following(&cluster);
    let c = ip(&stage, "x/c");
    stage.set_manifest("web.yaml", Some(&web(&stage, 80, 80, &["x/b"]))).unwrap();
    stage.set_manifest("policy.yaml", Some(&isolate("c"))).unwrap();
    assert_eq!(request(&stage, "x/a", VIP, 80).as_deref(), Ok("x/b"));
    assert!(request(&stage, "x/a", c, 80).is_err());
    let relists = datapath(&stage)["facts"]["api_watch_restarts"].as_u64().unwrap();

    // Gone: the datapath keeps the cluster's last state, and says so.
    cluster.kill_api_server();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || {
            let status = datapath(&stage);
            status["state"] == "degraded"
                && status["detail"].as_str().unwrap().contains("the API server is unreachable since")
        }),
        "{}",
        datapath(&stage)
    );
    for _ in 0..20 {
        assert_eq!(request(&stage, "x/a", VIP, 80).as_deref(), Ok("x/b"), "the Service while the API is gone");
        assert!(request(&stage, "x/a", c, 80).is_err(), "the policy while the API is gone");
    }

    // Behind its back, the Service, its slice and the policy go; the API
    // server comes back with a history that starts after that: nodeplaned's
    // watches get 410 Gone, list again, and drop what did not come back.
    etcd_delete(&stage, "/registry/services/specs/x/web");
    etcd_delete(&stage, "/registry/endpointslices/x/web-1");
    etcd_delete(&stage, "/registry/networkpolicies/x/isolate-c");
    cluster.restart();
    // Within seconds of its return (kube-runtime's default backoff would take up to a minute).
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || {
            request(&stage, "x/a", VIP, 80).is_err() && request(&stage, "x/a", c, 80).as_deref() == Ok("x/c")
        }),
        "stale state after the API server came back: VIP {:?}, x/c {:?}\n{}\n{}",
        request(&stage, "x/a", VIP, 80),
        request(&stage, "x/a", c, 80),
        datapath(&stage),
        stage.nodeplaned_log()
    );
    let status = datapath(&stage);
    assert!(status["facts"]["api_watch_restarts"].as_u64().unwrap() > relists, "no relist: {status}");
    assert!(nodeplane_testkit::eventually(FOLLOW, || datapath(&stage)["state"] == "healthy"), "{}", datapath(&stage));
}

/// `nodeplane-cluster`'s `[kubernetes]` sections are ones nodeplaned takes: a
/// node given anything else boots standalone.
#[test]
fn the_test_clusters_node_toml_sections_are_valid_node_configs() {
    let pem = |kind: &str| format!("-----BEGIN {kind}-----\nAAAA\n-----END {kind}-----\n");
    let credentials = nodeplane_cluster::NodeCredentials {
        name: "node-1".into(),
        ca: pem("CERTIFICATE"),
        cert: pem("CERTIFICATE"),
        key: pem("PRIVATE KEY"),
    };
    for text in [credentials.node_toml(), credentials.node_toml_at("https://127.0.0.1:16443")] {
        let config = nodeplane::config::NodeConfig::parse(&text, "node.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.kubernetes.expect("a [kubernetes] section").node_name, "node-1");
    }
}

/// `nodeplanectl probe --api`: the example's objects written to an API server
/// on this machine's loopback (as `cargo xtask cluster up`'s) give the table
/// the manifests directory gives, and the probe takes them away again.
#[test]
fn nodeplanectl_probe_api_prints_what_the_manifests_directory_prints_and_cleans_up() {
    if !privileged("nodeplanectl_probe_api_prints_what_the_manifests_directory_prints_and_cleans_up") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("nodeplane-probe-api-").tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cache = nodeplane_image::upstream::default_cache();
    // Apart from `cargo xtask cluster`'s port (16443) and its next four.
    let plane = nodeplane_cluster::ControlPlane::new(&dir.path().join("cluster"), 17443, repo, &cache).unwrap();
    struct Down<'a>(&'a nodeplane_cluster::ControlPlane);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = self.0.down();
        }
    }
    let _down = Down(&plane);
    plane.up().unwrap_or_else(|e| panic!("the control plane: {e}"));

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/examples/xyz");
    let probe = |extra: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
            .arg("probe")
            .arg(&examples)
            .args(["--json", "--protocols", "tcp"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.sort_by_key(|r| r.to_string());
        (rows, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let kubeconfig = plane.admin_kubeconfig();
    let (through_api, log) = probe(&["--api".as_ref(), kubeconfig.as_os_str()]);
    let (from_dir, _) = probe(&[]);
    assert_eq!(through_api.len(), 9 * 9 * 2, "{log}");
    assert!(through_api.iter().any(|r| r["connected"] == true) && through_api.iter().any(|r| r["connected"] == false));
    assert_eq!(through_api, from_dir, "{log}");
    assert!(log.contains("removing its"), "{log}");

    // Nothing of the probe's is left: its namespaces, pods and Node.
    let left = plane.kubectl_with(&["get", "namespaces,nodes", "-o", "name"], "").unwrap();
    for gone in ["namespace/x", "namespace/y", "namespace/z", "namespace/nodeplane-barrier", "node/nodeplane-probe"] {
        assert!(!left.lines().any(|l| l.starts_with(gone)), "{gone} is still there:\n{left}");
    }
}

/// Another node's pods are reached through the route nodeplaned writes from
/// its Node object (`spec.podCIDR` via its InternalIP), directly and as a
/// ClusterIP's backend; a policy selects one as a peer by its labels; a
/// nodeplaned restarted without the API server keeps the route; and the
/// route goes with the Node. Node-2 is a namespace on an L2 link of its own to this
/// node, holding a "pod" address of its pod CIDR with a server on it.
#[test]
fn another_nodes_pods_are_reached_and_selected_as_policy_peers_until_its_node_is_deleted() {
    if !privileged("another_nodes_pods_are_reached_and_selected_as_policy_peers_until_its_node_is_deleted") {
        return;
    }
    let cluster = TestCluster::new();
    let mut stage = stage_following(&cluster);
    let (node, peer) = node_2_on_l2(&stage, "192.168.77");
    peer.ip(&["route", "add", "default", "via", "192.168.77.1", "src", "10.244.2.5"]).unwrap();
    serve_node_2(&peer);
    let remote = Ipv4Addr::new(10, 244, 2, 5);
    assert!(request(&stage, "x/a", remote, 8080).is_err(), "no route to node-2's pods yet");

    add_node(&cluster, "node-2", "10.244.2.0/24", "192.168.77.2");
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", remote, 8080).as_deref() == Ok("node-2")),
        "node-2's pod is not reached: {}",
        datapath(&stage)
    );
    let facts = &datapath(&stage)["facts"];
    assert_eq!(facts["node_routes"], 1, "{facts}");
    assert_eq!(facts["node_routes_to"], "10.244.2.0/24 via 192.168.77.2 (node-2)", "{facts}");
    let routes = || route_table(&node);
    assert!(routes().starts_with("10.244.2.0/24 via 192.168.77.2 dev l2"), "{}", routes());

    // A ClusterIP whose only backend is node-2's pod: its replies come in on
    // the route's interface and are translated back there.
    let vip = Ipv4Addr::new(10, 96, 7, 8);
    let remote_service = documents(&[
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "remote", "namespace": "x"},
            "spec": {"clusterIP": vip.to_string(), "ports": [{"port": 80, "targetPort": 8080}]},
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "remote-1", "namespace": "x", "labels": {"kubernetes.io/service-name": "remote"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.244.2.5"], "conditions": {"ready": true}, "nodeName": "node-2"}],
        }),
    ]);
    apply(&cluster, &remote_service);
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", vip, 80).as_deref() == Ok("node-2")),
        "the ClusterIP with a backend on node-2: {:?}\n{}",
        request(&stage, "x/a", vip, 80),
        datapath(&stage)
    );

    // A policy peer on node-2, selected by its labels through the Pod watch
    // and known by its address: let in while it is a friend, not after.
    let friend = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "remote", "namespace": "x", "labels": {"role": "friend"}},
        "spec": {"nodeName": "node-2", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.2"}]},
    });
    let friends_only = netpol(
        "x",
        "b-from-friends",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}]}]}),
    );
    apply(&cluster, &documents(&[friend, friends_only]));
    set_pod_ip(&cluster, "x", "remote", Ipv4Addr::new(10, 244, 2, 5));
    let b = ip(&stage, "x/b");
    let from_node_2 =
        || in_netns_at(peer.path(), move || nodeplane_testkit::tcp_request(b, 80).map_err(|e| e.to_string())).unwrap();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || from_node_2().as_deref() == Ok("x/b")),
        "node-2's friend is not let in: {:?}\n{}",
        from_node_2(),
        datapath(&stage)
    );
    cluster.kubectl(&["label", "pod", "-n", "x", "remote", "role=stranger", "--overwrite"], None).unwrap();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || from_node_2().is_err()),
        "node-2's pod is still let in as a stranger"
    );

    // Fail static: a nodeplaned restarted while the API server is away keeps
    // the routes it wrote (it does not know the Nodes yet), watched all along;
    // the API server comes back after 4 s, and the restart ends once listed.
    cluster.kill_api_server();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = {
        let (node, stop) = (node.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut gone = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                gone += usize::from(route_table(&node).is_empty());
                std::thread::sleep(Duration::from_millis(50));
            }
            gone
        })
    };
    let api_back = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(4));
            cluster.restart();
        })
    };
    stage.restart_nodeplaned(&binaries()).unwrap();
    api_back.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(watch.join().unwrap(), 0, "the route went while the API server was away");
    assert_eq!(request(&stage, "x/a", remote, 8080).as_deref(), Ok("node-2"));

    cluster.kubectl(&["delete", "node", "node-2"], None).unwrap();
    assert!(nodeplane_testkit::eventually(FOLLOW, || routes().is_empty()), "the route stays: {}", routes());
    assert!(request(&stage, "x/a", remote, 8080).is_err());
    assert_eq!(datapath(&stage)["facts"]["node_routes"], 0);
}

/// With `routing = "vxlan"`, another node's pods are reached through
/// nodeplane's VXLAN device: the route to its pod CIDR goes via its network
/// address on the device, whose neighbour and forwarding entries send it to
/// the node's InternalIP; all of it goes with the Node. Node-2 is a namespace
/// whose VXLAN device is set up by hand the same way.
#[test]
fn with_vxlan_routing_another_nodes_pods_are_reached_through_the_tunnel() {
    if !privileged("with_vxlan_routing_another_nodes_pods_are_reached_through_the_tunnel") {
        return;
    }
    let cluster = TestCluster::with_datapath("routing = \"vxlan\"\n");
    let stage = stage_following(&cluster);
    let (node, peer) = node_2_on_l2(&stage, "192.168.78");
    let in_node = |args: &[&str]| in_netns_ip(&node, args);
    // This node's Node, as its kubelet would register it: nodeplaned learns
    // its pod CIDR from it, and its VXLAN address and MAC follow from that.
    let node_1 = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME}, "spec": {"podCIDR": "10.244.0.0/24"}});
    apply(&cluster, &node_1.to_string());
    let (node_1_gateway, node_1_mac) = ("10.244.0.0", "02:4e:0a:f4:00:00");
    for args in [
        &[
            "link",
            "add",
            "vx",
            "address",
            "02:4e:0a:f4:02:00",
            "type",
            "vxlan",
            "id",
            "78",
            "dstport",
            "8472",
            "nolearning",
        ][..],
        &["addr", "add", "10.244.2.0/32", "dev", "vx"],
        &["link", "set", "vx", "up"],
        &["neigh", "add", node_1_gateway, "lladdr", node_1_mac, "dev", "vx", "nud", "permanent"],
        &["route", "add", "10.244.0.0/16", "via", node_1_gateway, "dev", "vx", "onlink", "src", "10.244.2.5"],
    ] {
        peer.ip(args).unwrap();
    }
    let fdb = std::process::Command::new("bridge")
        .args(["-n", peer.name(), "fdb", "append", node_1_mac, "dev", "vx", "dst", "192.168.78.1"])
        .status()
        .unwrap();
    assert!(fdb.success());
    serve_node_2(&peer);
    let remote = Ipv4Addr::new(10, 244, 2, 5);
    assert!(request(&stage, "x/a", remote, 8080).is_err(), "no route to node-2's pods yet");

    add_node(&cluster, "node-2", "10.244.2.0/24", "192.168.78.2");
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || request(&stage, "x/a", remote, 8080).as_deref() == Ok("node-2")),
        "node-2's pod is not reached through VXLAN: {:?}\n{}\n{}",
        request(&stage, "x/a", remote, 8080),
        datapath(&stage),
        stage.nodeplaned_log()
    );
    let route = in_node(&["route", "show", "proto", "78"]);
    assert!(route.starts_with("10.244.2.0/24 via 10.244.2.0 dev np-vxlan onlink"), "{route}");
    let device = in_node(&["-d", "link", "show", "np-vxlan"]);
    assert!(device.contains("vxlan id 78") && device.contains("dstport 8472"), "{device}");
    assert!(device.contains(node_1_mac), "node-1's MAC follows from its pod CIDR: {device}");

    cluster.kubectl(&["delete", "node", "node-2"], None).unwrap();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || in_node(&["route", "show", "proto", "78"]).is_empty()),
        "the route stays"
    );
    assert!(nodeplane_testkit::eventually(FOLLOW, || !in_node(&["neigh", "show", "dev", "np-vxlan"])
        .contains("10.244.2.0")));
    assert!(request(&stage, "x/a", remote, 8080).is_err());
}

/// `ip -n netns ARGS`, which must succeed: its output.
fn in_netns_ip(netns: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("ip").args(["-n", netns]).args(args).output().unwrap();
    assert!(out.status.success(), "ip -n {netns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Node-2: a namespace on an L2 link of its own to this node (`l2`, this
/// node `{net}.1/24`, node-2 `{net}.2/24`) with its "pod" address 10.244.2.5
/// on its loopback. Returns this node's namespace name and node-2's.
fn node_2_on_l2(stage: &Stage, net: &str) -> (String, nodeplane_sandbox::NamedNetns) {
    let node = stage.node_netns().file_name().unwrap().to_str().unwrap().to_owned();
    let peer = nodeplane_sandbox::NamedNetns::new(format!("{node}-2")).unwrap();
    in_netns_ip(&node, &["link", "add", "l2", "type", "veth", "peer", "name", "eth0", "netns", peer.name()]);
    in_netns_ip(&node, &["addr", "add", &format!("{net}.1/24"), "dev", "l2"]);
    in_netns_ip(&node, &["link", "set", "l2", "up"]);
    for args in [
        &["addr", "add", &format!("{net}.2/24"), "dev", "eth0"][..],
        &["link", "set", "eth0", "up"],
        &["addr", "add", "10.244.2.5/32", "dev", "lo"],
    ] {
        peer.ip(args).unwrap();
    }
    (node, peer)
}

/// A LoadBalancer Service `np` (NodePort 30080) whose backends are x/b on this
/// node (port 80) and node-2's 10.244.2.5:8081, under externalTrafficPolicy
/// `policy` (with `Local`, its health check on port 30900).
fn node_port_across_nodes(stage: &Stage, policy: &str) -> String {
    let mut spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.7.9", "externalTrafficPolicy": policy,
                          "ports": [{"name": "p", "port": 80, "nodePort": 30080}]});
    if policy == "Local" {
        spec["healthCheckNodePort"] = json!(30900);
    }
    let slice = |name: &str, address: String, port: u16, node: &str| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "x", "labels": {"kubernetes.io/service-name": "np"}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": true}, "nodeName": node}],
        })
    };
    documents(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np", "namespace": "x"}, "spec": spec}),
        slice("np-local", ip(stage, "x/b").to_string(), 80, NODE_NAME),
        slice("np-remote", "10.244.2.5".into(), 8081, "node-2"),
    ])
}

/// A NodePort under `externalTrafficPolicy: Cluster` sends an outside client
/// to a backend on another node from this node's address, on a port above the
/// NodePort range whatever the client's, so the reply comes back here to be
/// translated; under `Local` only this node's backend answers, and
/// nodeplane-health answers the Service's health check port as kube-proxy
/// does: 200 while this node has an endpoint, 503 once it has none. The
/// outside client is node-2 itself, which holds the remote backend too:
/// without the translation its pod would answer it directly, and the
/// connection fail.
#[test]
fn a_node_port_sends_outside_clients_to_another_nodes_backend_from_this_nodes_address_unless_local() {
    if !privileged("a_node_port_sends_outside_clients_to_another_nodes_backend_from_this_nodes_address_unless_local") {
        return;
    }
    let cluster = TestCluster::with_datapath("node_ip = \"192.168.76.1\"\n");
    let stage = stage_following(&cluster);
    let (_node, peer) = node_2_on_l2(&stage, "192.168.76");
    // Node-2's backend answers with the address and port it was reached from.
    let listener = peer.run(|| std::net::TcpListener::bind("10.244.2.5:8081")).unwrap().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = std::io::Write::write_all(&mut stream, format!("node-2 {from}").as_bytes());
        }
    });
    add_node(&cluster, "node-2", "10.244.2.0/24", "192.168.76.2");
    apply(&cluster, &node_port_across_nodes(&stage, "Cluster"));
    let node_port = Ipv4Addr::new(192, 168, 76, 1);
    // From a client port inside the NodePort range: the translation must move it.
    let from_outside = || {
        in_netns_at(peer.path(), move || {
            nodeplane_testkit::tcp_request_from(30500, node_port, 30080).map_err(|e| e.to_string())
        })
        .unwrap()
    };
    let mut answers = std::collections::BTreeSet::new();
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || {
            answers.extend(from_outside());
            answers.iter().any(|a| a == "x/b") && answers.iter().any(|a| a.starts_with("node-2"))
        }),
        "both nodes' backends should answer: {answers:?}\n{}",
        datapath(&stage)
    );
    for answer in answers.iter().filter(|a| a.starts_with("node-2 ")) {
        let seen: std::net::SocketAddrV4 = answer["node-2 ".len()..].parse().unwrap();
        assert_eq!(*seen.ip(), node_port, "node-2's backend sees this node's address");
        assert!(seen.port() >= 32768, "a port above the NodePort range, not {}", seen.port());
    }
    stage.sync().unwrap();
    assert!(datapath(&stage)["facts"]["count_node_port_snat"].as_u64() > Some(0), "{}", datapath(&stage));

    apply(&cluster, &node_port_across_nodes(&stage, "Local"));
    assert!(
        nodeplane_testkit::eventually(FOLLOW, || (0..20).all(|_| from_outside().as_deref() == Ok("x/b"))),
        "under Local only this node's backend answers"
    );

    let mut health = std::process::Command::new("nsenter")
        .arg(format!("--net={}", stage.node_netns().display()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_nodeplane-health"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", stage.bus_address())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let check = || in_netns_at(peer.path(), move || http_get(node_port, 30900).map_err(|e| e.to_string())).unwrap();
    let answered = |status: &str, endpoints: u32| {
        let expected = format!("\"localEndpoints\":{endpoints}");
        check().is_ok_and(|answer| answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.contains(&expected))
    };
    let passing = nodeplane_testkit::eventually(FOLLOW, || answered("200", 1));
    assert!(passing, "the health check with an endpoint here: {:?}", check());
    let answer = check().unwrap();
    assert!(answer.contains(r#""service":{"name":"np","namespace":"x"}"#), "{answer}");
    assert!(answer.contains("\"serviceProxyHealthy\":true"), "{answer}");
    cluster.kubectl(&["delete", "-n", "x", "endpointslice/np-local"], None).unwrap();
    let failing = nodeplane_testkit::eventually(FOLLOW, || answered("503", 0));
    assert!(failing, "the health check with no endpoint here: {:?}", check());
    assert!(from_outside().is_err(), "under Local, no endpoint here: nothing answers");
    let _ = health.kill();
    let _ = health.wait();
}

/// `GET /healthz` to `addr:port` in this network namespace: the whole answer.
fn http_get(addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// nodeplane's routes in the namespace `netns`.
fn route_table(netns: &str) -> String {
    in_netns_ip(netns, &["route", "show", "proto", "78"])
}

/// A server in node-2's namespace at its pod address 10.244.2.5:8080,
/// answering "node-2": bound there, the socket stays there; it answers from a thread.
fn serve_node_2(peer: &nodeplane_sandbox::NamedNetns) {
    let listener = peer.run(|| std::net::TcpListener::bind("10.244.2.5:8080")).unwrap().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut stream, b"node-2");
        }
    });
}
