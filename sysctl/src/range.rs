//! Port ranges and port sets in the two spellings nodeplane meets: the config's
//! `30000-32767` and the kernel's `32768\t60999` / `8080,30000-32767`.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of TCP/UDP ports, `start <= end`, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

/// Why a port range or port list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("start {start} is after end {end}")]
    StartAfterEnd { start: u16, end: u16 },
    #[error("port 0 is not a usable port")]
    PortZero,
    #[error("'{0}' is not a port number (1-65535)")]
    NotAPort(String),
    #[error("'{0}' is not a port range; expected START-END, e.g. 30000-32767")]
    Malformed(String),
}

impl PortRange {
    /// The kernel's default `net.ipv4.ip_local_port_range`.
    pub const LINUX_DEFAULT_EPHEMERAL: PortRange = PortRange { start: 32768, end: 60999 };
    /// Kubernetes' default `--service-node-port-range`.
    pub const KUBERNETES_NODEPORTS: PortRange = PortRange { start: 30000, end: 32767 };
    /// Every port an unprivileged ephemeral range may use (the kernel refuses a local
    /// port range that starts below `ip_unprivileged_port_start`, 1024 by default).
    pub const UNPRIVILEGED: PortRange = PortRange { start: 1024, end: 65535 };

    pub fn new(start: u16, end: u16) -> Result<Self, RangeError> {
        if start == 0 {
            return Err(RangeError::PortZero);
        }
        if start > end {
            return Err(RangeError::StartAfterEnd { start, end });
        }
        Ok(PortRange { start, end })
    }

    pub fn start(self) -> u16 {
        self.start
    }

    pub fn end(self) -> u16 {
        self.end
    }

    /// Number of ports in the range.
    pub fn port_count(self) -> u32 {
        u32::from(self.end) - u32::from(self.start) + 1
    }

    pub fn contains(self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }

    pub fn overlaps(self, other: PortRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The largest part of `self` that shares no port with `other`; on a tie the
    /// upper part, which keeps ports away from well-known services. `None` when
    /// `other` covers `self` entirely.
    pub fn largest_part_outside(self, other: PortRange) -> Option<PortRange> {
        if !self.overlaps(other) {
            return Some(self);
        }
        let below = (self.start < other.start).then(|| PortRange { start: self.start, end: other.start - 1 });
        let above = (self.end > other.end).then(|| PortRange { start: other.end + 1, end: self.end });
        match (below, above) {
            (Some(b), Some(a)) => Some(if b.port_count() > a.port_count() { b } else { a }),
            (b, a) => a.or(b),
        }
    }

    /// Parses the kernel's `ip_local_port_range` value: two numbers separated by white space.
    pub fn from_kernel(value: &str) -> Result<Self, RangeError> {
        let mut numbers = value.split_whitespace();
        match (numbers.next(), numbers.next(), numbers.next()) {
            (Some(start), Some(end), None) => PortRange::new(parse_port(start)?, parse_port(end)?),
            _ => Err(RangeError::Malformed(value.to_owned())),
        }
    }

    /// The kernel's spelling, as `ip_local_port_range` accepts it.
    pub fn to_kernel(self) -> String {
        format!("{} {}", self.start, self.end)
    }
}

fn parse_port(text: &str) -> Result<u16, RangeError> {
    let text = text.trim();
    text.parse::<u16>().map_err(|_| RangeError::NotAPort(text.to_owned()))
}

impl FromStr for PortRange {
    type Err = RangeError;

    /// `START-END` (the config's spelling).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (start, end) = s.split_once('-').ok_or_else(|| RangeError::Malformed(s.to_owned()))?;
        PortRange::new(parse_port(start)?, parse_port(end)?)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of ports kept as sorted, disjoint, non-adjacent ranges — the shape in which
/// the kernel prints `ip_local_reserved_ports`, so a set's [`Display`](fmt::Display)
/// equals the kernel's read-back of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<PortRange>,
}

impl PortSet {
    /// Parses the kernel's `ip_local_reserved_ports` value (`8080,30000-32767`; empty
    /// means no port).
    pub fn from_kernel(value: &str) -> Result<Self, RangeError> {
        let mut set = PortSet::default();
        for item in value.trim().split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let range = match item.split_once('-') {
                Some(_) => item.parse()?,
                None => {
                    let port = parse_port(item)?;
                    PortRange::new(port, port)?
                }
            };
            set.insert(range);
        }
        Ok(set)
    }

