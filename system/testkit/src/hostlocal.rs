use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The path of the real CNI host-local IPAM plugin (package containernetworking-plugins).
pub const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// A CNI network whose addresses the real host-local plugin hands out from a data
/// directory of the test's (`<data_dir>/<name>/`).
pub struct HostLocal {
    pub name: String,
    pub data_dir: PathBuf,
    /// One inner list per range set (one per address family for dual stack).
    pub ranges: Vec<Vec<&'static str>>,
}

impl HostLocal {
    /// The network's reservation directory.
    pub fn dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }

    fn conf(&self) -> String {
        let sets: Vec<String> = self
            .ranges
            .iter()
            .map(|set| {
                let ranges: Vec<String> = set.iter().map(|subnet| format!("{{\"subnet\":\"{subnet}\"}}")).collect();
                format!("[{}]", ranges.join(","))
            })
            .collect();
        format!(
            "{{\"cniVersion\":\"1.0.0\",\"name\":\"{}\",\"ipam\":{{\"type\":\"host-local\",\"dataDir\":\"{}\",\"ranges\":[{}]}}}}",
            self.name,
            self.data_dir.display(),
            sets.join(",")
        )
    }

    /// CNI ADD for `container`/`ifname`; the addresses handed out.
    pub fn add(&self, container: &str, ifname: &str) -> Result<Vec<IpAddr>, crate::Error> {
        let out = self.run("ADD", container, ifname)?;
        let result: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let ips = result["ips"].as_array().ok_or_else(|| format!("no ips in {out}"))?;
        ips.iter()
            .map(|ip| {
                let cidr = ip["address"].as_str().ok_or("no address")?;
                Ok(cidr.split('/').next().unwrap_or_default().parse().map_err(|e| format!("{cidr}: {e}"))?)
            })
            .collect()
    }

    /// CNI DEL for `container`/`ifname`.
    pub fn del(&self, container: &str, ifname: &str) -> Result<(), crate::Error> {
        self.run("DEL", container, ifname).map(drop)
    }

    fn run(&self, command: &str, container: &str, ifname: &str) -> Result<String, crate::Error> {
        let mut child = Command::new(HOST_LOCAL)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", Path::new(HOST_LOCAL).parent().expect("a directory"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{HOST_LOCAL}: {e} (package containernetworking-plugins)"))?;
        child.stdin.take().expect("piped").write_all(self.conf().as_bytes()).map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("host-local {command} {container}: {stdout}{}", String::from_utf8_lossy(&out.stderr)).into())
        }
    }
}
