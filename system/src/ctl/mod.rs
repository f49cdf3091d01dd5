//! `nodeplanectl`: asks `nodeplaned` over the system bus how the node is, and
//! tells it to reload; reads the datapath's pinned maps; probes NetworkPolicy.
//! One module per verb. Exit codes: 0 success (for `status`: the node is
//! healthy), 1 not healthy or refused, 2 invalid config, 3 the supervisor is
//! unreachable.

mod conntrack;
mod endpoints;
mod maps;
mod monitor;
mod policy;
mod probe;
mod probe_api;
mod reload;
mod services;
mod status;
mod sweep;
mod update;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nodeplane_bus as bus;
use nodeplane_model::{Protocol, UnknownProtocol};
use zbus::Connection;

use crate::config;

#[derive(Parser, Debug)]
#[command(name = "nodeplanectl", version, about = "Inspect and control the nodeplane supervisor")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show node health and each component (exit 0 only when healthy)
    Status {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Validate a node.toml and print the effective config (exit 0 valid, 2 invalid)
    CheckConfig { file: PathBuf },
    /// Make nodeplaned re-read and apply its config (root only)
    Reload,
    /// The datapath's Service ports and backends, read from the pinned maps (works while nodeplaned is down)
    Services {
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// The datapath's endpoints and the Service ports that use them, from the pinned maps
    Endpoints {
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// The datapath's connection tracking entries with state and remaining lifetime, from the pinned maps
    Conntrack {
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// Free leaked CNI host-local reservations now and list them (root only)
    Sweep {
        /// Only report what would be freed
        #[arg(long)]
        dry_run: bool,
    },
    /// What a pod may receive and send under the NetworkPolicies in force, as the datapath holds it
    Policy {
        /// The pod, as NAMESPACE/NAME
        pod: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Stand up the Namespaces and Pods of the manifests in DIR on this machine (through nodeplane-cni and a
    /// nodeplaned of their own, with DIR's Services and NetworkPolicies), probe every pod pair on every
    /// declared port and protocol, and print the truth table; everything is removed afterwards (root only)
    Probe {
        /// A directory of manifests: Namespaces, Pods (with container ports), Services, NetworkPolicies
        dir: PathBuf,
        /// Print one JSON array of {"from", "to", "port", "protocol", "connected"} instead of tables
        #[arg(long)]
        json: bool,
        /// Also probe from every pod to every Service port (Services with a selector and a clusterIP)
        #[arg(long)]
        services: bool,
        /// Only these ports (comma-separated)
        #[arg(long, value_delimiter = ',', value_name = "PORT,...")]
        ports: Option<Vec<u16>>,
        /// Only these protocols (comma-separated: TCP, UDP)
        #[arg(long, value_delimiter = ',', value_name = "PROTOCOL,...", value_parser = parse_protocol)]
        protocols: Option<Vec<Protocol>>,
        /// How long a connection may take before it counts as blocked
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Create the objects in the API server this kubeconfig names (on this machine's loopback), which the
        /// probe's nodeplaned then follows, instead of in a manifests directory; deleted at the end
        #[arg(long, value_name = "KUBECONFIG")]
        api: Option<PathBuf>,
    },
    /// Write an update bundle (`cargo xtask image` makes one) to the disk image's slot not booted, verify it,
    /// and make it the next boot's with TRIES boots to come up healthy, else the booted slot boots again (root only)
    Update {
        /// The bundle: a tar of manifest.json, root.erofs, root.verity, vmlinuz, initrd.img
        file: PathBuf,
        /// Boots the new slot gets to prove itself (nodeplane-boot-check.service) before the old one comes back
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
        tries: u32,
    },
    /// Wait until this boot is good (nodeplaned healthy; the Node registered when joining a cluster); exit 0
    /// when it is, 1 after TIMEOUT. nodeplane-boot-check.service runs it to mark an updated slot good
    BootCheck {
        #[arg(long, default_value = "5min", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Stream the connection attempts NetworkPolicy drops, as they happen (root only; Ctrl-C ends)
    Monitor {
        /// One JSON object per line instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct MapsArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// The node configuration that names bpffs_root and the conntrack timeouts [default: /etc/nodeplane/node.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Where the maps are pinned [default: node.toml's datapath.bpffs_root]
    #[arg(long, value_name = "PATH")]
    bpffs_root: Option<PathBuf>,
}

impl MapsArgs {
    fn source(&self) -> maps::Source {
        maps::Source { config: self.config.clone(), bpffs_root: self.bpffs_root.clone() }
    }
}

/// `--protocols tcp,UDP`: Kubernetes protocol names, in any case.
fn parse_protocol(text: &str) -> Result<Protocol, UnknownProtocol> {
    text.to_uppercase().parse()
}

const UNREACHABLE: u8 = 3;

pub fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Command::CheckConfig { file } => return config::check_file(file),
        Command::Services { maps } => return services::services(&maps.source(), maps.json),
        Command::Endpoints { maps } => return endpoints::endpoints(&maps.source(), maps.json),
        Command::Conntrack { maps } => return conntrack::conntrack(&maps.source(), maps.json),
        Command::Update { file, tries } => return update::run(file, *tries),
        Command::Probe { dir, json, services, ports, protocols, timeout, api } => {
            let selection =
                nodeplane_probe::Selection { services: *services, ports: ports.clone(), protocols: protocols.clone() };
            return probe::probe(dir, &selection, *json, *timeout, api.as_deref());
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let connection = match connect().await {
            Ok(connection) => connection,
            Err(err) => {
                eprintln!("nodeplanectl: {err}");
                return ExitCode::from(UNREACHABLE);
            }
        };
        match args.command {
            Command::Status { json } => status::status(&connection, json).await,
            Command::Reload => reload::reload(&connection).await,
            Command::Sweep { dry_run } => sweep::sweep(&connection, dry_run).await,
            Command::Policy { pod, json } => policy::pod_policy(&connection, &pod, json).await,
            Command::Monitor { json } => monitor::monitor(&connection, json).await,
            Command::BootCheck { timeout } => status::boot_check(&connection, timeout).await,
            Command::Update { .. }
            | Command::CheckConfig { .. }
            | Command::Services { .. }
            | Command::Endpoints { .. }
            | Command::Conntrack { .. }
            | Command::Probe { .. } => {
                unreachable!("handled without the bus")
            }
        }
    })
}

/// Why nodeplaned cannot be reached.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("cannot connect to the system bus at {address}: {source}")]
    Bus { address: String, source: zbus::Error },
    #[error(
        "nodeplaned is not running: nobody owns {} on the system bus at {address} (try: systemctl status nodeplaned)",
        bus::SERVICE
    )]
    NotRunning { address: String },
    #[error("cannot ask the bus at {address} about {}: {source}", bus::SERVICE)]
    Ask { address: String, source: zbus::Error },
}

/// Connects to the system bus and checks that nodeplaned is on it.
async fn connect() -> Result<Connection, Unreachable> {
    let address =
        std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into());
    let connection =
        Connection::system().await.map_err(|source| Unreachable::Bus { address: address.clone(), source })?;
    let ask = |source| Unreachable::Ask { address: address.clone(), source };
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.map_err(ask)?;
    let name = bus::SERVICE.try_into().expect("a valid bus name");
    match dbus.name_has_owner(name).await {
        Ok(true) => Ok(connection),
        Ok(false) => Err(Unreachable::NotRunning { address }),
        Err(err) => Err(ask(err.into())),
    }
}

/// Reports a failed state-changing call: exit 1, or 3 when nodeplaned is gone.
pub(super) fn method_failed(action: &str, err: zbus::Error) -> ExitCode {
    match err {
        zbus::Error::FDO(err) if matches!(*err, zbus::fdo::Error::AccessDenied(_)) => {
            eprintln!("nodeplanectl: {action} is for root only: {err}");
            ExitCode::FAILURE
        }
        zbus::Error::FDO(err) if matches!(*err, zbus::fdo::Error::ServiceUnknown(_)) => {
            eprintln!("nodeplanectl: nodeplaned went away: {err}");
            ExitCode::from(UNREACHABLE)
        }
        err => {
            eprintln!("nodeplanectl: {action} failed: {err}");
            ExitCode::FAILURE
        }
    }
}
