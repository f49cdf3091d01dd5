//! A one-machine Kubernetes control plane, for the boot tests and `cargo xtask
//! run`: etcd, kube-apiserver (Node,RBAC authorization, NodeRestriction),
//! kube-controller-manager (allocating each node's `spec.podCIDR`) and
//! kube-scheduler, built from source ([`nodeplane_image::upstream`]) and run as
//! processes of this machine, on loopback, with a CA and certificates of their
//! own ([`pki`]).
//!
//! Everything lives in one directory: `pki/`, `etcd/` (the data),
//! `logs/NAME.log`, `pids/NAME.pid` and `admin.kubeconfig`. QEMU guests reach
//! the API server at `https://10.0.2.100:6443` through a guest forward
//! ([`ControlPlane::guest_forward`]), so the guest's user network stays closed
//! to everything else. Timeouts are long enough for TCG-emulated nodes.

pub mod pki;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodeplane_image::upstream;

pub use pki::KeyPair;

/// Where QEMU guests find the API server: an address of the user network that slirp forwards
/// (it refuses a guest forward on its own host address, 10.0.2.2).
pub const GUEST_API_ADDRESS: &str = "10.0.2.100";
pub const GUEST_API_PORT: u16 = 6443;
/// The pods' addresses: each node gets a /24 of it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's address (the first of [`SERVICE_CIDR`]).
const API_SERVICE_IP: &str = "10.96.0.1";
pub const CLUSTER_DNS: &str = "10.96.0.10";
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Why the control plane could not be brought up (or down).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
    #[error("building the control plane's binaries: {0}")]
    Build(#[from] nodeplane_image::ImageError),
    #[error("{name} exited during start-up; its log: {}", log.display())]
    Exited { name: &'static str, log: PathBuf },
    #[error("the API server was not ready within {timeout:?}; logs in {}", logs.display())]
    NotReady { timeout: Duration, logs: PathBuf },
    #[error("port {0} on 127.0.0.1 is taken: is another control plane running?")]
    PortTaken(u16),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io { path: path.to_owned(), source }
}

/// A control plane's loopback ports.
struct Ports {
    api: u16,
    etcd_client: u16,
    etcd_peer: u16,
    controllers: u16,
    scheduler: u16,
}

/// The control plane's processes, in start order.
const COMPONENTS: [&str; 4] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"];

/// A control plane's directory and ports (the API server's is `port`; etcd and
/// the controllers take the next four).
#[derive(Clone, Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub port: u16,
    kubernetes: PathBuf,
    etcd: PathBuf,
    /// A network namespace (its path) the processes and kubectl run in; this one's without.
    netns: Option<PathBuf>,
}

impl ControlPlane {
    /// The control plane in `dir` on ports from `port`, with binaries built (or
    /// taken from the cache) from `repo`'s recipes into `cache`.
    pub fn new(dir: &Path, port: u16, repo: &Path, cache: &Path) -> Result<Self, ClusterError> {
        let kubernetes = upstream::KUBERNETES.ensure(repo, cache)?;
        let etcd = upstream::ETCD.ensure(repo, cache)?;
        Ok(ControlPlane { dir: dir.to_owned(), port, kubernetes, etcd, netns: None })
    }

