//! ClusterIP load balancing through the real kernel: a node namespace with pods
//! on veth pairs, the program attached to the pods' host-side interfaces.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nodeplane_datapath::{
    AttachMode, Capacities, CtTimeouts, Datapath, MapSettings, PodAt, Reconciler, Service, SyncStats,
};
use nodeplane_datapath_abi as abi;
use nodeplane_model::Protocol;
use nodeplane_model::manifests::{PortName, ServicePort, load_dir};
use nodeplane_model::services::by_service;
use nodeplane_testkit::{Bpffs, Node, Pod, RequestLoop, privileged, service_manifest};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn service(id: u32, port: u16, protocol: Protocol, backends: &[(Ipv4Addr, u16)]) -> Service {
    Service { id, vip: VIP, port, protocol, backends: backends.to_vec(), affinity: None, node_port: false }
}

/// Loads the datapath in the node's namespace and attaches it to every pod.
fn load(node: &Node, bpffs: &Bpffs, pods: &[&Pod]) -> Datapath {
    let pin = bpffs.path().to_owned();
    let interfaces: Vec<String> = pods.iter().map(|p| p.host_if.clone()).collect();
    node.run(move || {
        let mut datapath = Datapath::load(&pin).expect("load the datapath");
        for interface in &interfaces {
            datapath.attach_pod_interface(interface).expect("attach");
        }
        datapath
    })
}

#[test]
fn cluster_ip_tcp_and_udp_reach_every_backend_and_replies_come_from_the_vip() {
    if !privileged("cluster_ip_tcp_and_udp_reach_every_backend_and_replies_come_from_the_vip") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 0, 2)).unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 0, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 0, 4)).unwrap();
    let _servers =
        [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2"), b1.serve_udp(5353, "b1"), b2.serve_udp(5353, "b2")];
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2]);
    datapath.services().set(&service(1, 80, Protocol::Tcp, &[(b1.ip, 8080), (b2.ip, 8080)])).unwrap();
    datapath.services().set(&service(2, 53, Protocol::Udp, &[(b1.ip, 5353), (b2.ip, 5353)])).unwrap();

    let mut tcp: BTreeMap<String, u32> = BTreeMap::new();
    for n in 0..100 {
        let reply = client.tcp_request(VIP, 80).unwrap_or_else(|e| panic!("TCP request {n} to the VIP: {e}"));
        *tcp.entry(reply).or_default() += 1;
    }
    assert_eq!(tcp.keys().collect::<Vec<_>>(), ["b1", "b2"], "every backend gets TCP flows: {tcp:?}");

    let mut udp: BTreeMap<String, u32> = BTreeMap::new();
    for n in 0..60 {
        let (reply, from) = client.udp_request(VIP, 53).unwrap_or_else(|e| panic!("UDP request {n} to the VIP: {e}"));
        assert_eq!(from, SocketAddr::from((VIP, 53)), "the reply comes from the VIP, not the backend");
        *udp.entry(reply).or_default() += 1;
    }
    assert_eq!(udp.keys().collect::<Vec<_>>(), ["b1", "b2"], "every backend gets UDP flows: {udp:?}");

    // A pod's own IP is not a Service: direct traffic passes untouched.
    assert_eq!(client.tcp_request(b1.ip, 8080).unwrap(), "b1");
}

const HAIRPIN: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

#[test]
fn hairpin_works_every_time_and_leaves_no_entry_after_the_close_timeout() {
    if !privileged("hairpin_works_every_time_and_leaves_no_entry_after_the_close_timeout") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let pod = node.add_pod(Ipv4Addr::new(10, 200, 1, 2)).unwrap();
    let _server = pod.serve_tcp(8080, "myself");
    let mut datapath = load(&node, &bpffs, &[&pod]);
    datapath.set_hairpin_address(HAIRPIN).unwrap();
    datapath.services().set(&service(7, 80, Protocol::Tcp, &[(pod.ip, 8080)])).unwrap();

    for n in 0..1000 {
        let reply = pod.tcp_request(VIP, 80).unwrap_or_else(|e| panic!("hairpin connection {n}: {e}"));
        assert_eq!(reply, "myself");
    }
    // The same source port, back to back: each SYN on the tuple of a closed flow
    // opens a new one instead of hitting the old entry.
    for n in 0..100 {
        let reply = pod.tcp_request_from(40000, VIP, 80).unwrap_or_else(|e| panic!("reused-port connection {n}: {e}"));
        assert_eq!(reply, "myself");
    }
    let counters: BTreeMap<_, _> = datapath.counters().unwrap().into_iter().collect();
    assert!(counters["hairpin_flow"] >= 1100, "{counters:?}");
    assert_eq!(counters["rewrite_failed"], 0);

    // Every entry these flows made is closed; after the close timeout GC takes them all.
    let entries = datapath.conntrack().entries().unwrap();
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|(_, v)| v.closed()),
        "open entries left: {:?}",
        entries.iter().filter(|(_, v)| !v.closed()).count()
    );
    let timeouts = CtTimeouts { tcp_closed: Duration::from_millis(500), ..CtTimeouts::default() };
    std::thread::sleep(Duration::from_millis(700));
    let stats = datapath.conntrack().gc(timeouts).unwrap();
    assert_eq!(stats.expired, stats.entries);
    assert!(datapath.conntrack().entries().unwrap().is_empty());
}

