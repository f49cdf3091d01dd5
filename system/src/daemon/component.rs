//! The component model: the supervisor runs components (the sysctl guard, the
//! datapath, the IPAM sweeper). Each reports a [`State`], a one-line detail, the
//! time of its last change and a few named facts; node health is the worst state.
//!
//! A component is started in order (its start-up work gates `READY=1`), then runs on
//! its own task: periodic work at its interval (and at once when it is woken),
//! and config reloads on request.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use nodeplane_bus::{Fact, State};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::metrics::{Timing, Timings};
use crate::config::NodeConfig;

/// The node's health from every component's status.
pub fn node_state(snapshot: &Snapshot) -> State {
    State::of_node(snapshot.values().map(|s| s.state))
}

pub type Facts = BTreeMap<String, Fact>;

#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub state: State,
    pub detail: String,
    /// When the state or detail last changed.
    pub last_change: SystemTime,
    pub facts: Facts,
}

/// Every component's status, by name.
pub type Snapshot = BTreeMap<&'static str, Status>;

/// The shared table of component statuses; observers subscribe to its
/// changes. With the durations the components observe, for the metrics.
#[derive(Clone)]
pub struct Registry {
    statuses: Arc<watch::Sender<Snapshot>>,
    timings: Arc<Timings>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { statuses: Arc::new(watch::Sender::new(Snapshot::new())), timings: Arc::default() }
    }
}

impl Registry {
    /// Registers `name` in state `starting` and returns its reporter.
    pub fn reporter(&self, name: &'static str) -> Reporter {
        let status = Status {
            state: State::Starting,
            detail: "starting".into(),
            last_change: SystemTime::now(),
            facts: Facts::new(),
        };
        self.statuses.send_modify(|snapshot| {
            snapshot.insert(name, status);
        });
        Reporter { name, registry: self.clone() }
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.statuses.subscribe()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.statuses.borrow().clone()
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }
}

/// A component's handle on its own entry in the [`Registry`].
#[derive(Clone)]
pub struct Reporter {
    name: &'static str,
    registry: Registry,
}

impl Reporter {
    /// Sets state and detail; a change is logged and stamped with the time.
    pub fn set(&self, state: State, detail: impl Into<String>) {
        let detail = detail.into();
        let name = self.name;
        self.registry.statuses.send_if_modified(|snapshot| {
            let status = snapshot.get_mut(name).expect("reporters are registered");
            if status.state == state && status.detail == detail {
                return false;
            }
            // Components report from inside their span, which adds NODEPLANE_COMPONENT.
            match state {
                State::Healthy | State::Starting => {
                    tracing::info!(nodeplane_state = %state, "{name} is {state}: {detail}")
                }
                State::Degraded => {
                    tracing::warn!(nodeplane_state = %state, "{name} is {state}: {detail}")
                }
                State::Failed => {
                    tracing::error!(nodeplane_state = %state, "{name} is {state}: {detail}")
                }
            }
            status.state = state;
            status.detail = detail;
            status.last_change = SystemTime::now();
            true
        });
    }

    /// Replaces the component's facts (not a change of state).
    pub fn set_facts(&self, facts: Facts) {
        let name = self.name;
        self.registry.statuses.send_if_modified(|snapshot| {
            let status = snapshot.get_mut(name).expect("reporters are registered");
            let changed = status.facts != facts;
            status.facts = facts;
            changed
        });
    }

    /// Records how long one of the component's operations took.
    pub fn observe(&self, timing: Timing, took: Duration) {
        self.registry.timings.observe(timing, took);
    }
}

/// A part of the node the supervisor runs.
pub trait Component: Send + Sized + 'static {
    const NAME: &'static str;

    /// Why start-up or a reload failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Start-up work. `READY=1` waits for it; an error is fatal to the supervisor.
    fn start(config: &NodeConfig, reporter: Reporter) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// Applies a new, validated config.
    fn reload(&mut self, config: &NodeConfig) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// How long until the next [`tick`](Component::tick); `None` for no periodic work.
    fn interval(&self) -> Option<Duration>;

    fn tick(&mut self) -> impl Future<Output = ()> + Send;

    /// Ends when the component has news of its own (an API watch event, say):
    /// a [`tick`](Component::tick) follows at once. Never, by default.
    fn woken(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Requests of this component's own (an IPAM sweep on demand, say), sent
    /// through the sender [`start`] returns. `Infallible` for none.
    type Command: Send + 'static;

    fn command(&mut self, command: Self::Command) -> impl Future<Output = ()> + Send;
}

