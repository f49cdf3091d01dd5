//! `nodeplanectl status`: the node's health and each component's, with facts.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::SystemTime;

use nodeplane_bus::{self as bus, ComponentProxy, Fact, NodeProxy, State};
use serde::Serialize;
use zbus::Connection;
use zbus::proxy::CacheProperties;

use super::UNREACHABLE;
use crate::slots;

#[derive(Serialize)]
pub(super) struct NodeStatus {
    pub health: State,
    pub version: String,
    pub components: Vec<ComponentStatus>,
    /// The node's other services, as systemd has them (absent where no
    /// systemd answers on the bus).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
    /// The disk image's slots, on a node booted from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<Slots>,
}

#[derive(Serialize)]
pub(super) struct Slots {
    pub booted: String,
    pub slots: Vec<slots::Slot>,
    /// Why the booted slot is not the newest: the newer one went bad.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    /// Why the slots could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The slots, when this boot came from one (never touching /efi otherwise:
/// its automount would wait for an ESP a direct boot does not have).
fn read_slots() -> Option<Slots> {
    let booted = slots::booted(&std::fs::read_to_string("/proc/cmdline").ok()?)?;
    let (slots, error) = match slots::read(std::path::Path::new(slots::ESP)) {
        Ok(slots) => (slots, None),
        Err(err) => (Vec::new(), Some(format!("reading {}: {err}", slots::entries_dir(slots::ESP.as_ref()).display()))),
    };
    let rolled_back = slots::rolled_back(&slots, &booted);
    Some(Slots { booted, slots, rolled_back, error })
}

/// The units beside nodeplaned that make a node.
const SERVICES: [&str; 2] = ["containerd.service", "kubelet.service"];

#[derive(Serialize)]
pub(super) struct ServiceStatus {
    pub name: String,
    /// systemd's ActiveState and SubState (`active`/`running`, `inactive`/`dead`, …).
    pub active: String,
    pub sub: String,
}

#[derive(Serialize)]
pub(super) struct ComponentStatus {
    pub name: String,
    pub state: State,
    pub detail: String,
    /// RFC 3339, UTC.
    pub last_change: String,
    pub facts: BTreeMap<String, Fact>,
}

pub(super) async fn fetch(connection: &Connection) -> zbus::Result<NodeStatus> {
    let node = NodeProxy::builder(connection).cache_properties(CacheProperties::No).build().await?;
    let mut components = Vec::new();
    for (name, state, detail, last_change) in node.components().await? {
        let proxy = ComponentProxy::builder(connection)
            .path(bus::component_path(&name))
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let facts = proxy.facts().await?.iter().map(|(k, v)| (k.clone(), bus::fact_from_value(v))).collect();
        let state = state.parse().map_err(|e: nodeplane_bus::UnknownState| zbus::Error::Failure(e.to_string()))?;
        let last_change = humantime::format_rfc3339_seconds(bus::from_usec(last_change)).to_string();
        components.push(ComponentStatus { name, state, detail, last_change, facts });
    }
    // From the same rows as the table, so header and table always agree.
    let health = State::of_node(components.iter().map(|c| c.state));
    let mut services = Vec::new();
    for unit in SERVICES {
        if let Ok(service) = service_status(connection, unit).await {
            services.push(service);
        }
    }
    Ok(NodeStatus { health, version: node.version().await?, components, services, slots: read_slots() })
}

/// `unit`'s state from systemd (LoadUnit: also for a unit nothing started).
async fn service_status(connection: &Connection, unit: &str) -> zbus::Result<ServiceStatus> {
    const SYSTEMD: &str = "org.freedesktop.systemd1";
    let manager =
        zbus::Proxy::new(connection, SYSTEMD, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager").await?;
    let path: zbus::OwnedObjectPath = manager.call("LoadUnit", &(unit,)).await?;
    let proxy = zbus::Proxy::new(connection, SYSTEMD, path, "org.freedesktop.systemd1.Unit").await?;
    Ok(ServiceStatus {
        name: unit.trim_end_matches(".service").to_owned(),
        active: proxy.get_property("ActiveState").await?,
        sub: proxy.get_property("SubState").await?,
    })
}

pub(super) async fn status(connection: &Connection, json: bool) -> ExitCode {
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
    if !status.services.is_empty() {
        out += "\nSERVICE     STATE\n";
        for s in &status.services {
            out += &format!("{:10}  {} ({})\n", s.name, s.active, s.sub);
        }
    }
    if let Some(slots) = &status.slots {
        out += "\nSLOT  VERSION                    STATE\n";
        for slot in &slots.slots {
            let booted = if slot.name == slots.booted { " (booted)" } else { "" };
            out += &format!("{:4}  {:25}  {}{booted}\n", slot.name, slot.version, slot.health);
        }
        if let Some(error) = &slots.error {
            out += &format!("slots: {error}\n");
        }
        if let Some(rolled_back) = &slots.rolled_back {
            out += &format!("{rolled_back}\n");
        }
    }
    out
}

/// `nodeplanectl boot-check`: whether this boot is good, for
/// `nodeplane-boot-check.service` (which gates boot-complete.target, where
/// systemd-bless-boot marks a counted slot good): nodeplaned healthy and,
/// on a node that joins a cluster, its Node registered (the `kubernetes`
/// component read its pod CIDR). Waits up to `timeout`; says why not.
pub(super) async fn boot_check(connection: &Connection, timeout: std::time::Duration) -> ExitCode {
    let deadline = std::time::Instant::now() + timeout;
    let mut said = String::new();
    loop {
        let why_not = match fetch(connection).await {
            Err(err) => format!("nodeplaned does not answer: {err}"),
            Ok(status) if status.health != State::Healthy => {
                let unwell: Vec<String> = status
                    .components
                    .iter()
                    .filter(|c| c.state != State::Healthy)
                    .map(|c| format!("{} {}: {}", c.name, c.state, c.detail))
                    .collect();
                format!("the node is {}: {}", status.health, unwell.join("; "))
            }
            Ok(status) => {
                let kubernetes = status.components.iter().find(|c| c.name == "kubernetes");
                let joining = kubernetes.is_some_and(|c| c.facts.contains_key("api_server"));
                if joining && !kubernetes.is_some_and(|c| c.facts.contains_key("pod_cidr")) {
                    "the kubelet has not registered the Node yet (no pod CIDR read from it)".to_owned()
                } else {
                    println!(
                        "boot-check: this boot is good: the node is healthy{}",
                        if joining { " and its Node registered" } else { "" }
                    );
                    return ExitCode::SUCCESS;
                }
            }
        };
        if why_not != said {
            println!("boot-check: not yet: {why_not}");
            said = why_not;
        }
        if std::time::Instant::now() > deadline {
            eprintln!("boot-check: this boot is not good after {}: {said}", humantime::format_duration(timeout));
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
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
