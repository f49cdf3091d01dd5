//! The datapath against hostile pods, through the real kernel: pods attached by
//! the real `nodeplane-cni`, a real `nodeplaned`, packets crafted inside the
//! pods (raw and packet sockets, IP options, fragments, spoofed sources,
//! floods). Each test names the hole it closes; each fails without its fix.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodeplane_probe::Stage;
use nodeplane_testkit::{in_netns_at, privileged};
use serde_json::{Value, json};

mod common;
use common::*;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 8);

/// Runs `f` in `pod`'s network namespace.
fn in_pod<T: Send + 'static>(stage: &Stage, pod: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_netns_at(stage.pod_netns(index(stage, pod)), f).unwrap()
}

/// A policy on x's pod `pod` that isolates it for `types` with no rules.
fn isolate(pod: &str, types: &[&str]) -> String {
    documents(&[netpol(
        "x",
        &format!("isolate-{pod}"),
        json!({"podSelector": {"matchLabels": {"pod": pod}}, "policyTypes": types}),
    )])
}

/// The datapath component's facts, from `nodeplanectl status --json`.
fn facts(stage: &Stage) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
        .args(["status", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", stage.bus_address())
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let datapath = status["components"].as_array().unwrap().iter().find(|c| c["name"] == "datapath").unwrap();
    datapath["facts"].clone()
}

/// A datapath counter, as of now (a sync publishes the facts).
fn counter(stage: &Stage, name: &str) -> u64 {
    let _ = stage.sync();
    facts(stage)[format!("count_{name}")].as_u64().unwrap_or_else(|| panic!("no counter {name}"))
}

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (with `options`, a multiple of 4 bytes) for `payload_len` bytes.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize, options: &[u8]) -> Vec<u8> {
    let header_len = 20 + options.len();
    let total = (header_len + payload_len) as u16;
    let mut header = vec![0x40 | (header_len / 4) as u8, 0];
    header.extend(total.to_be_bytes());
    header.extend([0x12, 0x34, 0x40, 0x00, 64, protocol, 0, 0]);
    header.extend(src.octets());
    header.extend(dst.octets());
    header.extend(options);
    let sum = checksum(&header);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    header
}

/// A UDP header and payload (checksum 0: none).
fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = sport.to_be_bytes().to_vec();
    datagram.extend(dport.to_be_bytes());
    datagram.extend(((8 + payload.len()) as u16).to_be_bytes());
    datagram.extend([0, 0]);
    datagram.extend(payload);
    datagram
}

/// Sends `packet` (an IP header and what follows, as given) from `pod` with a
/// raw IP_HDRINCL socket.
fn send_raw_ip(stage: &Stage, pod: &str, packet: Vec<u8>) {
    in_pod(stage, pod, move || {
        use rustix::net::{AddressFamily, SocketType};
        let socket =
            rustix::net::socket(AddressFamily::INET, SocketType::RAW, Some(rustix::net::ipproto::RAW)).unwrap();
        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
        rustix::net::sendto(&socket, &packet, rustix::net::SendFlags::empty(), &SocketAddrV4::new(dst, 0)).unwrap();
    })
}

/// Sends an Ethernet frame (with `ethertype` and `payload`) out of `pod`'s eth0
/// to the node, through a packet socket. A frame of a page or more leaves with
/// only its Ethernet header in the skb's linear data, the rest in pages.
fn send_frame(stage: &Stage, pod: &str, ethertype: u16, payload: Vec<u8>) {
    let netns = stage.pod_netns(index(stage, pod));
    let name = netns.file_name().unwrap().to_string_lossy().into_owned();
    let field = |args: &[&str], after: &str| {
        let out = Command::new("ip").args(["-n", &name]).args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mac = text.split_whitespace().skip_while(|w| *w != after).nth(1).unwrap().to_owned();
        mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect::<Vec<u8>>()
    };
    let own = field(&["-o", "link", "show", "eth0"], "link/ether");
    let gateway = field(&["neigh", "show", "169.254.1.1"], "lladdr");
    let mut frame = gateway;
    frame.extend(&own);
    frame.extend(ethertype.to_be_bytes());
    frame.extend(payload);
    in_netns_at(netns, move || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_ALL as u16).to_be()));
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let socket = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
            let sent = libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(sent, frame.len() as isize, "{}", std::io::Error::last_os_error());
        }
    })
    .unwrap();
}

