//! How many entries each map holds (its `max_entries`), chosen at load: in
//! proportion to the node's memory, with a floor and a ceiling per map, unless
//! `[datapath.maps]` sets it. The object's capacities ([`abi::MAPS`]) are the
//! reference, what a node of 64 GiB gets; a smaller node gets a power-of-two
//! share of them, never below the floor, so a small node does not spend its
//! memory on tables sized for a large one.
//!
//! The maps the programs write (conntrack and the LRU maps) are preallocated:
//! the kernel reserves all their entries at load, and a full conntrack refuses
//! new flows rather than fail to allocate in the packet path. The tables only
//! userspace writes allocate an entry when it is added; their capacity is a
//! limit, costing a bucket each.

use std::collections::BTreeMap;

use nodeplane_datapath_abi as abi;
use serde::{Deserialize, Serialize};

const GIB: u64 = 1 << 30;
/// The memory the reference capacities are for.
const REFERENCE_MEMORY: u64 = 64 * GIB;

/// A map whose capacity follows the node's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    pub map: &'static str,
    /// At a node of 64 GiB (the object's capacity).
    pub reference: u32,
    pub floor: u32,
    pub ceiling: u32,
}

/// Every map that is sized, in the order the README's table has them; the
/// others (the policy event ring, the config and counter arrays) have fixed sizes.
pub const SIZED: [Sizing; 13] = [
    sized(abi::CONNTRACK, 32_768, 4),
    sized(abi::AFFINITY, 8_192, 4),
    sized(abi::SOCK_REVNAT, 8_192, 4),
    sized(abi::FRAGMENTS, 1_024, 4),
    sized(abi::SERVICES, 16_384, 1),
    sized(abi::BACKENDS, 65_536, 1),
    sized(abi::BACKEND_ALIVE, 65_536, 1),
    sized(abi::ENDPOINTS, 1_024, 1),
    sized(abi::POD_IFACES, 1_024, 1),
    sized(abi::CT_OPENED, 1_024, 1),
    sized(abi::CT_CLOSED, 1_024, 1),
    // Tries allocate a node per entry and reserve nothing: no reason to shrink them.
    sized(abi::POLICY, u32::MAX, 1),
    sized(abi::POLICY_PORTS, u32::MAX, 1),
];

/// `floor` clipped to the reference; the ceiling `growth` × the reference.
const fn sized(map: &'static str, floor: u32, growth: u32) -> Sizing {
    let reference = reference(map);
    Sizing { map, reference, floor: if floor < reference { floor } else { reference }, ceiling: reference * growth }
}

const fn reference(map: &str) -> u32 {
    let mut i = 0;
    while i < abi::MAPS.len() {
        if const_eq(abi::MAPS[i].0, map) {
            return abi::MAPS[i].1;
        }
        i += 1;
    }
    panic!("a sized map is in abi::MAPS")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `[datapath.maps]`: a capacity (entries) per map, overriding the one the
/// node's memory gives. Named as the maps without their `np_` prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_revnat: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragments: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backends: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_alive: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_ifaces: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_opened: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct_closed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_ports: Option<u32>,
}

/// The largest capacity a setting may ask for (2^26 entries: 8 GiB of conntrack).
pub const MAX_SETTING: u32 = 1 << 26;
/// The smallest: a conntrack this small holds a handful of flows.
pub const MIN_SETTING: u32 = 64;

impl MapSettings {
    /// (map, setting) for each map; `None` where the memory decides.
    pub fn by_map(&self) -> [(&'static str, Option<u32>); 13] {
        [
            (abi::CONNTRACK, self.conntrack),
            (abi::AFFINITY, self.affinity),
            (abi::SOCK_REVNAT, self.sock_revnat),
            (abi::FRAGMENTS, self.fragments),
            (abi::SERVICES, self.services),
            (abi::BACKENDS, self.backends),
            (abi::BACKEND_ALIVE, self.backend_alive),
            (abi::ENDPOINTS, self.endpoints),
            (abi::POD_IFACES, self.pod_ifaces),
            (abi::CT_OPENED, self.ct_opened),
            (abi::CT_CLOSED, self.ct_closed),
            (abi::POLICY, self.policy),
            (abi::POLICY_PORTS, self.policy_ports),
        ]
    }

    /// The first setting out of range: (its key, why).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (map, setting) in self.by_map() {
            if let Some(entries) = setting.filter(|e| !(MIN_SETTING..=MAX_SETTING).contains(e)) {
                return Err((
                    setting_name(map),
                    format!("{entries} entries: a map's capacity must be from {MIN_SETTING} to {MAX_SETTING}"),
                ));
            }
        }
        Ok(())
    }
}

