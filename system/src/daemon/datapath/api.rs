//! The cluster's API server as the datapath's source, on a node with a
//! `[kubernetes]` section: watches (kube-runtime) of every Service,
//! EndpointSlice, Namespace, Pod, NetworkPolicy and Node, each object kept
//! read into what the datapath uses of it. A relist (the first list, a
//! `410 Gone`, a watch lost for good) replaces a store whole when it ends, so
//! an object that did not come back is gone; bookmarks are on and errors back
//! off (at most 5 s: a node follows its cluster again within seconds of an
//! outage's end). Nothing is given to the datapath until every kind has been listed
//! once: until then it keeps what its pinned maps hold (fail static), and
//! while the API server is unreachable it keeps the last state it was given.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use nodeplane_model::manifests::{ManifestError, Manifests, Object, Origin, ServicePort};
use nodeplane_model::services::{ServiceIndex, ServiceRead, SliceRead, read_service, read_slice, service_key};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::routes::{RemoteNode, read_node};
use crate::config::KubernetesConfig;

/// The kinds followed, in the order of their stores.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Service,
    EndpointSlice,
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
}

const KINDS: [Kind; 6] =
    [Kind::Service, Kind::EndpointSlice, Kind::Namespace, Kind::Pod, Kind::NetworkPolicy, Kind::Node];

impl Kind {
    /// The kind in plural, for messages.
    fn plural(self) -> &'static str {
        match self {
            Kind::Service => "Services",
            Kind::EndpointSlice => "EndpointSlices",
            Kind::Namespace => "Namespaces",
            Kind::Pod => "Pods",
            Kind::NetworkPolicy => "NetworkPolicies",
            Kind::Node => "Nodes",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
        }
    }

    /// The status fact counting its objects.
    fn fact(self) -> &'static str {
        match self {
            Kind::Service => "api_services",
            Kind::EndpointSlice => "api_endpointslices",
            Kind::Namespace => "api_namespaces",
            Kind::Pod => "api_pods",
            Kind::NetworkPolicy => "api_networkpolicies",
            Kind::Node => "api_nodes",
        }
    }
}

/// One kind's watch: how it fares, and a list under way.
#[derive(Default)]
struct Store {
    /// Namespaces, Pods and NetworkPolicies (Services and EndpointSlices are
    /// in [`Shared::index`]), by `namespace/name`.
    live: HashMap<String, (Origin, Object)>,
    /// A list under way: it replaces what is kept when it ends.
    listing: Option<Vec<(String, Kept)>>,
    /// Lists completed (the first, then relists).
    lists: u64,
    /// The newest resourceVersion an event carried: how far the watch has come.
    revision: u64,
    last_event: Option<SystemTime>,
    /// Since when, and why, the watch fails.
    failing: Option<(SystemTime, String)>,
}

/// An object as it is kept: Services and EndpointSlices read into the index's
/// forms, Pods read into what policies see of them, the rest trimmed.
enum Kept {
    Service(ServiceRead),
    Slice(SliceRead),
    /// Another node, once it has an address and a pod CIDR; this node: none.
    Node(Option<RemoteNode>),
    Other(Origin, Object),
}

/// An object's metadata.
fn metadata(object: &Object) -> Option<&ObjectMeta> {
    match object {
        Object::Service(o) => Some(&o.metadata),
        Object::EndpointSlice(o) => Some(&o.metadata),
        Object::Namespace(o) => Some(&o.metadata),
        Object::Pod(o) => Some(&o.metadata),
        Object::PodRead(_) => None,
        Object::NetworkPolicy(o) => Some(&o.metadata),
        Object::Node(o) => Some(&o.metadata),
    }
}

/// An event's object: its key (`namespace/name` as [`service_key`] makes
/// it, or the name of a Namespace) and origin.
fn key(kind: Kind, object: &Object) -> (String, Origin) {
    let meta = metadata(object);
    let namespace = meta.and_then(|m| m.namespace.as_deref());
    let name = meta.and_then(|m| m.name.as_deref()).unwrap_or_default();
    let key = match namespace {
        Some(_) => service_key(namespace, name),
        None => name.to_owned(),
    };
    (key, Origin::api(kind.name(), namespace, name))
}

