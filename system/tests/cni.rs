//! `nodeplane-cni` as a container runtime calls it: the real binary, the real
//! host-local IPAM plugin, pods in network namespaces, nodeplaned on a private bus.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use nodeplane_testkit::{Bpffs, DbusDaemon, HOST_LOCAL, NamedNetns, Node, Pod, privileged, service_manifest};

fn conf(data: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"pods","type":"nodeplane-cni","ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.210.0.0/24"}}]]}}}}"#,
        data.display()
    )
}

/// Runs the plugin in the node's network namespace, as the runtime on the node would.
fn cni(node: &Node, bus: &DbusDaemon, command: &str, container: &str, netns: &Path, conf: &str) -> Output {
    cni_with(node, bus, command, container, netns, conf, &[])
}

fn cni_with(
    node: &Node,
    bus: &DbusDaemon,
    command: &str,
    container: &str,
    netns: &Path,
    conf: &str,
    extra_env: &[(&str, &str)],
) -> Output {
    let (bus, command, container, netns, conf) =
        (bus.address().to_owned(), command.to_owned(), container.to_owned(), netns.to_owned(), conf.to_owned());
    let extra: Vec<(String, String)> = extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    node.run(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodeplane-cni"))
            .envs(extra)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")
            .env("CNI_PATH", Path::new(HOST_LOCAL).parent().unwrap())
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), conf.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
}

/// A node namespace running nodeplaned (its datapath on a private bpffs), with
/// directories for host-local's data and for manifests.
struct NodeUnderTest {
    node: Node,
    bus: DbusDaemon,
    data: tempfile::TempDir,
    manifests: tempfile::TempDir,
    _nodeplaned: nodeplane_testkit::Nodeplaned,
    _bpffs: Bpffs,
}

impl NodeUnderTest {
    fn start() -> Self {
        let bpffs = Bpffs::mount().unwrap();
        let node = Node::new().unwrap();
        let manifests = tempfile::tempdir().unwrap();
        let bus = bus();
        let nodeplaned = start_in(&node, &bus, &bpffs, manifests.path());
        NodeUnderTest {
            node,
            bus,
            data: tempfile::tempdir().unwrap(),
            manifests,
            _nodeplaned: nodeplaned,
            _bpffs: bpffs,
        }
    }
}

/// The datapath component as `nodeplanectl status --json` shows it.
fn datapath_status(bus: &DbusDaemon) -> serde_json::Value {
    let status: serde_json::Value = serde_json::from_slice(&ctl(bus, &["status", "--json"]).stdout).unwrap();
    status["components"].as_array().unwrap().iter().find(|c| c["name"] == "datapath").unwrap().clone()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn version_lists_the_spec_versions() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplane-cni")).env("CNI_COMMAND", "VERSION").output().unwrap();
    assert!(out.status.success());
    let version = json(&out);
    assert_eq!(version["cniVersion"], "1.0.0");
    assert!(version["supportedVersions"].as_array().unwrap().iter().any(|v| v == "1.0.0"));
}

#[test]
fn add_check_del_give_a_pod_its_network_and_the_datapath_serves_it() {
    if !privileged("add_check_del_give_a_pod_its_network_and_the_datapath_serves_it") {
        return;
    }
    let NodeUnderTest { node, bus, data, manifests, _nodeplaned, _bpffs } = NodeUnderTest::start();
    let conf = conf(data.path());

    let mut pods = Vec::new();
    for name in ["client", "server"] {
        let netns = NamedNetns::new(format!("{}-{name}", node.netns.name())).unwrap();
        let out = cni(&node, &bus, "ADD", name, &netns.path(), &conf);
        assert!(out.status.success(), "ADD {name}: {}", text(&out.stdout));
        let result = json(&out);
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["routes"][0]["gw"], "169.254.1.1");
        let address = result["ips"][0]["address"].as_str().unwrap();
        let ip: Ipv4Addr = address.split('/').next().unwrap().parse().unwrap();
        assert!(data.path().join("pods").join(ip.to_string()).exists(), "host-local reserved {ip}");
        let host_if = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
        assert!(host_if.starts_with("np") && host_if.len() <= 15, "{host_if}");
        let check = cni(&node, &bus, "CHECK", name, &netns.path(), &conf);
        assert!(check.status.success(), "CHECK {name}: {}", text(&check.stdout));
        pods.push(Pod { netns, ip, host_if });
    }
    let (client, server) = (&pods[0], &pods[1]);
    let datapath = datapath_status(&bus);
    assert_eq!(datapath["facts"]["registered_pods"], 2, "{datapath}");
    assert_eq!(datapath["facts"]["attached_interfaces"], 2, "attached at ADD, not at the next sync: {datapath}");
    let _serving = server.serve_tcp(8080, "served");
    assert_eq!(client.tcp_request(server.ip, 8080).unwrap(), "served", "pod to pod through the node");

    // A Service to the server: nodeplaned attaches the new pods and balances.
    let vip = Ipv4Addr::new(10, 96, 8, 8);
    let manifest = service_manifest("s", vip, &[server.ip]);
    std::fs::write(manifests.path().join("s.yaml"), manifest).unwrap();
    assert!(eventually(std::time::Duration::from_secs(10), || client
        .tcp_request(vip, 80)
        .is_ok_and(|r| r == "served")));

    // DEL frees the address and the interface, and may come twice.
    for _ in 0..2 {
        let del = cni(&node, &bus, "DEL", "server", &server.netns.path(), &conf);
        assert!(del.status.success(), "DEL: {}", text(&del.stdout));
    }
    assert!(!data.path().join("pods").join(server.ip.to_string()).exists());
    assert!(node.netns.ip(&["link", "show", &server.host_if]).is_err(), "the host interface is gone");
}