/// A UDP socket bound in `pod` (port 0: any), reading with a short timeout.
fn udp_socket(stage: &Stage, pod: &str, port: u16) -> UdpSocket {
    in_pod(stage, pod, move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        socket
    })
}

/// Whether a datagram arrives on `socket` within its timeout; its text.
fn received(socket: &UdpSocket) -> Option<String> {
    let mut buffer = vec![0u8; 65536];
    socket.recv(&mut buffer).ok().map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// Serves UDP on `port` in `pod`: each datagram is answered with its length.
fn serve_udp_length(stage: &Stage, pod: &str, port: u16) {
    let socket = in_pod(stage, pod, move || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap());
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(n.to_string().as_bytes(), from);
        }
    });
}

/// A TCP connection from `pod` to `addr`:`port` with IP options on its
/// packets (so their header is longer than 20 bytes); what the server says.
fn request_with_ip_options(stage: &Stage, pod: &str, addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    in_pod(stage, pod, move || {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
        // Three no-operations and an end of list: a 24-byte header.
        let options = [1u8, 1, 1, 0];
        // SAFETY: a live socket and a 4-byte option buffer.
        let set = unsafe {
            libc::setsockopt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, options.as_ptr().cast(), 4)
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let timeout = Some(Duration::from_secs(1));
        sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, timeout)?;
        sockopt::set_socket_timeout(&socket, sockopt::Timeout::Recv, timeout)?;
        rustix::net::connect(&socket, &SocketAddr::from((addr, port)))?;
        let mut stream = std::net::TcpStream::from(socket);
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
}

#[test]
fn ip_options_change_nothing_policy_nat_and_checksums_included() {
    if !privileged("ip_options_change_nothing_policy_nat_and_checksums_included") {
        return;
    }
    let stage = stage();
    stage.set_manifest("service.yaml", Some(&service(&stage, "web", VIP, 8080, 80, "TCP", &["x/a"]))).unwrap();
    let a = ip(&stage, "x/a");
    assert_eq!(request_with_ip_options(&stage, "x/b", a, 80).unwrap(), "x/a", "no policy: options connect");
    assert_eq!(request_with_ip_options(&stage, "x/b", VIP, 8080).unwrap(), "x/a", "and through a VIP (NAT)");
    stage.set_manifest("policy.yaml", Some(&isolate("a", &["Ingress"]))).unwrap();
    assert!(request_with_ip_options(&stage, "x/b", a, 80).is_err(), "deny-all: a 24-byte header connected");
    assert!(request_with_ip_options(&stage, "x/b", VIP, 8080).is_err(), "deny-all through the VIP");
}

#[test]
fn a_datagram_in_fragments_arrives_whole_when_allowed_and_not_at_all_when_denied() {
    if !privileged("a_datagram_in_fragments_arrives_whole_when_allowed_and_not_at_all_when_denied") {
        return;
    }
    let stage = stage();
    serve_udp_length(&stage, "x/a", 9000);
    stage.set_manifest("service.yaml", Some(&service(&stage, "frag", VIP, 9000, 9000, "UDP", &["x/a"]))).unwrap();
    let client = udp_socket(&stage, "x/b", 0);
    let big = vec![b'f'; 4000];
    let a = ip(&stage, "x/a");
    for (to, what) in [(a, "directly"), (VIP, "through the VIP")] {
        client.send_to(&big, (to, 9000)).unwrap();
        assert_eq!(received(&client).as_deref(), Some("4000"), "4,000 bytes in fragments, {what}");
    }
    stage.set_manifest("policy.yaml", Some(&isolate("a", &["Ingress"]))).unwrap();
    let dropped = counter(&stage, "policy_ingress_fragment");
    // A new client (an open flow would go on: policies judge new ones).
    let client = udp_socket(&stage, "x/b", 0);
    for (to, what) in [(a, "directly"), (VIP, "through the VIP")] {
        client.send_to(&big, (to, 9000)).unwrap();
        assert_eq!(received(&client), None, "deny-all: the datagram arrived {what}");
    }
    // Each datagram is three fragments. Sent directly, the first is denied and
    // the later two are dropped as fragments of no datagram let through; to the
    // VIP, the later two are never translated, so never reach the pod.
    assert!(counter(&stage, "policy_ingress_fragment") >= dropped + 2, "{}", facts(&stage));
}

/// Raises the MTU of `pod`'s eth0 and of its peer on the node to 9000, so
/// frames larger than a page pass.
fn jumbo(stage: &Stage, pod: &str) {
    let pod_ns = stage.pod_netns(index(stage, pod));
    let node_ns = stage.node_netns();
    let name = |ns: &std::path::Path| ns.file_name().unwrap().to_string_lossy().into_owned();
    let (pod_ns, node_ns) = (name(&pod_ns), name(&node_ns));
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // "2: eth0@if7: ...": the peer is interface 7 of the node.
    let link = ip(&["-n", &pod_ns, "-o", "link", "show", "eth0"]);
    let peer_index = link.split_once("@if").unwrap().1.split(':').next().unwrap().to_owned();
    let node_links = ip(&["-n", &node_ns, "-o", "link", "show"]);
    let peer = node_links
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{peer_index}: ")))
        .and_then(|rest| rest.split(['@', ':']).next())
        .unwrap()
        .to_owned();
    ip(&["-n", &node_ns, "link", "set", "dev", &peer, "mtu", "9000"]);
    ip(&["-n", &pod_ns, "link", "set", "dev", "eth0", "mtu", "9000"]);
}

#[test]
fn headers_beyond_the_linear_data_are_pulled_in() {
    if !privileged("headers_beyond_the_linear_data_are_pulled_in") {
        return;
    }
    let stage = stage();
    stage.set_manifest("policy.yaml", Some(&isolate("a", &["Ingress"]))).unwrap();
    let (a, b) = (ip(&stage, "x/a"), ip(&stage, "x/b"));
    let before = counter(&stage, "policy_denied_ingress_peer");
    jumbo(&stage, "x/b");
    // A TCP segment of 6,000 bytes: its IP and TCP headers beyond the linear data.
    let mut tcp = 40123u16.to_be_bytes().to_vec();
    tcp.extend(80u16.to_be_bytes());
    tcp.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let payload = vec![b'p'; 6000];
    let mut packet = ipv4(b, a, 6, tcp.len() + payload.len(), &[]);
    packet.extend(tcp);
    packet.extend(payload);
    send_frame(&stage, "x/b", 0x0800, packet);
    std::thread::sleep(Duration::from_millis(300));
    // Judged (and denied) as x/b's segment to x/a, not let by unparsed.
    assert!(counter(&stage, "policy_denied_ingress_peer") > before, "{}", facts(&stage));
}

#[test]
fn what_policy_cannot_judge_is_dropped_for_isolated_pods() {
    if !privileged("what_policy_cannot_judge_is_dropped_for_isolated_pods") {
        return;
    }
    let stage = stage();
    let (a, b) = (ip(&stage, "x/a"), ip(&stage, "x/b"));
    // GRE (IP protocol 47): no policy speaks it.
    let gre = [0u8, 0, 0x08, 0x00, b'g', b'r', b'e', b'!'];
    let arrived = |packet: &[u8]| packet.len() >= 28 && packet[24..28] == *b"gre!";
    assert!(
        raw_seen(&stage, ("x/b", "x/a", "x/a"), rustix::net::Protocol::from_raw(47.try_into().unwrap()), &gre, arrived),
        "no policy: GRE arrives"
    );
    stage.set_manifest("policy.yaml", Some(&isolate("a", &["Ingress"]))).unwrap();
    assert!(
        !raw_seen(
            &stage,
            ("x/b", "x/a", "x/a"),
            rustix::net::Protocol::from_raw(47.try_into().unwrap()),
            &gre,
            arrived
        ),
        "isolated: GRE dropped"
    );
    assert!(counter(&stage, "policy_ingress_protocol") > 0);

    // IPv4 with a header length of 4 words: malformed.
    let mut malformed = ipv4(b, a, 17, 8, &[]);
    malformed[0] = 0x44;
    malformed.extend(udp(4000, 80, b""));
    let before = counter(&stage, "policy_ingress_malformed");
    send_frame(&stage, "x/b", 0x0800, malformed);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counter(&stage, "policy_ingress_malformed"), before + 1);

    // IPv6 from a pod isolated for egress.
    let mut ipv6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
    ipv6.extend([0xfe, 0x80].iter().chain(&[0u8; 13]).chain(&[1u8]));
    ipv6.extend([0xfe, 0x80].iter().chain(&[0u8; 13]).chain(&[2u8]));
    ipv6.extend(udp(4000, 80, b""));
    let before = counter(&stage, "policy_egress_ipv6");
    send_frame(&stage, "x/b", 0x86dd, ipv6.clone());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counter(&stage, "policy_egress_ipv6"), before, "x/b is open for egress: let by");
    stage
        .set_manifest(
            "policy.yaml",
            Some(&documents(&[netpol(
                "x",
                "b-out",
                json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"]}),
            )])),
        )
        .unwrap();
    send_frame(&stage, "x/b", 0x86dd, ipv6);
    std::thread::sleep(Duration::from_millis(200));
    // At least ours: the pod's kernel may send IPv6 of its own (MLD, router
    // solicitations) meanwhile, dropped and counted alike.
    let after = counter(&stage, "policy_egress_ipv6");
    assert!(after > before, "x/b is isolated for egress: dropped ({before} → {after})");
}