/// What the watch tasks share with the datapath component.
#[derive(Default)]
struct Shared {
    stores: [Store; KINDS.len()],
    index: ServiceIndex,
    /// Namespaces, Pods or NetworkPolicies changed since the last read.
    policy_changed: bool,
    /// Every Node by name, read for routing.
    nodes: HashMap<String, Option<RemoteNode>>,
    nodes_changed: bool,
    /// This node's name: EndpointSlices are read for it.
    node: String,
    /// When the oldest change not yet given to the datapath came in.
    pending_since: Option<Instant>,
    /// No client could be made (a kubeconfig not there yet, say).
    client_error: Option<(SystemTime, String)>,
}

impl Shared {
    /// Whether every kind has been listed once: the stores are the cluster's.
    fn listed(&self) -> bool {
        self.stores.iter().all(|s| s.lists > 0)
    }

    /// Applies a watch event; whether it is news for the datapath. A relist
    /// (after a `410 Gone`, say) replaces the kind's objects when it ends:
    /// what did not come back is gone, and nothing is half-listed meanwhile.
    fn apply(&mut self, kind: Kind, event: Event<Object>) -> bool {
        let store = &mut self.stores[kind as usize];
        if let Event::Apply(object) | Event::Delete(object) | Event::InitApply(object) = &event {
            let version = metadata(object).and_then(|m| m.resource_version.as_deref()?.parse().ok());
            store.revision = store.revision.max(version.unwrap_or(0));
        }
        match event {
            Event::Init => {
                store.listing = Some(Vec::new());
                false
            }
            Event::InitApply(object) => {
                let kept = self.kept(kind, object);
                self.stores[kind as usize].listing.get_or_insert_default().push(kept);
                false
            }
            Event::InitDone => {
                let listed = store.listing.take().unwrap_or_default();
                store.lists += 1;
                self.replace(kind, listed);
                // News even when nothing changed: the first list may complete the set.
                true
            }
            Event::Apply(object) => {
                let (key, kept) = self.kept(kind, object);
                self.put(kind, key, kept)
            }
            Event::Delete(object) => self.remove(kind, &key(kind, &object).0),
        }
    }

    /// An event's object as it is kept, with its key.
    fn kept(&self, kind: Kind, object: Object) -> (String, Kept) {
        let (key, origin) = key(kind, &object);
        let kept = match object {
            Object::Service(service) => Kept::Service(read_service(&service, &origin)),
            Object::EndpointSlice(slice) => Kept::Slice(read_slice(&slice, &origin, Some(&self.node))),
            Object::Pod(pod) => Kept::Other(origin.clone(), Object::read_pod(&pod, &origin)),
            Object::Node(node) if node.metadata.name.as_deref() == Some(&self.node) => Kept::Node(None),
            Object::Node(node) => Kept::Node(read_node(&node)),
            other => Kept::Other(origin, other),
        };
        (key, kept)
    }

    /// Keeps an object; whether that changed anything.
    fn put(&mut self, kind: Kind, key: String, kept: Kept) -> bool {
        match kept {
            Kept::Service(read) => self.index.insert_service(key, read),
            Kept::Slice(read) => self.index.insert_slice(key, read),
            Kept::Node(read) => {
                let changed = self.nodes.get(&key) != Some(&read);
                self.nodes.insert(key, read);
                self.nodes_changed |= changed;
                changed
            }
            Kept::Other(origin, object) => {
                let live = &mut self.stores[kind as usize].live;
                if live.get(&key).is_some_and(|(_, kept)| *kept == object) {
                    return false;
                }
                live.insert(key, (origin, object));
                self.policy_changed = true;
                true
            }
        }
    }

    /// Forgets an object; whether there was one.
    fn remove(&mut self, kind: Kind, key: &str) -> bool {
        let removed = match kind {
            Kind::Service => return self.index.remove_service(key),
            Kind::EndpointSlice => return self.index.remove_slice(key),
            Kind::Node => {
                let removed = self.nodes.remove(key).is_some();
                self.nodes_changed |= removed;
                return removed;
            }
            _ => self.stores[kind as usize].live.remove(key).is_some(),
        };
        self.policy_changed |= removed;
        removed
    }

