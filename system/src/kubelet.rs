//! `nodeplaned --prepare CONFIG` (with [`crate::metrics_socket`]): turns node.toml's `[kubernetes]`
//! section into what the kubelet reads, at boot (nodeplane-config.service runs
//! it once the node's config is chosen):
//! - `/etc/kubernetes/pki/ca.crt`, and the node's client certificate and key
//!   (or, with a bootstrap token, `bootstrap-kubelet.conf`);
//! - `/etc/kubernetes/kubelet.conf`, the kubeconfig;
//! - `/etc/kubernetes/kubelet-config.yaml` (cgroup v2 with the systemd driver,
//!   containerd's CRI socket, the cluster's DNS and domain, webhook
//!   authentication and authorization, no image GC: no registry could give
//!   an image back; graceful node shutdown, so a poweroff stops the pods
//!   within their grace periods);
//! - `/etc/kubernetes/kubelet.env`, the kubelet's arguments (kubelet.service
//!   runs only when it exists; `--node-ip` is `[datapath] node_ip`);
//! - a drop-in letting nodeplaned reach the API server (its unit allows no IP
//!   traffic otherwise);
//! - the kubelet's own state in `/var/lib/kubelet` repaired where a power loss
//!   left a file empty or torn ([`repair_state`]).
//!
//! Without the section it removes them: the node stays a standalone node, and
//! says so.

use std::path::{Path, PathBuf};

use crate::config::{KubernetesConfig, NodeConfig};

/// Where the kubelet's files go, relative to the root.
pub const DIR: &str = "etc/kubernetes";
/// The kubelet's own state, relative to the root.
const STATE: &str = "var/lib/kubelet";
/// nodeplaned's drop-in, relative to the root.
const DROP_IN: &str = "run/systemd/system/nodeplaned.service.d/50-kubernetes.conf";

/// Why the kubelet's files could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct PrepareError {
    path: PathBuf,
    source: std::io::Error,
}

impl PrepareError {
    pub(crate) fn new(path: &Path, source: std::io::Error) -> Self {
        PrepareError { path: path.to_owned(), source }
    }
}

/// The kubeconfig the kubelet (and nodeplaned, for its own Node) uses.
pub fn kubeconfig_path(config: &KubernetesConfig) -> PathBuf {
    if config.bootstrap_token.is_some() {
        // Written by the kubelet once its certificate is signed.
        PathBuf::from("/var/lib/kubelet/kubeconfig")
    } else {
        Path::new("/").join(DIR).join("kubelet.conf")
    }
}

/// The kubeconfig nodeplaned reads the cluster with: `kubeconfig`, else the kubelet's.
pub fn nodeplaned_kubeconfig(config: &KubernetesConfig) -> PathBuf {
    config.kubeconfig.clone().unwrap_or_else(|| kubeconfig_path(config))
}

