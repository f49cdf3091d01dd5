//! Desired state from Kubernetes manifests: Services and EndpointSlices parsed
//! with the API types; each bad document reported with file, document and field.

use std::net::Ipv4Addr;
use std::time::Duration;

use nodeplane_model::Protocol;
use nodeplane_model::manifests::{Manifests, Object, Origin, ServiceCache, load_dir};

const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: ["10.200.0.3"]
- addresses: ["10.200.0.4"]
  conditions: {ready: true}
- addresses: ["10.200.0.5"]
  conditions: {ready: false}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
"#;

const BAD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: sctp}
spec:
  clusterIP: 10.96.0.30
  ports: [{port: 9000, protocol: SCTP}]
---
apiVersion: v1
kind: Service
metadata: {name: typo}
spec:
  clusterIP: 10.96.0.31
  ports: [{port: "eighty"}]
---
kind: [not, a, string
---
apiVersion: v1
kind: Service
metadata: {name: fine}
spec:
  clusterIP: 10.96.0.32
  ports: [{port: 443}]
---
metadata: {name: kindless}
"#;

#[test]
fn services_and_endpoint_slices_become_service_ports() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.yaml"), GOOD).unwrap();
    let found = load_dir(dir.path());
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    assert_eq!(found.ports.len(), 2);
    let (dns, http) = (&found.ports[0], &found.ports[1]);
    assert_eq!(http.name.to_string(), "shop/web:http");
    assert_eq!((http.vip, http.port, http.protocol), (Ipv4Addr::new(10, 96, 0, 20), 80, Protocol::Tcp));
    assert_eq!(http.affinity, Some(Duration::from_secs(10800)));
    let ready = vec![(Ipv4Addr::new(10, 200, 0, 3), 8080), (Ipv4Addr::new(10, 200, 0, 4), 8080)];
    assert_eq!(http.backends, ready, "the not-ready endpoint is left out");
    assert_eq!((dns.port, dns.protocol), (53, Protocol::Udp));
    assert_eq!(dns.backends.iter().map(|b| b.1).collect::<Vec<_>>(), [5353, 5353]);
}

#[test]
fn each_bad_document_is_reported_and_the_rest_applies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), BAD).unwrap();
    std::fs::write(dir.path().join("good.yml"), GOOD).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let found = load_dir(dir.path());
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    let file = dir.path().join("bad.yaml").display().to_string();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!("{file}: document 1: spec.ports[0].protocol: SCTP is not supported")),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with(&format!("{file}: document 2: spec.ports[0].port: ")), "{errors:#?}");
    assert!(errors.iter().any(|e| e.starts_with(&format!("{file}: document 3: "))), "{errors:#?}");
    assert!(errors.iter().any(|e| e.starts_with(&format!("{file}: document 5: kind: missing"))), "{errors:#?}");
    let names: Vec<String> = found.ports.iter().map(|p| p.name.to_string()).collect();
    assert_eq!(names, ["default/fine", "shop/web:dns", "shop/web:http"]);
}

const POLICY_INPUTS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: server
    image: example
    ports: [{name: http, containerPort: 8080}, {name: metrics, containerPort: 9090, protocol: UDP}, {containerPort: 7070}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}, {port: 30000, endPort: 30010}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: shop}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http, endPort: 90}]}]
"#;

#[test]
fn namespaces_pods_and_network_policies_are_read_and_a_bad_policy_is_reported() {
    use nodeplane_model::policy::NamedPort;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY_INPUTS).unwrap();
    let found = load_dir(dir.path());
    assert_eq!(found.namespaces["shop"].get("team").map(String::as_str), Some("web"));
    assert_eq!(found.pods.len(), 1);
    let pod = &found.pods[0];
    assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("shop", "web-0"));
    assert_eq!(
        pod.ports,
        [
            NamedPort { name: "http".into(), port: 8080, protocol: Protocol::Tcp },
            NamedPort { name: "metrics".into(), port: 9090, protocol: Protocol::Udp },
        ],
        "only named ports"
    );
    assert_eq!(found.policies.len(), 1);
    assert_eq!(found.policies[0].name, "web");
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].ends_with(
            "policy.yaml: document 4: spec.ingress[0].ports[0].endPort: needs a numeric port, not a named one"
        ),
        "{errors:?}"
    );
}

const LOCAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: local, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.40
  internalTrafficPolicy: Local
  externalTrafficPolicy: Local
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: external-local, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.41
  externalTrafficPolicy: Local
  ports: [{port: 80, nodePort: 30081}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: local-1, namespace: shop, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: ["10.200.0.3"], nodeName: node-1}
- {addresses: ["10.200.0.4"], nodeName: node-2}
- {addresses: ["10.200.0.5"]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: external-local-1, namespace: shop, labels: {kubernetes.io/service-name: external-local}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: ["10.200.0.6"], nodeName: node-1}
- {addresses: ["10.200.0.7"], nodeName: node-2}
---
apiVersion: v1
kind: Service
metadata: {name: odd, namespace: shop}
spec:
  clusterIP: 10.96.0.42
  internalTrafficPolicy: Nearby
  ports: [{port: 80}]
