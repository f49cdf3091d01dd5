//! `nodeplanectl probe DIR`: stands DIR's pods up on this machine and prints
//! what its NetworkPolicies let through (root only; see `nodeplane-probe`);
//! with `--api`, through a real API server (see `probe_api`).

use std::process::ExitCode;

pub(super) fn probe(
    dir: &std::path::Path,
    selection: &nodeplane_probe::Selection,
    json: bool,
    timeout: std::time::Duration,
    api: Option<&std::path::Path>,
) -> ExitCode {
    if !rustix::process::geteuid().is_root() {
        eprintln!("nodeplanectl: probe is for root only (it makes network namespaces and mounts a bpffs)");
        return ExitCode::FAILURE;
    }
    let cluster: Option<std::sync::Arc<dyn nodeplane_probe::Cluster>> = match api.map(super::probe_api::ApiCluster::new)
    {
        None => None,
        Some(Ok(cluster)) => Some(std::sync::Arc::new(cluster)),
        Some(Err(err)) => {
            eprintln!("nodeplanectl: probe --api: {err}");
            return ExitCode::FAILURE;
        }
    };
    let run = || -> Result<Vec<nodeplane_probe::Outcome>, nodeplane_probe::ProbeError> {
        let binaries = nodeplane_probe::Binaries::beside_current_exe()?;
        let progress = |step: &str| eprintln!("probe: {step}");
        let stage = nodeplane_probe::Stage::with_cluster(dir, &binaries, &progress, cluster)?;
        let targets = stage.targets(selection);
        eprintln!(
            "probe: {} connection(s) from {} pod(s), {:?} each at most",
            targets.len(),
            stage.pods.len(),
            timeout
        );
        let outcomes = stage.probe(&targets, timeout)?;
        eprintln!("probe: removing the pods and the node");
        Ok(outcomes)
    };
    match run() {
        Ok(outcomes) if json => {
            println!("{}", nodeplane_probe::json(&outcomes));
            ExitCode::SUCCESS
        }
        Ok(outcomes) => {
            print!("{}", nodeplane_probe::table(&outcomes));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("nodeplanectl: probe: {err}");
            ExitCode::FAILURE
        }
    }
}
