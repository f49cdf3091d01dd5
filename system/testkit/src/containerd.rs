use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{Container, CreateContainerRequest, DeleteContainerRequest};
use containerd_client::tonic::Request;
use containerd_client::tonic::transport::Channel;

/// A private containerd 2, the node's (its own root, state, sockets and opt
/// dir; CRI and NRI disabled), killed on drop. Nothing it writes leaves its
/// temporary directory. The binary is the one `cargo xtask` builds from source
/// ([`binary`]).
pub struct Containerd {
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nodeplane-ctrd-").tempdir()?;
        let path = |name: &str| dir.path().join(name).display().to_string();
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 3\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.runtime\", \
                 \"io.containerd.cri.v1.images\", \"io.containerd.podsandbox.controller.v1.podsandbox\", \
                 \"io.containerd.nri.v1.nri\"]\n\
                 [grpc]\n  address = \"{grpc}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n[debug]\n  address = \"{debug}\"\n\
                 [plugins.'io.containerd.internal.v1.opt']\n  path = \"{opt}\"\n",
                root = path("root"),
                state = path("state"),
                grpc = socket.display(),
                ttrpc = path("containerd.sock.ttrpc"),
                debug = path("debug.sock"),
                opt = path("opt"),
            ),
        )?;
        let mut containerd = Containerd { child: None, config, socket, dir };
        containerd.spawn()?;
        Ok(containerd)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("containerd.log"))?;
        let child = Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting {} (`cargo xtask setup` builds it): {e}", binary().display()),
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("containerd did not listen on {}", self.socket.display())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops it (SIGKILL, like a crash); its data stays for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(&self.socket);
    }

    pub fn start_again(&mut self) -> io::Result<()> {
        self.stop();
        self.spawn()
    }

    pub async fn channel(&self) -> Channel {
        containerd_client::connect(&self.socket).await.expect("connect to the test containerd")
    }

    /// Creates container records (no image, no task) in namespace `ns`.
    pub async fn create_containers(&self, ns: &str, ids: &[String]) {
        create_containers(&self.socket, ns, ids).await
    }

    pub async fn delete_container(&self, ns: &str, id: &str) {
        let mut client = ContainersClient::new(self.channel().await);
        client
            .delete(namespaced(DeleteContainerRequest { id: id.into() }, ns))
            .await
            .unwrap_or_else(|e| panic!("delete container {id}: {e}"));
    }
}

/// containerd 2 as the node runs it: `NODEPLANE_CONTAINERD` when set, else
/// the build `cargo xtask` caches.
pub fn binary() -> PathBuf {
    std::env::var_os("NODEPLANE_CONTAINERD").map(PathBuf::from).unwrap_or_else(|| {
        nodeplane_image::upstream::CONTAINERD.cached(&nodeplane_image::upstream::default_cache()).join("containerd")
    })
}

/// Records pod sandboxes in namespace `ns`'s sandbox store (containerd 2) of
/// the containerd at `socket`, with no container: as the CRI does before a
/// pod's CNI ADD.
pub async fn create_sandboxes(socket: &Path, ns: &str, ids: &[String]) {
    use containerd_client::services::v1::sandbox::StoreCreateRequest;
    use containerd_client::services::v1::sandbox::store_client::StoreClient;
    use containerd_client::types::Sandbox;
    use containerd_client::types::sandbox::Runtime;
    let channel = containerd_client::connect(socket).await.expect("connect to containerd");
    let mut client = StoreClient::new(channel);
    for id in ids {
        let sandbox = Sandbox {
            sandbox_id: id.clone(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            sandboxer: "podsandbox".into(),
            ..Default::default()
        };
        let request = namespaced(StoreCreateRequest { sandbox: Some(sandbox) }, ns);
        client.create(request).await.unwrap_or_else(|e| panic!("create sandbox {id}: {e}"));
    }
}

/// Creates container records (no image, no task) in namespace `ns` of the
/// containerd at `socket`: owners for planted IPAM reservations.
pub async fn create_containers(socket: &Path, ns: &str, ids: &[String]) {
    let channel = containerd_client::connect(socket).await.expect("connect to containerd");
    let mut client = ContainersClient::new(channel);
    for id in ids {
        let spec = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
        };
        let container = Container {
            id: id.clone(),
            runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(spec),
            ..Default::default()
        };
        let request = namespaced(CreateContainerRequest { container: Some(container) }, ns);
        client.create(request).await.unwrap_or_else(|e| panic!("create container {id}: {e}"));
    }
}

fn namespaced<T>(message: T, ns: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().expect("an ASCII namespace"));
    request
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}
