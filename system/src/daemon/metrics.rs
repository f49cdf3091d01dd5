//! The node's Prometheus endpoint: `GET /metrics` in the Prometheus text
//! format (0.0.4), or OpenMetrics when the scraper's `Accept` asks for it, as
//! Prometheus' does. systemd listens (`nodeplaned-metrics.socket`, placed by
//! node.toml's `[metrics]`) and passes the socket in: nodeplaned opens no IP
//! socket, and a scrape during a restart waits in the queue.
//!
//! The numbers are the ones `nodeplanectl status` shows, read from the
//! components' published status at each scrape (the datapath's per-CPU
//! counters as the datapath component last summed them, at most one
//! `sync_interval` old), plus histograms of durations the components observe.
//! [`families`] maps each fact to a metric; the README lists them all.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Unit;

use super::component::{Fact, Registry, Snapshot, State};

/// The durations components observe.
#[derive(Clone, Copy, Debug)]
pub enum Timing {
    /// Programming Services into the maps (a sync that had changes to apply).
    DatapathSync,
    /// From the oldest API watch event not yet applied to the maps holding it.
    ApiEventToMap,
    /// An IPAM sweep.
    Sweep,
}

/// The histograms behind [`Timing`].
#[derive(Debug)]
pub struct Timings {
    sync: Histogram,
    event_to_map: Histogram,
    sweep: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 100 µs to 6.6 s for a sync; 1 ms to 66 s for what waits on the API server or containerd.
        Timings {
            sync: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            event_to_map: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            sweep: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        }
    }
}

impl Timings {
    pub fn observe(&self, timing: Timing, took: Duration) {
        let histogram = match timing {
            Timing::DatapathSync => &self.sync,
            Timing::ApiEventToMap => &self.event_to_map,
            Timing::Sweep => &self.sweep,
        };
        histogram.observe(took.as_secs_f64());
    }
}

/// What a scrape reads.
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
}

impl Metrics {
    pub fn new(components: &Registry) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("nodeplane_build", "nodeplane's version (the value is 1)", build);
        let timings = components.timings();
        for (name, help, histogram) in [
            (
                "nodeplane_datapath_sync_duration",
                "Time to program a sync's Service changes into the datapath's maps",
                &timings.sync,
            ),
            (
                "nodeplane_datapath_api_event_to_map_duration",
                "Time from the oldest API watch event a sync applies to the maps holding it",
                &timings.event_to_map,
            ),
            ("nodeplane_ipam_sweep_duration", "Time an IPAM sweep took", &timings.sweep),
        ] {
            registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
        }
        registry.register_collector(Box::new(StatusCollector(components.clone())));
        Metrics { registry }
    }

    /// The exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut text = String::new();
        match format {
            Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry),
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &self.registry),
        }
        .expect("writing to a String");
        text
    }

    /// `GET /metrics` (or `HEAD`); 404 elsewhere, 405 for other methods.
    pub fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        respond(request.method(), request.uri().path(), request.headers().get(ACCEPT), |format| self.render(format))
    }
}

