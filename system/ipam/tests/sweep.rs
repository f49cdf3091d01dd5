//! The sweeper against a real containerd (private instance) and the real CNI
//! host-local plugin writing reservations into a temporary data directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nodeplane_ipam::{ContainerdError, IpamConfig, SweepError, sweep};
use nodeplane_testkit::{Containerd, HostLocal, backdate, privileged, sandbox_id};

const NS: &str = "k8s.io";
const HOUR: Duration = Duration::from_secs(3600);

fn network(data: &Path, name: &str, ranges: Vec<Vec<&'static str>>) -> HostLocal {
    HostLocal { name: name.into(), data_dir: data.to_owned(), ranges }
}

fn config(ctrd: &Containerd, data: &Path) -> IpamConfig {
    IpamConfig {
        networks_dir: data.to_owned(),
        containerd_socket: ctrd.socket().to_owned(),
        namespace: NS.into(),
        ..IpamConfig::default()
    }
}

/// Every entry of a directory: kind, content (or link target) and mtime.
fn snapshot(dir: &Path) -> BTreeMap<String, (String, Vec<u8>, i64, i64)> {
    let mut entries = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        let (kind, content) = if meta.is_symlink() {
            ("symlink", fs::read_link(entry.path()).unwrap().into_os_string().into_encoded_bytes())
        } else if meta.is_dir() {
            ("dir", Vec::new())
        } else {
            ("file", fs::read(entry.path()).unwrap())
        };
        entries
            .insert(entry.file_name().into_string().unwrap(), (kind.into(), content, meta.mtime(), meta.mtime_nsec()));
    }
    entries
}

fn write_reservation(dir: &Path, ip: &str, content: &str, age: Duration) -> PathBuf {
    let path = dir.join(ip);
    fs::write(&path, content).unwrap();
    backdate(&path, age);
    path
}

