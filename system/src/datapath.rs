//! The eBPF datapath as a supervisor component: loads it at start (READY waits),
//! attaches it to pod interfaces as they appear, applies the manifests directory
//! whenever it changes — Services, and NetworkPolicies for the registered pods —
//! collects expired conntrack entries, and reports fill levels, sync times and
//! counters.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nodeplane_datapath::manifests::load_dir;
use nodeplane_datapath::maps::{CONNTRACK_CAPACITY, PolicyEvent};
use nodeplane_datapath::masquerade;
use nodeplane_datapath::policy::{Cluster, Labels, PodManifest, Policy};
use nodeplane_datapath::policy_maps::{CompiledPolicy, PeerRules, PodRules};
use nodeplane_datapath::{Datapath, DatapathConfig, GcStats, Reconciler, SyncStats};

use crate::component::{Component, Fact, Facts, Reporter, State};
use crate::config::NodeConfig;
pub use crate::endpoints::Endpoint;
use crate::endpoints::{EndpointStore, check_container_id};

pub struct DatapathComponent {
    config: DatapathConfig,
    /// `[sysctl] nodeport_range`: masquerade keeps its source ports clear of it.
    nodeports: (u16, u16),
    reporter: Reporter,
    running: Option<Running>,
    /// Pods registered by the CNI plugin, by container id; stored, so a restart
    /// keeps them.
    endpoints: std::collections::BTreeMap<String, Endpoint>,
}

struct Running {
    datapath: Datapath,
    store: EndpointStore,
    reconciler: Reconciler,
    /// Names, sizes and times of the manifest files at the last sync.
    fingerprint: Vec<(PathBuf, u64, SystemTime)>,
    last_sync: Option<(SystemTime, Duration, SyncStats)>,
    manifest_errors: Vec<String>,
    /// Namespaces (labels), Pods and NetworkPolicies from the last manifests read.
    namespaces: BTreeMap<String, Labels>,
    pods: Vec<PodManifest>,
    policies: Vec<Policy>,
    /// What the policy maps hold (`None`: what an earlier instance left; the
    /// first apply rewrites it), and why they could not be programmed.
    compiled: Option<CompiledPolicy>,
    policy_error: Option<String>,
    attach_errors: Vec<String>,
    /// Why masquerade or socket load balancing could not be set up.
    node_errors: Vec<String>,
    last_gc: Instant,
    expired_total: u64,
    last_gc_stats: GcStats,
}

impl Component for DatapathComponent {
    const NAME: &'static str = "datapath";

    async fn start(config: &NodeConfig, reporter: Reporter) -> Result<Self, String> {
        let nodeports = (config.sysctl.nodeport_range.start(), config.sysctl.nodeport_range.end());
        let config = config.datapath.clone();
        let mut component =
            DatapathComponent { config, nodeports, reporter, running: None, endpoints: Default::default() };
        if !component.config.enabled {
            component.reporter.set(State::Healthy, "disabled (datapath.enabled = false)");
            return Ok(component);
        }
        let root = &component.config.bpffs_root;
        std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        // Seconds of CPU under emulation (map allocation, the verifier): off the
        // runtime's thread, so the bus connection goes on meanwhile.
        let (pins, attach) = (root.clone(), component.config.attach);
        let loaded = tokio::task::spawn_blocking(move || Datapath::load_with(&pins, attach))
            .await
            .map_err(|e| format!("loading the datapath: {e}"))?;
        let mut datapath = loaded.map_err(|e| {
            format!("cannot load the datapath with its maps pinned in {} (a bpffs?): {e}", root.display())
        })?;
        datapath.set_hairpin_address(component.config.hairpin_address).map_err(|e| e.to_string())?;
        for change in datapath.recreated_maps() {
            tracing::warn!("pinned map of an older layout replaced, its entries are lost: {change}");
        }
        let store = EndpointStore::open(&component.config.state_dir)?;
        let (endpoints, unreadable) = store.load();
        for problem in &unreadable {
            tracing::warn!("stored pod registration skipped: {problem}");
        }
        component.endpoints = endpoints;
        component.running = Some(Running {
            datapath,
            store,
            reconciler: Reconciler::default(),
            fingerprint: Vec::new(),
            last_sync: None,
            manifest_errors: Vec::new(),
            namespaces: BTreeMap::new(),
            pods: Vec::new(),
            policies: Vec::new(),
            compiled: None,
            policy_error: None,
            attach_errors: unreadable,
            node_errors: Vec::new(),
            last_gc: Instant::now(),
            expired_total: 0,
            last_gc_stats: GcStats::default(),
        });
        component.apply_node_setup();
        component.sync(true);
        Ok(component)
    }

