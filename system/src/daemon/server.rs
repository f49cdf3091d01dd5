//! The D-Bus server of the API `nodeplane-bus` declares: publishes node and
//! component status, emits `PropertiesChanged` as the registry changes, takes
//! `Reload()`, `Update()`, `Sweep()` and the datapath's calls, and sends `PolicyDrop`.

use std::collections::HashMap;

use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot, watch};
use zbus::OwnedVariant;
use zbus::message::Header;
use zbus::{Connection, fdo};

use nodeplane_bus::{self as bus, ComponentRow, HealthCheck, NodeError, PolicyDrop, PolicyRows};
use nodeplane_ipam::Freed;

use super::component::{Registry, Snapshot, Status, node_state};
use super::datapath::{DatapathRequest, Endpoint, EndpointChange, PodPolicy};
use super::ipam::SweepRequest;

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

    /// Writes the update bundle at `bundle` to the slot not booted, with
    /// `tries` boots to prove itself; answers with what was done. Root only.
    /// nodeplaned writes no disk itself (its unit cannot): systemd runs
    /// `nodeplanectl update` as a transient unit, whose output is in its journal.
    async fn update(
        &self,
        bundle: String,
        tries: u32,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<String, NodeError> {
        require_root(connection, &header).await?;
        if !bundle.starts_with('/') || !(1..=9).contains(&tries) {
            return Err(NodeError::UpdateFailed(format!(
                "expected an absolute path and 1 to 9 tries, got {bundle:?} and {tries}"
            )));
        }
        super::update::run(connection, &bundle, tries).await.map_err(NodeError::UpdateFailed)
    }

    #[zbus(property)]
    fn health(&self) -> String {
        node_state(&self.snapshot.borrow()).to_string()
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
            .map_err(|e| NodeError::SweepFailed(e.to_string()))?;
        Ok(FreedRows(report.freed))
    }
}

struct DatapathObject {
    requests: mpsc::Sender<DatapathRequest>,
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

    /// Reads the manifests directory and applies it now, rather than at the next
    /// sync; returns once applied, with the problems found (none: all applied).
    /// Root only.
    async fn sync(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<String>, NodeError> {
        require_root(connection, &header).await?;
        let (reply, answer) = oneshot::channel();
        let request = DatapathRequest::Sync { reply };
        self.requests
            .send(request)
            .await
            .map_err(|_| NodeError::EndpointFailed("the datapath is not running".into()))?;
        answer.await.map_err(|_| NodeError::EndpointFailed("dropped".into()))
    }

    /// What a pod (`namespace/name`) may receive and send, as the maps hold it:
    /// its IP, then ingress and egress, each (isolated, rows of peer and ports).
    async fn pod_policy(&self, pod: String) -> Result<(String, PolicyRows, PolicyRows), NodeError> {
        let (reply, answer) = oneshot::channel();
        let request = DatapathRequest::PodPolicy { pod, reply };
        self.requests.send(request).await.map_err(|_| NodeError::NoSuchPod("the datapath is not running".into()))?;
        let policy: PodPolicy = answer
            .await
            .map_err(|_| NodeError::NoSuchPod("dropped".into()))?
            .map_err(|e| NodeError::NoSuchPod(e.to_string()))?;
        let rows = |rules: Option<Vec<(String, String)>>| (rules.is_some(), rules.unwrap_or_default());
        Ok((policy.ip.to_string(), rows(policy.ingress), rows(policy.egress)))
    }

    /// The health check ports of `externalTrafficPolicy: Local` Services, each
    /// with its ready endpoints on this node ([`HealthCheck`]).
    async fn health_checks(&self) -> Result<Vec<HealthCheck>, NodeError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || NodeError::EndpointFailed("the datapath is not running".into());
        self.requests.send(DatapathRequest::HealthChecks { reply }).await.map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())
    }

    /// A connection attempt NetworkPolicy dropped ([`PolicyDrop`], whose fields
    /// these are, in order: clients receive it as that struct).
    #[zbus(signal)]
    async fn policy_drop(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        from: &str,
        to: &str,
        port: u16,
        protocol: &str,
        reason: &str,
        service: &str,
    ) -> zbus::Result<()>;
}