#[tokio::test(flavor = "current_thread")]
async fn one_sweep_frees_exactly_the_old_leaked_reservations_and_host_local_reuses_them() {
    if !privileged("one_sweep_frees_exactly_the_old_leaked_reservations_and_host_local_reuses_them") {
        return;
    }
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let net_a = network(data.path(), "net-a", vec![vec!["10.22.0.0/28"]]);
    let net_b = network(data.path(), "net-b", vec![vec!["10.23.0.0/28"], vec!["fd00:23::/124"]]);
    let (live1, live3, live4) = (sandbox_id("live1"), sandbox_id("live3"), sandbox_id("live4"));
    let (dead1, dead2, dead3) = (sandbox_id("dead1"), sandbox_id("dead2"), sandbox_id("dead3"));
    ctrd.create_containers(
        NS,
        &[live1.clone(), live3.clone(), live4.clone(), dead1.clone(), dead2.clone(), dead3.clone()],
    )
    .await;

    let ip_live1 = net_a.add(&live1, "eth0").unwrap();
    let ip_dead1 = net_a.add(&dead1, "eth0").unwrap();
    let ip_dead2 = net_a.add(&dead2, "eth0").unwrap(); // deleted, but young
    let ips_live3 = net_b.add(&live3, "eth0").unwrap(); // dual stack: two files
    let ips_dead3 = net_b.add(&dead3, "eth0").unwrap();
    assert_eq!((ips_live3.len(), ips_dead3.len()), (2, 2));
    for dead in [&dead1, &dead2, &dead3] {
        ctrd.delete_container(NS, dead).await;
    }
    for ip in ip_dead1.iter() {
        backdate(&net_a.dir().join(ip.to_string()), HOUR);
    }
    for ip in ips_dead3.iter().chain(&ips_live3).chain(&ip_live1) {
        let dir = if ip_live1.contains(ip) { net_a.dir() } else { net_b.dir() };
        backdate(&dir.join(ip.to_string()), HOUR); // live ones are old too: age alone frees nothing
    }
    let a = net_a.dir();
    write_reservation(&a, "10.22.0.12", &live4, HOUR); // old bare-id format, live
    write_reservation(&a, "10.22.0.13", &sandbox_id("gone-bare"), HOUR); // old bare-id format, leaked
    write_reservation(&a, "10.22.0.14", "", HOUR); // empty and old: leaked
    write_reservation(&a, "10.22.0.11", "", Duration::ZERO); // empty but young
    write_reservation(&a, "notes.txt", &sandbox_id("gone"), HOUR); // not an address: not a reservation
    std::os::unix::fs::symlink("10.22.0.13", a.join("10.22.0.10")).unwrap(); // a symlink is never one
    backdate(&a.join("10.22.0.10"), HOUR);
    fs::create_dir(a.join("10.22.0.9")).unwrap();
    let before = (snapshot(&a), snapshot(&net_b.dir()));
    assert!(before.0.contains_key("lock") && before.0.contains_key("last_reserved_ip.0"));

    let report = sweep(&config(&ctrd, data.path()), false).await.unwrap();

    let freed: BTreeSet<(String, IpAddr)> = report.freed.iter().map(|f| (f.network.to_string(), f.ip)).collect();
    let mut expected: BTreeSet<(String, IpAddr)> = BTreeSet::new();
    expected.insert(("net-a".into(), ip_dead1[0]));
    expected.insert(("net-a".into(), "10.22.0.13".parse().unwrap()));
    expected.insert(("net-a".into(), "10.22.0.14".parse().unwrap()));
    expected.extend(ips_dead3.iter().map(|ip| ("net-b".to_owned(), *ip)));
    assert_eq!(freed, expected);
    let owners: BTreeMap<IpAddr, String> = report.freed.iter().map(|f| (f.ip, f.owner.clone())).collect();
    assert_eq!(owners[&ip_dead1[0]], dead1);
    assert_eq!(owners[&"10.22.0.13".parse().unwrap()], sandbox_id("gone-bare"));
    assert_eq!(owners[&"10.22.0.14".parse().unwrap()], "");
    assert_eq!(report.counts.scanned, 11, "{report:?}"); // net-a: live1, dead1, dead2, .11-.14; net-b: 4
    // net-a: lock, last_reserved_ip.0, notes.txt, the symlink, the directory; net-b:
    // lock and one last_reserved_ip per range set.
    assert_eq!(report.counts.skipped, 8, "{report:?}");
    assert_eq!(report.counts.live, 4, "{report:?}"); // live1, live3 (two), live4
    assert_eq!(report.counts.young_orphans_kept, 2, "{report:?}"); // dead2, the young empty file
    assert_eq!(report.counts.live_containers, 3);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        report.counts.containerd_calls, 4,
        "Namespaces.List, Containers.ListStream, sandbox.Store.List, Namespaces.List under the locks"
    );

    // Everything else is byte-for-byte and time-for-time as it was.
    let gone: BTreeSet<String> = expected.iter().map(|(_, ip)| ip.to_string()).collect();
    for (dir, before) in [(&a, &before.0), (&net_b.dir(), &before.1)] {
        let mut kept = before.clone();
        kept.retain(|name, _| !gone.contains(name));
        assert_eq!(&snapshot(dir), &kept, "{}", dir.display());
    }
    assert!(ip_dead2.iter().all(|ip| a.join(ip.to_string()).exists()));

    // host-local still works and hands the freed addresses out again.
    let mut handed_out = BTreeSet::new();
    for n in 0.. {
        match net_a.add(&sandbox_id(&format!("new{n}")), "eth0") {
            Ok(ips) => handed_out.extend(ips),
            Err(err) => {
                assert!(err.to_string().contains("no IP addresses available"), "{err}");
                break;
            }
        }
    }
    for ip in gone.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()).filter(|ip| ip.to_string().starts_with("10.22.")) {
        assert!(handed_out.contains(&ip), "freed {ip} was not handed out again: {handed_out:?}");
    }
    net_a.del(&live1, "eth0").unwrap();
    assert!(!a.join(ip_live1[0].to_string()).exists(), "DEL still frees");
}