    async fn reload(&mut self, config: &NodeConfig) -> Result<(), String> {
        let mut new = config.datapath.clone();
        if new.enabled != self.config.enabled
            || new.bpffs_root != self.config.bpffs_root
            || new.attach != self.config.attach
        {
            tracing::warn!(
                "datapath.enabled, bpffs_root and attach take effect at the next start; keeping the running ones"
            );
            (new.enabled, new.bpffs_root, new.attach) =
                (self.config.enabled, self.config.bpffs_root.clone(), self.config.attach);
        }
        self.config = new;
        self.nodeports = (config.sysctl.nodeport_range.start(), config.sysctl.nodeport_range.end());
        if let Some(running) = &mut self.running {
            running.datapath.set_hairpin_address(self.config.hairpin_address).map_err(|e| e.to_string())?;
        }
        self.apply_node_setup();
        self.sync(true);
        Ok(())
    }

    fn interval(&self) -> Option<Duration> {
        self.running.is_some().then_some(self.config.sync_interval)
    }

    async fn tick(&mut self) {
        self.sync(false);
    }

    type Command = DatapathRequest;

    async fn command(&mut self, request: DatapathRequest) {
        match request {
            DatapathRequest::Endpoint { change, reply } => {
                let result = match change {
                    EndpointChange::Register(endpoint) => self.register(endpoint),
                    EndpointChange::Unregister(container_id) => self.unregister(&container_id),
                };
                self.publish();
                let _ = reply.send(result);
            }
            DatapathRequest::Sync { reply } => {
                self.sync(true);
                let problems = self.running.as_ref().map(|r| r.manifest_errors.clone()).unwrap_or_default();
                let _ = reply.send(problems);
            }
            DatapathRequest::PodPolicy { pod, reply } => {
                let _ = reply.send(self.pod_policy(&pod));
            }
            DatapathRequest::Describe { events, reply } => {
                let _ = reply.send(events.iter().map(|e| self.describe(e)).collect());
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
    Endpoint { change: EndpointChange, reply: Reply<Result<(), String>> },
    /// Read the manifests and apply them now; answers with the manifest problems.
    Sync { reply: Reply<Vec<String>> },
    /// What a pod (`namespace/name`) may send and receive.
    PodPolicy { pod: String, reply: Reply<Result<PodPolicy, String>> },
    /// Policy drops, told in pod names where the addresses are pods'.
    Describe { events: Vec<PolicyEvent>, reply: Reply<Vec<PolicyDrop>> },
}

/// A pod's policy as the maps hold it: per direction, `None` when the pod is
/// open that way, else (peer, ports) rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub ip: Ipv4Addr,
    pub ingress: Option<Vec<(String, String)>>,
    pub egress: Option<Vec<(String, String)>>,
}

/// A dropped connection attempt, for the bus and the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyDrop {
    /// `ns/pod (ip:port)` or `ip:port`.
    pub from: String,
    pub to: String,
    pub port: u16,
    pub protocol: String,
    pub reason: String,
    /// The Service address dialled, `vip:port`; empty for a direct connection.
    pub service: String,
}

impl DatapathComponent {
    /// Attaches the pod's interface at once (not at the next sync) and records it.
    fn register(&mut self, endpoint: Endpoint) -> Result<(), String> {
        check_container_id(&endpoint.container_id)?;
        let Some(running) = &mut self.running else { return Err("the datapath is disabled on this node".into()) };
        running.datapath.attach_pod_interface(&endpoint.host_interface).map_err(|e| e.to_string())?;
        running.store.save(&endpoint)?;
        self.endpoints.insert(endpoint.container_id.clone(), endpoint.clone());
        // The pod's policies are in force before the CNI plugin returns: it never
        // runs unprotected.
        self.apply_policy();
        tracing::info!(
            datapath_pod = %format!("{}/{}", endpoint.pod_namespace, endpoint.pod_name),
            datapath_interface = %endpoint.host_interface,
            "pod {}/{} registered on {} ({})", endpoint.pod_namespace, endpoint.pod_name, endpoint.host_interface, endpoint.ips.join(", ")
        );
        Ok(())
    }

