//! What containerd knows: its namespaces, and the ids of the containers and of
//! the pod sandboxes in one (containerd 2 records a sandbox in its sandbox
//! store before the CNI ADD, and may create its pause container only later).
//! Every call is counted, and so is every (re)connection, which tells a sweep that
//! containerd restarted under it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::sandbox::StoreListRequest;
use containerd_client::services::v1::sandbox::store_client::StoreClient;
use containerd_client::services::v1::{ListContainersRequest, ListNamespacesRequest};
use hyper_util::rt::TokioIo;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

/// What went wrong asking containerd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd unreachable at {}: {reason}", socket.display())]
    Unreachable { socket: PathBuf, reason: String },
    #[error("containerd at {}: {call} failed: {code}: {message}", socket.display())]
    Call { socket: PathBuf, call: &'static str, code: String, message: String },
    #[error("namespace {0:?} is not valid in a gRPC header")]
    BadNamespace(String),
    #[error("containerd at {}: a list sent a record without an id", .0.display())]
    EmptyRecord(PathBuf),
    #[error("containerd has no namespace {namespace:?} (it has: {})", if has.is_empty() { "none".to_owned() } else { has.join(", ") })]
    NoNamespace { namespace: String, has: Vec<String> },
    #[error("containerd restarted during the sweep")]
    Restarted,
}

/// A connection to containerd's gRPC API.
pub struct Containerd {
    channel: Channel,
    socket: PathBuf,
    connects: Arc<AtomicU64>,
    calls: u64,
}

impl Containerd {
    /// The longest any call may take (listing thousands of containers takes a while).
    pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

    pub async fn connect(socket: &Path) -> Result<Self, ContainerdError> {
        let connects = Arc::new(AtomicU64::new(0));
        let (path, counter) = (socket.to_owned(), connects.clone());
        let channel = Endpoint::from_static("http://[::]")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Self::CALL_TIMEOUT)
            // A small window keeps a streamed list of thousands of containers from
            // piling up in memory ahead of the reader.
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024)
            .connect_with_connector(tower::service_fn(move |_| {
                let (path, counter) = (path.clone(), counter.clone());
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| ContainerdError::Unreachable { socket: socket.to_owned(), reason: source_chain(&e) })?;
        Ok(Containerd { channel, socket: socket.to_owned(), connects, calls: 0 })
    }

    /// gRPC calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Connections established so far: more than one means containerd went away and came back.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::SeqCst)
    }

    pub async fn namespaces(&mut self, timeout: Duration) -> Result<Vec<String>, ContainerdError> {
        self.calls += 1;
        let mut request = Request::new(ListNamespacesRequest::default());
        request.set_timeout(timeout);
        let response = NamespacesClient::new(self.channel.clone())
            .list(request)
            .await
            .map_err(|e| self.failed("Namespaces.List", &e))?;
        Ok(response.into_inner().namespaces.into_iter().map(|n| n.name).collect())
    }

    /// The ids of every container in `namespace`, streamed (a unary List would hit
    /// gRPC's message size limit on a busy node). Any error fails the whole list.
    pub async fn container_ids(&mut self, namespace: &str) -> Result<HashSet<String>, ContainerdError> {
        self.calls += 1;
        let mut request = Request::new(ListContainersRequest::default());
        let ns = namespace.parse().map_err(|_| ContainerdError::BadNamespace(namespace.to_owned()))?;
        request.metadata_mut().insert("containerd-namespace", ns);
        let mut stream = ContainersClient::new(self.channel.clone())
            .list_stream(request)
            .await
            .map_err(|e| self.failed("Containers.ListStream", &e))?
            .into_inner();
        let mut ids = HashSet::new();
        while let Some(message) = stream.message().await.map_err(|e| self.failed("Containers.ListStream", &e))? {
            // A message without a container would leave the live set incomplete.
            match message.container {
                Some(container) if !container.id.is_empty() => ids.insert(container.id),
                _ => return Err(ContainerdError::EmptyRecord(self.socket.clone())),
            };
        }
        Ok(ids)
    }

    /// The ids of every pod sandbox in `namespace`'s sandbox store; none from
    /// a containerd without one (before 2.0, where the pause container is the
    /// sandbox's only record).
    pub async fn sandbox_ids(&mut self, namespace: &str) -> Result<HashSet<String>, ContainerdError> {
        self.calls += 1;
        let mut request = Request::new(StoreListRequest::default());
        let ns = namespace.parse().map_err(|_| ContainerdError::BadNamespace(namespace.to_owned()))?;
        request.metadata_mut().insert("containerd-namespace", ns);
        match StoreClient::new(self.channel.clone()).list(request).await {
            Ok(response) => {
                let mut ids = HashSet::new();
                for sandbox in response.into_inner().list {
                    if sandbox.sandbox_id.is_empty() {
                        return Err(ContainerdError::EmptyRecord(self.socket.clone()));
                    }
                    ids.insert(sandbox.sandbox_id);
                }
                Ok(ids)
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(HashSet::new()),
            Err(status) => Err(self.failed("sandbox.Store.List", &status)),
        }
    }

    fn failed(&self, call: &'static str, status: &tonic::Status) -> ContainerdError {
        ContainerdError::Call {
            socket: self.socket.clone(),
            call,
            code: status.code().to_string(),
            message: status.message().to_owned(),
        }
    }
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}
