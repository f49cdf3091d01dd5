//! Whole-node boot tests: the node image booted under QEMU (TCG), checked from
//! inside by the guest scripts in `guest/` and from outside by its console.
//!
//! Boots are shared between checks (each boot costs tens of seconds under
//! emulation) but every check is its own test and fails on its own: the first
//! boot runs the checks of a fresh node, the second boots the same state disk
//! with an invalid node.toml, and the UEFI test boots the disk image. Boots run
//! one at a time. Needs the image: `cargo xtask test` builds it first.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use nodeplane_qemu::{Boot, Console, Firmware, GuestResults, Image, Vm, copy_disk};

/// One VM at a time: two cores, and TCG wants both.
static BOOTS: Mutex<()> = Mutex::new(());

/// The first boot's node.toml: quick re-checks, a short IPAM grace period,
/// the node's IP on QEMU's user network (where NodePorts are), and metrics on
/// every address (the host scrapes them through QEMU's network).
const GOOD_CONFIG: &str = "[sysctl]\ncheck_interval = \"1s\"\n\n[ipam]\ngrace_period = \"1m\"\ninterval = \"1h\"\n\n\
                           [datapath]\npod_cidr = \"10.244.0.0/24\"\nnode_ip = \"10.0.2.15\"\n\n\
                           [metrics]\nlisten = \"all\"\n";
/// The NodePort the first boot's script programs.
const NODE_PORT: u16 = 30080;
/// The metrics endpoint's port (`[metrics]`'s default).
const METRICS_PORT: u16 = 9970;
/// Invalid: an ephemeral range overlapping the NodePorts (and an unknown key).
const BAD_CONFIG: &str = "[sysctl]\nephemeral_range = \"20000-40000\"\ncheck_intervall = \"1s\"\n";

fn image() -> Image {
    nodeplane_qemu::built_image().unwrap_or_else(|e| panic!("{e}"))
}

/// What a boot left: the guest's results and the console.
struct Outcome {
    results: GuestResults,
    console: String,
    /// Why the boot itself went wrong (the VM did not finish its script).
    failure: Option<String>,
}

impl Outcome {
    /// Asserts that the guest check `name` passed; returns its output.
    fn check(&self, name: &str) -> String {
        let Some((rc, out)) = self.results.check(name) else {
            panic!(
                "check {name} did not run: {}\n--- console (last 60 lines) ---\n{}",
                self.failure.as_deref().unwrap_or("no result"),
                nodeplane_qemu::tail(&self.console, 60)
            );
        };
        assert_eq!(rc, "0", "check {name} failed:\n{out}");
        out.to_owned()
    }
}

/// Boots directly from the image with `state` as its state disk, runs `script`
/// (from `guest/`) and waits for the guest to power off.
fn boot_and_run(script: &str, config: &str, state: &Path) -> Outcome {
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = image();
    let dir = tempfile::Builder::new().prefix("nodeplane-boot-").tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
    for file in ["lib.sh", script] {
        std::fs::copy(guest.join(file), share.join(file)).unwrap();
    }
    std::fs::copy(nodeplane_qemu::np_guest(), share.join("np-guest")).unwrap();
    let config_file = dir.path().join("node.toml");
    std::fs::write(&config_file, config).unwrap();
    let console = dir.path().join("console.log");
    let (host_port, metrics_port) = (free_port(), free_port());
    let boot = Boot {
        image: &image,
        firmware: Firmware::Direct { state: state.to_owned() },
        console: Console::File(console.clone()),
        config: Some(&config_file),
        share: Some(&share),
        kernel_args: nodeplane_qemu::run_from_share(script),
        forward: vec![(host_port, NODE_PORT), (metrics_port, METRICS_PORT)],
        netdev: Vec::new(),
        lan: None,
    };
    let mut vm = Vm::start(boot).expect("start QEMU");
    let host_share = share.clone();
    std::thread::spawn(move || answer_host_requests(&host_share, host_port, metrics_port));
    let failure = vm.wait_exit(Duration::from_secs(900)).err().map(|e| e.to_string());
    let results = GuestResults::collect(&share.join("results"));
    let failure = failure.or_else(|| results.file("done").is_none().then(|| "the guest script did not finish".into()));
    Outcome { console: vm.console(), results, failure }
}

