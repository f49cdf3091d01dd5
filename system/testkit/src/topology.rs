//! Pods on a node, wired by hand the way `nodeplane-cni` wires them, for tests
//! of the datapath without the CNI plugin: each pod a namespace joined to the
//! node by a veth pair — the node side named `<prefix>h<n>`, the pod side
//! `eth0` with a /32 address and a default route via 169.254.1.1
//! (Calico-style); neighbor entries static both ways, so no ARP is needed.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nodeplane_sandbox::{NamedNetns, SandboxError, enter_then};

/// A node namespace (forwarding, no redirects, netfilter dropping INVALID as
/// kube-proxy hosts do) with pods on veth pairs.
pub struct Node {
    node: nodeplane_sandbox::Node,
    pods: u32,
}

/// `node.netns`, `node.prefix()`: the namespace underneath.
impl std::ops::Deref for Node {
    type Target = nodeplane_sandbox::Node;

    fn deref(&self) -> &Self::Target {
        &self.node
    }
}

/// A pod on a [`Node`]. Dropped before the node, it takes its veth with it.
pub struct Pod {
    pub netns: NamedNetns,
    pub ip: Ipv4Addr,
    /// The node-side interface, where the datapath attaches.
    pub host_if: String,
}

const GATEWAY: &str = "169.254.1.1";

impl Node {
    /// A fresh node with a name unique to this process and call.
    pub fn new() -> Result<Self, SandboxError> {
        let node = nodeplane_sandbox::Node::new("np")?;
        let netns = &node.netns;
        // Hairpinned Service traffic leaves by the interface it came in on: no redirects.
        netns.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        netns.sysctl("net.ipv4.conf.default.send_redirects", "0")?;
        // As on kube-proxy and Docker hosts: netfilter conntrack drops what it
        // takes for INVALID. Every test on a node runs with these rules, so the
        // datapath's translated flows must keep out of its way.
        for chain in ["INPUT", "FORWARD", "OUTPUT"] {
            let command = format!("iptables -A {chain} -m conntrack --ctstate INVALID -j DROP");
            let status = Command::new("ip")
                .args(["netns", "exec", netns.name()])
                .args(command.split(' '))
                .status()
                .map_err(|source| SandboxError::Spawn { program: "ip", package: "iproute2", source })?;
            if !status.success() {
                return Err(SandboxError::Command { command, message: status.to_string() });
            }
        }
        Ok(Node { node, pods: 0 })
    }