    /// The same control plane run in the network namespace at `netns` (a
    /// test's node namespace: its loopback is the node's).
    pub fn in_netns(mut self, netns: &Path) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    /// A command running `program` (in the network namespace, if any).
    fn program(&self, program: PathBuf) -> Command {
        match &self.netns {
            Some(netns) => {
                // nsenter execs the program: the pid and /proc/PID/exe are its.
                let mut command = Command::new("nsenter");
                command.arg(format!("--net={}", netns.display())).arg("--").arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join("pids").join(format!("{name}.pid"))
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The admin's kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// kubectl as the admin.
    pub fn kubectl(&self) -> Command {
        let mut command = self.program(self.kubernetes.join("kubectl"));
        command.arg("--kubeconfig").arg(self.admin_kubeconfig());
        command
    }

    /// The process ids of the components running now (started by [`up`](Self::up)).
    pub fn running(&self) -> Vec<(&'static str, u32)> {
        COMPONENTS.iter().filter_map(|name| Some((*name, self.live_pid(name)?))).collect()
    }

    fn live_pid(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(name)).ok()?.trim().parse().ok()?;
        // The pid names this component still (not a reused number).
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (exe.file_name()? == name).then_some(pid)
    }

    /// Starts what is not running (making certificates and kubeconfigs first)
    /// and waits until the API server is ready.
    pub fn up(&self) -> Result<(), ClusterError> {
        self.make_credentials()?;
        for dir in ["logs", "pids", "etcd"] {
            std::fs::create_dir_all(self.dir.join(dir)).map_err(io(&self.dir.join(dir)))?;
        }
        let missing: Vec<&str> = COMPONENTS.into_iter().filter(|name| self.live_pid(name).is_none()).collect();
        // Checked before any starts: a component just started may already hold
        // its ports, and a probe bind then would race with its own.
        if self.netns.is_none() {
            self.ports_free(&missing)?;
        }
        for name in missing {
            let log = self.log_file(name);
            let output = std::fs::File::create(&log).map_err(io(&log))?;
            let mut command = self.command(name);
            // A session of its own: a Ctrl-C of whoever started it leaves it be.
            let child = std::os::unix::process::CommandExt::process_group(&mut command, 0)
                .stdin(Stdio::null())
                .stdout(output.try_clone().map_err(io(&log))?)
                .stderr(output)
                .spawn()
                .map_err(|source| ClusterError::Spawn { program: name.into(), source })?;
            std::fs::write(self.pid_file(name), child.id().to_string()).map_err(io(&self.pid_file(name)))?;
            // Through nsenter, the pid is the component's once nsenter has exec'd it.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut child = child;
            while self.live_pid(name).is_none() && Instant::now() < deadline {
                if child.try_wait().is_ok_and(|status| status.is_some()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.wait_ready(Duration::from_secs(120))?;
        self.grant_nodes()
    }

    /// What nodeplaned on the nodes reads ([`RBAC`]), granted to `system:nodes`.
    fn grant_nodes(&self) -> Result<(), ClusterError> {
        self.kubectl_with(&["apply", "-f", "-"], RBAC).map(drop)
    }

    /// kubectl as the admin with `input` on its stdin; its output.
    pub fn kubectl_with(&self, args: &[&str], input: &str) -> Result<String, ClusterError> {
        let spawn = |source| ClusterError::Spawn { program: "kubectl".into(), source };
        let mut command = self.kubectl();
        command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(spawn)?;
        let written = std::io::Write::write_all(&mut child.stdin.take().expect("piped"), input.as_bytes());
        let out = child.wait_with_output().map_err(spawn)?;
        if written.is_err() || !out.status.success() {
            let output = String::from_utf8_lossy(&out.stderr).into_owned();
            return Err(ClusterError::Failed { what: format!("kubectl {}", args.join(" ")), output });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the components this directory's pid files name (only those).
    pub fn down(&self) -> Result<(), ClusterError> {
        for name in COMPONENTS.iter().rev() {
            if let Some(pid) = self.live_pid(name) {
                let pid = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                let deadline = Instant::now() + Duration::from_secs(20);
                while self.live_pid(name).is_some() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if self.live_pid(name).is_some() {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            let _ = std::fs::remove_file(self.pid_file(name));
        }
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            for name in COMPONENTS {
                if self.live_pid(name).is_none() {
                    return Err(ClusterError::Exited { name, log: self.log_file(name) });
                }
            }
            let ready = self.kubectl().args(["get", "--raw", "/readyz"]).output();
            if ready.is_ok_and(|out| out.status.success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady { timeout, logs: self.dir.join("logs") });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Where each component listens on loopback.
    fn port_plan(&self) -> Ports {
        let port = self.port;
        Ports { api: port, etcd_client: port + 1, etcd_peer: port + 2, controllers: port + 3, scheduler: port + 4 }
    }

    /// The ports component `name` listens on.
    fn ports(&self, name: &str) -> Vec<u16> {
        let plan = self.port_plan();
        match name {
            "etcd" => vec![plan.etcd_client, plan.etcd_peer],
            "kube-apiserver" => vec![plan.api],
            "kube-controller-manager" => vec![plan.controllers],
            _ => vec![plan.scheduler],
        }
    }

    /// Whether every port of `components` is free on loopback.
    fn ports_free(&self, components: &[&str]) -> Result<(), ClusterError> {
        for port in components.iter().flat_map(|name| self.ports(name)) {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                return Err(ClusterError::PortTaken(port));
            }
        }
        Ok(())
    }

    /// The command line of component `name`.
    fn command(&self, name: &str) -> Command {
        let pki = self.pki();
        let p = |f: &str| pki.join(f).display().to_string();
        let Ports { api, etcd_client, etcd_peer, controllers, scheduler } = self.port_plan();
        let mut command;
        match name {
            "etcd" => {
                command = self.program(self.etcd.join("etcd"));
                command.arg(format!("--data-dir={}", self.dir.join("etcd").display())).args([
                    format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                    format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                    "--listen-metrics-urls=".into(),
                    "--log-level=warn".into(),
                ]);
            }
            "kube-apiserver" => {
                command = self.program(self.kubernetes.join(name));
                command.args([
                    format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={api}"),
                    // What guests see; loopback may not be a Service endpoint.
                    format!("--advertise-address={GUEST_API_ADDRESS}"),
                    "--endpoint-reconciler-type=none".into(),
                    format!("--tls-cert-file={}", p("apiserver.crt")),
                    format!("--tls-private-key-file={}", p("apiserver.key")),
                    format!("--client-ca-file={}", p("ca.crt")),
                    format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
                    format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
                    format!("--service-account-key-file={}", p("sa.pub")),
                    format!("--service-account-signing-key-file={}", p("sa.key")),
                    format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
                    format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    "--authorization-mode=Node,RBAC".into(),
                    "--enable-admission-plugins=NodeRestriction".into(),
                    "--enable-bootstrap-token-auth".into(),
                    "--allow-privileged=true".into(),
                ]);
            }
            "kube-controller-manager" => {
                command = self.program(self.kubernetes.join(name));
                command.args([
                    format!("--kubeconfig={}", self.dir.join("controller-manager.kubeconfig").display()),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={controllers}"),
                    "--leader-elect=false".into(),
                    "--allocate-node-cidrs".into(),
                    format!("--cluster-cidr={CLUSTER_CIDR}"),
                    "--node-cidr-mask-size=24".into(),
                    format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                    "--use-service-account-credentials".into(),
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    format!("--cluster-signing-cert-file={}", p("ca.crt")),
                    format!("--cluster-signing-key-file={}", p("ca.key")),
                    "--controllers=*,bootstrapsigner,tokencleaner".into(),
                    // TCG-emulated nodes are slow to report.
                    "--node-monitor-grace-period=2m".into(),
                ]);
            }
            _ => {
                command = self.program(self.kubernetes.join(name));
                command.args([
                    format!("--kubeconfig={}", self.dir.join("scheduler.kubeconfig").display()),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={scheduler}"),
                    "--leader-elect=false".into(),
                ]);
            }
        }
        command
    }

    /// The CA, serving and client certificates and kubeconfigs, made when missing.
    fn make_credentials(&self) -> Result<(), ClusterError> {
        let pki = self.pki();
        pki::ca(&pki)?;
        pki::service_account_key(&pki)?;
        let sans = [
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            &format!("DNS:kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            "IP:127.0.0.1",
            &format!("IP:{GUEST_API_ADDRESS}"),
            &format!("IP:{API_SERVICE_IP}"),
        ];
        pki::issue(&pki, "apiserver", "/CN=kube-apiserver", pki::Usage::Server(&sans))?;
        pki::issue(
            &pki,
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            pki::Usage::Client,
        )?;
        for (name, subject) in [
            ("admin", "/O=system:masters/CN=nodeplane-admin"),
            ("controller-manager", "/CN=system:kube-controller-manager"),
            ("scheduler", "/CN=system:kube-scheduler"),
        ] {
            let pair = pki::issue(&pki, name, subject, pki::Usage::Client)?;
            let file = self.dir.join(format!("{name}.kubeconfig"));
            let server = format!("https://127.0.0.1:{}", self.port);
            std::fs::write(&file, kubeconfig(&server, &pki.join("ca.crt"), &pair)).map_err(io(&file))?;
        }
        Ok(())
    }

    /// Credentials for the node `name` (`system:node:NAME` in `system:nodes`),
    /// made when missing.
    pub fn node_credentials(&self, name: &str) -> Result<NodeCredentials, ClusterError> {
        self.make_credentials()?;
        let pki = self.pki();
        let pair = pki::issue(
            &pki,
            &format!("node-{name}"),
            &format!("/O=system:nodes/CN=system:node:{name}"),
            pki::Usage::Client,
        )?;
        let read = |path: &Path| std::fs::read_to_string(path).map_err(io(path));
        Ok(NodeCredentials {
            name: name.to_owned(),
            ca: read(&pki.join("ca.crt"))?,
            cert: read(&pair.cert)?,
            key: read(&pair.key)?,
        })
    }

    /// The QEMU `-netdev user` option that lets a guest (and it alone) reach
    /// this API server at `https://10.0.2.100:6443`: one relay per connection.
    pub fn guest_forward(&self) -> String {
        format!("guestfwd=tcp:{GUEST_API_ADDRESS}:{GUEST_API_PORT}-cmd:socat - TCP:127.0.0.1:{}", self.port)
    }
}

/// What a node needs to join: the cluster CA and its client certificate.
#[derive(Clone, Debug)]
pub struct NodeCredentials {
    pub name: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl NodeCredentials {
    /// The `[kubernetes]` section of the node's node.toml (a QEMU guest's).
    pub fn node_toml(&self) -> String {
        self.node_toml_at(&format!("https://{GUEST_API_ADDRESS}:{GUEST_API_PORT}"))
    }

    /// The `[kubernetes]` section for a node reaching the API server at `api_server`.
    pub fn node_toml_at(&self, api_server: &str) -> String {
        let mut toml = String::from("[kubernetes]\n");
        let _ = writeln!(toml, "api_server = \"{api_server}\"");
        let _ = writeln!(toml, "node_name = \"{}\"", self.name);
        let _ = writeln!(toml, "cluster_dns = [\"{CLUSTER_DNS}\"]");
        let _ = writeln!(toml, "cluster_domain = \"{CLUSTER_DOMAIN}\"");
        for (key, pem) in [("cluster_ca", &self.ca), ("client_certificate", &self.cert), ("client_key", &self.key)] {
            let _ = writeln!(toml, "{key} = \"\"\"\n{}\"\"\"", pem.trim_end_matches('\n').to_owned() + "\n");
        }
        toml
    }
}

impl ControlPlane {
    /// A kubeconfig for the node `name` reaching this API server on loopback
    /// (nodeplaned in a test's node namespace), made when missing.
    pub fn node_kubeconfig(&self, name: &str) -> Result<PathBuf, ClusterError> {
        self.node_credentials(name)?;
        let pki = self.pki();
        let pair = KeyPair::at(&pki, &format!("node-{name}"));
        let file = self.dir.join(format!("node-{name}.kubeconfig"));
        let server = format!("https://127.0.0.1:{}", self.port);
        std::fs::write(&file, kubeconfig(&server, &pki.join("ca.crt"), &pair)).map_err(io(&file))?;
        Ok(file)
    }
}

/// nodeplaned's ClusterRole and its binding to `system:nodes` (`system/kubernetes/rbac.yaml`).
pub const RBAC: &str = include_str!("../../../system/kubernetes/rbac.yaml");

/// A kubeconfig naming files (for the host's components and kubectl).
fn kubeconfig(server: &str, ca: &Path, client: &KeyPair) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: nodeplane\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: user\n  user:\n    client-certificate: {}\n    \
         client-key: {}\ncontexts:\n- name: nodeplane\n  context:\n    cluster: nodeplane\n    user: user\n\
         current-context: nodeplane\n",
        ca.display(),
        client.cert.display(),
        client.key.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control plane on five free loopback ports (never started: its binaries do not exist).
    fn unstarted() -> ControlPlane {
        let none = PathBuf::from("/nonexistent");
        let plane =
            |port| ControlPlane { dir: none.clone(), port, kubernetes: none.clone(), etcd: none.clone(), netns: None };
        // A port counts as free once the check itself says so.
        (20000..29995)
            .step_by(5)
            .map(plane)
            .find(|plane| plane.ports_free(&COMPONENTS).is_ok())
            .expect("five free ports")
    }

    /// Held by the tests that fork (openssl) and those that bind ports: a
    /// child forked while a port's socket is open holds it until it execs, and
    /// the port would seem taken.
    pub(crate) static FORKS_AND_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn each_port_a_component_listens_on_is_checked_before_start() {
        let _alone = FORKS_AND_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        let plane = unstarted();
        let mut held = Vec::new();
        // Taken from the last checked to the first, each held until the end,
        // so every answer names the port just taken.
        for name in COMPONENTS.iter().rev() {
            for port in plane.ports(name).into_iter().rev() {
                held.push(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
                match plane.ports_free(&COMPONENTS) {
                    Err(ClusterError::PortTaken(taken)) => assert_eq!(taken, port, "{name}"),
                    other => panic!("port {port} of {name} held, got {other:?}"),
                }
            }
        }
        let mut all: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        all.sort();
        assert_eq!(all, (plane.port..plane.port + 5).collect::<Vec<_>>(), "the five ports, each once");
    }
}
