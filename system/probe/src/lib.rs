//! nodeplane's NetworkPolicy reachability probe: it stands up, on this
//! machine (with `nodeplane-sandbox`), the Namespaces and Pods a directory of manifests describes — each
//! pod a network namespace attached through the real `nodeplane-cni`, served
//! by a real `nodeplaned` that applies the directory's Services and
//! NetworkPolicies — then connects from every pod to every other on every
//! declared port and protocol and reports what got through.
//!
//! It is what `nodeplanectl probe DIR` and `cargo xtask probe DIR` run, and how
//! the policy truth-table tests check the datapath.

mod probe;
mod stage;

pub use probe::{Destination, Outcome, Selection, Target, json, table};
pub use stage::{Binaries, Cluster, DEFAULT_SUBNET, Stage, StagedPod};

/// Why a probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the manifests cannot be used:\n  {}", .0.join("\n  "))]
    Manifests(Vec<String>),
    #[error("setting up {what}: {source}")]
    Sandbox { what: &'static str, source: nodeplane_sandbox::SandboxError },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
    #[error("nodeplaned's Sync(): {0}")]
    Sync(#[from] zbus::Error),
    #[error("interrupted; everything the probe created is being removed")]
    Interrupted,
}
