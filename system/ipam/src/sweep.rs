//! One sweep: list the live containers once, scan every network directory, and free
//! the reservations that are leaked — each under host-local's own lock, after
//! re-reading it, and only while containerd is still the instance that was asked.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::IpamConfig;
use crate::containerd::{Containerd, ContainerdError};
use crate::store::{HostLocalLock, NetworkDir, Reservation, Verdict, classify};

/// How long to wait for host-local to release a network's lock before skipping it.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How long containerd gets to answer the check made while holding the locks.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A reservation a sweep freed (or, dry, would free).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Freed {
    /// Shared by every address freed in the network.
    pub network: Arc<str>,
    pub ip: IpAddr,
    /// The owner container id; empty for an empty reservation file.
    pub owner: String,
}

/// A sweep's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    pub networks: u64,
    /// Reservation files read.
    pub scanned: u64,
    /// Reservations held by live containers.
    pub live: u64,
    /// Containers in the namespace.
    pub live_containers: u64,
    pub young_orphans_kept: u64,
    /// Freed, or in a dry run the ones that would be.
    pub freed: u64,
    /// Entries that are not reservations, and leaked ones behind a lock that stayed busy.
    pub skipped: u64,
    /// Leaked at the scan, but no longer the same file under the lock: left alone.
    pub changed_since_scan: u64,
    pub errors: u64,
    pub containerd_calls: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    pub dry_run: bool,
    pub took: Duration,
    pub counts: SweepCounts,
    /// Freed, or in a dry run the ones that would be; sorted.
    pub freed: Vec<Freed>,
    pub errors: Vec<String>,
    /// Networks found in `networks_dir` with leaked reservations but none held by a
    /// container in the namespace: likely another CNI user's (nerdctl, podman), so
    /// left alone unless listed in `networks`.
    pub unswept: Vec<String>,
    /// Networks listed in `networks` that have no directory (no pod used them yet).
    pub missing: Vec<String>,
}

/// Why a sweep freed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    #[error("{0}; nothing freed")]
    Containerd(#[from] ContainerdError),
    #[error("{path}: {reason}; nothing freed")]
    NetworksDir { path: PathBuf, reason: String },
}

struct Network {
    name: Arc<str>,
    dir: NetworkDir,
    leaked: Vec<Reservation>,
}

pub async fn sweep(config: &IpamConfig, dry_run: bool) -> Result<SweepReport, SweepError> {
    let started = Instant::now();
    let mut report = SweepReport { dry_run, ..Default::default() };
    let mut containerd = Containerd::connect(&config.containerd_socket).await.map_err(SweepError::Containerd)?;
    require_namespace(&mut containerd, &config.namespace, Containerd::CALL_TIMEOUT).await?;
    let mut live = containerd.container_ids(&config.namespace).await.map_err(SweepError::Containerd)?;
    // A sandbox without its pause container yet is a live pod all the same.
    live.extend(containerd.sandbox_ids(&config.namespace).await.map_err(SweepError::Containerd)?);
    report.counts.live_containers = live.len() as u64;

    let names = network_names(config)?;
    let (networks_dir, grace, listed) = (config.networks_dir.clone(), config.grace_period, config.networks.is_some());
    let scans = tokio::task::spawn_blocking(move || {
        let now = SystemTime::now();
        per_network(names, |name| scan(&networks_dir, name, &live, now, grace, listed))
    })
    .await
    .expect("the scan does not panic");
    let mut networks = Vec::new();
    for (network, part) in scans {
        merge(&mut report, part);
        networks.extend(network);
    }

    if dry_run {
        report.freed.reserve_exact(networks.iter().map(|n| n.leaked.len()).sum());
        report.freed.extend(networks.into_iter().flat_map(|n| n.leaked.into_iter().map(move |r| freed(&n.name, r))));
    } else {
        let locked = lock_all(networks, &mut report).await;
        if !locked.is_empty() {
            // Only while holding the locks: containerd must still be the instance
            // whose container list this sweep trusts.
            require_same_containerd(&mut containerd, &config.namespace).await?;
            report.freed.reserve_exact(locked.iter().map(|(n, _)| n.leaked.len()).sum());
            let parts =
                tokio::task::spawn_blocking(move || per_network(locked, free)).await.expect("freeing does not panic");
            parts.into_iter().for_each(|part| merge(&mut report, part));
        }
    }
    report.freed.sort_unstable();
    report.unswept.sort_unstable();
    report.missing.sort_unstable();
    report.counts.freed = report.freed.len() as u64;
    report.counts.errors = report.errors.len() as u64;
    report.counts.containerd_calls = containerd.calls();
    report.took = started.elapsed();
    Ok(report)
}

/// containerd answers an unknown namespace with an empty container list, which
/// would make every reservation look leaked: check that it exists.
async fn require_namespace(containerd: &mut Containerd, namespace: &str, timeout: Duration) -> Result<(), SweepError> {
    let namespaces = containerd.namespaces(timeout).await.map_err(SweepError::Containerd)?;
    if namespaces.iter().any(|n| n == namespace) {
        return Ok(());
    }
    Err(ContainerdError::NoNamespace { namespace: namespace.to_owned(), has: namespaces }.into())
}