/// A TCP port free on the host's loopback right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// When the guest asks, from the host through QEMU's user network: connects
/// to the forwarded NodePort (`results/host-request`) and writes the reply, or
/// the error, to `host-reply`; scrapes the forwarded metrics endpoint
/// (`results/metrics-request`) and writes what it found to `metrics-reply`.
/// The guest records both in its checks.
fn answer_host_requests(share: &Path, host_port: u16, metrics_port: u16) {
    let results = share.join("results");
    let (mut node_port_done, mut metrics_done) = (false, false);
    while !(node_port_done && metrics_done || results.join("done").exists()) {
        if !node_port_done && results.join("host-request").exists() {
            let answer = nodeplane_testkit::tcp_request(std::net::Ipv4Addr::LOCALHOST, host_port)
                .unwrap_or_else(|e| format!("error: {e}"));
            let _ = std::fs::write(share.join("host-reply"), answer);
            node_port_done = true;
        }
        if !metrics_done && results.join("metrics-request").exists() {
            let _ = std::fs::write(share.join("metrics-reply"), scrape_report(metrics_port));
            metrics_done = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both expositions of the guest's metrics, parsed by the Prometheus
/// project's parsers: `scraped` and `key=value` lines, or the error.
fn scrape_report(port: u16) -> String {
    use nodeplane_testkit::{Exposition, scrape};
    let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let scraped =
        scrape(address, Exposition::Text).and_then(|text| Ok((text, scrape(address, Exposition::OpenMetrics)?)));
    let (text, open) = match scraped {
        Ok(both) => both,
        Err(err) => return format!("error: {err}\n"),
    };
    let value = |name: &str, labels: &[(&str, &str)]| text.value(name, labels).map_or(-1, |v| v as i64);
    let healthy = |component| value("nodeplane_component_state", &[("component", component), ("state", "healthy")]);
    format!(
        "scraped\ntext_content_type={}\nopenmetrics_content_type={}\nopenmetrics_families={}\n\
         service_flows={}\nservice_ports={}\npolicy_drops_ingress_peer={}\nconntrack_capacity={}\n\
         datapath_healthy={}\nsysctl_healthy={}\n",
        text.content_type,
        open.content_type,
        open.families.len(),
        value("nodeplane_datapath_flows_total", &[("kind", "service")]),
        value("nodeplane_datapath_service_ports", &[]),
        value("nodeplane_datapath_policy_drops_total", &[("direction", "ingress"), ("reason", "peer")]),
        value("nodeplane_datapath_conntrack_capacity", &[]),
        healthy("datapath"),
        healthy("sysctl"),
    )
}

/// The state disk of the first boot, kept for the second; one file in the
/// target directory, so no run leaves another behind.
fn state_disk() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-state.img")
}

fn first_boot() -> &'static Outcome {
    static FIRST: OnceLock<Outcome> = OnceLock::new();
    FIRST.get_or_init(|| {
        let state = state_disk();
        copy_disk(&image().state_template(), &state).unwrap();
        boot_and_run("first-boot.sh", GOOD_CONFIG, &state)
    })
}

fn second_boot() -> &'static Outcome {
    static SECOND: OnceLock<Outcome> = OnceLock::new();
    SECOND.get_or_init(|| {
        first_boot();
        boot_and_run("second-boot.sh", BAD_CONFIG, &state_disk())
    })
}

