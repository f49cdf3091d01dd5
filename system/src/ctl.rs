//! `nodeplanectl`: asks `nodeplaned` over the system bus how the node is, and
//! tells it to reload. Exit codes: 0 success (for `status`: the node is healthy),
//! 1 not healthy or refused, 2 invalid config, 3 the supervisor is unreachable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use serde::Serialize;
use zbus::Connection;
use zbus::proxy::CacheProperties;

use crate::bus::{self, ComponentProxy, IpamProxy, NodeProxy};
use crate::component::{Fact, State};
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
        protocols: Option<Vec<nodeplane_datapath::policy::Proto>>,
        /// How long a connection may take before it counts as blocked
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
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
    fn source(&self) -> crate::inspect::Source {
        crate::inspect::Source { config: self.config.clone(), bpffs_root: self.bpffs_root.clone() }
    }
}

const UNREACHABLE: u8 = 3;

pub fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Command::CheckConfig { file } => return config::check_file(file),
        Command::Services { maps } => return crate::inspect::services(&maps.source(), maps.json),
        Command::Endpoints { maps } => return crate::inspect::endpoints(&maps.source(), maps.json),
        Command::Conntrack { maps } => return crate::inspect::conntrack(&maps.source(), maps.json),
        Command::Probe { dir, json, services, ports, protocols, timeout } => {
            let selection =
                nodeplane_probe::Selection { services: *services, ports: ports.clone(), protocols: protocols.clone() };
            return probe(dir, &selection, *json, *timeout);
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let connection = match connect().await {
            Ok(connection) => connection,
            Err(message) => {
                eprintln!("nodeplanectl: {message}");
                return ExitCode::from(UNREACHABLE);
            }
        };
        match args.command {
            Command::Status { json } => status(&connection, json).await,
            Command::Reload => reload(&connection).await,
            Command::Sweep { dry_run } => sweep(&connection, dry_run).await,
            Command::Policy { pod, json } => pod_policy(&connection, &pod, json).await,
            Command::Monitor { json } => monitor(&connection, json).await,
            Command::CheckConfig { .. }
            | Command::Services { .. }
            | Command::Endpoints { .. }
            | Command::Conntrack { .. }
            | Command::Probe { .. } => {
                unreachable!("handled without the bus")
            }
        }
    })
}

/// Connects to the system bus and checks that nodeplaned is on it.
async fn connect() -> Result<Connection, String> {
    let address =
        std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".into());
    let connection =
        Connection::system().await.map_err(|e| format!("cannot connect to the system bus at {address}: {e}"))?;
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.map_err(|e| e.to_string())?;
    let name = bus::SERVICE.try_into().expect("a valid bus name");
    match dbus.name_has_owner(name).await {
        Ok(true) => Ok(connection),
        Ok(false) => Err(format!(
            "nodeplaned is not running: nobody owns {} on the system bus at {address} (try: systemctl status nodeplaned)",
            bus::SERVICE
        )),
        Err(err) => Err(format!("cannot ask the bus at {address} about {}: {err}", bus::SERVICE)),
    }
}

#[derive(Serialize)]
struct NodeStatus {
    health: State,
    version: String,
    components: Vec<ComponentStatus>,
}

#[derive(Serialize)]
struct ComponentStatus {
    name: String,
    state: State,
    detail: String,
    /// RFC 3339, UTC.
    last_change: String,
    facts: BTreeMap<String, Fact>,
}

async fn fetch(connection: &Connection) -> zbus::Result<NodeStatus> {
    let node = NodeProxy::builder(connection).cache_properties(CacheProperties::No).build().await?;
    let mut components = Vec::new();
    for (name, state, detail, last_change) in node.components().await? {
        let proxy = ComponentProxy::builder(connection)
            .path(bus::component_path(&name))
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let facts = proxy.facts().await?.iter().map(|(k, v)| (k.clone(), bus::fact_from_value(v))).collect();
        let state = state.parse().map_err(zbus::Error::Failure)?;
        let last_change = humantime::format_rfc3339_seconds(bus::from_usec(last_change)).to_string();
        components.push(ComponentStatus { name, state, detail, last_change, facts });
    }
    // From the same rows as the table, so header and table always agree.
    let health = State::of_node(components.iter().map(|c| c.state));
    Ok(NodeStatus { health, version: node.version().await?, components })
}