/// Checks that containerd still answers on the connection the container list came
/// from. A call on a connection that containerd dropped fails once before the
/// channel reconnects, so a failure gets one retry: if that reconnects,
/// containerd restarted; if it fails too, containerd is gone.
async fn require_same_containerd(containerd: &mut Containerd, namespace: &str) -> Result<(), SweepError> {
    let mut result = require_namespace(containerd, namespace, RECHECK_TIMEOUT).await;
    if result.is_err() {
        result = require_namespace(containerd, namespace, RECHECK_TIMEOUT).await;
    }
    if containerd.connects() != 1 {
        return Err(ContainerdError::Restarted.into());
    }
    result
}

/// The configured networks, or every directory (not symlink) in `networks_dir`.
fn network_names(config: &IpamConfig) -> Result<Vec<String>, SweepError> {
    if let Some(names) = &config.networks {
        return Ok(names.clone());
    }
    let dir_error = |e: io::Error| SweepError::NetworksDir { path: config.networks_dir.clone(), reason: e.to_string() };
    let entries = match std::fs::read_dir(&config.networks_dir) {
        Ok(entries) => entries,
        // No CNI network has been used on this node yet.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(dir_error(err)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(dir_error)?;
        if entry.file_type().map_err(dir_error)?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Runs `work` on every item, spread over the machine's cores (networks are
/// independent: each has its own directory and lock).
fn per_network<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len()).max(1);
    let mut buckets: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        buckets[i % workers].push(item);
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = buckets
            .into_iter()
            .map(|bucket| scope.spawn(move || bucket.into_iter().map(work).collect::<Vec<R>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a sweep worker does not panic")).collect()
    })
}

/// Scans one network and keeps only its leaked reservations.
fn scan(
    networks_dir: &Path,
    name: String,
    live: &HashSet<String>,
    now: SystemTime,
    grace: Duration,
    listed: bool,
) -> (Option<Network>, SweepReport) {
    let mut report = SweepReport::default();
    let opened = NetworkDir::open(&networks_dir.join(&name)).and_then(|dir| Ok((dir.scan()?, dir)));
    let (scan, dir) = match opened {
        Ok(opened) => opened,
        Err(err) => {
            use rustix::io::Errno;
            match Errno::from_io_error(&err) {
                Some(Errno::NOENT) => report.missing.push(name),
                Some(Errno::LOOP) => report.errors.push(format!("{name}: is a symlink (not followed)")),
                Some(Errno::NOTDIR) => report.errors.push(format!("{name}: is not a directory")),
                _ => report.errors.push(format!("{name}: {err}")),
            }
            return (None, report);
        }
    };
    report.counts.networks += 1;
    report.counts.scanned += scan.reservations.len() as u64;
    report.counts.skipped += scan.skipped;
    report.errors.extend(scan.errors.into_iter().map(|e| format!("{name}/{e}")));
    let mut leaked = Vec::new();
    let mut live_here = 0;
    for reservation in scan.reservations {
        match classify(&reservation, live, now, grace) {
            Verdict::Live => live_here += 1,
            Verdict::YoungOrphan => report.counts.young_orphans_kept += 1,
            Verdict::Leaked => leaked.push(reservation),
        }
    }
    report.counts.live += live_here;
    if !listed && live_here == 0 && !leaked.is_empty() {
        // Nothing here belongs to the namespace's containers: rather another CNI
        // user's network than a fully leaked one. Only an explicit listing sweeps it.
        report.counts.skipped += leaked.len() as u64;
        report.unswept.push(name);
        return (None, report);
    }
    (Some(Network { name: name.into(), dir, leaked }), report)
}

/// Takes host-local's lock of every network that has something to free; a network
/// whose lock stays busy is skipped this time.
async fn lock_all(networks: Vec<Network>, report: &mut SweepReport) -> Vec<(Network, HostLocalLock)> {
    let mut locked = Vec::new();
    for network in networks.into_iter().filter(|n| !n.leaked.is_empty()) {
        match lock(&network.dir).await {
            Ok(lock) => locked.push((network, lock)),
            Err(err) => {
                report.counts.skipped += network.leaked.len() as u64;
                report.errors.push(format!("{}: {err}", network.name));
            }
        }
    }
    locked
}

async fn lock(dir: &NetworkDir) -> io::Result<HostLocalLock> {
    let started = Instant::now();
    loop {
        if let Some(lock) = dir.try_lock()? {
            return Ok(lock);
        }
        if started.elapsed() > LOCK_WAIT {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("host-local's lock stayed busy for {LOCK_WAIT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Frees a locked network's leaked reservations that are still as scanned.
fn free((network, lock): (Network, HostLocalLock)) -> SweepReport {
    let mut report = SweepReport::default();
    for reservation in network.leaked {
        match network.dir.free_if_unchanged(&reservation, &lock) {
            Ok(true) => report.freed.push(freed(&network.name, reservation)),
            Ok(false) => report.counts.changed_since_scan += 1,
            Err(err) => report.errors.push(format!("{}/{}: {err}", network.name, reservation.ip)),
        }
    }
    report
}

fn freed(network: &Arc<str>, reservation: Reservation) -> Freed {
    Freed { network: network.clone(), ip: reservation.ip, owner: reservation.owner.unwrap_or_default() }
}

fn merge(into: &mut SweepReport, part: SweepReport) {
    let (a, b) = (&mut into.counts, part.counts);
    a.networks += b.networks;
    a.changed_since_scan += b.changed_since_scan;
    a.scanned += b.scanned;
    a.live += b.live;
    a.young_orphans_kept += b.young_orphans_kept;
    a.skipped += b.skipped;
    into.freed.extend(part.freed);
    into.errors.extend(part.errors);
    into.unswept.extend(part.unswept);
    into.missing.extend(part.missing);
}