#[test]
fn a_pod_sends_from_its_own_address_only() {
    if !privileged("a_pod_sends_from_its_own_address_only") {
        return;
    }
    let stage = stage();
    // x/a admits x/c alone; x/b pretends to be x/c.
    let policy = documents(&[netpol(
        "x",
        "from-c",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}),
    )]);
    stage.set_manifest("policy.yaml", Some(&policy)).unwrap();
    let (a, c) = (ip(&stage, "x/a"), ip(&stage, "x/c"));
    let watcher = in_pod(&stage, "x/a", || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9100)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        socket
    });
    let spoofed = |payload: &[u8]| {
        let mut packet = ipv4(c, a, 17, 8 + payload.len(), &[]);
        packet.extend(udp(5353, 9100, payload));
        packet
    };
    let before = counter(&stage, "spoofed");
    let drops = [("reason", "spoofed")];
    let scraped = metric(&stage, "nodeplane_datapath_drops_total", &drops);
    send_raw_ip(&stage, "x/b", spoofed(b"from x/b as x/c"));
    assert_eq!(received(&watcher), None, "x/b got a datagram to x/a as x/c");
    assert!(counter(&stage, "spoofed") > before);
    assert!(metric(&stage, "nodeplane_datapath_drops_total", &drops) > scraped, "the metrics count it too");
    // Nor did it open x/c's flow: x/c's own datagram on that tuple is a new flow, let through.
    let conntrack = Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
        .args(["conntrack", "--json", "--bpffs-root"])
        .arg(stage.bpffs_root())
        .output()
        .unwrap();
    let flows: Value = serde_json::from_slice(&conntrack.stdout).unwrap();
    let tuple = format!("{c}:5353");
    assert!(!flows.as_array().unwrap().iter().any(|f| f["source"] == tuple.as_str()), "{flows}");
    send_raw_ip(&stage, "x/c", spoofed(b"from x/c itself"));
    assert_eq!(received(&watcher).as_deref(), Some("from x/c itself"));
}