#[tokio::test(flavor = "current_thread")]
async fn dry_run_frees_nothing_and_reports_what_a_real_sweep_then_frees() {
    if !privileged("dry_run_frees_nothing_and_reports_what_a_real_sweep_then_frees") {
        return;
    }
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let net = network(data.path(), "dry", vec![vec!["10.25.0.0/28"]]);
    let live = sandbox_id("live");
    ctrd.create_containers(NS, std::slice::from_ref(&live)).await;
    net.add(&live, "eth0").unwrap();
    for n in 0..4 {
        for ip in net.add(&sandbox_id(&format!("orphan{n}")), "eth0").unwrap() {
            backdate(&net.dir().join(ip.to_string()), HOUR);
        }
    }
    let before = snapshot(&net.dir());
    let dry = sweep(&config(&ctrd, data.path()), true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.freed.len(), 4);
    assert_eq!(snapshot(&net.dir()), before, "a dry run touches nothing");
    let real = sweep(&config(&ctrd, data.path()), false).await.unwrap();
    assert_eq!(real.freed, dry.freed);
}

/// containerd 2 records a pod sandbox in its sandbox store before the CNI ADD
/// and may create the pause container later: such a pod is live.
#[tokio::test(flavor = "current_thread")]
async fn a_sandbox_recorded_before_its_pause_container_exists_is_live() {
    if !privileged("a_sandbox_recorded_before_its_pause_container_exists_is_live") {
        return;
    }
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let net = network(data.path(), "sandboxes", vec![vec!["10.26.0.0/28"]]);
    let (recorded, gone) = (sandbox_id("recorded"), sandbox_id("gone"));
    nodeplane_testkit::create_sandboxes(ctrd.socket(), NS, std::slice::from_ref(&recorded)).await;
    for id in [&recorded, &gone] {
        for ip in net.add(id, "eth0").unwrap() {
            backdate(&net.dir().join(ip.to_string()), HOUR);
        }
    }
    let report = sweep(&config(&ctrd, data.path()), false).await.unwrap();
    let freed: Vec<&str> = report.freed.iter().map(|r| r.owner.as_str()).collect();
    assert_eq!(freed, [gone.as_str()], "{report:?}");
    assert_eq!(report.counts.live_containers, 1, "the sandbox counts as live");
}

#[tokio::test(flavor = "current_thread")]
async fn containerd_stopped_or_missing_namespace_frees_nothing_and_says_why() {
    if !privileged("containerd_stopped_or_missing_namespace_frees_nothing_and_says_why") {
        return;
    }
    let mut ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let net = network(data.path(), "fail", vec![vec!["10.26.0.0/28"]]);
    ctrd.create_containers(NS, &[sandbox_id("someone")]).await;
    for ip in net.add(&sandbox_id("orphan"), "eth0").unwrap() {
        backdate(&net.dir().join(ip.to_string()), HOUR);
    }
    let before = snapshot(&net.dir());

    let wrong_ns = IpamConfig { namespace: "no-such-ns".into(), ..config(&ctrd, data.path()) };
    let err = sweep(&wrong_ns, false).await.unwrap_err();
    assert!(
        matches!(&err, SweepError::Containerd(m) if m.to_string().contains("no namespace \"no-such-ns\"") && m.to_string().contains("k8s.io")),
        "{err}"
    );
    assert!(err.to_string().ends_with("nothing freed"));

    ctrd.stop();
    let err = sweep(&config(&ctrd, data.path()), false).await.unwrap_err();
    assert!(matches!(&err, SweepError::Containerd(ContainerdError::Unreachable { .. })), "{err}");
    assert_eq!(snapshot(&net.dir()), before);
}