async fn status(connection: &Connection, json: bool) -> ExitCode {
    let status = match fetch(connection).await {
        Ok(status) => status,
        Err(err) => {
            eprintln!("nodeplanectl: cannot read the node's status: {err}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
    } else {
        print!("{}", table(&status));
    }
    if status.health == State::Healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn table(status: &NodeStatus) -> String {
    let mut out = format!("node: {} (nodeplaned {})\n\n", status.health, status.version);
    let width = status.components.iter().map(|c| c.name.len()).max().unwrap_or(0).max("COMPONENT".len());
    out += &format!("{:width$}  {:9}  {:20}  DETAIL\n", "COMPONENT", "STATE", "SINCE");
    for c in &status.components {
        let since = since(&c.last_change);
        out += &format!("{:width$}  {:9}  {:20}  {}\n", c.name, c.state.as_str(), since, c.detail);
        let facts: Vec<String> = c.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !facts.is_empty() {
            out += &format!("{:width$}  {}\n", "", facts.join(" "));
        }
    }
    out
}

/// `2026-11-28T07:30:01Z` → `07:30:01 (3m ago)`.
fn since(rfc3339: &str) -> String {
    let Ok(at) = humantime::parse_rfc3339(rfc3339) else {
        return rfc3339.to_owned();
    };
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    let age = humantime::format_duration(std::time::Duration::from_secs(age.as_secs()));
    let clock = rfc3339.get(11..19).unwrap_or(rfc3339);
    format!("{clock} ({age} ago)")
}

async fn reload(connection: &Connection) -> ExitCode {
    let result = match NodeProxy::new(connection).await {
        Ok(node) => node.reload().await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => {
            println!("reloaded");
            ExitCode::SUCCESS
        }
        Err(zbus::Error::MethodError(name, message, _)) if name.as_str() == bus::ERROR_INVALID_CONFIG => {
            let message = message.unwrap_or_default();
            eprintln!("nodeplanectl: the new config is invalid; nodeplaned keeps the running one:\n  {message}");
            ExitCode::from(2)
        }
        Err(err) => method_failed("reload", err),
    }
}

async fn sweep(connection: &Connection, dry_run: bool) -> ExitCode {
    let result = match IpamProxy::new(connection).await {
        Ok(ipam) => ipam.sweep(dry_run).await,
        Err(err) => Err(err),
    };
    let rows = match result {
        Ok(rows) => rows,
        Err(zbus::Error::MethodError(name, message, _)) if name.as_str() == bus::ERROR_SWEEP_FAILED => {
            eprintln!("nodeplanectl: the sweep could not run: {}", message.unwrap_or_default());
            return ExitCode::FAILURE;
        }
        Err(err) => return method_failed("sweep", err),
    };
    if !rows.is_empty() {
        let width = rows.iter().map(|(n, ..)| n.len()).max().unwrap_or(0).max("NETWORK".len());
        let ip_width = rows.iter().map(|(_, ip, _)| ip.len()).max().unwrap_or(0).max("IP".len());
        println!("{:width$}  {:ip_width$}  OWNER", "NETWORK", "IP");
        for (network, ip, owner) in &rows {
            println!("{network:width$}  {ip:ip_width$}  {}", if owner.is_empty() { "(empty file)" } else { owner });
        }
    }
    let ipam = match fetch(connection).await {
        Ok(status) => status.components.into_iter().find(|c| c.name == "ipam"),
        Err(_) => None,
    };
    let facts = ipam.as_ref().map(|c| c.facts.clone()).unwrap_or_default();
    let count = |name: &str| facts.get(name).map_or("?".to_owned(), ToString::to_string);
    // node.toml's `dry_run = true` turns every sweep into a dry run: say what happened.
    let dry = dry_run || facts.get("last_sweep_dry_run").is_some_and(|f| f.to_string() == "true");
    println!(
        "{} {} reservation(s); scanned {}, live {}, young orphans kept {}, changed under the lock {}, skipped {}, errors {}",
        if dry { "would free" } else { "freed" },
        rows.len(),
        count("scanned"),
        count("live"),
        count("young_orphans_kept"),
        count("changed_since_scan"),
        count("skipped"),
        count("errors")
    );
    if let Some(networks) = facts.get("unswept_networks") {
        println!("not swept (no reservation there belongs to a pod; list them in ipam.networks to sweep): {networks}");
    }
    if let Some(networks) = facts.get("missing_networks") {
        println!("listed but not present in networks_dir: {networks}");
    }
    if facts.get("errors").is_some_and(|e| e.to_string() != "0") {
        eprintln!("nodeplanectl: the sweep hit errors: {}", ipam.map(|c| c.detail).unwrap_or_default());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_protocol(text: &str) -> Result<nodeplane_datapath::policy::Proto, String> {
    nodeplane_datapath::policy::Proto::parse(Some(&text.to_uppercase()))
}

fn probe(
    dir: &std::path::Path,
    selection: &nodeplane_probe::Selection,
    json: bool,
    timeout: std::time::Duration,
) -> ExitCode {
    if !rustix::process::geteuid().is_root() {
        eprintln!("nodeplanectl: probe is for root only (it makes network namespaces and mounts a bpffs)");
        return ExitCode::FAILURE;
    }
    let run = || -> Result<Vec<nodeplane_probe::Outcome>, nodeplane_probe::ProbeError> {
        let binaries = nodeplane_probe::Binaries::beside_current_exe()?;
        let stage = nodeplane_probe::Stage::new(dir, &binaries, &|step| eprintln!("probe: {step}"))?;
        let targets = stage.targets(selection);
        eprintln!(
            "probe: {} connection(s) from {} pod(s), {:?} each at most",
            targets.len(),
            stage.pods.len(),
            timeout
        );
        let outcomes = stage.probe(&targets, timeout)?;
        eprintln!("probe: removing the pods and the node");
        Ok(outcomes)
    };
    match run() {
        Ok(outcomes) if json => {
            println!("{}", nodeplane_probe::json(&outcomes));
            ExitCode::SUCCESS
        }
        Ok(outcomes) => {
            print!("{}", nodeplane_probe::table(&outcomes));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("nodeplanectl: probe: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Serialize)]
struct PolicyDirection {
    /// False: no policy selects the pod for this direction; everything is allowed.
    isolated: bool,
    /// Peers (the longest prefix holding an address decides) and the ports allowed with them.
    allowed: Vec<PolicyRow>,
}

#[derive(Serialize)]
struct PolicyRow {
    peer: String,
    ports: String,
}

async fn pod_policy(connection: &Connection, pod: &str, json: bool) -> ExitCode {
    let result = match bus::DatapathProxy::new(connection).await {
        Ok(datapath) => datapath.pod_policy(pod).await,
        Err(err) => Err(err),
    };
    let (ip, ingress, egress) = match result {
        Ok(answer) => answer,
        Err(zbus::Error::MethodError(_, message, _)) => {
            eprintln!("nodeplanectl: {}", message.unwrap_or_default());
            return ExitCode::FAILURE;
        }
        Err(err) => return method_failed("policy", err),
    };
    let direction = |(isolated, rows): bus::PolicyRows| PolicyDirection {
        isolated,
        allowed: rows.into_iter().map(|(peer, ports)| PolicyRow { peer, ports }).collect(),
    };
    let (ingress, egress) = (direction(ingress), direction(egress));
    if json {
        let value = serde_json::json!({"pod": pod, "ip": ip, "ingress": ingress, "egress": egress});
        println!("{value:#}");
        return ExitCode::SUCCESS;
    }
    println!("{pod} ({ip})");
    for (title, peer_word, rules) in [("receives", "from", &ingress), ("sends", "to", &egress)] {
        if !rules.isolated {
            println!(
                "  {title}: everything (no NetworkPolicy selects it for {})",
                if title == "receives" { "ingress" } else { "egress" }
            );
            continue;
        }
        let allowed: Vec<&PolicyRow> = rules.allowed.iter().filter(|r| r.ports != "none").collect();
        if allowed.is_empty() {
            println!("  {title}: nothing (selected, and no rule allows any peer)");
            continue;
        }
        println!("  {title} only:");
        for row in &rules.allowed {
            if row.ports == "none" {
                println!("    not {peer_word} {} (an except range)", row.peer);
            } else {
                println!("    {peer_word} {}: {}", row.peer, row.ports);
            }
        }
    }
    ExitCode::SUCCESS
}

async fn monitor(connection: &Connection, json: bool) -> ExitCode {
    use zbus::export::futures_core::Stream;
    if !rustix::process::geteuid().is_root() {
        eprintln!("nodeplanectl: monitor is for root only (policy drops name pods and addresses)");
        return ExitCode::FAILURE;
    }
    let stream = match bus::DatapathProxy::new(connection).await {
        Ok(datapath) => datapath.receive_policy_drop().await,
        Err(err) => Err(err),
    };
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(err) => return method_failed("monitor", err),
    };
    if !json {
        eprintln!("watching NetworkPolicy drops (Ctrl-C ends)");
    }
    while let Some(signal) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await {
        let Ok(args) = signal.args() else { continue };
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        // Whose policies dropped it: the client's (egress) or the server's (ingress).
        let direction = args.reason.split('-').next().unwrap_or_default();
        if json {
            let value = serde_json::json!({
                "time": time, "from": args.from, "to": args.to, "port": args.port, "protocol": args.protocol,
                "direction": direction, "reason": args.reason, "service": args.service,
            });
            println!("{value}");
        } else {
            let service =
                if args.service.is_empty() { String::new() } else { format!(" via Service {}", args.service) };
            println!(
                "{} DROP {} {} -> {}{service}: {direction}: {}",
                time.get(11..23).unwrap_or(&time),
                args.protocol,
                args.from,
                args.to,
                args.reason
            );
        }
    }
    eprintln!("nodeplanectl: nodeplaned went away");
    ExitCode::from(UNREACHABLE)
}

/// Reports a failed state-changing call: exit 1, or 3 when nodeplaned is gone.
fn method_failed(action: &str, err: zbus::Error) -> ExitCode {
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
