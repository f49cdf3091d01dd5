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
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
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

/// A request from the container runtime: its `CNI_*` variables and the network
/// configuration on stdin, checked, with the node's settings applied.
pub struct Request {
    env: Env,
    /// The network configuration as the IPAM plugin gets it.
    conf: Value,
    /// host-local without a range on a node.toml without `[datapath]
    /// pod_cidr`: the range is the pod subnet nodeplaned read from the Node.
    needs_pod_cidr: bool,
}

impl Request {
    /// The request `var` (the variables, as `std::env::var` reads them) and
    /// `stdin` make, on a node configured as `node` says (node.toml as read).
    pub fn parse(
        var: impl Fn(&str) -> Option<String>,
        stdin: &str,
        node: Result<NodeConfig, CniError>,
    ) -> Result<Self, CniError> {
        let get = |name: &str, needed: bool| match var(name) {
            Some(value) if !value.is_empty() => Ok(value),
            _ if !needed => Ok(String::new()),
            _ => Err(error(7, format!("{name} is not set"), "")),
        };
        let command = get("CNI_COMMAND", true)?;
        if !matches!(command.as_str(), "ADD" | "DEL" | "CHECK") {
            return Err(error(4, format!("unknown CNI_COMMAND {command}"), ""));
        }
        let mut conf: Value =
            serde_json::from_str(stdin).map_err(|e| error(4, "invalid network configuration", e.to_string()))?;
        let plugin = conf["ipam"]["type"]
            .as_str()
            .ok_or_else(|| error(4, "invalid network configuration: ipam.type is missing", ""))?;
        // A plugin's name, looked up in CNI_PATH: no path of its own.
        if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
            return Err(error(
                4,
                format!("invalid network configuration: ipam.type {plugin:?} is not a plugin name"),
                "",
            ));
        }
        let deleting = command == "DEL";
        // DEL must work whatever the node configuration says now. host-local
        // releases by container id but insists on a range: a documentation one
        // does for that.
        let mut needs_pod_cidr = false;
        match node.as_ref().map_err(Clone::clone).and_then(|node| with_pod_cidr(&mut conf, node)) {
            Ok(needs) if !deleting => needs_pod_cidr = needs,
            Err(err) if !deleting => return Err(err),
            Ok(false) => {}
            Ok(true) | Err(_) => conf["ipam"]["ranges"] = json!([[{"subnet": "192.0.2.0/24"}]]),
        }
        // The node side of each pod's veth carries the prefix nodeplaned attaches to.
        let prefix = node
            .map_or_else(|_| NodeConfig::default().datapath.pod_interface_prefix, |n| n.datapath.pod_interface_prefix);
        let env = Env {
            prefix,
            command,
            container_id: get("CNI_CONTAINERID", true)?,
            netns: get("CNI_NETNS", !deleting)?,
            ifname: get("CNI_IFNAME", true)?,
            path: get("CNI_PATH", true)?,
            args: get("CNI_ARGS", false)?,
        };
        if !nodeplane_bus::valid_container_id(&env.container_id) {
            return Err(error(7, format!("CNI_CONTAINERID {:?} is not a container id", env.container_id), ""));
        }
        // The kernel's rule for interface names (dev_valid_name).
        let ifname = &env.ifname;
        if ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || ifname.contains(['/', ':'])
            || ifname.contains(char::is_whitespace)
        {
            return Err(error(7, format!("CNI_IFNAME {ifname:?} is not an interface name"), ""));
        }
        Ok(Request { env, conf, needs_pod_cidr })
    }

    /// `ADD`, `DEL` or `CHECK`.
    pub fn command(&self) -> &str {
        &self.env.command
    }

    /// The name of the node side of the pod's veth: stable per container and
    /// interface, and a valid interface name.
    pub fn host_interface(&self) -> String {
        host_interface(&self.env)
    }

    /// The network configuration the IPAM plugin gets.
    pub fn ipam_configuration(&self) -> &Value {
        &self.conf
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
    match std::env::var("CNI_COMMAND").as_deref() {
        Ok("VERSION") => return Ok(Some(json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED}))),
        // Before waiting on stdin: run by hand, the plugin says what it lacks.
        Ok("") | Err(_) => return Err(error(7, "CNI_COMMAND is not set", "")),
        Ok(_) => {}
    }
    let mut stdin = String::new();
    std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(|e| error(4, "cannot read the network configuration", e.to_string()))?;
    let request = Request::parse(|name| std::env::var(name).ok(), &stdin, node_config())?;
    let (env, conf) = (&request.env, &request.conf);
    let raw_conf = conf.to_string();
    match env.command.as_str() {
        "ADD" if request.needs_pod_cidr => {
            let mut conf = conf.clone();
            conf["ipam"]["ranges"] = json!([[{"subnet": node_pod_cidr()?}]]);
            add(env, &conf, &conf.to_string()).map(Some)
        }
        "ADD" => add(env, conf, &raw_conf).map(Some),
        "DEL" => del(env, &raw_conf).map(|()| None),
        _ => check(env).map(|()| None),
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
/// (`[datapath] pod_cidr`); true when it needs one and node.toml has none
/// (then the Node's, from nodeplaned; without `[kubernetes]` that is an error).
fn with_pod_cidr(conf: &mut Value, node: &NodeConfig) -> Result<bool, CniError> {
    let ipam = &mut conf["ipam"];
    if ipam["type"] != "host-local" || !ipam["ranges"].is_null() || !ipam["subnet"].is_null() {
        return Ok(false);
    }
    match (&node.datapath.pod_cidr, &node.kubernetes) {
        (Some(cidr), _) => ipam["ranges"] = json!([[{"subnet": cidr}]]),
        (None, Some(_)) => return Ok(true),
        (None, None) => {
            return Err(error(
                4,
                "no pod subnet: set ipam.ranges in the network configuration, or [datapath] pod_cidr or [kubernetes] in node.toml",
                "",
            ));
        }
    }
    Ok(false)
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

/// The pod subnet nodeplaned read from this node's Node object.
fn node_pod_cidr() -> Result<String, CniError> {
    let unknown = |details: String| error(11, "the node's pod subnet is not known yet; try again later", details);
    runtime()?.block_on(async {
        let bus = supervisor().await?;
        let component = nodeplane_bus::ComponentProxy::builder(&bus)
            .path(nodeplane_bus::component_path("kubernetes"))
            .build()
            .await
            .map_err(|e| unknown(e.to_string()))?;
        let facts = component.facts().await.map_err(|e| unknown(e.to_string()))?;
        match facts.get("pod_cidr").map(nodeplane_bus::fact_from_value) {
            Some(nodeplane_bus::Fact::Text(cidr)) => Ok(cidr),
            _ => Err(unknown("nodeplaned has not read spec.podCIDR from the Node yet".into())),
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)], stdin: &str) -> Result<Request, CniError> {
        let mut node = NodeConfig::default();
        node.datapath.pod_cidr = Some("10.244.1.0/24".into());
        let var = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        Request::parse(var, stdin, Ok(node))
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    const CONF: &str =
        r#"{"cniVersion": "1.0.0", "name": "k8s", "type": "nodeplane-cni", "ipam": {"type": "host-local"}}"#;

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().map(|&(k, v)| (k, if k == name { value } else { v })).collect()
    }

    #[test]
    fn a_request_takes_the_nodes_pod_subnet_and_names_the_host_side() {
        let request = parse(ADD, CONF).unwrap();
        assert_eq!(request.command(), "ADD");
        assert_eq!(request.ipam_configuration()["ipam"]["ranges"], json!([[{"subnet": "10.244.1.0/24"}]]));
        let host = request.host_interface();
        assert!(host.starts_with("np") && host.len() == 13, "{host}");
    }

    #[test]
    fn bad_requests_get_the_specs_error_codes() {
        let code = |vars: &[(&str, &str)], stdin: &str| parse(vars, stdin).err().map(|e| e.code);
        assert_eq!(code(&with("CNI_IFNAME", "a/b"), CONF), Some(7));
        assert_eq!(code(&with("CNI_IFNAME", "sixteen-letters!"), CONF), Some(7));
        assert_eq!(code(&with("CNI_CONTAINERID", "../x"), CONF), Some(7));
        assert_eq!(code(&with("CNI_NETNS", ""), CONF), Some(7));
        assert_eq!(code(&with("CNI_COMMAND", "GC"), CONF), Some(4));
        assert_eq!(code(ADD, "{"), Some(4));
        assert_eq!(code(ADD, r#"{"ipam": {"type": "../../bin/sh"}}"#), Some(4));
        assert_eq!(code(ADD, r#"{"ipam": {}}"#), Some(4));
        // DEL needs no namespace, and works without the node's pod subnet.
        let del = [("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")];
        let vars: Vec<_> = ADD.iter().filter(|(k, _)| !del.iter().any(|(d, _)| d == k)).chain(&del).copied().collect();
        let request = Request::parse(
            |n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| (*v).to_owned()),
            CONF,
            Err(error(4, "unreadable", "")),
        )
        .unwrap();
        assert_eq!(request.ipam_configuration()["ipam"]["ranges"], json!([[{"subnet": "192.0.2.0/24"}]]));
    }
}
