//! Services and EndpointSlices read into what load balancing needs of them,
//! and combined into the Service ports a node balances. Each object is read
//! once, when it arrives ([`read_service`], [`read_slice`]), into a form a
//! fraction of the size of the Kubernetes type; a [`ServiceIndex`] relates
//! slices to their Service and knows which Services changed since it was
//! last asked, so a change from the API server recomputes only the Service it
//! touched. A manifests directory goes through the same index.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service as K8sService, ServicePort as ServicePortSpec, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::origin::{ManifestError, Origin};
use crate::policy::Labels;
use crate::protocol::Protocol;

/// A Service port by its Kubernetes name, for reports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortName {
    pub namespace: String,
    pub service: String,
    /// The port's name; empty for a single unnamed port.
    pub port: String,
}

impl fmt::Display for PortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// One Service port as the node should balance it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: PortName,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub affinity: Option<Duration>,
    /// Ready endpoints, sorted, without duplicates; this node's only with
    /// `internalTrafficPolicy: Local`.
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// The port on the node's IP that also reaches it (type NodePort or LoadBalancer).
    pub node_port: Option<u16>,
    /// Where the NodePort sends: the ready endpoints, this node's only with
    /// `externalTrafficPolicy: Local`.
    pub node_port_backends: Vec<(Ipv4Addr, u16)>,
    /// The Service's `healthCheckNodePort` (`externalTrafficPolicy: Local`
    /// only): where load balancers ask whether this node has its endpoints.
    pub health_check_node_port: Option<u16>,
}

/// A Service with a selector, as written: what a tool that stands up its pods
/// (the reachability probe) needs to write its EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorService {
    pub namespace: String,
    pub name: String,
    pub vip: Ipv4Addr,
    pub selector: Labels,
    /// (port name, protocol, port, target: a number or a container port name).
    pub ports: Vec<(String, Protocol, u16, TargetPort)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A Service as read: what its ports need of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceDef {
    namespace: String,
    name: String,
    /// `None`: nothing to balance (headless, or ExternalName).
    vip: Option<Ipv4Addr>,
    affinity: Option<Duration>,
    internal_local: bool,
    external_local: bool,
    health_check_node_port: Option<u16>,
    ports: Vec<PortDef>,
    /// The pods it selects; none when its EndpointSlices are made by hand.
    selector: Option<Labels>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortDef {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
    target: TargetPort,
}

/// A Service as read, or why it cannot be used.
pub type ServiceRead = Result<ServiceDef, ManifestError>;

/// An EndpointSlice as read: its Service, ports and endpoints, and the
/// addresses in it that are not IPv4 addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceRead {
    /// The Service it serves (`namespace/name`, from its
    /// `kubernetes.io/service-name` label); none without the label, or for a
    /// slice of other than IPv4 addresses.
    service: Option<String>,
    /// (name, protocol, target port).
    ports: Vec<(String, Protocol, u16)>,
    endpoints: Vec<EndpointRead>,
    errors: Vec<ManifestError>,
}

/// One address of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointRead {
    address: Ipv4Addr,
    /// Not ready (terminating, say) endpoints keep the flows conntrack holds, take no new ones.
    ready: bool,
    /// On this node, or naming none (or no node given): what a traffic policy of `Local` keeps.
    local: bool,
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

/// A Service's key in a [`ServiceIndex`]: `namespace/name`.
pub fn service_key(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or("default"))
}

/// `ports` grouped by Service, each with its key ([`service_key`]), in order.
pub fn by_service(mut ports: Vec<ServicePort>) -> Vec<(String, Vec<ServicePort>)> {
    ports.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services: Vec<(String, Vec<ServicePort>)> = Vec::new();
    for port in ports {
        let key = service_key(Some(&port.name.namespace), &port.name.service);
        match services.last_mut() {
            Some((last, ports)) if *last == key => ports.push(port),
            _ => services.push((key, vec![port])),
        }
    }
    services
}

