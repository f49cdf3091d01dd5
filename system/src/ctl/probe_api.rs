//! `nodeplanectl probe DIR --api KUBECONFIG`: the probe's objects go to a
//! real API server instead of a manifests directory, and the probe's
//! nodeplaned follows that server, as a node's does.
//!
//! The API server must listen on this machine's loopback (as `cargo xtask
//! cluster up`'s does): the probe's node namespace reaches it through a
//! forwarder the probe holds, listening at the same address inside the node,
//! so the kubeconfig and its certificates hold unchanged. The probe's pods are
//! bound to a Node object of its own (no scheduler or kubelet of the cluster
//! takes them), and everything it wrote is deleted when it ends.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, Scope};
use secrecy::ExposeSecret;
use serde_json::Value;

/// Why `--api` cannot follow the API server a kubeconfig names.
#[derive(Debug, thiserror::Error)]
pub enum ApiClusterError {
    #[error("{path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error(
        "the API server {0} is not on this machine's loopback: the probe's node namespace reaches only that \
         (for instance `cargo xtask cluster up`'s, https://127.0.0.1:16443)"
    )]
    NotLoopback(String),
    #[error("the API server at {server}: {message}")]
    Api { server: String, message: String },
}

/// How long a write may be refused for a reason that passes (a new
/// namespace's default ServiceAccount, which admitting its pods needs, comes
/// from the controller manager a moment later).
const ADMISSION_WAIT: Duration = Duration::from_secs(30);
/// How long the probe waits for its namespaces to be gone when it ends.
const CLEANUP_WAIT: Duration = Duration::from_secs(60);
const FIELD_MANAGER: &str = "nodeplane-probe";

/// One object the probe wrote, to delete at the end.
#[derive(PartialEq)]
struct Written {
    resource: ApiResource,
    namespace: Option<String>,
    name: String,
}

/// An API server on this machine's loopback, as a [`nodeplane_probe::Cluster`].
pub struct ApiCluster {
    server: SocketAddrV4,
    section: String,
    node: String,
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    resources: Mutex<HashMap<(String, String), (ApiResource, ApiCapabilities)>>,
    written: Mutex<Vec<Written>>,
    forwarder: Mutex<Option<TcpListener>>,
}