/// Microseconds of a `key=value` line in a check's output.
fn figure(out: &str, key: &str) -> u64 {
    nodeplane_qemu::reported(out, key).unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

#[test]
fn nodeplaned_is_ready_before_containerd_starts() {
    let out = first_boot().check("ready");
    let ready = figure(&out, "nodeplaned_ready_us");
    eprintln!("boot to nodeplaned READY (direct kernel boot, TCG): {:.1} s", ready as f64 / 1e6);
}

#[test]
fn a_clean_boot_has_no_failed_units() {
    let out = first_boot().check("no-failed-units");
    eprintln!("boot to multi-user.target: {:.1} s", figure(&out, "multi_user_us") as f64 / 1e6);
}

#[test]
fn the_root_is_read_only_and_etc_a_volatile_overlay() {
    first_boot().check("root-read-only");
    first_boot().check("etc-overlay");
}

#[test]
fn the_port_range_stays_clear_of_nodeports_and_they_are_reserved() {
    let out = first_boot().check("sysctls");
    assert!(out.contains("SYSCTL_RESTORED"), "the restore is in the journal with its fields:\n{out}");
}

#[test]
fn health_is_served_over_dbus() {
    let out = first_boot().check("dbus");
    assert!(out.contains("healthy"), "{out}");
}

/// The most an idle node of 1.5 GiB may charge to nodeplaned's cgroup.
const IDLE_MEMORY_GOAL: u64 = 30_000_000;

#[test]
fn an_idle_node_sizes_its_maps_from_its_memory_and_its_supervisor_stays_small() {
    let out = first_boot().check("memory");
    let memory = figure(&out, "mem_total_kib") * 1024;
    let expected = nodeplane_datapath::Capacities::for_memory(memory);
    for (map, capacity) in expected.iter() {
        let line = out.lines().find_map(|l| l.strip_prefix(&format!("map_{map}="))).unwrap_or_else(|| {
            panic!("no map_{map} in:\n{out}");
        });
        let shown = line.split_once('/').and_then(|(_, rest)| rest.split(',').next()).unwrap_or_default();
        assert_eq!(shown, capacity.to_string(), "{map} for {memory} bytes of memory:\n{out}");
    }
    let current = figure(&out, "memory_current_bytes");
    eprintln!("idle nodeplaned.service memory.current: {:.1} MB\n{out}", current as f64 / 1e6);
    assert!(current < IDLE_MEMORY_GOAL, "nodeplaned's cgroup holds {current} bytes:\n{out}");
}

#[test]
fn pods_made_through_the_cni_plugin_reach_each_other_and_a_service() {
    first_boot().check("datapath");
}

#[test]
fn the_nodes_own_processes_reach_a_cluster_ip_through_socket_load_balancing() {
    let out = first_boot().check("socket-lb");
    assert!(!out.contains("count_sock_balanced=0"), "{out}");
}

#[test]
fn network_policy_blocks_and_allows_in_the_nodes_datapath_and_drops_are_monitored() {
    let out = first_boot().check("network-policy");
    assert!(out.contains("receives: nothing"), "only role=friend, and no pod has it:\n{out}");
    assert!(out.contains("from default/client ("), "then role=client:\n{out}");
}

#[test]
fn the_reachability_probe_runs_on_the_node_and_cleans_up() {
    let out = first_boot().check("probe");
    let json = first_boot().results.file("probe.json").expect("the guest's probe.json");
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}\n{out}"));
    assert_eq!(rows.len(), 81, "9 pods × 9 on TCP 80");
    let connected = |from: &str, to: &str| {
        rows.iter().find(|r| r["from"] == from && r["to"] == to).unwrap_or_else(|| panic!("{from} -> {to}"))["connected"]
            .clone()
    };
    // examples/xyz/policy.yaml: x accepts y on TCP 80, and x/b on anything.
    assert_eq!(connected("y/c", "x/a"), true, "{json}");
    assert_eq!(connected("z/a", "x/b"), false, "{json}");
    assert_eq!(connected("x/b", "x/c"), true, "{json}");
    assert_eq!(connected("x/a", "z/c"), true, "{json}");
}

#[test]
fn a_node_port_is_reachable_from_the_host_side_of_qemus_network() {
    first_boot().check("node-port");
}

