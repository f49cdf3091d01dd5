//! The pods the CNI plugin registered, one JSON file per container under
//! `[datapath] state_dir`/endpoints, so that a restarted nodeplaned still knows
//! them. The default directory is on a tmpfs (`/run`), which empties at reboot,
//! when the pods are gone too.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a pod registration could not be kept or forgotten.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid container id {0:?}: the CNI spec allows 1-200 letters, digits, '_', '.' and '-', starting with a letter or digit"
    )]
    InvalidContainerId(String),
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot store {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
}

/// A pod's network endpoint, as the CNI plugin registers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub container_id: String,
    pub netns: String,
    pub host_interface: String,
    pub ips: Vec<String>,
    pub pod_namespace: String,
    pub pod_name: String,
}

pub struct EndpointStore {
    dir: PathBuf,
}

impl EndpointStore {
    /// Opens (creating it, private to root) `state_dir/endpoints`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("endpoints");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Create { path: dir.clone(), source })?;
        Ok(EndpointStore { dir })
    }

    /// Every stored endpoint, by container id, and the files that could not be
    /// read (reported and left in place for a person to look at).
    pub fn load(&self) -> (BTreeMap<String, Endpoint>, Vec<String>) {
        let (mut found, mut errors) = (BTreeMap::new(), Vec::new());
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => return (found, vec![format!("{}: {e}", self.dir.display())]),
        };
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<Endpoint>(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(endpoint) if self.file(&endpoint.container_id).is_ok_and(|file| file == path) => {
                    found.insert(endpoint.container_id.clone(), endpoint);
                }
                Ok(endpoint) => errors.push(format!("{}: holds container {}", path.display(), endpoint.container_id)),
                Err(e) => errors.push(format!("{}: {e}", path.display())),
            }
        }
        (found, errors)
    }

    /// Stores an endpoint, replacing the one of the same container whole (a
    /// crash leaves the old file or the new one, never half of one).
    pub fn save(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        let path = self.file(&endpoint.container_id)?;
        let temporary = self.dir.join(format!(".{}.tmp", endpoint.container_id));
        let bytes = serde_json::to_vec_pretty(endpoint).expect("an endpoint serializes");
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| StoreError::Write { path, source })
    }

    /// Forgets an endpoint; one that is not stored is already forgotten.
    pub fn remove(&self, container_id: &str) -> Result<(), StoreError> {
        let path = self.file(container_id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Remove { path, source }),
        }
    }

    fn file(&self, container_id: &str) -> Result<PathBuf, StoreError> {
        check_container_id(container_id)?;
        Ok(self.dir.join(format!("{container_id}.json")))
    }
}

/// A container id that is a safe file name ([`nodeplane_bus::valid_container_id`]).
pub fn check_container_id(id: &str) -> Result<(), StoreError> {
    if nodeplane_bus::valid_container_id(id) { Ok(()) } else { Err(StoreError::InvalidContainerId(id.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str) -> Endpoint {
        Endpoint {
            container_id: id.into(),
            netns: "/var/run/netns/x".into(),
            host_interface: "np1234".into(),
            ips: vec!["10.244.0.5/24".into()],
            pod_namespace: "default".into(),
            pod_name: "web-0".into(),
        }
    }

    #[test]
    fn endpoints_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = EndpointStore::open(dir.path()).unwrap();
        store.save(&endpoint("abc")).unwrap();
        store.save(&endpoint("def")).unwrap();
        let (found, errors) = EndpointStore::open(dir.path()).unwrap().load();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(found.keys().collect::<Vec<_>>(), ["abc", "def"]);
        assert_eq!(found["abc"], endpoint("abc"));
        store.remove("abc").unwrap();
        store.remove("abc").unwrap();
        assert_eq!(store.load().0.keys().collect::<Vec<_>>(), ["def"]);
    }

    #[test]
    fn a_corrupt_file_is_reported_and_kept_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = EndpointStore::open(dir.path()).unwrap();
        store.save(&endpoint("good")).unwrap();
        let bad = dir.path().join("endpoints/bad.json");
        std::fs::write(&bad, "{\"container_id\": ").unwrap();
        let (found, errors) = store.load();
        assert_eq!(found.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with(&bad.display().to_string()), "{errors:?}");
        assert!(bad.exists());
    }

    #[test]
    fn container_ids_that_are_not_safe_file_names_are_refused() {
        for bad in ["", "../etc/passwd", ".hidden", "a/b", "a b", &"x".repeat(201)] {
            assert!(check_container_id(bad).is_err(), "{bad:?}");
        }
        check_container_id("0f3c_pod-1.sandbox").unwrap();
        let store = EndpointStore::open(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(store.save(&endpoint("../x")).unwrap_err().to_string().contains("invalid container id"));
    }
}
