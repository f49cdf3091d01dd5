//! Desired state from Kubernetes objects: Services and EndpointSlices, and the
//! Namespaces, Pods and NetworkPolicies that policy enforcement works from, in
//! the Kubernetes API types. They come from a directory of manifests
//! (multi-document YAML or JSON; [`load_dir`]) or from the API server's
//! watches ([`Manifests::from_objects`]); both end in the same [`Manifests`]. A
//! bad object is reported — file and document, or kind and name; field — and
//! skipped; the rest applies. Other kinds are ignored.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service as K8sService, ServicePort as ServicePortSpec, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::policy::{Labels, NamedPort, PodManifest, Policy};
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

/// A manifest the node could not use, and where the problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The file; for an object from the API server, its kind and name.
    pub file: PathBuf,
    /// 1-based document number within the file; 0 for the whole file or object.
    pub document: usize,
    /// Field path, e.g. `spec.ports[0].protocol`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything found in a manifests directory.
#[derive(Debug, Default)]
pub struct Manifests {
    pub ports: Vec<ServicePort>,
    /// Services that select pods by label (their ports read without errors).
    pub selector_services: Vec<SelectorService>,
    /// Namespace → its labels.
    pub namespaces: std::collections::BTreeMap<String, Labels>,
    /// Pods as policies see them (their IPs come from the CNI registrations).
    pub pods: Vec<PodManifest>,
    pub policies: Vec<Policy>,
    /// A document that is or may be a NetworkPolicy (a YAML error, an unreadable
    /// file) could not be used: `policies` may lack one.
    pub policies_incomplete: bool,
    pub errors: Vec<ManifestError>,
}

/// Where an object came from: a file's document, or the API server.
#[derive(Clone, Debug)]
pub struct Origin {
    file: PathBuf,
    document: usize,
}

impl Origin {
    /// An object of the API server's, e.g. `Service default/web`.
    pub fn api(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        let name = match namespace {
            Some(namespace) => format!("{kind} {namespace}/{name}"),
            None => format!("{kind} {name}"),
        };
        Origin { file: PathBuf::from(name), document: 0 }
    }

    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError { file: self.file.clone(), document: self.document, field: field.into(), message: message.into() }
    }
}

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

/// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir` (sorted by name).
pub fn load_dir(dir: &Path) -> Manifests {
    let mut found = Manifests::default();
    let files = match manifest_files(dir) {
        Ok(files) => files,
        Err(error) => {
            found.policies_incomplete = true;
            found.errors.push(error);
            return found;
        }
    };
    let mut texts = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => texts.push((file, text)),
            Err(err) => {
                found.policies_incomplete = true;
                found.errors.push(ManifestError { file, document: 0, field: String::new(), message: err.to_string() });
            }
        }
    }
    found.parse(&texts);
    found
}

/// The manifests in `texts` (each a file's name and content), as
/// [`load_dir`] reads a directory's.
pub fn parse(texts: &[(PathBuf, String)]) -> Manifests {
    let mut found = Manifests::default();
    found.parse(texts);
    found
}

impl Manifests {
    /// Adds what `texts` hold, then settles what depends on all of them (the
    /// Services' ports from their EndpointSlices).
    fn parse(&mut self, texts: &[(PathBuf, String)]) {
        let mut objects = Vec::new();
        for (file, text) in texts {
            for (index, document) in documents(text).enumerate() {
                let origin = Origin { file: file.clone(), document: index + 1 };
                match parse_document(document, &origin) {
                    Ok(Some(object)) => objects.push((origin, object)),
                    Ok(None) => {}
                    Err((kind, err)) => {
                        self.policies_incomplete |= kind.is_none_or(|k| k == "NetworkPolicy");
                        self.errors.push(err)
                    }
                }
            }
        }
        self.add_objects(objects.iter().map(|(origin, object)| (origin, object)), None, None);
    }

