//! The sysctl guard as a supervisor component: applies the `[sysctl]` section at
//! start, re-checks it every `check_interval`, and restores what drifted.

use std::time::Duration;

use nodeplane_sysctl::{Guard, Report, SysctlConfig, SysctlError, SysctlKey, kernel};

use super::component::{Component, Fact, Facts, Reporter, State};
use crate::config::NodeConfig;

/// The port-range guard could not be set up: the component's core promise.
#[derive(Debug, thiserror::Error)]
#[error("cannot guard the port range: {}{}", list(failures), if *.kept_previous { "; kept the previous settings" } else { "" })]
pub struct PortGuardError {
    failures: Vec<SysctlError>,
    /// A reload that failed: the previous settings are in force again.
    kept_previous: bool,
}

fn list(failures: &[SysctlError]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

pub struct SysctlComponent {
    config: SysctlConfig,
    guard: Guard,
    reporter: Reporter,
    /// Restores counted by guards replaced on reload.
    restored_before: u64,
    failed_keys: Vec<String>,
}

impl Component for SysctlComponent {
    const NAME: &'static str = "sysctl";
    type Error = PortGuardError;

    async fn start(config: &NodeConfig, reporter: Reporter) -> Result<Self, PortGuardError> {
        let (guard, report) = Guard::apply(&config.sysctl);
        let mut component = SysctlComponent {
            config: config.sysctl.clone(),
            guard,
            reporter,
            restored_before: 0,
            failed_keys: Vec::new(),
        };
        component.absorb(&report, "set");
        port_guard_result(&report).map(|()| component)
    }

    async fn reload(&mut self, config: &NodeConfig) -> Result<(), PortGuardError> {
        if config.sysctl == self.config {
            return Ok(());
        }
        let (guard, report) = Guard::apply(&config.sysctl);
        if let Err(mut err) = port_guard_result(&report) {
            // Keep the node as it was: undo what the attempt wrote, and let the
            // running guard check that its values hold.
            for failure in Guard::revert(&report) {
                tracing::error!(sysctl_key = failure.key().as_str(), "cannot undo a failed reload: {failure}");
            }
            let check = self.guard.recheck();
            self.absorb(&check, "restored");
            err.kept_previous = true;
            return Err(err);
        }
        self.restored_before += self.guard.restored();
        self.guard = guard;
        self.config = config.sysctl.clone();
        self.absorb(&report, "set");
        Ok(())
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.config.check_interval)
    }

    async fn tick(&mut self) {
        let report = self.guard.recheck();
        self.absorb(&report, "restored");
    }

    type Command = std::convert::Infallible;

    async fn command(&mut self, command: Self::Command) {
        match command {}
    }
}

impl SysctlComponent {
    /// Logs what a pass changed and failed, and publishes state, detail and facts.
    fn absorb(&mut self, report: &Report, verb: &str) {
        for change in &report.changes {
            let (key, found, restored) = (change.key.as_str(), &change.found, &change.restored);
            if verb == "restored" {
                tracing::warn!(sysctl_key = key, sysctl_found = %found, sysctl_restored = %restored, "{key} was changed to {found:?} by something else; restored {restored:?}");
            } else {
                tracing::info!(sysctl_key = key, sysctl_found = %found, sysctl_set = %restored, "set {key} from {found:?} to {restored:?}");
            }
        }
        for failure in &report.failures {
            tracing::error!(sysctl_key = failure.key().as_str(), "{failure}");
        }
        self.failed_keys = report.failures.iter().map(|f| f.key().to_string()).collect();
        let (state, detail) = match (report.failures.first(), self.guard.plan()) {
            (Some(first), _) if report.port_guard_failed() => {
                (State::Failed, format!("port range not guarded: {first}"))
            }
            (Some(first), _) => (State::Degraded, format!("{} sysctl(s) not applied: {first}", report.failures.len())),
            (None, plan) => {
                let plan = plan.expect("without failures the port sysctls were read and planned");
                let reserved = if plan.reserved_ports.is_some() { "reserved" } else { "not reserved" };
                (
                    State::Healthy,
                    format!(
                        "ephemeral ports {}, NodePorts {} {reserved}",
                        plan.ephemeral_range, self.config.nodeport_range
                    ),
                )
            }
        };
        self.reporter.set(state, detail);
        self.reporter.set_facts(self.facts());
    }

    fn facts(&self) -> Facts {
        let mut facts = Facts::new();
        facts.insert("nodeport_range".into(), Fact::Text(self.config.nodeport_range.to_string()));
        if let Some(plan) = self.guard.plan() {
            facts.insert("ephemeral_range".into(), Fact::Text(plan.ephemeral_range.to_string()));
        }
        let reserved =
            SysctlKey::parse(SysctlKey::IP_LOCAL_RESERVED_PORTS).ok().and_then(|key| kernel::read(&key).ok());
        if let Some(reserved) = reserved {
            facts.insert("reserved_ports".into(), Fact::Text(reserved));
        }
        facts.insert("managed_extra".into(), Fact::Count(self.config.extra.0.len() as u64));
        facts.insert("restored".into(), Fact::Count(self.restored_before + self.guard.restored()));
        if !self.failed_keys.is_empty() {
            facts.insert("failed_keys".into(), Fact::Text(self.failed_keys.join(",")));
        }
        facts
    }
}

/// The port-range guard is the component's core promise: failing it fails start-up
/// and reloads; a failed `extra` key only degrades.
fn port_guard_result(report: &Report) -> Result<(), PortGuardError> {
    if report.port_guard_failed() {
        return Err(PortGuardError { failures: report.failures.clone(), kept_previous: false });
    }
    Ok(())
}
