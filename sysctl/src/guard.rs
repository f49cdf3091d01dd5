//! Planning the managed sysctls from config and kernel state, applying them, and
//! keeping them: a re-check restores whatever something else changed.

use crate::kernel::{self, SysctlError};
use crate::{PortRange, PortSet, SysctlConfig, SysctlKey};

/// What the guard will make the kernel hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ephemeral_range: PortRange,
    /// Set when `reserve_nodeport_range` is on: the existing reserved ports plus the
    /// NodePort range.
    pub reserved_ports: Option<PortSet>,
}

/// Plans the port sysctls: the configured ephemeral range if there is one; otherwise
/// the current range if it is clear of the NodePort range, else its largest part
/// that is. When nothing of it is left (it lies inside the NodePort range) the same
/// rule is applied to the Linux default range, then to every unprivileged port.
pub fn plan(config: &SysctlConfig, current_ephemeral: PortRange, current_reserved: &PortSet) -> Plan {
    let nodeports = config.nodeport_range;
    let ephemeral_range = config.ephemeral_range.unwrap_or_else(|| {
        [current_ephemeral, PortRange::LINUX_DEFAULT_EPHEMERAL, PortRange::UNPRIVILEGED]
            .into_iter()
            .find_map(|range| range.largest_part_outside(nodeports))
            .expect("config validation guarantees unprivileged ports outside the NodePort range")
    });
    let reserved_ports = config.reserve_nodeport_range.then(|| {
        let mut reserved = current_reserved.clone();
        reserved.insert(nodeports);
        reserved
    });
    Plan { ephemeral_range, reserved_ports }
}

/// A value the guard wrote: at start-up, or to undo a change made by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: SysctlKey,
    pub found: String,
    pub restored: String,
}

/// The outcome of applying or re-checking the managed sysctls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Values written in this pass.
    pub changes: Vec<Change>,
    /// Keys that could not be read, set or kept.
    pub failures: Vec<SysctlError>,
}

impl Report {
    /// True when a port-range key failed (as opposed to an `extra` one): the guard's
    /// core promise does not hold.
    pub fn port_guard_failed(&self) -> bool {
        self.failures.iter().any(|f| is_port_key(f.key()))
    }
}

/// True for the two sysctls the port guard owns.
pub fn is_port_key(key: &SysctlKey) -> bool {
    matches!(key.as_str(), SysctlKey::IP_LOCAL_PORT_RANGE | SysctlKey::IP_LOCAL_RESERVED_PORTS)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// Exactly this value (normalized).
    Exact(String),
    /// A port list that reserves at least this range; other entries are kept.
    Reserves(PortRange),
}

/// The set of sysctls nodeplane manages, and how many times it had to restore one.
#[derive(Debug)]
pub struct Guard {
    plan: Option<Plan>,
    managed: Vec<(SysctlKey, Want)>,
    restored: u64,
}

impl Guard {
    /// Reads the kernel, plans, writes what differs and reads it back.
    pub fn apply(config: &SysctlConfig) -> (Guard, Report) {
        let mut report = Report::default();
        let port_key = SysctlKey::known(SysctlKey::IP_LOCAL_PORT_RANGE);
        let reserved_key = SysctlKey::known(SysctlKey::IP_LOCAL_RESERVED_PORTS);
        let mut managed = Vec::new();
        let current = read_parsed(&port_key, PortRange::from_kernel)
            .and_then(|ephemeral| Ok((ephemeral, read_parsed(&reserved_key, PortSet::from_kernel)?)));
        let plan = match current {
            Ok((ephemeral, reserved)) => {
                let plan = plan(config, ephemeral, &reserved);
                managed.push((port_key, Want::Exact(plan.ephemeral_range.to_kernel())));
                if plan.reserved_ports.is_some() {
                    managed.push((reserved_key, Want::Reserves(config.nodeport_range)));
                }
                Some(plan)
            }
            Err(err) => {
                report.failures.push(err);
                None
            }
        };
        managed.extend(
            config.extra.0.iter().map(|(key, value)| (key.clone(), Want::Exact(kernel::normalize(&value.to_string())))),
        );
        let guard = Guard { plan, managed, restored: 0 };
        // The port keys come first; if they fail, nothing else is written, so a
        // failed apply has as little to undo as possible.
        let port_keys = guard.managed.iter().take_while(|(key, _)| is_port_key(key)).count();
        guard.enforce(&guard.managed[..port_keys], &mut report);
        if !report.port_guard_failed() {
            guard.enforce(&guard.managed[port_keys..], &mut report);
        }
        (guard, report)
    }

    /// Undoes the writes of `report` (from [`Guard::apply`]), newest first, putting
    /// back the values found before; returns the writes that failed.
    pub fn revert(report: &Report) -> Vec<SysctlError> {
        report.changes.iter().rev().filter_map(|change| kernel::write(&change.key, &change.found).err()).collect()
    }