/// Scraped from the host through QEMU's port forwarding, after the kill -9:
/// the socket is systemd's, on every address as `[metrics] listen = "all"`
/// asked, and the counters show the boot's traffic.
#[test]
fn the_metrics_endpoint_is_scraped_from_the_host_after_a_restart() {
    let out = first_boot().check("metrics");
    eprintln!("{out}");
    let all = |l: &str| l.starts_with("[::]:9970 ") || l.starts_with("0.0.0.0:9970 ");
    assert!(out.lines().any(all), "listening on all addresses:\n{out}");
    assert!(out.contains("text_content_type=text/plain; version=0.0.4"), "{out}");
    assert!(out.contains("openmetrics_content_type=application/openmetrics-text; version=1.0.0"), "{out}");
    assert!(figure(&out, "openmetrics_families") > 20, "{out}");
    // The resilience check's request loop alone opened hundreds of Service flows.
    assert!(figure(&out, "service_flows") > 20, "{out}");
    assert!(figure(&out, "service_ports") >= 2, "{out}");
    assert!(figure(&out, "policy_drops_ingress_peer") >= 1, "{out}");
    assert!(figure(&out, "conntrack_capacity") > 0, "{out}");
    assert_eq!((figure(&out, "datapath_healthy"), figure(&out, "sysctl_healthy")), (1, 1), "{out}");
}

#[test]
fn leaked_reservations_are_freed_and_live_ones_kept() {
    first_boot().check("ipam");
}

#[test]
fn kill_9_of_nodeplaned_loses_no_request() {
    let out = first_boot().check("resilience");
    let line = out.lines().find(|l| l.starts_with("requests=")).expect("the loop's counts");
    let requests: u64 = line.split_whitespace().next().unwrap()["requests=".len()..].parse().unwrap();
    assert!(requests > 20, "too few requests to tell: {line}");
}

#[test]
fn var_persists_across_a_reboot() {
    first_boot().check("mark-var");
    second_boot().check("var-persisted");
}

#[test]
fn an_invalid_node_toml_is_reported_and_the_node_comes_up_with_the_last_good_one() {
    second_boot().check("bad-config");
    assert!(
        second_boot().console.contains("is invalid and was NOT applied"),
        "the console shows the report:\n{}",
        nodeplane_qemu::tail(&second_boot().console, 40)
    );
}

#[test]
fn the_uefi_disk_image_boots_to_ready() {
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = image();
    let dir = tempfile::Builder::new().prefix("nodeplane-uefi-").tempdir().unwrap();
    let disk = dir.path().join("nodeplane.img");
    copy_disk(&image.disk(), &disk).unwrap();
    let mut vm = Vm::start(uefi_boot(&image, disk, dir.path().join("console.log"))).expect("start QEMU");
    let took = vm
        .wait_console("== end of nodeplane status (exit 0) ==", Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{e}\n--- console ---\n{}", nodeplane_qemu::tail(&vm.console(), 60)));
    eprintln!("UEFI disk image: QEMU start to a healthy status on the console: {:.1} s", took.as_secs_f64());
    let console = vm.console();
    assert!(
        console.contains("nodeplane: slot a: root verified by dm-verity"),
        "{}",
        nodeplane_qemu::tail(&console, 80)
    );
}

/// A boot of the disk image `disk` (a copy), its console to `console`.
fn uefi_boot(image: &Image, disk: PathBuf, console: PathBuf) -> Boot<'_> {
    Boot {
        image,
        firmware: Firmware::Uefi { disk },
        console: Console::File(console),
        config: None,
        share: None,
        kernel_args: Vec::new(),
        forward: Vec::new(),
        netdev: Vec::new(),
        lan: None,
    }
}

