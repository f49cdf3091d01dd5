//! `nodeplane-cni`: the CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION) that
//! gives a pod its network: a veth pair (`eth0` in the pod, `np…` on the node,
//! where nodeplaned's datapath attaches), an address from the configured IPAM
//! plugin (host-local by default, whose files the IPAM sweeper tends), a /32
//! route to the pod and a default route via a link-local gateway in the pod,
//! all made over netlink ([`plumbing`]). ADD fails with a clear error, leaving
//! nothing behind, while nodeplaned is down.

mod plumbing;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use plumbing::{GATEWAY, Netlink};

use serde_json::{Value, json};

use crate::config::{self, ConfigError, NodeConfig};

const CNI_VERSION: &str = "1.0.0";
const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// A CNI error: its code (spec: 4 invalid config, 7 invalid env, 11 try again
/// later, 999 others) and message.
#[derive(Clone, Debug)]
struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn error(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError { code, msg: msg.into(), details: details.into() }
}

struct Env {
    /// `[datapath] pod_interface_prefix`.
    prefix: String,
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    path: String,
    /// `CNI_ARGS`: `K8S_POD_NAMESPACE=…;K8S_POD_NAME=…;…` from the kubelet.
    args: String,
}

impl Env {
    fn arg(&self, name: &str) -> String {
        self.args.split(';').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).unwrap_or_default().to_owned()
    }
}

fn env(name: &str, needed: bool) -> Result<String, CniError> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ if !needed => Ok(String::new()),
        _ => Err(error(7, format!("{name} is not set"), "")),
    }
}

pub fn main() -> ExitCode {
    let result = run();
    match result {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            let out = json!({"cniVersion": CNI_VERSION, "code": err.code, "msg": err.msg, "details": err.details});
            println!("{out}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Option<Value>, CniError> {
    let command = env("CNI_COMMAND", true)?;
    if command == "VERSION" {
        return Ok(Some(json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED})));
    }
    let mut stdin = String::new();
    std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(|e| error(4, "cannot read the network configuration", e.to_string()))?;
    let mut conf: Value =
        serde_json::from_str(&stdin).map_err(|e| error(4, "invalid network configuration", e.to_string()))?;
    if conf["ipam"]["type"].as_str().is_none() {
        return Err(error(4, "invalid network configuration: ipam.type is missing", ""));
    }
    let deleting = command == "DEL";
    // DEL must work whatever the node configuration says now. host-local releases
    // by container id but insists on a range: a documentation one does for that.
    let node = node_config();
    match node.as_ref().map_err(Clone::clone).and_then(|node| with_pod_cidr(&mut conf, node)) {
        Err(err) if !deleting => return Err(err),
        Err(_) => conf["ipam"]["ranges"] = json!([[{"subnet": "192.0.2.0/24"}]]),
        Ok(()) => {}
    }
    // The node side of each pod's veth carries the prefix nodeplaned attaches to.
    let prefix =
        node.map_or_else(|_| NodeConfig::default().datapath.pod_interface_prefix, |n| n.datapath.pod_interface_prefix);
    let stdin = conf.to_string();
    let env = Env {
        prefix,
        command,
        container_id: env("CNI_CONTAINERID", true)?,
        netns: env("CNI_NETNS", !deleting)?,
        ifname: env("CNI_IFNAME", true)?,
        path: env("CNI_PATH", true)?,
        args: env("CNI_ARGS", false)?,
    };
    match env.command.as_str() {
        "ADD" => add(&env, &conf, &stdin).map(Some),
        "DEL" => del(&env, &stdin).map(|()| None),
        "CHECK" => check(&env).map(|()| None),
        other => Err(error(4, format!("unknown CNI_COMMAND {other}"), "")),
    }
}

/// node.toml (`NODEPLANE_CONFIG` names another file); none at the default
/// path is the defaults, as for nodeplaned.
fn node_config() -> Result<NodeConfig, CniError> {
    let named = std::env::var_os("NODEPLANE_CONFIG").map(PathBuf::from);
    let path = named.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    match NodeConfig::load(&path) {
        Ok(node) => Ok(node),
        Err(ConfigError::Read { source, .. }) if named.is_none() && source.kind() == std::io::ErrorKind::NotFound => {
            Ok(NodeConfig::default())
        }
        Err(err) => Err(error(4, "cannot read the node configuration", err.to_string())),
    }
}

/// A host-local configuration without a range takes the node's pod CIDR
/// (`[datapath] pod_cidr`).
fn with_pod_cidr(conf: &mut Value, node: &NodeConfig) -> Result<(), CniError> {
    let ipam = &mut conf["ipam"];
    if ipam["type"] != "host-local" || !ipam["ranges"].is_null() || !ipam["subnet"].is_null() {
        return Ok(());
    }
    let cidr = node.datapath.pod_cidr.clone().ok_or_else(|| {
        error(4, "no pod subnet: set ipam.ranges in the network configuration or [datapath] pod_cidr in node.toml", "")
    })?;
    ipam["ranges"] = json!([[{"subnet": cidr}]]);
    Ok(())
}

/// A name for the node side of the pod's veth, stable per container and interface.
fn host_interface(env: &Env) -> String {
    // FNV-1a: short, stable, no dependency. 13 characters: the prefix (1-10
    // of them) and hex digits; 11 with the default `np`.
    let hash = format!("{}/{}", env.container_id, env.ifname)
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let digits = 13 - env.prefix.len();
    format!("{}{:0digits$x}", env.prefix, hash & (u64::MAX >> (64 - 4 * digits)))
}

