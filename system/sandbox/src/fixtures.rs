//! Network namespaces and bpffs mounts, made and removed by their owners.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::SandboxError;
use crate::netns::in_netns_at;

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    pub fn new(name: String) -> Result<Self, SandboxError> {
        ip(&["netns", "add", &name])?;
        let netns = NamedNetns { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS…`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, SandboxError> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread inside this namespace. Panics in `f` propagate.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, SandboxError> {
        in_netns_at(self.path(), f)
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), SandboxError> {
        let path = PathBuf::from(format!("/proc/sys/{}", key.replace('.', "/")));
        let value = value.to_owned();
        self.run(move || {
            std::fs::write(&path, value).map_err(|source| SandboxError::Io { what: "writing", path, source })
        })?
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<String, SandboxError> {
    let out = Command::new("ip").args(args).output().map_err(|source| SandboxError::Spawn {
        program: "ip",
        package: "iproute2",
        source,
    })?;
    if !out.status.success() {
        return Err(SandboxError::Command {
            command: format!("ip {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A node: a network namespace that forwards, named uniquely for this process
/// (`<kind><pid>n<count>-node`), with pod namespaces named after it. How pods
/// are wired to it is up to the caller (the CNI plugin, or veths by hand).
pub struct Node {
    pub netns: NamedNetns,
    prefix: String,
}

impl Node {
    /// A fresh node; `kind` starts its names (interface names derive from
    /// them: keep it short).
    pub fn new(kind: &str) -> Result<Self, SandboxError> {
        static NODES: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("{kind}{}n{}", std::process::id() % 100_000, NODES.fetch_add(1, Ordering::SeqCst));
        let netns = NamedNetns::new(format!("{prefix}-node"))?;
        netns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(Node { netns, prefix })
    }

    /// What the names of this node's namespaces and interfaces start with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A new namespace for pod number `n` of this node (`<prefix>-pod<n>`).
    pub fn pod_netns(&self, n: u32) -> Result<NamedNetns, SandboxError> {
        NamedNetns::new(format!("{}-pod{n}", self.prefix))
    }
}

/// A fresh bpffs mounted on a temporary directory (unmounted on drop), and a
/// state directory beside it.
pub struct Bpffs {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Result<Self, SandboxError> {
        let temporary = |prefix: &str| {
            tempfile::Builder::new().prefix(prefix).tempdir().map_err(|source| SandboxError::Io {
                what: "creating a directory in",
                path: std::env::temp_dir(),
                source,
            })
        };
        let dir = temporary(&format!("nodeplane-bpffs-{}-", std::process::id()))?;
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .output()
            .map_err(|source| SandboxError::Spawn { program: "mount", package: "mount", source })?;
        if !out.status.success() {
            return Err(SandboxError::Command {
                command: format!("mount -t bpf bpf {}", dir.path().display()),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let state = temporary("nodeplane-state-")?;
        Ok(Bpffs { dir, state })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory for `[datapath] state_dir`: what nodeplaned keeps beside its
    /// pins (the node's `/run/nodeplane`), living as long as they do.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
