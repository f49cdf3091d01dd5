//! Typed handles on the loaded object's maps, shared by the concerns that
//! program them.

use aya::Ebpf;
use aya::maps::{HashMap, MapData, MapError};

use crate::DatapathError;

/// The hash map `name` of the object, with key and value twins `K` and `V`.
pub(crate) fn hash<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, K, V>, DatapathError> {
    Ok(HashMap::try_from(map(ebpf, name)?)?)
}

/// The map `name` of the object.
pub(crate) fn map<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map, DatapathError> {
    ebpf.map_mut(name).ok_or(DatapathError::Missing(name))
}

/// A removal's result, where the entry being gone already is as good as removed.
pub(crate) fn removed(result: Result<(), MapError>) -> Result<(), DatapathError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(err) => Err(err.into()),
    }
}
