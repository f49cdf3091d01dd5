//! Routes to the other nodes' pods, learned from the Node watch and removed
//! with the Node: natively on a shared L2 (as Cilium's
//! auto-direct-node-routes), each other Node's `spec.podCIDR` via its
//! InternalIP; or encapsulated in VXLAN, as flannel does, through a device of
//! nodeplane's ([`VXLAN_DEVICE`]) that holds its pod CIDR's network address,
//! each other node's pod CIDR via that node's network address on the device,
//! whose neighbour entry and forwarding entry send it to the node's
//! InternalIP. A node's VXLAN MAC follows from its pod CIDR ([`vtep_mac`]),
//! so no annotation has to carry it. The routes carry a protocol number of
//! nodeplane's own ([`ROUTE_PROTOCOL`]), so a route it did not write is never
//! touched and a restarted nodeplaned finds the ones it did.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};

use crate::config::Routing;

/// The `proto` of nodeplane's routes (`ip route show proto 78`); iproute2
/// names none with this number.
pub const ROUTE_PROTOCOL: u8 = 78;

/// The VXLAN device of `routing = "vxlan"`, its VNI, and its UDP port
/// (Linux's and flannel's).
pub const VXLAN_DEVICE: &str = "np-vxlan";
const VXLAN_VNI: u32 = 78;
const VXLAN_PORT: u16 = 8472;

/// A node's VXLAN MAC, from its pod CIDR's network address (unique in a
/// cluster): locally administered, unicast.
pub fn vtep_mac(pod_cidr: (Ipv4Addr, u8)) -> [u8; 6] {
    let [a, b, c, d] = pod_cidr.0.octets();
    [0x02, 0x4e, a, b, c, d]
}

/// Another node as routing needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteNode {
    pub name: String,
    /// Its InternalIP: the next hop to its pods.
    pub address: Ipv4Addr,
    /// Its `spec.podCIDR` (network address, prefix length).
    pub pod_cidr: (Ipv4Addr, u8),
}

/// A Node as read: `None` until it has an IPv4 InternalIP and podCIDR (a
/// node that has just joined), or when they do not read as such.
pub fn read_node(node: &Node) -> Option<RemoteNode> {
    let name = node.metadata.name.clone()?;
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    let address = addresses.iter().filter(|a| a.type_ == "InternalIP").find_map(|a| a.address.parse().ok())?;
    let spec = node.spec.as_ref()?;
    let cidrs = spec.pod_cidrs.iter().flatten().chain(&spec.pod_cidr);
    let pod_cidr = cidrs.filter_map(|c| parse_cidr(c)).next()?;
    Some(RemoteNode { name, address, pod_cidr })
}

/// An IPv4 CIDR as its network address and prefix length.
pub fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, length) = cidr.split_once('/')?;
    let (address, length): (Ipv4Addr, u8) = (address.parse().ok()?, length.parse().ok()?);
    let host_bits = match length {
        0..32 => u32::MAX >> length,
        32 => 0,
        _ => return None,
    };
    (u32::from(address) & host_bits == 0).then_some((address, length))
}

/// What one pass changed, and the routes it holds now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteSync {
    pub added: usize,
    pub removed: usize,
    /// Destination → next hop, of every route of nodeplane's now.
    pub routes: BTreeMap<(Ipv4Addr, u8), Ipv4Addr>,
    /// The interfaces they go out of: replies from other nodes' pods come in
    /// there, to be translated back (a Service's remote backend answering).
    pub interfaces: BTreeSet<u32>,
    /// Routes that could not be written or removed, and why.
    pub failed: Vec<String>,
}

