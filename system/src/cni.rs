//! `nodeplane-cni`: the CNI plugin (spec 1.0: ADD, DEL, CHECK, VERSION) that
//! gives a pod its network: a veth pair (`eth0` in the pod, `np…` on the node,
//! where nodeplaned's datapath attaches), an address from the configured IPAM
//! plugin (host-local by default, whose files the IPAM sweeper tends), a /32
//! route to the pod and a default route via a link-local gateway in the pod.
//! ADD fails with a clear error, leaving nothing behind, while nodeplaned is down.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use serde_json::{Value, json};

const CNI_VERSION: &str = "1.0.0";
const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The pods' gateway: link-local, answered by a static neighbor entry.
const GATEWAY: &str = "169.254.1.1";
/// Node-side interface names start with this (the datapath's default prefix).
const HOST_PREFIX: &str = "np";

/// A CNI error: its code (spec: 4 invalid config, 7 invalid env, 11 try again
/// later, 999 others) and message.
struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn error(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError { code, msg: msg.into(), details: details.into() }
}

struct Env {
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
    match with_pod_cidr(&mut conf) {
        Err(err) if !deleting => return Err(err),
        Err(_) => conf["ipam"]["ranges"] = json!([[{"subnet": "192.0.2.0/24"}]]),
        Ok(()) => {}
    }
    let stdin = conf.to_string();
    let env = Env {
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

/// A host-local configuration without a range takes the node's pod CIDR from
/// node.toml (`[datapath] pod_cidr`; `NODEPLANE_CONFIG` names another file).
fn with_pod_cidr(conf: &mut Value) -> Result<(), CniError> {
    let ipam = &mut conf["ipam"];
    if ipam["type"] != "host-local" || !ipam["ranges"].is_null() || !ipam["subnet"].is_null() {
        return Ok(());
    }
    let path =
        std::env::var_os("NODEPLANE_CONFIG").map_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH), PathBuf::from);
    let node = crate::config::NodeConfig::load(&path)
        .map_err(|e| error(4, "cannot read the node configuration", e.to_string()))?;
    let cidr = node.datapath.pod_cidr.ok_or_else(|| {
        error(4, "no pod subnet: set ipam.ranges in the network configuration or [datapath] pod_cidr in node.toml", "")
    })?;
    ipam["ranges"] = json!([[{"subnet": cidr}]]);
    Ok(())
}

/// A name for the node side of the pod's veth, stable per container and interface.
fn host_interface(container_id: &str, ifname: &str) -> String {
    // FNV-1a: short, stable, no dependency.
    let hash = format!("{container_id}/{ifname}")
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{HOST_PREFIX}{:011x}", hash & 0xfff_ffff_ffff)
}