"#;

#[test]
fn traffic_policies_of_local_send_to_this_nodes_endpoints_only() {
    let documents = [(std::path::PathBuf::from("local.yaml"), LOCAL.to_owned())];
    let parsed = nodeplane_model::manifests::parse(&documents);
    // The objects as the API server's watches hold them, this node named.
    let objects = objects_of(LOCAL);
    let found =
        Manifests::from_objects(objects.iter().map(|(o, obj)| (o, obj)), Some("node-1"), &mut ServiceCache::default());
    let port = |name: &str| found.ports.iter().find(|p| p.name.service == name).unwrap();
    let at = |last: u8| (Ipv4Addr::new(10, 200, 0, last), 8080);
    // Both Local: the ClusterIP and the NodePort send to node-1's endpoint and
    // the one naming no node; another node's is not ours to pick.
    assert_eq!(port("local").backends, vec![at(3), at(5)]);
    assert_eq!(port("local").node_port_backends, vec![at(3), at(5)]);
    // External only: the ClusterIP keeps every endpoint.
    assert_eq!(port("external-local").backends, vec![at(6), at(7)]);
    assert_eq!(port("external-local").node_port_backends, vec![at(6)]);
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        ["Service shop/odd: spec.internalTrafficPolicy: \"Nearby\" is not Cluster or Local"],
        "an API object's problem names its kind and name"
    );
    // A manifests directory names no node: every endpoint counts as local.
    let local = parsed.ports.iter().find(|p| p.name.service == "local").unwrap();
    assert_eq!(local.backends, vec![at(3), at(4), at(5)]);
}

/// The objects of a YAML stream, each with its origin as the API source gives it.
fn objects_of(text: &str) -> Vec<(Origin, Object)> {
    text.split("\n---\n")
        .map(|document| {
            let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(document).unwrap();
            let meta = &value["metadata"];
            let (namespace, name) = (meta["namespace"].as_str(), meta["name"].as_str().unwrap());
            let kind = value["kind"].as_str().unwrap();
            let origin = Origin::api(kind, namespace, name);
            let object = match kind {
                "Service" => Object::Service(serde_yaml_ng::from_value(value).unwrap()),
                "EndpointSlice" => Object::EndpointSlice(serde_yaml_ng::from_value(value).unwrap()),
                other => panic!("{other}"),
            };
            (origin, object)
        })
        .collect()
}

/// The API source reads only what changed: a Service and its slices at the
/// resourceVersions of the last read come from the cache; a new version (of
/// the Service or of one of its slices) is read again, and what is gone is
/// forgotten. Each read equals a read without the cache.
#[test]
fn a_read_reuses_only_services_whose_objects_kept_their_versions() {
    let versioned = |text: &str, version: &str| {
        let mut objects = objects_of(text);
        for (_, object) in &mut objects {
            let meta = match object {
                Object::Service(s) => &mut s.metadata,
                Object::EndpointSlice(s) => &mut s.metadata,
                _ => unreachable!(),
            };
            meta.resource_version = Some(version.into());
        }
        objects
    };
    let read = |objects: &[(Origin, Object)], cache: &mut ServiceCache| {
        let found = Manifests::from_objects(objects.iter().map(|(o, obj)| (o, obj)), Some("node-1"), cache);
        let fresh = Manifests::from_objects(
            objects.iter().map(|(o, obj)| (o, obj)),
            Some("node-1"),
            &mut ServiceCache::default(),
        );
        assert_eq!(found.ports, fresh.ports, "a cached read differs from a fresh one");
        assert_eq!(found.errors, fresh.errors);
        found
    };
    let mut cache = ServiceCache::default();
    let first = versioned(LOCAL, "1");
    read(&first, &mut cache);
    assert_eq!(cache.len(), 3, "local, external-local and odd");

    // The same versions with other contents (which the API server never
    // sends) show that the cache answered.
    let moved = LOCAL.replace("10.200.0.6", "10.200.0.9");
    let cached =
        Manifests::from_objects(versioned(&moved, "1").iter().map(|(o, obj)| (o, obj)), Some("node-1"), &mut cache);
    let port =
        |found: &Manifests, name: &str| found.ports.iter().find(|p| p.name.service == name).unwrap().backends.clone();
    assert!(port(&cached, "external-local").contains(&(Ipv4Addr::new(10, 200, 0, 6), 8080)));

    // A new version is read again.
    let changed = read(&versioned(&moved, "2"), &mut cache);
    assert!(port(&changed, "external-local").contains(&(Ipv4Addr::new(10, 200, 0, 9), 8080)));

    // A Service gone is forgotten.
    let without_odd: Vec<(Origin, Object)> = versioned(&moved, "2")
        .into_iter()
        .filter(|(_, o)| !matches!(o, Object::Service(s) if s.metadata.name.as_deref() == Some("odd")))
        .collect();
    read(&without_odd, &mut cache);
    assert_eq!(cache.len(), 2);
}