    /// Adds `range`, keeping every port already in the set.
    pub fn insert(&mut self, range: PortRange) {
        self.ranges.push(range);
        self.ranges.sort();
        let mut merged: Vec<PortRange> = Vec::with_capacity(self.ranges.len());
        for next in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if u32::from(next.start) <= u32::from(last.end) + 1 => {
                    last.end = last.end.max(next.end);
                }
                _ => merged.push(next),
            }
        }
        self.ranges = merged;
    }

    /// True when every port of `range` is in the set.
    pub fn covers(&self, range: PortRange) -> bool {
        self.ranges.iter().any(|r| r.start <= range.start && range.end <= r.end)
    }

    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if range.start == range.end {
                write!(f, "{}", range.start)?;
            } else {
                write!(f, "{range}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u16, end: u16) -> PortRange {
        PortRange::new(start, end).unwrap()
    }

    #[test]
    fn parses_config_spelling_and_rejects_bad_ranges() {
        assert_eq!("30000-32767".parse::<PortRange>(), Ok(r(30000, 32767)));
        assert_eq!(" 80 - 80 ".parse::<PortRange>(), Ok(r(80, 80)));
        let cases = [
            ("32767-30000", "start 32767 is after end 30000"),
            ("0-100", "port 0 is not a usable port"),
            ("30000-70000", "'70000' is not a port number (1-65535)"),
            ("30000", "'30000' is not a port range; expected START-END, e.g. 30000-32767"),
            ("a-b", "'a' is not a port number (1-65535)"),
        ];
        for (text, message) in cases {
            assert_eq!(text.parse::<PortRange>().unwrap_err().to_string(), message, "{text}");
        }
    }

    #[test]
    fn parses_and_prints_kernel_spelling() {
        assert_eq!(PortRange::from_kernel("32768\t60999\n"), Ok(r(32768, 60999)));
        assert_eq!(r(20000, 29999).to_kernel(), "20000 29999");
        assert!(PortRange::from_kernel("1 2 3").is_err());
        assert!(PortRange::from_kernel("").is_err());
    }

    #[test]
    fn largest_part_outside_covers_every_overlap_shape() {
        let nodeports = r(30000, 32767);
        let cases = [
            // (ephemeral, expected)
            (r(32768, 60999), Some(r(32768, 60999))), // no overlap, right
            (r(1024, 29999), Some(r(1024, 29999))),   // no overlap, left
            (r(20000, 40000), Some(r(20000, 29999))), // around: left part is larger
            (r(29000, 60999), Some(r(32768, 60999))), // around: right part is larger
            (r(29768, 32999), Some(r(32768, 32999))), // around: equal parts, upper wins
            (r(10000, 31000), Some(r(10000, 29999))), // overlaps from the left
            (r(31000, 60999), Some(r(32768, 60999))), // overlaps from the right
            (r(30500, 31000), None),                  // inside
            (r(30000, 32767), None),                  // identical
        ];
        for (ephemeral, expected) in cases {
            assert_eq!(ephemeral.largest_part_outside(nodeports), expected, "{ephemeral}");
            if let Some(part) = expected {
                assert!(!part.overlaps(nodeports));
            }
        }
    }

    #[test]
    fn port_sets_merge_without_dropping_ports() {
        let cases = [
            ("", r(30000, 32767), "30000-32767"),
            ("8080", r(30000, 32767), "8080,30000-32767"),
            ("8080,40000-40010", r(30000, 32767), "8080,30000-32767,40000-40010"),
            ("29000-30500", r(30000, 32767), "29000-32767"),
            ("31000", r(30000, 32767), "30000-32767"),
            ("29999", r(30000, 32767), "29999-32767"), // adjacent ranges join, as the kernel prints them
            ("30000-32767", r(30000, 32767), "30000-32767"),
            ("1-65535", r(30000, 32767), "1-65535"),
            ("32768,100", r(30000, 32767), "100,30000-32768"),
        ];
        for (existing, add, expected) in cases {
            let mut set = PortSet::from_kernel(existing).unwrap();
            let before = set.clone();
            set.insert(add);
            assert_eq!(set.to_string(), expected, "{existing} + {add}");
            assert!(set.covers(add));
            for range in before.ranges() {
                assert!(set.covers(*range), "{existing}: dropped {range}");
            }
        }
        assert!(!PortSet::from_kernel("30000-32000").unwrap().covers(r(30000, 32767)));
        assert!(PortSet::from_kernel("8080,x").is_err());
    }
}
