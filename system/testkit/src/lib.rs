//! Real-component fixtures for nodeplane's tests and benchmarks, a
//! dev-dependency only: pods on a node namespace, a private containerd, the
//! real CNI host-local plugin, `nodeplaned` processes, a notify socket standing
//! in for systemd's, a journal stand-in and a metrics scraper, on top of `nodeplane-sandbox`'s
//! namespaces, bpffs mounts and D-Bus daemon.
//!
//! Nothing here fakes a component: the daemon is `dbus-daemon`, namespaces are the
//! kernel's, and the notify socket receives what `sd_notify(3)` sends.

pub mod bench;
mod containerd;
mod hostlocal;
mod ipam;
mod journal;
mod manifests;
mod metrics;
mod notify;
mod process;
mod topology;

pub use containerd::{Containerd, create_containers, create_sandboxes};
pub use hostlocal::{HOST_LOCAL, HostLocal};
pub use ipam::{backdate, sandbox_id};
pub use journal::{Entry, Journal, parse_entry, text};
pub use manifests::{node_port_manifest, service_manifest};
pub use metrics::{Exposition, Scrape, scrape};
pub use nodeplane_sandbox::{
    Bpffs, DbusDaemon, NamedNetns, PassedSocket, SandboxError, enter_then, in_netns_at, in_netns_of, in_new_netns,
};
pub use notify::NotifySocket;
pub use process::{Launch, Nodeplaned, datapath_config};
pub use topology::{Node, Pod, RequestLoop, Server, tcp_request, tcp_request_from};

use std::io::Write;

/// What a fixture that failed says: its own words, or the error underneath.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Environment variable that lets a run without root skip privileged tests.
pub const SKIP_PRIVILEGED: &str = "NODEPLANE_SKIP_PRIVILEGED";

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Gate for tests that need root. Returns true when the test may run; returns false
/// (after saying so) when not root and `NODEPLANE_SKIP_PRIVILEGED=1`; otherwise
/// panics, so a privileged test never passes silently without having run.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var(SKIP_PRIVILEGED).as_deref() == Ok("1") {
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs root ({SKIP_PRIVILEGED}=1)");
        return false;
    }
    panic!(
        "{test} needs root (network namespaces, sysctls, D-Bus policy as uid 0); \
         run the tests as root, or set {SKIP_PRIVILEGED}=1 to skip privileged tests"
    );
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check()
}