    /// Replaces a kind's objects with a list's.
    fn replace(&mut self, kind: Kind, listed: Vec<(String, Kept)>) {
        let keys: std::collections::HashSet<&String> = listed.iter().map(|(key, _)| key).collect();
        let kept: Vec<&String> = match kind {
            Kind::Service => self.index.service_keys().collect(),
            Kind::EndpointSlice => self.index.slice_keys().collect(),
            Kind::Node => self.nodes.keys().collect(),
            _ => self.stores[kind as usize].live.keys().collect(),
        };
        let gone: Vec<String> = kept.into_iter().filter(|key| !keys.contains(key)).cloned().collect();
        for key in gone {
            self.remove(kind, &key);
        }
        for (key, kept) in listed {
            self.put(kind, key, kept);
        }
    }

    /// The objects of a kind.
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.index.len().0,
            Kind::EndpointSlice => self.index.len().1,
            Kind::Node => self.nodes.len(),
            _ => self.stores[kind as usize].live.len(),
        }
    }
}

/// What the API source has for the datapath.
pub(super) struct ApiRead {
    /// `services` holds every Service: any other in the maps is to go.
    pub everything: bool,
    /// The Services that changed (or every one), each with its ports now.
    pub services: Vec<(String, Vec<ServicePort>)>,
    /// The Namespaces, Pods and NetworkPolicies, when any changed.
    pub policy: Option<Manifests>,
    /// Every object that could not be read, in order.
    pub errors: Vec<ManifestError>,
    /// A NetworkPolicy could not be read: the policies in force stay.
    pub policies_incomplete: bool,
    /// The other nodes with an address and a pod CIDR, when any Node changed.
    pub nodes: Option<Vec<RemoteNode>>,
}

/// The watches, running on a task of their own while this lives.
pub(super) struct ApiSource {
    shared: Arc<Mutex<Shared>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
    /// The change generation last given to the datapath.
    given: Option<u64>,
    /// The event-to-datapath delay of the last change applied.
    last_delay: Option<Duration>,
    started: Instant,
    /// The problems of the Namespaces, Pods and NetworkPolicies at their last read.
    policy_errors: Vec<ManifestError>,
    policies_incomplete: bool,
}

impl Drop for ApiSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often a client is tried again while none can be made.
const CLIENT_RETRY: Duration = Duration::from_secs(2);
/// How long a source that has never listed the cluster is not a problem.
const JOIN_GRACE: Duration = Duration::from_secs(60);

impl ApiSource {
    /// Starts following the cluster `config` names (never in the way: the
    /// API server may not answer for a long time).
    pub fn start(config: &KubernetesConfig) -> Self {
        let shared = Arc::new(Mutex::new(Shared { node: config.node_name.clone(), ..Shared::default() }));
        let (notify, changes) = watch::channel(0u64);
        let task = tokio::spawn(follow_all(config.clone(), shared.clone(), notify));
        ApiSource {
            shared,
            changes,
            task,
            given: None,
            last_delay: None,
            started: Instant::now(),
            policy_errors: Vec::new(),
            policies_incomplete: false,
        }
    }

