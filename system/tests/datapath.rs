//! The datapath inside the real `nodeplaned`, run in a node network namespace
//! with pods: Services from the manifests directory, pod interfaces attached as
//! found, traffic that keeps flowing while nodeplaned is killed and restarted,
//! and the metrics endpoint counting it.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nodeplane_testkit::{
    Bpffs, Exposition, Node, RequestLoop, Scrape, node_port_manifest, privileged, scrape, service_manifest,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);

#[test]
fn services_from_manifests_reach_pods_and_survive_kill_9() {
    if !privileged("services_from_manifests_reach_pods_and_survive_kill_9") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let client = Arc::new(node.add_pod(Ipv4Addr::new(10, 200, 7, 2)).unwrap());
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 7, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 7, 4)).unwrap();
    let _servers = [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2")];
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("web.yaml"), service_manifest("web", VIP, &[b1.ip])).unwrap();
    let bus = bus();
    let first = start_in(&node, &bus, &bpffs, manifests.path());

    // READY means attached and synced: the Service answers at once.
    assert_eq!(client.tcp_request(VIP, 80).unwrap(), "b1");
    let status = ctl(&bus, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let datapath = json["components"].as_array().unwrap().iter().find(|c| c["name"] == "datapath").unwrap().clone();
    assert_eq!(datapath["state"], "healthy", "{datapath}");
    assert_eq!(datapath["facts"]["services"], 1);
    assert_eq!(datapath["facts"]["attached_interfaces"], 3);
    // Each map's fill and capacity, counted off the supervisor's thread: the
    // Service's one port is in np_services, sized for this machine's memory.
    let (sized, _) = nodeplane_datapath::Capacities::for_node(&Default::default()).unwrap();
    let services = format!("1/{},", sized.get("np_services").unwrap());
    let map_fact = || {
        let status: serde_json::Value = serde_json::from_slice(&ctl(&bus, &["status", "--json"]).stdout).unwrap();
        let datapath = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "datapath").cloned();
        datapath.and_then(|d| d["facts"]["map_np_services"].as_str().map(str::to_owned)).unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(10), || map_fact().starts_with(&services)), "{}", map_fact());

    // The metrics count the traffic: twenty requests through the VIP are
    // twenty more Service flows, each translated both ways.
    let metrics = first.metrics().address();
    let service_flows = |s: &Scrape| s.value("nodeplane_datapath_flows_total", &[("kind", "service")]).unwrap_or(0.0);
    let translated =
        |s: &Scrape| s.value("nodeplane_datapath_translations_total", &[("kind", "packet")]).unwrap_or(0.0);
    let before = scrape(metrics, Exposition::Text).unwrap();
    assert_eq!(before.value("nodeplane_datapath_service_ports", &[]), Some(1.0), "{before:?}");
    let state = [("component", "datapath"), ("state", "healthy")];
    assert_eq!(before.value("nodeplane_component_state", &state), Some(1.0), "{before:?}");
    assert_eq!(before.value("nodeplane_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));
    assert!(before.value("nodeplane_datapath_sync_duration_seconds_count", &[]) >= Some(1.0), "{before:?}");
    assert_eq!(before.kind("nodeplane_datapath_flows"), Some("counter"));
    for _ in 0..20 {
        assert_eq!(client.tcp_request(VIP, 80).unwrap(), "b1");
    }
    // The counters are summed at each sync (200 ms here).
    let counted = || {
        let after = scrape(metrics, Exposition::Text).unwrap();
        service_flows(&after) >= service_flows(&before) + 20.0 && translated(&after) >= translated(&before) + 40.0
    };
    assert!(eventually(Duration::from_secs(5), counted), "{:?}", scrape(metrics, Exposition::Text).unwrap());
    // OpenMetrics too, through its strict parser.
    let open = scrape(metrics, Exposition::OpenMetrics).unwrap();
    assert!(open.content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{}", open.content_type);
    assert!(service_flows(&open) >= service_flows(&before) + 20.0, "{open:?}");
    let counted_before_kill = service_flows(&open);
    let (config, socket) =
        (std::fs::read_to_string(first.config_path()).unwrap(), first.metrics().try_clone().unwrap());

    // A request loop runs while nodeplaned is SIGKILLed and started again.
    let looping = RequestLoop::start(client.clone(), VIP, 80);
    std::thread::sleep(Duration::from_millis(300));
    first.signal(rustix::process::Signal::KILL);
    let _ = first.wait_exit(Duration::from_secs(10));

    // With nodeplaned down, nodeplanectl still reads the pinned maps.
    let root = format!("{}/nodeplane", bpffs.path().display());
    let services = ctl(&bus, &["services", "--bpffs-root", &root]);
    assert!(services.status.success(), "{}", text(&services.stderr));
    let table = text(&services.stdout);
    assert!(
        table.lines().any(|l| l.starts_with(&format!("{VIP}:80"))
            && l.contains("tcp")
            && l.ends_with(&format!("{}:8080", b1.ip))),
        "{table}"
    );
    let endpoints = text(&ctl(&bus, &["endpoints", "--bpffs-root", &root]).stdout);
    assert!(
        endpoints.contains(&format!("{}:8080", b1.ip)) && endpoints.contains(&format!("{VIP}:80/tcp")),
        "{endpoints}"
    );
    let flows: serde_json::Value =
        serde_json::from_slice(&ctl(&bus, &["conntrack", "--json", "--bpffs-root", &root]).stdout).unwrap();
    let flows = flows.as_array().unwrap();
    assert!(flows.iter().any(|f| f["direction"] == "original" && f["destination"] == format!("{VIP}:80")), "{flows:?}");
    assert!(flows.iter().any(|f| f["direction"] == "reply" && f["rewrite"] == format!("src→{VIP}:80")), "{flows:?}");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(manifests.path().join("web.yaml"), service_manifest("web", VIP, &[b1.ip, b2.ip])).unwrap();
    // A scrape while nodeplaned is down waits in the socket's queue (systemd
    // holds the socket, as the test does here) and the next one answers it.
    let waiting = std::thread::spawn(move || scrape(metrics, Exposition::Text));
    std::thread::sleep(Duration::from_millis(300));
    let second = restart_in(&node, &bus, &config, &socket);
    let answered = waiting.join().unwrap().unwrap();
    assert!(
        answered.value("nodeplane_component_state", &[("component", "datapath"), ("state", "failed")]) == Some(0.0)
    );
    // The counters are pinned with the maps: a restart loses none.
    let kept = || service_flows(&scrape(metrics, Exposition::Text).unwrap()) >= counted_before_kill;
    assert!(eventually(Duration::from_secs(5), kept), "{:?}", scrape(metrics, Exposition::Text).unwrap());
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
    assert!(
        replies.iter().any(|r| r.as_ref().is_ok_and(|reply| reply == "b2")),
        "the restarted nodeplaned applied the new endpoints"
    );
    drop(second);
}

#[test]
fn a_node_port_from_the_manifests_is_reachable_from_outside_the_node() {
    if !privileged("a_node_port_from_the_manifests_is_reachable_from_outside_the_node") {
        return;
    }
    const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 1);
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let backend = node.add_pod(Ipv4Addr::new(10, 200, 8, 3)).unwrap();
    let outside = node.add_external(NODE_IP, Ipv4Addr::new(192, 168, 78, 2)).unwrap();
    let _server = backend.serve_tcp(8080, "via-nodeport");
    let manifests = tempfile::tempdir().unwrap();
    let manifest = node_port_manifest("web", Ipv4Addr::new(10, 96, 7, 8), 30095, &[backend.ip]);
    std::fs::write(manifests.path().join("web.yaml"), manifest).unwrap();
    let bus = bus();
    let _nodeplaned = start_in_with(&node, &bus, &bpffs, manifests.path(), &format!("node_ip = \"{NODE_IP}\""));

    assert_eq!(outside.tcp_request(NODE_IP, 30095).unwrap(), "via-nodeport");
    let root = format!("{}/nodeplane", bpffs.path().display());
    let services = text(&ctl(&bus, &["services", "--bpffs-root", &root]).stdout);
    assert!(
        services.lines().any(|l| l.starts_with(&format!("{NODE_IP}:30095")) && l.contains("NodePort")),
        "{services}"
    );
    assert!(services.contains("socket load balancing (the node's processes): off"), "{services}");

    // A policy that cannot be read might be the one isolating a pod: the
    // policies in force stay, and the node says so.
    let datapath = || {
        let status: serde_json::Value = serde_json::from_slice(&ctl(&bus, &["status", "--json"]).stdout).unwrap();
        status["components"].as_array().unwrap().iter().find(|c| c["name"] == "datapath").unwrap().clone()
    };
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\n\
                  spec: {podSelector: {}, policyTypes: [Ingress]}\n";
    std::fs::write(manifests.path().join("policy.yaml"), policy).unwrap();
    assert!(eventually(Duration::from_secs(10), || datapath()["facts"]["policies"] == 1), "{}", datapath());
    let broken = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: default}\n\
                  spec: {podSelector: {}, policyTypes: [Sideways]}\n";
    std::fs::write(manifests.path().join("policy.yaml"), broken).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let datapath = datapath();
            datapath["state"] == "degraded"
                && datapath["detail"].as_str().unwrap().contains("NetworkPolicies not updated")
                && datapath["facts"]["policies"] == 1
        }),
        "{}",
        datapath()
    );
}