#[test]
fn a_pod_reaches_itself_through_a_vip_with_one_and_with_two_backends() {
    if !privileged("a_pod_reaches_itself_through_a_vip_with_one_and_with_two_backends") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let pod = node.add_pod(Ipv4Addr::new(10, 200, 2, 2)).unwrap();
    let other = node.add_pod(Ipv4Addr::new(10, 200, 2, 3)).unwrap();
    let _servers = [pod.serve_tcp(8080, "self"), other.serve_tcp(8080, "other")];
    let mut datapath = load(&node, &bpffs, &[&pod, &other]);
    datapath.set_hairpin_address(HAIRPIN).unwrap();
    for backends in [vec![(pod.ip, 8080)], vec![(pod.ip, 8080), (other.ip, 8080)]] {
        datapath.services().set(&service(9, 80, Protocol::Tcp, &backends)).unwrap();
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for n in 0..200 {
            let reply = pod
                .tcp_request(VIP, 80)
                .unwrap_or_else(|e| panic!("{} backend(s), connection {n}: {e}", backends.len()));
            *seen.entry(reply).or_default() += 1;
        }
        let expected: Vec<&str> = if backends.len() == 1 { vec!["self"] } else { vec!["other", "self"] };
        assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), expected, "{seen:?}");
    }
}

#[test]
fn traffic_and_conntrack_survive_the_loader_going_away_and_coming_back() {
    if !privileged("traffic_and_conntrack_survive_the_loader_going_away_and_coming_back") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = std::sync::Arc::new(node.add_pod(Ipv4Addr::new(10, 200, 3, 2)).unwrap());
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 3, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 3, 4)).unwrap();
    let _servers = [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2")];
    let mut first = load(&node, &bpffs, &[&client, &b1, &b2]);
    first.set_hairpin_address(HAIRPIN).unwrap();
    first.services().set(&service(3, 80, Protocol::Tcp, &[(b1.ip, 8080)])).unwrap();

    // A request loop through the VIP for the whole test.
    let looping = RequestLoop::start(client.clone(), VIP, 80);
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<_> = first.conntrack().entries().unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(!before.is_empty());

    // The loader goes away, as when nodeplaned is killed: its fds close.
    drop(first);
    std::thread::sleep(Duration::from_millis(300));

    // And comes back: pinned maps reused, the attachments found, not doubled.
    let mut second = load(&node, &bpffs, &[&client, &b1, &b2]);
    let entries: std::collections::HashSet<_> =
        second.conntrack().entries().unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(before.iter().all(|k| entries.contains(k)), "conntrack entries were lost");
    let iface = client.host_if.clone();
    let attached = node.run(move || {
        aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Ingress)
            .map(|(_, p)| p.iter().map(|p| p.id()).collect::<Vec<_>>())
    });
    let current = second.program_id().unwrap();
    assert_eq!(attached.unwrap(), [current], "one program on the interface, the new loader's (an upgrade applies)");
    second.services().set(&service(3, 80, Protocol::Tcp, &[(b1.ip, 8080), (b2.ip, 8080)])).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let replies: Vec<_> = looping.finish().into_iter().map(|(_, reply)| reply).collect();
    let failed: Vec<_> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        replies.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(replies.len() > 100, "only {} requests", replies.len());
    assert!(
        replies.iter().any(|r| r.as_ref().is_ok_and(|reply| reply == "b2")),
        "the restarted loader's update took effect"
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    if !privileged("client_ip_affinity_keeps_a_client_on_one_backend") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 4, 2)).unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 4, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 4, 4)).unwrap();
    let _servers =
        [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2"), b1.serve_udp(5353, "b1"), b2.serve_udp(5353, "b2")];
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2]);
    let backends = [(b1.ip, 8080), (b2.ip, 8080)];
    let sticky = Service { affinity: Some(Duration::from_secs(10800)), ..service(4, 80, Protocol::Tcp, &backends) };
    datapath.services().set(&sticky).unwrap();
    let udp = Service {
        affinity: Some(Duration::from_secs(10800)),
        ..service(5, 53, Protocol::Udp, &[(b1.ip, 5353), (b2.ip, 5353)])
    };
    datapath.services().set(&udp).unwrap();
    let tcp_replies: std::collections::BTreeSet<String> =
        (0..60).map(|_| client.tcp_request(VIP, 80).unwrap()).collect();
    assert_eq!(tcp_replies.len(), 1, "one backend for the client: {tcp_replies:?}");
    let udp_replies: std::collections::BTreeSet<String> =
        (0..40).map(|_| client.udp_request(VIP, 53).unwrap().0).collect();
    assert_eq!(udp_replies.len(), 1, "one backend for the client: {udp_replies:?}");

    // Its backend removed, the client moves to the other one and stays there.
    let kept = tcp_replies.into_iter().next().unwrap();
    let remaining = if kept == "b1" { (b2.ip, 8080) } else { (b1.ip, 8080) };
    datapath.services().set(&Service { backends: vec![remaining], ..sticky }).unwrap();
    let after: std::collections::BTreeSet<String> = (0..20).map(|_| client.tcp_request(VIP, 80).unwrap()).collect();
    assert_eq!(after.len(), 1);
    assert_ne!(after.into_iter().next().unwrap(), kept);
}