    /// Ends when there is news (a change, or a watch failing or recovering).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // The task ended (it does not, short of a panic): nothing will come.
            std::future::pending::<()>().await;
        }
    }

    /// Whether every kind has been listed once: the state is the cluster's.
    pub fn synced(&self) -> bool {
        self.shared.lock().expect("not poisoned").listed()
    }

    /// What changed since last given — or, with `everything` (and at the
    /// first read, or after a [`ApiSource::retry`]), all of it — once every
    /// kind has been listed. A change costs the Service it touched; the
    /// policy inputs are read again only when one of them changed.
    pub fn read(&mut self, everything: bool) -> Option<ApiRead> {
        let generation = *self.changes.borrow_and_update();
        let everything = everything || self.given.is_none();
        if !everything && self.given == Some(generation) {
            return None;
        }
        let mut shared = self.shared.lock().expect("not poisoned");
        if !shared.listed() {
            return None;
        }
        self.given = Some(generation);
        let services = if everything { shared.index.everything() } else { shared.index.changed() };
        let policy = (std::mem::take(&mut shared.policy_changed) || everything).then(|| {
            let kinds = [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy];
            let objects =
                kinds.iter().flat_map(|k| shared.stores[*k as usize].live.values().map(|(o, object)| (o, object)));
            let found = Manifests::from_objects(objects);
            (self.policy_errors, self.policies_incomplete) = (found.errors.clone(), found.policies_incomplete);
            found
        });
        let nodes = (std::mem::take(&mut shared.nodes_changed) || everything).then(|| {
            let mut nodes: Vec<RemoteNode> = shared.nodes.values().flatten().cloned().collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            nodes
        });
        let mut errors: Vec<ManifestError> = shared.index.errors().chain(&self.policy_errors).cloned().collect();
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        Some(ApiRead { everything, services, policy, errors, policies_incomplete: self.policies_incomplete, nodes })
    }

    /// The state read last could not be programmed: read it again next time.
    pub fn retry(&mut self) {
        self.given = None;
    }

    /// The state read last is in the maps: how long since its oldest event.
    pub fn applied(&mut self) -> Option<Duration> {
        let since = self.shared.lock().expect("not poisoned").pending_since.take()?;
        self.last_delay = Some(since.elapsed());
        self.last_delay
    }

    /// Why the datapath may be behind the cluster: the API server unreachable,
    /// since when. Not in a booting node's first minute, before the first list
    /// (its network may not be up yet: the `kubernetes` component says "joining").
    pub fn problems(&self) -> Vec<String> {
        let shared = self.shared.lock().expect("not poisoned");
        let listed = shared.listed();
        if !listed && self.started.elapsed() < JOIN_GRACE {
            return Vec::new();
        }
        let failing = KINDS.iter().zip(&shared.stores).filter_map(|(kind, s)| Some((kind, s.failing.as_ref()?)));
        let oldest = failing.min_by_key(|(_, (since, _))| *since);
        let (since, reason) = match (&shared.client_error, oldest) {
            (Some((since, err)), _) => (*since, err.clone()),
            (None, Some((kind, (since, err)))) => (*since, format!("watching {}: {err}", kind.plural())),
            (None, None) => return Vec::new(),
        };
        let kept = if listed {
            "the datapath keeps the cluster's last known state"
        } else {
            "the datapath keeps what its maps hold until the first full list"
        };
        vec![format!(
            "the API server is unreachable since {}: {reason}; {kept}",
            humantime::format_rfc3339_seconds(since)
        )]
    }

    /// Status facts: objects per kind, the last event, relists, the last change's delay.
    pub fn facts(&self) -> BTreeMap<String, super::Fact> {
        use super::Fact;
        let shared = self.shared.lock().expect("not poisoned");
        let mut facts = BTreeMap::new();
        for (kind, store) in KINDS.iter().zip(&shared.stores) {
            facts.insert(kind.fact().into(), Fact::Count(shared.count(*kind) as u64));
            facts.insert(format!("{}_revision", kind.fact()), Fact::Count(store.revision));
        }
        if let Some(last) = shared.stores.iter().filter_map(|s| s.last_event).max() {
            facts.insert("api_last_event".into(), Fact::Text(humantime::format_rfc3339_millis(last).to_string()));
        }
        let relists = shared.stores.iter().map(|s| s.lists.saturating_sub(1)).sum();
        facts.insert("api_watch_restarts".into(), Fact::Count(relists));
        facts.insert("api_synced".into(), Fact::Text(shared.listed().to_string()));
        if let Some(delay) = self.last_delay {
            facts.insert("api_event_to_datapath_us".into(), Fact::Count(delay.as_micros() as u64));
        }
        facts
    }
}

/// Makes a client (retrying), then follows every kind.
async fn follow_all(config: KubernetesConfig, shared: Arc<Mutex<Shared>>, notify: watch::Sender<u64>) {
    let client = loop {
        match super::super::kubernetes::client(&config).await {
            Ok(client) => break client,
            Err(err) => {
                {
                    let mut s = shared.lock().expect("not poisoned");
                    let since = s.client_error.as_ref().map_or_else(SystemTime::now, |(since, _)| *since);
                    s.client_error = Some((since, err.to_string()));
                }
                notify.send_modify(|g| *g += 1);
                tokio::time::sleep(CLIENT_RETRY).await;
            }
        }
    };
    shared.lock().expect("not poisoned").client_error = None;
    let notify = Arc::new(notify);
    let ctx = |kind| (kind, shared.clone(), notify.clone());
    tokio::join!(
        // Services, EndpointSlices and Pods are read as they come (Shared::kept).
        follow(Api::<Service>::all(client.clone()), ctx(Kind::Service), |s| Object::Service(Box::new(s))),
        follow(Api::<EndpointSlice>::all(client.clone()), ctx(Kind::EndpointSlice), |s| {
            Object::EndpointSlice(Box::new(s))
        }),
        follow(Api::<Namespace>::all(client.clone()), ctx(Kind::Namespace), |n| {
            Object::Namespace(Box::new(namespace(n)))
        }),
        follow(Api::<Pod>::all(client.clone()), ctx(Kind::Pod), |p| Object::Pod(Box::new(p))),
        follow(Api::<NetworkPolicy>::all(client.clone()), ctx(Kind::NetworkPolicy), |p| {
            Object::NetworkPolicy(Box::new(network_policy(p)))
        }),
        follow(Api::<Node>::all(client), ctx(Kind::Node), |n| Object::Node(Box::new(n))),
    );
}

