//! The D-Bus API of `nodeplaned`, shared by the server and its clients.
//!
//! - `org.nodeplane.Node1` at `/org/nodeplane/Node1`: properties `Health` (s),
//!   `Version` (s), `Components` (a(ssst): name, state, detail, last change in µs
//!   since the Unix epoch); method `Reload()` (root only).
//! - `org.nodeplane.Component1` at `/org/nodeplane/Node1/<component>`: properties
//!   `Name`, `State`, `Detail` (s), `LastChange` (t, µs since the epoch) and `Facts`
//!   (a{sv}: counts as `t`, text as `s`).
//! - `org.nodeplane.Ipam1` at `/org/nodeplane/Node1/ipam`: method `Sweep(b dry_run)
//!   → a(sss)` (network, IP, owner of each freed reservation; root only).
//! - `org.nodeplane.Datapath1` at `/org/nodeplane/Node1/datapath`: methods
//!   `RegisterEndpoint(container id, netns, host interface, IPs, pod namespace, pod
//!   name)` and `UnregisterEndpoint(container id)` for the CNI plugin (root only);
//!   `Sync() → as` applies the manifests directory now, answering with its
//!   problems (root only);
//!   `PodPolicy(s namespace/name) → (s ip, (b isolated, a(ss) peer and ports)
//!   ingress, (b, a(ss)) egress)`; signal `PolicyDrop(s from, s to, q port, s
//!   protocol, s reason, s service)`, received by root only.
//!
//! Every property emits `PropertiesChanged` when it changes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use zbus::OwnedVariant;

use crate::component::Fact;

pub const SERVICE: &str = "org.nodeplane.Node1";
pub const NODE_PATH: &str = "/org/nodeplane/Node1";
/// Error names returned by `Reload()` besides the standard `AccessDenied`.
pub const ERROR_INVALID_CONFIG: &str = "org.nodeplane.Node1.Error.InvalidConfig";
pub const ERROR_RELOAD_FAILED: &str = "org.nodeplane.Node1.Error.ReloadFailed";
/// The error `Sweep()` returns when a sweep freed nothing because it could not run.
pub const ERROR_SWEEP_FAILED: &str = "org.nodeplane.Node1.Error.SweepFailed";

/// The object path of a component's object.
pub fn component_path(name: &str) -> String {
    format!("{NODE_PATH}/{name}")
}

/// One row of the `Components` property.
pub type ComponentRow = (String, String, String, u64);

pub fn to_usec(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

pub fn from_usec(usec: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(usec)
}

pub fn fact_to_value(fact: &Fact) -> OwnedVariant {
    match fact {
        Fact::Count(n) => OwnedVariant::from(*n),
        Fact::Text(s) => OwnedVariant::try_from(zbus::Variant::from(s.as_str())).expect("strings carry no fds"),
    }
}

pub fn fact_from_value(value: &OwnedVariant) -> Fact {
    match (u64::try_from(value), <&str>::try_from(value)) {
        (Ok(n), _) => Fact::Count(n),
        (_, Ok(s)) => Fact::Text(s.to_owned()),
        _ => Fact::Text(format!("{value:?}")),
    }
}

#[zbus::proxy(
    interface = "org.nodeplane.Node1",
    default_service = "org.nodeplane.Node1",
    default_path = "/org/nodeplane/Node1"
)]
pub trait Node {
    fn reload(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn health(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn components(&self) -> zbus::Result<Vec<ComponentRow>>;
}

#[zbus::proxy(
    interface = "org.nodeplane.Ipam1",
    default_service = "org.nodeplane.Node1",
    default_path = "/org/nodeplane/Node1/ipam"
)]
pub trait Ipam {
    fn sweep(&self, dry_run: bool) -> zbus::Result<Vec<(String, String, String)>>;
}

#[zbus::proxy(
    interface = "org.nodeplane.Datapath1",
    default_service = "org.nodeplane.Node1",
    default_path = "/org/nodeplane/Node1/datapath"
)]
pub trait Datapath {
    #[allow(clippy::too_many_arguments)]
    fn register_endpoint(
        &self,
        container_id: &str,
        netns: &str,
        host_interface: &str,
        ips: &[&str],
        pod_namespace: &str,
        pod_name: &str,
    ) -> zbus::Result<()>;

    fn unregister_endpoint(&self, container_id: &str) -> zbus::Result<()>;

    fn sync(&self) -> zbus::Result<Vec<String>>;

    #[allow(clippy::type_complexity)]
    fn pod_policy(&self, pod: &str) -> zbus::Result<(String, PolicyRows, PolicyRows)>;

    #[zbus(signal)]
    fn policy_drop(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
        reason: &str,
        service: &str,
    ) -> zbus::Result<()>;
}

/// A pod's rules of one direction: isolated, then (peer, ports) rows.
pub type PolicyRows = (bool, Vec<(String, String)>);

#[zbus::proxy(interface = "org.nodeplane.Component1", default_service = "org.nodeplane.Node1")]
pub trait Component {
    #[zbus(property)]
    fn facts(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
}