fn respond(
    method: &Method,
    path: &str,
    accept: Option<&hyper::header::HeaderValue>,
    render: impl FnOnce(Format) -> String,
) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, text: &str| {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(ALLOW, "GET, HEAD")
            .body(Full::new(Bytes::from(text.to_owned())))
            .expect("a valid response")
    };
    if path != "/metrics" {
        return answer(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n");
    }
    if method != Method::GET && method != Method::HEAD {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    let format = Format::negotiate(accept.and_then(|a| a.to_str().ok()).unwrap_or(""));
    let body = if method == Method::HEAD { String::new() } else { render(format) };
    Response::builder()
        .header(CONTENT_TYPE, format.content_type())
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// The two text expositions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus' text format 0.0.4: what a client gets unless it asks for OpenMetrics.
    Text,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` rates it above 0 and at least as high as
    /// the text format (`text/plain` or a wildcard); the text format else.
    pub fn negotiate(accept: &str) -> Format {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let quality = parts.filter_map(|p| p.strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text { Format::OpenMetrics } else { Format::Text }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`), ready to serve.
pub fn passed_listeners() -> Vec<tokio::net::TcpListener> {
    let fds = match sd_notify::listen_fds_with_names() {
        Ok(fds) => fds,
        Err(err) => {
            tracing::warn!("the sockets systemd passed: {err}; no metrics endpoint");
            return Vec::new();
        }
    };
    let mut listeners = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd passed this descriptor to this process (LISTEN_PID), for it alone.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let listener = std::net::TcpListener::from(owned);
        let served = listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(listener));
        match served {
            Ok(listener) => {
                let at = listener.local_addr().map_or_else(|e| format!("? ({e})"), |a| a.to_string());
                tracing::info!("serving metrics on http://{at}/metrics (socket {name:?} from systemd)");
                listeners.push(listener);
            }
            Err(err) => tracing::warn!("socket {name:?} (fd {fd}) from systemd cannot be served: {err}"),
        }
    }
    listeners
}

/// Reads the components' status at each scrape.
struct StatusCollector(Registry);