#[test]
fn add_without_nodeplaned_fails_clearly_and_leaves_nothing() {
    if !privileged("add_without_nodeplaned_fails_clearly_and_leaves_nothing") {
        return;
    }
    let node = Node::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let bus = bus(); // no nodeplaned on it
    let netns = NamedNetns::new(format!("{}-lonely", node.netns.name())).unwrap();
    let out = cni(&node, &bus, "ADD", "lonely", &netns.path(), &conf(data.path()));
    assert!(!out.status.success());
    let err = json(&out);
    assert_eq!(err["code"], 11, "try again later: {err}");
    assert!(err["msg"].as_str().unwrap().contains("nodeplaned is not running"), "{err}");
    let links = node.netns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains(" np"), "no interface left behind: {links}");
    let reservations: Vec<_> =
        std::fs::read_dir(data.path().join("pods")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(reservations.is_empty(), "no address reserved");
}

#[test]
fn a_configuration_without_a_range_takes_the_pod_cidr_from_node_toml() {
    if !privileged("a_configuration_without_a_range_takes_the_pod_cidr_from_node_toml") {
        return;
    }
    let NodeUnderTest { node, bus, data, manifests: _manifests, _nodeplaned, _bpffs } = NodeUnderTest::start();
    let node_toml = data.path().join("node.toml");
    std::fs::write(&node_toml, "[datapath]\npod_cidr = \"10.211.7.0/24\"\n").unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"pods","type":"nodeplane-cni","ipam":{{"type":"host-local","dataDir":"{}"}}}}"#,
        data.path().display()
    );
    let with_config = [("NODEPLANE_CONFIG", node_toml.to_str().unwrap())];
    let netns = NamedNetns::new(format!("{}-cidr", node.netns.name())).unwrap();
    let out = cni_with(&node, &bus, "ADD", "cidr", &netns.path(), &conf, &with_config);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let address = json(&out)["ips"][0]["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with("10.211.7."), "{address}");

    std::fs::write(&node_toml, "").unwrap();
    let other = NamedNetns::new(format!("{}-nocidr", node.netns.name())).unwrap();
    let out = cni_with(&node, &bus, "ADD", "nocidr", &other.path(), &conf, &with_config);
    assert!(!out.status.success());
    assert!(json(&out)["msg"].as_str().unwrap().contains("no pod subnet"), "{}", text(&out.stdout));
    // DEL still works without a subnet anywhere.
    let del = cni_with(&node, &bus, "DEL", "cidr", &netns.path(), &conf, &with_config);
    assert!(del.status.success(), "{}", text(&del.stdout));
    let ip = address.split('/').next().unwrap();
    assert!(!data.path().join("pods").join(ip).exists(), "DEL released {ip}");
}

#[test]
fn registrations_survive_a_restart_and_pods_gone_meanwhile_are_dropped() {
    if !privileged("registrations_survive_a_restart_and_pods_gone_meanwhile_are_dropped") {
        return;
    }
    let NodeUnderTest { node, bus, data, manifests, _nodeplaned: nodeplaned, _bpffs: bpffs } = NodeUnderTest::start();
    let conf = conf(data.path());
    let mut pods = Vec::new();
    for name in ["stays", "goes"] {
        let netns = NamedNetns::new(format!("{}-{name}", node.netns.name())).unwrap();
        let out = cni(&node, &bus, "ADD", name, &netns.path(), &conf);
        assert!(out.status.success(), "ADD {name}: {}", text(&out.stdout));
        pods.push((name, netns, json(&out)["interfaces"][0]["name"].as_str().unwrap().to_owned()));
    }
    assert_eq!(datapath_status(&bus)["facts"]["registered_pods"], 2);

    // Killed; one pod goes away (its namespace and veth) while nodeplaned is down.
    nodeplaned.signal(rustix::process::Signal::KILL);
    nodeplaned.wait_exit(std::time::Duration::from_secs(10)).unwrap();
    let (_, gone_netns, gone_if) = pods.pop().unwrap();
    drop(gone_netns);
    assert!(eventually(std::time::Duration::from_secs(5), || node.netns.ip(&["link", "show", &gone_if]).is_err()));

    let _restarted = start_in(&node, &bus, &bpffs, manifests.path());
    let datapath = datapath_status(&bus);
    assert_eq!(datapath["facts"]["registered_pods"], 1, "the live pod kept, the gone one dropped: {datapath}");
    let stored: Vec<_> = std::fs::read_dir(bpffs.state_dir().join("endpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(stored, ["stays.json"]);

    // DEL after the restart forgets the kept one.
    let del = cni(&node, &bus, "DEL", "stays", &pods[0].1.path(), &conf);
    assert!(del.status.success(), "DEL: {}", text(&del.stdout));
    assert_eq!(datapath_status(&bus)["facts"]["registered_pods"], 0);
}
