//! nodeplane-health: answers load balancers' health checks for this node's
//! `externalTrafficPolicy: Local` Services, as kube-proxy's health check
//! server does. On each Service's `healthCheckNodePort` any HTTP request gets
//! `200` while the node has ready endpoints of the Service and nodeplaned is
//! answering, `503` otherwise, with kube-proxy's JSON body and
//! `X-Load-Balancing-Endpoint-Weight` header. A process of its own so that
//! nodeplaned holds no IP socket: it asks nodeplaned which ports to serve
//! (D-Bus `HealthChecks()`) every second, and keeps serving what it was told
//! last while nodeplaned restarts.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use nodeplane_bus::{DatapathProxy, HealthCheck};

/// How often nodeplaned is asked.
const POLL: Duration = Duration::from_secs(1);
/// nodeplaned silent for longer than this: the answers say unhealthy.
const STALE: Duration = Duration::from_secs(10);

/// Why nodeplane-health could not run, or ask nodeplaned.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the system bus: {0}")]
    Bus(#[from] zbus::Error),
}

pub fn main() -> ExitCode {
    crate::daemon::logging::init("nodeplane-health", None);
    let run = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HealthError::Runtime)
        .and_then(|runtime| runtime.block_on(run()));
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// What a health check port answers: the Service's check, and whether
/// nodeplaned answered lately.
#[derive(Clone, Debug, PartialEq)]
struct Answer {
    check: HealthCheck,
    healthy: bool,
}

/// A port being served, and how its answer is changed.
struct Served {
    answer: watch::Sender<Answer>,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        // The listener goes with its task.
        self.task.abort();
    }
}

async fn run() -> Result<(), HealthError> {
    let mut datapath: Option<DatapathProxy<'static>> = None;
    let mut served: HashMap<u16, Served> = HashMap::new();
    let mut last_answer: Option<Instant> = None;
    let mut failing = false;
    loop {
        match ask(&mut datapath).await {
            Ok(checks) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("nodeplaned answers again");
                }
                last_answer = Some(Instant::now());
                serve(&mut served, checks).await;
            }
            Err(err) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!("asking nodeplaned for the health check ports: {err}; serving the last ones");
                }
                // A new connection next time: the bus may have restarted too.
                datapath = None;
                let healthy = last_answer.is_some_and(|at| at.elapsed() < STALE);
                for port in served.values() {
                    port.answer.send_if_modified(|answer| std::mem::replace(&mut answer.healthy, healthy) != healthy);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// nodeplaned's health checks, connecting to the system bus first when not
/// connected (early in boot the bus may not take connections yet).
async fn ask(datapath: &mut Option<DatapathProxy<'static>>) -> Result<Vec<HealthCheck>, HealthError> {
    let proxy = match datapath {
        Some(proxy) => proxy,
        None => {
            let connection = zbus::Connection::system().await?;
            datapath.insert(DatapathProxy::new(&connection).await?)
        }
    };
    Ok(proxy.health_checks().await?)
}

/// Serves exactly `checks`: new ports opened, gone ones closed, the others' answers updated.
async fn serve(served: &mut HashMap<u16, Served>, checks: Vec<HealthCheck>) {
    let mut wanted: HashMap<u16, HealthCheck> = HashMap::new();
    for check in checks {
        if let Some(first) = wanted.get(&check.port) {
            tracing::warn!(
                "{}/{} and {}/{} share health check port {}: serving the first",
                first.namespace,
                first.name,
                check.namespace,
                check.name,
                check.port
            );
            continue;
        }
        wanted.insert(check.port, check);
    }
    served.retain(|port, _| {
        let keep = wanted.contains_key(port);
        if !keep {
            tracing::info!("health check port {port} closed");
        }
        keep
    });
    for (port, check) in wanted {
        let answer = Answer { check, healthy: true };
        if let Some(open) = served.get(&port) {
            open.answer.send_if_modified(|current| {
                let changed = *current != answer;
                *current = answer;
                changed
            });
            continue;
        }
        match TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await {
            Ok(listener) => {
                tracing::info!("health check port {port} open for {}/{}", answer.check.namespace, answer.check.name);
                let (sender, receiver) = watch::channel(answer);
                served.insert(port, Served { answer: sender, task: tokio::spawn(accept(listener, receiver)) });
            }
            // Tried again at the next poll.
            Err(err) => tracing::warn!("health check port {port}: {err}"),
        }
    }
}

async fn accept(listener: TcpListener, answer: watch::Receiver<Answer>) {
    crate::http::serve(listener, move |_request: &Request<hyper::body::Incoming>| respond(&answer.borrow())).await;
}

/// kube-proxy's answer: 200 with endpoints here and a healthy proxy, else 503.
fn respond(answer: &Answer) -> Response<Full<Bytes>> {
    let check = &answer.check;
    let body = serde_json::json!({
        "service": {"namespace": check.namespace, "name": check.name},
        "localEndpoints": check.local_endpoints,
        "serviceProxyHealthy": answer.healthy,
    });
    let status =
        if check.local_endpoints > 0 && answer.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Load-Balancing-Endpoint-Weight", check.local_endpoints.to_string())
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(local_endpoints: u32, healthy: bool) -> Answer {
        let check = HealthCheck { namespace: "x".into(), name: "web".into(), port: 30900, local_endpoints };
        Answer { check, healthy }
    }

    #[test]
    fn endpoints_here_and_a_healthy_proxy_answer_200_else_503() {
        assert_eq!(respond(&answer(2, true)).status(), StatusCode::OK);
        assert_eq!(respond(&answer(0, true)).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&answer(2, false)).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&answer(2, true)).headers()["X-Load-Balancing-Endpoint-Weight"], "2");
    }
}