#[test]
fn a_pod_opening_flows_by_the_hundred_thousand_evicts_no_one_elses() {
    if !privileged("a_pod_opening_flows_by_the_hundred_thousand_evicts_no_one_elses") {
        return;
    }
    let stage = stage();
    // x/a holds a connection to x/c through a VIP (lost with its conntrack entries).
    let server = in_pod(&stage, "x/c", || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 9200)).unwrap());
    std::thread::spawn(move || {
        for mut stream in server.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 64];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    stage.set_manifest("service.yaml", Some(&service(&stage, "hold", VIP, 9200, 9200, "TCP", &["x/c"]))).unwrap();
    let mut held = in_pod(&stage, "x/a", || std::net::TcpStream::connect((VIP, 9200)).unwrap());
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = |stream: &mut std::net::TcpStream| {
        stream.write_all(b"ping").unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).map(|()| reply)
    };
    assert_eq!(&echo(&mut held).unwrap(), b"ping");
    // x/b opens 140,000 flows (more than the map holds) to an address that
    // goes nowhere: 3 source ports × 46,667 destination ports.
    in_pod(&stage, "x/b", || {
        for source in 0..3u16 {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 30000 + source)).unwrap();
            for port in 1..=46_667u16 {
                let _ = socket.send_to(b"x", (Ipv4Addr::new(192, 0, 2, 1), port));
            }
        }
    });
    assert!(counter(&stage, "ct_pod_limit") > 0, "{}", facts(&stage));
    assert_eq!(&echo(&mut held).expect("x/a's connection survived"), b"ping");
}

