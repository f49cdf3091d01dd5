//! The node's interfaces and the datapath's attachments to them: every pod
//! interface (by name prefix), the interface holding the node's IP and those
//! the routes to other nodes go out of, read over netlink.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use nodeplane_datapath::Datapath;
use rtnetlink::Handle;

use crate::netlink::{self, Link};

/// The interfaces of this network namespace by ifindex, and the name of the
/// one holding `node_ip` (when given and held).
pub(super) async fn interfaces(
    handle: &Handle,
    node_ip: Option<Ipv4Addr>,
) -> Result<(BTreeMap<u32, Link>, Option<String>), rtnetlink::Error> {
    let links = netlink::links(handle).await?;
    let node_if = match node_ip {
        Some(ip) => netlink::link_with(handle, ip).await?.and_then(|index| links.get(&index).map(|l| l.name.clone())),
        None => None,
    };
    if node_ip.is_some() && node_if.is_none() {
        tracing::debug!("no interface holds datapath.node_ip yet");
    }
    Ok((links, node_if))
}

/// Attaches to every `present` interface whose name has the pod prefix, and to
/// the `uplinks` (the node's, where NodePorts are, and those the routes to
/// other nodes go out of); forgets the records of ones that are gone. Returns
/// the failures.
pub(super) fn attach_interfaces(
    datapath: &mut Datapath,
    present: &BTreeSet<String>,
    prefix: &str,
    uplinks: &BTreeSet<String>,
) -> Vec<String> {
    let mut present: BTreeSet<&String> = present.iter().filter(|n| n.starts_with(prefix)).collect();
    present.extend(uplinks.iter().filter(|n| !n.starts_with(prefix)));
    let mut errors = Vec::new();
    for gone in datapath.attached_interfaces().unwrap_or_default().into_iter().filter(|n| !present.contains(n)) {
        if let Err(err) = datapath.forget_interface(&gone) {
            errors.push(format!("{gone}: {err}"));
        }
    }
    for interface in present {
        let attached = if uplinks.contains(interface) {
            datapath.attach_node_interface(interface)
        } else {
            datapath.attach_pod_interface(interface)
        };
        if let Err(err) = attached {
            errors.push(format!("attaching to {interface}: {err}"));
        }
    }
    errors
}
