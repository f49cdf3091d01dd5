//! `nodeplaned`: loads `node.toml`, starts the components in order, reports READY
//! to systemd once their start-up work is done, serves status over D-Bus, pets
//! the watchdog from its health loop, reloads on SIGHUP or `Reload()`, and stops
//! cleanly on SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Interval;

use crate::config::{self, ConfigError, NodeConfig};
use component::{Component, ComponentError, Handle, Registry, Snapshot, node_state};
use datapath::DatapathComponent;
use ipam::IpamComponent;
use kubernetes::KubernetesComponent;
use server::ReloadError;
use sysctl::SysctlComponent;

mod component;
mod datapath;
mod drops;
mod ipam;
mod kubernetes;
pub(crate) mod logging;
mod metrics;
mod notify;
mod server;
mod sysctl;
mod update;

/// Why nodeplaned stopped before it could serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("cannot serve {service} on the system bus: {0}", service = nodeplane_bus::SERVICE)]
    Bus(#[from] zbus::Error),
}

#[derive(Parser, Debug)]
#[command(name = "nodeplaned", version, about = "The nodeplane node supervisor")]
pub struct Args {
    /// The node configuration [default: /etc/nodeplane/node.toml; if that file is
    /// missing, the built-in defaults]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate FILE, print the effective config and exit: 0 when valid, 2 when not
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Apply FILE to the node's units, at boot: the kubelet's configuration
    /// (/etc/kubernetes) and nodeplaned's drop-in from its [kubernetes] section
    /// (removed when it has none), the metrics socket's address from [metrics];
    /// then exit: 0 when done, 2 when FILE is invalid or a file cannot be written
    #[arg(long, value_name = "FILE")]
    prepare: Option<PathBuf>,
    /// Log filter, e.g. `debug` or `info,nodeplane::sysctl=debug` [default: $RUST_LOG, else info]
    #[arg(long, value_name = "FILTER", value_parser = logging::parse_level)]
    log_level: Option<String>,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(file) = &args.check_config {
        return config::check_file(file);
    }
    if let Some(file) = &args.prepare {
        let prepared = NodeConfig::load(file).map_err(|e| e.to_string()).and_then(|config| {
            let root = Path::new("/");
            let kubelet = crate::kubelet::prepare(&config, root).map_err(|e| e.to_string())?;
            let metrics = crate::metrics_socket::prepare(&config.metrics, root).map_err(|e| e.to_string())?;
            Ok(format!("{kubelet}\nnodeplane: {metrics}"))
        });
        return match prepared {
            Ok(what) => {
                println!("nodeplane: {what}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
        };
    }
    logging::init("nodeplaned", args.log_level.as_deref());
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("fatal: {err}");
            notify::status(&format!("failed: {err}"));
            ExitCode::FAILURE
        }
    }
}

struct Supervisor {
    config_path: PathBuf,
    explicit_path: bool,
    /// The config in force: node.toml's, with the pod subnet read from the
    /// API server where node.toml sets none.
    config: Arc<NodeConfig>,
    /// The pod subnet the `kubernetes` component read from this node's Node.
    api_pod_cidr: Option<String>,
    components: Vec<Handle>,
    registry: Registry,
}