#[test]
fn a_removed_backend_gets_no_new_flow_and_its_udp_flows_move() {
    if !privileged("a_removed_backend_gets_no_new_flow_and_its_udp_flows_move") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 5, 2)).unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 5, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 5, 4)).unwrap();
    let _servers =
        [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2"), b1.serve_udp(5353, "b1"), b2.serve_udp(5353, "b2")];
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2]);
    datapath.services().set(&service(6, 80, Protocol::Tcp, &[(b1.ip, 8080), (b2.ip, 8080)])).unwrap();
    datapath.services().set(&service(8, 53, Protocol::Udp, &[(b1.ip, 5353), (b2.ip, 5353)])).unwrap();

    // One UDP flow (one source port) for the whole test, pinned to a backend.
    let udp = client.run(|| {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        socket
    });
    let ask = |socket: &std::net::UdpSocket| {
        socket.send_to(b"ping", (VIP, 53)).unwrap();
        let mut buf = [0u8; 64];
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let first = ask(&udp);
    assert!((0..10).all(|_| ask(&udp) == first), "a UDP flow stays on its backend");

    // Remove that backend: new TCP flows and the UDP flow go to the other one.
    let (gone, live) = if first == "b1" { ("b1", (b2.ip, 8080)) } else { ("b2", (b1.ip, 8080)) };
    datapath.services().set(&service(6, 80, Protocol::Tcp, &[live])).unwrap();
    datapath.services().set(&service(8, 53, Protocol::Udp, &[(live.0, 5353)])).unwrap();
    for n in 0..50 {
        assert_ne!(client.tcp_request(VIP, 80).unwrap(), gone, "new flow {n} reached the removed backend");
    }
    for n in 0..10 {
        assert_ne!(ask(&udp), gone, "UDP datagram {n} of the old flow reached the removed backend");
    }
}

#[test]
fn manifests_are_applied_incrementally_and_survive_a_new_reconciler() {
    if !privileged("manifests_are_applied_incrementally_and_survive_a_new_reconciler") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 6, 2)).unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 6, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 6, 4)).unwrap();
    let _servers = [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2")];
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.yaml");
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec:\n  clusterIP: 10.96.9.9\n  ports: [{port: 81}]\n";
    std::fs::write(dir.path().join("other.yaml"), other).unwrap();
    let mut reconciler = Reconciler::default();
    let sync = |datapath: &mut Datapath, reconciler: &mut Reconciler| {
        let found = load_dir(dir.path());
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        reconciler.sync(&mut datapath.services(), &by_service(found.ports), true, None).unwrap()
    };

    std::fs::write(&manifest, service_manifest("web", VIP, &[b1.ip])).unwrap();
    assert_eq!(sync(&mut datapath, &mut reconciler), SyncStats { added: 2, ..Default::default() });
    assert!((0..10).all(|_| client.tcp_request(VIP, 80).unwrap() == "b1"));

    std::fs::write(&manifest, service_manifest("web", VIP, &[b2.ip])).unwrap();
    assert_eq!(sync(&mut datapath, &mut reconciler), SyncStats { updated: 1, unchanged: 1, ..Default::default() });
    assert!((0..10).all(|_| client.tcp_request(VIP, 80).unwrap() == "b2"));
    assert_eq!(sync(&mut datapath, &mut reconciler), SyncStats { unchanged: 2, ..Default::default() });

    // A new loader and reconciler (a restarted nodeplaned) find the programmed
    // ports in the maps, keep their ids (the remaining one is written once more),
    // and remove what is no longer desired.
    drop(datapath);
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2]);
    let mut reconciler = Reconciler::default();
    std::fs::remove_file(&manifest).unwrap();
    assert_eq!(sync(&mut datapath, &mut reconciler), SyncStats { updated: 1, removed: 1, ..Default::default() });
    assert!(client.tcp_request(VIP, 80).is_err(), "a removed Service no longer answers");
    assert_eq!(datapath.services().programmed().unwrap().len(), 1);
}