/// Follows one kind into its store for good: the watcher relists on `410
/// Gone` and retries, backing off, on every other error.
async fn follow<K>(
    api: Api<K>,
    (kind, shared, notify): (Kind, Arc<Mutex<Shared>>, Arc<watch::Sender<u64>>),
    trim: fn(K) -> Object,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut events = watcher::watcher(api, watcher::Config::default().any_semantic()).boxed();
    let mut backoff = Backoff::default();
    while let Some(event) = events.next().await {
        let pause = match &event {
            // A list starting says nothing of the server: the watcher says so before each try.
            Ok(Event::Init) => None,
            Ok(_) => {
                backoff.reset();
                None
            }
            // The watcher lists again at once: no reason to wait for that.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => None,
            Err(_) => Some(backoff.next_delay()),
        };
        if record(&shared, kind, event.map(|e| map_event(e, trim))) {
            notify.send_modify(|g| *g += 1);
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The pause after a failed watch or list: doubling from 200 ms to 5 s, each
/// drawn in its upper half (nodes that lost the same API server come back
/// spread out). kube-runtime's default waits up to a minute: a node would
/// follow its cluster a minute late after every outage.
struct Backoff {
    next: Duration,
    seed: u64,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Self {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Backoff { next: BACKOFF_FIRST, seed: now.as_nanos() as u64 | 1 }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    fn next_delay(&mut self) -> Duration {
        // xorshift64: spread, not secrecy.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let delay = self.next.mul_f64(0.5 + (self.seed % 1000) as f64 / 2000.0);
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }
}

/// Records a watch event (or error) of `kind`; whether it is news: the
/// objects changed, or the watch failed or recovered.
fn record(shared: &Mutex<Shared>, kind: Kind, event: Result<Event<Object>, watcher::Error>) -> bool {
    let mut guard = shared.lock().expect("not poisoned");
    let s = &mut *guard;
    let (changed, news) = match event {
        Ok(event) => {
            let store = &mut s.stores[kind as usize];
            store.last_event = Some(SystemTime::now());
            // Only what came from the server shows that it answers again.
            let recovered = !matches!(event, Event::Init) && store.failing.take().is_some();
            if recovered {
                tracing::info!("watching {} again", kind.plural());
            }
            let changed = s.apply(kind, event);
            (changed, changed || recovered)
        }
        Err(err) => {
            let store = &mut s.stores[kind as usize];
            let since = store.failing.as_ref().map_or_else(SystemTime::now, |(since, _)| *since);
            if store.failing.is_none() {
                tracing::warn!("watching {}: {err}", kind.plural());
            }
            store.failing = Some((since, err.to_string()));
            (false, true)
        }
    };
    if changed {
        s.pending_since.get_or_insert_with(Instant::now);
    }
    news
}

fn map_event<K>(event: Event<K>, trim: fn(K) -> Object) -> Event<Object> {
    match event {
        Event::Apply(o) => Event::Apply(trim(o)),
        Event::Delete(o) => Event::Delete(trim(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(trim(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// The metadata the datapath reads: name, namespace, labels (and the version).
fn meta(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        labels: meta.labels,
        resource_version: meta.resource_version,
        ..ObjectMeta::default()
    }
}

fn namespace(n: Namespace) -> Namespace {
    Namespace { metadata: meta(n.metadata), spec: None, status: None }
}

fn network_policy(p: NetworkPolicy) -> NetworkPolicy {
    NetworkPolicy { metadata: meta(p.metadata), ..p }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace_object(name: &str, version: &str) -> Object {
        let metadata =
            ObjectMeta { name: Some(name.into()), resource_version: Some(version.into()), ..ObjectMeta::default() };
        Object::Namespace(Box::new(Namespace { metadata, ..Namespace::default() }))
    }

    /// A relist (after a 410 Gone, say) replaces the store when it ends: what
    /// did not come back is gone, and nothing is half-listed meanwhile.
    #[test]
    fn a_relist_replaces_the_store_when_it_ends() {
        let mut shared = Shared::default();
        let kind = Kind::Namespace;
        assert!(!shared.apply(kind, Event::Init));
        shared.apply(kind, Event::InitApply(namespace_object("a", "5")));
        shared.apply(kind, Event::InitApply(namespace_object("b", "6")));
        assert_eq!(shared.count(kind), 0, "nothing kept before the list ends");
        assert!(shared.apply(kind, Event::InitDone));
        assert_eq!(shared.stores[kind as usize].lists, 1);
        assert!(shared.apply(kind, Event::Apply(namespace_object("c", "9"))));
        assert!(!shared.apply(kind, Event::Apply(namespace_object("c", "9"))), "the same object again is no news");
        assert_eq!(shared.stores[kind as usize].revision, 9);

        shared.apply(kind, Event::Init);
        shared.apply(kind, Event::InitApply(namespace_object("c", "9")));
        assert_eq!(shared.count(kind), 3, "the old objects stay until the relist ends");
        assert!(shared.apply(kind, Event::InitDone));
        let names: Vec<&String> = shared.stores[kind as usize].live.keys().collect();
        assert_eq!(names, ["c"]);
        assert_eq!(shared.stores[kind as usize].lists, 2);
        assert!(!shared.apply(kind, Event::Delete(namespace_object("gone", "12"))), "nothing to delete");
        assert_eq!(shared.stores[kind as usize].revision, 12);
    }

    /// A Service that did not come back from a relist is given to the
    /// datapath as gone (no ports), and only it: the others did not change.
    #[test]
    fn a_service_missing_from_a_relist_is_given_as_gone() {
        let service = |name: &str| {
            let spec = k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some("10.96.0.1".into()),
                ports: Some(vec![k8s_openapi::api::core::v1::ServicePort { port: 80, ..Default::default() }]),
                ..Default::default()
            };
            let metadata = ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            };
            Object::Service(Box::new(Service { metadata, spec: Some(spec), status: None }))
        };
        let mut shared = Shared::default();
        let kind = Kind::Service;
        shared.apply(kind, Event::Init);
        shared.apply(kind, Event::InitApply(service("a")));
        shared.apply(kind, Event::InitApply(service("b")));
        shared.apply(kind, Event::InitDone);
        let changed: Vec<String> = shared.index.changed().into_iter().map(|(key, _)| key).collect();
        assert_eq!(changed, ["default/a", "default/b"]);

        shared.apply(kind, Event::Init);
        shared.apply(kind, Event::InitApply(service("a")));
        assert!(shared.index.changed().is_empty(), "nothing changes before the list ends");
        shared.apply(kind, Event::InitDone);
        assert_eq!(shared.index.changed(), [("default/b".to_owned(), Vec::new())]);
        assert_eq!(shared.count(kind), 1);
    }

    /// The watcher says a list starts before each try: that is not the
    /// server answering again (which would log "again" and warn anew at
    /// every retry, and clear "unreachable since"); what it lists is.
    #[test]
    fn a_list_starting_is_not_taken_for_the_server_answering_again() {
        let shared = Mutex::new(Shared::default());
        let kind = Kind::Namespace;
        let failing = |shared: &Mutex<Shared>| shared.lock().unwrap().stores[kind as usize].failing.clone();
        assert!(record(&shared, kind, Err(watcher::Error::NoResourceVersion)), "a failure is news");
        let since = failing(&shared).expect("failing").0;
        assert!(!record(&shared, kind, Ok(Event::Init)));
        assert!(record(&shared, kind, Err(watcher::Error::NoResourceVersion)));
        assert_eq!(failing(&shared).expect("still failing").0, since, "failing since the first failure");
        assert!(!record(&shared, kind, Ok(Event::Init)));
        assert!(record(&shared, kind, Ok(Event::InitDone)), "listed: news");
        assert!(failing(&shared).is_none());
    }

    #[test]
    fn the_backoff_doubles_to_five_seconds_spread_in_its_upper_half_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let bounds = [200, 400, 800, 1600, 3200, 5000, 5000, 5000].map(Duration::from_millis);
        for (delay, bound) in delays.iter().zip(bounds) {
            assert!(*delay >= bound / 2 && *delay <= bound, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_FIRST);
    }
}
