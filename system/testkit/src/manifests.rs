use std::net::Ipv4Addr;

/// A `default`-namespace Service `name` at `vip:80` (TCP) and its EndpointSlice
/// with `backends` on port 8080, as multi-document YAML.
pub fn service_manifest(name: &str, vip: Ipv4Addr, backends: &[Ipv4Addr]) -> String {
    let endpoints: String = backends.iter().map(|ip| format!("- addresses: [\"{ip}\"]\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: {vip}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n{endpoints}"
    )
}

/// [`service_manifest`] as `type: NodePort`, also reachable on the node's IP at `node_port`.
pub fn node_port_manifest(name: &str, vip: Ipv4Addr, node_port: u16, backends: &[Ipv4Addr]) -> String {
    service_manifest(name, vip, backends)
        .replace("spec:\n  clusterIP", "spec:\n  type: NodePort\n  clusterIP")
        .replace("targetPort: 8080}", &format!("targetPort: 8080, nodePort: {node_port}}}"))
}
