//! `cargo xtask bench boot` (`cargo bench -p nodeplane-qemu --bench boot`, after
//! `cargo xtask image`): how long the node image takes to boot under QEMU
//! (TCG), and nodeplane's share of it. Direct kernel boots with and without
//! nodeplaned (`systemd.mask=nodeplaned.service`) alternate for three rounds;
//! the guest reports its own times (monotonic since the kernel started). One UEFI
//! boot of the disk image is timed from QEMU's start to the health on its console.
//! And, since emulation is about ten times slower than hardware, nodeplaned's own
//! start natively: the release binary the image carries, spawned on this host in
//! a network namespace of its own with a private bus and bpffs, to READY. Medians
//! are printed.

use std::time::{Duration, Instant};

use nodeplane_qemu::{Boot, Console, Firmware, Image, Vm, copy_disk};
use nodeplane_testkit::bench::run_bench;

const ROUNDS: usize = 3;

/// Runs in the guest: waits for the boot to finish, writes the times, powers off.
const PROBE: &str = r#"#!/bin/sh
systemctl is-system-running --wait >/dev/null
t() { systemctl show -P "$2" "$1"; }
{
  echo "userspace_us=$(t -- UserspaceTimestampMonotonic)"
  echo "multi_user_us=$(t multi-user.target ActiveEnterTimestampMonotonic)"
  echo "nodeplaned_ready_us=$(t nodeplaned.service ActiveEnterTimestampMonotonic)"
} > /mnt/times
systemctl poweroff
"#;

struct Times {
    userspace: f64,
    multi_user: f64,
    ready: f64,
}

fn main() -> std::process::ExitCode {
    run_bench("boot", bench)
}

fn bench() -> Result<(), nodeplane_testkit::Error> {
    let image = nodeplane_qemu::built_image()?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 1..=ROUNDS {
        for masked in [false, true] {
            let times = boot_direct(&image, masked)?;
            eprintln!(
                "round {round}, nodeplaned {}: kernel+initrd {:.1} s, multi-user.target {:.1} s, nodeplaned READY {:.1} s",
                if masked { "masked" } else { "enabled" },
                times.userspace,
                times.multi_user,
                times.ready
            );
            if masked { &mut without } else { &mut with }.push(times);
        }
    }
    let uefi = boot_uefi(&image)?;
    let mut native = native_ready()?;
    native.sort_by(f64::total_cmp);
    let median = |v: &[Times], f: fn(&Times) -> f64| {
        let mut values: Vec<f64> = v.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (mu_with, mu_without) = (median(&with, |t| t.multi_user), median(&without, |t| t.multi_user));
    println!("\nboot under QEMU TCG, medians of {ROUNDS} (seconds since the kernel started):");
    println!("| boot | nodeplaned READY | multi-user.target |");
    println!("|---|---|---|");
    println!("| direct, nodeplaned enabled | {:.1} | {mu_with:.1} |", median(&with, |t| t.ready));
    println!("| direct, nodeplaned masked | – | {mu_without:.1} |");
    println!("nodeplane's share of boot-to-multi-user: {:+.2} s", mu_with - mu_without);
    println!("UEFI disk image, QEMU start (firmware included) to a healthy status on the console: {uefi:.1} s");
    println!(
        "nodeplaned natively, spawn to READY (maps created afresh, datapath loaded), median of {}: {:.0} ms",
        native.len(),
        native[native.len() / 2] * 1e3
    );
    Ok(())
}

fn boot_direct(image: &Image, masked: bool) -> Result<Times, nodeplane_testkit::Error> {
    let dir = tempfile::tempdir()?;
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share)?;
    std::fs::write(share.join("probe.sh"), PROBE)?;
    let state = dir.path().join("state.img");
    copy_disk(&image.state_template(), &state)?;
    let mut kernel_args = nodeplane_qemu::run_from_share("probe.sh");
    if masked {
        kernel_args.push("systemd.mask=nodeplaned.service".into());
    }
    let boot = Boot {
        image,
        firmware: Firmware::Direct { state },
        console: Console::File(dir.path().join("console.log")),
        config: None,
        share: Some(&share),
        kernel_args,
        forward: Vec::new(),
        netdev: Vec::new(),
        lan: None,
    };
    let mut vm = Vm::start(boot)?;
    vm.wait_exit(Duration::from_secs(600))?;
    let text = std::fs::read_to_string(share.join("times")).map_err(|e| format!("the guest wrote no times: {e}"))?;
    let value = |key: &str| {
        nodeplane_qemu::reported(&text, key).map(|us| us as f64 / 1e6).ok_or_else(|| format!("no {key} in {text:?}"))
    };
    Ok(Times {
        userspace: value("userspace_us")?,
        multi_user: value("multi_user_us")?,
        ready: value("nodeplaned_ready_us")?,
    })
}

fn boot_uefi(image: &Image) -> Result<f64, nodeplane_testkit::Error> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("nodeplane.img");
    copy_disk(&image.disk(), &disk)?;
    let boot = Boot {
        image,
        firmware: Firmware::Uefi { disk },
        console: Console::File(dir.path().join("console.log")),
        config: None,
        share: None,
        kernel_args: Vec::new(),
        forward: Vec::new(),
        netdev: Vec::new(),
        lan: None,
    };
    let mut vm = Vm::start(boot)?;
    let took = vm.wait_console("== end of nodeplane status (exit 0) ==", Duration::from_secs(600))?;
    Ok(took.as_secs_f64())
}

/// nodeplaned's start on this host, spawn to READY, five times.
fn native_ready() -> Result<Vec<f64>, nodeplane_testkit::Error> {
    use nodeplane_testkit::{Bpffs, DbusDaemon, Launch, Nodeplaned};
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/org.nodeplane.Node1.conf");
    // The release build the image carries: beside this benchmark's own directory.
    let exe = std::env::current_exe()?;
    let binary = exe.ancestors().nth(2).ok_or("the benchmark is not in a target directory")?.join("nodeplaned");
    let mut times = Vec::new();
    for _ in 0..5 {
        let bus = DbusDaemon::start(&[&policy]).map_err(|e| format!("private bus: {e}"))?;
        let bpffs = Bpffs::mount().map_err(|e| format!("private bpffs: {e}"))?;
        let manifests = tempfile::tempdir()?;
        let config = nodeplane_testkit::datapath_config(&bpffs, manifests.path(), "");
        let launch = Launch {
            binary: &binary,
            config: &config,
            preset: &[],
            env: &[],
            capture_stderr: true,
            journal: None,
            netns: None,
            metrics: None,
        };
        let started = Instant::now();
        let node = Nodeplaned::spawn(&bus, launch).map_err(|e| format!("nodeplaned: {e}"))?;
        node.wait_ready(Duration::from_secs(30)).map_err(|e| format!("{e}\n{}", node.stderr()))?;
        times.push(started.elapsed().as_secs_f64());
        node.stop(Duration::from_secs(10))?;
    }
    Ok(times)
}