/// Makes nodeplane's routes those to `nodes`' pod CIDRs, the `routing` way
/// (VXLAN needs `own`, this node's pod CIDR): adds or replaces what differs,
/// removes its routes to anywhere else. Err when the routes cannot be listed.
pub async fn sync(
    handle: &Handle,
    nodes: &[RemoteNode],
    routing: Routing,
    own: Option<(Ipv4Addr, u8)>,
) -> Result<RouteSync, rtnetlink::Error> {
    let mut result = RouteSync::default();
    let device = crate::netlink::link(handle, VXLAN_DEVICE).await?;
    let vxlan = match (routing, own) {
        (Routing::Native, _) => {
            // Its routes go with it.
            if let Some(link) = device {
                handle.link().del(link.header.index).execute().await?;
            }
            None
        }
        (Routing::Vxlan, Some(own)) => Some(vxlan_device(handle, device, own).await?),
        (Routing::Vxlan, None) => {
            result.failed.push("VXLAN routing waits for this node's pod CIDR (its Node's spec.podCIDR)".into());
            return Ok(result);
        }
    };
    // Destination → (next hop, device): the node's InternalIP, or its pod
    // CIDR's network address on the VXLAN device.
    let next_hop = |node: &RemoteNode| match vxlan {
        None => (node.address, None),
        Some(index) => (node.pod_cidr.0, Some(index)),
    };
    // Whether a route of nodeplane's goes where `node`'s should.
    let current = |node: &RemoteNode, gateway: Option<Ipv4Addr>, route: &RouteMessage| {
        let (hop, device) = next_hop(node);
        gateway == Some(hop) && device.is_none_or(|d| interface(route) == Some(d))
    };
    let wanted: BTreeMap<(Ipv4Addr, u8), &RemoteNode> = nodes.iter().map(|n| (n.pod_cidr, n)).collect();
    for (destination, (gateway, route)) in held(handle).await? {
        match wanted.get(&destination) {
            Some(node) if current(node, gateway, &route) => {
                result.routes.insert(destination, node.address);
            }
            Some(_) => {} // another next hop: replaced below
            None => match handle.route().del(route).execute().await {
                Ok(()) => result.removed += 1,
                Err(err) => {
                    result.failed.push(format!("removing the route to {}/{}: {err}", destination.0, destination.1))
                }
            },
        }
    }
    if let Some(index) = vxlan {
        vxlan_neighbours(handle, index, nodes, &mut result).await?;
    }
    for (destination, node) in wanted {
        if result.routes.contains_key(&destination) {
            continue;
        }
        let (gateway, device) = next_hop(node);
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.0, destination.1)
            .gateway(gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(index) = device {
            route = route.output_interface(index).onlink();
        }
        match handle.route().add(route.build()).replace().execute().await {
            Ok(()) => {
                result.added += 1;
                result.routes.insert(destination, node.address);
            }
            Err(err) => result.failed.push(format!(
                "the route to node {}'s pods ({}/{} via {}): {err}",
                node.name, destination.0, destination.1, node.address
            )),
        }
    }
    result.interfaces = held(handle).await?.values().filter_map(|(_, route)| interface(route)).collect();
    Ok(result)
}

/// The VXLAN device, made (again, when its MAC is another pod CIDR's) for
/// this node's pod CIDR, with its address: its index.
async fn vxlan_device(
    handle: &Handle,
    device: Option<LinkMessage>,
    own: (Ipv4Addr, u8),
) -> Result<u32, rtnetlink::Error> {
    let mac = vtep_mac(own);
    let current = device.filter(|link| {
        link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(address) if address[..] == mac[..]))
    });
    let index = match current {
        Some(link) => link.header.index,
        None => {
            if let Some(old) = crate::netlink::link(handle, VXLAN_DEVICE).await? {
                handle.link().del(old.header.index).execute().await?;
            }
            let link = LinkVxlan::new(VXLAN_DEVICE, VXLAN_VNI)
                .port(VXLAN_PORT)
                .learning(false)
                .address(mac.to_vec())
                .up()
                .build();
            handle.link().add(link).execute().await?;
            let created = crate::netlink::link(handle, VXLAN_DEVICE).await?;
            created.map(|l| l.header.index).ok_or(rtnetlink::Error::RequestFailed)?
        }
    };
    if crate::netlink::link_with(handle, own.0).await? != Some(index) {
        handle.address().add(index, own.0.into(), 32).replace().execute().await?;
    }
    Ok(index)
}