/// A sync given some Services (the API source's changes) touches only
/// theirs; an entry two Services claim stays the first one's until it lets
/// go, and the refusal leaves the reconciler wanting everything next time.
#[test]
fn a_sync_of_some_services_leaves_the_others_and_a_claimed_entry_stays_its_owners() {
    if !privileged("a_sync_of_some_services_leaves_the_others_and_a_claimed_entry_stays_its_owners") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 16, 2)).unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 16, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 16, 4)).unwrap();
    let _servers = [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2")];
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2]);
    let other_vip = Ipv4Addr::new(10, 96, 0, 11);
    let service = |name: &str, vip: Ipv4Addr, backend: Ipv4Addr| {
        let port = ServicePort {
            name: PortName { namespace: "default".into(), service: name.into(), port: String::new() },
            vip,
            port: 80,
            protocol: Protocol::Tcp,
            affinity: None,
            backends: vec![(backend, 8080)],
            node_port: None,
            node_port_backends: Vec::new(),
            health_check_node_port: None,
        };
        (format!("default/{name}"), vec![port])
    };
    let mut reconciler = Reconciler::default();
    let mut sync = |services: &[(String, Vec<ServicePort>)], everything: bool| {
        let stats = reconciler.sync(&mut datapath.services(), services, everything, None).unwrap();
        (stats, reconciler.in_sync(), datapath.services().programmed().unwrap().len())
    };
    let both = [service("a", VIP, b1.ip), service("b", other_vip, b2.ip)];
    assert_eq!(sync(&both, true).0, SyncStats { added: 2, ..Default::default() });

    // Only b changed: a is not looked at, and keeps serving.
    assert_eq!(sync(&[service("b", other_vip, b1.ip)], false).0, SyncStats { updated: 1, ..Default::default() });
    assert_eq!(client.tcp_request(VIP, 80).unwrap(), "b1");
    assert_eq!(client.tcp_request(other_vip, 80).unwrap(), "b1");

    // b moves to a's VIP: refused while a has it (b's old entry goes).
    let (stats, in_sync, _) = sync(&[service("b", VIP, b2.ip)], false);
    assert_eq!(stats.removed, 1);
    assert_eq!(stats.failed.len(), 1, "{stats:?}");
    assert!(stats.failed[0].contains("default/a's already"), "{stats:?}");
    assert!(!in_sync, "the next sync is to be given everything");
    assert!((0..5).all(|_| client.tcp_request(VIP, 80).unwrap() == "b1"));
    assert!(client.tcp_request(other_vip, 80).is_err());

    // Given everything, without a: b takes the VIP.
    let (stats, in_sync, programmed) = sync(&[service("b", VIP, b2.ip)], true);
    assert_eq!(stats, SyncStats { updated: 1, ..Default::default() });
    assert!(in_sync);
    assert_eq!(programmed, 1, "a's entry became b's");
    assert!((0..5).all(|_| client.tcp_request(VIP, 80).unwrap() == "b2"));
}

