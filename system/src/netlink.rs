//! Netlink (rtnetlink) for the node's programs: the links and addresses of a
//! network namespace, read and changed without running `ip`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

/// A connection to this thread's network namespace, driven by the current
/// tokio runtime.
pub fn connect() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Every link by index.
pub async fn links(handle: &Handle) -> Result<BTreeMap<u32, Link>, rtnetlink::Error> {
    let mut links = BTreeMap::new();
    let mut stream = handle.link().get().execute();
    while let Some(link) = stream.try_next().await? {
        if let Some(name) = name(&link) {
            links.insert(link.header.index, Link { name, netns_id: netns_id(&link) });
        }
    }
    Ok(links)
}

/// A link: its name, and for a veth whose peer is in another network
/// namespace, that namespace's id here (`IFLA_LINK_NETNSID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub netns_id: Option<u32>,
}

/// The id (in this namespace) of the namespace `link`'s peer is in.
pub fn netns_id(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => u32::try_from(*id).ok(),
        _ => None,
    })
}

/// The index of the link that holds `addr`, if one does.
pub async fn link_with(handle: &Handle, addr: Ipv4Addr) -> Result<Option<u32>, rtnetlink::Error> {
    let mut stream = handle.address().get().execute();
    while let Some(address) = stream.try_next().await? {
        let holds =
            address.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == addr));
        if holds {
            return Ok(Some(address.header.index));
        }
    }
    Ok(None)
}

/// The link named `name`, if there is one.
pub async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The name of the link with index `index`, if there is one.
pub async fn link_name(handle: &Handle, index: u32) -> Result<Option<String>, rtnetlink::Error> {
    match handle.link().get().match_index(index).execute().try_next().await {
        Ok(link) => Ok(link.as_ref().and_then(name)),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(err),
    }
}

fn name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The errno of a netlink error reply.
pub fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}
