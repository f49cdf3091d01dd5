//! Compiles the eBPF C programs in `bpf/` with clang-19 into objects embedded in
//! the crate (BTF included: aya needs it, and the layout test reads it).

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["lb"];
const CLANG: &str = "clang-19";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=bpf");
    for program in PROGRAMS {
        let object = out.join(format!("{program}.o"));
        let status = Command::new(CLANG)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-mcpu=v3",
                "-Wall",
                "-Werror",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(format!("bpf/{program}.c"))
            .arg("-o")
            .arg(&object)
            .status()
            .unwrap_or_else(|e| panic!("{CLANG} (package clang-19, `cargo xtask setup` installs it): {e}"));
        assert!(status.success(), "{CLANG} failed to compile bpf/{program}.c");
    }
}