#[test]
fn a_direct_connection_on_the_tuple_of_a_closed_service_flow_gets_its_replies() {
    if !privileged("a_direct_connection_on_the_tuple_of_a_closed_service_flow_gets_its_replies") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 8, 2)).unwrap();
    let backend = node.add_pod(Ipv4Addr::new(10, 200, 8, 3)).unwrap();
    let _server = backend.serve_tcp(8080, "b");
    let mut datapath = load(&node, &bpffs, &[&client, &backend]);
    datapath.services().set(&service(10, 80, Protocol::Tcp, &[(backend.ip, 8080)])).unwrap();
    // Through the VIP, then straight to the backend, from the same source port:
    // the backend's replies must not be taken for the closed Service flow's.
    // (A fresh port each round: a direct flow and a later Service flow on one
    // tuple would collide without source-port translation, which is not built.)
    for n in 0..20 {
        let port = 41000 + n;
        assert_eq!(client.tcp_request_from(port, VIP, 80).unwrap(), "b", "round {n} through the VIP");
        let direct = client.tcp_request_from(port, backend.ip, 8080);
        assert_eq!(direct.unwrap_or_else(|e| panic!("round {n} direct: {e}")), "b");
    }
}

#[test]
fn backends_removed_and_added_under_a_running_request_loop() {
    if !privileged("backends_removed_and_added_under_a_running_request_loop") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = std::sync::Arc::new(node.add_pod(Ipv4Addr::new(10, 200, 9, 2)).unwrap());
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 9, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 9, 4)).unwrap();
    let b3 = node.add_pod(Ipv4Addr::new(10, 200, 9, 5)).unwrap();
    let _servers = [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2"), b3.serve_tcp(8080, "b3")];
    let mut datapath = load(&node, &bpffs, &[&client, &b1, &b2, &b3]);
    datapath.services().set(&service(11, 80, Protocol::Tcp, &[(b1.ip, 8080), (b2.ip, 8080)])).unwrap();

    // Each request records when it started and which backend answered.
    let looping = RequestLoop::start(client.clone(), VIP, 80);
    std::thread::sleep(Duration::from_millis(300));
    // Remove b1, add b3, while requests are in flight.
    datapath.services().set(&service(11, 80, Protocol::Tcp, &[(b2.ip, 8080), (b3.ip, 8080)])).unwrap();
    let updated = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let replies = looping.finish();

    let failed: Vec<_> = replies.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} requests failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    let after: Vec<&str> = replies.iter().filter(|(t, _)| *t > updated).map(|(_, r)| r.as_deref().unwrap()).collect();
    assert!(after.len() > 20, "only {} requests after the update", after.len());
    assert!(!after.contains(&"b1"), "a request started after the update reached the removed backend");
    assert!(after.contains(&"b3"), "the added backend gets new flows");
    let before: Vec<&str> = replies.iter().filter(|(t, _)| *t <= updated).map(|(_, r)| r.as_deref().unwrap()).collect();
    assert!(before.contains(&"b1"), "b1 served before the update");
}

#[test]
fn each_connection_on_a_reused_source_port_picks_its_backend_anew() {
    if !privileged("each_connection_on_a_reused_source_port_picks_its_backend_anew") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let pod = node.add_pod(Ipv4Addr::new(10, 200, 10, 2)).unwrap();
    let other = node.add_pod(Ipv4Addr::new(10, 200, 10, 3)).unwrap();
    let _servers = [pod.serve_tcp(8080, "self"), other.serve_tcp(8080, "other")];
    let mut datapath = load(&node, &bpffs, &[&pod, &other]);
    datapath.set_hairpin_address(HAIRPIN).unwrap();
    datapath.services().set(&service(12, 80, Protocol::Tcp, &[(pod.ip, 8080), (other.ip, 8080)])).unwrap();
    // Were the closed flow's entry reused, every connection would go where the first did.
    let replies: std::collections::BTreeSet<String> = (0..40)
        .map(|n| pod.tcp_request_from(40500, VIP, 80).unwrap_or_else(|e| panic!("connection {n}: {e}")))
        .collect();
    assert_eq!(replies.into_iter().collect::<Vec<_>>(), ["other", "self"]);
}

