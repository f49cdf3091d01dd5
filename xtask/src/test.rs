//! `cargo xtask test`: everything, in the order that fails fastest.

use std::process::Command;

pub fn test() -> Result<(), String> {
    crate::packages::ensure()?;
    crate::step(
        "format check",
        crate::cargo().args(["fmt", "--all", "--", "--check"]),
    )?;
    crate::step(
        "lints",
        crate::cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    crate::step("tests", crate::cargo().args(["test", "--workspace"]))?;
    crate::step(
        "smoke run (cargo xtask run --once)",
        Command::new(std::env::current_exe().map_err(|e| e.to_string())?).args(["run", "--once"]),
    )?;
    eprintln!("==> all checks passed");
    Ok(())
}