/// A map's key in `[datapath.maps]`: its name without `np_`.
pub fn setting_name(map: &'static str) -> &'static str {
    map.strip_prefix("np_").unwrap_or(map)
}

/// The capacity each sized map is loaded with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacities(BTreeMap<&'static str, u32>);

impl Capacities {
    /// The object's own capacities (a node of 64 GiB's).
    pub fn reference() -> Self {
        Capacities(SIZED.iter().map(|s| (s.map, s.reference)).collect())
    }

    /// For a node with `memory` bytes: each map's reference × memory / 64 GiB,
    /// rounded down to a power of two, between its floor and ceiling.
    pub fn for_memory(memory: u64) -> Self {
        Capacities(SIZED.iter().map(|s| (s.map, s.for_memory(memory))).collect())
    }

    /// For this node: its memory (`MemTotal`), then `settings`.
    pub fn for_node(settings: &MapSettings) -> std::io::Result<(Self, u64)> {
        let memory = node_memory()?;
        Ok((Self::for_memory(memory).with(settings), memory))
    }

    /// These, with the capacities `settings` sets.
    pub fn with(mut self, settings: &MapSettings) -> Self {
        for (map, setting) in settings.by_map() {
            if let Some(entries) = setting {
                self.0.insert(map, entries);
            }
        }
        self
    }

    /// `map`'s capacity: the object's for a map that is not sized.
    pub fn get(&self, map: &str) -> Option<u32> {
        self.0.get(map).copied().or_else(|| abi::MAPS.iter().find(|(name, _)| *name == map).map(|(_, c)| *c))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.0.iter().map(|(map, entries)| (*map, *entries))
    }
}

impl Sizing {
    fn for_memory(&self, memory: u64) -> u32 {
        let share = u64::from(self.reference) * memory / REFERENCE_MEMORY;
        let rounded = if share == 0 { 0 } else { 1 << share.ilog2() };
        rounded.clamp(u64::from(self.floor), u64::from(self.ceiling)) as u32
    }
}

/// The node's memory, as `/proc/meminfo`'s `MemTotal` gives it.
pub fn node_memory() -> std::io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "/proc/meminfo has no MemTotal in kB"))
}

/// What a map costs the kernel, as 6.1's `kernel/bpf/hashtab.c` allocates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Allocated at load, whatever the map holds.
    pub reserved: u64,
    /// Allocated for each entry added (maps not preallocated).
    pub per_entry: u64,
}

/// `struct htab_elem` before its key: list node, LRU node, hash.
const HTAB_ELEM: u64 = 48;
/// `struct bucket`: list head and lock.
const BUCKET: u64 = 16;
/// An LPM trie node before its key and value: rcu head, children, prefix length, flags.
const LPM_NODE: u64 = 40;
const BPF_F_NO_PREALLOC: u32 = 1;