#[test]
fn the_netlink_path_of_older_kernels_balances_and_outlives_the_loader() {
    if !privileged("the_netlink_path_of_older_kernels_balances_and_outlives_the_loader") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 11, 2)).unwrap();
    let backend = node.add_pod(Ipv4Addr::new(10, 200, 11, 3)).unwrap();
    let _server = backend.serve_tcp(8080, "b");
    let load_netlink = || {
        let (pin, interfaces) = (bpffs.path().to_owned(), vec![client.host_if.clone(), backend.host_if.clone()]);
        node.run(move || {
            let mut datapath = Datapath::load_with(&pin, AttachMode::Netlink, &Capacities::reference()).expect("load");
            for interface in &interfaces {
                datapath.attach_pod_interface(interface).expect("attach over netlink");
            }
            datapath
        })
    };
    let mut first = load_netlink();
    first.services().set(&service(13, 80, Protocol::Tcp, &[(backend.ip, 8080)])).unwrap();
    assert_eq!(client.tcp_request(VIP, 80).unwrap(), "b");
    let iface = client.host_if.clone();
    let tcx = node.run(move || {
        aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Ingress).map(|(_, p)| p.len())
    });
    assert_eq!(tcx.unwrap_or(0), 0, "attached by netlink, not TCX");

    drop(first);
    assert_eq!(client.tcp_request(VIP, 80).unwrap(), "b", "the filter outlives the loader");
    let mut second = load_netlink();
    assert_eq!(client.tcp_request(VIP, 80).unwrap(), "b");
    let current = format!(" id {} ", second.program_id().unwrap());
    let iface = client.host_if.clone();
    let shown = node.run(move || {
        std::process::Command::new("tc").args(["filter", "show", "dev", &iface, "ingress"]).output().unwrap()
    });
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert_eq!(shown.lines().filter(|l| l.contains("name from_pod")).count(), 1, "one filter, not two: {shown}");
    assert!(shown.contains(&current), "the filter runs the new loader's program ({current}): {shown}");
}

#[test]
fn a_long_lived_connection_keeps_its_backend_while_the_loader_restarts() {
    if !privileged("a_long_lived_connection_keeps_its_backend_while_the_loader_restarts") {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 12, 2)).unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 12, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 12, 4)).unwrap();
    let _servers = [b1.serve_tcp_echo(8080, "b1"), b2.serve_tcp_echo(8080, "b2")];
    let mut first = load(&node, &bpffs, &[&client, &b1, &b2]);
    first.services().set(&service(14, 80, Protocol::Tcp, &[(b1.ip, 8080), (b2.ip, 8080)])).unwrap();

    // One connection through the VIP; it is established in the client's namespace
    // and then used from here (a socket stays in the namespace it was made in).
    let stream = client.run(|| std::net::TcpStream::connect((VIP, 80)).unwrap());
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let backend = line.trim().to_owned();
    let mut echo = |n: u32| {
        writeln!(writer, "message {n}").unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap_or_else(|e| panic!("echo {n}: {e}"));
        assert_eq!(reply.trim(), format!("message {n}"));
    };
    echo(1);
    drop(first);
    echo(2);
    // The restarted loader also changes the Service: the open flow stays where it is.
    let mut second = load(&node, &bpffs, &[&client, &b1, &b2]);
    let other = if backend == "b1" { (b2.ip, 8080) } else { (b1.ip, 8080) };
    let kept = if backend == "b1" { (b1.ip, 8080) } else { (b2.ip, 8080) };
    second.services().set(&service(14, 80, Protocol::Tcp, &[kept, other])).unwrap();
    for n in 3..20 {
        echo(n);
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_recreated_not_misread() {
    if !privileged("a_pinned_map_of_another_layout_is_recreated_not_misread") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    // As an older nodeplane would have left it: np_conntrack with other sizes.
    let stale = bpffs.path().join("np_conntrack");
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&stale)
        .args(["type", "hash", "key", "4", "value", "4", "entries", "16", "name", "np_conntrack"])
        .output()
        .expect("bpftool");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let first = Datapath::load(bpffs.path()).expect("load over a stale map");
    let recreated = first.recreated_maps();
    assert_eq!(recreated.len(), 1, "{recreated:?}");
    assert!(recreated[0].starts_with("np_conntrack: pinned as"), "{recreated:?}");
    let shown = std::process::Command::new("bpftool").args(["map", "show", "pinned"]).arg(&stale).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("hash")
            && shown.contains(&format!("max_entries {}", nodeplane_datapath_abi::CONNTRACK_CAPACITY)),
        "{shown}"
    );
    drop(first);
    // The layout now matches: a second load reuses every map.
    assert!(Datapath::load(bpffs.path()).unwrap().recreated_maps().is_empty());
}

/// Binds each pod's host-side interface to its address and network namespace
/// id, as nodeplaned does from netlink.
fn bind_pods(node: &Node, datapath: &mut Datapath, pods: &[&Pod]) {
    let pods: BTreeMap<u32, PodAt> = pods
        .iter()
        .map(|pod| {
            let (index, netns) = node.pod_link(pod).unwrap();
            (index, PodAt { addr: pod.ip, netns_id: Some(netns) })
        })
        .collect();
    datapath.pod_interfaces().set(&pods).unwrap();
}

