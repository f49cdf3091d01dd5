//! Compiles the datapath's C in `../bpf/` with clang-19: `lb.o`, the programs
//! the crate embeds (BTF included: aya needs it, and the ABI test reads it),
//! and `abi.o`, which only the ABI test reads (the shared constants' BTF).

use std::path::PathBuf;
use std::process::Command;

const OBJECTS: &[&str] = &["lb", "abi"];
const CLANG: &str = "clang-19";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=../bpf");
    for object in OBJECTS {
        let output = out.join(format!("{object}.o"));
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
            .arg(format!("../bpf/{object}.c"))
            .arg("-o")
            .arg(&output)
            .status()
            .unwrap_or_else(|e| panic!("{CLANG} (package clang-19, `cargo xtask setup` installs it): {e}"));
        assert!(status.success(), "{CLANG} failed to compile bpf/{object}.c");
    }
}