    /// Sets up (or removes) what the config asks for beyond pod interfaces:
    /// socket load balancing for the node's processes, and masquerade.
    fn apply_node_setup(&mut self) {
        let Some(running) = &mut self.running else { return };
        running.node_errors.clear();
        let socket_lb = if self.config.socket_lb {
            running.datapath.attach_cgroup(&self.config.socket_lb_cgroup).map_err(|e| e.to_string())
        } else {
            running.datapath.detach_cgroup().map_err(|e| e.to_string())
        };
        if let Err(err) = socket_lb {
            tracing::error!("socket load balancing: {err}");
            running.node_errors.push(format!("socket load balancing: {err}"));
        }
        let result = match self.config.masquerade_rules(self.nodeports) {
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
        if let Err(err) = result {
            tracing::error!("masquerade: {err}");
            running.node_errors.push(format!("masquerade: {err}"));
        }
    }

    fn unregister(&mut self, container_id: &str) -> Result<(), String> {
        check_container_id(container_id)?;
        if let Some(running) = &self.running {
            running.store.remove(container_id)?;
        }
        self.endpoints.remove(container_id);
        self.apply_policy();
        Ok(())
    }

    /// The pods of this node as policies see them: each registration's IP, with
    /// the labels and named ports of its Pod manifest (none without one).
    fn cluster(&self) -> Cluster {
        let Some(running) = &self.running else { return Cluster::default() };
        let pods = self
            .endpoints
            .values()
            .flat_map(|endpoint| {
                let manifest = running
                    .pods
                    .iter()
                    .find(|p| p.namespace == endpoint.pod_namespace && p.name == endpoint.pod_name)
                    .cloned()
                    .unwrap_or_else(|| PodManifest {
                        namespace: endpoint.pod_namespace.clone(),
                        name: endpoint.pod_name.clone(),
                        labels: Labels::new(),
                        ports: Vec::new(),
                    });
                endpoint.ips.iter().filter_map(|ip| ip.parse().ok()).map(move |ip| manifest.clone().with_ip(ip))
            })
            .collect();
        Cluster { namespaces: running.namespaces.clone(), pods, policies: running.policies.clone() }
    }

    /// Compiles the policies for the registered pods and programs the maps.
    fn apply_policy(&mut self) {
        let cluster = self.cluster();
        let Some(running) = &mut self.running else { return };
        let started = Instant::now();
        let compiled = CompiledPolicy::compile(&cluster);
        if running.compiled.as_ref() == Some(&compiled) && running.policy_error.is_none() {
            return;
        }
        match running.datapath.apply_policy(&compiled) {
            Ok(stats) => {
                tracing::info!(
                    datapath_policies = cluster.policies.len(),
                    datapath_policy_rules = compiled.rule_count(),
                    datapath_policy_written = stats.written,
                    datapath_policy_removed = stats.removed,
                    "applied {} NetworkPolicy object(s) to {} pod(s) in {:?}",
                    cluster.policies.len(),
                    cluster.pods.len(),
                    started.elapsed()
                );
                running.compiled = Some(compiled);
                running.policy_error = None;
            }
            Err(err) => {
                tracing::error!("programming the policy maps: {err}");
                running.policy_error = Some(format!("programming the policy maps: {err}"));
            }
        }
    }

    fn pod_name(&self, ip: Ipv4Addr) -> Option<String> {
        let ip = ip.to_string();
        self.endpoints.values().find(|e| e.ips.contains(&ip)).map(|e| format!("{}/{}", e.pod_namespace, e.pod_name))
    }

    fn pod_policy(&self, pod: &str) -> Result<PodPolicy, String> {
        let Some(running) = &self.running else { return Err("the datapath is disabled on this node".into()) };
        let (namespace, name) =
            pod.split_once('/').ok_or_else(|| format!("{pod:?} is not NAMESPACE/NAME (e.g. default/web-0)"))?;
        let ip = self
            .endpoints
            .values()
            .find(|e| e.pod_namespace == namespace && e.pod_name == name)
            .and_then(|e| e.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()))
            .ok_or_else(|| format!("no pod {pod} is registered on this node"))?;
        let rules = running.compiled.as_ref().and_then(|c| c.pods.get(&ip)).cloned().unwrap_or_default();
        let rows = |peers: Option<&PeerRules>| {
            peers.map(|peers| {
                peers
                    .iter()
                    .map(|((addr, length), ports)| {
                        let peer = match (length, self.pod_name(*addr)) {
                            (32, Some(name)) => format!("{name} ({addr})"),
                            _ => format!("{addr}/{length}"),
                        };
                        (peer, describe_ports(ports))
                    })
                    .collect()
            })
        };
        let PodRules { ingress, egress } = &rules;
        Ok(PodPolicy { ip, ingress: rows(ingress.as_ref()), egress: rows(egress.as_ref()) })
    }