impl ApiCluster {
    /// Reads `kubeconfig` (its current context: server, CA, client
    /// certificate) and creates the probe's Node object.
    pub fn new(kubeconfig: &Path) -> Result<ApiCluster, ApiClusterError> {
        let path = std::path::absolute(kubeconfig).unwrap_or_else(|_| kubeconfig.to_owned());
        let bad = |message: String| ApiClusterError::Kubeconfig { path: path.clone(), message };
        let config = Kubeconfig::read_from(&path).map_err(|e| bad(e.to_string()))?;
        let (url, ca, cert, key) = credentials(&config, path.parent().unwrap_or(Path::new("/"))).map_err(bad)?;
        let server = loopback(&url).ok_or_else(|| ApiClusterError::NotLoopback(url.clone()))?;
        let node = format!("nodeplane-probe-{}", std::process::id());
        let section = format!(
            "[kubernetes]\napi_server = \"{url}\"\nnode_name = \"{node}\"\nkubeconfig = \"{}\"\n\
             cluster_ca = \"\"\"\n{ca}\"\"\"\nclient_certificate = \"\"\"\n{cert}\"\"\"\nclient_key = \"\"\"\n{key}\"\"\"\n",
            path.display()
        );
        let api = |message: String| ApiClusterError::Api { server: url.clone(), message };
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| api(e.to_string()))?;
        let client = runtime
            .block_on(async {
                let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
                kube::Client::try_from(config)
            })
            .map_err(|e| api(e.to_string()))?;
        let cluster = ApiCluster {
            server,
            section,
            node: node.clone(),
            runtime,
            client,
            resources: Mutex::default(),
            written: Mutex::default(),
            forwarder: Mutex::default(),
        };
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
        cluster.apply_one(object).map_err(api)?;
        Ok(cluster)
    }

    /// The resource of `apiVersion`/`kind`, found by discovery once.
    async fn resource(&self, api_version: &str, kind: &str) -> Result<(ApiResource, ApiCapabilities), String> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some(found) = self.resources.lock().expect("not poisoned").get(&key) {
            return Ok(found.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let found = kube::discovery::pinned_kind(&self.client, &GroupVersionKind::gvk(group, version, kind))
            .await
            .map_err(|e| format!("{api_version} {kind}: {e}"))?;
        self.resources.lock().expect("not poisoned").insert(key, found.clone());
        Ok(found)
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Where `object` lives: its kind and name, its resource and namespace.
    async fn target(&self, object: &Value) -> Result<Target, String> {
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(api_version), Some(kind), Some(name)) =
            (text(object, "apiVersion"), text(object, "kind"), text(&object["metadata"], "name"))
        else {
            return Err(format!("an object without apiVersion, kind and name: {object}"));
        };
        let (resource, capabilities) = self.resource(&api_version, &kind).await?;
        let namespace = (capabilities.scope == Scope::Namespaced)
            .then(|| text(&object["metadata"], "namespace").unwrap_or_else(|| "default".into()));
        Ok(Target { kind, written: Written { resource, namespace, name } })
    }

    /// Creates or updates one object (server-side apply); its kind and resourceVersion.
    fn apply_one(&self, mut object: Value) -> Result<(String, u64), String> {
        if object["kind"] == "Pod" {
            object["spec"]["nodeName"] = Value::String(self.node.clone());
        }
        self.runtime.block_on(async {
            let Target { kind, written: target } = self.target(&object).await?;
            let api = self.api(&target.resource, target.namespace.as_deref());
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let deadline = Instant::now() + ADMISSION_WAIT;
            let applied = loop {
                match api.patch(&target.name, &params, &Patch::Apply(&object)).await {
                    Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    result => break result.map_err(|e| format!("{kind} {}: {e}", target.name))?,
                }
            };
            let mut written = self.written.lock().expect("not poisoned");
            if !written.contains(&target) {
                written.push(target);
            }
            let version = applied.metadata.resource_version.as_deref().and_then(|v| v.parse().ok());
            Ok((kind, version.unwrap_or(0)))
        })
    }

    fn delete_one(&self, object: &Value) -> Result<(), String> {
        self.runtime.block_on(async {
            let Target { kind, written: target } = self.target(object).await?;
            delete(&self.api(&target.resource, target.namespace.as_deref()), &target.name)
                .await
                .map_err(|e| format!("{kind} {}: {e}", target.name))
        })
    }
}

/// An object's kind and where it is written.
struct Target {
    kind: String,
    written: Written,
}

/// Deletes at once: no kubelet runs the probe's pods to confirm a graceful end.
async fn delete(api: &Api<DynamicObject>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default().grace_period(0)).await {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        result => result.map(drop),
    }
}

/// The documents of a stream the stage wrote (JSON documents between `---` lines).
fn documents(text: &str) -> Result<Vec<Value>, String> {
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::from_str(d).map_err(|e| format!("an object the stage wrote: {e}")))
        .collect()
}

impl nodeplane_probe::Cluster for ApiCluster {
    fn start(&self, netns: &Path) -> Result<String, String> {
        let server = self.server;
        let listener = nodeplane_sandbox::in_netns_at(netns, move || TcpListener::bind(server))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("forwarding {server} into the node's namespace: {e}"))?;
        let accepting = listener.try_clone().map_err(|e| e.to_string())?;
        std::thread::spawn(move || nodeplane_sandbox::forward(&accepting, move || TcpStream::connect(server)));
        *self.forwarder.lock().expect("not poisoned") = Some(listener);
        Ok(self.section.clone())
    }

    fn apply(&self, documents: &str) -> Result<Vec<(String, u64)>, String> {
        self::documents(documents)?.into_iter().map(|object| self.apply_one(object)).collect()
    }

    fn delete(&self, documents: &str) -> Result<(), String> {
        self::documents(documents)?.iter().try_for_each(|object| self.delete_one(object))
    }
}