/// Holds host-local's lock on `dir` like a running ADD would.
fn hold_lock(dir: &Path) -> fs::File {
    let lock = fs::File::open(dir.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

#[tokio::test(flavor = "current_thread")]
async fn containerd_stopped_or_restarted_mid_sweep_frees_nothing() {
    if !privileged("containerd_stopped_or_restarted_mid_sweep_frees_nothing") {
        return;
    }
    for restart in [false, true] {
        let mut ctrd = Containerd::start().unwrap();
        let data = tempfile::tempdir().unwrap();
        let net = network(data.path(), "mid", vec![vec!["10.27.0.0/28"]]);
        ctrd.create_containers(NS, &[sandbox_id("someone")]).await;
        net.add(&sandbox_id("someone"), "eth0").unwrap();
        for ip in net.add(&sandbox_id("orphan"), "eth0").unwrap() {
            backdate(&net.dir().join(ip.to_string()), HOUR);
        }
        let before = snapshot(&net.dir());
        // The sweep lists containers, then waits for host-local's lock, which we hold
        // while containerd goes away (and, the second time, comes back).
        let lock = hold_lock(&net.dir());
        let config = config(&ctrd, data.path());
        let sweeping = tokio::spawn(async move { sweep(&config, false).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        if restart {
            ctrd.start_again().unwrap()
        } else {
            ctrd.stop()
        }
        drop(lock);
        let err = sweeping.await.unwrap().unwrap_err();
        let expected = if restart { "containerd restarted during the sweep" } else { "Namespaces.List failed" };
        assert!(err.to_string().contains(expected), "restart={restart}: {err}");
        assert_eq!(snapshot(&net.dir()), before, "restart={restart}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn racing_host_local_never_loses_a_live_reservation_or_doubles_an_address() {
    if !privileged("racing_host_local_never_loses_a_live_reservation_or_doubles_an_address") {
        return;
    }
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    // A small range, so addresses come round again quickly.
    let net = Arc::new(network(data.path(), "race", vec![vec!["10.28.0.0/28"]]));
    let live: Vec<String> = (0..6).map(|n| sandbox_id(&format!("racer{n}"))).collect();
    ctrd.create_containers(NS, &live).await;
    // No grace: an orphan is leaked the moment the sweeper sees it. Listed, so the
    // moments when only orphans hold addresses are swept too.
    let config =
        IpamConfig { grace_period: Duration::ZERO, networks: Some(vec!["race".into()]), ..config(&ctrd, data.path()) };

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (net, stop) = (net.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                // Orphans (no container record) whose CNI DEL races the sweeper: the
                // dangerous case is an orphan's address freed by DEL and handed to a
                // live container between the sweeper's scan and its unlink.
                let orphans: Vec<String> = (0..4).map(|n| sandbox_id(&format!("orphan{rounds}x{n}"))).collect();
                for orphan in &orphans {
                    net.add(orphan, "eth0").unwrap();
                }
                for orphan in &orphans {
                    net.del(orphan, "eth0").unwrap();
                }
                let mut held: HashMap<IpAddr, String> = HashMap::new();
                for owner in &live {
                    for ip in net.add(owner, "eth0").unwrap() {
                        if let Some(other) = held.insert(ip, owner.clone()) {
                            panic!("{ip} handed to {owner} while {other} holds it");
                        }
                    }
                }
                for (ip, owner) in &held {
                    let content = fs::read(net.dir().join(ip.to_string()))
                        .unwrap_or_else(|e| panic!("live reservation {ip} of {owner} was removed: {e}"));
                    assert!(content.starts_with(owner.as_bytes()), "{ip} no longer names {owner}");
                }
                for owner in &live {
                    net.del(owner, "eth0").unwrap();
                }
                rounds += 1;
            }
            rounds
        })
    };
    let (mut sweeps, mut freed, mut changed_under_us) = (0, 0, 0);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) && !churn.is_finished() {
        let report = sweep(&config, false).await.unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.freed.iter().all(|f| f.owner.contains("orphan")), "{:?}", report.freed);
        freed += report.freed.len();
        changed_under_us += report.counts.changed_since_scan;
        sweeps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().expect("no live reservation lost, no address doubled");
    eprintln!("{sweeps} sweeps, {rounds} rounds, {freed} freed, {changed_under_us} changed between scan and lock");
    assert!(sweeps > 10 && rounds > 3 && freed > 0, "too little overlap");
}

#[tokio::test(flavor = "current_thread")]
async fn a_reservation_that_changes_while_the_sweeper_waits_for_the_lock_is_left_alone() {
    if !privileged("a_reservation_that_changes_while_the_sweeper_waits_for_the_lock_is_left_alone") {
        return;
    }
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let net = network(data.path(), "recheck", vec![vec!["10.29.0.0/28"]]);
    let live = sandbox_id("live");
    ctrd.create_containers(NS, std::slice::from_ref(&live)).await;
    net.add(&live, "eth0").unwrap();
    let orphans: Vec<(IpAddr, PathBuf)> = (0..3)
        .map(|n| {
            let ip = net.add(&sandbox_id(&format!("orphan{n}")), "eth0").unwrap()[0];
            let path = net.dir().join(ip.to_string());
            backdate(&path, HOUR);
            (ip, path)
        })
        .collect();
    // The sweep scans, finds three leaked, then waits for host-local's lock — held
    // here like a running CNI ADD/DEL — while the files change under it.
    let lock = hold_lock(&net.dir());
    let config = config(&ctrd, data.path());
    let sweeping = tokio::spawn(async move { sweep(&config, false).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 0: DEL of the orphan and ADD of a live pod that got the same address.
    fs::remove_file(&orphans[0].1).unwrap();
    fs::write(&orphans[0].1, format!("{live}\r\neth1")).unwrap();
    // 1: same owner, same file, but touched (a different modification time).
    backdate(&orphans[1].1, HOUR / 2);
    // 2: untouched: still leaked, freed.
    drop(lock);
    let report = sweeping.await.unwrap().unwrap();
    assert_eq!(report.freed.iter().map(|f| f.ip).collect::<Vec<_>>(), [orphans[2].0]);
    assert_eq!(report.counts.changed_since_scan, 2, "{report:?}");
    assert_eq!(fs::read_to_string(&orphans[0].1).unwrap(), format!("{live}\r\neth1"));
    assert!(orphans[1].1.exists() && !orphans[2].1.exists());
}

#[tokio::test(flavor = "current_thread")]
async fn a_network_with_no_live_reservation_is_swept_only_when_listed() {
    if !privileged("a_network_with_no_live_reservation_is_swept_only_when_listed") {
        return;
    }
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    // Another CNI user's network (say nerdctl's `bridge`): its containers live in
    // another namespace, so none of its reservations has an owner in k8s.io.
    let foreign = network(data.path(), "bridge", vec![vec!["10.31.0.0/28"]]);
    ctrd.create_containers(NS, &[sandbox_id("pod")]).await;
    ctrd.create_containers("default", &[sandbox_id("nerdctl-container")]).await;
    let ip = foreign.add(&sandbox_id("nerdctl-container"), "eth0").unwrap()[0];
    backdate(&foreign.dir().join(ip.to_string()), HOUR);

    let report = sweep(&config(&ctrd, data.path()), false).await.unwrap();
    assert!(report.freed.is_empty());
    assert_eq!(report.unswept, ["bridge"]);
    assert!(foreign.dir().join(ip.to_string()).exists());

    let listed = IpamConfig { networks: Some(vec!["bridge".into(), "not-yet".into()]), ..config(&ctrd, data.path()) };
    let report = sweep(&listed, false).await.unwrap();
    assert_eq!(report.freed.iter().map(|f| f.ip).collect::<Vec<_>>(), [ip]);
    assert_eq!(report.missing, ["not-yet"]);
    assert!(report.unswept.is_empty());
}
