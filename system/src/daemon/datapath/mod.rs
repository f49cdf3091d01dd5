//! The eBPF datapath as a supervisor component: loads it at start (READY waits),
//! attaches it to pod interfaces as they appear, applies its source whenever
//! it changes — Services, and NetworkPolicies for the registered pods —
//! collects expired conntrack entries, routes to the other nodes' pods (from
//! the API source's Nodes; [`routes`]), and reports fill levels, sync times
//! and counters. The source is the cluster's API server on a node with a
//! `[kubernetes]` section (see [`api`]), else the manifests directory.

mod api;
mod endpoints;
mod interfaces;
mod manifests;
mod policy;
mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use nodeplane_bus::{HealthCheck, PolicyDrop};
use nodeplane_datapath::{
    Capacities, Collector, Datapath, DatapathError, GcStats, MapUsage, PodAt, Reconciler, SyncStats,
};
use nodeplane_datapath_abi::{self as abi, PolicyEvent};
use nodeplane_model::compile::CompiledPolicy;
use nodeplane_model::manifests::ServicePort;
use nodeplane_model::services::by_service;

use super::component::{Component, Fact, Facts, Reporter, State};
use super::metrics::Timing;
use crate::config::{DatapathConfig, KubernetesConfig, NodeConfig, Routing};
use crate::masquerade;
use api::ApiSource;
pub use endpoints::Endpoint;
use endpoints::{EndpointStore, StoreError, check_container_id};
use manifests::ManifestSource;
use policy::PolicyState;
pub use policy::{PodPolicy, PodPolicyError};

pub struct DatapathComponent {
    config: DatapathConfig,
    /// `[sysctl] nodeport_range`: masquerade keeps its source ports clear of it.
    nodeports: (u16, u16),
    reporter: Reporter,
    /// The cluster to follow; the manifests directory without one.
    kubernetes: Option<KubernetesConfig>,
    running: Option<Running>,
    /// Pods registered by the CNI plugin, by container id; stored, so a restart
    /// keeps them.
    endpoints: BTreeMap<String, Endpoint>,
}

/// A loaded datapath and what it was last told.
struct Running {
    datapath: Datapath,
    /// Netlink to this namespace: its interfaces and addresses.
    netlink: rtnetlink::Handle,
    /// The registered pods' host-side interfaces: container id → ifindex and
    /// the pod's network namespace id.
    interfaces: BTreeMap<String, (u32, Option<u32>)>,
    store: EndpointStore,
    reconciler: Reconciler,
    /// What the source said last (the manifests directory's, or the API's).
    manifests: ManifestSource,
    api: Option<ApiSource>,
    last_sync: Option<(SystemTime, Duration, SyncStats)>,
    policy: PolicyState,
    gc: Gc,
    /// The conntrack map's capacity as loaded.
    conntrack_capacity: u32,
    /// Each map's capacity, fill and memory, as the last count found them.
    maps: Vec<MapUsage>,
    /// The count under way: walking large maps takes a syscall an entry, so
    /// it runs off the supervisor's thread (after the first sync and after
    /// each GC pass).
    map_count: Option<tokio::task::JoinHandle<Vec<MapUsage>>>,
    /// The other nodes, once the API source has listed them (until then the
    /// routes a previous nodeplaned wrote stay), and the routes to their pods
    /// (none: to be written).
    remote_nodes: Option<Vec<routes::RemoteNode>>,
    /// The routing setting and pod CIDR they were written for, and what the
    /// last pass left.
    routes: Option<((Routing, Option<String>), routes::RouteSync)>,
    /// The health check ports of the Services programmed, by Service key.
    health_checks: BTreeMap<String, HealthCheck>,
    /// The masquerade rules installed last (`Some(None)`: none, removed).
    masquerade: Option<Option<masquerade::Masquerade>>,
    problems: Problems,
}

/// Conntrack garbage collection: a pass every `gc_interval`, done in steps of
/// at most [`GC_STEP`] per sync, so a large map never holds up the supervisor.
struct Gc {
    /// When the last pass ended.
    last: Instant,
    collector: Collector,
    /// A pass is under way.
    running: bool,
    expired_total: u64,
    last_stats: GcStats,
}

/// The longest a sync spends collecting garbage.
const GC_STEP: Duration = Duration::from_millis(20);

/// What keeps the component degraded, by where it came from (the manifests'
/// and the policy maps' own are in [`ManifestSource`] and [`PolicyState`]).
#[derive(Default)]
struct Problems {
    /// Listing or attaching to interfaces.
    interfaces: Vec<String>,
    /// Stored pod registrations that could not be read, or forgotten.
    store: Vec<String>,
    /// Service ports that could not be programmed or removed.
    services: Vec<String>,
    gc: Option<String>,
    /// IPv4 forwarding could not be turned on.
    forwarding: Option<String>,
    /// Socket load balancing could not be set up.
    node_setup: Vec<String>,
    /// The masquerade rules could not be installed or removed.
    masquerade: Option<String>,
    /// Routes to other nodes' pods that could not be written or removed.
    routes: Vec<String>,
}