#[test]
fn a_clashing_reply_tuple_gets_another_source_port_not_a_black_hole() {
    if !privileged("a_clashing_reply_tuple_gets_another_source_port_not_a_black_hole") {
        return;
    }
    let stage = stage();
    let server = in_pod(&stage, "x/a", || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 9300)).unwrap());
    std::thread::spawn(move || {
        for mut stream in server.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.write_all(b"hello");
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            });
        }
    });
    // Two Services, one backend: the same client port to both is one reply tuple.
    let services = format!(
        "{}\n---\n{}",
        service(&stage, "one", VIP, 9300, 9300, "TCP", &["x/a"]),
        service(&stage, "two", VIP2, 9300, 9300, "TCP", &["x/a"])
    );
    stage.set_manifest("service.yaml", Some(&services)).unwrap();
    let (first, second) = in_pod(&stage, "x/b", || {
        let connect = |vip: Ipv4Addr| -> std::io::Result<String> {
            use rustix::net::{AddressFamily, SocketType, sockopt};
            let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
            sockopt::set_socket_reuseaddr(&socket, true)?;
            sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, Some(Duration::from_secs(2)))?;
            sockopt::set_socket_timeout(&socket, sockopt::Timeout::Recv, Some(Duration::from_secs(2)))?;
            rustix::net::bind(&socket, &SocketAddr::from((Ipv4Addr::UNSPECIFIED, 43210)))?;
            rustix::net::connect(&socket, &SocketAddr::from((vip, 9300)))?;
            let mut stream = std::net::TcpStream::from(socket);
            let mut hello = [0u8; 5];
            stream.read_exact(&mut hello)?;
            // Held open: the first flow is live when the second opens.
            std::mem::forget(stream);
            Ok(String::from_utf8_lossy(&hello).into_owned())
        };
        (connect(VIP), connect(VIP2))
    });
    assert_eq!(first.unwrap(), "hello");
    assert_eq!(second.expect("the second Service through the same client port"), "hello");
    assert!(counter(&stage, "ct_clash") > 0);
}

