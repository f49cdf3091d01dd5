//! The node's place in its cluster, as a supervisor component: with a
//! `[kubernetes]` section, it reads this node's own Node object from the API
//! server (the `kube` crate, with the kubelet's credentials, which the Node
//! authorizer lets read exactly that object) until `spec.podCIDR` is there,
//! and publishes it as the fact `pod_cidr`. The supervisor gives it to the
//! datapath (masquerade) and nodeplane-cni reads it over D-Bus, both only
//! where `[datapath] pod_cidr` is unset. Without the section the node is
//! standalone, which is healthy.
//!
//! Never in the way of READY: the node boots before its cluster is reachable.
//! An API server that does not answer makes the component `degraded`, saying
//! since when — after a first minute of grace, while the node boots and its
//! network comes up, unless it has been reached before.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::component::{Component, Fact, Facts, Reporter, State};
use crate::config::{KubernetesConfig, NodeConfig};

/// How often the Node is read until its podCIDR is known, and after.
const UNTIL_KNOWN: Duration = Duration::from_secs(2);
const ONCE_KNOWN: Duration = Duration::from_secs(60);
/// One read's limit, connection included.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after start an unreachable API server is still "joining", not degraded.
const JOIN_GRACE: Duration = Duration::from_secs(60);

pub struct KubernetesComponent {
    config: Option<KubernetesConfig>,
    reporter: Reporter,
    client: Option<kube::Client>,
    pod_cidr: Option<String>,
    /// Since when the API server has not answered.
    failing_since: Option<SystemTime>,
    /// When the component started following the cluster it is configured with.
    joining_since: std::time::Instant,
    /// Whether the API server has answered since.
    reached: bool,
}

/// Why there is no client for the API server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the kubeconfig {}: {source}", path.display())]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("a client for {server}: {source}")]
    Client { server: String, source: kube::Error },
}

/// A client with nodeplaned's credentials ([`crate::kubelet::nodeplaned_kubeconfig`]):
/// with the kubelet's and a bootstrap token, they exist once the kubelet has its certificate.
pub async fn client(config: &KubernetesConfig) -> Result<kube::Client, ClientError> {
    let path = crate::kubelet::nodeplaned_kubeconfig(config);
    let kubeconfig =
        Kubeconfig::read_from(&path).map_err(|source| ClientError::Kubeconfig { path: path.clone(), source })?;
    let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ClientError::Kubeconfig { path, source })?;
    kube::Client::try_from(client_config)
        .map_err(|source| ClientError::Client { server: config.api_server.clone(), source })
}

/// Why the Node could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("reading Node {name}: {source}")]
    Get { name: String, source: kube::Error },
    #[error("reading Node {0}: no answer within {READ_TIMEOUT:?}")]
    Timeout(String),
}

impl Component for KubernetesComponent {
    const NAME: &'static str = "kubernetes";
    type Error = std::convert::Infallible;

    async fn start(config: &NodeConfig, reporter: Reporter) -> Result<Self, Self::Error> {
        let component = KubernetesComponent {
            config: config.kubernetes.clone(),
            reporter,
            client: None,
            pod_cidr: None,
            failing_since: None,
            joining_since: std::time::Instant::now(),
            reached: false,
        };
        component.publish();
        Ok(component)
    }

    async fn reload(&mut self, config: &NodeConfig) -> Result<(), Self::Error> {
        if config.kubernetes != self.config {
            self.config = config.kubernetes.clone();
            self.client = None;
            self.pod_cidr = None;
            self.failing_since = None;
            self.joining_since = std::time::Instant::now();
            self.reached = false;
            self.publish();
        }
        Ok(())
    }

    fn interval(&self) -> Option<Duration> {
        self.config.as_ref().map(|_| if self.pod_cidr.is_some() { ONCE_KNOWN } else { UNTIL_KNOWN })
    }

    async fn tick(&mut self) {
        let Some(config) = self.config.clone() else { return };
        match tokio::time::timeout(READ_TIMEOUT, self.read_node(&config)).await {
            Ok(Ok(pod_cidr)) => {
                self.failing_since = None;
                self.reached = true;
                if pod_cidr.is_some() && pod_cidr != self.pod_cidr {
                    tracing::info!("node {}: spec.podCIDR is {}", config.node_name, pod_cidr.as_deref().unwrap_or(""));
                }
                self.pod_cidr = pod_cidr.or(self.pod_cidr.take());
                self.publish();
            }
            Ok(Err(err)) => self.failed(err),
            Err(_) => self.failed(ReadError::Timeout(config.node_name.clone())),
        }
    }

    type Command = std::convert::Infallible;

    async fn command(&mut self, command: Self::Command) {
        match command {}
    }
}

impl KubernetesComponent {
    /// The Node's `spec.podCIDR`, `None` until the controller manager sets it.
    async fn read_node(&mut self, config: &KubernetesConfig) -> Result<Option<String>, ReadError> {
        if self.client.is_none() {
            self.client = Some(client(config).await?);
        }
        let client = self.client.clone().expect("made above");
        let nodes: kube::Api<Node> = kube::Api::all(client);
        match nodes.get_opt(&config.node_name).await {
            Ok(node) => Ok(node.and_then(|n| n.spec?.pod_cidr)),
            Err(source) => {
                // A new connection next time: the server may have moved on.
                self.client = None;
                Err(ReadError::Get { name: config.node_name.clone(), source })
            }
        }
    }

    fn failed(&mut self, err: ReadError) {
        let since = *self.failing_since.get_or_insert_with(SystemTime::now);
        let since = humantime::format_rfc3339_seconds(since);
        if !self.reached && self.joining_since.elapsed() < JOIN_GRACE {
            // Booting: the network (or the cluster) may not be up yet.
            let api = self.config.as_ref().map_or("", |c| c.api_server.as_str());
            self.reporter.set(State::Healthy, format!("joining {api}: waiting for the API server ({err})"));
        } else {
            self.reporter.set(State::Degraded, format!("the API server is unreachable since {since}: {err}"));
        }
        self.publish_facts();
    }

    /// State and facts from what is known.
    fn publish(&self) {
        match (&self.config, &self.pod_cidr) {
            (None, _) => self.reporter.set(State::Healthy, "standalone: node.toml has no [kubernetes] section"),
            (Some(config), None) => self.reporter.set(
                State::Healthy,
                format!("joining {}: waiting for Node {}'s spec.podCIDR", config.api_server, config.node_name),
            ),
            (Some(config), Some(cidr)) => self.reporter.set(
                State::Healthy,
                format!("joined {} as {}; pod subnet {cidr}", config.api_server, config.node_name),
            ),
        }
        self.publish_facts();
    }

    fn publish_facts(&self) {
        let mut facts = Facts::new();
        if let Some(config) = &self.config {
            facts.insert("api_server".into(), Fact::Text(config.api_server.clone()));
            facts.insert("node_name".into(), Fact::Text(config.node_name.clone()));
        }
        if let Some(cidr) = &self.pod_cidr {
            facts.insert(POD_CIDR_FACT.into(), Fact::Text(cidr.clone()));
        }
        self.reporter.set_facts(facts);
    }
}

/// The fact naming the pod subnet read from the Node.
pub const POD_CIDR_FACT: &str = "pod_cidr";
