//! The IPAM sweeper inside the real `nodeplaned`: on demand over D-Bus and
//! `nodeplanectl sweep`, periodically, reported as facts and journal entries —
//! against a private containerd and reservations made by the real host-local.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use nodeplane_testkit::{Containerd, HostLocal, backdate, privileged, sandbox_id};

const HOUR: Duration = Duration::from_secs(3600);

/// A containerd with one live container and a network holding its reservation
/// plus `orphans` old ones whose containers are gone.
struct Leaky {
    ctrd: Containerd,
    data: tempfile::TempDir,
    net: HostLocal,
    live: IpAddr,
    orphans: Vec<(IpAddr, String)>,
}

async fn leaky(orphans: usize) -> Leaky {
    let ctrd = Containerd::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let net = HostLocal { name: "pods".into(), data_dir: data.path().to_owned(), ranges: vec![vec!["10.30.0.0/26"]] };
    ctrd.create_containers("k8s.io", &[sandbox_id("live")]).await;
    let live = net.add(&sandbox_id("live"), "eth0").unwrap()[0];
    let orphans = (0..orphans)
        .map(|n| {
            let owner = sandbox_id(&format!("orphan{n}"));
            let ip = net.add(&owner, "eth0").unwrap()[0];
            backdate(&net.dir().join(ip.to_string()), HOUR);
            (ip, owner)
        })
        .collect();
    Leaky { ctrd, data, net, live, orphans }
}

impl Leaky {
    fn config(&self, interval: &str) -> String {
        format!(
            "[ipam]\ninterval = \"{interval}\"\nnetworks_dir = \"{}\"\ncontainerd_socket = \"{}\"\n",
            self.data.path().display(),
            self.ctrd.socket().display()
        )
    }

    fn exists(&self, ip: IpAddr) -> bool {
        self.net.dir().join(ip.to_string()).exists()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nodeplanectl_sweep_dry_run_then_for_real_root_only() {
    if !privileged("nodeplanectl_sweep_dry_run_then_for_real_root_only") {
        return;
    }
    let leaky = leaky(3).await;
    let bus = bus();
    let node = start(&bus, &leaky.config("1h"), &[]);

    let denied = ctl_as_nobody(&bus, &["sweep"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(text(&denied.stderr).contains("sweep is for root only"), "{}", text(&denied.stderr));
    assert!(leaky.orphans.iter().all(|(ip, _)| leaky.exists(*ip)));

    let dry = ctl(&bus, &["sweep", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let listing = text(&dry.stdout);
    for (ip, owner) in &leaky.orphans {
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("pods") && l.contains(&ip.to_string()) && l.ends_with(owner.as_str())),
            "{listing}"
        );
        assert!(leaky.exists(*ip), "a dry run frees nothing");
    }
    assert!(
        listing.contains("would free 3 reservation(s); scanned 4, live 1, young orphans kept 0, changed under the lock 0, skipped 2, errors 0"),
        "{listing}"
    );

    let real = ctl(&bus, &["sweep"]);
    assert!(real.status.success(), "{}", text(&real.stderr));
    assert!(text(&real.stdout).contains("freed 3 reservation(s)"), "{}", text(&real.stdout));
    assert!(leaky.orphans.iter().all(|(ip, _)| !leaky.exists(*ip)));
    assert!(leaky.exists(leaky.live));

    let status = ctl(&bus, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let ipam = json["components"].as_array().unwrap().iter().find(|c| c["name"] == "ipam").unwrap().clone();
    assert_eq!(ipam["state"], "healthy");
    assert_eq!(ipam["facts"]["freed_total"], 3, "{ipam}");
    assert_eq!(ipam["facts"]["scanned"], 4);
    assert_eq!(ipam["facts"]["live_containers"], 1);
    assert_eq!(ipam["facts"]["containerd_calls"], 4);
    assert_eq!(ipam["facts"]["last_sweep_dry_run"], "false");
    assert!(ipam["detail"].as_str().unwrap().starts_with("last sweep freed 3 of 4 reservations"), "{ipam}");

    // The metrics: both sweeps timed, the real one's results.
    let metrics = scrape(node.metrics().address(), Exposition::OpenMetrics).unwrap();
    assert_eq!(metrics.value("nodeplane_ipam_sweeps_total", &[]), Some(2.0), "{metrics:?}");
    assert_eq!(metrics.value("nodeplane_ipam_freed_reservations_total", &[]), Some(3.0));
    assert_eq!(metrics.value("nodeplane_ipam_sweep_duration_seconds_count", &[]), Some(2.0));
    assert_eq!(metrics.value("nodeplane_ipam_last_sweep_reservations", &[("result", "freed")]), Some(3.0));
    assert_eq!(metrics.value("nodeplane_ipam_last_sweep_reservations", &[("result", "scanned")]), Some(4.0));
}

#[tokio::test(flavor = "current_thread")]
async fn containerd_down_degrades_the_component_and_frees_nothing() {
    if !privileged("containerd_down_degrades_the_component_and_frees_nothing") {
        return;
    }
    let mut leaky = leaky(2).await;
    let bus = bus();
    let _node = start(&bus, &leaky.config("1h"), &[]);
    leaky.ctrd.stop();
    let sweep = ctl(&bus, &["sweep"]);
    assert_eq!(sweep.status.code(), Some(1));
    assert!(text(&sweep.stderr).contains("the sweep could not run: containerd unreachable"), "{}", text(&sweep.stderr));
    assert!(leaky.orphans.iter().all(|(ip, _)| leaky.exists(*ip)));
    let status = ctl(&bus, &["status"]);
    assert_eq!(status.status.code(), Some(1), "a degraded node is not healthy");
    let table = text(&status.stdout);
    assert!(table.starts_with("node: degraded"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("ipam") && l.contains("degraded") && l.contains("containerd unreachable")),
        "{table}"
    );

    // Back up: the next sweep works and the component recovers.
    leaky.ctrd.start_again().unwrap();
    assert!(ctl(&bus, &["sweep"]).status.success());
    assert_eq!(ctl(&bus, &["status"]).status.code(), Some(0));
}

#[tokio::test(flavor = "current_thread")]
async fn periodic_sweeps_free_leaks_and_journal_each_address() {
    if !privileged("periodic_sweeps_free_leaks_and_journal_each_address") {
        return;
    }
    let leaky = leaky(2).await;
    let bus = bus();
    let mut journal = Journal::new().unwrap();
    let node = spawn_with_journal(&bus, &leaky.config("300ms"), &[], &[], Some(journal.dir.path()));
    node.wait_ready(READY_TIMEOUT).unwrap();
    let (ip, owner) = leaky.orphans[1].clone();
    journal.collect_until(Duration::from_secs(15), |e| e.get("IPAM_IP").is_some_and(|i| *i == ip.to_string()));
    let entry = journal.find("for the freed address", |e| e.get("IPAM_IP").is_some_and(|i| *i == ip.to_string()));
    assert_eq!(entry["NODEPLANE_COMPONENT"], "ipam");
    assert_eq!(entry["IPAM_NETWORK"], "pods");
    assert_eq!(entry["IPAM_OWNER"], owner);
    assert!(entry["MESSAGE"].starts_with(&format!("freed {ip} in network pods")), "{entry:?}");
    assert!(eventually(Duration::from_secs(5), || leaky.orphans.iter().all(|(ip, _)| !leaky.exists(*ip))));
    assert!(leaky.exists(leaky.live));
}