#[test]
fn a_service_flow_on_the_tuple_of_a_direct_one_in_time_wait_at_the_backend_gets_another_source_port() {
    if !privileged("a_service_flow_on_the_tuple_of_a_direct_one_in_time_wait_at_the_backend_gets_another_source_port") {
        return;
    }
    let stage = stage();
    // Says who connected, and closes first: the backend keeps each tuple in TIME_WAIT.
    let server = in_pod(&stage, "x/a", || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 9301)).unwrap());
    std::thread::spawn(move || {
        for mut stream in server.incoming().flatten() {
            let peer = stream.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            let _ = stream.write_all(peer.as_bytes());
        }
    });
    stage.set_manifest("service.yaml", Some(&service(&stage, "peer", VIP, 9301, 9301, "TCP", &["x/a"]))).unwrap();
    let (a, b) = (ip(&stage, "x/a"), ip(&stage, "x/b"));
    let (direct, via) = in_pod(&stage, "x/b", move || {
        let request = |addr| nodeplane_testkit::tcp_request_from(43300, addr, 9301);
        (request(a), request(VIP))
    });
    assert_eq!(direct.expect("straight to x/a"), format!("{b}:43300"));
    // nodeplaned told the datapath x/a's network namespace: it sees the
    // TIME_WAIT socket there, and the flow through the VIP takes another port.
    let via = via.expect("through the VIP from the same port");
    assert!(via.starts_with(&format!("{b}:")) && via != format!("{b}:43300"), "x/a saw {via}");
}

#[test]
fn an_icmp_error_about_a_translated_flow_is_translated_back() {
    if !privileged("an_icmp_error_about_a_translated_flow_is_translated_back") {
        return;
    }
    let stage = stage();
    // Port 9400 of x/a has no socket: x/a answers with "port unreachable".
    stage.set_manifest("service.yaml", Some(&service(&stage, "gone", VIP, 9400, 9400, "UDP", &["x/a"]))).unwrap();
    let refused = in_pod(&stage, "x/b", || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        socket.connect((VIP, 9400)).unwrap();
        socket.send(b"anyone?").unwrap();
        socket.recv(&mut [0u8; 16]).unwrap_err().kind()
    });
    assert_eq!(refused, std::io::ErrorKind::ConnectionRefused, "as it would be from x/a's own address");
    assert!(counter(&stage, "icmp_translated") > 0);

    // An error about no flow at all, to an isolated pod: dropped.
    stage.set_manifest("policy.yaml", Some(&isolate("a", &["Ingress"]))).unwrap();
    let (a, b) = (ip(&stage, "x/a"), ip(&stage, "x/b"));
    let mut inner = ipv4(a, Ipv4Addr::new(192, 0, 2, 9), 17, 8, &[]);
    inner.extend(udp(80, 4444, b""));
    let mut error = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
    error.extend(inner);
    let sum = checksum(&error);
    error[2..4].copy_from_slice(&sum.to_be_bytes());
    let before = counter(&stage, "policy_ingress_stray_icmp");
    let mut packet = ipv4(b, a, 1, error.len(), &[]);
    packet.extend(error);
    send_raw_ip(&stage, "x/b", packet);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counter(&stage, "policy_ingress_stray_icmp"), before + 1);
}

