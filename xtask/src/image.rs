//! `cargo xtask image`: release builds of nodeplane's binaries, laid into the
//! node image (see the `nodeplane-image` crate), written to `target/image/`.

use std::path::PathBuf;
use std::time::Instant;

use nodeplane_image::{Image, Inputs};

/// Where the debootstrapped base and downloaded packages are kept between builds
/// (outside the repository, so fresh clones share it).
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("nodeplane/image")
}

pub fn out_dir() -> PathBuf {
    crate::target_dir().join("image")
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
    let inputs = Inputs { repo: crate::root(), binaries: crate::target_dir().join("release"), cache: cache_dir() };
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