    /// The desired state from `objects` (as the API server's watches hold
    /// them). `node` is this node's name: with a traffic policy of `Local`,
    /// only endpoints on it (or naming no node) serve. What `cache` holds
    /// from the last read is reused for every Service whose object and
    /// EndpointSlices have not changed since (by resourceVersion).
    pub fn from_objects<'a>(
        objects: impl IntoIterator<Item = (&'a Origin, &'a Object)>,
        node: Option<&str>,
        cache: &mut ServiceCache,
    ) -> Self {
        let mut found = Manifests::default();
        found.add_objects(objects, node, Some(cache));
        found
    }

    fn add_objects<'a>(
        &mut self,
        objects: impl IntoIterator<Item = (&'a Origin, &'a Object)>,
        node: Option<&str>,
        mut cache: Option<&mut ServiceCache>,
    ) {
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        for (origin, object) in objects {
            match object {
                Object::Service(service) => services.push((origin, &**service)),
                Object::EndpointSlice(slice) => slices.push((origin, &**slice)),
                object => self.add(object, origin),
            }
        }
        // Each Service's slices, by namespace and the service-name label.
        let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for (_, slice) in &slices {
            let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                continue;
            };
            if slice.address_type == "IPv4" {
                let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
                by_service.entry((namespace, service.as_str())).or_default().push(slice);
            }
        }
        let mut next = ServiceCache::default();
        for (origin, service) in &services {
            let read = || {
                let ports = service_ports(service, origin, &by_service, node);
                let selector = ports.as_ref().ok().and_then(|ports| selector_service(service, ports));
                (ports, selector)
            };
            let (ports, selector) = match (cache.as_deref_mut(), ServiceCache::key(service, &by_service)) {
                (Some(cache), Some(key)) => {
                    let read = match cache.services.remove(&key) {
                        Some(same) => same,
                        None => read(),
                    };
                    next.services.insert(key, read.clone());
                    read
                }
                _ => read(),
            };
            match ports {
                Ok(ports) => {
                    self.selector_services.extend(selector);
                    self.ports.extend(ports)
                }
                Err(err) => self.errors.push(err),
            }
        }
        for (origin, slice) in &slices {
            match (cache.as_deref_mut(), ServiceCache::slice_key(slice)) {
                (Some(cache), Some(key)) => {
                    let errors = match cache.slices.remove(&key) {
                        Some(same) => same,
                        None => bad_addresses(slice, origin),
                    };
                    self.errors.extend(errors.iter().cloned());
                    next.slices.insert(key, errors);
                }
                _ => self.errors.extend(bad_addresses(slice, origin)),
            }
        }
        if let Some(cache) = cache {
            // What was not read this time (deleted, or changed) is dropped.
            *cache = next;
        }
        self.ports.sort_by(|a, b| a.name.cmp(&b.name));
        self.errors.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
    }
}

/// What reading each Service (with its EndpointSlices) and each slice's
/// addresses gave at the last read of the API server's objects, keyed by
/// their resourceVersions: a change reads again only what it touched.
/// Reading every endpoint address of the cluster for every change was most
/// of a change's cost at 10,000 Services.
#[derive(Default)]
pub struct ServiceCache {
    services: HashMap<Vec<String>, ServiceRead>,
    slices: HashMap<(String, String), Vec<ManifestError>>,
}

type ServiceRead = (Result<Vec<ServicePort>, ManifestError>, Option<SelectorService>);

impl ServiceCache {
    /// A Service's namespace, name and resourceVersion, and its slices'
    /// names and resourceVersions (sorted); none without versions (manifest files).
    fn key(service: &K8sService, slices: &HashMap<(&str, &str), Vec<&EndpointSlice>>) -> Option<Vec<String>> {
        let meta = &service.metadata;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref()?;
        let mut versions = Vec::new();
        for slice in slices.get(&(namespace, name)).into_iter().flatten() {
            versions.push(format!(
                "{}@{}",
                slice.metadata.name.as_deref()?,
                slice.metadata.resource_version.as_deref()?
            ));
        }
        versions.sort();
        versions.insert(0, format!("{namespace}/{name}@{}", meta.resource_version.as_deref()?));
        Some(versions)
    }

    /// A slice's namespace/name@resourceVersion (none without a version).
    fn slice_key(slice: &EndpointSlice) -> Option<(String, String)> {
        let meta = &slice.metadata;
        let name = format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref()?);
        Some((name, meta.resource_version.clone()?))
    }

    /// Services remembered (a test's view).
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

/// The manifest files of `dir`, sorted; none when it does not exist.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(ManifestError {
                file: dir.to_owned(),
                document: 0,
                field: String::new(),
                message: err.to_string(),
            });
        }
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_manifest(p)).collect();
    files.sort();
    Ok(files)
}

