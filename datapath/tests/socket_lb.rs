//! Socket-level load balancing for the node's own processes, through the real
//! kernel: the programs attach to a cgroup v2 subtree this test makes and moves
//! itself into (its own binary, so no other test runs there), in a node network
//! namespace with pods.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodeplane_datapath::{Datapath, Service};
use nodeplane_model::Protocol;
use nodeplane_testkit::{Bpffs, Node, privileged};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `…/unified` on hybrid hosts).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split_whitespace().nth(2) == Some("cgroup2")).expect("a cgroup2 mount");
    PathBuf::from(line.split_whitespace().nth(1).unwrap())
}

/// A cgroup v2 this process is in while it lives; it moves back out and removes it on drop.
struct OwnCgroup {
    path: PathBuf,
    previous: PathBuf,
}

impl OwnCgroup {
    fn enter() -> Self {
        let root = cgroup2_root();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let relative = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 membership").to_owned();
        let previous = root.join(relative.trim_start_matches('/'));
        let path = root.join(format!("nodeplane-sock-lb-{}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        OwnCgroup { path, previous }
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.previous.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn tcp_get(addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let peer = stream.peer_addr()?;
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream, &mut reply)?;
    Ok((reply, peer))
}

fn udp_exchange(socket: &UdpSocket, addr: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    socket.send_to(b"hello", addr)?;
    let mut buffer = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buffer)?;
    Ok((String::from_utf8_lossy(&buffer[..n]).into_owned(), from))
}

#[test]
fn host_processes_reach_cluster_ips_through_socket_load_balancing() {
    if !privileged("host_processes_reach_cluster_ips_through_socket_load_balancing") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut node = Node::new().unwrap();
    let b1 = node.add_pod(Ipv4Addr::new(10, 200, 16, 3)).unwrap();
    let b2 = node.add_pod(Ipv4Addr::new(10, 200, 16, 4)).unwrap();
    // A pod's process: in the same cgroup here, but in the pod's network namespace.
    let pod = node.add_pod(Ipv4Addr::new(10, 200, 16, 5)).unwrap();
    // The node's own address (its uplink), which its sockets speak from.
    let _uplink = node.add_external(Ipv4Addr::new(192, 168, 80, 1), Ipv4Addr::new(192, 168, 80, 2)).unwrap();
    let _servers =
        [b1.serve_tcp(8080, "b1"), b2.serve_tcp(8080, "b2"), b1.serve_udp(8053, "u1"), b2.serve_udp(8053, "u2")];
    let cgroup = OwnCgroup::enter();
    let (pin, target, interfaces) =
        (bpffs.path().to_owned(), cgroup.path.clone(), [b1.host_if.clone(), b2.host_if.clone(), pod.host_if.clone()]);
    let backends = |port| vec![(b1.ip, port), (b2.ip, port)];
    let (tcp_service, udp_service) = (
        Service {
            id: 1,
            vip: VIP,
            port: 80,
            protocol: Protocol::Tcp,
            backends: backends(8080),
            affinity: None,
            node_port: false,
        },
        Service {
            id: 2,
            vip: VIP,
            port: 53,
            protocol: Protocol::Udp,
            backends: backends(8053),
            affinity: None,
            node_port: false,
        },
    );
    let mut datapath = node.run(move || {
        let mut datapath = Datapath::load(&pin).unwrap();
        for interface in &interfaces {
            datapath.attach_pod_interface(interface).unwrap();
        }
        datapath.attach_cgroup(&target).unwrap();
        datapath
    });
    datapath.services().set(&tcp_service).unwrap();
    datapath.services().set(&udp_service).unwrap();

    // TCP: the socket is connected to a backend itself; both backends serve.
    let replies: Vec<(String, SocketAddr)> =
        node.run(|| (0..40).map(|_| tcp_get(SocketAddr::from((VIP, 80))).unwrap()).collect());
    for (reply, peer) in &replies {
        let expected = if reply == "b1" { b1.ip } else { b2.ip };
        assert_eq!(peer, &SocketAddr::from((expected, 8080)), "connected straight to the backend");
    }
    assert!(replies.iter().any(|(r, _)| r == "b1") && replies.iter().any(|(r, _)| r == "b2"), "{replies:?}");

    // A pod's socket is left to the tc datapath (and its NetworkPolicy): it stays
    // connected to the VIP, whose packets are translated.
    let (reply, peer) = pod.run(|| tcp_get(SocketAddr::from((VIP, 80))).unwrap());
    assert_eq!(peer, SocketAddr::from((VIP, 80)), "a pod's socket is not balanced at connect() (reply {reply})");

    // Unconnected UDP: sendto the VIP reaches a backend, and the reply is reported from the VIP.
    let exchanges: Vec<(String, SocketAddr)> = node.run(|| {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        (0..40).map(|_| udp_exchange(&socket, SocketAddr::from((VIP, 53))).unwrap()).collect()
    });
    assert!(exchanges.iter().all(|(_, from)| *from == SocketAddr::from((VIP, 53))), "{exchanges:?}");
    assert!(exchanges.iter().any(|(r, _)| r == "u1") && exchanges.iter().any(|(r, _)| r == "u2"), "{exchanges:?}");

    // sessionAffinity: ClientIP holds for the node's processes too.
    let sticky = Service { affinity: Some(Duration::from_secs(600)), ..tcp_service.clone() };
    datapath.services().set(&sticky).unwrap();
    let replies: Vec<String> = node.run(|| (0..20).map(|_| tcp_get(SocketAddr::from((VIP, 80))).unwrap().0).collect());
    assert!(replies.iter().all(|r| r == &replies[0]), "{replies:?}");

    let refused = datapath.attach_cgroup(Path::new("/tmp")).unwrap_err().to_string();
    assert!(refused.contains("is not a cgroup v2 directory"), "{refused}");

    // Detached: the VIP is no longer translated for host sockets.
    datapath.detach_cgroup().unwrap();
    let refused = node.run(|| tcp_get(SocketAddr::from((VIP, 80))));
    assert!(refused.is_err(), "{refused:?}");
    drop(cgroup);
    assert!(!Path::new(&format!("/sys/fs/cgroup/nodeplane-sock-lb-{}", std::process::id())).exists());
}