    /// Runs `f` on a thread in the node's namespace; panics if it cannot get there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.netns.run(f).unwrap_or_else(|e| panic!("in the node's namespace: {e}"))
    }

    /// `pod`'s host-side interface here: its index, and the id of the pod's
    /// network namespace as this one sees it (what nodeplaned reads from
    /// netlink for `np_pod_ifaces`).
    pub fn pod_link(&self, pod: &Pod) -> Result<(u32, u32), crate::Error> {
        let interface = pod.host_if.clone();
        let out = self.run(move || Command::new("ip").args(["-j", "link", "show", &interface]).output())?;
        let link: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let field = |name: &str| link[0][name].as_u64().and_then(|v| u32::try_from(v).ok());
        match (field("ifindex"), field("link_netnsid")) {
            (Some(index), Some(netns)) => Ok((index, netns)),
            _ => Err(format!("{}: no ifindex and link_netnsid in `ip -j link`: {link}", pod.host_if).into()),
        }
    }

    pub fn add_pod(&mut self, ip: Ipv4Addr) -> Result<Pod, SandboxError> {
        let n = self.pods;
        self.pods += 1;
        let pod = self.node.pod_netns(n)?;
        let host_if = format!("{}h{n}", self.node.prefix());
        let netns = &self.node.netns;
        netns.ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", pod.name()])?;
        netns.ip(&["link", "set", &host_if, "up"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        pod.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"])?;
        pod.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
        netns.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_if])?;
        let host_mac = mac(netns, &host_if)?;
        let pod_mac = mac(&pod, "eth0")?;
        pod.ip(&["neigh", "add", GATEWAY, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"])?;
        netns.ip(&["neigh", "add", &ip.to_string(), "lladdr", &pod_mac, "dev", &host_if, "nud", "permanent"])?;
        Ok(Pod { netns: pod, ip, host_if })
    }

    /// A client outside the node: a namespace on a link of its own to the node,
    /// whose end (the returned `host_if`) holds `node_ip`, where NodePorts are;
    /// both ends in one /24.
    pub fn add_external(&mut self, node_ip: Ipv4Addr, client_ip: Ipv4Addr) -> Result<Pod, SandboxError> {
        let n = self.pods;
        self.pods += 1;
        let client = NamedNetns::new(format!("{}-ext{n}", self.node.prefix()))?;
        let node_if = format!("{}x{n}", self.node.prefix());
        let netns = &self.node.netns;
        netns.ip(&["link", "add", &node_if, "type", "veth", "peer", "name", "eth0", "netns", client.name()])?;
        netns.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", &node_if])?;
        netns.ip(&["link", "set", &node_if, "up"])?;
        client.ip(&["addr", "add", &format!("{client_ip}/24"), "dev", "eth0"])?;
        client.ip(&["link", "set", "eth0", "up"])?;
        Ok(Pod { netns: client, ip: client_ip, host_if: node_if })
    }
}

fn mac(netns: &NamedNetns, interface: &str) -> Result<String, SandboxError> {
    let out = netns.ip(&["-o", "link", "show", interface])?;
    out.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).map(str::to_owned).ok_or_else(|| {
        SandboxError::Command { command: format!("ip -o link show {interface}"), message: format!("no MAC in {out}") }
    })
}

