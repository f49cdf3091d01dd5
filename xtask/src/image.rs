//! `cargo xtask image`: release builds of nodeplane's binaries, laid into the
//! node image (see the `nodeplane-image` crate), written to `target/image/`.

use std::path::PathBuf;
use std::time::Instant;

use nodeplane_image::{Image, Inputs};

/// The only target nodeplane builds for; named for the static echo build.
const HOST: &str = "x86_64-unknown-linux-gnu";

/// Where the debootstrapped base, downloaded packages and the upstream
/// components built from source are kept between builds.
pub fn cache_dir() -> PathBuf {
    nodeplane_image::upstream::default_cache()
}

pub fn out_dir() -> PathBuf {
    crate::target_dir().join("image")
}

/// The image's version: the workspace's, and the commit it is built from
/// (`+dirty` with uncommitted changes).
fn version() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(crate::root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty());
    format!("{}+{commit}{}", env!("CARGO_PKG_VERSION"), if dirty { ".dirty" } else { "" })
}

/// Builds the image (the base comes from the cache when the package list is unchanged).
pub fn build() -> Result<Image, String> {
    crate::packages::ensure()?;
    if !crate::is_root() {
        return Err("building the image needs root (debootstrap, chroot)".into());
    }
    let started = Instant::now();
    crate::step(
        "build the release binaries",
        crate::cargo().args(["build", "--release", "-p", "nodeplane", "--bins"]),
    )?;
    // Static (glibc's crt-static): the test container image holds nothing else.
    crate::step(
        "build nodeplane-echo (static)",
        crate::cargo()
            .args(["build", "--release", "-p", "nodeplane-echo", "--target", HOST])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )?;
    let inputs = Inputs {
        repo: crate::root(),
        binaries: crate::target_dir().join("release"),
        cache: cache_dir().join("image"),
        upstream_cache: cache_dir(),
        echo: crate::target_dir().join(HOST).join("release/nodeplane-echo"),
        version: version(),
    };
    let image = nodeplane_image::build(&inputs, &out_dir()).map_err(|e| e.to_string())?;
    let size = |p: PathBuf| std::fs::metadata(&p).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0);
    eprintln!(
        "==> image built in {:.0} s at {}: root {:.0} MiB, kernel {:.1} MiB, initrd {:.1} MiB",
        started.elapsed().as_secs_f64(),
        image.dir.display(),
        size(image.root()),
        size(image.kernel()),
        size(image.initrd())
    );
    Ok(image)
}
