//! The D-Bus API of `nodeplaned`, declared once for the server and its clients
//! (`nodeplanectl`, the CNI plugin, the probe):
//!
//! - `org.nodeplane.Node1` at `/org/nodeplane/Node1`: properties `Health` (s),
//!   `Version` (s), `Components` (a(ssst): name, state, detail, last change in µs
//!   since the Unix epoch); methods `Reload()` and `Update(s bundle, u tries) → s`
//!   (root only).
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
//!   protocol, s reason, s service)` ([`PolicyDrop`]), received by root only;
//!   `HealthChecks() → a(ssqu)` the health check ports of this node's
//!   `externalTrafficPolicy: Local` Services ([`HealthCheck`]).
//!
//! Every property emits `PropertiesChanged` when it changes. Errors other than
//! the standard ones are [`NodeError`]s.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use zbus::OwnedVariant;

pub const SERVICE: &str = "org.nodeplane.Node1";
pub const NODE_PATH: &str = "/org/nodeplane/Node1";
pub const DATAPATH_INTERFACE: &str = "org.nodeplane.Datapath1";

/// The errors nodeplaned's methods return besides the standard ones
/// (`AccessDenied` for callers other than root), named
/// `org.nodeplane.Node1.Error.<variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.nodeplane.Node1.Error")]
pub enum NodeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `Reload()`: the file is not a valid config; the running one stays.
    InvalidConfig(String),
    /// `Reload()`: a component refused the new config.
    ReloadFailed(String),
    /// `Sweep()`: the sweep could not run (nothing was freed).
    SweepFailed(String),
    /// `RegisterEndpoint()`, `UnregisterEndpoint()`, `Sync()`.
    EndpointFailed(String),
    /// `PodPolicy()`: no such pod on this node.
    NoSuchPod(String),
    /// `Update()`: the bundle was not written; the next boot is the current slot's.
    UpdateFailed(String),
}

impl From<zbus::fdo::Error> for NodeError {
    fn from(err: zbus::fdo::Error) -> Self {
        NodeError::ZBus(err.into())
    }
}

/// Error names clients tell apart (see [`NodeError`]).
pub const ERROR_INVALID_CONFIG: &str = "org.nodeplane.Node1.Error.InvalidConfig";
pub const ERROR_RELOAD_FAILED: &str = "org.nodeplane.Node1.Error.ReloadFailed";
pub const ERROR_SWEEP_FAILED: &str = "org.nodeplane.Node1.Error.SweepFailed";
pub const ERROR_UPDATE_FAILED: &str = "org.nodeplane.Node1.Error.UpdateFailed";

/// A component's (or the node's) health, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Healthy,
    Starting,
    Degraded,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Starting => "starting",
            State::Degraded => "degraded",
            State::Failed => "failed",
        }
    }

    /// The node's health: the worst of its components' states.
    pub fn of_node(states: impl IntoIterator<Item = State>) -> State {
        states.into_iter().max().unwrap_or(State::Starting)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is none of [`State`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl fmt::Display for UnknownState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown state {:?}", self.0)
    }
}

impl std::error::Error for UnknownState {}

impl FromStr for State {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [State::Healthy, State::Starting, State::Degraded, State::Failed]
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A named figure a component publishes beside its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fact {
    Count(u64),
    Text(String),
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fact::Count(n) => write!(f, "{n}"),
            Fact::Text(s) => f.write_str(s),
        }
    }
}

/// A connection attempt NetworkPolicy dropped, as the `PolicyDrop` signal
/// carries it: client and server (`ns/pod (ip:port)` or `ip:port`), the
/// server's port and protocol, the reason (`egress-…`: the client's policies;
/// `ingress-…`: the server's), and the Service dialled (`vip:port`, or "").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, zbus::zvariant::Type)]
pub struct PolicyDrop {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub reason: String,
    pub service: String,
}

impl PolicyDrop {
    pub const SIGNAL: &'static str = "PolicyDrop";

    /// The match rule for the signal from nodeplaned, to receive it.
    pub fn match_rule() -> zbus::MatchRule<'static> {
        zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SERVICE)
            .interface(DATAPATH_INTERFACE)
            .member(Self::SIGNAL)
            .build()
            .expect("a valid match rule")
    }
}

/// A Service's `healthCheckNodePort` and how many ready endpoints it has on
/// this node: what `nodeplane-health` answers load balancers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, zbus::zvariant::Type)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub local_endpoints: u32,
}

/// Whether `id` is a container id as the CNI specification has them (letters,
/// digits, `_`, `.`, `-`, starting with a letter or digit; at most 200 here),
/// as `RegisterEndpoint` takes them: they are safe file names too.
pub fn valid_container_id(id: &str) -> bool {
    id.len() <= 200
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

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

    fn update(&self, bundle: &str, tries: u32) -> zbus::Result<String>;

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

    fn health_checks(&self) -> zbus::Result<Vec<HealthCheck>>;
}

/// A pod's rules of one direction: isolated, then (peer, ports) rows.
pub type PolicyRows = (bool, Vec<(String, String)>);

#[zbus::proxy(interface = "org.nodeplane.Component1", default_service = "org.nodeplane.Node1")]
pub trait Component {
    #[zbus(property)]
    fn facts(&self) -> zbus::Result<HashMap<String, OwnedVariant>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_clients_match_are_the_errors_the_server_returns() {
        use zbus::DBusError;
        assert_eq!(NodeError::InvalidConfig(String::new()).name().as_str(), ERROR_INVALID_CONFIG);
        assert_eq!(NodeError::ReloadFailed(String::new()).name().as_str(), ERROR_RELOAD_FAILED);
        assert_eq!(NodeError::UpdateFailed(String::new()).name().as_str(), ERROR_UPDATE_FAILED);
        assert_eq!(NodeError::SweepFailed(String::new()).name().as_str(), ERROR_SWEEP_FAILED);
    }

    #[test]
    fn a_policy_drop_is_read_from_the_six_arguments_on_the_wire() {
        let drop = PolicyDrop {
            from: "x/b (10.244.0.3:40000)".into(),
            to: "x/a (10.244.0.2:80)".into(),
            port: 80,
            protocol: "TCP".into(),
            reason: "ingress-denied-peer".into(),
            service: String::new(),
        };
        // As nodeplaned's interface declares and sends it: six arguments.
        let sent = (&drop.from, &drop.to, drop.port, &drop.protocol, &drop.reason, &drop.service);
        let message = zbus::Message::signal(NODE_PATH, DATAPATH_INTERFACE, PolicyDrop::SIGNAL).build(&sent).unwrap();
        assert_eq!(message.body().signature(), <PolicyDrop as zbus::zvariant::Type>::SIGNATURE);
        assert_eq!(message.body().deserialize::<PolicyDrop>().unwrap(), drop);
    }
}