#[test]
fn a_registration_that_cannot_be_protected_fails() {
    if !privileged("a_registration_that_cannot_be_protected_fails") {
        return;
    }
    let stage = stage();
    let register = |ips: &str| {
        Command::new("busctl")
            .args(["--address", stage.bus_address(), "call", "org.nodeplane.Node1", "/org/nodeplane/Node1/datapath"])
            .args(["org.nodeplane.Datapath1", "RegisterEndpoint", "sssasss", "c0ffee", "/proc/self/ns/net", "lo"])
            .args(["1", ips, "x", "bogus"])
            .output()
            .unwrap()
    };
    let out = register("10.244.9.300");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid pod address"), "{out:?}");

    // Policies that cannot be put in force: np_endpoints full. The CNI ADD fails.
    let endpoints = stage.bpffs_root().join("np_endpoints");
    let mut batch = String::new();
    for n in 0..65_536u32 {
        let key: Vec<String> = [10, 250, (n >> 8) as u8, n as u8].iter().map(u8::to_string).collect();
        batch += &format!("map update pinned {} key {} value 0 0 0 0\n", endpoints.display(), key.join(" "));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    let filled = Command::new("bpftool").args(["batch", "file"]).arg(file.path()).output().unwrap();
    // The last updates fail once the map is full: what matters is that it is.
    let _ = filled;
    let netns = nodeplane_testkit::NamedNetns::new(format!("nphard{}", std::process::id())).unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "probe", "type": "nodeplane-cni",
        "ipam": {"type": "host-local", "dataDir": tempfile::tempdir().unwrap().path(), "ranges": [[{"subnet": "10.244.7.0/24"}]]},
    });
    let add = in_netns_at(stage.node_netns(), {
        let (netns, bus) = (netns.path(), stage.bus_address().to_owned());
        move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_nodeplane-cni"))
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", "hardening1")
                .env("CNI_NETNS", &netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=late")
                .env("CNI_PATH", Path::new(nodeplane_testkit::HOST_LOCAL).parent().unwrap())
                .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        }
    })
    .unwrap();
    let stdout = String::from_utf8_lossy(&add.stdout);
    assert!(!add.status.success(), "ADD succeeded for a pod whose policies are not in force: {stdout}");
    assert!(stdout.contains("NetworkPolicies could not be put in force"), "{stdout}");
    // Nothing left behind: no interface in the pod.
    let links = netns.ip(&["-o", "link"]).unwrap();
    assert!(!links.contains("eth0"), "{links}");
}

#[test]
fn drops_are_reported_at_most_twenty_a_second_per_pod() {
    if !privileged("drops_are_reported_at_most_twenty_a_second_per_pod") {
        return;
    }
    let stage = stage();
    stage.set_manifest("policy.yaml", Some(&isolate("a", &["Ingress"]))).unwrap();
    let mut monitor = Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
        .args(["monitor", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", stage.bus_address())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let a = ip(&stage, "x/a");
    let started = Instant::now();
    in_pod(&stage, "x/b", move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for port in 0..500u16 {
            let _ = socket.send_to(b"x", (a, 10000 + port));
        }
    });
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let out = monitor.wait_with_output().unwrap();
    let drops: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let seconds = elapsed.as_secs() + 2;
    assert!(!drops.is_empty());
    assert!(drops.len() as u64 <= 20 * seconds, "{} drops reported in {elapsed:?}", drops.len());
    assert!(counter(&stage, "policy_denied_ingress_peer") >= 500, "every drop is counted");
}

#[test]
fn ipv4_forwarding_is_kept_on_for_the_datapath() {
    if !privileged("ipv4_forwarding_is_kept_on_for_the_datapath") {
        return;
    }
    let stage = stage();
    stage.set_manifest("service.yaml", Some(&service(&stage, "web", VIP, 8080, 80, "TCP", &["x/a"]))).unwrap();
    let node = stage.node_netns();
    let forwarding = |value: Option<&str>| {
        let value = value.map(str::to_owned);
        in_netns_at(&node, move || match value {
            Some(v) => std::fs::write("/proc/sys/net/ipv4/ip_forward", v).map(|()| String::new()),
            None => std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"),
        })
        .unwrap()
        .unwrap()
    };
    forwarding(Some("0"));
    assert!(eventually(Duration::from_secs(5), || forwarding(None).trim() == "1"), "forwarding stays off");
    let reply = in_pod(&stage, "x/b", || nodeplane_testkit::tcp_request(VIP, 8080));
    assert_eq!(reply.unwrap(), "x/a");
}