/// The byte offset of partition `label` on `disk` (sfdisk's JSON).
fn partition_offset(disk: &Path, label: &str) -> u64 {
    let out = std::process::Command::new("sfdisk").arg("--json").arg(disk).output().expect("sfdisk");
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let part = parts.iter().find(|p| p["name"] == label).unwrap_or_else(|| panic!("no partition {label}: {table}"));
    part["start"].as_u64().unwrap() * 512
}

/// dm-verity holds: one byte changed in slot a's root (in the erofs
/// superblock, read first at mount) and the kernel refuses the block and
/// restarts rather than run a root it cannot vouch for.
#[test]
fn a_root_with_one_flipped_byte_is_refused() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = image();
    let dir = tempfile::Builder::new().prefix("nodeplane-uefi-").tempdir().unwrap();
    let disk = dir.path().join("nodeplane.img");
    copy_disk(&image.disk(), &disk).unwrap();
    let at = partition_offset(&disk, &nodeplane_image::root_label("a")) + 1100;
    let mut file = std::fs::File::options().read(true).write(true).open(&disk).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 1]).unwrap();
    drop(file);
    let mut vm = Vm::start(uefi_boot(&image, disk, dir.path().join("console.log"))).expect("start QEMU");
    // -no-reboot: the restart dm-verity asks for ends QEMU.
    let exit = vm.wait_exit(Duration::from_secs(600));
    let console = vm.console();
    let tail = nodeplane_qemu::tail(&console, 40);
    assert!(exit.is_ok(), "{exit:?}\n{tail}");
    assert!(console.contains("data block 0 is corrupted"), "{tail}");
    assert!(!console.contains("nodeplane status"), "{tail}");
}

/// Appends `options` to the `options` line of `entry` on the ESP of `disk`.
fn add_entry_options(disk: &Path, entry: &str, options: &str) {
    let esp = format!("{}@@{}", disk.display(), partition_offset(disk, "ESP"));
    let path = format!("::/loader/entries/{entry}");
    let out = std::process::Command::new("mtype").args(["-i", &esp, &path]).output().expect("mtype (mtools)");
    assert!(out.status.success(), "{out:?}");
    let text: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| if l.starts_with("options ") { format!("{l} {options}\n") } else { format!("{l}\n") })
        .collect();
    let scratch = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(scratch.path(), text).unwrap();
    let out = std::process::Command::new("mcopy")
        .args(["-o", "-i", &esp])
        .arg(scratch.path())
        .arg(&path)
        .output()
        .expect("mcopy (mtools)");
    assert!(out.status.success(), "{out:?}");
}

/// Flips one bit of the byte at `at` in `disk`.
fn flip_byte(disk: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::File::options().read(true).write(true).open(disk).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(at)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&[byte[0] ^ 1]).unwrap();
}

/// What an update scenario left: the guest's results and every boot's console.
struct Updated {
    results: GuestResults,
    consoles: String,
}

impl Updated {
    fn check(&self, name: &str) -> String {
        let Some((rc, out)) = self.results.check(name) else {
            panic!(
                "check {name} did not run\n--- consoles (last 80 lines) ---\n{}",
                nodeplane_qemu::tail(&self.consoles, 80)
            );
        };
        assert_eq!(
            rc,
            "0",
            "check {name} failed:\n{out}\n--- consoles (last 60 lines) ---\n{}",
            nodeplane_qemu::tail(&self.consoles, 60)
        );
        out.to_owned()
    }