/// Writes (or, without `[kubernetes]`, removes) the kubelet's files and
/// nodeplaned's drop-in under `root`; says what it did. The caller reloads
/// systemd when the drop-in exists.
pub fn prepare(config: &NodeConfig, root: &Path) -> Result<String, PrepareError> {
    let dir = root.join(DIR);
    let drop_in = root.join(DROP_IN);
    let Some(kubernetes) = &config.kubernetes else {
        for path in [dir.join("kubelet.env"), drop_in] {
            remove(&path)?;
        }
        return Ok("standalone: node.toml has no [kubernetes] section, so the kubelet does not run".into());
    };
    let pki = dir.join("pki");
    write(&pki.join("ca.crt"), &kubernetes.cluster_ca, 0o644)?;
    let ca = Path::new("/").join(DIR).join("pki/ca.crt");
    let cluster = format!(
        "clusters:\n- name: cluster\n  cluster:\n    server: {}\n    certificate-authority: {}\n",
        kubernetes.api_server,
        ca.display()
    );
    let mut args = vec![
        format!("--config=/{DIR}/kubelet-config.yaml"),
        format!("--hostname-override={}", kubernetes.node_name),
        format!("--kubeconfig={}", kubeconfig_path(kubernetes).display()),
    ];
    // The Node's InternalIP: the address NodePorts are served on, not one the
    // kubelet picks (an IPv6 one, say).
    if let Some(node_ip) = config.datapath.node_ip {
        args.push(format!("--node-ip={node_ip}"));
    }
    match (&kubernetes.client_certificate, &kubernetes.client_key, &kubernetes.bootstrap_token) {
        (Some(cert), Some(key), _) => {
            write(&pki.join("kubelet-client.crt"), cert, 0o644)?;
            write(&pki.join("kubelet-client.key"), key, 0o600)?;
            let user = format!(
                "users:\n- name: node\n  user:\n    client-certificate: /{DIR}/pki/kubelet-client.crt\n    \
                 client-key: /{DIR}/pki/kubelet-client.key\n"
            );
            write(&dir.join("kubelet.conf"), &kubeconfig(&cluster, &user), 0o600)?;
        }
        (_, _, Some(token)) => {
            let user = format!("users:\n- name: node\n  user:\n    token: {token}\n");
            write(&dir.join("bootstrap-kubelet.conf"), &kubeconfig(&cluster, &user), 0o600)?;
            args.push(format!("--bootstrap-kubeconfig=/{DIR}/bootstrap-kubelet.conf"));
            args.push("--cert-dir=/var/lib/kubelet/pki".into());
        }
        _ => unreachable!("validated: certificate and key, or a bootstrap token"),
    }
    let dns: Vec<String> = kubernetes.cluster_dns.iter().map(|a| format!("\"{a}\"")).collect();
    let kubelet_config = format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         cgroupDriver: systemd\n\
         containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n\
         clusterDNS: [{}]\nclusterDomain: \"{}\"\n\
         authentication:\n  anonymous: {{enabled: false}}\n  webhook: {{enabled: true}}\n  x509: {{clientCAFile: {}}}\n\
         authorization: {{mode: Webhook}}\n\
         failSwapOn: false\n\
         rotateCertificates: {}\n\
         # No registry could give a collected image back.\n\
         imageGCHighThresholdPercent: 100\n\
         # Graceful node shutdown: the kubelet delays a poweroff (a logind inhibitor) and stops\n\
         # the pods within their grace periods, rather than systemd waiting out each container.\n\
         shutdownGracePeriod: 20s\nshutdownGracePeriodCriticalPods: 5s\n\
         # The state partition is small: evict late, never for images.\n\
         evictionHard: {{memory.available: \"50Mi\", nodefs.available: \"5%\", imagefs.available: \"1%\"}}\n",
        dns.join(", "),
        kubernetes.cluster_domain,
        ca.display(),
        kubernetes.bootstrap_token.is_some(),
    );
    write(&dir.join("kubelet-config.yaml"), &kubelet_config, 0o644)?;
    write(&dir.join("kubelet.env"), &format!("KUBELET_ARGS=\"{}\"\n", args.join(" ")), 0o644)?;
    // The API server's address if it is one; a name resolves at run time.
    let allow = match kubernetes.api_host() {
        Some((host, _)) if host.parse::<std::net::IpAddr>().is_ok() => host,
        _ => "any".into(),
    };
    let unit = format!(
        "# Written at boot by `nodeplaned --prepare` from node.toml's [kubernetes]:\n\
         # nodeplaned reads its own Node from the API server, and nothing else over IP.\n\
         [Service]\nRestrictAddressFamilies=AF_INET AF_INET6\nIPAddressAllow={allow}\n"
    );
    write(&drop_in, &unit, 0o644)?;
    let mut said = format!("joining {} as node {}", kubernetes.api_server, kubernetes.node_name);
    for repaired in repair_state(&root.join(STATE))? {
        said.push_str("\nnodeplane: ");
        said.push_str(&repaired);
    }
    Ok(said)
}