impl std::fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusCollector")
    }
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in families(&self.0.snapshot()) {
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                match family.kind {
                    MetricType::Counter => ConstCounter::new(*value).encode(sample)?,
                    _ => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// A metric read from the status, with its samples.
#[derive(Debug)]
struct Family {
    /// Without `_total`: the encoder adds it to a counter's samples.
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

/// A component's count fact as a metric of its own.
struct CountFact {
    component: &'static str,
    fact: &'static str,
    name: &'static str,
    kind: MetricType,
    help: &'static str,
}

const fn gauge(component: &'static str, fact: &'static str, name: &'static str, help: &'static str) -> CountFact {
    CountFact { component, fact, name, kind: MetricType::Gauge, help }
}

const fn counter(component: &'static str, fact: &'static str, name: &'static str, help: &'static str) -> CountFact {
    CountFact { component, fact, name, kind: MetricType::Counter, help }
}

const COUNT_FACTS: &[CountFact] = &[
    gauge("datapath", "services", "nodeplane_datapath_service_ports", "Service ports in the datapath's maps"),
    gauge("datapath", "endpoints", "nodeplane_datapath_endpoints", "Service backends in the datapath's maps"),
    gauge(
        "datapath",
        "conntrack_entries",
        "nodeplane_datapath_conntrack_entries",
        "Conntrack entries (two a flow) at the last GC pass",
    ),
    gauge(
        "datapath",
        "conntrack_capacity",
        "nodeplane_datapath_conntrack_capacity",
        "Conntrack entries the map holds at most",
    ),
    counter(
        "datapath",
        "conntrack_expired_total",
        "nodeplane_datapath_conntrack_expired",
        "Conntrack entries removed by GC",
    ),
    gauge(
        "datapath",
        "conntrack_flows_per_pod",
        "nodeplane_datapath_conntrack_pod_flow_limit",
        "Flows a pod may hold in conntrack",
    ),
    gauge(
        "datapath",
        "maps_memory_bytes",
        "nodeplane_datapath_maps_memory_bytes",
        "Kernel memory of the datapath's maps (computed)",
    ),
    gauge(
        "datapath",
        "attached_interfaces",
        "nodeplane_datapath_attached_interfaces",
        "Interfaces the datapath is attached to",
    ),
    gauge("datapath", "registered_pods", "nodeplane_datapath_pods", "Pods of this node registered by the CNI plugin"),
    gauge(
        "datapath",
        "manifest_errors",
        "nodeplane_datapath_source_errors",
        "Objects of the source (API server or manifests) that could not be read",
    ),
    gauge("datapath", "policies", "nodeplane_datapath_network_policies", "NetworkPolicy objects known"),
    gauge(
        "datapath",
        "policy_rules",
        "nodeplane_datapath_policy_rules",
        "Rules compiled from the NetworkPolicies for this node's pods",
    ),
    gauge(
        "datapath",
        "policy_isolated_pods",
        "nodeplane_datapath_policy_isolated_pods",
        "Pods of this node a NetworkPolicy isolates",
    ),
    gauge("datapath", "remote_nodes", "nodeplane_datapath_remote_nodes", "Other nodes with an address and a pod CIDR"),
    gauge(
        "datapath",
        "node_routes",
        "nodeplane_datapath_node_routes",
        "Routes to other nodes' pod CIDRs nodeplaned manages",
    ),
    counter(
        "datapath",
        "api_watch_restarts",
        "nodeplane_datapath_api_relists",
        "Times a watch of the API server listed its kind again",
    ),
    counter("ipam", "sweeps", "nodeplane_ipam_sweeps", "IPAM sweeps done"),
    counter("ipam", "freed_total", "nodeplane_ipam_freed_reservations", "Leaked IP reservations freed"),
    counter("sysctl", "restored", "nodeplane_sysctl_restores", "Guarded sysctls set back after something changed them"),
];

/// The last sweep's counts, as `result` of `nodeplane_ipam_last_sweep_reservations`.
const SWEEP_RESULTS: &[&str] = &["scanned", "live", "young_orphans_kept", "freed", "skipped", "errors"];

/// Each datapath counter ([`nodeplane_datapath_abi::COUNTERS`]): its metric and labels.
/// Label names and values.
type Labels = &'static [(&'static str, &'static str)];

const DATAPATH_COUNTERS: &[(&str, &str, Labels)] = &[
    ("new_flow", "nodeplane_datapath_flows", &[("kind", "service")]),
    ("hairpin_flow", "nodeplane_datapath_flows", &[("kind", "hairpin")]),
    ("flow_tracked", "nodeplane_datapath_flows", &[("kind", "tracked")]),
    ("node_port_snat", "nodeplane_datapath_flows", &[("kind", "node_port_snat")]),
    ("translated", "nodeplane_datapath_translations", &[("kind", "packet")]),
    ("icmp_translated", "nodeplane_datapath_translations", &[("kind", "icmp_error")]),
    ("redirected", "nodeplane_datapath_redirected_packets", &[]),
    ("sock_balanced", "nodeplane_datapath_socket_balanced", &[]),
    ("ct_clash", "nodeplane_datapath_conntrack_clashes", &[]),
    ("no_backend", "nodeplane_datapath_no_backend", &[]),
    ("fragmented", "nodeplane_datapath_fragments", &[]),
    ("ct_pod_limit", "nodeplane_datapath_pod_flow_limit_hits", &[]),
    ("ct_full", "nodeplane_datapath_drops", &[("reason", "conntrack_full")]),
    ("rewrite_failed", "nodeplane_datapath_drops", &[("reason", "rewrite_failed")]),
    ("spoofed", "nodeplane_datapath_drops", &[("reason", "spoofed")]),
    ("ct_clash_unresolved", "nodeplane_datapath_drops", &[("reason", "no_free_port")]),
    ("policy_denied_egress_peer", POLICY_DROPS, &[("direction", "egress"), ("reason", "peer")]),
    ("policy_denied_egress_port", POLICY_DROPS, &[("direction", "egress"), ("reason", "port")]),
    ("policy_denied_ingress_peer", POLICY_DROPS, &[("direction", "ingress"), ("reason", "peer")]),
    ("policy_denied_ingress_port", POLICY_DROPS, &[("direction", "ingress"), ("reason", "port")]),
    ("policy_egress_ipv6", POLICY_DROPS, &[("direction", "egress"), ("reason", "ipv6")]),
    ("policy_ingress_ipv6", POLICY_DROPS, &[("direction", "ingress"), ("reason", "ipv6")]),
    ("policy_egress_malformed", POLICY_DROPS, &[("direction", "egress"), ("reason", "malformed")]),
    ("policy_ingress_malformed", POLICY_DROPS, &[("direction", "ingress"), ("reason", "malformed")]),
    ("policy_egress_protocol", POLICY_DROPS, &[("direction", "egress"), ("reason", "protocol")]),
    ("policy_ingress_protocol", POLICY_DROPS, &[("direction", "ingress"), ("reason", "protocol")]),
    ("policy_egress_fragment", POLICY_DROPS, &[("direction", "egress"), ("reason", "fragment")]),
    ("policy_ingress_fragment", POLICY_DROPS, &[("direction", "ingress"), ("reason", "fragment")]),
    ("policy_egress_stray_icmp", POLICY_DROPS, &[("direction", "egress"), ("reason", "stray_icmp")]),
    ("policy_ingress_stray_icmp", POLICY_DROPS, &[("direction", "ingress"), ("reason", "stray_icmp")]),
    ("policy_event_lost", "nodeplane_datapath_policy_events_lost", &[]),
];

const POLICY_DROPS: &str = "nodeplane_datapath_policy_drops";

/// What each datapath counter family counts.
fn counter_help(name: &str) -> &'static str {
    match name {
        "nodeplane_datapath_flows" => {
            "Flows opened: Service flows (of them hairpin ones), untranslated flows tracked, NodePort flows sent on with the node's address"
        }
        "nodeplane_datapath_translations" => {
            "Packets of translated flows rewritten, and ICMP errors about them translated back"
        }
        "nodeplane_datapath_redirected_packets" => "Translated packets delivered past the host stack",
        "nodeplane_datapath_socket_balanced" => "Host sockets' connects and sends to a Service sent to a backend",
        "nodeplane_datapath_conntrack_clashes" => {
            "New flows whose translated tuple a live flow or a backend's socket held: given another source port"
        }
        "nodeplane_datapath_no_backend" => "Packets to a Service without backends, passed on untranslated",
        "nodeplane_datapath_fragments" => "First fragments of datagrams let through (their later fragments follow)",
        "nodeplane_datapath_pod_flow_limit_hits" => "New flows of a pod at its conntrack share, not recorded",
        "nodeplane_datapath_drops" => "Packets dropped by the datapath, by reason (policy drops apart)",
        POLICY_DROPS => "Packets a NetworkPolicy dropped, by direction and reason",
        _ => "NetworkPolicy drops the event ring had no room to report",
    }
}

/// Every metric read from `snapshot`, in a fixed order.
fn families(snapshot: &Snapshot) -> Vec<Family> {
    let mut families = Vec::new();
    let states = [State::Healthy, State::Starting, State::Degraded, State::Failed];
    let samples = snapshot
        .iter()
        .flat_map(|(name, status)| {
            states.iter().map(move |state| {
                let labels = vec![("component", (*name).to_owned()), ("state", state.as_str().to_owned())];
                (labels, u64::from(status.state == *state))
            })
        })
        .collect();
    families.push(Family {
        name: "nodeplane_component_state",
        help: "Each component's state: 1 for the one it is in",
        kind: MetricType::Gauge,
        samples,
    });
    let count = |component: &str, fact: &str| match snapshot.get(component)?.facts.get(fact)? {
        Fact::Count(value) => Some(*value),
        Fact::Text(_) => None,
    };
    for fact in COUNT_FACTS {
        let samples = count(fact.component, fact.fact).map(|v| (Vec::new(), v)).into_iter().collect();
        families.push(Family { name: fact.name, help: fact.help, kind: fact.kind, samples });
    }
    let results = SWEEP_RESULTS.iter().filter_map(|r| Some((vec![("result", (*r).to_owned())], count("ipam", r)?)));
    families.push(Family {
        name: "nodeplane_ipam_last_sweep_reservations",
        help: "IP reservations of the last sweep, by what became of them",
        kind: MetricType::Gauge,
        samples: results.collect(),
    });
    let maps: Vec<(String, u64, Option<u64>)> = snapshot
        .get("datapath")
        .map(|status| {
            let text = status.facts.iter().filter_map(|(k, v)| match v {
                Fact::Text(text) => Some((k.strip_prefix("map_")?, text)),
                Fact::Count(_) => None,
            });
            text.filter_map(|(map, text)| {
                // `entries/capacity,memory`; entries `-` when they could not be counted.
                let (entries, rest) = text.split_once('/')?;
                let capacity = rest.split(',').next()?.parse().ok()?;
                Some((map.to_owned(), capacity, entries.parse().ok()))
            })
            .collect()
        })
        .unwrap_or_default();
    families.push(Family {
        name: "nodeplane_datapath_map_capacity",
        help: "Entries each of the datapath's maps holds at most",
        kind: MetricType::Gauge,
        samples: maps.iter().map(|(map, capacity, _)| (vec![("map", map.clone())], *capacity)).collect(),
    });
    families.push(Family {
        name: "nodeplane_datapath_map_entries",
        help: "Entries in each of the datapath's maps, counted after the last GC pass",
        kind: MetricType::Gauge,
        samples: maps.iter().filter_map(|(map, _, entries)| Some((vec![("map", map.clone())], (*entries)?))).collect(),
    });
    let mut counters: Vec<Family> = Vec::new();
    for (counter, name, labels) in DATAPATH_COUNTERS {
        let Some(value) = count("datapath", &format!("count_{counter}")) else { continue };
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        match counters.iter_mut().find(|f| f.name == *name) {
            Some(family) => family.samples.push((labels, value)),
            None => counters.push(Family {
                name,
                help: counter_help(name),
                kind: MetricType::Counter,
                samples: vec![(labels, value)],
            }),
        }
    }
    families.extend(counters);
    // A family with nothing to say (its component not running) is left out.
    families.retain(|f| !f.samples.is_empty());
    families
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::SystemTime;

    use nodeplane_datapath_abi as abi;

    use super::super::component::{Facts, Status};
    use super::*;

    /// Every fact the metrics read, as the components publish them.
    fn snapshot() -> Snapshot {
        let mut facts: BTreeMap<&'static str, Facts> = BTreeMap::new();
        for fact in COUNT_FACTS {
            facts.entry(fact.component).or_default().insert(fact.fact.into(), Fact::Count(3));
        }
        for result in SWEEP_RESULTS {
            facts.entry("ipam").or_default().insert((*result).into(), Fact::Count(2));
        }
        let datapath = facts.entry("datapath").or_default();
        for (i, counter) in abi::COUNTERS.iter().enumerate() {
            datapath.insert(format!("count_{counter}"), Fact::Count(i as u64));
        }
        datapath.insert("map_np_conntrack".into(), Fact::Text("12/32768,3.8MiB".into()));
        datapath.insert("map_np_affinity".into(), Fact::Text("-/4096,0.4MiB".into()));
        facts
            .into_iter()
            .map(|(name, facts)| {
                let state = if name == "ipam" { State::Degraded } else { State::Healthy };
                (name, Status { state, detail: String::new(), last_change: SystemTime::now(), facts })
            })
            .collect()
    }

    #[test]
    fn every_datapath_counter_is_a_metric_once() {
        let mapped: Vec<&str> = DATAPATH_COUNTERS.iter().map(|(counter, _, _)| *counter).collect();
        let unique: BTreeSet<&str> = mapped.iter().copied().collect();
        assert_eq!(unique.len(), mapped.len(), "a counter mapped twice");
        assert_eq!(unique, abi::COUNTERS.iter().copied().collect(), "abi::COUNTERS and the metrics differ");
        // Each family has one label set, so a query can sum or split it.
        for (_, family, labels) in DATAPATH_COUNTERS {
            let keys = |l: &[(&'static str, &'static str)]| l.iter().map(|(k, _)| *k).collect::<Vec<_>>();
            let first = DATAPATH_COUNTERS.iter().find(|(_, f, _)| f == family).unwrap();
            assert_eq!(keys(labels), keys(first.2), "{family}");
        }
    }

    #[test]
    fn facts_become_metrics_with_their_values_and_labels() {
        let families = families(&snapshot());
        let find = |name: &str| families.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no {name}"));
        let sample = |name: &str, labels: &[(&str, &str)]| {
            let labels: Vec<(&str, String)> = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            find(name).samples.iter().find(|(l, _)| *l == labels).map(|(_, v)| *v)
        };
        assert_eq!(sample("nodeplane_datapath_service_ports", &[]), Some(3));
        assert_eq!(sample("nodeplane_sysctl_restores", &[]), Some(3));
        let index = |name: &str| abi::COUNTERS.iter().position(|c| *c == name).unwrap() as u64;
        let drops = [("direction", "ingress"), ("reason", "port")];
        assert_eq!(sample(POLICY_DROPS, &drops), Some(index("policy_denied_ingress_port")));
        assert_eq!(sample("nodeplane_datapath_drops", &[("reason", "spoofed")]), Some(index("spoofed")));
        assert_eq!(sample("nodeplane_datapath_map_capacity", &[("map", "np_conntrack")]), Some(32768));
        assert_eq!(sample("nodeplane_datapath_map_entries", &[("map", "np_conntrack")]), Some(12));
        // Uncounted entries are no sample, not a zero.
        assert_eq!(sample("nodeplane_datapath_map_capacity", &[("map", "np_affinity")]), Some(4096));
        assert_eq!(sample("nodeplane_datapath_map_entries", &[("map", "np_affinity")]), None);
        let state =
            |component, state| sample("nodeplane_component_state", &[("component", component), ("state", state)]);
        assert_eq!((state("ipam", "degraded"), state("ipam", "healthy")), (Some(1), Some(0)));
        assert_eq!(sample("nodeplane_ipam_last_sweep_reservations", &[("result", "freed")]), Some(2));
        // Nothing published, nothing said: only the states.
        let empty: Snapshot = [("datapath", Status { facts: Facts::new(), ..snapshot()["datapath"].clone() })].into();
        let names: Vec<&str> = super::families(&empty).iter().map(|f| f.name).collect();
        assert_eq!(names, ["nodeplane_component_state"]);
    }

    #[test]
    fn the_scraper_gets_openmetrics_when_it_asks_and_the_text_format_otherwise() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                          application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
                          text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        for (accept, format) in [
            (prometheus, Format::OpenMetrics),
            ("application/openmetrics-text", Format::OpenMetrics),
            ("", Format::Text),
            ("*/*", Format::Text),
            ("text/plain", Format::Text),
            ("text/plain;q=0.9, application/openmetrics-text;q=0.5", Format::Text),
            ("application/openmetrics-text;q=0", Format::Text),
            ("application/json", Format::Text),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }

    #[test]
    fn only_get_and_head_of_metrics_are_answered() {
        let render = |_| "body".to_owned();
        let response = respond(&Method::GET, "/metrics", None, render);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], Format::Text.content_type());
        assert_eq!(respond(&Method::GET, "/", None, render).status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&Method::POST, "/metrics", None, render).status(), StatusCode::METHOD_NOT_ALLOWED);
        let accept = hyper::header::HeaderValue::from_static("application/openmetrics-text");
        let response = respond(&Method::HEAD, "/metrics", Some(&accept), |_| panic!("HEAD renders nothing"));
        assert_eq!(response.headers()[CONTENT_TYPE], Format::OpenMetrics.content_type());
    }

    /// Each metric a scrape can show is in the README's table.
    #[test]
    fn the_readme_lists_every_metric() {
        let registry = Registry::default();
        registry.timings().observe(Timing::Sweep, Duration::from_millis(5));
        let reporters: Vec<_> =
            snapshot().into_iter().map(|(name, status)| (registry.reporter(name), status)).collect();
        for (reporter, status) in &reporters {
            reporter.set(status.state, "");
            reporter.set_facts(status.facts.clone());
        }
        let text = Metrics::new(&registry).render(Format::Text);
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(names.len() > 30, "{text}");
        for name in names {
            assert!(readme.contains(&format!("`{name}`")), "README.md does not list `{name}`");
        }
    }
}
