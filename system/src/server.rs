//! The D-Bus server: publishes node and component status (see [`crate::bus`]),
//! emits `PropertiesChanged` as the registry changes, and takes `Reload()` calls.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot, watch};
use zbus::OwnedVariant;
use zbus::message::Header;
use zbus::{Connection, fdo};

use crate::bus::{self, ComponentRow};
use crate::component::{Registry, Snapshot, State, Status};
use crate::datapath::{Endpoint, EndpointChange, EndpointRequest};
use crate::ipam::SweepRequest;
use nodeplane_ipam::Freed;

/// Why a reload was refused; the running config stays in either case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    InvalidConfig(String),
    Failed(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::InvalidConfig(m) => {
                write!(f, "invalid config, keeping the running one: {m}")
            }
            ReloadError::Failed(m) => write!(f, "reload failed: {m}"),
        }
    }
}

/// A `Reload()` call handed to the supervisor, with the way to answer it.
pub type ReloadRequest = oneshot::Sender<Result<(), ReloadError>>;

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.nodeplane.Node1.Error")]
enum NodeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidConfig(String),
    ReloadFailed(String),
    SweepFailed(String),
    EndpointFailed(String),
}

impl From<fdo::Error> for NodeError {
    fn from(err: fdo::Error) -> Self {
        NodeError::ZBus(err.into())
    }
}

struct NodeObject {
    snapshot: watch::Receiver<Snapshot>,
    reloads: mpsc::Sender<ReloadRequest>,
}

#[zbus::interface(name = "org.nodeplane.Node1")]
impl NodeObject {
    /// Re-reads `node.toml`, validates it and applies it. Root only.
    async fn reload(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), NodeError> {
        require_root(connection, &header).await?;
        let (reply, answer) = oneshot::channel();
        self.reloads
            .send(reply)
            .await
            .map_err(|_| NodeError::ReloadFailed("the supervisor is shutting down".into()))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReloadError::InvalidConfig(m))) => Err(NodeError::InvalidConfig(m)),
            Ok(Err(ReloadError::Failed(m))) => Err(NodeError::ReloadFailed(m)),
            Err(_) => Err(NodeError::ReloadFailed("the supervisor dropped the request".into())),
        }
    }

    #[zbus(property)]
    fn health(&self) -> String {
        State::of_snapshot(&self.snapshot.borrow()).to_string()
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(property)]
    fn components(&self) -> Vec<ComponentRow> {
        self.snapshot
            .borrow()
            .iter()
            .map(|(name, s)| (name.to_string(), s.state.to_string(), s.detail.clone(), bus::to_usec(s.last_change)))
            .collect()
    }
}

struct ComponentObject {
    name: &'static str,
    snapshot: watch::Receiver<Snapshot>,
}

impl ComponentObject {
    fn with<T>(&self, f: impl FnOnce(&Status) -> T) -> T {
        f(&self.snapshot.borrow()[self.name])
    }
}

#[zbus::interface(name = "org.nodeplane.Component1")]
impl ComponentObject {
    #[zbus(property)]
    fn name(&self) -> String {
        self.name.to_owned()
    }

    #[zbus(property)]
    fn state(&self) -> String {
        self.with(|s| s.state.to_string())
    }

    #[zbus(property)]
    fn detail(&self) -> String {
        self.with(|s| s.detail.clone())
    }

    #[zbus(property)]
    fn last_change(&self) -> u64 {
        self.with(|s| bus::to_usec(s.last_change))
    }

    #[zbus(property)]
    fn facts(&self) -> HashMap<String, OwnedVariant> {
        self.with(|s| s.facts.iter().map(|(k, v)| (k.clone(), bus::fact_to_value(v))).collect())
    }
}

/// `Sweep()`'s reply, `a(sss)`: network, IP and owner of each freed reservation,
/// serialized straight from the sweep's report (a sweep on a leaky node can free
/// tens of thousands; no second copy of them is made).
struct FreedRows(Vec<Freed>);

impl zbus::Type for FreedRows {
    const SIGNATURE: &'static zbus::Signature = <Vec<(&str, &str, &str)>>::SIGNATURE;
}

impl serde::Serialize for FreedRows {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut rows = serializer.serialize_seq(Some(self.0.len()))?;
        let mut ip = String::new();
        for freed in &self.0 {
            ip.clear();
            std::fmt::Write::write_fmt(&mut ip, format_args!("{}", freed.ip)).expect("formatting an address");
            rows.serialize_element(&(&*freed.network, ip.as_str(), freed.owner.as_str()))?;
        }
        rows.end()
    }
}

struct IpamObject {
    sweeps: mpsc::Sender<SweepRequest>,
}

#[zbus::interface(name = "org.nodeplane.Ipam1")]
impl IpamObject {
    /// Sweeps now; returns what was freed (with `dry_run`: what would be). Root only.
    async fn sweep(
        &self,
        dry_run: bool,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<FreedRows, NodeError> {
        require_root(connection, &header).await?;
        let (reply, answer) = oneshot::channel();
        self.sweeps
            .send(SweepRequest { dry_run, reply })
            .await
            .map_err(|_| NodeError::SweepFailed("the IPAM component is not running".into()))?;
        let report = answer
            .await
            .map_err(|_| NodeError::SweepFailed("the IPAM component dropped the request".into()))?
            .map_err(NodeError::SweepFailed)?;
        Ok(FreedRows(report.freed))
    }
}

struct DatapathObject {
    requests: mpsc::Sender<EndpointRequest>,
}

#[zbus::interface(name = "org.nodeplane.Datapath1")]
impl DatapathObject {
    /// Registers a pod's endpoint (the CNI plugin's ADD): its interface is attached at once. Root only.
    #[allow(clippy::too_many_arguments)]
    async fn register_endpoint(
        &self,
        container_id: String,
        netns: String,
        host_interface: String,
        ips: Vec<String>,
        pod_namespace: String,
        pod_name: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), NodeError> {
        require_root(connection, &header).await?;
        let endpoint = Endpoint { container_id, netns, host_interface, ips, pod_namespace, pod_name };
        self.ask(EndpointChange::Register(endpoint)).await
    }