/// The kubelet writes some of its state without syncing it, and a power loss
/// soon after leaves such a file empty (ext4 allocates a new file's blocks
/// late) or torn. On those the kubelet refuses to start, at every restart
/// ("missing content for serving cert", "could not restore state from
/// checkpoint"), yet it makes each of them anew when it is absent. So this
/// removes each one that does not parse, before the kubelet starts, and says
/// what it removed:
/// - its self-signed serving certificate and key (both, so they match);
/// - with a bootstrap token, its client certificate (it asks for a new one);
/// - its checkpoints (JSON), rebuilt from the container runtime.
fn repair_state(state: &Path) -> Result<Vec<String>, PrepareError> {
    let mut said = Vec::new();
    let serving = [state.join("pki/kubelet.crt"), state.join("pki/kubelet.key")];
    if serving.iter().any(|p| p.exists()) && !(holds_certificate(&read(&serving[0])) && holds_key(&read(&serving[1]))) {
        for path in &serving {
            remove(path)?;
        }
        said.push(format!(
            "removed the kubelet's serving certificate and key ({}, {}): not a certificate and key (left empty or \
             torn by a power loss?); the kubelet makes new ones",
            serving[0].display(),
            serving[1].display()
        ));
    }
    let client = state.join("pki/kubelet-client-current.pem");
    let pair = read(&client);
    if client.symlink_metadata().is_ok() && !(holds_certificate(&pair) && holds_key(&pair)) {
        remove(&client)?;
        said.push(format!(
            "removed {}: not a certificate and key (left empty or torn by a power loss?); the kubelet asks for a \
             new one with its bootstrap token",
            client.display()
        ));
    }
    for checkpoint in CHECKPOINTS {
        let path = state.join(checkpoint);
        let Ok(bytes) = std::fs::read(&path) else { continue };
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
            remove(&path)?;
            said.push(format!(
                "removed the kubelet checkpoint {} ({} bytes, not JSON: left empty or torn by a power loss?); the \
                 kubelet writes it anew",
                path.display(),
                bytes.len()
            ));
        }
    }
    Ok(said)
}

/// The kubelet's checkpoints under its state directory.
const CHECKPOINTS: [&str; 4] =
    ["cpu_manager_state", "memory_manager_state", "dra_manager_state", "device-plugins/kubelet_internal_checkpoint"];

/// A file's bytes; none when it cannot be read (missing: nothing to repair).
fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

fn holds_certificate(pem: &[u8]) -> bool {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut certificates = CertificateDer::pem_slice_iter(pem).peekable();
    certificates.peek().is_some() && certificates.all(|c| c.is_ok())
}

fn holds_key(pem: &[u8]) -> bool {
    use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
    PrivateKeyDer::from_pem_slice(pem).is_ok()
}

fn kubeconfig(cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n{cluster}{user}contexts:\n- name: node\n  context:\n    cluster: cluster\n    \
         user: node\ncurrent-context: node\n"
    )
}

pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<(), PrepareError> {
    let failed = |source| PrepareError::new(path, source);
    std::fs::create_dir_all(path.parent().expect("a file in a directory")).map_err(failed)?;
    std::fs::write(path, text).map_err(failed)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(failed)
}