async fn run(args: Args) -> Result<(), DaemonError> {
    // Handlers first: a SIGHUP during start-up must not kill the supervisor.
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let explicit_path = args.config.is_some();
    let config_path = args.config.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let config = load(&config_path, explicit_path)?;
    let registry = Registry::default();
    // Served from the start: a scrape during start-up sees the components starting.
    let metrics = Arc::new(metrics::Metrics::new(&registry));
    for listener in metrics::passed_listeners() {
        let metrics = metrics.clone();
        tokio::spawn(crate::http::serve(listener, move |request| metrics.respond(request)));
    }
    let (reloads, mut reload_requests) = mpsc::channel(4);
    // The bus connection and the components' start are independent: both at once
    // (the datapath loads on a blocking thread), which shortens the node's boot.
    notify::status("starting: connecting to the system bus, applying sysctls");
    let (bus, started) = tokio::join!(server::serve(&registry, reloads), async {
        let sysctl = component::start::<SysctlComponent>(&config, &registry).await?;
        notify::status("starting: loading the datapath");
        let datapath = component::start::<DatapathComponent>(&config, &registry).await?;
        let ipam = component::start::<IpamComponent>(&config, &registry).await?;
        let kubernetes = component::start::<KubernetesComponent>(&config, &registry).await?;
        Ok::<_, ComponentError>((sysctl, datapath, ipam, kubernetes))
    });
    let ((sysctl, _), (datapath, endpoints), (ipam, sweeps), (kubernetes, _)) = started?;
    let bus = bus?;
    let pins = config.datapath.enabled.then(|| config.datapath.bpffs_root.clone());
    server::serve_datapath(&bus, endpoints, pins).await?;
    server::serve_ipam(&bus, sweeps).await?;
    let components = vec![sysctl, datapath, ipam, kubernetes];
    server::add_component_objects(&bus, &registry).await?;
    let mut supervisor =
        Supervisor { config_path, explicit_path, config: Arc::new(config), api_pod_cidr: None, components, registry };

    tracing::info!(nodeplane_health = %node_state(&supervisor.registry.snapshot()), "nodeplaned is ready");
    notify::ready(&status_line(&supervisor.registry.snapshot()));

    // The watchdog is fed from this loop, so it starves when the loop is stuck (a
    // blocked thread, or a reload that never finishes) and systemd restarts us.
    let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
    let mut changes = supervisor.registry.subscribe();
    let mut status = String::new();
    loop {
        tokio::select! {
            _ = pet(&mut watchdog) => notify::watchdog(),
            Ok(()) = changes.changed() => {
                let snapshot = changes.borrow_and_update().clone();
                // Facts change often; STATUS= only when the line a person reads does.
                let line = status_line(&snapshot);
                if line != status {
                    notify::status(&line);
                    status = line;
                }
                let pod_cidr = snapshot.get(KubernetesComponent::NAME).and_then(|s| match s.facts.get(kubernetes::POD_CIDR_FACT) {
                    Some(component::Fact::Text(cidr)) => Some(cidr.clone()),
                    _ => None,
                });
                if pod_cidr.is_some() && pod_cidr != supervisor.api_pod_cidr {
                    supervisor.api_pod_cidr = pod_cidr;
                    let _ = reload_feeding_watchdog(&mut supervisor, &mut watchdog).await;
                }
            }
            _ = hangup.recv() => {
                let _ = reload_feeding_watchdog(&mut supervisor, &mut watchdog).await;
            }
            Some(reply) = reload_requests.recv() => {
                let _ = reply.send(reload_feeding_watchdog(&mut supervisor, &mut watchdog).await);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    notify::stopping();
    tracing::info!("nodeplaned is stopping");
    Ok(())
}

/// Waits for the next watchdog tick; never, when systemd runs no watchdog.
async fn pet(watchdog: &mut Option<Interval>) {
    match watchdog.as_mut() {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A reload waits for every component, and one may be mid-way through seconds of
/// work (an IPAM sweep): keep feeding the watchdog meanwhile. [`RELOAD_TIMEOUT`]
/// bounds how long a component may take to answer.
async fn reload_feeding_watchdog(
    supervisor: &mut Supervisor,
    watchdog: &mut Option<Interval>,
) -> Result<(), ReloadError> {
    let reload = supervisor.reload();
    tokio::pin!(reload);
    loop {
        tokio::select! {
            result = &mut reload => return result,
            _ = pet(watchdog) => notify::watchdog(),
        }
    }
}

/// How long a component may take to answer a reload before the reload fails.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Loads the config. A missing file at the default path means the defaults (an
/// empty file is a valid config); a missing file named with `--config` is an error.
fn load(path: &Path, explicit: bool) -> Result<NodeConfig, ConfigError> {
    match NodeConfig::load(path) {
        Err(ConfigError::Read { source, .. }) if !explicit && source.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("{} does not exist; using the default config", path.display());
            Ok(NodeConfig::default())
        }
        other => other,
    }
}

impl Supervisor {
    /// Re-reads and applies the config; an invalid one is refused and the running
    /// config stays.
    async fn reload(&mut self) -> Result<(), ReloadError> {
        notify::reloading();
        let result = self.apply_new_config().await;
        match &result {
            Ok(()) => tracing::info!("reloaded {}", self.config_path.display()),
            Err(err) => tracing::error!("{err}"),
        }
        notify::ready(&status_line(&self.registry.snapshot()));
        result
    }

    async fn apply_new_config(&mut self) -> Result<(), ReloadError> {
        let mut config =
            load(&self.config_path, self.explicit_path).map_err(|e| ReloadError::InvalidConfig(e.to_string()))?;
        if config.datapath.pod_cidr.is_none() {
            config.datapath.pod_cidr.clone_from(&self.api_pod_cidr);
        }
        if config == *self.config {
            return Ok(());
        }
        let config = Arc::new(config);
        let mut failures = Vec::new();
        for component in &self.components {
            match tokio::time::timeout(RELOAD_TIMEOUT, component.reload(config.clone())).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failures.push(err.to_string()),
                Err(_) => failures.push(format!("{}: no answer within {RELOAD_TIMEOUT:?}", component.name())),
            }
        }
        if !failures.is_empty() {
            // Components that refused keep their running settings; a later reload
            // of the same file tries again.
            return Err(ReloadError::Failed(failures.join("; ")));
        }
        self.config = config;
        Ok(())
    }
}

/// One line for `systemctl status`: node health, then each component.
fn status_line(snapshot: &Snapshot) -> String {
    let components: Vec<String> =
        snapshot.iter().map(|(name, s)| format!("{name} {}: {}", s.state, s.detail)).collect();
    format!("{}; {}", node_state(snapshot), components.join("; "))
}
