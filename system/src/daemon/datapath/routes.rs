//! Routes to the other nodes' pods, native routing on a shared L2 (as
//! Cilium's auto-direct-node-routes): each other Node's `spec.podCIDR` via its
//! InternalIP, learned from the Node watch and removed with the Node. The
//! routes carry a protocol number of nodeplane's own ([`ROUTE_PROTOCOL`]), so
//! a route it did not write is never touched and a restarted nodeplaned finds
//! the ones it did.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The `proto` of nodeplane's routes (`ip route show proto 78`); iproute2
/// names none with this number.
pub const ROUTE_PROTOCOL: u8 = 78;

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
fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
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

/// Makes nodeplane's routes those to `nodes`' pod CIDRs: adds or replaces
/// what differs, removes its routes to anywhere else. Err when the routes
/// cannot be listed.
pub async fn sync(handle: &Handle, nodes: &[RemoteNode]) -> Result<RouteSync, rtnetlink::Error> {
    let wanted: BTreeMap<(Ipv4Addr, u8), &RemoteNode> = nodes.iter().map(|n| (n.pod_cidr, n)).collect();
    let mut result = RouteSync::default();
    for (destination, (gateway, route)) in held(handle).await? {
        match wanted.get(&destination) {
            Some(node) if Some(node.address) == gateway => {
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
    for (destination, node) in wanted {
        if result.routes.contains_key(&destination) {
            continue;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.0, destination.1)
            .gateway(node.address)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match handle.route().add(route).replace().execute().await {
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