    fn describe(&self, event: &PolicyEvent) -> PolicyDrop {
        let end = |addr: [u8; 4], port: [u8; 2]| {
            let (addr, port) = (Ipv4Addr::from(addr), u16::from_be_bytes(port));
            match self.pod_name(addr) {
                Some(name) => format!("{name} ({addr}:{port})"),
                None => format!("{addr}:{port}"),
            }
        };
        let reason = nodeplane_datapath::maps::POLICY_REASONS.get(usize::from(event.reason)).copied().unwrap_or("");
        PolicyDrop {
            from: end(event.saddr, event.sport),
            to: end(event.daddr, event.dport),
            port: u16::from_be_bytes(event.dport),
            protocol: nodeplane_datapath::inspect::protocol_name(event.proto).to_uppercase(),
            reason: reason.to_owned(),
            service: if event.vip == [0; 4] {
                String::new()
            } else {
                format!("{}:{}", Ipv4Addr::from(event.vip), u16::from_be_bytes(event.vip_port))
            },
        }
    }

    /// Attaches new pod interfaces, applies changed manifests (or all, `force`d),
    /// collects expired conntrack entries when due, and publishes the result.
    fn sync(&mut self, force: bool) {
        let Some(running) = &mut self.running else { return };
        let present = match interfaces() {
            Ok(present) => present,
            Err(err) => {
                running.attach_errors = vec![format!("listing interfaces: {err}")];
                return self.publish();
            }
        };
        running.attach_errors =
            attach_interfaces(&mut running.datapath, &present, &self.config.pod_interface_prefix, self.config.node_ip);
        // A pod whose interface is gone (deleted while nodeplaned was down, or
        // without a CNI DEL) is no longer one.
        let registered = self.endpoints.len();
        self.endpoints.retain(|id, endpoint| {
            let here = present.contains(&endpoint.host_interface);
            if !here {
                tracing::info!(
                    "pod {}/{} is gone with {}",
                    endpoint.pod_namespace,
                    endpoint.pod_name,
                    endpoint.host_interface
                );
                if let Err(err) = running.store.remove(id) {
                    running.attach_errors.push(err);
                }
            }
            here
        });
        let mut policy_inputs_changed = self.endpoints.len() != registered;
        let fingerprint = fingerprint(&self.config.manifests_dir);
        if !self.config.manifests_dir.is_dir() {
            // A missing directory (a late mount, a typo) must not wipe every Service.
            running.manifest_errors = vec![format!(
                "{}: not a directory; keeping the Services programmed",
                self.config.manifests_dir.display()
            )];
        } else if force || fingerprint != running.fingerprint {
            let started = Instant::now();
            let found = load_dir(&self.config.manifests_dir);
            for error in &found.errors {
                tracing::warn!(datapath_manifest = %error.file.display(), "manifest skipped: {error}");
            }
            running.manifest_errors = found.errors.iter().map(ToString::to_string).collect();
            // A policy that could not be read might be the one isolating a pod:
            // the policies in force stay until every one reads.
            if found.policies_incomplete {
                // First: the status line shows the first problem.
                running.manifest_errors.insert(0, format!(
                    "NetworkPolicies not updated: a document in {} that may be one could not be read; {} policies stay in force",
                    self.config.manifests_dir.display(),
                    running.policies.len()
                ));
            } else {
                running.policies = found.policies.clone();
            }
            (running.namespaces, running.pods) = (found.namespaces.clone(), found.pods.clone());
            policy_inputs_changed = true;
            match running.reconciler.sync(&mut running.datapath, &found.ports, self.config.node_ip) {
                Ok(stats) => {
                    for failure in &stats.failed {
                        tracing::error!("programming a Service port failed: {failure}");
                    }
                    running.manifest_errors.extend(stats.failed.iter().cloned());
                    if stats.added + stats.updated + stats.removed > 0 {
                        tracing::info!(
                            datapath_added = stats.added,
                            datapath_updated = stats.updated,
                            datapath_removed = stats.removed,
                            "applied {} Service port(s) from {}",
                            found.ports.len(),
                            self.config.manifests_dir.display()
                        );
                    }
                    running.last_sync = Some((SystemTime::now(), started.elapsed(), stats));
                    running.fingerprint = fingerprint;
                }
                Err(err) => running.manifest_errors.push(format!("programming the maps: {err}")),
            }
        }
        if running.last_gc.elapsed() >= self.config.gc_interval {
            running.last_gc = Instant::now();
            match running.datapath.gc(self.config.timeouts()) {
                Ok(stats) => {
                    running.expired_total += stats.expired;
                    running.last_gc_stats = stats;
                }
                Err(err) => running.attach_errors.push(format!("conntrack GC: {err}")),
            }
        }
        if policy_inputs_changed || running.policy_error.is_some() {
            self.apply_policy();
        }
        self.publish();
    }