impl Footprint {
    /// A map of `map_type` (`bpf_map_type`) with these sizes and flags.
    pub fn of(map_type: u32, key_size: u32, value_size: u32, capacity: u32, flags: u32) -> Footprint {
        let (key, value, capacity) = (u64::from(key_size), u64::from(value_size), u64::from(capacity));
        let round8 = |n: u64| n.div_ceil(8) * 8;
        const HASH: u32 = 1;
        const ARRAY: u32 = 2;
        const PERCPU_ARRAY: u32 = 6;
        const LRU_HASH: u32 = 9;
        const LPM_TRIE: u32 = 11;
        const RINGBUF: u32 = 27;
        match map_type {
            HASH | LRU_HASH => {
                let element = HTAB_ELEM + round8(key) + round8(value);
                let buckets = capacity.next_power_of_two() * BUCKET;
                if map_type == HASH && flags & BPF_F_NO_PREALLOC != 0 {
                    // bpf_mem_alloc's size classes above 64 bytes.
                    let class = [96, 128, 192, 256, 512, 1024, 2048, 4096].into_iter().find(|c| *c >= element);
                    Footprint { reserved: buckets, per_entry: class.unwrap_or(element) }
                } else {
                    Footprint { reserved: buckets + capacity * element, per_entry: 0 }
                }
            }
            LPM_TRIE => Footprint { reserved: 0, per_entry: LPM_NODE + key + value },
            ARRAY => Footprint { reserved: capacity * round8(value), per_entry: 0 },
            PERCPU_ARRAY => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                Footprint { reserved: capacity * round8(value) * cpus, per_entry: 0 }
            }
            RINGBUF => Footprint { reserved: capacity, per_entry: 0 },
            _ => Footprint { reserved: 0, per_entry: 0 },
        }
    }

    /// With `entries` in the map.
    pub fn bytes(&self, entries: u64) -> u64 {
        self.reserved + self.per_entry * entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_follow_memory_between_floor_and_ceiling() {
        let at = |gib: u64, map| Capacities::for_memory(gib * GIB).get(map).unwrap();
        assert_eq!(Capacities::for_memory(64 * GIB), Capacities::reference());
        assert_eq!(at(1, abi::CONNTRACK), 32_768, "the floor");
        assert_eq!(at(16, abi::CONNTRACK), 65_536);
        assert_eq!(at(24, abi::CONNTRACK), 65_536, "rounded down to a power of two");
        assert_eq!(at(1024, abi::CONNTRACK), 1_048_576, "the ceiling");
        assert_eq!(at(1024, abi::SERVICES), 65_536, "a table grows no larger than its reference");
        assert_eq!(at(1, abi::POLICY), 1_048_576, "tries keep their size");
        assert_eq!(Capacities::for_memory(GIB).get(abi::COUNTER_MAP), Some(abi::COUNTERS.len() as u32));
    }

    #[test]
    fn settings_override_the_memory_and_out_of_range_ones_are_refused() {
        let settings = MapSettings { conntrack: Some(1_000_000), ..MapSettings::default() };
        let capacities = Capacities::for_memory(GIB).with(&settings);
        assert_eq!(capacities.get(abi::CONNTRACK), Some(1_000_000));
        assert_eq!(capacities.get(abi::SERVICES), Some(16_384));
        assert!(settings.validate().is_ok());
        let zero = MapSettings { backends: Some(0), ..MapSettings::default() };
        assert_eq!(zero.validate().unwrap_err().0, "backends");
        let huge = MapSettings { policy: Some(MAX_SETTING + 1), ..MapSettings::default() };
        assert_eq!(huge.validate().unwrap_err().0, "policy");
    }

    #[test]
    fn every_sized_map_has_a_setting() {
        let set: Vec<&str> = MapSettings::default().by_map().iter().map(|(m, _)| *m).collect();
        let sized: Vec<&str> = SIZED.iter().map(|s| s.map).collect();
        assert_eq!(set, sized);
    }

    #[test]
    fn a_preallocated_hash_reserves_its_entries_and_a_table_only_its_buckets() {
        // np_conntrack: 16-byte key, 40-byte value.
        let conntrack = Footprint::of(1, 16, 40, 32_768, 0);
        assert_eq!(conntrack, Footprint { reserved: 32_768 * (48 + 16 + 40 + 16), per_entry: 0 });
        let table = Footprint::of(1, 8, 12, 65_536, BPF_F_NO_PREALLOC);
        assert_eq!(table.reserved, 65_536 * 16);
        assert_eq!(table.bytes(10), 65_536 * 16 + 10 * 96, "72 bytes take a 96-byte slot");
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The cells the README's row for `sizing` ends with: bytes reserved per
    /// entry of capacity, bytes an added entry takes, floor, the capacities at
    /// 1, 4 and 64 GiB, ceiling.
    fn cells(sizing: &Sizing) -> String {
        let object = aya_obj::Object::parse(abi::OBJECT).unwrap();
        let map = &object.maps[sizing.map];
        let capacity = 1 << 20;
        let footprint = Footprint::of(map.map_type(), map.key_size(), map.value_size(), capacity, map.map_flags());
        let at = |gib: u64| sizing.for_memory(gib * GIB);
        let numbers = [
            footprint.reserved / u64::from(capacity),
            footprint.per_entry,
            u64::from(sizing.floor),
            u64::from(at(1)),
            u64::from(at(4)),
            u64::from(at(64)),
            u64::from(sizing.ceiling),
        ];
        numbers.iter().map(|n| format!(" {} |", thousands(*n))).collect()
    }

    fn thousands(n: u64) -> String {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn the_readme_gives_the_capacities_and_costs_the_loader_computes() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let mut wrong = Vec::new();
        for sizing in &SIZED {
            let start = format!("| `{}` |", setting_name(sizing.map));
            let expected = cells(sizing);
            let row = readme.lines().find(|line| line.starts_with(&start));
            if row.is_none_or(|row| !row.ends_with(&expected)) {
                wrong.push(format!("{start} …{expected}\n    README: {row:?}"));
            }
        }
        assert!(wrong.is_empty(), "README rows of [datapath.maps] that differ:\n{}", wrong.join("\n"));
    }
}