/// Reads a Service: its type, cluster IP, ports, traffic policies, affinity
/// and selector, each checked.
pub fn read_service(service: &K8sService, origin: &Origin) -> ServiceRead {
    let namespace = service.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = service.metadata.name.clone().ok_or_else(|| origin.error("metadata.name", "missing"))?;
    let spec = service.spec.as_ref().ok_or_else(|| origin.error("spec", "missing"))?;
    let nothing = |namespace, name| ServiceDef {
        namespace,
        name,
        vip: None,
        affinity: None,
        internal_local: false,
        external_local: false,
        health_check_node_port: None,
        ports: Vec::new(),
        selector: None,
    };
    let has_node_ports = match spec.type_.as_deref() {
        Some("ExternalName") => return Ok(nothing(namespace, name)),
        None | Some("ClusterIP") => false,
        Some("NodePort" | "LoadBalancer") => true,
        Some(other) => {
            return Err(origin
                .error("spec.type", format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName")));
        }
    };
    let vip = match spec.cluster_ip.as_deref() {
        Some("None") => return Ok(nothing(namespace, name)), // headless: nothing to balance
        Some(ip) => ip
            .parse::<Ipv4Addr>()
            .map_err(|_| origin.error("spec.clusterIP", format!("{ip:?} is not an IPv4 address")))?,
        None => return Err(origin.error("spec.clusterIP", "missing (no API server allocates one on this node)")),
    };
    let mut ports = Vec::new();
    let affinity = affinity(spec, origin)?;
    let internal_local = traffic_policy(spec.internal_traffic_policy.as_deref(), "spec.internalTrafficPolicy", origin)?;
    let external_local = traffic_policy(spec.external_traffic_policy.as_deref(), "spec.externalTrafficPolicy", origin)?;
    let health_check_node_port = match spec.health_check_node_port {
        Some(n) if has_node_ports && external_local => Some(
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| origin.error("spec.healthCheckNodePort", format!("{n} is not a port number")))?,
        ),
        _ => None,
    };
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let (protocol, number, node_port) = port_numbers(port, has_node_ports, i, origin)?;
        let target = match &port.target_port {
            Some(IntOrString::String(name)) => TargetPort::Name(name.clone()),
            Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).unwrap_or(number)),
            None => TargetPort::Number(number),
        };
        ports.push(PortDef { name: port.name.clone().unwrap_or_default(), protocol, port: number, node_port, target });
    }
    Ok(ServiceDef {
        namespace,
        name,
        vip: Some(vip),
        affinity,
        internal_local,
        external_local,
        health_check_node_port,
        ports,
        selector: spec.selector.clone().filter(|s| !s.is_empty()),
    })
}

/// Reads an EndpointSlice; `node` is this node's name (none: every endpoint
/// counts as this node's, as for a manifests directory).
pub fn read_slice(slice: &EndpointSlice, origin: &Origin, node: Option<&str>) -> SliceRead {
    if slice.address_type != "IPv4" {
        return SliceRead::default();
    }
    let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
    let mut read = SliceRead {
        service: service.map(|name| service_key(slice.metadata.namespace.as_deref(), name)),
        ports: slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = Protocol::parse(p.protocol.as_deref()).ok()?;
                Some((p.name.clone().unwrap_or_default(), protocol, u16::try_from(p.port?).ok()?))
            })
            .collect(),
        ..SliceRead::default()
    };
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let ready = endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false);
        let local = node.is_none_or(|node| endpoint.node_name.as_deref().is_none_or(|n| n == node));
        for (j, address) in endpoint.addresses.iter().enumerate() {
            match address.parse() {
                Ok(address) => read.endpoints.push(EndpointRead { address, ready, local }),
                Err(_) => read.errors.push(
                    origin
                        .error(format!("endpoints[{i}].addresses[{j}]"), format!("{address:?} is not an IPv4 address")),
                ),
            }
        }
    }
    read
}

