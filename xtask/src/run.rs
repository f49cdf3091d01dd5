//! `cargo xtask run`: the main job. Builds the node image (cached) and boots it
//! under QEMU the way a user would try it: its serial console on this terminal,
//! logged in as root (`nodeplane.autologin`, development boots only), the node's
//! health printed as soon as nodeplaned is READY. `--headless` prints that
//! status and exits (0 when the node is healthy).
//!
//! The state disk (`/var`) is kept in `target/run/state.img` between runs; a
//! `node.toml` beside it (`target/run/node.toml`), when present, is passed to the
//! node as its configuration through fw_cfg.

use std::time::Duration;

use nodeplane_qemu::{Boot, Console, Firmware, Vm, copy_disk};

const STATUS_START: &str = "== nodeplane status ==";
const STATUS_END: &str = "== end of nodeplane status (exit ";

pub fn run(headless: bool) -> Result<(), String> {
    let image = crate::image::build()?;
    let dir = crate::target_dir().join("run");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let state = dir.join("state.img");
    if !state.exists() {
        copy_disk(&image.state_template(), &state).map_err(|e| e.to_string())?;
    }
    let config = dir.join("node.toml");
    let config = config.exists().then_some(config);
    if let Some(config) = &config {
        eprintln!("==> passing {} to the node (fw_cfg opt/org.nodeplane/node.toml)", config.display());
    }
    let console = dir.join("console.log");
    // Only this boot's console counts.
    let _ = std::fs::remove_file(&console);
    let boot = Boot {
        image: &image,
        firmware: Firmware::Direct { state },
        console: if headless { Console::File(console.clone()) } else { Console::Terminal },
        config: config.as_deref(),
        share: None,
        kernel_args: vec!["nodeplane.autologin".into()],
        forward: Vec::new(),
    };
    eprintln!("==> booting the node under QEMU (TCG; about a minute)");
    if !headless {
        eprintln!("    the serial console follows; `systemctl poweroff` (or Ctrl-A x) ends the VM");
    }
    let mut vm = Vm::start(boot).map_err(|e| e.to_string())?;
    if !headless {
        return vm.wait().map(drop).map_err(|e| e.to_string());
    }
    let took = vm
        .wait_console(STATUS_END, Duration::from_secs(600))
        .map_err(|e| format!("{e}; console in {}", console.display()))?;
    let text = vm.console();
    let start = text.rfind(STATUS_START).unwrap_or(0);
    let end = text[start..].find(STATUS_END).map_or(text.len(), |i| start + i);
    let exit_line = text[end..].lines().next().unwrap_or("");
    // journald's console copy prefixes each line with the time and `sh[PID]: `.
    for line in text[start..end].lines().skip(1) {
        if let Some((_, said)) = line.split_once("]: ").filter(|(prefix, _)| prefix.contains(" sh[")) {
            println!("{said}");
        }
    }
    eprintln!("==> status shown {:.0} s after QEMU started; console in {}", took.as_secs_f64(), console.display());
    if exit_line.contains("(exit 0)") { Ok(()) } else { Err(format!("the node is not healthy: {exit_line}")) }
}
