//! Every map key/value struct in `bpf/maps.h` against its `#[repr(C)]` twin in
//! `src/maps.rs`: size and every field's offset, read from the embedded object's
//! BTF with bpftool.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use nodeplane_datapath::maps::*;

/// struct name → (size in bytes, field → offset in bytes), from `bpftool btf dump`.
fn btf_structs() -> BTreeMap<String, (usize, BTreeMap<String, usize>)> {
    let object = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(object.path(), nodeplane_datapath::LB_OBJECT).unwrap();
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(object.path())
        .args(["format", "raw"])
        .output()
        .expect("bpftool (package bpftool)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut structs = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        if let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) {
            let (name, rest) = rest.split_once('\'').unwrap();
            let size = rest.split("size=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
            structs.insert(name.to_owned(), (size, BTreeMap::new()));
            current = Some(name.to_owned());
        } else if let (Some(name), Some(field)) = (&current, line.strip_prefix("\t'")) {
            let (field, rest) = field.split_once('\'').unwrap();
            let bits: usize = rest.split("bits_offset=").nth(1).unwrap().parse().unwrap();
            structs.get_mut(name).unwrap().1.insert(field.to_owned(), bits / 8);
        } else if !line.starts_with('\t') {
            current = None;
        }
    }
    structs
}

macro_rules! layout {
    ($c:literal => $rust:ty { $($field:ident),* $(,)? }) => {
        ($c, size_of::<$rust>(), vec![$((stringify!($field), offset_of!($rust, $field))),*])
    };
}

#[test]
fn every_map_struct_matches_its_rust_twin() {
    let btf = btf_structs();
    let twins = [
        layout!("svc_key" => SvcKey { vip, port, proto, pad }),
        layout!("svc_value" => SvcValue { service_id, backend_count, flags, affinity_timeout_s }),
        layout!("backend_key" => BackendKey { service_id, slot }),
        layout!("backend_value" => BackendValue { addr, port, pad }),
        layout!("backend_id" => BackendId { service_id, addr, port, pad }),
        layout!("affinity_key" => AffinityKey { service_id, client }),
        layout!("affinity_value" => AffinityValue { backend, last_seen_ns }),
        layout!("sock_revnat_key" => SockRevnatKey { cookie, addr, port, pad }),
        layout!("sock_revnat_value" => SockRevnatValue { vip, port, pad }),
        layout!("ct_key" => CtKey { saddr, daddr, sport, dport, proto, pad }),
        layout!("ct_value" => CtValue { src_addr, dst_addr, src_port, dst_port, rewrite, reply, pad, seen, service_id, last_seen_ns }),
        layout!("lb_config" => LbConfig { hairpin_addr, pad, node_netns }),
        layout!("endpoint_value" => EndpointValue { flags }),
        layout!("policy_peer" => PolicyPeer { pod, direction, pad, peer }),
        layout!("policy_value" => PolicyValue { port_set }),
        layout!("port_match" => PortMatch { port_set, proto, pad, port }),
        layout!("policy_event" => PolicyEvent { saddr, daddr, sport, dport, vip, vip_port, proto, reason }),
    ];
    for (name, size, fields) in twins {
        let (btf_size, btf_fields) =
            btf.get(name).unwrap_or_else(|| panic!("struct {name} is not in the object's BTF"));
        assert_eq!(size, *btf_size, "size of {name}");
        let rust: BTreeMap<String, usize> = fields.into_iter().map(|(f, o)| (f.to_owned(), o)).collect();
        assert_eq!(&rust, btf_fields, "fields and offsets of {name}");
    }
    // The LPM keys: a prefix length, then the data above (aya's `Key`).
    use aya::maps::lpm_trie::Key;
    assert_eq!(size_of::<Key<PolicyPeer>>(), btf["policy_key"].0, "size of policy_key");
    assert_eq!(size_of::<Key<PortMatch>>(), btf["port_key"].0, "size of port_key");
}