impl ServiceDef {
    /// Its ports, each with the ready endpoints of `slices` (its own).
    fn ports(&self, slices: &[&SliceRead]) -> Vec<ServicePort> {
        let Some(vip) = self.vip else { return Vec::new() };
        self.ports
            .iter()
            .map(|port| {
                let backends = |local: bool| ready_backends(slices, &port.name, port.protocol, local);
                ServicePort {
                    name: PortName {
                        namespace: self.namespace.clone(),
                        service: self.name.clone(),
                        port: port.name.clone(),
                    },
                    vip,
                    port: port.port,
                    protocol: port.protocol,
                    affinity: self.affinity,
                    backends: backends(self.internal_local),
                    node_port: port.node_port,
                    node_port_backends: if port.node_port.is_some() {
                        backends(self.external_local)
                    } else {
                        Vec::new()
                    },
                    health_check_node_port: self.health_check_node_port,
                }
            })
            .collect()
    }

    /// Its selector and target ports, for a Service that selects pods and has ports.
    fn selector_service(&self) -> Option<SelectorService> {
        let (vip, selector) = (self.vip?, self.selector.clone()?);
        if self.ports.is_empty() {
            return None;
        }
        Some(SelectorService {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            vip,
            selector,
            ports: self.ports.iter().map(|p| (p.name.clone(), p.protocol, p.port, p.target.clone())).collect(),
        })
    }
}

/// The ready endpoints of a Service port in its slices, sorted, without
/// duplicates; with `local`, only this node's.
fn ready_backends(slices: &[&SliceRead], port_name: &str, protocol: Protocol, local: bool) -> Vec<(Ipv4Addr, u16)> {
    let mut backends = Vec::new();
    for slice in slices {
        let targets = slice.ports.iter().filter(|(name, p, _)| name == port_name && *p == protocol);
        for (_, _, target) in targets {
            let serving = slice.endpoints.iter().filter(|e| e.ready && (e.local || !local));
            backends.extend(serving.map(|e| (e.address, *target)));
        }
    }
    backends.sort();
    backends.dedup();
    backends
}

/// Services and EndpointSlices as read, each slice related to its Service,
/// and the Services whose ports may have changed since last asked.
#[derive(Default)]
pub struct ServiceIndex {
    services: HashMap<String, ServiceRead>,
    slices: HashMap<String, SliceRead>,
    /// Service key → the keys of the slices that name it.
    slices_of: HashMap<String, BTreeSet<String>>,
    changed: BTreeSet<String>,
}

impl ServiceIndex {
    /// Sets the Service at `key` ([`service_key`]); whether that changed anything.
    pub fn insert_service(&mut self, key: String, read: ServiceRead) -> bool {
        if self.services.get(&key) == Some(&read) {
            return false;
        }
        self.changed.insert(key.clone());
        self.services.insert(key, read);
        true
    }

    /// Whether there was a Service at `key`.
    pub fn remove_service(&mut self, key: &str) -> bool {
        let removed = self.services.remove(key).is_some();
        if removed {
            self.changed.insert(key.to_owned());
        }
        removed
    }

    /// Sets the slice at `key` (any name unique among slices); whether that changed anything.
    pub fn insert_slice(&mut self, key: String, read: SliceRead) -> bool {
        if self.slices.get(&key) == Some(&read) {
            return false;
        }
        self.remove_slice(&key);
        if let Some(service) = &read.service {
            self.slices_of.entry(service.clone()).or_default().insert(key.clone());
            self.changed.insert(service.clone());
        }
        self.slices.insert(key, read);
        true
    }