pub(crate) fn remove(path: &Path) -> Result<(), PrepareError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PrepareError::new(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";

    fn joining(credentials: &str) -> NodeConfig {
        let text = format!(
            "[kubernetes]\napi_server = \"https://10.0.2.100:6443\"\nnode_name = \"node-1\"\n\
             cluster_ca = \"\"\"\n{CERT}\"\"\"\n{credentials}"
        );
        NodeConfig::parse(&text, "node.toml").unwrap()
    }

    #[test]
    fn a_kubernetes_section_becomes_the_kubelets_files_and_a_drop_in_for_the_api_server() {
        let root = tempfile::tempdir().unwrap();
        let config = joining(&format!("client_certificate = \"\"\"\n{CERT}\"\"\"\nclient_key = \"\"\"\n{KEY}\"\"\"\n"));
        let said = prepare(&config, root.path()).unwrap();
        assert_eq!(said, "joining https://10.0.2.100:6443 as node node-1");
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        let env = read("etc/kubernetes/kubelet.env");
        assert!(
            env.contains("--hostname-override=node-1") && env.contains("--kubeconfig=/etc/kubernetes/kubelet.conf"),
            "{env}"
        );
        assert!(!env.contains("--node-ip"), "no [datapath] node_ip: the kubelet picks: {env}");
        let mut with_ip = config.clone();
        with_ip.datapath.node_ip = Some(std::net::Ipv4Addr::new(10, 0, 2, 15));
        prepare(&with_ip, root.path()).unwrap();
        assert!(read("etc/kubernetes/kubelet.env").contains("--node-ip=10.0.2.15"));
        prepare(&config, root.path()).unwrap();
        assert!(read("etc/kubernetes/kubelet.conf").contains("server: https://10.0.2.100:6443"));
        assert_eq!(read("etc/kubernetes/pki/kubelet-client.key"), KEY);
        let mode = std::os::unix::fs::MetadataExt::mode(
            &std::fs::metadata(root.path().join("etc/kubernetes/pki/kubelet-client.key")).unwrap(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key is the node's alone");
        let kubelet = read("etc/kubernetes/kubelet-config.yaml");
        assert!(
            kubelet.contains("cgroupDriver: systemd") && kubelet.contains("clusterDNS: [\"10.96.0.10\"]"),
            "{kubelet}"
        );
        assert!(read(DROP_IN).contains("IPAddressAllow=10.0.2.100"));

        // Without the section, the kubelet has nothing to start with.
        assert!(prepare(&NodeConfig::default(), root.path()).unwrap().starts_with("standalone"));
        assert!(!root.path().join("etc/kubernetes/kubelet.env").exists());
        assert!(!root.path().join(DROP_IN).exists());
    }

    #[test]
    fn a_bootstrap_token_makes_the_kubelet_ask_for_its_certificate() {
        let root = tempfile::tempdir().unwrap();
        prepare(&joining("bootstrap_token = \"abcdef.0123456789abcdef\"\n"), root.path()).unwrap();
        let env = std::fs::read_to_string(root.path().join("etc/kubernetes/kubelet.env")).unwrap();
        assert!(env.contains("--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf"), "{env}");
        assert!(env.contains("--kubeconfig=/var/lib/kubelet/kubeconfig"), "{env}");
        let bootstrap = std::fs::read_to_string(root.path().join("etc/kubernetes/bootstrap-kubelet.conf")).unwrap();
        assert!(bootstrap.contains("token: abcdef.0123456789abcdef"));
    }

    #[test]
    fn state_a_power_loss_left_empty_or_torn_is_removed_and_good_state_kept() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join(STATE);
        let put = |p: &str, text: &str| {
            std::fs::create_dir_all(state.join(p).parent().unwrap()).unwrap();
            std::fs::write(state.join(p), text).unwrap();
        };
        put("pki/kubelet.crt", CERT);
        put("pki/kubelet.key", KEY);
        put("pki/kubelet-client-2026-12-02.pem", &format!("{CERT}{KEY}"));
        std::os::unix::fs::symlink("kubelet-client-2026-12-02.pem", state.join("pki/kubelet-client-current.pem"))
            .unwrap();
        put("cpu_manager_state", r#"{"policyName":"none","defaultCpuSet":"","checksum":1}"#);
        put("memory_manager_state", "");
        let config = joining(&format!("client_certificate = \"\"\"\n{CERT}\"\"\"\nclient_key = \"\"\"\n{KEY}\"\"\"\n"));
        let said = prepare(&config, root.path()).unwrap();
        assert_eq!(said.lines().count(), 2, "only the empty checkpoint: {said}");
        assert!(said.contains("memory_manager_state (0 bytes, not JSON"), "{said}");
        assert!(!state.join("memory_manager_state").exists());
        for kept in ["pki/kubelet.crt", "pki/kubelet.key", "pki/kubelet-client-current.pem", "cpu_manager_state"] {
            assert!(state.join(kept).exists(), "{kept} kept");
        }

        // The serving certificate empty: the pair goes, the kubelet makes both anew.
        put("pki/kubelet.crt", "");
        // The client certificate torn: its key is missing.
        put("pki/kubelet-client-2026-12-02.pem", CERT);
        put("cpu_manager_state", r#"{"policyName":"no"#);
        let said = prepare(&config, root.path()).unwrap();
        assert_eq!(said.lines().count(), 4, "{said}");
        assert!(said.contains("removed the kubelet's serving certificate and key"), "{said}");
        assert!(said.contains("kubelet-client-current.pem: not a certificate and key"), "{said}");
        assert!(said.contains("cpu_manager_state (17 bytes, not JSON"), "{said}");
        for gone in ["pki/kubelet.crt", "pki/kubelet.key", "pki/kubelet-client-current.pem", "cpu_manager_state"] {
            assert!(state.join(gone).symlink_metadata().is_err(), "{gone} removed");
        }
        assert_eq!(prepare(&config, root.path()).unwrap().lines().count(), 1, "nothing left to repair");
    }

    #[test]
    fn the_effective_config_shows_no_secret() {
        let config = joining("bootstrap_token = \"abcdef.0123456789abcdef\"\n");
        let printed = config.to_toml();
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("(secret: not shown)"), "{printed}");
    }
}