    fn publish(&mut self) {
        let Some(running) = &mut self.running else { return };
        let mut facts = Facts::new();
        let programmed = running.datapath.programmed().unwrap_or_default();
        facts.insert("services".into(), Fact::Count(programmed.len() as u64));
        facts.insert("endpoints".into(), Fact::Count(programmed.iter().map(|(_, v)| u64::from(v.backend_count)).sum()));
        // Counted by the last GC pass: walking the whole map every sync would cost more than it tells.
        let entries = running.last_gc_stats.entries.saturating_sub(running.last_gc_stats.expired);
        facts.insert("conntrack_entries".into(), Fact::Count(entries));
        facts.insert("conntrack_capacity".into(), Fact::Count(CONNTRACK_CAPACITY));
        facts.insert("conntrack_expired_total".into(), Fact::Count(running.expired_total));
        let attached = running.datapath.attached_interfaces().unwrap_or_default();
        facts.insert("attached_interfaces".into(), Fact::Count(attached.len() as u64));
        facts.insert("registered_pods".into(), Fact::Count(self.endpoints.len() as u64));
        facts.insert("manifest_errors".into(), Fact::Count(running.manifest_errors.len() as u64));
        if let Some((at, took, _)) = &running.last_sync {
            facts.insert("last_sync".into(), Fact::Text(humantime::format_rfc3339_seconds(*at).to_string()));
            facts.insert("last_sync_ms".into(), Fact::Count(took.as_millis() as u64));
        }
        for (name, value) in running.datapath.counters().unwrap_or_default() {
            facts.insert(format!("count_{name}"), Fact::Count(value));
        }
        facts.insert("policies".into(), Fact::Count(running.policies.len() as u64));
        let compiled = running.compiled.as_ref();
        facts.insert("policy_rules".into(), Fact::Count(compiled.map_or(0, CompiledPolicy::rule_count) as u64));
        let isolated =
            compiled.map_or(0, |c| c.pods.values().filter(|p| p.ingress.is_some() || p.egress.is_some()).count());
        facts.insert("policy_isolated_pods".into(), Fact::Count(isolated as u64));
        let problems: Vec<&String> = running
            .manifest_errors
            .iter()
            .chain(&running.attach_errors)
            .chain(&running.node_errors)
            .chain(&running.policy_error)
            .collect();
        let (state, detail) = match problems.first() {
            Some(first) => (State::Degraded, format!("{} problem(s): {first}", problems.len())),
            None => (
                State::Healthy,
                format!(
                    "{} Service port(s), {} pod interface(s), {} NetworkPolicy object(s), conntrack {entries}/{CONNTRACK_CAPACITY}",
                    programmed.len(),
                    attached.len(),
                    running.policies.len()
                ),
            ),
        };
        self.reporter.set(state, detail);
        self.reporter.set_facts(facts);
    }
}

/// Port ranges as a person reads them: `TCP 80, UDP 1000-2000`; `all ports`
/// for every port of every protocol; `none`.
fn describe_ports(ranges: &[(u8, u16, u16)]) -> String {
    if ranges.is_empty() {
        return "none".into();
    }
    let every = [1, 6, 17, 132].iter().all(|p| ranges.contains(&(*p, 0, u16::MAX)));
    if every && ranges.len() == 4 {
        return "all ports".into();
    }
    let names: Vec<String> = ranges
        .iter()
        .map(|(proto, low, high)| {
            let proto = nodeplane_datapath::inspect::protocol_name(*proto).to_uppercase();
            match (*low, *high) {
                (0, u16::MAX) => format!("{proto} (all ports)"),
                _ if low == high => format!("{proto} {low}"),
                _ => format!("{proto} {low}-{high}"),
            }
        })
        .collect();
    names.join(", ")
}

fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()?))
        })
        .collect();
    files.sort();
    files
}

