//! A pod's network, made over netlink (rtnetlink): a veth pair whose node end
//! (`host`) stays in the node's namespace and whose pod end is created straight
//! in the pod's namespace under the runtime's name (`eth0`), the pod's /32
//! address, a route to it on the node, a default route in the pod via a
//! link-local gateway, and static neighbor entries both ways (no ARP).
//!
//! Requests to the two namespaces go out together; a socket opened by a
//! thread inside the pod's namespace talks to that namespace's stack.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netlink;

/// The pods' gateway: link-local, answered by a static neighbor entry.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    #[error("opening the pod's network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("a netlink socket {0}: {1}")]
    Socket(&'static str, std::io::Error),
    #[error("{what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("{0} is missing")]
    Missing(String),
}

/// The two ends' MAC addresses.
pub struct Macs {
    pub host: String,
    pub pod: String,
}

/// Netlink to the node's namespace (the caller's) and, for a pod, to the pod's.
pub struct Netlink {
    node: Handle,
}

impl Netlink {
    /// A connection to this thread's network namespace (the node's). Needs a
    /// tokio runtime, which drives it.
    pub fn node() -> Result<Self, PlumbingError> {
        Ok(Netlink { node: netlink::connect().map_err(|e| PlumbingError::Socket("to the node", e))? })
    }

    /// Creates the pod's network; returns both ends' MACs. Partly made ones
    /// are left for the caller to [`delete`](Self::delete).
    pub async fn add(&self, netns: &Path, host: &str, ifname: &str, ip: Ipv4Addr) -> Result<Macs, PlumbingError> {
        let (pod_ns, pod) = pod_connection(netns)?;
        // Both MACs set here, not left random: udev gives random ones of
        // virtual devices a "persistent" MAC a moment later, which would flush
        // the static neighbor entries and leave the pod's gateway entry stale.
        let (host_mac, pod_mac) = (mac_for(host, "node"), mac_for(host, "pod"));
        // The pod end comes up later: the kernel opens it before the pair is
        // joined, and a veth opened without its peer fails (ENOTCONN).
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.to_owned())
            .address(pod_mac.to_vec())
            .setns_by_fd(pod_ns.as_raw_fd())
            .build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_owned())
            .address(host_mac.to_vec())
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.node
            .link()
            .add(pair)
            .execute()
            .await
            .map_err(failed(format!("creating the veth pair {host}/{ifname}")))?;
        let (host_link, pod_link, lo) = tokio::try_join!(link(&self.node, host), link(&pod, ifname), link(&pod, "lo"))?;
        let (host_link, pod_link, lo) = (
            host_link.ok_or_else(|| PlumbingError::Missing(host.to_owned()))?,
            pod_link.ok_or_else(|| PlumbingError::Missing(format!("{ifname} in the pod")))?,
            lo.ok_or_else(|| PlumbingError::Missing("lo in the pod".to_owned()))?,
        );
        let macs = Macs { host: text(&host_mac), pod: text(&pod_mac) };
        let (host_index, pod_index) = (host_link.header.index, pod_link.header.index);
        let pod_side = async {
            let up = |index: u32, name: &str| {
                let request = pod.link().set(LinkUnspec::new_with_index(index).up().build()).execute();
                let what = format!("setting {name} up in the pod");
                async move { request.await.map_err(failed(what)) }
            };
            tokio::try_join!(up(lo.header.index, "lo"), up(pod_index, ifname))?;
            pod.address()
                .add(pod_index, IpAddr::V4(ip), 32)
                .execute()
                .await
                .map_err(failed(format!("adding {ip}/32 to {ifname}")))?;
            let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(GATEWAY, 32)
                .output_interface(pod_index)
                .scope(RouteScope::Link)
                .build();
            pod.route().add(to_gateway).execute().await.map_err(failed(format!("a route to {GATEWAY} in the pod")))?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(GATEWAY).output_interface(pod_index).build();
            pod.route().add(default).execute().await.map_err(failed("the pod's default route".into()))?;
            pod.neighbours()
                .add(pod_index, IpAddr::V4(GATEWAY))
                .link_layer_address(&host_mac)
                .state(NeighbourState::Permanent)
                .execute()
                .await
                .map_err(failed(format!("the neighbor entry for {GATEWAY} in the pod")))
        };
        let node_side = async {
            let to_pod = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, 32)
                .output_interface(host_index)
                .scope(RouteScope::Link)
                .build();
            self.node.route().add(to_pod).execute().await.map_err(failed(format!("a route to {ip} via {host}")))?;
            self.node
                .neighbours()
                .add(host_index, IpAddr::V4(ip))
                .link_layer_address(&pod_mac)
                .state(NeighbourState::Permanent)
                .execute()
                .await
                .map_err(failed(format!("the neighbor entry for {ip} on {host}")))
        };
        tokio::try_join!(pod_side, node_side)?;
        Ok(macs)
    }

    /// Deletes the node end (and so the pair); a missing one is deleted already.
    pub async fn delete(&self, host: &str) -> Result<(), PlumbingError> {
        let Some(link) = link(&self.node, host).await? else { return Ok(()) };
        match self.node.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            // Gone meanwhile (the pod's namespace went, taking the pair).
            Err(err) if netlink::errno(&err) == Some(libc::ENODEV) => Ok(()),
            Err(source) => Err(PlumbingError::Netlink { what: format!("deleting {host}"), source }),
        }
    }

    /// Whether both ends are there.
    pub async fn check(&self, netns: &Path, host: &str, ifname: &str) -> Result<(), PlumbingError> {
        link(&self.node, host).await?.ok_or_else(|| PlumbingError::Missing(host.to_owned()))?;
        let (_pod_ns, pod) = pod_connection(netns)?;
        link(&pod, ifname).await?.ok_or_else(|| PlumbingError::Missing(format!("{ifname} in the pod")))?;
        Ok(())
    }
}

/// The pod's namespace, open, and a connection to it: its socket is made by a
/// thread that entered the namespace for that alone.
fn pod_connection(netns: &Path) -> Result<(File, Handle), PlumbingError> {
    let file = File::open(netns).map_err(|source| PlumbingError::Netns { path: netns.to_owned(), source })?;
    let runtime = tokio::runtime::Handle::current();
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| PlumbingError::Netns { path: netns.to_owned(), source: e.into() })?;
                let _runtime = runtime.enter();
                netlink::connect().map_err(|e| PlumbingError::Socket("in the pod's namespace", e))
            })
            .join()
            .expect("the netlink thread does not panic")
    });
    Ok((file, made?))
}

/// The link named `name`, if there is one.
async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, PlumbingError> {
    netlink::link(handle, name).await.map_err(failed(format!("looking up {name}")))
}

/// A MAC for one end of the pair named `host`: stable, unicast and locally
/// administered (FNV-1a of the name and the end).
fn mac_for(host: &str, end: &str) -> [u8; 6] {
    let hash = format!("{host}/{end}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let bytes = hash.to_be_bytes();
    [(bytes[2] & 0xfc) | 0x02, bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]
}

/// A MAC as `aa:bb:cc:dd:ee:ff`.
fn text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn failed(what: String) -> impl FnOnce(rtnetlink::Error) -> PlumbingError {
    move |source| PlumbingError::Netlink { what, source }
}
