//! Conntrack garbage collection in steps, against the real kernel map: a pass
//! cut into the shortest steps there are still looks at every entry once,
//! deletes exactly the expired ones and settles each pod's share.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use nodeplane_datapath::{Collector, CtTimeouts, Datapath};
use nodeplane_datapath_abi::{self as abi, CtKey, CtValue};
use nodeplane_testkit::{Bpffs, privileged};

const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 6);
/// Gone from the node, holding nothing: its counts are forgotten.
const POD_GONE: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 7);

fn pinned<K: aya::Pod, V: aya::Pod>(bpffs: &Bpffs, name: &str) -> HashMap<MapData, K, V> {
    HashMap::try_from(Map::HashMap(MapData::from_pin(bpffs.path().join(name)).unwrap())).unwrap()
}

fn now_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `count` UDP flow entries from `owner` (its own, or a reply entry), seen
/// `age` ago, on source ports from `first`.
fn fill(
    conntrack: &mut HashMap<MapData, CtKey, CtValue>,
    owner: Ipv4Addr,
    reply: bool,
    first: u32,
    count: u32,
    age: Duration,
) {
    let last_seen_ns = now_ns() - age.as_nanos() as u64;
    for n in first..first + count {
        let key = CtKey {
            saddr: owner.octets(),
            daddr: [10, 96, (n >> 16) as u8, reply as u8],
            sport: (n as u16).to_be_bytes(),
            dport: 53u16.to_be_bytes(),
            proto: 17,
            pad: [0; 3],
        };
        let value = CtValue { owner: owner.octets(), reply: reply as u8, last_seen_ns, ..CtValue::default() };
        conntrack.insert(key, value, 0).unwrap();
    }
}

#[test]
fn a_pass_in_the_shortest_steps_sees_every_entry_once_and_settles_the_shares() {
    if !privileged("a_pass_in_the_shortest_steps_sees_every_entry_once_and_settles_the_shares") {
        return;
    }
    let bpffs = Bpffs::mount().unwrap();
    let mut datapath = Datapath::load(bpffs.path()).unwrap();
    let mut conntrack = pinned::<CtKey, CtValue>(&bpffs, abi::CONNTRACK);
    let (fresh, old) = (Duration::ZERO, Duration::from_secs(30));
    fill(&mut conntrack, POD_A, false, 0, 30_000, fresh);
    fill(&mut conntrack, POD_A, false, 30_000, 10_000, old);
    fill(&mut conntrack, POD_A, true, 0, 10_000, fresh);
    fill(&mut conntrack, POD_B, false, 0, 20_000, fresh);
    let total = 70_000u64;
    let mut opened = pinned::<[u8; 4], u64>(&bpffs, abi::CT_OPENED);
    for (pod, count) in [(POD_A, 45_000u64), (POD_B, 20_000), (POD_GONE, 5)] {
        opened.insert(pod.octets(), count, 0).unwrap();
    }
    let mut endpoints = pinned::<[u8; 4], abi::EndpointValue>(&bpffs, abi::ENDPOINTS);
    for pod in [POD_A, POD_B] {
        endpoints.insert(pod.octets(), abi::EndpointValue::default(), 0).unwrap();
    }

    let timeouts = CtTimeouts { udp: Duration::from_secs(10), ..CtTimeouts::default() };
    let mut collector = Collector::default();
    let mut steps = 0u64;
    let stats = loop {
        steps += 1;
        assert!(steps <= total + 1, "a step without progress: the pass never ends");
        if let Some(stats) = collector.step(&mut datapath.conntrack(), timeouts, Duration::ZERO).unwrap() {
            break stats;
        }
    };
    assert!(steps > 1, "a zero budget did not cut the pass");
    assert_eq!(stats.entries, total, "each entry looked at once");
    assert_eq!(stats.expired, 10_000);
    assert_eq!(stats.flows_by_pod, BTreeMap::from([(POD_A, 30_000), (POD_B, 20_000)]));
    assert_eq!(conntrack.keys().count() as u64, total - 10_000);
    let closed = pinned::<[u8; 4], u64>(&bpffs, abi::CT_CLOSED);
    // What each pod opened less what it still holds: A let 15,000 go.
    assert_eq!(closed.get(&POD_A.octets(), 0).unwrap(), 15_000);
    assert_eq!(closed.get(&POD_B.octets(), 0).unwrap(), 0);
    assert!(opened.get(&POD_GONE.octets(), 0).is_err(), "a gone pod's count kept");

    // The next pass, in one step, finds what the first left.
    let again = datapath.conntrack().gc(timeouts).unwrap();
    assert_eq!((again.entries, again.expired), (total - 10_000, 0));
}