/// Everything the probe wrote is deleted (newest first, its Node last), and
/// its namespaces awaited: a probe run next finds the cluster as it was.
impl Drop for ApiCluster {
    fn drop(&mut self) {
        if let Some(listener) = self.forwarder.lock().expect("not poisoned").take() {
            // Wakes the accepting thread, which then ends.
            let _ = rustix::net::shutdown(listener.as_fd(), rustix::net::Shutdown::Read);
        }
        let written = std::mem::take(&mut *self.written.lock().expect("not poisoned"));
        eprintln!("probe: removing its {} object(s) from the API server", written.len());
        self.runtime.block_on(async {
            for w in written.iter().rev() {
                if let Err(err) = delete(&self.api(&w.resource, w.namespace.as_deref()), &w.name).await {
                    eprintln!("probe: deleting {} {}: {err}", w.resource.kind, w.name);
                }
            }
            let deadline = Instant::now() + CLEANUP_WAIT;
            for w in written.iter().filter(|w| w.resource.kind == "Namespace") {
                let api = self.api(&w.resource, None);
                while api.get_opt(&w.name).await.is_ok_and(|found| found.is_some()) {
                    if Instant::now() > deadline {
                        eprintln!("probe: namespace {} is still being deleted", w.name);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
}

/// The IPv4 loopback address and port of `https://127.x.y.z:PORT`.
fn loopback(url: &str) -> Option<SocketAddrV4> {
    let authority = url.strip_prefix("https://")?.trim_end_matches('/');
    let address: SocketAddr = authority.parse().ok()?;
    match address {
        SocketAddr::V4(v4) if v4.ip().is_loopback() => Some(v4),
        _ => None,
    }
    .filter(|a| *a.ip() != Ipv4Addr::UNSPECIFIED)
}

/// The current context's server URL and its CA, client certificate and key
/// (PEM), from the kubeconfig's `*-data` fields or the files it names
/// (relative to `base`, the kubeconfig's directory).
fn credentials(config: &Kubeconfig, base: &Path) -> Result<(String, String, String, String), String> {
    let context_name = config.current_context.as_deref().ok_or("no current-context")?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("no context {context_name:?}"))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| format!("no cluster {:?}", context.cluster))?;
    let user_name = context.user.as_deref().ok_or("the current context names no user")?;
    let user = config
        .auth_infos
        .iter()
        .find(|a| a.name == user_name)
        .and_then(|a| a.auth_info.as_ref())
        .ok_or_else(|| format!("no user {user_name:?}"))?;
    let url = cluster.server.clone().ok_or("the cluster has no server")?;
    let pem = |data: Option<&str>, file: Option<&String>, what: &str| -> Result<String, String> {
        match (data, file) {
            (Some(data), _) => base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("{what}-data: {e}"))
                .and_then(|bytes| String::from_utf8(bytes).map_err(|e| format!("{what}-data: {e}"))),
            (None, Some(file)) => {
                let path = base.join(file);
                std::fs::read_to_string(&path).map_err(|e| format!("{what} {}: {e}", path.display()))
            }
            (None, None) => Err(format!(
                "no {what}: the probe's nodeplaned needs the cluster's CA and a client certificate and key"
            )),
        }
    };
    let ca = pem(
        cluster.certificate_authority_data.as_deref(),
        cluster.certificate_authority.as_ref(),
        "certificate-authority",
    )?;
    let cert = pem(user.client_certificate_data.as_deref(), user.client_certificate.as_ref(), "client-certificate")?;
    let key_data = user.client_key_data.as_ref().map(|k| k.expose_secret().to_owned());
    let key = pem(key_data.as_deref(), user.client_key.as_ref(), "client-key")?;
    Ok((url, ca, cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ipv4_loopback_api_server_can_be_forwarded() {
        assert_eq!(loopback("https://127.0.0.1:16443"), Some("127.0.0.1:16443".parse().unwrap()));
        assert_eq!(loopback("https://127.0.0.1:16443/"), Some("127.0.0.1:16443".parse().unwrap()));
        assert_eq!(loopback("https://10.0.0.1:6443"), None);
        assert_eq!(loopback("https://localhost:6443"), None, "a name would have to be resolved in both namespaces");
        assert_eq!(loopback("http://127.0.0.1:8080"), None);
    }
}