    /// Reads every managed value back and restores those something else changed.
    pub fn recheck(&mut self) -> Report {
        let mut report = Report::default();
        self.enforce(&self.managed, &mut report);
        self.restored += report.changes.len() as u64;
        report
    }

    /// The port plan, when the port sysctls could be read.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// How many values re-checks have restored since this guard was made.
    pub fn restored(&self) -> u64 {
        self.restored
    }

    fn enforce(&self, managed: &[(SysctlKey, Want)], report: &mut Report) {
        for (key, want) in managed {
            match enforce_one(key, want) {
                Ok(Some(change)) => report.changes.push(change),
                Ok(None) => {}
                Err(err) => report.failures.push(err),
            }
        }
    }
}

fn read_parsed<T, E: ToString>(key: &SysctlKey, parse: impl Fn(&str) -> Result<T, E>) -> Result<T, SysctlError> {
    let text = kernel::read(key)?;
    parse(&text)
        .map_err(|e| SysctlError::Io { key: key.clone(), reason: format!("cannot parse {text:?}: {}", e.to_string()) })
}

/// Makes one key hold what is wanted; returns the change if a write was needed.
fn enforce_one(key: &SysctlKey, want: &Want) -> Result<Option<Change>, SysctlError> {
    let found = kernel::read(key)?;
    let target = match want {
        Want::Exact(value) if *value == found => return Ok(None),
        Want::Exact(value) => value.clone(),
        Want::Reserves(range) => {
            let mut reserved = PortSet::from_kernel(&found)
                .map_err(|e| SysctlError::Io { key: key.clone(), reason: format!("cannot parse {found:?}: {e}") })?;
            if reserved.covers(*range) {
                return Ok(None);
            }
            reserved.insert(*range);
            reserved.to_string()
        }
    };
    kernel::write(key, &target)?;
    let now = kernel::read(key)?;
    let kept = match want {
        Want::Exact(_) => now == target,
        Want::Reserves(range) => PortSet::from_kernel(&now).is_ok_and(|set| set.covers(*range)),
    };
    if !kept {
        return Err(SysctlError::NotKept { key: key.clone(), wrote: target, found: now });
    }
    Ok(Some(Change { key: key.clone(), found, restored: now }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u16, end: u16) -> PortRange {
        PortRange::new(start, end).unwrap()
    }

    fn config(nodeports: PortRange, ephemeral: Option<PortRange>, reserve: bool) -> SysctlConfig {
        SysctlConfig {
            nodeport_range: nodeports,
            ephemeral_range: ephemeral,
            reserve_nodeport_range: reserve,
            ..Default::default()
        }
    }

    #[test]
    fn plans_the_ephemeral_range_for_every_overlap_shape() {
        let np = PortRange::KUBERNETES_NODEPORTS;
        let cases = [
            // (config ephemeral, kernel ephemeral, planned)
            (None, r(32768, 60999), r(32768, 60999)), // Linux default: no overlap, unchanged
            (None, r(1024, 29999), r(1024, 29999)),   // left of NodePorts, unchanged
            (None, r(20000, 40000), r(20000, 29999)), // around, left part larger
            (None, r(10000, 65535), r(32768, 65535)), // around, right part larger
            (None, r(1024, 31000), r(1024, 29999)),   // overlapping from the left
            (None, r(31000, 60999), r(32768, 60999)), // overlapping from the right
            (None, r(30100, 30200), r(32768, 60999)), // inside: falls back to the Linux default
            (Some(r(40000, 50000)), r(32768, 60999), r(40000, 50000)), // configured wins
            (Some(r(1024, 29999)), r(20000, 40000), r(1024, 29999)),
        ];
        for (configured, kernel, planned) in cases {
            let plan = plan(&config(np, configured, true), kernel, &PortSet::default());
            assert_eq!(plan.ephemeral_range, planned, "configured {configured:?}, kernel {kernel}");
            assert!(!plan.ephemeral_range.overlaps(np));
        }
    }

    #[test]
    fn plan_falls_back_when_custom_nodeports_swallow_the_linux_default() {
        let nodeports = r(30000, 61000);
        let plan = plan(&config(nodeports, None, true), r(32768, 60999), &PortSet::default());
        assert_eq!(plan.ephemeral_range, r(1024, 29999));
    }

    #[test]
    fn plan_reserves_nodeports_merged_with_existing_entries() {
        let np = PortRange::KUBERNETES_NODEPORTS;
        let existing = PortSet::from_kernel("22,8080-8090,31000").unwrap();
        let plan_on = plan(&config(np, None, true), r(32768, 60999), &existing);
        assert_eq!(plan_on.reserved_ports.unwrap().to_string(), "22,8080-8090,30000-32767");
        let plan_off = plan(&config(np, None, false), r(32768, 60999), &existing);
        assert_eq!(plan_off.reserved_ports, None);
    }
}