impl Manifests {
    /// Adds a Namespace, Pod or NetworkPolicy (Services and EndpointSlices are
    /// read together, once every file is).
    fn add(&mut self, object: &Object, origin: &Origin) {
        match object {
            Object::Namespace(namespace) => match namespace.metadata.name.clone() {
                Some(name) => {
                    self.namespaces.insert(name, namespace.metadata.labels.clone().unwrap_or_default());
                }
                None => self.errors.push(origin.error("metadata.name", "missing")),
            },
            Object::Pod(pod) => match pod_manifest(pod, origin) {
                Ok(pod) => self.pods.push(pod),
                Err(err) => self.errors.push(err),
            },
            Object::PodRead(read) => match &**read {
                Ok(pod) => self.pods.push(pod.clone()),
                Err(err) => self.errors.push(err.clone()),
            },
            Object::NetworkPolicy(policy) => match Policy::from_k8s(policy) {
                Ok(policy) => self.policies.push(policy),
                Err(err) => {
                    self.policies_incomplete = true;
                    self.errors.push(origin.error(err.field, err.message))
                }
            },
            Object::Service(_) | Object::EndpointSlice(_) => unreachable!("read with the other files' slices"),
        }
    }
}

/// An IPv4 EndpointSlice's addresses that are not IPv4 addresses.
fn bad_addresses(slice: &EndpointSlice, origin: &Origin) -> Vec<ManifestError> {
    if slice.address_type != "IPv4" {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        for (j, address) in endpoint.addresses.iter().enumerate() {
            if address.parse::<Ipv4Addr>().is_err() {
                errors.push(
                    origin
                        .error(format!("endpoints[{i}].addresses[{j}]"), format!("{address:?} is not an IPv4 address")),
                );
            }
        }
    }
    errors
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) && path.is_file()
}

/// A Kubernetes object the node works from.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<K8sService>),
    EndpointSlice(Box<EndpointSlice>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    /// A Pod already read into what policies see of it ([`Object::read_pod`]):
    /// how the API source keeps pods, since a `Pod` takes kilobytes even with
    /// every field empty.
    PodRead(Box<Result<PodManifest, ManifestError>>),
    NetworkPolicy(Box<NetworkPolicy>),
}

impl Object {
    /// `pod` (from `origin`) read as [`Object::PodRead`].
    pub fn read_pod(pod: &Pod, origin: &Origin) -> Object {
        Object::PodRead(Box::new(pod_manifest(pod, origin)))
    }
}

/// The documents of a YAML stream, split at `---` lines, so that a syntax error
/// in one leaves the others readable.
fn documents(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            documents.push(line.trim_start_matches("---").trim_start().to_owned() + "\n");
        } else {
            documents.last_mut().expect("at least one").push_str(&(line.to_owned() + "\n"));
        }
    }
    // A leading `---` leaves an empty first document; it is not counted.
    let skip = usize::from(text.trim_start().starts_with("---"));
    documents.into_iter().skip(skip)
}

/// A document's object; a failure comes with the document's kind when known.
fn parse_document(document: String, origin: &Origin) -> Result<Option<Object>, (Option<String>, ManifestError)> {
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&document).map_err(|e| (None, origin.error("", e.to_string())))?;
    if value.is_null() {
        return Ok(None); // an empty document (`---` at the end)
    }
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    let typed = |field_error: serde_path_to_error::Error<serde_yaml_ng::Error>| {
        let error =
            origin.error(field_error.path().to_string().trim_start_matches('.'), field_error.inner().to_string());
        (Some(kind.clone()), error)
    };
    match kind.as_str() {
        "Service" => serde_path_to_error::deserialize(value).map(|s| Some(Object::Service(Box::new(s)))).map_err(typed),
        "EndpointSlice" => {
            serde_path_to_error::deserialize(value).map(|s| Some(Object::EndpointSlice(s))).map_err(typed)
        }
        "Namespace" => serde_path_to_error::deserialize(value).map(|n| Some(Object::Namespace(n))).map_err(typed),
        "Pod" => serde_path_to_error::deserialize(value).map(|p| Some(Object::Pod(p))).map_err(typed),
        "NetworkPolicy" => {
            serde_path_to_error::deserialize(value).map(|p| Some(Object::NetworkPolicy(p))).map_err(typed)
        }
        "" => Err((None, origin.error("kind", "missing"))),
        _ => Ok(None),
    }
}

