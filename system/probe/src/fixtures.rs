//! Network namespaces and bpffs mounts, made and removed by their owners.

use std::io;
use std::path::PathBuf;
use std::process::Command;

use crate::netns::in_netns_at;

/// A named network namespace (`ip netns add`), deleted with everything in it on drop.
pub struct NamedNetns {
    name: String,
}

impl NamedNetns {
    pub fn new(name: String) -> io::Result<Self> {
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
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns_at(self.path(), f)
    }

    /// Writes a sysctl of this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || std::fs::write(path, value))
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("ip (package iproute2): {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh bpffs mounted on a temporary directory (unmounted on drop), and a
/// state directory beside it.
pub struct Bpffs {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("nodeplane-bpffs-{}-", std::process::id())).tempdir()?;
        let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir.path()).status()?;
        if !status.success() {
            return Err(io::Error::other("mount -t bpf failed"));
        }
        let state = tempfile::Builder::new().prefix("nodeplane-state-").tempdir()?;
        Ok(Bpffs { dir, state })
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A directory for `[datapath] state_dir`: what nodeplaned keeps beside its
    /// pins (the node's `/run/nodeplane`), living as long as they do.
    pub fn state_dir(&self) -> &std::path::Path {
        self.state.path()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
