//! Desired state from Kubernetes manifests: Services and EndpointSlices parsed
//! with the API types; each bad document reported with file, document and field.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodeplane_model::Protocol;
use nodeplane_model::manifests::{Origin, load_dir};
use nodeplane_model::services::{ServiceIndex, read_service, read_slice, service_key};

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

/// A second Service of the same namespace and name (in another file, say) is
/// reported and skipped: the first one's ports stay, not a mix of both.
#[test]
fn a_service_defined_twice_is_reported_and_the_first_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("b.yaml"), GOOD.replace("10.96.0.20", "10.96.0.99")).unwrap();
    let found = load_dir(dir.path());
    let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    assert_eq!(
        errors,
        [format!(
            "{}: document 1: metadata.name: Service shop/web is also in {}: document 1; this one is skipped",
            b.display(),
            a.display()
        )]
    );
    assert_eq!(found.ports.len(), 2);
    assert!(found.ports.iter().all(|p| p.vip == Ipv4Addr::new(10, 96, 0, 20)), "{:?}", found.ports);
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
  type: LoadBalancer
  clusterIP: 10.96.0.41
  externalTrafficPolicy: Local
  healthCheckNodePort: 30900
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
    // The objects as the API source reads them, this node named.
    let mut index = ServiceIndex::default();
    apply(&mut index, LOCAL);
    let found: Vec<_> = index.everything().into_iter().flat_map(|(_, ports)| ports).collect();
    let port = |name: &str| found.iter().find(|p| p.name.service == name).unwrap();
    let at = |last: u8| (Ipv4Addr::new(10, 200, 0, last), 8080);
    // Both Local: the ClusterIP and the NodePort send to node-1's endpoint and
    // the one naming no node; another node's is not ours to pick.
    assert_eq!(port("local").backends, vec![at(3), at(5)]);
    assert_eq!(port("local").node_port_backends, vec![at(3), at(5)]);
    // External only: the ClusterIP keeps every endpoint.
    assert_eq!(port("external-local").backends, vec![at(6), at(7)]);
    assert_eq!(port("external-local").node_port_backends, vec![at(6)]);
    // Load balancers ask the health check port of a Local LoadBalancer only.
    assert_eq!(port("external-local").health_check_node_port, Some(30900));
    assert_eq!(port("local").health_check_node_port, None);
    let errors: Vec<String> = index.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        ["Service shop/odd: spec.internalTrafficPolicy: \"Nearby\" is not Cluster or Local"],
        "an API object's problem names its kind and name"
    );
    // A manifests directory names no node: every endpoint counts as local.
    let local = parsed.ports.iter().find(|p| p.name.service == "local").unwrap();
    assert_eq!(local.backends, vec![at(3), at(4), at(5)]);
}

/// Puts the Services and EndpointSlices of a YAML stream into `index` as the
/// API source does (keyed by namespace and name, read for node-1); the keys
/// of the Services whose ports changed.
fn apply(index: &mut ServiceIndex, text: &str) -> Vec<String> {
    for document in text.split("\n---\n") {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(document).unwrap();
        let meta = &value["metadata"];
        let (namespace, name) = (meta["namespace"].as_str(), meta["name"].as_str().unwrap());
        let kind = value["kind"].as_str().unwrap();
        let origin = Origin::api(kind, namespace, name);
        let key = service_key(namespace, name);
        match kind {
            "Service" => {
                let service: Service = serde_yaml_ng::from_value(value).unwrap();
                index.insert_service(key, read_service(&service, &origin));
            }
            "EndpointSlice" => {
                let slice: EndpointSlice = serde_yaml_ng::from_value(value).unwrap();
                index.insert_slice(key, read_slice(&slice, &origin, Some("node-1")));
            }
            other => panic!("{other}"),
        }
    }
    index.changed().into_iter().map(|(key, _)| key).collect()
}

/// A change recomputes only the Services it touched: a slice's Service (both
/// of them when its label moves), a Service itself; the same object again
/// touches none. Each answer equals a fresh read of everything.
#[test]
fn the_index_recomputes_only_the_services_a_change_touched() {
    let mut index = ServiceIndex::default();
    assert_eq!(apply(&mut index, LOCAL), ["shop/external-local", "shop/local", "shop/odd"]);
    assert_eq!(apply(&mut index, LOCAL), Vec::<String>::new(), "nothing changed");

    let moved = LOCAL.replace("10.200.0.6", "10.200.0.9");
    assert_eq!(apply(&mut index, &moved), ["shop/external-local"]);
    let relabelled = moved.replace(
        "name: external-local-1, namespace: shop, labels: {kubernetes.io/service-name: external-local}",
        "name: external-local-1, namespace: shop, labels: {kubernetes.io/service-name: local}",
    );
    assert_eq!(apply(&mut index, &relabelled), ["shop/external-local", "shop/local"]);
    let fresh = |text: &str| {
        let mut fresh = ServiceIndex::default();
        apply(&mut fresh, text);
        fresh.everything()
    };
    assert_eq!(index.everything(), fresh(&relabelled));

    assert!(index.remove_slice("shop/external-local-1"));
    assert!(!index.remove_slice("shop/external-local-1"), "gone already");
    let changed = index.changed();
    assert_eq!(changed.len(), 1);
    let (key, ports) = &changed[0];
    assert_eq!(key, "shop/local");
    assert_eq!(ports[0].backends, vec![(Ipv4Addr::new(10, 200, 0, 3), 8080), (Ipv4Addr::new(10, 200, 0, 5), 8080)]);

    assert!(index.remove_service("shop/odd"));
    assert_eq!(index.changed(), [("shop/odd".to_owned(), Vec::new())], "a Service gone has no ports");
    assert!(index.errors().next().is_none(), "its problem went with it");
    assert_eq!(index.len(), (2, 1));
}
