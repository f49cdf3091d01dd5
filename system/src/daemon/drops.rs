//! Policy drops reported to people: each is a `PolicyDrop` signal and a
//! journal entry, at most [`PER_POD`] a second for any one pod (the pod whose
//! policies dropped it) and [`IN_ALL`] a second in all, so a pod flooding an
//! isolated peer can neither flood the bus nor hide the others' drops. The
//! counters in the datapath's facts still count every drop; what was held back
//! is said once the second is over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nodeplane_bus::PolicyDrop;

/// Drops reported a second for one pod.
pub const PER_POD: u32 = 20;
/// Drops reported a second in all.
pub const IN_ALL: u32 = 200;

/// Who a drop is charged to: the pod (or address) whose policies dropped it.
fn charged(drop: &PolicyDrop) -> &str {
    let end = if drop.reason.starts_with("egress") { &drop.from } else { &drop.to };
    // `ns/pod (ip:port)`: the pod; `ip:port`: the address.
    match end.split_once(" (") {
        Some((pod, _)) => pod,
        None => end.rsplit_once(':').map_or(end.as_str(), |(addr, _)| addr),
    }
}

/// The drops of the current second, by pod, and those held back.
pub struct Limiter {
    second: Instant,
    in_all: u32,
    per_pod: HashMap<String, u32>,
    held_back: HashMap<String, u64>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { second: Instant::now(), in_all: 0, per_pod: HashMap::new(), held_back: HashMap::new() }
    }
}

impl Limiter {
    /// Whether `drop` is to be reported (signalled and logged) now.
    pub fn admit(&mut self, drop: &PolicyDrop) -> bool {
        if self.second.elapsed() >= Duration::from_secs(1) {
            for (pod, held) in self.held_back.drain() {
                tracing::warn!(
                    datapath_policy_pod = %pod,
                    "{held} more policy drop(s) of {pod} not reported (see the datapath counters)"
                );
            }
            self.second = Instant::now();
            self.in_all = 0;
            self.per_pod.clear();
        }
        let pod = charged(drop);
        let count = self.per_pod.entry(pod.to_owned()).or_default();
        if *count >= PER_POD || self.in_all >= IN_ALL {
            *self.held_back.entry(pod.to_owned()).or_default() += 1;
            return false;
        }
        *count += 1;
        self.in_all += 1;
        true
    }
}

/// Writes a drop to the journal.
pub fn log(drop: &PolicyDrop) {
    tracing::info!(
        datapath_policy_from = %drop.from,
        datapath_policy_to = %drop.to,
        datapath_policy_protocol = %drop.protocol,
        datapath_policy_reason = %drop.reason,
        "policy dropped {} {} -> {}{}: {}",
        drop.protocol,
        drop.from,
        drop.to,
        if drop.service.is_empty() { String::new() } else { format!(" (Service {})", drop.service) },
        drop.reason
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop(from: &str, to: &str, reason: &str) -> PolicyDrop {
        PolicyDrop {
            from: from.into(),
            to: to.into(),
            port: 80,
            protocol: "TCP".into(),
            reason: reason.into(),
            service: String::new(),
        }
    }

    #[test]
    fn one_pod_flooding_holds_back_its_own_drops_only() {
        let mut limiter = Limiter::default();
        let flood = drop("x/a (10.0.0.1:1234)", "x/b (10.0.0.2:80)", "ingress-denied-peer");
        let admitted = (0..1000).filter(|_| limiter.admit(&flood)).count();
        assert_eq!(admitted, PER_POD as usize, "x/b's ingress drops");
        // Another pod's drops still get through in the same second.
        assert!(limiter.admit(&drop("x/c (10.0.0.3:1)", "x/d (10.0.0.4:80)", "ingress-denied-port")));
        // x/a's own egress drops are charged to x/a, not x/b.
        assert!(limiter.admit(&drop("x/a (10.0.0.1:1)", "10.9.9.9:80", "egress-denied-peer")));
        assert_eq!(limiter.held_back["x/b"], 1000 - PER_POD as u64);
    }

    #[test]
    fn many_pods_are_held_to_the_total() {
        let mut limiter = Limiter::default();
        let admitted = (0..1000)
            .filter(|i| limiter.admit(&drop("10.1.1.1:5", &format!("x/p{i} (10.0.1.{}:80)", i % 250), "ingress-ipv6")))
            .count();
        assert_eq!(admitted, IN_ALL as usize);
    }
}