/// The interfaces of this network namespace.
fn interfaces() -> std::io::Result<BTreeSet<String>> {
    let dev = std::fs::read_to_string("/proc/self/net/dev")?;
    Ok(dev.lines().skip(2).filter_map(|l| Some(l.split(':').next()?.trim().to_owned())).collect())
}

/// Attaches to every `present` interface whose name has the pod prefix, and to
/// the one holding the node's IP (NodePorts); forgets the records of ones that
/// are gone. Returns the failures.
fn attach_interfaces(
    datapath: &mut Datapath,
    present: &BTreeSet<String>,
    prefix: &str,
    node_ip: Option<std::net::Ipv4Addr>,
) -> Vec<String> {
    let mut present: BTreeSet<String> = present.iter().filter(|n| n.starts_with(prefix)).cloned().collect();
    let node_if = match node_ip.map(interface_with).transpose() {
        Ok(Some(Some(node_if))) => Some(node_if),
        Ok(Some(None)) => {
            tracing::debug!("no interface holds datapath.node_ip yet");
            None
        }
        Ok(None) => None,
        Err(err) => return vec![format!("listing addresses: {err}")],
    };
    present.extend(node_if.clone());
    let mut errors = Vec::new();
    for gone in datapath.attached_interfaces().unwrap_or_default().into_iter().filter(|n| !present.contains(n)) {
        if let Err(err) = datapath.forget_interface(&gone) {
            errors.push(format!("{gone}: {err}"));
        }
    }
    for interface in &present {
        let attached = if node_if.as_ref() == Some(interface) {
            datapath.attach_node_interface(interface)
        } else {
            datapath.attach_pod_interface(interface)
        };
        if let Err(err) = attached {
            errors.push(format!("attaching to {interface}: {err}"));
        }
    }
    errors
}

/// The interface that holds `addr`, if one does.
fn interface_with(addr: std::net::Ipv4Addr) -> std::io::Result<Option<String>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list that is freed below, once.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not freed yet; an
        // AF_INET address is a sockaddr_in.
        unsafe {
            let address = (*entry).ifa_addr;
            if !address.is_null() && i32::from((*address).sa_family) == libc::AF_INET {
                let address = &*(address as *const libc::sockaddr_in);
                if u32::from_be(address.sin_addr.s_addr) == u32::from(addr) {
                    found = Some(std::ffi::CStr::from_ptr((*entry).ifa_name).to_string_lossy().into_owned());
                    break;
                }
            }
            entry = (*entry).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}