    /// Whether there was a slice at `key`.
    pub fn remove_slice(&mut self, key: &str) -> bool {
        let Some(old) = self.slices.remove(key) else { return false };
        if let Some(service) = old.service {
            if let Some(slices) = self.slices_of.get_mut(&service) {
                slices.remove(key);
                if slices.is_empty() {
                    self.slices_of.remove(&service);
                }
            }
            self.changed.insert(service);
        }
        true
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &String> {
        self.services.keys()
    }

    pub fn slice_keys(&self) -> impl Iterator<Item = &String> {
        self.slices.keys()
    }

    /// Services and slices held.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// The Services that changed since last asked, each with its ports now
    /// (none for a Service gone, or that cannot be read).
    pub fn changed(&mut self) -> Vec<(String, Vec<ServicePort>)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|key| {
                let ports = self.ports_of(&key);
                (key, ports)
            })
            .collect()
    }

    /// Every Service with its ports, by key; nothing is left changed.
    pub fn everything(&mut self) -> Vec<(String, Vec<ServicePort>)> {
        self.changed.clear();
        let mut keys: Vec<&String> = self.services.keys().collect();
        keys.sort();
        keys.into_iter().map(|key| (key.clone(), self.ports_of(key))).collect()
    }

    fn ports_of(&self, key: &str) -> Vec<ServicePort> {
        let Some(Ok(service)) = self.services.get(key) else { return Vec::new() };
        let slices: Vec<&SliceRead> =
            self.slices_of.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k)).collect();
        service.ports(&slices)
    }

    /// The Services that select pods, with their target ports.
    pub fn selector_services(&self) -> Vec<SelectorService> {
        let mut found: Vec<SelectorService> =
            self.services.values().filter_map(|s| s.as_ref().ok()?.selector_service()).collect();
        found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        found
    }

    /// What could not be read, of Services and of slices.
    pub fn errors(&self) -> impl Iterator<Item = &ManifestError> {
        let services = self.services.values().filter_map(|s| s.as_ref().err());
        services.chain(self.slices.values().flat_map(|s| &s.errors))
    }
}

/// An internal or external traffic policy: whether it is `Local`.
fn traffic_policy(written: Option<&str>, field: &str, origin: &Origin) -> Result<bool, ManifestError> {
    match written {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(origin.error(field, format!("{other:?} is not Cluster or Local"))),
    }
}

/// `spec.sessionAffinity`: the ClientIP timeout, `None` without affinity.
fn affinity(spec: &ServiceSpec, origin: &Origin) -> Result<Option<Duration>, ManifestError> {
    match spec.session_affinity.as_deref() {
        Some("ClientIP") => Ok(Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map_or(DEFAULT_AFFINITY_TIMEOUT, |s| Duration::from_secs(s.max(1) as u64)),
        )),
        None | Some("None") => Ok(None),
        Some(other) => Err(origin.error("spec.sessionAffinity", format!("{other:?} is not None or ClientIP"))),
    }
}

/// Port `i` of a Service: its protocol, number and, for a Service with node
/// ports, its NodePort.
fn port_numbers(
    port: &ServicePortSpec,
    has_node_ports: bool,
    i: usize,
    origin: &Origin,
) -> Result<(Protocol, u16, Option<u16>), ManifestError> {
    let protocol = match Protocol::parse(port.protocol.as_deref()) {
        Ok(protocol @ (Protocol::Tcp | Protocol::Udp)) => protocol,
        _ => {
            let written = port.protocol.as_deref().unwrap_or_default();
            return Err(
                origin.error(format!("spec.ports[{i}].protocol"), format!("{written} is not supported (TCP, UDP)"))
            );
        }
    };
    let number = u16::try_from(port.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| origin.error(format!("spec.ports[{i}].port"), format!("{} is not a port number", port.port)))?;
    let node_port =
        match (has_node_ports, port.node_port) {
            (false, _) => None,
            (true, None) => {
                return Err(origin
                    .error(format!("spec.ports[{i}].nodePort"), "missing (no API server allocates one on this node)"));
            }
            (true, Some(n)) => Some(u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
                origin.error(format!("spec.ports[{i}].nodePort"), format!("{n} is not a port number"))
            })?),
        };
    Ok((protocol, number, node_port))
}
