//! A node stood up on this machine from a directory of manifests: a network
//! namespace for the node, a private D-Bus daemon, a fresh bpffs, a real
//! `nodeplaned` with that directory's Services and NetworkPolicies, and one
//! network namespace per Pod manifest, attached through the real
//! `nodeplane-cni` (and host-local IPAM), serving TCP and UDP on the pod's
//! declared container ports. Everything is removed on drop — also after an
//! interrupt, which [`Stage::interrupted`] reports.
//!
//! With a [`Cluster`], the node follows a real API server instead: the
//! manifests become objects in it, and nodeplaned watches them.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nodeplane_bus::DatapathProxy;
use nodeplane_model::Protocol;
use nodeplane_model::manifests::{Manifests, SelectorService, TargetPort, load_dir};
use nodeplane_model::policy::{Labels, NamedPort};
use nodeplane_sandbox::{Bpffs, DbusDaemon, NamedNetns, Node, PassedSocket, SET_LISTEN_PID, SandboxError, in_netns_at};

use crate::ProbeError;

/// The programs a stage runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub nodeplaned: PathBuf,
    pub cni: PathBuf,
    /// Directories holding the CNI IPAM plugins (host-local), as `CNI_PATH`.
    pub cni_path: String,
}

/// Where CNI plugins live on Debian (containernetworking-plugins) and elsewhere.
const CNI_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

impl Binaries {
    /// `nodeplaned` beside this program, `nodeplane-cni` there or in a CNI
    /// directory (the node image has it in /usr/lib/cni), host-local from the
    /// CNI directories.
    pub fn beside_current_exe() -> Result<Self, ProbeError> {
        let exe = std::env::current_exe().map_err(|e| ProbeError::Setup(format!("finding this program: {e}")))?;
        let dir = exe.parent().unwrap_or(Path::new("/"));
        Self::in_dir(dir)
    }

    /// `nodeplaned` in `dir`, `nodeplane-cni` there or in a CNI directory.
    pub fn in_dir(dir: &Path) -> Result<Self, ProbeError> {
        let find = |name: &str| {
            let mut places =
                std::iter::once(dir).chain(CNI_DIRS.iter().map(Path::new).filter(|_| name.ends_with("-cni")));
            places.find_map(|d| Some(d.join(name)).filter(|p| p.is_file())).ok_or_else(|| {
                ProbeError::Setup(format!("{name} is not in {} (nor in the CNI directories)", dir.display()))
            })
        };
        let cni_path =
            CNI_DIRS.iter().filter(|d| Path::new(d).join("host-local").is_file()).copied().collect::<Vec<_>>();
        if cni_path.is_empty() {
            return Err(ProbeError::Setup(format!(
                "the CNI host-local plugin is in none of {} (package containernetworking-plugins)",
                CNI_DIRS.join(", ")
            )));
        }
        Ok(Binaries { nodeplaned: find("nodeplaned")?, cni: find("nodeplane-cni")?, cni_path: cni_path.join(":") })
    }
}

/// A pod of the stage.
pub struct StagedPod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    netns: NamedNetns,
}