impl DatapathObject {
    async fn ask(&self, change: EndpointChange) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(DatapathRequest::Endpoint { change, reply })
            .await
            .map_err(|_| NodeError::EndpointFailed("the datapath component is not running".into()))?;
        answer
            .await
            .map_err(|_| NodeError::EndpointFailed("dropped".into()))?
            .map_err(|e| NodeError::EndpointFailed(e.to_string()))
    }
}

/// Serves `org.nodeplane.Datapath1` beside the datapath component's status
/// object, and, when the datapath runs (its maps pinned at `bpffs_root`),
/// forwards its policy drops as `PolicyDrop` signals and to the journal.
pub async fn serve_datapath(
    connection: &Connection,
    requests: mpsc::Sender<DatapathRequest>,
    bpffs_root: Option<std::path::PathBuf>,
) -> zbus::Result<()> {
    let path = bus::component_path("datapath");
    connection.object_server().at(path.as_str(), DatapathObject { requests: requests.clone() }).await?;
    if let Some(root) = bpffs_root {
        let emitter = zbus::object_server::SignalEmitter::new(connection, path)?.into_owned();
        tokio::spawn(async move {
            if let Err(err) = forward_policy_drops(&root, requests, emitter).await {
                tracing::error!("policy drop events stopped: {err}");
            }
        });
    }
    Ok(())
}

/// Why policy drops stopped being forwarded.
#[derive(Debug, thiserror::Error)]
enum DropForwardingError {
    #[error("opening the event ring: {0}")]
    Ring(#[from] nodeplane_datapath::DatapathError),
    #[error("waiting for events: {0}")]
    Poll(std::io::Error),
}

/// Reads the datapath's policy drops as they come, has the datapath component
/// name their pods, and reports them (see [`super::drops`]).
async fn forward_policy_drops(
    root: &std::path::Path,
    requests: mpsc::Sender<DatapathRequest>,
    emitter: zbus::object_server::SignalEmitter<'static>,
) -> Result<(), DropForwardingError> {
    let events = nodeplane_datapath::inspect::policy_events(root)?;
    // SAFETY: the ring's descriptor is its map's, owned by `events`, which the
    // AsyncFd owns until it is dropped; it never changes.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(events, Interest::READABLE) };
    let mut events = registered.map_err(|e| DropForwardingError::Poll(e.into_parts().1))?;
    let mut limiter = super::drops::Limiter::default();
    loop {
        let mut ready = events.readable_mut().await.map_err(DropForwardingError::Poll)?;
        let batch = ready.get_inner_mut().drain();
        ready.clear_ready();
        if batch.is_empty() {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        if requests.send(DatapathRequest::Describe { events: batch, reply }).await.is_err() {
            return Ok(()); // shutting down
        }
        let Ok(drops) = answer.await else { return Ok(()) };
        for drop in drops.iter().filter(|d| limiter.admit(d)) {
            super::drops::log(drop);
            let PolicyDrop { from, to, port, protocol, reason, service } = drop;
            if let Err(err) = DatapathObject::policy_drop(&emitter, from, to, *port, protocol, reason, service).await {
                tracing::warn!("D-Bus: cannot send a PolicyDrop signal: {err}");
            }
        }
    }
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
    if node_state(old) != node_state(new) {
        object.health_changed(emitter).await?;
    }
    let row_changed =
        |(name, s): (&&str, &Status)| old.get(name).is_none_or(|o| o.state != s.state || o.detail != s.detail);
    if new.len() != old.len() || new.iter().any(row_changed) {
        object.components_changed(emitter).await?;
    }
    Ok(())
}
