//! What can go wrong loading, attaching and programming the datapath, each
//! with what was being done and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("eBPF link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("parsing the embedded eBPF object: {0}")]
    Object(#[from] aya_obj::ParseError),
    #[error("the embedded object has no {0}")]
    Missing(&'static str),
    /// A file or directory of the pin tree on bpffs: created, read or removed.
    #[error("{what} {path}: {source} (is it on a bpffs?)")]
    Pin { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("pinning a link at {path}: {source}")]
    PinLink { path: PathBuf, source: aya::pin::PinError },
    #[error("opening the cgroup {path} (socket load balancing attaches there): {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a cgroup v2 directory (socket load balancing attaches there)")]
    NotCgroup2(PathBuf),
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact { interface: String, source: aya::programs::tc::TcError },
    #[error("finding the tc filter on {interface} that an earlier nodeplaned attached: {source}")]
    NetlinkFilter { interface: String, source: std::io::Error },
    #[error("reading this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+): {0}")]
    NetnsCookie(std::io::Error),
    #[error("a Service may have at most {max} backends, not {count}")]
    TooManyBackends { count: usize, max: usize },
}
