//! The layout of the pin directory (`[datapath] bpffs_root`): the maps by
//! name, and the records of what is attached, which outlive nodeplaned.

use std::path::Path;

use crate::DatapathError;

/// Sub-directory with the from_pod attachments: the record of which
/// interfaces are attached.
pub(crate) const LINKS: &str = "links";
/// Sub-directory with the to_pod attachments.
pub(crate) const EGRESS_LINKS: &str = "links-egress";
/// Prefix of the directory marking a netlink attachment (bpffs holds no files).
pub(crate) const NETLINK_MARK: &str = "netlink_";
/// Sub-directory with the socket load balancer's cgroup attachments.
pub(crate) const CGROUP_LINKS: &str = "cgroup";

/// The interfaces with a recorded from_pod attachment under `root`, sorted.
pub(crate) fn attached_interfaces(root: &Path) -> Result<Vec<String>, DatapathError> {
    let links = root.join(LINKS);
    let entries =
        std::fs::read_dir(&links).map_err(|source| DatapathError::Pin { what: "listing", path: links, source })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(NETLINK_MARK).map_or(name.clone(), str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The socket load balancer's hooks with a pinned cgroup link under `root`.
pub(crate) fn cgroup_hooks(root: &Path) -> Result<Vec<String>, DatapathError> {
    let links = root.join(CGROUP_LINKS);
    let mut hooks: Vec<String> = match std::fs::read_dir(&links) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(DatapathError::Pin { what: "listing", path: links, source }),
    };
    hooks.sort();
    Ok(hooks)
}

/// A pin's removal, where its being gone already is as good as removed.
pub(crate) fn remove(path: &Path, result: std::io::Result<()>) -> Result<(), DatapathError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Pin { what: "removing", path: path.to_owned(), source }),
    }
}
