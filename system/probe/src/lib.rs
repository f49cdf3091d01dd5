//! nodeplane's NetworkPolicy reachability probe, and the real-component
//! fixtures it stands on (shared with the tests): it stands up, on this
//! machine, the Namespaces and Pods a directory of manifests describes — each
//! pod a network namespace attached through the real `nodeplane-cni`, served
//! by a real `nodeplaned` that applies the directory's Services and
//! NetworkPolicies — then connects from every pod to every other on every
//! declared port and protocol and reports what got through.
//!
//! It is what `nodeplanectl probe DIR` and `cargo xtask probe DIR` run, and how
//! the policy truth-table tests check the datapath.

mod dbus;
mod fixtures;
mod netns;
mod probe;
mod stage;

pub use dbus::DbusDaemon;
pub use fixtures::{Bpffs, NamedNetns};
pub use netns::{enter_then, in_netns_at, in_netns_of, in_new_netns};
pub use probe::{Destination, Outcome, Selection, Target, json, table};
pub use stage::{Binaries, DEFAULT_SUBNET, Stage, StagedPod};

/// Why a probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the manifests cannot be used:\n  {}", .0.join("\n  "))]
    Manifests(Vec<String>),
    #[error("{0}")]
    Setup(String),
    #[error("interrupted; everything the probe created is being removed")]
    Interrupted,
}