#[test]
fn a_service_flow_on_the_tuple_of_a_backend_socket_in_time_wait_gets_another_source_port() {
    if !privileged("a_service_flow_on_the_tuple_of_a_backend_socket_in_time_wait_gets_another_source_port") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 14, 2)).unwrap();
    let backend = node.add_pod(Ipv4Addr::new(10, 200, 14, 3)).unwrap();
    let _server = backend.serve_tcp_peer(8080);
    let mut datapath = load(&node, &bpffs, &[&client, &backend]);
    bind_pods(&node, &mut datapath, &[&client, &backend]);
    datapath.services().set(&service(17, 80, Protocol::Tcp, &[(backend.ip, 8080)])).unwrap();
    let clashes =
        |datapath: &mut Datapath| datapath.counters().unwrap().into_iter().find(|(n, _)| *n == "ct_clash").unwrap().1;
    for n in 0..10 {
        let port = 42000 + n;
        let itself = format!("{}:{port}", client.ip);
        // Straight to the backend first: it closes first, so it keeps the tuple in TIME_WAIT.
        assert_eq!(client.tcp_request_from(port, backend.ip, 8080).unwrap(), itself, "round {n} direct");
        let before = clashes(&mut datapath);
        // Then through the VIP from the same port. The client's timestamps for
        // the VIP run on another offset, so on that tuple the backend might take
        // the SYN for an old duplicate: the flow must come from another port.
        let seen = client.tcp_request_from(port, VIP, 80).unwrap_or_else(|e| panic!("round {n} via the VIP: {e}"));
        assert!(seen.starts_with(&format!("{}:", client.ip)) && seen != itself, "round {n}: the backend saw {seen}");
        assert_eq!(clashes(&mut datapath), before + 1, "round {n}");
    }
}

#[test]
fn a_bulk_transfer_through_a_vip_is_delivered_past_the_host_stack_whole() {
    if !privileged("a_bulk_transfer_through_a_vip_is_delivered_past_the_host_stack_whole") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = node.add_pod(Ipv4Addr::new(10, 200, 13, 2)).unwrap();
    let backend = node.add_pod(Ipv4Addr::new(10, 200, 13, 3)).unwrap();
    let _server = backend.serve_tcp_bulk(9000);
    let (pin, interfaces) = (bpffs.path().to_owned(), vec![client.host_if.clone(), backend.host_if.clone()]);
    let mut datapath = node.run(move || {
        let mut datapath = Datapath::load(&pin).expect("load");
        for interface in &interfaces {
            datapath.attach_pod_interface(interface).expect("attach");
        }
        datapath
    });
    datapath.services().set(&service(16, 80, Protocol::Tcp, &[(backend.ip, 9000)])).unwrap();
    client
        .run(|| -> std::io::Result<()> {
            let mut stream = std::net::TcpStream::connect((VIP, 80))?;
            let mut data = vec![0u8; 64 << 20];
            std::io::Read::read_exact(&mut stream, &mut data)
        })
        .expect("64 MiB through the VIP");
    let counters: BTreeMap<&str, u64> = datapath.counters().unwrap().into_iter().collect();
    // The server's segments are GSO packets far above the MTU: each is still
    // forwardable, and none may fall back to the host stack (and its netfilter).
    assert!(counters["translated"] > 1000, "{counters:?}");
    assert_eq!(counters["redirected"], counters["translated"], "{counters:?}");
}