impl StagedPod {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes API server a stage's node follows, instead of a manifests directory.
pub trait Cluster: Send + Sync {
    /// Has the API server answer in the node's network namespace (at
    /// `netns`), on its loopback; returns nodeplaned's `[kubernetes]` section,
    /// after any keys the cluster's nodes need in their `[datapath]` section
    /// (`routing`, say): it follows the stage's `[datapath]` keys.
    fn start(&self, netns: &Path) -> Result<String, String>;
    /// Creates or updates the objects of a stream of JSON documents (`---`
    /// lines between them); each one's kind and resourceVersion after the write.
    fn apply(&self, documents: &str) -> Result<Vec<(String, u64)>, String>;
    /// Deletes the objects of a stream of JSON documents (those that exist).
    fn delete(&self, documents: &str) -> Result<(), String>;
}

/// The stood-up node. Field order is teardown order.
pub struct Stage {
    pub(crate) runtime: tokio::runtime::Runtime,
    pub pods: Vec<StagedPod>,
    nodeplaned: Option<Child>,
    /// The metrics socket nodeplaned is given, as systemd would give it.
    metrics: PassedSocket,
    node: Node,
    bus: DbusDaemon,
    bpffs: Bpffs,
    dir: tempfile::TempDir,
    pub services: Vec<SelectorService>,
    interrupted: Arc<AtomicBool>,
    /// The next UDP source port a probe binds: every probe is a new flow.
    pub(crate) next_port: AtomicU32,
    /// The subnet pods get addresses from.
    subnet: String,
    /// The API server followed, with nodeplaned's `[kubernetes]` section.
    cluster: Option<(Arc<dyn Cluster>, String)>,
    /// With a cluster: each manifest file's text, as applied.
    applied: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// With a cluster: the last barrier written (see [`Stage::settle`]).
    barrier: AtomicU32,
}

/// The subnet pods get their addresses from (only inside the stage's node).
pub const DEFAULT_SUBNET: &str = "10.244.0.0/24";
const BUS_POLICY: &str = r#"<busconfig>
  <policy user="root">
    <allow own="org.nodeplane.Node1"/>
    <allow send_destination="org.nodeplane.Node1"/>
  </policy>
</busconfig>
"#;
/// How long nodeplaned may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Stage {
    /// Stands up the Namespaces and Pods that the manifests in `dir` describe,
    /// with its Services and NetworkPolicies applied. `progress` hears each step.
    pub fn new(dir: &Path, binaries: &Binaries, progress: &dyn Fn(&str)) -> Result<Stage, ProbeError> {
        Self::with_cluster(dir, binaries, progress, None)
    }