fn add(env: &Env, conf: &Value, raw_conf: &str) -> Result<Value, CniError> {
    let runtime = runtime()?;
    let bus = runtime.block_on(supervisor())?;
    let ipam = delegate(env, "ADD", conf, raw_conf)?;
    let ip = ipam["ips"]
        .as_array()
        .and_then(|ips| ips.iter().find_map(|ip| ip["address"].as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok()))
        .ok_or_else(|| error(999, "the IPAM plugin returned no IPv4 address", ipam.to_string()))?;
    let host = host_interface(env);
    let plumbed = runtime.block_on(async {
        let netlink = Netlink::node().map_err(plumbing_failed)?;
        let made = netlink.add(Path::new(&env.netns), &host, &env.ifname, ip).await.map_err(plumbing_failed);
        let registered = match made {
            Ok(macs) => register(&bus, env, &host, ip).await.map(|()| macs),
            Err(err) => Err(err),
        };
        if registered.is_err() {
            // Leave nothing behind: whatever part of the veth exists.
            let _ = netlink.delete(&host).await;
        }
        registered
    });
    match plumbed {
        Ok(macs) => Ok(json!({
            "cniVersion": conf["cniVersion"].as_str().unwrap_or(CNI_VERSION),
            "interfaces": [
                {"name": host, "mac": macs.host},
                {"name": env.ifname, "mac": macs.pod, "sandbox": env.netns},
            ],
            "ips": [{"address": format!("{ip}/32"), "gateway": GATEWAY.to_string(), "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY.to_string()}],
        })),
        Err(err) => {
            // And the address.
            let _ = delegate(env, "DEL", conf, raw_conf);
            Err(err)
        }
    }
}

/// DEL is idempotent: a missing interface or reservation is not an error.
fn del(env: &Env, raw_conf: &str) -> Result<(), CniError> {
    let conf: Value = serde_json::from_str(raw_conf).unwrap_or_default();
    let runtime = runtime()?;
    // Best effort: DEL must succeed while nodeplaned is down, too.
    runtime.block_on(async {
        if let Ok(bus) = supervisor().await
            && let Ok(datapath) = nodeplane_bus::DatapathProxy::new(&bus).await
        {
            let _ = datapath.unregister_endpoint(&env.container_id).await;
        }
    });
    delegate(env, "DEL", &conf, raw_conf)?;
    runtime.block_on(async { Netlink::node()?.delete(&host_interface(env)).await }).map_err(plumbing_failed)
}

fn check(env: &Env) -> Result<(), CniError> {
    let (host, netns) = (host_interface(env), Path::new(&env.netns));
    runtime()?.block_on(async { Netlink::node()?.check(netns, &host, &env.ifname).await }).map_err(plumbing_failed)
}

fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| error(999, "cannot start a runtime", e.to_string()))
}

fn plumbing_failed(err: plumbing::PlumbingError) -> CniError {
    error(999, "the pod's network", err.to_string())
}

/// ADD needs nodeplaned: without it the pod would get an address but no datapath.
async fn supervisor() -> Result<zbus::Connection, CniError> {
    let unavailable = |details: String| error(11, "nodeplaned is not running; try again later", details);
    let connection = zbus::Connection::system().await.map_err(|e| unavailable(e.to_string()))?;
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.map_err(|e| unavailable(e.to_string()))?;
    let name = nodeplane_bus::SERVICE.try_into().expect("a valid bus name");
    match dbus.name_has_owner(name).await {
        Ok(true) => Ok(connection),
        Ok(false) => Err(unavailable(format!("nobody owns {} on the system bus", nodeplane_bus::SERVICE))),
        Err(err) => Err(unavailable(err.to_string())),
    }
}

/// Tells nodeplaned about the pod, which attaches its datapath to `host` at once.
async fn register(bus: &zbus::Connection, env: &Env, host: &str, ip: Ipv4Addr) -> Result<(), CniError> {
    let failed = |e: zbus::Error| error(999, "nodeplaned refused the pod", e.to_string());
    let datapath = nodeplane_bus::DatapathProxy::new(bus).await.map_err(failed)?;
    let ip = ip.to_string();
    let (namespace, name) = (env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME"));
    datapath.register_endpoint(&env.container_id, &env.netns, host, &[&ip], &namespace, &name).await.map_err(failed)
}

/// Runs the IPAM plugin named in the configuration, as the spec delegates.
fn delegate(env: &Env, command: &str, conf: &Value, raw_conf: &str) -> Result<Value, CniError> {
    let plugin = conf["ipam"]["type"].as_str().unwrap_or("host-local");
    let binary = env
        .path
        .split(':')
        .map(|dir| PathBuf::from(dir).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| error(999, format!("IPAM plugin {plugin} not found in CNI_PATH"), env.path.clone()))?;
    let mut child = Command::new(&binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| error(999, format!("cannot run {}", binary.display()), e.to_string()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(raw_conf.as_bytes())
        .map_err(|e| error(999, "IPAM stdin", e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| error(999, "IPAM plugin", e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let reported: Value = serde_json::from_str(&stdout).unwrap_or_default();
        let msg = reported["msg"].as_str().unwrap_or("the IPAM plugin failed");
        return Err(error(999, format!("{plugin}: {msg}"), String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| error(999, format!("{plugin} printed no JSON"), e.to_string()))
}
