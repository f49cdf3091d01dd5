//! Upstream components built from source with Go, from pinned module versions
//! (`image/upstream/*/go.mod`): the kubelet and containerd 2 for the node
//! image; etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//! kubectl for the test control plane; kube-proxy for `cargo xtask bench api`.
//! `CGO_ENABLED=0`, with the version
//! ldflags upstream's own build sets, so `/version` and the node info are
//! truthful.
//!
//! Binaries are cached by component and version under the cache directory
//! (`~/.cache/nodeplane/upstream/NAME-VERSION/`): only the first build on a
//! machine pays (tens of minutes for Kubernetes on two cores). A cache entry
//! records the recipe it was built from (go.mod, go.sum, flags) and is rebuilt
//! when that changes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{ImageError, io, run};

/// Binaries built from one Go module.
pub struct Component {
    /// Its cache name.
    pub name: &'static str,
    /// The Go module it is built from: its directory under `image/upstream/`.
    module: &'static str,
    pub version: &'static str,
    /// Package path → binary name.
    pub binaries: &'static [(&'static str, &'static str)],
    /// `-X` settings for the version (`-ldflags`).
    version_flags: &'static [&'static str],
    tags: &'static str,
}

pub const KUBERNETES: Component = Component {
    name: "kubernetes",
    module: "kubernetes",
    version: "v1.37.2",
    binaries: &[
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("k8s.io/kubernetes/cmd/kube-controller-manager", "kube-controller-manager"),
        ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
    ],
    version_flags: KUBERNETES_VERSION_FLAGS,
    tags: "",
};

/// kube-proxy from the same Kubernetes release, apart because only `cargo
/// xtask bench api` runs it (as the anchor users know): the node never does.
pub const KUBE_PROXY: Component = Component {
    name: "kube-proxy",
    module: "kubernetes",
    version: KUBERNETES.version,
    binaries: &[("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy")],
    version_flags: KUBERNETES_VERSION_FLAGS,
    tags: "",
};

const KUBERNETES_VERSION_FLAGS: &[&str] = &[
    "k8s.io/component-base/version.gitVersion=v1.37.2",
    "k8s.io/component-base/version.gitMajor=1",
    "k8s.io/component-base/version.gitMinor=37",
    "k8s.io/component-base/version.gitTreeState=clean",
    "k8s.io/client-go/pkg/version.gitVersion=v1.37.2",
    "k8s.io/client-go/pkg/version.gitMajor=1",
    "k8s.io/client-go/pkg/version.gitMinor=37",
    "k8s.io/client-go/pkg/version.gitTreeState=clean",
];

pub const ETCD: Component = Component {
    name: "etcd",
    module: "etcd",
    version: "v3.7.3",
    binaries: &[("go.etcd.io/etcd/server/v3", "etcd")],
    version_flags: &[],
    tags: "",
};

pub const CONTAINERD: Component = Component {
    name: "containerd",
    module: "containerd",
    version: "v2.4.2",
    binaries: &[
        ("github.com/containerd/containerd/v2/cmd/containerd", "containerd"),
        ("github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2", "containerd-shim-runc-v2"),
        ("github.com/containerd/containerd/v2/cmd/ctr", "ctr"),
    ],
    version_flags: &[
        "github.com/containerd/containerd/v2/version.Version=v2.4.2",
        "github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2",
    ],
    // Neither snapshotter is on a node: btrfs would need cgo.
    tags: "no_btrfs no_devmapper",
};

/// The cache directory `cargo xtask` uses: `$XDG_CACHE_HOME/nodeplane`, else
/// `~/.cache/nodeplane` (outside the repository, so fresh clones share it).
pub fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("nodeplane")
}

impl Component {
    /// Where this component's binaries are cached under `cache` (built or not).
    pub fn cached(&self, cache: &Path) -> PathBuf {
        cache.join("upstream").join(format!("{}-{}", self.name, self.version))
    }

    /// The directory holding this component's binaries, built now if the cache
    /// has no build of this recipe (`repo`: the repository, `cache`: the cache
    /// directory).
    pub fn ensure(&self, repo: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
        let module = repo.join("image/upstream").join(self.module);
        let recipe = self.recipe(&module)?;
        let dir = self.cached(cache);
        let stamp = dir.join(".recipe");
        if std::fs::read_to_string(&stamp).is_ok_and(|built| built == recipe) {
            return Ok(dir);
        }
        let partial = dir.with_file_name(format!("{}-{}.partial", self.name, self.version));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let ldflags: String = ["-s", "-w"]
            .iter()
            .map(|f| f.to_string())
            .chain(self.version_flags.iter().map(|f| format!("-X {f}")))
            .collect::<Vec<_>>()
            .join(" ");
        let started = Instant::now();
        for (package, binary) in self.binaries {
            run(
                &format!(
                    "go build {binary} {} (not cached on this machine: a first build takes minutes)",
                    self.version
                ),
                Command::new("go")
                    .current_dir(&module)
                    .env("CGO_ENABLED", "0")
                    .args(["build", "-trimpath", "-tags", self.tags, "-ldflags", &ldflags, "-o"])
                    .arg(partial.join(binary))
                    .arg(package),
            )?;
        }
        eprintln!("==> {} {} built in {:.0} s", self.name, self.version, started.elapsed().as_secs_f64());
        std::fs::write(partial.join(".recipe"), &recipe).map_err(io(&partial))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// What a build depends on besides the Go toolchain: the module's go.mod and
    /// go.sum, the flags and the Go version.
    fn recipe(&self, module: &Path) -> Result<String, ImageError> {
        let read = |name: &str| std::fs::read_to_string(module.join(name)).map_err(io(&module.join(name)));
        let go = Command::new("go").arg("version").output().map_err(|source| ImageError::Spawn {
            what: "go version".into(),
            program: "go".into(),
            source,
        })?;
        Ok(format!(
            "{}\n{:?} {:?} {:?}\n{}\n{}",
            String::from_utf8_lossy(&go.stdout).trim(),
            self.binaries,
            self.version_flags,
            self.tags,
            read("go.mod")?,
            read("go.sum")?
        ))
    }
}

/// The pause container's tag, as Kubernetes 1.37 builds it (`build/pause`).
pub const PAUSE_VERSION: &str = "3.10.2";
/// Its image name: what containerd's config pins as the sandbox image.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.2";

/// Kubernetes' pause program (`build/pause/linux/pause.c` of the pinned
/// k8s.io/kubernetes module), compiled static as upstream does, into the cache.
pub fn pause(repo: &Path, cache: &Path) -> Result<PathBuf, ImageError> {
    let module = repo.join("image/upstream").join(KUBERNETES.name);
    let out = Command::new("go")
        .current_dir(&module)
        .args(["list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"])
        .output()
        .map_err(|source| ImageError::Spawn { what: "go list".into(), program: "go".into(), source })?;
    if !out.status.success() {
        return Err(ImageError::Failed { what: "go list -m k8s.io/kubernetes".into(), status: out.status });
    }
    let source = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("build/pause/linux/pause.c");
    let dir = cache.join("upstream").join(format!("pause-{PAUSE_VERSION}"));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let binary = dir.join("pause");
    run(
        "compile pause.c (static)",
        Command::new("gcc")
            .args(["-Os", "-Wall", "-Werror", "-static", "-s", &format!("-DVERSION=v{PAUSE_VERSION}"), "-o"])
            .arg(&binary)
            .arg(&source),
    )?;
    Ok(binary)
}
