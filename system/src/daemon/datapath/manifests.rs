//! The manifests directory as the datapath component reads it: again only
//! when a file changed (names, sizes, times), keeping what cannot be read safe.
//! The API source's problems and policy inputs are taken the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nodeplane_model::manifests::{ManifestError, Manifests, ServicePort, load_dir};
use nodeplane_model::policy::{Labels, PodManifest, Policy};

/// What the directory said the last time it was read.
#[derive(Default)]
pub(super) struct ManifestSource {
    /// Names, sizes and times of the files at the last read.
    fingerprint: Vec<(PathBuf, u64, SystemTime)>,
    /// Problems of the last read, the first one first in the status.
    pub errors: Vec<String>,
    /// Namespace → labels, Pods and NetworkPolicies of the last read.
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodManifest>,
    pub policies: Vec<Policy>,
}

/// What a read found that is new.
pub(super) struct Changed {
    pub ports: Vec<ServicePort>,
    pub fingerprint: Vec<(PathBuf, u64, SystemTime)>,
}

impl ManifestSource {
    /// Reads `dir` when its files changed (or when `force`d); `None` when
    /// nothing is to be applied. A missing directory keeps the Services programmed.
    pub fn read(&mut self, dir: &Path, force: bool) -> Option<Changed> {
        let fingerprint = fingerprint(dir);
        if !dir.is_dir() {
            // A missing directory (a late mount, a typo) must not wipe every Service.
            self.errors = vec![format!("{}: not a directory; keeping the Services programmed", dir.display())];
            return None;
        }
        if !force && fingerprint == self.fingerprint {
            return None;
        }
        let ports = self.take(load_dir(dir), &dir.display().to_string());
        Some(Changed { ports, fingerprint })
    }

    /// Takes what the directory holds: its problems, Namespaces, Pods and —
    /// when every one read — NetworkPolicies; returns its Service ports.
    fn take(&mut self, mut found: Manifests, from: &str) -> Vec<ServicePort> {
        self.take_errors(&found.errors, found.policies_incomplete, from);
        let ports = std::mem::take(&mut found.ports);
        self.take_policy_inputs(found);
        ports
    }

    /// Takes a source's problems (each logged once, not at every read). With
    /// `policies_incomplete` the first one says that the policies in force stay.
    pub fn take_errors(&mut self, errors: &[ManifestError], policies_incomplete: bool, from: &str) {
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for (error, text) in errors.iter().zip(&texts).filter(|(_, text)| !self.errors.contains(text)) {
            tracing::warn!(datapath_manifest = %error.file.display(), "manifest skipped: {text}");
        }
        self.errors = texts;
        // A policy that could not be read might be the one isolating a pod:
        // the policies in force stay until every one reads.
        if policies_incomplete {
            // First: the status line shows the first problem.
            self.errors.insert(
                0,
                format!(
                    "NetworkPolicies not updated: an object in {from} that may be one could not be read; {} policies stay in force",
                    self.policies.len()
                ),
            );
        }
    }

    /// Takes a source's Namespaces, Pods and — unless one could not be read —
    /// NetworkPolicies.
    pub fn take_policy_inputs(&mut self, found: Manifests) {
        if !found.policies_incomplete {
            self.policies = found.policies;
        }
        (self.namespaces, self.pods) = (found.namespaces, found.pods);
    }

    /// Records that the read's Services were programmed: the same files are not
    /// read again until they change.
    pub fn applied(&mut self, fingerprint: Vec<(PathBuf, u64, SystemTime)>) {
        self.fingerprint = fingerprint;
    }
}

fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()?))
        })
        .collect();
    files.sort();
    files
}
