//! Throwaway system resources for running nodeplane's real components away
//! from a node: named network namespaces (and threads that run inside them),
//! bpffs mounts, a private `dbus-daemon` configured like the system bus, and
//! a listening socket passed on as systemd's socket activation does.
//! Each is removed when dropped. Nothing here fakes a component, and nothing
//! panics: every failure comes back as a [`SandboxError`] saying what failed.
//!
//! `nodeplanectl probe` stands its nodes up with it; the tests' fixtures
//! (`nodeplane-testkit`) build on it.

mod activation;
mod dbus;
mod error;
mod fixtures;
mod forward;
mod netns;

pub use activation::{PassedSocket, SET_LISTEN_PID};
pub use dbus::DbusDaemon;
pub use error::SandboxError;
pub use fixtures::{Bpffs, NamedNetns, Node};
pub use forward::forward;
pub use netns::{enter_then, in_netns_at, in_netns_of, in_new_netns};
