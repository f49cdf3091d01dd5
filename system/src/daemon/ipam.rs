//! The IPAM sweeper as a supervisor component: sweeps every `interval` (not at
//! start: containerd starts after nodeplaned) and on demand (`Sweep()` on D-Bus),
//! reports each sweep's counts as facts and each freed address to the journal.

use std::time::{Duration, SystemTime};

use nodeplane_ipam::{IpamConfig, SweepCounts, SweepError, SweepReport};
use tokio::sync::oneshot;

use super::component::{Component, Fact, Facts, Reporter, State};
use super::metrics::Timing;
use crate::config::NodeConfig;

/// A sweep asked for over D-Bus.
pub struct SweepRequest {
    pub dry_run: bool,
    pub reply: oneshot::Sender<Result<SweepReport, SweepError>>,
}

pub struct IpamComponent {
    config: IpamConfig,
    reporter: Reporter,
    freed_total: u64,
    /// Sweeps run since start, successful or not.
    sweeps: u64,
    last: Option<LastSweep>,
    last_error: Option<String>,
}

/// What is kept of the last sweep: its figures, not its lists.
struct LastSweep {
    at: SystemTime,
    dry_run: bool,
    took: Duration,
    counts: SweepCounts,
    first_error: Option<String>,
    unswept: Vec<String>,
    missing: Vec<String>,
}

impl Component for IpamComponent {
    const NAME: &'static str = "ipam";
    type Error = std::convert::Infallible;

    async fn start(config: &NodeConfig, reporter: Reporter) -> Result<Self, Self::Error> {
        let component = IpamComponent {
            config: config.ipam.clone(),
            reporter,
            freed_total: 0,
            sweeps: 0,
            last: None,
            last_error: None,
        };
        component.publish_idle();
        Ok(component)
    }

    async fn reload(&mut self, config: &NodeConfig) -> Result<(), Self::Error> {
        self.config = config.ipam.clone();
        if self.last.is_none() && self.last_error.is_none() {
            self.publish_idle();
        }
        Ok(())
    }

    fn interval(&self) -> Option<Duration> {
        self.config.enabled.then_some(self.config.interval)
    }

    async fn tick(&mut self) {
        let _ = self.sweep(self.config.dry_run).await;
    }

    type Command = SweepRequest;

    async fn command(&mut self, request: SweepRequest) {
        // `dry_run = true` in node.toml makes every sweep on this node a dry run.
        let result = self.sweep(request.dry_run || self.config.dry_run).await;
        let _ = request.reply.send(result);
    }
}

impl IpamComponent {
    async fn sweep(&mut self, dry_run: bool) -> Result<SweepReport, SweepError> {
        self.sweeps += 1;
        match nodeplane_ipam::sweep(&self.config, dry_run).await {
            Ok(report) => {
                if dry_run {
                    // The reply lists them; a dry run on a leaky node should not flood the journal.
                    tracing::info!(ipam_dry_run = true, "dry run: would free {} reservation(s)", report.counts.freed);
                }
                for freed in report.freed.iter().filter(|_| !dry_run) {
                    let (network, ip, owner) = (&freed.network, freed.ip, &freed.owner);
                    tracing::info!(
                        ipam_network = %network, ipam_ip = %ip, ipam_owner = %owner,
                        "freed {ip} in network {network}: owner {} is gone from containerd",
                        if owner.is_empty() { "(empty file)" } else { owner }
                    );
                }
                for error in &report.errors {
                    tracing::warn!("sweep: {error}");
                }
                if !dry_run {
                    self.freed_total += report.counts.freed;
                }
                self.reporter.observe(Timing::Sweep, report.took);
                self.last = Some(LastSweep {
                    at: SystemTime::now(),
                    dry_run,
                    took: report.took,
                    counts: report.counts,
                    first_error: report.errors.first().cloned(),
                    unswept: report.unswept.clone(),
                    missing: report.missing.clone(),
                });
                for network in &report.unswept {
                    tracing::warn!(
                        ipam_network = %network,
                        "network {network} not swept: none of its reservations belongs to a container in \
                         namespace {:?} (another CNI user's?); list it in ipam.networks to sweep it",
                        self.config.namespace
                    );
                }
                self.last_error = None;
                self.publish();
                Ok(report)
            }
            Err(err) => {
                self.last_error = Some(err.to_string());
                self.publish();
                Err(err)
            }
        }
    }

    fn publish_idle(&self) {
        let detail = if self.config.enabled {
            format!("first sweep in {}", humantime::format_duration(self.config.interval))
        } else {
            "periodic sweeps disabled (ipam.enabled = false)".to_owned()
        };
        self.reporter.set(State::Healthy, detail);
        self.reporter.set_facts(self.facts());
    }

    fn publish(&self) {
        let (state, detail) = match (&self.last_error, &self.last) {
            (Some(error), _) => (State::Degraded, format!("last sweep failed: {error}")),
            (None, Some(LastSweep { counts, first_error: Some(first), .. })) => {
                (State::Degraded, format!("{} error(s) in the last sweep: {first}", counts.errors))
            }
            (None, Some(LastSweep { counts, dry_run, unswept, .. })) => (
                State::Healthy,
                format!(
                    "last sweep {} {} of {} reservations ({} young orphans kept){}",
                    if *dry_run { "would free" } else { "freed" },
                    counts.freed,
                    counts.scanned,
                    counts.young_orphans_kept,
                    if unswept.is_empty() { String::new() } else { format!("; not swept: {}", unswept.join(", ")) }
                ),
            ),
            (None, None) => return self.publish_idle(),
        };
        self.reporter.set(state, detail);
        self.reporter.set_facts(self.facts());
    }

    fn facts(&self) -> Facts {
        let mut facts = Facts::new();
        facts.insert("freed_total".into(), Fact::Count(self.freed_total));
        facts.insert("sweeps".into(), Fact::Count(self.sweeps));
        if let Some(last) = &self.last {
            let c = last.counts;
            let counts = [
                ("networks", c.networks),
                ("scanned", c.scanned),
                ("live", c.live),
                ("live_containers", c.live_containers),
                ("young_orphans_kept", c.young_orphans_kept),
                ("freed", c.freed),
                ("skipped", c.skipped),
                ("errors", c.errors),
                ("containerd_calls", c.containerd_calls),
                ("last_sweep_ms", last.took.as_millis() as u64),
            ];
            facts.extend(counts.into_iter().map(|(k, v)| (k.to_owned(), Fact::Count(v))));
            facts.insert("last_sweep".into(), Fact::Text(humantime::format_rfc3339_seconds(last.at).to_string()));
            facts.insert("last_sweep_dry_run".into(), Fact::Text(last.dry_run.to_string()));
            facts.insert("changed_since_scan".into(), Fact::Count(c.changed_since_scan));
            for (name, list) in [("unswept_networks", &last.unswept), ("missing_networks", &last.missing)] {
                if !list.is_empty() {
                    facts.insert(name.into(), Fact::Text(list.join(",")));
                }
            }
        }
        if let Some(error) = &self.last_error {
            facts.insert("last_error".into(), Fact::Text(error.clone()));
        }
        facts
    }
}
