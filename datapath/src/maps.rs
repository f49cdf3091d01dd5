//! Typed handles on the loaded object's maps, shared by the concerns that
//! program them.

use std::os::fd::{AsFd, AsRawFd};

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
        // aya reports a delete of a missing key as the syscall's ENOENT.
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The key after `key` in `map` (the first with `None`); `None` at the end.
/// For resuming a walk where it stopped, which aya's iterators cannot.
pub(crate) fn next_key<K: aya::Pod>(map: &MapData, key: Option<&K>) -> Result<Option<K>, DatapathError> {
    /// `union bpf_attr` as BPF_MAP_GET_NEXT_KEY reads it.
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut next = std::mem::MaybeUninit::<K>::zeroed();
    let attr = Attr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        pad: 0,
        key: key.map_or(0, |k| k as *const K as u64),
        next_key: next.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a live key (or none) and at room for one; the
    // kernel reads the first and writes the second, sized by the map's key.
    let status = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, &attr as *const Attr, std::mem::size_of::<Attr>())
    };
    if status == 0 {
        // SAFETY: the kernel wrote a whole key (K is the map's key type: plain data).
        return Ok(Some(unsafe { next.assume_init() }));
    }
    match std::io::Error::last_os_error() {
        err if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        err => Err(DatapathError::Map(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_get_next_key",
            io_error: err,
        }))),
    }
}