/// A server in a pod that answers every TCP connection or UDP datagram on a port
/// with a fixed reply, until dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pod {
    /// Runs `f` on a thread in the pod's namespace; panics if it cannot get there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.netns.run(f).unwrap_or_else(|e| panic!("in the pod's namespace: {e}"))
    }

    /// Serves TCP on `port`: each connection gets `reply`, then is closed.
    pub fn serve_tcp(&self, port: u16, reply: &str) -> Server {
        let reply = reply.as_bytes().to_vec();
        self.serve_tcp_with(port, move |mut stream| {
            let _ = stream.write_all(&reply);
        })
    }

    /// Serves TCP on `port`: each connection gets the address and port it came
    /// from (`ip:port`), as this pod sees them.
    pub fn serve_tcp_peer(&self, port: u16) -> Server {
        self.serve_tcp_with(port, |mut stream| {
            if let Ok(peer) = stream.peer_addr() {
                let _ = stream.write_all(peer.to_string().as_bytes());
            }
        })
    }

    /// Serves TCP on `port`: each connection gets `tag` and then an echo of every
    /// line it sends, for as long as it stays open.
    pub fn serve_tcp_echo(&self, port: u16, tag: &str) -> Server {
        let tag = tag.as_bytes().to_vec();
        self.serve_tcp_with(port, move |mut stream| {
            let tag = tag.clone();
            std::thread::spawn(move || {
                let _ = stream.write_all(&tag);
                let _ = stream.write_all(b"\n");
                let mut reader = io::BufReader::new(stream.try_clone().expect("clone the stream"));
                let mut line = String::new();
                while io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                    if stream.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        })
    }

    /// Serves TCP on `port`: each connection gets an endless stream of bytes,
    /// until the client closes it.
    pub fn serve_tcp_bulk(&self, port: u16) -> Server {
        self.serve_tcp_with(port, |mut stream| {
            std::thread::spawn(move || {
                let chunk = vec![0u8; 64 * 1024];
                while stream.write_all(&chunk).is_ok() {}
            });
        })
    }

    /// Accepts TCP connections on `port` and hands each (blocking) to `handle`.
    fn serve_tcp_with(&self, port: u16, mut handle: impl FnMut(std::net::TcpStream) + Send + 'static) -> Server {
        self.serve(move |stop| {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind a TCP port in the pod");
            listener.set_nonblocking(true).unwrap();
            while !stop.load(Ordering::Relaxed) {
                // Wait for a connection (or, every 50 ms, look at `stop`).
                let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
                let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
                if rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) == 0 {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        handle(stream);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("accept: {e}"),
                }
            }
        })
    }

    /// Serves UDP on `port`: each datagram is answered with `reply`.
    pub fn serve_udp(&self, port: u16, reply: &str) -> Server {
        let reply = reply.as_bytes().to_vec();
        self.serve(move |stop| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind a UDP port in the pod");
            socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        })
    }

    fn serve(&self, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let enter = enter_then(self.netns.path(), move || {
            ready_tx.send(()).unwrap();
            body(flag)
        });
        let thread = std::thread::spawn(move || enter().unwrap_or_else(|e| panic!("a server in a pod: {e}")));
        ready_rx.recv().expect("the server thread started");
        // The socket is bound right after; give it a moment.
        std::thread::sleep(Duration::from_millis(20));
        Server { stop, thread: Some(thread) }
    }

    /// Connects over TCP from this pod and returns what the server said.
    pub fn tcp_request(&self, addr: Ipv4Addr, port: u16) -> io::Result<String> {
        self.run(move || tcp_request(addr, port))
    }

    /// Like [`tcp_request`](Self::tcp_request), from a fixed local port.
    pub fn tcp_request_from(&self, local_port: u16, addr: Ipv4Addr, port: u16) -> io::Result<String> {
        self.run(move || tcp_request_from(local_port, addr, port))
    }

    /// Sends one UDP datagram from this pod; returns the reply and who sent it.
    pub fn udp_request(&self, addr: Ipv4Addr, port: u16) -> io::Result<(String, std::net::SocketAddr)> {
        self.run(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.send_to(b"ping", (addr, port))?;
            let mut buf = [0u8; 1500];
            let (len, from) = socket.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..len]).into_owned(), from))
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects from `local_port` to `addr:port` in this network namespace and
/// reads the reply to its end (reusable at once: the server closes first, so the
/// TIME_WAIT is on its side).
pub fn tcp_request_from(local_port: u16, addr: Ipv4Addr, port: u16) -> io::Result<String> {
    use rustix::net::{AddressFamily, SocketType, ipproto};
    // The previous connection on this 4-tuple may still be closing (LAST_ACK)
    // for a moment on a busy machine: wait for it rather than fail.
    let mut attempts = 0;
    let socket = loop {
        let socket = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, Some(ipproto::TCP))?;
        rustix::net::sockopt::set_socket_reuseaddr(&socket, true)?;
        rustix::net::bind(&socket, &std::net::SocketAddr::from((Ipv4Addr::UNSPECIFIED, local_port)))?;
        match rustix::net::connect(&socket, &std::net::SocketAddr::from((addr, port))) {
            Err(rustix::io::Errno::ADDRNOTAVAIL) if attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            result => break result.map(|()| socket)?,
        }
    };
    let mut stream = std::net::TcpStream::from(socket);
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Connects to `addr:port` from this network namespace and reads the reply to
/// its end (2 s timeouts).
pub fn tcp_request(addr: Ipv4Addr, port: u16) -> io::Result<String> {
    let mut stream = std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// When a request started, and the reply (or the error).
pub type Request = (std::time::Instant, io::Result<String>);

/// TCP requests from a pod to `addr:port`, one after another on a thread, until
/// [`finish`](RequestLoop::finish) (or drop). Each is recorded with its start time.
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Request>>>,
}

impl RequestLoop {
    pub fn start(pod: Arc<Pod>, addr: Ipv4Addr, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut replies = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                replies.push((started, pod.tcp_request(addr, port)));
            }
            replies
        });
        RequestLoop { stop, thread: Some(thread) }
    }

    /// Stops the loop; every request's start time and reply (or error).
    pub fn finish(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("not finished yet").join().expect("the request loop does not panic")
    }
}

impl Drop for RequestLoop {
    /// A failed assertion still stops the loop (and so frees the pod).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