fn add(env: &Env, conf: &Value, raw_conf: &str) -> Result<Value, CniError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let bus = runtime.block_on(supervisor())?;
    let ipam = delegate(env, "ADD", conf, raw_conf)?;
    let ip = ipam["ips"]
        .as_array()
        .and_then(|ips| ips.iter().find_map(|ip| ip["address"].as_str()?.split('/').next()?.parse::<Ipv4Addr>().ok()))
        .ok_or_else(|| error(999, "the IPAM plugin returned no IPv4 address", ipam.to_string()))?;
    let host = host_interface(&env.container_id, &env.ifname);
    let plumbed = plumb(env, &host, ip).and_then(|macs| {
        runtime.block_on(register(&bus, env, &host, ip))?;
        Ok(macs)
    });
    match plumbed {
        Ok((host_mac, pod_mac)) => Ok(json!({
            "cniVersion": conf["cniVersion"].as_str().unwrap_or(CNI_VERSION),
            "interfaces": [
                {"name": host, "mac": host_mac},
                {"name": env.ifname, "mac": pod_mac, "sandbox": env.netns},
            ],
            "ips": [{"address": format!("{ip}/32"), "gateway": GATEWAY, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        })),
        Err(err) => {
            // Leave nothing behind: the address and whatever part of the veth exists.
            let _ = ip_cmd(None, &["link", "del", &host]);
            let _ = delegate(env, "DEL", conf, raw_conf);
            Err(err)
        }
    }
}

/// Creates and configures the veth pair; returns the host and pod MACs.
fn plumb(env: &Env, host: &str, ip: Ipv4Addr) -> Result<(String, String), CniError> {
    let peer = format!("{host}p");
    let netns = Some(Path::new(&env.netns));
    ip_cmd(None, &["link", "add", host, "type", "veth", "peer", "name", &peer])?;
    ip_cmd(None, &["link", "set", &peer, "netns", &env.netns])?;
    ip_cmd(netns, &["link", "set", &peer, "name", &env.ifname])?;
    ip_cmd(netns, &["addr", "add", &format!("{ip}/32"), "dev", &env.ifname])?;
    ip_cmd(netns, &["link", "set", &env.ifname, "up"])?;
    ip_cmd(netns, &["link", "set", "lo", "up"])?;
    ip_cmd(None, &["link", "set", host, "up"])?;
    let host_mac = mac(None, host)?;
    let pod_mac = mac(netns, &env.ifname)?;
    ip_cmd(netns, &["route", "add", GATEWAY, "dev", &env.ifname, "scope", "link"])?;
    ip_cmd(netns, &["route", "add", "default", "via", GATEWAY, "dev", &env.ifname])?;
    ip_cmd(netns, &["neigh", "add", GATEWAY, "lladdr", &host_mac, "dev", &env.ifname, "nud", "permanent"])?;
    ip_cmd(None, &["route", "add", &format!("{ip}/32"), "dev", host])?;
    ip_cmd(None, &["neigh", "add", &ip.to_string(), "lladdr", &pod_mac, "dev", host, "nud", "permanent"])?;
    Ok((host_mac, pod_mac))
}

/// DEL is idempotent: a missing interface or reservation is not an error.
fn del(env: &Env, raw_conf: &str) -> Result<(), CniError> {
    let conf: Value = serde_json::from_str(raw_conf).unwrap_or_default();
    // Best effort: DEL must succeed while nodeplaned is down, too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        if let Ok(bus) = supervisor().await
            && let Ok(datapath) = crate::bus::DatapathProxy::new(&bus).await
        {
            let _ = datapath.unregister_endpoint(&env.container_id).await;
        }
    });
    delegate(env, "DEL", &conf, raw_conf)?;
    let host = host_interface(&env.container_id, &env.ifname);
    if ip_cmd(None, &["link", "show", &host]).is_ok() {
        ip_cmd(None, &["link", "del", &host])?;
    }
    Ok(())
}

fn check(env: &Env) -> Result<(), CniError> {
    let host = host_interface(&env.container_id, &env.ifname);
    ip_cmd(None, &["link", "show", &host]).map_err(|e| error(999, format!("{host} is missing"), e.msg))?;
    ip_cmd(Some(Path::new(&env.netns)), &["link", "show", &env.ifname])
        .map_err(|e| error(999, format!("{} is missing in the pod", env.ifname), e.msg))?;
    Ok(())
}

/// ADD needs nodeplaned: without it the pod would get an address but no datapath.
async fn supervisor() -> Result<zbus::Connection, CniError> {
    let unavailable = |details: String| error(11, "nodeplaned is not running; try again later", details);
    let connection = zbus::Connection::system().await.map_err(|e| unavailable(e.to_string()))?;
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.map_err(|e| unavailable(e.to_string()))?;
    let name = crate::bus::SERVICE.try_into().expect("a valid bus name");
    match dbus.name_has_owner(name).await {
        Ok(true) => Ok(connection),
        Ok(false) => Err(unavailable(format!("nobody owns {} on the system bus", crate::bus::SERVICE))),
        Err(err) => Err(unavailable(err.to_string())),
    }
}

/// Tells nodeplaned about the pod, which attaches its datapath to `host` at once.
async fn register(bus: &zbus::Connection, env: &Env, host: &str, ip: Ipv4Addr) -> Result<(), CniError> {
    let failed = |e: zbus::Error| error(999, "nodeplaned refused the pod", e.to_string());
    let datapath = crate::bus::DatapathProxy::new(bus).await.map_err(failed)?;
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

/// `ip ARGS…`, in the network namespace at `netns` when given.
fn ip_cmd(netns: Option<&Path>, args: &[&str]) -> Result<String, CniError> {
    let mut command = match netns {
        Some(netns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", netns.display())).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let out = command.args(args).output().map_err(|e| error(999, "cannot run ip (iproute2)", e.to_string()))?;
    if !out.status.success() {
        return Err(error(
            999,
            format!("ip {} failed", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mac(netns: Option<&Path>, interface: &str) -> Result<String, CniError> {
    let out = ip_cmd(netns, &["-o", "link", "show", interface])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| error(999, format!("no MAC address for {interface}"), out.clone()))
}
