//! `cargo xtask cluster up|down|status`: the one-machine control plane
//! (`nodeplane-cluster`) in `target/cluster/`, its API server on
//! 127.0.0.1:16443, reached by QEMU guests at https://10.0.2.100:6443. `up`
//! builds the components from source the first time on a machine (cached in
//! `~/.cache/nodeplane/upstream/`); `status` lists them and the nodes.

use nodeplane_cluster::ControlPlane;

/// The API server's port on this machine (etcd and the controllers take the next four).
pub const PORT: u16 = 16443;

pub fn control_plane() -> Result<ControlPlane, String> {
    ControlPlane::new(&crate::target_dir().join("cluster"), PORT, &crate::root(), &crate::image::cache_dir())
        .map_err(|e| e.to_string())
}

pub fn cluster(verb: &str) -> Result<(), String> {
    crate::packages::ensure()?;
    match verb {
        "up" => {
            let plane = control_plane()?;
            crate::timed("start the control plane", || plane.up().map_err(|e| e.to_string()))?;
            eprintln!("==> API server at https://127.0.0.1:{PORT}; kubeconfig {}", plane.admin_kubeconfig().display());
            Ok(())
        }
        "down" => control_plane()?.down().map_err(|e| e.to_string()),
        "status" => {
            let plane = control_plane()?;
            let running = plane.running();
            for (name, pid) in &running {
                println!("{name}: running (pid {pid})");
            }
            if running.is_empty() {
                println!("the control plane is not running (cargo xtask cluster up)");
                return Ok(());
            }
            let status = plane.kubectl().args(["get", "nodes", "-o", "wide"]).status().map_err(|e| e.to_string())?;
            if status.success() { Ok(()) } else { Err(format!("kubectl get nodes: {status}")) }
        }
        other => Err(format!("unknown cluster verb {other:?}: up, down or status")),
    }
}