/// Each node's neighbour entry (its network address → its MAC) and
/// forwarding entry (its MAC → its InternalIP) on the VXLAN device, and
/// no other.
async fn vxlan_neighbours(
    handle: &Handle,
    index: u32,
    nodes: &[RemoteNode],
    result: &mut RouteSync,
) -> Result<(), rtnetlink::Error> {
    let macs: BTreeSet<[u8; 6]> = nodes.iter().map(|n| vtep_mac(n.pod_cidr)).collect();
    let gateways: BTreeSet<Ipv4Addr> = nodes.iter().map(|n| n.pod_cidr.0).collect();
    let mut stale = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Bridge] {
        let mut entries = handle.neighbours().get().set_address_family(family).execute();
        while let Some(entry) = entries.try_next().await? {
            if entry.header.ifindex != index {
                continue;
            }
            let keep = entry.attributes.iter().any(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => gateways.contains(ip),
                NeighbourAttribute::LinkLayerAddress(mac) => macs.iter().any(|m| m[..] == mac[..]),
                _ => false,
            });
            if !keep {
                stale.push(entry);
            }
        }
    }
    for entry in stale {
        if let Err(err) = handle.neighbours().del(entry).execute().await {
            result.failed.push(format!("removing a VXLAN neighbour entry: {err}"));
        }
    }
    for node in nodes {
        let mac = vtep_mac(node.pod_cidr);
        let mut forwarding = handle.neighbours().add_bridge(index, &mac).flags(NeighbourFlags::Own);
        forwarding.message_mut().attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(node.address)));
        let neighbour = handle.neighbours().add(index, node.pod_cidr.0.into()).link_layer_address(&mac);
        for (what, added) in
            [("forwarding", forwarding.replace().execute().await), ("neighbour", neighbour.replace().execute().await)]
        {
            if let Err(err) = added {
                result.failed.push(format!("node {}'s VXLAN {what} entry: {err}", node.name));
            }
        }
    }
    Ok(())
}

/// nodeplane's routes: destination → (next hop, the route).
async fn held(handle: &Handle) -> Result<BTreeMap<(Ipv4Addr, u8), (Option<Ipv4Addr>, RouteMessage)>, rtnetlink::Error> {
    let mut held = BTreeMap::new();
    let mut routes = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    while let Some(route) = routes.try_next().await? {
        if route.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
            && let Some((destination, gateway)) = destination_and_gateway(&route)
        {
            held.insert(destination, (gateway, route));
        }
    }
    Ok(held)
}

/// The interface a route goes out of.
fn interface(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(index) => Some(*index),
        _ => None,
    })
}

/// A route's destination and its gateway, if it has one.
fn destination_and_gateway(route: &RouteMessage) -> Option<((Ipv4Addr, u8), Option<Ipv4Addr>)> {
    let mut destination = None;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => destination = Some(*address),
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => gateway = Some(*address),
            _ => {}
        }
    }
    Some(((destination?, route.header.destination_prefix_length), gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_vxlan_mac_is_its_pod_cidrs_network_address_locally_administered() {
        assert_eq!(vtep_mac((Ipv4Addr::new(10, 244, 2, 0), 24)), [0x02, 0x4e, 10, 244, 2, 0]);
        assert_eq!(vtep_mac((Ipv4Addr::new(10, 244, 2, 0), 24))[0] & 0b11, 0b10, "unicast, locally administered");
    }

    #[test]
    fn a_cidr_reads_only_as_a_network_address_and_length() {
        assert_eq!(parse_cidr("10.244.2.0/24"), Some((Ipv4Addr::new(10, 244, 2, 0), 24)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Some((Ipv4Addr::UNSPECIFIED, 0)));
        assert_eq!(parse_cidr("10.0.0.7/32"), Some((Ipv4Addr::new(10, 0, 0, 7), 32)));
        assert_eq!(parse_cidr("10.244.2.1/24"), None, "host bits set");
        assert_eq!(parse_cidr("10.244.2.0/33"), None);
        assert_eq!(parse_cidr("fd00::/64"), None);
        assert_eq!(parse_cidr("10.244.2.0"), None);
    }
}