    /// [`Stage::new`], following `cluster` when given: the manifests (and the
    /// EndpointSlices the stage writes) are created in its API server.
    pub fn with_cluster(
        dir: &Path,
        binaries: &Binaries,
        progress: &dyn Fn(&str),
        cluster: Option<Arc<dyn Cluster>>,
    ) -> Result<Stage, ProbeError> {
        let found = load_dir(dir);
        if !found.errors.is_empty() {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            return Err(ProbeError::Manifests(errors));
        }
        if found.pods.is_empty() {
            return Err(ProbeError::Manifests(vec![format!("{}: no Pod manifests: nothing to probe", dir.display())]));
        }
        // Threads of its own: the pods' servers and the signal watch run while
        // this thread waits for the CNI plugin.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ProbeError::Setup(format!("a runtime: {e}")))?;
        let interrupted = Arc::new(AtomicBool::new(false));
        watch_signals(&runtime, interrupted.clone())?;
        let work = tempfile::Builder::new().prefix("nodeplane-probe-").tempdir().map_err(setup("a work directory"))?;
        for sub in ["manifests", "ipam", "state"] {
            std::fs::create_dir(work.path().join(sub)).map_err(setup("a work directory"))?;
        }
        progress("starting a node: network namespace, D-Bus daemon, bpffs, nodeplaned");
        let bpffs = Bpffs::mount().map_err(sandbox("a bpffs"))?;
        // Only root is on this bus: nodeplaned, the CNI plugin and the probe.
        let policy = work.path().join("bus-policy.conf");
        std::fs::write(&policy, BUS_POLICY).map_err(setup("a bus policy"))?;
        let bus = DbusDaemon::start(&[&policy]).map_err(sandbox("a D-Bus daemon"))?;
        let node = Node::new("npprobe").map_err(sandbox("the node's network namespace"))?;
        let cluster = match cluster {
            Some(cluster) => {
                progress("starting the API server");
                let section = cluster.start(&node.netns.path()).map_err(ProbeError::Setup)?;
                Some((cluster, section))
            }
            None => None,
        };
        let metrics = PassedSocket::loopback().map_err(sandbox("the metrics socket"))?;
        let mut stage = Stage {
            runtime,
            pods: Vec::new(),
            nodeplaned: None,
            metrics,
            node,
            bus,
            bpffs,
            dir: work,
            services: found.selector_services.clone(),
            interrupted,
            next_port: AtomicU32::new(0),
            subnet: DEFAULT_SUBNET.to_owned(),
            cluster,
            applied: Default::default(),
            barrier: AtomicU32::new(0),
        };
        if stage.cluster.is_some() {
            // In the API server before nodeplaned starts: its first list has them.
            progress("creating the objects in the API server");
            for (file, text) in manifest_texts(dir)? {
                stage.write_objects(&file, Some(&text))?;
            }
        }
        stage.start_nodeplaned(binaries)?;
        for (i, pod) in found.pods.iter().enumerate() {
            stage.check_interrupt()?;
            progress(&format!("pod {}/{} ({} of {})", pod.namespace, pod.name, i + 1, found.pods.len()));
            let netns = stage.node.pod_netns(i as u32).map_err(sandbox("a pod's network namespace"))?;
            let ip = stage.cni_add(binaries, &netns, &pod.namespace, &pod.name, i)?;
            stage.pods.push(StagedPod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                ip,
                labels: pod.labels.clone(),
                ports: pod.ports.clone(),
                netns,
            });
        }
        progress("applying the Services and NetworkPolicies");
        stage.copy_manifests(dir, &found)?;
        stage.settle()?;
        progress("starting the pods' servers");
        stage.serve()?;
        Ok(stage)
    }

    /// The bus nodeplaned is on, and the bpffs its maps are pinned in.
    pub fn bus_address(&self) -> &str {
        self.bus.address()
    }

    /// Where nodeplaned's metrics are served (on this machine's loopback).
    pub fn metrics_address(&self) -> std::net::SocketAddr {
        self.metrics.address()
    }

    /// The node's network namespace (`/var/run/netns/…`).
    pub fn node_netns(&self) -> PathBuf {
        self.node.netns.path()
    }

    pub fn bpffs_root(&self) -> PathBuf {
        self.bpffs.path().join("nodeplane")
    }

    /// Whether SIGINT, SIGTERM or SIGHUP came; the caller should stop, and
    /// dropping the stage cleans up.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    pub(crate) fn check_interrupt(&self) -> Result<(), ProbeError> {
        if self.interrupted() { Err(ProbeError::Interrupted) } else { Ok(()) }
    }

    fn start_nodeplaned(&mut self, binaries: &Binaries) -> Result<(), ProbeError> {
        let config = self.dir.path().join("node.toml");
        let mut text = format!(
            "[ipam]\nenabled = false\n[datapath]\nbpffs_root = \"{}\"\nstate_dir = \"{}\"\nmanifests_dir = \"{}\"\n\
             socket_lb = false\nmasquerade = false\n",
            self.bpffs_root().display(),
            self.dir.path().join("state").display(),
            self.manifests_dir().display()
        );
        if let Some((_, section)) = &self.cluster {
            text = format!("{text}\n{section}\n");
        }
        std::fs::write(&config, text).map_err(setup("writing node.toml"))?;
        let log = std::fs::File::create(self.dir.path().join("nodeplaned.log")).map_err(setup("a log file"))?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.node.netns.path().display()))
            .args(["--", "sh", "-c", &format!("{SET_LISTEN_PID}\nexec \"$@\""), "sh"])
            .arg(&binaries.nodeplaned)
            .arg("--config")
            .arg(&config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.metrics.pass(&mut command, "metrics");
        let child = command
            .spawn()
            .map_err(|e| ProbeError::Setup(format!("starting {}: {e}", binaries.nodeplaned.display())))?;
        self.nodeplaned = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_interrupt()?;
            // Following a cluster, up means listed in full (pods can be added).
            let up = self.sync().and_then(|()| match &self.cluster {
                Some(_) if self.datapath_fact("api_synced").as_deref() != Some("true") => {
                    Err(ProbeError::Setup("the API server is not listed in full yet".into()))
                }
                _ => Ok(()),
            });
            match up {
                Ok(()) => return Ok(()),
                Err(err) if Instant::now() > deadline => {
                    return Err(ProbeError::Setup(format!(
                        "nodeplaned did not come up within {START_TIMEOUT:?}: {err}\n{}",
                        self.nodeplaned_log()
                    )));
                }
                Err(_) => {
                    if let Some(Ok(Some(status))) = self.nodeplaned.as_mut().map(Child::try_wait) {
                        return Err(ProbeError::Setup(format!(
                            "nodeplaned exited ({status}):\n{}",
                            self.nodeplaned_log()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// What nodeplaned has logged.
    pub fn nodeplaned_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nodeplaned.log")).unwrap_or_default()
    }

    /// The node's nodeplaned process, while running.
    pub fn nodeplaned_pid(&self) -> Option<u32> {
        self.nodeplaned.as_ref().map(Child::id)
    }

    /// Kills nodeplaned (SIGKILL), as a crash would; the datapath stays.
    pub fn kill_nodeplaned(&mut self) {
        if let Some(mut child) = self.nodeplaned.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills nodeplaned and starts it again, as systemd would after a crash;
    /// returns once the new one has applied the manifests.
    pub fn restart_nodeplaned(&mut self, binaries: &Binaries) -> Result<(), ProbeError> {
        self.kill_nodeplaned();
        self.start_nodeplaned(binaries)
    }

    fn manifests_dir(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Runs `nodeplane-cni ADD` for a pod, as a container runtime on the node
    /// would; returns the pod's address.
    fn cni_add(
        &self,
        binaries: &Binaries,
        netns: &NamedNetns,
        namespace: &str,
        name: &str,
        index: usize,
    ) -> Result<Ipv4Addr, ProbeError> {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "probe",
            "type": "nodeplane-cni",
            "ipam": {"type": "host-local", "dataDir": self.dir.path().join("ipam"), "ranges": [[{"subnet": self.subnet}]]},
        });
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.node.netns.path().display()))
            .arg("--")
            .arg(&binaries.cni)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("{}x{index}", self.node.prefix()))
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"))
            .env("CNI_PATH", &binaries.cni_path)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus.address())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ProbeError::Setup(format!("starting {}: {e}", binaries.cni.display())))?;
        child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes()).map_err(setup("CNI stdin"))?;
        let out = child.wait_with_output().map_err(setup("nodeplane-cni"))?;
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ip = result["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok());
        match ip {
            Some(ip) if out.status.success() => Ok(ip),
            _ => Err(ProbeError::Setup(format!(
                "nodeplane-cni ADD for {namespace}/{name} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))),
        }
    }

    /// Copies the manifests in `dir`, and writes the EndpointSlices of the
    /// Services that select pods (the endpoints controller's work).
    fn copy_manifests(&self, dir: &Path, found: &Manifests) -> Result<(), ProbeError> {
        if self.cluster.is_none() {
            for (file, text) in manifest_texts(dir)? {
                self.write_objects(&file, Some(&text))?;
            }
        }
        // JSON is YAML: one document per slice.
        let slices: Vec<String> = found.selector_services.iter().map(|s| self.endpoint_slice(s).to_string()).collect();
        self.write_objects("zz-probe-endpointslices.yaml", Some(&slices.join("\n---\n")))
    }

    /// Writes (or, with `None`, removes) the objects of manifest `file`: the
    /// file in the manifests directory, or its objects in the API server (an
    /// object the file no longer holds is deleted).
    fn write_objects(&self, file: &str, text: Option<&str>) -> Result<(), ProbeError> {
        let Some((cluster, _)) = &self.cluster else {
            let path = self.manifests_dir().join(file);
            return match text {
                Some(text) => std::fs::write(&path, text).map_err(setup("writing a manifest")),
                None => match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(ProbeError::Setup(format!("{}: {e}", path.display()))),
                },
            };
        };
        let mut applied = self.applied.lock().expect("not poisoned");
        let api = |e: String| ProbeError::Setup(format!("{file} in the API server: {e}"));
        let wanted = text.map(object_names).unwrap_or_default();
        if let Some(text) = text.filter(|t| !object_names(t).is_empty()) {
            cluster.apply(&as_json(text)).map_err(api)?;
        }
        if let Some(before) = applied.get(file) {
            let gone: Vec<String> = split_documents(before)
                .into_iter()
                .filter(|d| object_names(d).iter().all(|name| !wanted.contains(name)))
                .collect();
            if !gone.is_empty() {
                cluster.delete(&as_json(&gone.join("\n---\n"))).map_err(api)?;
            }
        }
        match text {
            Some(text) => applied.insert(file.to_owned(), text.to_owned()),
            None => applied.remove(file),
        };
        Ok(())
    }

    /// Applies what was written: a `Sync` of the manifests directory; with a
    /// cluster, first waits until nodeplaned's watches have seen every change
    /// so far. Each kind's watch delivers in order, so a barrier object of
    /// each kind, written last, tells: once nodeplaned's watch of a kind has
    /// come to the barrier's resourceVersion (its `api_*_revision` fact), it
    /// has seen everything written before.
    pub fn settle(&self) -> Result<(), ProbeError> {
        let Some((cluster, _)) = &self.cluster else { return self.sync() };
        let n = self.barrier.fetch_add(1, Ordering::SeqCst) + 1;
        let written = cluster.apply(&as_json(&barrier_objects(n))).map_err(ProbeError::Setup)?;
        let deadline = Instant::now() + START_TIMEOUT;
        for (kind, revision) in written {
            // nodeplaned's facts name the kinds in plural: api_services_revision, api_networkpolicies_revision.
            let plural = match kind.as_str() {
                "NetworkPolicy" => "networkpolicies".to_owned(),
                other => format!("{}s", other.to_lowercase()),
            };
            let fact = format!("api_{plural}_revision");
            loop {
                self.check_interrupt()?;
                let seen = self.datapath_fact(&fact).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                if seen >= revision {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ProbeError::Setup(format!(
                        "nodeplaned's watch of {plural} did not come to resourceVersion {revision} within {START_TIMEOUT:?} (at {seen})"
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.sync()
    }

    /// A fact of nodeplaned's datapath component, as text.
    fn datapath_fact(&self, name: &str) -> Option<String> {
        let (address, name) = (self.bus.address().to_owned(), name.to_owned());
        self.runtime
            .block_on(async move {
                let connection = zbus::connection::Builder::address(address.as_str()).build().await?;
                let component = nodeplane_bus::ComponentProxy::builder(&connection)
                    .path(nodeplane_bus::component_path("datapath"))
                    .build()
                    .await?;
                let facts = component.facts().await?;
                Ok::<_, zbus::Error>(facts.get(&name).map(|v| nodeplane_bus::fact_from_value(v).to_string()))
            })
            .ok()
            .flatten()
    }

    /// The EndpointSlice of a Service: the stage's pods its selector selects,
    /// with each port's target resolved (a name through the pod's container ports).
    fn endpoint_slice(&self, service: &SelectorService) -> serde_json::Value {
        let selected: Vec<&StagedPod> = self
            .pods
            .iter()
            .filter(|p| p.namespace == service.namespace)
            .filter(|p| service.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        let ports: Vec<serde_json::Value> = service
            .ports
            .iter()
            .filter_map(|(name, protocol, _, target)| {
                let number = match target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(wanted) => selected
                        .iter()
                        .find_map(|p| p.ports.iter().find(|n| n.name == *wanted && n.protocol == *protocol))
                        .map(|n| n.port),
                }?;
                Some(serde_json::json!({"name": name, "protocol": protocol.name(), "port": number}))
            })
            .collect();
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-probe", service.name),
                "namespace": service.namespace,
                "labels": {"kubernetes.io/service-name": service.name},
            },
            "addressType": "IPv4",
            "endpoints": selected.iter().map(|p| serde_json::json!({"addresses": [p.ip.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": ports,
        })
    }

    /// Writes (or, with `None`, removes) a manifest file in the node's manifests
    /// directory and has nodeplaned apply the directory now.
    pub fn set_manifest(&self, file: &str, text: Option<&str>) -> Result<(), ProbeError> {
        self.write_objects(file, text)?;
        self.settle()
    }

    /// Asks nodeplaned to apply the manifests directory now (`Datapath1.Sync`);
    /// any problem it reports is an error.
    pub fn sync(&self) -> Result<(), ProbeError> {
        let address = self.bus.address().to_owned();
        let problems = self.runtime.block_on(async move {
            let connection = zbus::connection::Builder::address(address.as_str()).build().await?;
            DatapathProxy::new(&connection).await?.sync().await
        })?;
        if problems.is_empty() { Ok(()) } else { Err(ProbeError::Manifests(problems)) }
    }

    /// Serves, in every pod, TCP and UDP on its declared container ports: each
    /// connection or datagram is answered with the pod's `namespace/name`.
    fn serve(&self) -> Result<(), ProbeError> {
        for pod in &self.pods {
            let declared: BTreeSet<(u16, Protocol)> = pod.ports.iter().map(|p| (p.port, p.protocol)).collect();
            for (port, protocol) in declared {
                let reply = pod.id().into_bytes();
                let addr = SocketAddr::from(([0, 0, 0, 0], port));
                let _guard = self.runtime.enter();
                match protocol {
                    Protocol::Tcp => {
                        let listener = in_netns_at(pod.netns.path(), move || {
                            let listener = std::net::TcpListener::bind(addr)?;
                            listener.set_nonblocking(true)?;
                            Ok::<_, std::io::Error>(listener)
                        })
                        .map_err(sandbox("a TCP server"))?
                        .map_err(setup("a TCP server"))?;
                        let listener = tokio::net::TcpListener::from_std(listener).map_err(setup("a TCP server"))?;
                        self.runtime.spawn(async move {
                            while let Ok((mut stream, _)) = listener.accept().await {
                                let reply = reply.clone();
                                tokio::spawn(async move {
                                    use tokio::io::AsyncWriteExt;
                                    let _ = stream.write_all(&reply).await;
                                    let _ = stream.shutdown().await;
                                });
                            }
                        });
                    }
                    Protocol::Udp => {
                        let socket = in_netns_at(pod.netns.path(), move || {
                            let socket = std::net::UdpSocket::bind(addr)?;
                            socket.set_nonblocking(true)?;
                            Ok::<_, std::io::Error>(socket)
                        })
                        .map_err(sandbox("a UDP server"))?
                        .map_err(setup("a UDP server"))?;
                        let socket = tokio::net::UdpSocket::from_std(socket).map_err(setup("a UDP server"))?;
                        self.runtime.spawn(async move {
                            let mut buffer = [0u8; 512];
                            while let Ok((_, peer)) = socket.recv_from(&mut buffer).await {
                                let _ = socket.send_to(&reply, peer).await;
                            }
                        });
                    }
                    // SCTP: not probed (see `probe`); nothing to serve.
                    Protocol::Sctp => {}
                }
            }
        }
        Ok(())
    }

    /// The network namespace of pod number `index` (`/var/run/netns/…`).
    pub fn pod_netns(&self, index: usize) -> PathBuf {
        self.pods[index].netns.path()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill_nodeplaned();
    }
}

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

fn sandbox(what: &'static str) -> impl Fn(SandboxError) -> ProbeError {
    move |source| ProbeError::Sandbox { what, source }
}

/// Turns SIGINT, SIGTERM and SIGHUP into a flag the stage's work checks, so
/// that an interrupt unwinds through the stage's cleanup instead of killing the
/// process with namespaces and mounts left behind.
fn watch_signals(runtime: &tokio::runtime::Runtime, flag: Arc<AtomicBool>) -> Result<(), ProbeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = runtime.enter();
    for kind in [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()] {
        let mut stream = signal(kind).map_err(setup("a signal handler"))?;
        let flag = flag.clone();
        runtime.spawn(async move {
            while stream.recv().await.is_some() {
                flag.store(true, Ordering::SeqCst);
            }
        });
    }
    Ok(())
}

/// The manifest files of `dir` (YAML and JSON), by name, with their text.
fn manifest_texts(dir: &Path) -> Result<Vec<(String, String)>, ProbeError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ProbeError::Setup(format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) && path.is_file() {
            let text =
                std::fs::read_to_string(&path).map_err(|e| ProbeError::Setup(format!("{}: {e}", path.display())))?;
            files.push((path.file_name().expect("a file name").to_string_lossy().into_owned(), text));
        }
    }
    files.sort();
    Ok(files)
}

/// The documents of a YAML stream.
fn split_documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            documents.push(String::new());
        } else {
            let last = documents.last_mut().expect("one at least");
            last.push_str(line);
            last.push('\n');
        }
    }
    documents.retain(|d| !object_names(d).is_empty());
    documents
}

/// A YAML stream's documents as JSON, as this stage read them: kubectl's YAML
/// 1.1 would take a label `y` or `no` for a boolean.
fn as_json(text: &str) -> String {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .filter_map(|document| serde_json::Value::deserialize(document).ok())
        .filter(|value| !value.is_null())
        .map(|value| value.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// `kind namespace/name` of each object in a YAML stream.
fn object_names(text: &str) -> Vec<String> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .filter_map(|document| serde_yaml_ng::Value::deserialize(document).ok())
        .filter_map(|value| {
            let kind = value.get("kind")?.as_str()?.to_owned();
            let metadata = value.get("metadata")?;
            let namespace = metadata.get("namespace").and_then(|n| n.as_str()).unwrap_or("default");
            Some(format!("{kind} {namespace}/{}", metadata.get("name")?.as_str()?))
        })
        .collect()
}

/// One object of each kind nodeplaned follows, labelled `n`: see [`Stage::settle`].
/// None changes what the datapath does: a Namespace and a Pod without pods
/// or policies of theirs, a headless Service, an EndpointSlice of no Service,
/// a NetworkPolicy selecting no pod.
fn barrier_objects(n: u32) -> String {
    let labels = format!("{{nodeplane.io/barrier: \"{n}\"}}");
    let meta = |name: &str| format!("metadata: {{name: {name}, namespace: nodeplane-barrier, labels: {labels}}}");
    [
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: nodeplane-barrier, labels: {labels}}}"),
        format!(
            "apiVersion: v1\nkind: Service\n{}\nspec: {{clusterIP: None, ports: [{{port: 1}}]}}",
            meta("barrier")
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n{}\naddressType: IPv4\nendpoints: []",
            meta("barrier")
        ),
        format!(
            "apiVersion: v1\nkind: Pod\n{}\nspec: {{containers: [{{name: barrier, image: registry.k8s.io/pause:3.10.2}}]}}",
            meta("barrier")
        ),
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{}\nspec: {{podSelector: {{matchLabels: {{nodeplane.io/barrier: none}}}}}}",
            meta("barrier")
        ),
    ]
    .join("\n---\n")
}
