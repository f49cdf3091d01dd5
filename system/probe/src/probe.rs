//! Probing a [`Stage`]: every chosen (client pod, destination, port, protocol)
//! is one new connection — a TCP connect that must be answered with the
//! server's name, or a UDP datagram (from a source port no earlier probe used)
//! that must be answered — all at once, each within the timeout.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use nodeplane_model::Protocol;
use nodeplane_sandbox::in_netns_at;

use crate::{ProbeError, Stage};

/// What to probe: pod to pod on the destination's declared ports, optionally
/// pod to Service ports too, restricted to some ports or protocols.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub services: bool,
    pub ports: Option<Vec<u16>>,
    pub protocols: Option<Vec<Protocol>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A pod of the stage, by index.
    Pod(usize),
    /// A Service port (its ClusterIP).
    Service { id: String, vip: Ipv4Addr },
}

/// One connection to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The client pod, by index.
    pub from: usize,
    pub to: Destination,
    pub port: u16,
    pub protocol: Protocol,
}

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `namespace/pod`.
    pub from: String,
    /// `namespace/pod` or `namespace/service`.
    pub to: String,
    pub port: u16,
    pub protocol: Protocol,
    pub connected: bool,
}

/// UDP source ports the probes take in turn (each probe a new flow).
const SOURCE_PORTS: std::ops::Range<u32> = 20000..60000;
/// Probes in flight at once.
const PARALLEL: usize = 512;

impl Stage {
    /// Every probe `selection` asks for, pods in manifest order. SCTP ports are
    /// skipped: the probe does not speak SCTP.
    pub fn targets(&self, selection: &Selection) -> Vec<Target> {
        let wanted = |port: u16, protocol: Protocol| {
            protocol != Protocol::Sctp
                && selection.ports.as_ref().is_none_or(|p| p.contains(&port))
                && selection.protocols.as_ref().is_none_or(|p| p.contains(&protocol))
        };
        let mut targets = Vec::new();
        for from in 0..self.pods.len() {
            for (to, pod) in self.pods.iter().enumerate() {
                let declared: BTreeSet<(u16, Protocol)> = pod.ports.iter().map(|p| (p.port, p.protocol)).collect();
                for (port, protocol) in declared.into_iter().filter(|(p, proto)| wanted(*p, *proto)) {
                    targets.push(Target { from, to: Destination::Pod(to), port, protocol });
                }
            }
            if selection.services {
                for service in &self.services {
                    for (_, protocol, port, _) in
                        service.ports.iter().filter(|(_, proto, port, _)| wanted(*port, *proto))
                    {
                        let id = format!("{}/{}", service.namespace, service.name);
                        targets.push(Target {
                            from,
                            to: Destination::Service { id, vip: service.vip },
                            port: *port,
                            protocol: *protocol,
                        });
                    }
                }
            }
        }
        targets
    }