/// Why the datapath component could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum DatapathComponentError {
    #[error("cannot create {path}: {source}")]
    PinDirectory { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot load the datapath with its maps pinned in {root} (a bpffs?): {source}")]
    Load { root: std::path::PathBuf, source: DatapathError },
    #[error("loading the datapath stopped: {0}")]
    LoadTask(#[from] tokio::task::JoinError),
    #[error("setting the hairpin address: {0}")]
    Hairpin(DatapathError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a netlink socket: {0}")]
    Netlink(std::io::Error),
    #[error("limiting the flows per pod: {0}")]
    FlowsPerPod(DatapathError),
    #[error("sizing the maps: reading the node's memory: {0}")]
    Memory(std::io::Error),
}

/// Why a pod could not be registered or unregistered. A registration that
/// fails leaves nothing behind, and fails the CNI ADD that asked for it.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("the datapath is disabled on this node")]
    Disabled,
    #[error("invalid pod address {0:?}: an IPv4 address, as 10.244.1.7")]
    InvalidAddress(String),
    #[error("a pod needs exactly one IPv4 address, not {0}")]
    AddressCount(usize),
    #[error("the pod's interface {interface}: {reason}")]
    Interface { interface: String, reason: String },
    #[error("attaching to {interface}: {source}")]
    Attach { interface: String, source: Box<DatapathError> },
    #[error("the pod's address on {interface}: {source}")]
    PodInterfaces { interface: String, source: Box<DatapathError> },
    #[error("the pod's NetworkPolicies could not be put in force: {0}")]
    Policy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Component for DatapathComponent {
    const NAME: &'static str = "datapath";
    type Error = DatapathComponentError;

    async fn start(config: &NodeConfig, reporter: Reporter) -> Result<Self, DatapathComponentError> {
        let nodeports = (config.sysctl.nodeport_range.start(), config.sysctl.nodeport_range.end());
        let kubernetes = config.kubernetes.clone();
        let config = config.datapath.clone();
        let mut component =
            DatapathComponent { config, nodeports, reporter, kubernetes, running: None, endpoints: Default::default() };
        if !component.config.enabled {
            component.reporter.set(State::Healthy, "disabled (datapath.enabled = false)");
            return Ok(component);
        }
        let root = component.config.bpffs_root.clone();
        std::fs::create_dir_all(&root)
            .map_err(|source| DatapathComponentError::PinDirectory { path: root.clone(), source })?;
        let (capacities, memory) =
            Capacities::for_node(&component.config.maps).map_err(DatapathComponentError::Memory)?;
        let sizes: Vec<String> = capacities.iter().map(|(map, entries)| format!("{map} {entries}")).collect();
        tracing::info!("map capacities for {} MiB of memory: {}", memory >> 20, sizes.join(", "));
        // Seconds of CPU under emulation (map allocation, the verifier): off the
        // runtime's thread, so the bus connection goes on meanwhile.
        let (pins, attach) = (root.clone(), component.config.attach);
        let loaded = tokio::task::spawn_blocking(move || Datapath::load_with(&pins, attach, &capacities)).await?;
        let mut datapath = loaded.map_err(|source| DatapathComponentError::Load { root, source })?;
        datapath.set_hairpin_address(component.config.hairpin_address).map_err(DatapathComponentError::Hairpin)?;
        for change in datapath.recreated_maps() {
            tracing::warn!("pinned map of an older layout replaced, its entries are lost: {change}");
        }
        for kept in datapath.kept_sizes() {
            tracing::warn!("pinned map kept at its size: {kept}");
        }
        let conntrack_capacity = datapath.capacity(abi::CONNTRACK).map_err(DatapathComponentError::FlowsPerPod)?;
        Self::apply_flows_per_pod(&component.config, &mut datapath, conntrack_capacity)
            .map_err(DatapathComponentError::FlowsPerPod)?;
        let store = EndpointStore::open(&component.config.state_dir)?;
        let (endpoints, unreadable) = store.load();
        for problem in &unreadable {
            tracing::warn!("stored pod registration skipped: {problem}");
        }
        component.endpoints = endpoints;
        component.running = Some(Running {
            datapath,
            netlink: crate::netlink::connect().map_err(DatapathComponentError::Netlink)?,
            interfaces: BTreeMap::new(),
            store,
            reconciler: Reconciler::default(),
            manifests: ManifestSource::default(),
            api: component.kubernetes.as_ref().map(ApiSource::start),
            last_sync: None,
            policy: PolicyState::default(),
            gc: Gc {
                last: Instant::now(),
                collector: Collector::default(),
                running: false,
                expired_total: 0,
                last_stats: GcStats::default(),
            },
            conntrack_capacity,
            maps: Vec::new(),
            map_count: None,
            remote_nodes: None,
            routes: None,
            health_checks: BTreeMap::new(),
            masquerade: None,
            problems: Problems { store: unreadable, ..Problems::default() },
        });
        component.apply_node_setup();
        component.sync(true).await;
        // What the first sync programmed, counted before the first GC pass.
        if let Some(running) = &mut component.running {
            running.map_count = Some(count_maps(&component.config.bpffs_root, 0));
        }
        Ok(component)
    }

    async fn reload(&mut self, config: &NodeConfig) -> Result<(), DatapathComponentError> {
        let mut new = config.datapath.clone();
        if new.enabled != self.config.enabled
            || new.bpffs_root != self.config.bpffs_root
            || new.attach != self.config.attach
            || new.maps != self.config.maps
        {
            tracing::warn!(
                "datapath.enabled, bpffs_root, attach and maps take effect at the next start; keeping the running ones"
            );
            (new.enabled, new.bpffs_root, new.attach, new.maps) =
                (self.config.enabled, self.config.bpffs_root.clone(), self.config.attach, self.config.maps.clone());
        }
        self.config = new;
        self.nodeports = (config.sysctl.nodeport_range.start(), config.sysctl.nodeport_range.end());
        if config.kubernetes != self.kubernetes {
            self.kubernetes = config.kubernetes.clone();
            if let Some(running) = &mut self.running {
                // The new source's first full list replaces what the old one gave.
                running.api = self.kubernetes.as_ref().map(ApiSource::start);
            }
        }
        if let Some(running) = &mut self.running {
            running
                .datapath
                .set_hairpin_address(self.config.hairpin_address)
                .map_err(DatapathComponentError::Hairpin)?;
            let capacity = running.conntrack_capacity;
            Self::apply_flows_per_pod(&self.config, &mut running.datapath, capacity)
                .map_err(DatapathComponentError::FlowsPerPod)?;
        }
        self.apply_node_setup();
        self.sync(true).await;
        Ok(())
    }

    fn interval(&self) -> Option<Duration> {
        self.running.is_some().then_some(self.config.sync_interval)
    }

    async fn tick(&mut self) {
        self.sync(false).await;
    }

    async fn woken(&mut self) {
        match self.running.as_mut().and_then(|r| r.api.as_mut()) {
            Some(api) => api.changed().await,
            None => std::future::pending().await,
        }
    }

    type Command = DatapathRequest;

    async fn command(&mut self, request: DatapathRequest) {
        match request {
            DatapathRequest::Endpoint { change, reply } => {
                let result = match change {
                    EndpointChange::Register(endpoint) => self.register(endpoint).await,
                    EndpointChange::Unregister(container_id) => self.unregister(&container_id),
                };
                self.publish();
                let _ = reply.send(result);
            }
            DatapathRequest::Sync { reply } => {
                self.sync(true).await;
                let problems = self.running.as_ref().map(Running::sync_problems).unwrap_or_default();
                let _ = reply.send(problems);
            }
            DatapathRequest::PodPolicy { pod, reply } => {
                let answer = match &self.running {
                    Some(running) => running.policy.pod_policy(&self.endpoints, &pod),
                    None => Err(PodPolicyError::Disabled),
                };
                let _ = reply.send(answer);
            }
            DatapathRequest::Describe { events, reply } => {
                let _ = reply.send(events.iter().map(|e| policy::describe(&self.endpoints, e)).collect());
            }
            DatapathRequest::HealthChecks { reply } => {
                let checks = self.running.as_ref().map(|r| r.health_checks.values().cloned().collect());
                let _ = reply.send(checks.unwrap_or_default());
            }
        }
    }
}

pub enum EndpointChange {
    Register(Endpoint),
    Unregister(String),
}

type Reply<T> = tokio::sync::oneshot::Sender<T>;

/// What D-Bus asks of the datapath component, with the way to answer.
pub enum DatapathRequest {
    /// A registration (the CNI plugin).
    Endpoint { change: EndpointChange, reply: Reply<Result<(), EndpointError>> },
    /// Read the source and apply it now; answers with its problems.
    Sync { reply: Reply<Vec<String>> },
    /// What a pod (`namespace/name`) may send and receive.
    PodPolicy { pod: String, reply: Reply<Result<PodPolicy, PodPolicyError>> },
    /// Policy drops, told in pod names where the addresses are pods'.
    Describe { events: Vec<PolicyEvent>, reply: Reply<Vec<PolicyDrop>> },
    /// The health check ports of the Services programmed.
    HealthChecks { reply: Reply<Vec<HealthCheck>> },
}

impl Running {
    /// What `Sync()` answers: the manifests' problems and the Service ports
    /// that could not be programmed.
    fn sync_problems(&self) -> Vec<String> {
        self.manifests.errors.iter().chain(&self.problems.services).cloned().collect()
    }

    /// Every problem, the manifests' first (the status line shows the first).
    fn problems(&self) -> Vec<String> {
        let p = &self.problems;
        let api = self.api.as_ref().map(ApiSource::problems).unwrap_or_default();
        api.iter()
            .chain(&self.manifests.errors)
            .chain(&p.services)
            .chain(&p.store)
            .chain(&p.interfaces)
            .chain(&p.gc)
            .chain(&p.forwarding)
            .chain(&p.node_setup)
            .chain(&p.masquerade)
            .chain(&p.routes)
            .chain(&self.policy.error)
            .cloned()
            .collect()
    }

    /// Whether the NetworkPolicies in force are the source's: the API's only
    /// once it has been listed in full. Until then nothing changes them, and
    /// no pod is registered (its CNI ADD fails, to be tried again): a pod never
    /// runs without the policies meant for it.
    fn policies_known(&self) -> bool {
        self.api.as_ref().is_none_or(ApiSource::synced)
    }
}

impl DatapathComponent {
    /// Limits each pod's flows in a conntrack map of `capacity` entries, saying
    /// so when the setting asks for more than half of it.
    fn apply_flows_per_pod(
        config: &DatapathConfig,
        datapath: &mut Datapath,
        capacity: u32,
    ) -> Result<(), DatapathError> {
        let (flows, lowered) = config.flows_per_pod(capacity);
        if lowered {
            tracing::warn!(
                "datapath.conntrack_flows_per_pod is more than half of the {capacity}-entry conntrack's flows: {flows} applies"
            );
        }
        datapath.set_flows_per_pod(flows)
    }

    /// Attaches the pod's interface at once (not at the next sync), binds it to
    /// the pod's address, records the pod and puts its policies in force, or
    /// undoes all of it and says why: a pod never runs unprotected.
    async fn register(&mut self, endpoint: Endpoint) -> Result<(), EndpointError> {
        check_container_id(&endpoint.container_id)?;
        if endpoint.ips.len() != 1 {
            return Err(EndpointError::AddressCount(endpoint.ips.len()));
        }
        let address: Ipv4Addr =
            endpoint.ips[0].parse().map_err(|_| EndpointError::InvalidAddress(endpoint.ips[0].clone()))?;
        let Some(running) = &mut self.running else { return Err(EndpointError::Disabled) };
        if !running.policies_known() {
            return Err(EndpointError::Policy(
                "the NetworkPolicies are not known yet: the API server has not been listed in full".into(),
            ));
        }
        let interface = endpoint.host_interface.clone();
        let link = match crate::netlink::link(&running.netlink, &interface).await {
            Ok(Some(link)) => (link.header.index, crate::netlink::netns_id(&link)),
            Ok(None) => return Err(EndpointError::Interface { interface, reason: "no such interface".into() }),
            Err(err) => return Err(EndpointError::Interface { interface, reason: err.to_string() }),
        };
        running
            .datapath
            .attach_pod_interface(&interface)
            .map_err(|e| EndpointError::Attach { interface: interface.clone(), source: Box::new(e) })?;
        let previous = self.endpoints.insert(endpoint.container_id.clone(), endpoint.clone());
        running.interfaces.insert(endpoint.container_id.clone(), link);
        let bound = running.bind_pod_interfaces(&self.endpoints);
        running.policy.apply(&mut running.datapath, &self.endpoints, &running.manifests);
        let result = match (bound, running.policy.error.clone()) {
            (Err(e), _) => Err(EndpointError::PodInterfaces { interface: interface.clone(), source: Box::new(e) }),
            (Ok(()), Some(error)) => Err(EndpointError::Policy(error)),
            (Ok(()), None) => running.store.save(&endpoint).map_err(EndpointError::from),
        };
        if let Err(err) = &result {
            tracing::error!("pod {}/{} refused: {err}", endpoint.pod_namespace, endpoint.pod_name);
            match previous {
                Some(previous) => self.endpoints.insert(endpoint.container_id.clone(), previous),
                None => self.endpoints.remove(&endpoint.container_id),
            };
            running.interfaces.remove(&endpoint.container_id);
            let _ = running.bind_pod_interfaces(&self.endpoints);
            running.policy.apply(&mut running.datapath, &self.endpoints, &running.manifests);
            return result;
        }
        tracing::info!(
            datapath_pod = %format!("{}/{}", endpoint.pod_namespace, endpoint.pod_name),
            datapath_interface = %endpoint.host_interface,
            "pod {}/{} registered on {} ({address})", endpoint.pod_namespace, endpoint.pod_name, endpoint.host_interface
        );
        Ok(())
    }

    fn unregister(&mut self, container_id: &str) -> Result<(), EndpointError> {
        check_container_id(container_id)?;
        if let Some(running) = &self.running {
            running.store.remove(container_id)?;
        }
        self.endpoints.remove(container_id);
        if let Some(running) = &mut self.running {
            running.interfaces.remove(container_id);
            if let Err(err) = running.bind_pod_interfaces(&self.endpoints) {
                running.problems.interfaces.push(format!("the pods' interfaces: {err}"));
            }
            if running.policies_known() {
                running.policy.apply(&mut running.datapath, &self.endpoints, &running.manifests);
            }
        }
        Ok(())
    }

    /// Sets up (or removes) what the config asks for beyond pod interfaces:
    /// socket load balancing for the node's processes, and masquerade.
    fn apply_node_setup(&mut self) {
        self.apply_masquerade();
        let Some(running) = &mut self.running else { return };
        let problems = &mut running.problems.node_setup;
        problems.clear();
        let socket_lb = if self.config.socket_lb {
            running.datapath.attach_cgroup(&self.config.socket_lb_cgroup)
        } else {
            running.datapath.detach_cgroup()
        };
        if let Err(err) = socket_lb {
            tracing::error!("socket load balancing: {err}");
            problems.push(format!("socket load balancing: {err}"));
        }
    }

    /// Installs the masquerade rules the config asks for, the other nodes' pod
    /// CIDRs among the destinations kept un-masqueraded (pods reach every pod
    /// with their own addresses), when they differ from those installed.
    fn apply_masquerade(&mut self) {
        let Some(running) = &mut self.running else { return };
        let cluster: Vec<String> = running
            .remote_nodes
            .iter()
            .flatten()
            .map(|node| format!("{}/{}", node.pod_cidr.0, node.pod_cidr.1))
            .collect();
        let rules = self.config.masquerade_rules(self.nodeports, &cluster);
        if running.masquerade.as_ref() == Some(&rules) {
            return;
        }
        let result = match &rules {
            Some(rules) => rules.apply().map(|()| {
                tracing::info!(
                    "masquerading {} beyond {} CIDR(s), source ports {}-{}",
                    rules.pod_cidr,
                    rules.non_masquerade.len(),
                    rules.ports.0,
                    rules.ports.1
                )
            }),
            None => masquerade::remove(),
        };
        running.problems.masquerade = result.as_ref().err().map(|err| format!("masquerade: {err}"));
        match result {
            Ok(()) => running.masquerade = Some(rules),
            Err(err) => {
                tracing::error!("masquerade: {err}");
                running.masquerade = None;
            }
        }
    }

    /// Attaches new pod interfaces, applies changed manifests (or all, `force`d),
    /// collects expired conntrack entries when due, and publishes the result.
    async fn sync(&mut self, force: bool) {
        let Some(running) = &mut self.running else { return };
        let pods_before = self.endpoints.len();
        running.follow_interfaces(&self.config, &mut self.endpoints).await;
        let mut policy_inputs_changed = self.endpoints.len() != pods_before;
        if let Some(api) = &mut running.api {
            // A reconciler that does not know what the maps hold is given everything.
            if let Some(read) = api.read(force || !running.reconciler.in_sync()) {
                running.manifests.take_errors(&read.errors, read.policies_incomplete, "the API server's objects");
                if let Some(found) = read.policy {
                    policy_inputs_changed = true;
                    running.manifests.take_policy_inputs(found);
                }
                if let Some(nodes) = read.nodes {
                    running.remote_nodes = Some(nodes);
                    running.routes = None;
                }
                // Until the maps take them, everything is read again at the next sync.
                let programmed =
                    running.program_services(&read.services, read.everything, &self.config, &self.reporter);
                let api = running.api.as_mut().expect("followed");
                if !programmed {
                    api.retry();
                } else if let Some(delay) = api.applied() {
                    self.reporter.observe(Timing::ApiEventToMap, delay);
                }
            }
        } else if let Some(changed) = running.manifests.read(&self.config.manifests_dir, force) {
            policy_inputs_changed = true;
            // Until the maps take them, the same files are read again at each sync.
            if running.program_services(&by_service(changed.ports), true, &self.config, &self.reporter) {
                running.manifests.applied(changed.fingerprint);
            }
        }
        // Again at each sync while a route fails (its next hop may not be
        // reachable yet), and when the routing setting or the pod CIDR changed.
        let routing = (self.config.routing, self.config.pod_cidr.clone());
        if running.remote_nodes.is_some()
            && (running.routes.as_ref().is_none_or(|(done, _)| *done != routing) || !running.problems.routes.is_empty())
        {
            running.sync_routes(routing).await;
        }
        running.ensure_forwarding();
        if running.gc.running || running.gc.last.elapsed() >= self.config.gc_interval {
            running.collect_garbage(&self.config);
        }
        if let Some(done) = running.map_count.take_if(|count| count.is_finished()) {
            running.maps = done.await.unwrap_or_default();
        }
        if (policy_inputs_changed || running.policy.error.is_some()) && running.policies_known() {
            running.policy.apply(&mut running.datapath, &self.endpoints, &running.manifests);
        }
        // Follows the other nodes' pod CIDRs; installs nothing while the rules
        // stand, and tries again after a failure.
        self.apply_masquerade();
        self.publish();
    }

    fn publish(&mut self) {
        let Some(running) = &mut self.running else { return };
        let mut facts = Facts::new();
        let (ports, backends) = running.reconciler.counts(&mut running.datapath.services()).unwrap_or_default();
        facts.insert("services".into(), Fact::Count(ports));
        facts.insert("endpoints".into(), Fact::Count(backends));
        // Counted by the last GC pass: walking the whole map every sync would cost more than it tells.
        let entries = running.gc.last_stats.entries.saturating_sub(running.gc.last_stats.expired);
        facts.insert("conntrack_entries".into(), Fact::Count(entries));
        let capacity = running.conntrack_capacity;
        facts.insert("conntrack_capacity".into(), Fact::Count(capacity.into()));
        facts.insert("conntrack_expired_total".into(), Fact::Count(running.gc.expired_total));
        let (flows_per_pod, _) = self.config.flows_per_pod(capacity);
        facts.insert("conntrack_flows_per_pod".into(), Fact::Count(flows_per_pod.into()));
        for map in &running.maps {
            let entries = map.entries.map_or_else(|| "-".to_owned(), |e| e.to_string());
            // No spaces: status prints the facts on one line, split by them.
            let memory = format!("{:.1}MiB", map.bytes as f64 / f64::from(1 << 20));
            facts.insert(format!("map_{}", map.name), Fact::Text(format!("{entries}/{},{memory}", map.capacity)));
            if map.name == abi::CONNTRACK {
                facts.insert("conntrack_memory_bytes".into(), Fact::Count(map.bytes));
            }
        }
        facts.insert("maps_memory_bytes".into(), Fact::Count(running.maps.iter().map(|m| m.bytes).sum()));
        // The pod holding the most flows, with how many: who to look at when it fills.
        if let Some((pod, flows)) = running.gc.last_stats.flows_by_pod.iter().max_by_key(|(_, flows)| **flows) {
            let name = policy::pod_name(&self.endpoints, *pod).unwrap_or_else(|| pod.to_string());
            facts.insert("conntrack_most_flows".into(), Fact::Text(format!("{name} {flows}")));
        }
        let attached = running.datapath.attached_interfaces().unwrap_or_default();
        facts.insert("attached_interfaces".into(), Fact::Count(attached.len() as u64));
        facts.insert("registered_pods".into(), Fact::Count(self.endpoints.len() as u64));
        facts.insert("manifest_errors".into(), Fact::Count(running.manifests.errors.len() as u64));
        if let Some((at, took, _)) = &running.last_sync {
            facts.insert("last_sync".into(), Fact::Text(humantime::format_rfc3339_seconds(*at).to_string()));
            facts.insert("last_sync_ms".into(), Fact::Count(took.as_millis() as u64));
        }
        for (name, value) in running.datapath.counters().unwrap_or_default() {
            facts.insert(format!("count_{name}"), Fact::Count(value));
        }
        facts.insert("policies".into(), Fact::Count(running.manifests.policies.len() as u64));
        let compiled = running.policy.compiled.as_ref();
        facts.insert("policy_rules".into(), Fact::Count(compiled.map_or(0, CompiledPolicy::rule_count) as u64));
        let isolated =
            compiled.map_or(0, |c| c.pods.values().filter(|p| p.ingress.is_some() || p.egress.is_some()).count());
        facts.insert("policy_isolated_pods".into(), Fact::Count(isolated as u64));
        if let Some(api) = &running.api {
            facts.extend(api.facts());
        }
        if let (Some(nodes), Some((_, routes))) = (&running.remote_nodes, &running.routes) {
            facts.insert("remote_nodes".into(), Fact::Count(nodes.len() as u64));
            facts.insert("node_routes".into(), Fact::Count(routes.routes.len() as u64));
            let by_node = nodes.iter().filter(|n| routes.routes.get(&n.pod_cidr) == Some(&n.address));
            let text: Vec<String> =
                by_node.map(|n| format!("{}/{} via {} ({})", n.pod_cidr.0, n.pod_cidr.1, n.address, n.name)).collect();
            facts.insert("node_routes_to".into(), Fact::Text(text.join(", ")));
        }
        let problems = running.problems();
        let (state, detail) = match problems.first() {
            Some(first) => (State::Degraded, format!("{} problem(s): {first}", problems.len())),
            None => (
                State::Healthy,
                format!(
                    "{} Service port(s), {} pod interface(s), {} NetworkPolicy object(s), conntrack {entries}/{capacity}",
                    ports,
                    attached.len(),
                    running.manifests.policies.len()
                ),
            ),
        };
        self.reporter.set(state, detail);
        self.reporter.set_facts(facts);
    }
}

impl Running {
    /// Attaches to new pod interfaces (and the node's), forgets the records of
    /// gone ones, and the pods whose interface is gone (deleted while
    /// nodeplaned was down, or without a CNI DEL).
    async fn follow_interfaces(&mut self, config: &DatapathConfig, endpoints: &mut BTreeMap<String, Endpoint>) {
        let (links, node_if) = match interfaces::interfaces(&self.netlink, config.node_ip).await {
            Ok(found) => found,
            Err(err) => {
                self.problems.interfaces = vec![format!("listing interfaces: {err}")];
                return;
            }
        };
        let present: BTreeSet<String> = links.values().map(|l| l.name.clone()).collect();
        // The node's interface, and those the routes to other nodes go out of.
        let route_ifs = self.routes.iter().flat_map(|(_, r)| &r.interfaces).filter_map(|index| links.get(index));
        let uplinks: BTreeSet<String> = node_if.into_iter().chain(route_ifs.map(|l| l.name.clone())).collect();
        self.problems.interfaces =
            interfaces::attach_interfaces(&mut self.datapath, &present, &config.pod_interface_prefix, &uplinks);
        self.problems.store.clear();
        endpoints.retain(|id, endpoint| {
            let here = present.contains(&endpoint.host_interface);
            if !here {
                tracing::info!(
                    "pod {}/{} is gone with {}",
                    endpoint.pod_namespace,
                    endpoint.pod_name,
                    endpoint.host_interface
                );
                if let Err(err) = self.store.remove(id) {
                    self.problems.store.push(err.to_string());
                }
            }
            here
        });
        // Each pod's interface by its current index (a restart knows none yet).
        let index: BTreeMap<&String, (u32, Option<u32>)> =
            links.iter().map(|(index, link)| (&link.name, (*index, link.netns_id))).collect();
        self.interfaces = endpoints
            .iter()
            .filter_map(|(id, endpoint)| Some((id.clone(), *index.get(&endpoint.host_interface)?)))
            .collect();
        if let Err(err) = self.bind_pod_interfaces(endpoints) {
            self.problems.interfaces.push(format!("the pods' interfaces: {err}"));
        }
    }

    /// Binds each registered pod's interface to its address (np_pod_ifaces):
    /// the datapath lets a pod send from that address only, and looks its
    /// sockets up in its network namespace.
    fn bind_pod_interfaces(&mut self, endpoints: &BTreeMap<String, Endpoint>) -> Result<(), DatapathError> {
        let wanted: BTreeMap<u32, PodAt> = endpoints
            .iter()
            .filter_map(|(id, endpoint)| {
                let (ifindex, netns_id) = *self.interfaces.get(id)?;
                let addr = endpoint.ips.iter().find_map(|ip| ip.parse().ok())?;
                Some((ifindex, PodAt { addr, netns_id }))
            })
            .collect();
        self.datapath.pod_interfaces().set(&wanted)
    }

    /// Makes the routes to other nodes' pods those the API source knows, the
    /// way `routing` says (with this node's pod CIDR).
    async fn sync_routes(&mut self, routing: (Routing, Option<String>)) {
        let Some(nodes) = &self.remote_nodes else { return };
        let own = routing.1.as_deref().and_then(routes::parse_cidr);
        match routes::sync(&self.netlink, nodes, routing.0, own).await {
            Ok(result) => {
                for failure in result.failed.iter().filter(|f| !self.problems.routes.contains(f)) {
                    tracing::error!("{failure}");
                }
                if result.added + result.removed > 0 {
                    tracing::info!(
                        "routes to other nodes' pods: {} added, {} removed, {} held",
                        result.added,
                        result.removed,
                        result.routes.len()
                    );
                }
                self.problems.routes = result.failed.clone();
                // At once, not at the next sync: a remote backend's replies come in there.
                for index in &result.interfaces {
                    let attached = match crate::netlink::link_name(&self.netlink, *index).await {
                        Ok(Some(name)) => self.datapath.attach_node_interface(&name).map_err(|e| e.to_string()),
                        Ok(None) => Ok(()),
                        Err(err) => Err(err.to_string()),
                    };
                    if let Err(err) = attached {
                        self.problems.routes.push(format!("attaching to interface {index}, a route's: {err}"));
                    }
                }
                self.routes = Some((routing, result));
            }
            Err(err) => self.problems.routes = vec![format!("the routes to other nodes: {err}")],
        }
    }

    /// IPv4 forwarding on: the datapath's deliveries need it (a FIB lookup in a
    /// namespace that does not forward finds nothing, and every Service flow
    /// would fail while the status says healthy).
    fn ensure_forwarding(&mut self) {
        const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
        let result = match std::fs::read_to_string(PATH) {
            Ok(value) if value.trim() == "1" => Ok(()),
            Ok(value) => std::fs::write(PATH, "1")
                .map(|()| tracing::warn!("net.ipv4.ip_forward was {}; set to 1 (the datapath forwards)", value.trim())),
            Err(err) => Err(err),
        };
        self.problems.forwarding = result.err().map(|e| format!("turning on IPv4 forwarding ({PATH}): {e}"));
    }

    /// Programs `services` (each Service's ports; with `everything`, all
    /// there are); false when the maps could not be read (single ports that
    /// fail are problems, not failures).
    fn program_services(
        &mut self,
        services: &[(String, Vec<ServicePort>)],
        everything: bool,
        config: &DatapathConfig,
        reporter: &Reporter,
    ) -> bool {
        let started = Instant::now();
        match self.reconciler.sync(&mut self.datapath.services(), services, everything, config.node_ip) {
            Ok(stats) => {
                self.note_health_checks(services, everything);
                for failure in &stats.failed {
                    tracing::error!("programming a Service port failed: {failure}");
                }
                // All that fails: a sync given only some Services follows one where nothing failed.
                self.problems.services = stats.failed.clone();
                if stats.added + stats.updated + stats.removed > 0 {
                    let from = match self.api {
                        Some(_) => "the API server".into(),
                        None => config.manifests_dir.display().to_string(),
                    };
                    let ports: usize = services.iter().map(|(_, ports)| ports.len()).sum();
                    tracing::info!(
                        datapath_added = stats.added,
                        datapath_updated = stats.updated,
                        datapath_removed = stats.removed,
                        "applied {ports} Service port(s) of {} {}Service(s) from {from}",
                        services.len(),
                        if everything { "" } else { "changed " },
                    );
                }
                let took = started.elapsed();
                reporter.observe(Timing::DatapathSync, took);
                self.last_sync = Some((SystemTime::now(), took, stats));
                true
            }
            Err(err) => {
                self.problems.services = vec![format!("programming the maps: {err}")];
                false
            }
        }
    }

    /// Keeps the health check ports of `services` (with `everything`, the
    /// only ones there are).
    fn note_health_checks(&mut self, services: &[(String, Vec<ServicePort>)], everything: bool) {
        if everything {
            self.health_checks.clear();
        }
        for (key, ports) in services {
            match health_check(ports) {
                Some(check) => self.health_checks.insert(key.clone(), check),
                None => self.health_checks.remove(key),
            };
        }
    }

    /// A step of the current GC pass (starting one when due).
    fn collect_garbage(&mut self, config: &DatapathConfig) {
        self.gc.running = true;
        let step = self.gc.collector.step(&mut self.datapath.conntrack(), config.timeouts(), GC_STEP);
        match step {
            Ok(None) => {}
            Ok(Some(stats)) => {
                self.gc.running = false;
                self.gc.last = Instant::now();
                self.gc.expired_total += stats.expired;
                // Once a pass, with the conntrack entries the pass just counted.
                if self.map_count.is_none() {
                    let conntrack = stats.entries.saturating_sub(stats.expired);
                    self.map_count = Some(count_maps(&config.bpffs_root, conntrack));
                }
                self.gc.last_stats = stats;
                self.problems.gc = None;
            }
            Err(err) => {
                self.gc.running = false;
                self.gc.last = Instant::now();
                self.gc.collector = Collector::default();
                self.problems.gc = Some(format!("conntrack GC: {err}"));
            }
        }
    }
}

/// Counts the maps pinned under `root` on a blocking thread (an empty list if
/// that fails: the facts then show no maps).
fn count_maps(root: &std::path::Path, conntrack_entries: u64) -> tokio::task::JoinHandle<Vec<MapUsage>> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || {
        nodeplane_datapath::inspect::map_usage(&root, conntrack_entries).unwrap_or_else(|err| {
            tracing::debug!("counting the maps: {err}");
            Vec::new()
        })
    })
}

/// A Service's health check (from its ports, which all carry the same
/// `healthCheckNodePort`): its distinct ready endpoints on this node are what
/// its NodePorts send to under `externalTrafficPolicy: Local`.
fn health_check(ports: &[ServicePort]) -> Option<HealthCheck> {
    let first = ports.first()?;
    let port = first.health_check_node_port?;
    let local: BTreeSet<Ipv4Addr> = ports.iter().flat_map(|p| p.node_port_backends.iter().map(|(a, _)| *a)).collect();
    Some(HealthCheck {
        namespace: first.name.namespace.clone(),
        name: first.name.service.clone(),
        port,
        local_endpoints: local.len() as u32,
    })
}
