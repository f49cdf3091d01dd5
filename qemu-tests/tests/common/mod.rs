//! What the cluster boot tests share: the control plane's ports, kubectl
//! and waiting for the cluster.
#![allow(dead_code)] // each test crate uses a different part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nodeplane_cluster::ControlPlane;
use nodeplane_qemu::GuestResults;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Five consecutive free ports on loopback (the control plane's).
pub fn free_ports() -> u16 {
    (0..200)
        .map(|i| 20000 + (std::process::id() % 100) as u16 * 100 + i * 5)
        .find(|base| (0..5).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("five free ports")
}

pub fn kubectl(plane: &ControlPlane, args: &[&str]) -> Result<String, String> {
    let out = plane.kubectl().args(args).output().map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
    }
}

pub fn wait<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub fn apply(plane: &ControlPlane, objects: &str) -> Result<(), String> {
    plane.kubectl_with(&["apply", "-f", "-"], objects).map(drop).map_err(|e| e.to_string())
}

/// A cluster boot's results: what the guest script's checks left, the
/// (checking) guest's console, and what the host saw (`H`) or where driving
/// the cluster stopped.
pub struct Outcome<H> {
    pub results: GuestResults,
    pub console: String,
    pub host: Result<H, String>,
}

impl<H> Outcome<H> {
    pub fn host(&self) -> &H {
        self.host.as_ref().unwrap_or_else(|e| {
            panic!("driving the cluster failed: {e}\n--- console (last 60 lines) ---\n{}", self.tail())
        })
    }

    fn tail(&self) -> String {
        nodeplane_qemu::tail(&self.console, 60)
    }

    /// Check `name`'s output; panics unless it ran and passed.
    pub fn check(&self, name: &str) -> String {
        let Some((rc, out)) = self.results.check(name) else {
            panic!(
                "check {name} did not run (host: {})\n--- console (last 60 lines) ---\n{}",
                self.host.as_ref().err().map_or("fine", String::as_str),
                self.tail()
            );
        };
        assert_eq!(rc, "0", "check {name} failed:\n{out}");
        out.to_owned()
    }
}