    /// Tries every target at once; each gets `timeout`.
    pub fn probe(&self, targets: &[Target], timeout: Duration) -> Result<Vec<Outcome>, ProbeError> {
        self.check_interrupt()?;
        // Sockets are made in the client's network namespace (a thread there),
        // then driven from the runtime.
        let mut sockets = Vec::with_capacity(targets.len());
        for from in 0..self.pods.len() {
            let mine: Vec<(usize, Protocol)> =
                targets.iter().enumerate().filter(|(_, t)| t.from == from).map(|(i, t)| (i, t.protocol)).collect();
            if mine.is_empty() {
                continue;
            }
            let first = self.next_port.fetch_add(mine.len() as u32 * 2, Ordering::SeqCst);
            let made = in_netns_at(self.pod_netns(from), move || make_sockets(&mine, first))
                .map_err(|source| ProbeError::Sandbox { what: "a client pod's sockets", source })?
                .map_err(|source| ProbeError::Io { what: "a client pod's sockets", source })?;
            sockets.extend(made);
        }
        sockets.sort_by_key(|(i, _)| *i);
        let _guard = self.runtime.enter();
        let mut runs = Vec::with_capacity(targets.len());
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        for ((_, socket), target) in sockets.into_iter().zip(targets) {
            let addr = SocketAddr::from((self.address(&target.to), target.port));
            let limit = limit.clone();
            runs.push(self.runtime.spawn(async move {
                let _permit = limit.acquire().await;
                tokio::time::timeout(timeout, attempt(socket, addr, timeout)).await.unwrap_or(false)
            }));
        }
        let flag = || self.interrupted();
        let connected = self.runtime.block_on(async {
            let mut all = Vec::with_capacity(runs.len());
            for run in runs {
                loop {
                    if flag() {
                        return Err(ProbeError::Interrupted);
                    }
                    if run.is_finished() {
                        all.push(run.await.unwrap_or(false));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok(all)
        })?;
        Ok(targets
            .iter()
            .zip(connected)
            .map(|(target, connected)| Outcome {
                from: self.pods[target.from].id(),
                to: match &target.to {
                    Destination::Pod(i) => self.pods[*i].id(),
                    Destination::Service { id, .. } => id.clone(),
                },
                port: target.port,
                protocol: target.protocol,
                connected,
            })
            .collect())
    }

    fn address(&self, to: &Destination) -> Ipv4Addr {
        match to {
            Destination::Pod(i) => self.pods[*i].ip,
            Destination::Service { vip, .. } => *vip,
        }
    }
}

enum Socket {
    Tcp(std::net::TcpStream),
    Udp(std::net::UdpSocket),
}

/// Makes the sockets of one client's probes (in its netns): TCP sockets not
/// yet connected, UDP sockets bound to source ports taken in turn from `first`.
fn make_sockets(probes: &[(usize, Protocol)], first: u32) -> std::io::Result<Vec<(usize, Socket)>> {
    use rustix::net::{AddressFamily, SocketType};
    let mut port = first;
    let mut made = Vec::with_capacity(probes.len());
    for (index, protocol) in probes {
        let socket = match protocol {
            Protocol::Udp => loop {
                let source = SOURCE_PORTS.start + port % SOURCE_PORTS.len() as u32;
                port += 1;
                match std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], source as u16))) {
                    Ok(socket) => {
                        socket.set_nonblocking(true)?;
                        break Socket::Udp(socket);
                    }
                    // A pod's own server may hold it.
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                    Err(e) => return Err(e),
                }
            },
            _ => {
                let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
                let stream = std::net::TcpStream::from(fd);
                stream.set_nonblocking(true)?;
                Socket::Tcp(stream)
            }
        };
        made.push((*index, socket));
    }
    Ok(made)
}

/// One probe: connected when the server answered.
async fn attempt(socket: Socket, addr: SocketAddr, timeout: Duration) -> bool {
    match socket {
        Socket::Tcp(stream) => {
            use tokio::io::AsyncReadExt;
            let socket = tokio::net::TcpSocket::from_std_stream(stream);
            let Ok(mut stream) = socket.connect(addr).await else { return false };
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await.is_ok() && !reply.is_empty()
        }
        Socket::Udp(socket) => {
            let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else { return false };
            let mut buffer = [0u8; 512];
            // A lost datagram is not a blocked one: three tries within the timeout.
            for _ in 0..3 {
                if socket.send_to(b"probe", addr).await.is_err() {
                    return false;
                }
                if let Ok(Ok((n, _))) = tokio::time::timeout(timeout / 3, socket.recv_from(&mut buffer)).await {
                    return n > 0;
                }
            }
            false
        }
    }
}

/// Truth tables a person can read: one per protocol and port, clients down,
/// destinations across; `.` connected, `X` blocked, blank not probed.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let order = |names: &mut Vec<String>, name: &str| {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    };
    let (mut clients, mut destinations) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        order(&mut clients, &outcome.from);
        order(&mut destinations, &outcome.to);
    }
    let keys: BTreeSet<(&str, u16)> = outcomes.iter().map(|o| (o.protocol.name(), o.port)).collect();
    let width = clients.iter().map(String::len).max().unwrap_or(0).max(8);
    for (protocol, port) in keys {
        let here: Vec<&Outcome> = outcomes.iter().filter(|o| o.protocol.name() == protocol && o.port == port).collect();
        let columns: Vec<&String> = destinations.iter().filter(|d| here.iter().any(|o| &o.to == *d)).collect();
        out += &format!("{:width$}", format!("{protocol}/{port}"));
        for column in &columns {
            out += &format!("  {column}");
        }
        out += "\n";
        for client in clients.iter().filter(|c| here.iter().any(|o| &o.from == *c)) {
            out += &format!("{client:width$}");
            for column in &columns {
                let cell = match here.iter().find(|o| &o.from == client && &o.to == *column) {
                    Some(o) if o.connected => ".",
                    Some(_) => "X",
                    None => " ",
                };
                out += &format!("  {cell:^w$}", w = column.len());
            }
            out += "\n";
        }
        out += "\n";
    }
    let connected = outcomes.iter().filter(|o| o.connected).count();
    out += &format!("{} probes: {connected} connected, {} blocked\n", outcomes.len(), outcomes.len() - connected);
    out
}

/// One JSON array: `{"from", "to", "port", "protocol", "connected"}` per probe.
pub fn json(outcomes: &[Outcome]) -> String {
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "from": o.from, "to": o.to, "port": o.port, "protocol": o.protocol.name(), "connected": o.connected,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}