/// A Service's ports, each with the ready endpoints of its EndpointSlices.
fn service_ports(
    service: &K8sService,
    origin: &Origin,
    slices: &HashMap<(&str, &str), Vec<&EndpointSlice>>,
    node: Option<&str>,
) -> Result<Vec<ServicePort>, ManifestError> {
    let namespace = service.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = service.metadata.name.clone().ok_or_else(|| origin.error("metadata.name", "missing"))?;
    let spec = service.spec.as_ref().ok_or_else(|| origin.error("spec", "missing"))?;
    let has_node_ports = match spec.type_.as_deref() {
        Some("ExternalName") => return Ok(Vec::new()),
        None | Some("ClusterIP") => false,
        Some("NodePort" | "LoadBalancer") => true,
        Some(other) => {
            return Err(origin
                .error("spec.type", format!("{other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName")));
        }
    };
    let vip = match spec.cluster_ip.as_deref() {
        Some("None") => return Ok(Vec::new()), // headless: nothing to balance
        Some(ip) => ip
            .parse::<Ipv4Addr>()
            .map_err(|_| origin.error("spec.clusterIP", format!("{ip:?} is not an IPv4 address")))?,
        None => return Err(origin.error("spec.clusterIP", "missing (no API server allocates one on this node)")),
    };
    let affinity = affinity(spec, origin)?;
    let internal_local = traffic_policy(spec.internal_traffic_policy.as_deref(), "spec.internalTrafficPolicy", origin)?;
    let external_local = traffic_policy(spec.external_traffic_policy.as_deref(), "spec.externalTrafficPolicy", origin)?;
    let ours = slices.get(&(namespace.as_str(), name.as_str())).map_or(&[][..], Vec::as_slice);
    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let (protocol, number, node_port) = port_numbers(port, has_node_ports, i, origin)?;
        let port_name = port.name.clone().unwrap_or_default();
        let backends = |local: bool| ready_backends(ours, &port_name, protocol, local.then_some(node).flatten());
        ports.push(ServicePort {
            name: PortName { namespace: namespace.clone(), service: name.clone(), port: port_name.clone() },
            vip,
            port: number,
            protocol,
            affinity,
            backends: backends(internal_local),
            node_port,
            node_port_backends: if node_port.is_some() { backends(external_local) } else { Vec::new() },
        });
    }
    Ok(ports)
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

/// The ready endpoints of a Service port in its slices, sorted, without
/// duplicates; with `local`, only those on that node (or naming none).
/// Terminating endpoints are not ready: they keep the flows conntrack holds, no new ones.
fn ready_backends(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    local: Option<&str>,
) -> Vec<(Ipv4Addr, u16)> {
    let mut backends = Vec::new();
    for slice in slices {
        let matching = slice.ports.iter().flatten().filter(|p| {
            p.name.as_deref().unwrap_or_default() == port_name
                && Protocol::parse(p.protocol.as_deref()).is_ok_and(|p| p == protocol)
        });
        for target in matching.filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok())) {
            let ready = slice.endpoints.iter().filter(|e| {
                e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
                    && local.is_none_or(|node| e.node_name.as_deref().is_none_or(|n| n == node))
            });
            for endpoint in ready {
                backends
                    .extend(endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()).map(|a| (a, target)));
            }
        }
    }
    backends.sort();
    backends.dedup();
    backends
}

/// The selector and target ports of a Service whose `ports` read well.
fn selector_service(service: &K8sService, ports: &[ServicePort]) -> Option<SelectorService> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.clone().filter(|s| !s.is_empty())?;
    let first = ports.first()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .zip(ports)
        .map(|(written, port)| {
            let target = match &written.target_port {
                Some(IntOrString::String(name)) => TargetPort::Name(name.clone()),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).unwrap_or(port.port)),
                None => TargetPort::Number(port.port),
            };
            (port.name.port.clone(), port.protocol, port.port, target)
        })
        .collect();
    Some(SelectorService {
        namespace: first.name.namespace.clone(),
        name: first.name.service.clone(),
        vip: first.vip,
        selector,
        ports,
    })
}

/// A Pod's namespace, name, labels and named container ports.
fn pod_manifest(pod: &Pod, origin: &Origin) -> Result<PodManifest, ManifestError> {
    let name = pod.metadata.name.clone().ok_or_else(|| origin.error("metadata.name", "missing"))?;
    let mut ports = Vec::new();
    let containers = pod.spec.iter().flat_map(|spec| spec.containers.iter().enumerate());
    for (c, container) in containers {
        for (i, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{c}].ports[{i}]");
            let Some(port_name) = port.name.clone() else { continue };
            let number = u16::try_from(port.container_port).ok().filter(|p| *p != 0).ok_or_else(|| {
                origin.error(format!("{field}.containerPort"), format!("{} is not a port number", port.container_port))
            })?;
            let protocol = Protocol::parse(port.protocol.as_deref())
                .map_err(|e| origin.error(format!("{field}.protocol"), e.to_string()))?;
            ports.push(NamedPort { name: port_name, port: number, protocol });
        }
    }
    Ok(PodManifest {
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports,
    })
}