    /// The slots booted, in order.
    fn boots(&self) -> Vec<String> {
        self.results.file("boots").unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// Runs the A/B update `scenario` of `guest/update.sh` on a copy of the
/// disk image, booting it again each time it restarts (QEMU runs with
/// -no-reboot), until the guest is done; slot b's entry gets the test's
/// options and `b_options`. With `tamper`, one byte of slot b's root is
/// flipped once the update is written.
fn update_scenario(scenario: &str, b_options: &str, tamper: bool) -> Updated {
    let _one_at_a_time = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let image = image();
    let dir = tempfile::Builder::new().prefix("nodeplane-update-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
    for file in ["lib.sh", "update.sh"] {
        std::fs::copy(guest.join(file), share.join(file)).unwrap();
    }
    std::fs::copy(nodeplane_qemu::np_guest(), share.join("np-guest")).unwrap();
    let bundle = share.join("nodeplane-update.tar");
    if std::fs::hard_link(image.bundle(), &bundle).is_err() {
        std::fs::copy(image.bundle(), &bundle).unwrap();
    }
    std::fs::write(share.join("scenario"), scenario).unwrap();
    let run = nodeplane_qemu::run_from_share("update.sh").join(" ");
    std::fs::write(share.join("entry-options"), format!("{run} {b_options}")).unwrap();
    let disk = dir.path().join("nodeplane.img");
    copy_disk(&image.disk(), &disk).unwrap();
    add_entry_options(&disk, "nodeplane-a.conf", &run);
    let mut consoles = String::new();
    let mut flipped = false;
    for boot in 1..=6 {
        let console = dir.path().join(format!("console-{boot}.log"));
        let mut vm = Vm::start(Boot { share: Some(&share), ..uefi_boot(&image, disk.clone(), console) }).expect("QEMU");
        let exit = vm.wait_exit(Duration::from_secs(900));
        consoles += &format!("\n===== boot {boot} =====\n{}", vm.console());
        if exit.is_err() || share.join("results/done").exists() {
            break;
        }
        if tamper && !flipped && share.join("results/update.rc").exists() {
            flip_byte(&disk, partition_offset(&disk, &nodeplane_image::root_label("b")) + 1100);
            flipped = true;
        }
    }
    Updated { results: GuestResults::collect(&share.join("results")), consoles }
}

/// `nodeplanectl update` moves a node from slot a to slot b: b boots next,
/// proves itself (nodeplane-boot-check) and is marked good; a stays, for a
/// rollback; /var is kept.
#[test]
fn an_update_moves_the_node_to_the_other_slot_which_is_marked_good() {
    let updated = update_scenario("update", "", false);
    let update = updated.check("update");
    eprintln!("{update}");
    let good = updated.check("updated");
    eprintln!("{good}");
    assert_eq!(updated.boots(), ["a", "b"]);
    assert!(update.contains("slot b: nodeplane ") && update.contains("written and verified"), "{update}");
    assert!(good.lines().any(|l| l.starts_with("a ") && l.ends_with("good")), "slot a kept, good:\n{good}");
    let bundle = std::fs::metadata(image().bundle()).unwrap().len();
    eprintln!(
        "bundle {} MiB; nodeplanectl update {} ms; from the update to slot b marked good {} ms",
        bundle >> 20,
        figure(&update, "update_ms"),
        figure(&good, "update_to_good_ms")
    );
}

/// A slot b whose nodeplaned cannot start fails its boot check; the node
/// reboots until b's two tries are spent, then slot a boots again and says
/// why (status and journal).
#[test]
fn a_broken_update_rolls_back_to_the_old_slot_by_itself() {
    let updated = update_scenario("broken", "systemd.mask=nodeplaned.service", false);
    updated.check("update");
    let back = updated.check("rolled-back");
    eprintln!("{back}");
    assert_eq!(updated.boots().first().map(String::as_str), Some("a"));
    assert_eq!(updated.boots().last().map(String::as_str), Some("a"));
    assert_eq!(updated.consoles.matches("nodeplane: slot b: root verified by dm-verity").count(), 2, "two tries of b");
}

/// One byte of slot b's root flipped after the update: dm-verity refuses it
/// at each of its tries, and slot a boots again.
#[test]
fn a_tampered_update_is_refused_and_the_old_slot_boots() {
    let updated = update_scenario("tampered", "", true);
    updated.check("update");
    let back = updated.check("rolled-back");
    eprintln!("{back}");
    assert_eq!(updated.consoles.matches("data block 0 is corrupted").count(), 2, "{}", updated.consoles);
    assert_eq!(updated.boots(), ["a", "a"]);
}
