//! Real-component fixtures for nodeplane's tests and developer tasks: a private
//! D-Bus daemon configured like a system bus, throwaway network namespaces, and a
//! notify socket standing in for systemd's.
//!
//! Nothing here fakes a component: the daemon is `dbus-daemon`, namespaces are the
//! kernel's, and the notify socket receives what `sd_notify(3)` sends.

pub mod bench;
mod containerd;
mod hostlocal;
mod ipam;
mod manifests;
mod notify;
mod process;
mod topology;

pub use containerd::{Containerd, create_containers};
pub use hostlocal::{HOST_LOCAL, HostLocal};
pub use ipam::{backdate, sandbox_id};
pub use manifests::{node_port_manifest, service_manifest};
pub use nodeplane_probe::{Bpffs, DbusDaemon, NamedNetns, in_netns_at, in_netns_of, in_new_netns};
pub use notify::NotifySocket;
pub use process::{Launch, Nodeplaned};
pub use topology::{Node, Pod, RequestLoop, Server, tcp_request, tcp_request_from};

use std::io::Write;

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