    /// Forgets a pod's endpoint (the CNI plugin's DEL). Root only.
    async fn unregister_endpoint(
        &self,
        container_id: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), NodeError> {
        require_root(connection, &header).await?;
        self.ask(EndpointChange::Unregister(container_id)).await
    }
}

impl DatapathObject {
    async fn ask(&self, change: EndpointChange) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(EndpointRequest { change, reply })
            .await
            .map_err(|_| NodeError::EndpointFailed("the datapath component is not running".into()))?;
        answer.await.map_err(|_| NodeError::EndpointFailed("dropped".into()))?.map_err(NodeError::EndpointFailed)
    }
}

/// Serves `org.nodeplane.Datapath1` beside the datapath component's status object.
pub async fn serve_datapath(connection: &Connection, requests: mpsc::Sender<EndpointRequest>) -> zbus::Result<()> {
    connection.object_server().at(bus::component_path("datapath"), DatapathObject { requests }).await?;
    Ok(())
}

/// Serves `org.nodeplane.Ipam1` beside the IPAM component's status object.
pub async fn serve_ipam(connection: &Connection, sweeps: mpsc::Sender<SweepRequest>) -> zbus::Result<()> {
    connection.object_server().at(bus::component_path("ipam"), IpamObject { sweeps }).await?;
    Ok(())
}

/// Refuses callers other than root: the bus policy already should, this makes sure.
async fn require_root(connection: &Connection, header: &Header<'_>) -> Result<(), NodeError> {
    let sender = header.sender().ok_or_else(|| fdo::Error::AccessDenied("caller has no bus name".into()))?;
    let uid = fdo::DBusProxy::new(connection).await?.get_connection_unix_user(sender.clone().into()).await?;
    if uid != 0 {
        let member = header.member().map_or("this method".to_owned(), |m| format!("{m}()"));
        return Err(fdo::Error::AccessDenied(format!("{member} is for root only (caller uid {uid})")).into());
    }
    Ok(())
}

/// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` overrides its address),
/// serves the node object, takes the well-known name and keeps publishing changes.
pub async fn serve(registry: &Registry, reloads: mpsc::Sender<ReloadRequest>) -> zbus::Result<Connection> {
    let node = NodeObject { snapshot: registry.subscribe(), reloads };
    let connection = zbus::connection::Builder::system().serve_at(bus::NODE_PATH, node).build().await?;
    connection.request_name(bus::SERVICE).await?;
    tokio::spawn(publish(connection.clone(), registry.subscribe()));
    Ok(connection)
}

/// Serves an object for every registered component that has none yet, so that
/// they exist before READY=1 tells clients to look.
pub async fn add_component_objects(connection: &Connection, registry: &Registry) -> zbus::Result<()> {
    let changes = registry.subscribe();
    for name in registry.snapshot().into_keys() {
        let object = ComponentObject { name, snapshot: changes.clone() };
        connection.object_server().at(bus::component_path(name), object).await?;
    }
    Ok(())
}

/// Serves an object per component and emits `PropertiesChanged` for what changed.
async fn publish(connection: Connection, mut changes: watch::Receiver<Snapshot>) {
    let mut published = Snapshot::new();
    loop {
        let snapshot = changes.borrow_and_update().clone();
        match emit_changes(&connection, &published, &snapshot, &changes).await {
            Ok(()) => published = snapshot,
            // Compared against the last published state again at the next change.
            Err(err) => tracing::warn!("D-Bus: cannot publish a status change: {err}"),
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn emit_changes(
    connection: &Connection,
    old: &Snapshot,
    new: &Snapshot,
    changes: &watch::Receiver<Snapshot>,
) -> zbus::Result<()> {
    let server = connection.object_server();
    for (name, status) in new {
        let path = bus::component_path(name);
        let Some(before) = old.get(name) else {
            // Already there if it was added before READY; `at` then does nothing.
            server.at(path, ComponentObject { name, snapshot: changes.clone() }).await?;
            continue;
        };
        let iface = server.interface::<_, ComponentObject>(path).await?;
        let (object, emitter) = (iface.get().await, iface.signal_emitter());
        if before.state != status.state {
            object.state_changed(emitter).await?;
        }
        if before.detail != status.detail {
            object.detail_changed(emitter).await?;
        }
        if before.last_change != status.last_change {
            object.last_change_changed(emitter).await?;
        }
        if before.facts != status.facts {
            object.facts_changed(emitter).await?;
        }
    }
    let node = server.interface::<_, NodeObject>(bus::NODE_PATH).await?;
    let (object, emitter) = (node.get().await, node.signal_emitter());
    if State::of_snapshot(old) != State::of_snapshot(new) {
        object.health_changed(emitter).await?;
    }
    let row_changed =
        |(name, s): (&&str, &Status)| old.get(name).is_none_or(|o| o.state != s.state || o.detail != s.detail);
    if new.len() != old.len() || new.iter().any(row_changed) {
        object.components_changed(emitter).await?;
    }
    Ok(())
}
