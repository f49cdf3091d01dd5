//! Desired state from Kubernetes objects: Services and EndpointSlices, and the
//! Namespaces, Pods and NetworkPolicies that policy enforcement works from, in
//! the Kubernetes API types. A directory of manifests (multi-document YAML or
//! JSON; [`load_dir`]) ends in a [`Manifests`]; the API source keeps its
//! Services and EndpointSlices in a [`crate::services::ServiceIndex`] and
//! reads the other kinds with [`Manifests::from_objects`]. A bad object is
//! reported — file and document, or kind and name; field — and skipped; the
//! rest applies. Other kinds are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

pub use crate::origin::{ManifestError, Origin};
use crate::policy::{Labels, NamedPort, PodManifest, Policy};
use crate::protocol::Protocol;
pub use crate::services::{PortName, SelectorService, ServicePort, TargetPort};
use crate::services::{ServiceIndex, read_service, read_slice, service_key};

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
                let origin = Origin::document(file.clone(), index + 1);
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
        self.add_objects(objects.iter().map(|(origin, object)| (origin, object)));
    }

    /// The desired state from `objects`: Namespaces, Pods and
    /// NetworkPolicies (as the API source keeps them), or any kind.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = (&'a Origin, &'a Object)>) -> Self {
        let mut found = Manifests::default();
        found.add_objects(objects);
        found
    }

    fn add_objects<'a>(&mut self, objects: impl IntoIterator<Item = (&'a Origin, &'a Object)>) {
        let mut index = ServiceIndex::default();
        // Where each Service was first found: a second one of the name is an error.
        let mut services: HashMap<String, &Origin> = HashMap::new();
        for (origin, object) in objects {
            match object {
                Object::Service(service) => {
                    let Some(name) = service.metadata.name.as_deref() else {
                        self.errors.push(origin.error("metadata.name", "missing"));
                        continue;
                    };
                    let key = service_key(service.metadata.namespace.as_deref(), name);
                    if let Some(first) = services.get(&key) {
                        self.errors.push(
                            origin.error(
                                "metadata.name",
                                format!("Service {key} is also in {first}; this one is skipped"),
                            ),
                        );
                        continue;
                    }
                    index.insert_service(key.clone(), read_service(service, origin));
                    services.insert(key, origin);
                }
                // Keyed by where each is: a directory's slices need no names.
                Object::EndpointSlice(slice) => {
                    index.insert_slice(origin.to_string(), read_slice(slice, origin, None));
                }
                object => self.add(object, origin),
            }
        }
        self.ports.extend(index.everything().into_iter().flat_map(|(_, ports)| ports));
        self.selector_services = index.selector_services();
        self.errors.extend(index.errors().cloned());
        self.ports.sort_by(|a, b| a.name.cmp(&b.name));
        self.errors.sort_by(|a, b| (&a.file, a.document).cmp(&(&b.file, b.document)));
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
            Object::Service(_) | Object::EndpointSlice(_) => unreachable!("read together, by the ServiceIndex"),
            // Routes to other nodes come from the API source's Node watch only.
            Object::Node(_) => {}
        }
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) && path.is_file()
}

/// A Kubernetes object the node works from.
#[derive(Clone, Debug, PartialEq)]
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
    /// A Node: what the API source routes to other nodes' pods from.
    Node(Box<Node>),
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

/// A Pod's namespace, name, labels, named container ports and address.
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
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()?.parse().ok()).filter(|_| !host_network);
    Ok(PodManifest {
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ports,
        ip,
    })
}