/// A component's failure, named.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("{component}: {source}")]
    Failed { component: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("{0} is not running")]
    NotRunning(&'static str),
}

type ReloadRequest = (Arc<NodeConfig>, oneshot::Sender<Result<(), ComponentError>>);

/// The supervisor's link to a running component.
pub struct Handle {
    name: &'static str,
    requests: mpsc::Sender<ReloadRequest>,
}

/// Starts `C` and spawns its task; returns the supervisor's handle and the
/// sender for the component's own commands. Everything it logs carries
/// `NODEPLANE_COMPONENT=<name>`.
pub async fn start<C: Component>(
    config: &NodeConfig,
    registry: &Registry,
) -> Result<(Handle, mpsc::Sender<C::Command>), ComponentError> {
    let span = tracing::info_span!("component", nodeplane_component = C::NAME);
    let reporter = registry.reporter(C::NAME);
    let component = C::start(config, reporter.clone())
        .instrument(span.clone())
        .await
        .map_err(|e| ComponentError::Failed { component: C::NAME, source: e.into() })?;
    let (requests, inbox) = mpsc::channel(1);
    let (commands, command_inbox) = mpsc::channel(4);
    let task = tokio::spawn(run(component, inbox, command_inbox).instrument(span.clone()));
    // A component whose task ends (a panic, in builds that unwind) must not keep
    // its last state on display.
    tokio::spawn(
        async move {
            let detail = match task.await {
                Ok(()) => "stopped".to_owned(),
                Err(err) => format!("crashed: {err}"),
            };
            reporter.set(State::Failed, detail);
        }
        .instrument(span),
    );
    Ok((Handle { name: C::NAME, requests }, commands))
}

impl Handle {
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub async fn reload(&self, config: Arc<NodeConfig>) -> Result<(), ComponentError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((config, reply)).await.map_err(|_| ComponentError::NotRunning(self.name))?;
        answer.await.map_err(|_| ComponentError::NotRunning(self.name))?
    }
}

async fn run<C: Component>(
    mut component: C,
    mut inbox: mpsc::Receiver<ReloadRequest>,
    mut commands: mpsc::Receiver<C::Command>,
) {
    let mut next = component.interval().map(|i| Instant::now() + i);
    loop {
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = inbox.recv() => {
                let Some((config, reply)) = request else { return };
                let result = component.reload(&config).await;
                let _ = reply.send(result.map_err(|e| ComponentError::Failed { component: C::NAME, source: e.into() }));
            }
            Some(command) = commands.recv() => {
                component.command(command).await;
                continue; // on-demand work leaves the periodic schedule alone
            }
            () = due => component.tick().await,
            () = component.woken() => component.tick().await,
        }
        next = component.interval().map(|i| Instant::now() + i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_health_is_the_worst_component_state() {
        use State::{Degraded, Failed, Healthy, Starting};
        assert_eq!(State::of_node([]), Starting);
        assert_eq!(State::of_node([Healthy]), Healthy);
        assert_eq!(State::of_node([Healthy, Starting]), Starting);
        assert_eq!(State::of_node([Degraded, Starting]), Degraded);
        assert_eq!(State::of_node([Degraded, Failed, Healthy]), Failed);
    }

    #[test]
    fn reporter_stamps_changes_and_ignores_repeats() {
        let registry = Registry::default();
        let mut changes = registry.subscribe();
        let reporter = registry.reporter("test");
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        reporter.set(State::Healthy, "fine");
        assert!(changes.has_changed().unwrap());
        let first = registry.snapshot()["test"].last_change;
        changes.mark_unchanged();
        reporter.set(State::Healthy, "fine");
        assert!(!changes.has_changed().unwrap());
        assert_eq!(registry.snapshot()["test"].last_change, first);
        reporter.set_facts([("restored".to_owned(), Fact::Count(1))].into());
        assert!(changes.has_changed().unwrap());
        assert_eq!(registry.snapshot()["test"].last_change, first, "facts are not a change of state");
    }
}