#[test]
fn maps_get_the_capacities_asked_for_and_a_pinned_one_keeps_its_size_and_entries() {
    if !privileged("maps_get_the_capacities_asked_for_and_a_pinned_one_keeps_its_size_and_entries") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let sized = |services, conntrack| {
        let settings = MapSettings { services: Some(services), conntrack: Some(conntrack), ..MapSettings::default() };
        Capacities::for_memory(1 << 30).with(&settings)
    };
    let services_of = |_loaded: &Datapath| {
        let usage = nodeplane_datapath::inspect::map_usage(bpffs.path(), 0).unwrap();
        let services = usage.iter().find(|m| m.name == abi::SERVICES).unwrap().clone();
        (services.capacity, services.entries, usage)
    };
    let mut first = Datapath::load_with(bpffs.path(), AttachMode::Auto, &sized(1024, 4096)).unwrap();
    assert_eq!(first.capacity(abi::CONNTRACK).unwrap(), 4096);
    first.services().set(&service(15, 80, Protocol::Tcp, &[(Ipv4Addr::new(10, 200, 12, 3), 8080)])).unwrap();
    let (capacity, entries, usage) = services_of(&first);
    assert_eq!((capacity, entries), (1024, Some(1)), "{usage:?}");
    // Preallocated, conntrack's memory is all there while it is empty; a table's is its buckets.
    let conntrack = usage.iter().find(|m| m.name == abi::CONNTRACK).unwrap();
    assert!(conntrack.bytes >= 4096 * 100, "{conntrack:?}");
    let backends = usage.iter().find(|m| m.name == abi::BACKENDS).unwrap();
    assert_eq!(backends.entries, Some(1), "{backends:?}");
    assert!(backends.bytes < 65_536 * 16 + 1024, "{backends:?}");
    drop(first);

    // Asked for more, the pinned map stays as it is, with its Service, and says how to apply the size.
    let second = Datapath::load_with(bpffs.path(), AttachMode::Auto, &sized(2048, 4096)).unwrap();
    let kept = second.kept_sizes();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with("np_services: pinned with 1024 entries, 2048 asked for; kept"), "{kept:?}");
    assert!(second.recreated_maps().is_empty());
    assert_eq!(services_of(&second).0, 1024);
    assert_eq!(services_of(&second).1, Some(1));
    drop(second);

    // Once unpinned, the next load makes it at the new size.
    std::fs::remove_file(bpffs.path().join(abi::SERVICES)).unwrap();
    let third = Datapath::load_with(bpffs.path(), AttachMode::Auto, &sized(2048, 4096)).unwrap();
    assert!(third.kept_sizes().is_empty(), "{:?}", third.kept_sizes());
    assert_eq!(services_of(&third).0, 2048);
}

#[test]
fn node_ports_reach_a_local_backend_and_the_nodes_own_traffic_from_such_ports_keeps_its_replies() {
    if !privileged("node_ports_reach_a_local_backend_and_the_nodes_own_traffic_from_such_ports_keeps_its_replies") {
        return;
    }
    use std::net::{SocketAddr, TcpStream, UdpSocket};
    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let backend = node.add_pod(Ipv4Addr::new(10, 200, 13, 3)).unwrap();
    let outside = node.add_external(NODE_IP, Ipv4Addr::new(192, 168, 77, 2)).unwrap();
    let _servers = [backend.serve_tcp(8080, "np-tcp"), backend.serve_udp(8080, "np-udp")];
    let mut datapath = load(&node, &bpffs, &[&backend, &outside]);
    for (id, protocol) in [(15, Protocol::Tcp), (16, Protocol::Udp)] {
        let entry = Service { vip: NODE_IP, node_port: true, ..service(id, 30080, protocol, &[(backend.ip, 8080)]) };
        datapath.services().set(&entry).unwrap();
    }

    // From outside, to the node's IP on the NodePort: the local backend answers, from the NodePort.
    for _ in 0..20 {
        assert_eq!(outside.tcp_request(NODE_IP, 30080).unwrap(), "np-tcp");
        let (reply, from) = outside.udp_request(NODE_IP, 30080).unwrap();
        assert_eq!((reply.as_str(), from), ("np-udp", SocketAddr::from((NODE_IP, 30080))));
    }

    // The node's own connections from port 30080 (bound explicitly) get their replies.
    let _outside_servers = [outside.serve_tcp(9000, "outside-tcp"), outside.serve_udp(9000, "outside-udp")];
    let client_ip = outside.ip;
    let (tcp, udp) = node.run(move || {
        use rustix::net::{AddressFamily, SocketType, bind, connect, ipproto, socket, sockopt};
        let tcp = (|| -> std::io::Result<String> {
            let socket = socket(AddressFamily::INET, SocketType::STREAM, Some(ipproto::TCP))?;
            sockopt::set_socket_reuseaddr(&socket, true)?;
            bind(&socket, &SocketAddr::from((NODE_IP, 30080)))?;
            connect(&socket, &SocketAddr::from((client_ip, 9000)))?;
            let mut stream = TcpStream::from(socket);
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut reply = String::new();
            std::io::Read::read_to_string(&mut stream, &mut reply)?;
            Ok(reply)
        })();
        let udp = (|| -> std::io::Result<String> {
            let socket = UdpSocket::bind((NODE_IP, 30080))?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.send_to(b"hello", (client_ip, 9000))?;
            let mut buffer = [0u8; 64];
            let (n, _) = socket.recv_from(&mut buffer)?;
            Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
        })();
        (tcp, udp)
    });
    assert_eq!(tcp.unwrap(), "outside-tcp", "a TCP reply to port 30080 is not taken for NodePort traffic");
    assert_eq!(udp.unwrap(), "outside-udp", "a UDP reply to port 30080 is not taken for NodePort traffic");
}
