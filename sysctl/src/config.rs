//! The `[sysctl]` section of `node.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{PortRange, SysctlKey, is_port_key};

/// Sysctl guard settings. Every field has a default, so an empty section is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SysctlConfig {
    /// The Kubernetes NodePort range (`--service-node-port-range`) to keep clear.
    pub nodeport_range: PortRange,
    /// The ephemeral range to set. Unset: keep the kernel's, trimmed clear of NodePorts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_range: Option<PortRange>,
    /// Add the NodePort range to `net.ipv4.ip_local_reserved_ports`.
    pub reserve_nodeport_range: bool,
    /// How often managed values are read back and restored if something changed them.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Further sysctls to set and keep.
    pub extra: Extra,
}

impl Default for SysctlConfig {
    fn default() -> Self {
        SysctlConfig {
            nodeport_range: PortRange::KUBERNETES_NODEPORTS,
            ephemeral_range: None,
            reserve_nodeport_range: true,
            check_interval: Duration::from_secs(30),
            extra: Extra::default(),
        }
    }
}

/// Re-checking more often than this would only burn CPU.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A setting that is well-formed on its own but wrong in context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field's name within `[sysctl]`.
    pub field: &'static str,
    pub message: String,
}

impl SysctlConfig {
    /// Checks what a field's own type cannot: relations between fields.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(ephemeral) = self.ephemeral_range
            && ephemeral.overlaps(self.nodeport_range)
        {
            return Err(Invalid {
                field: "ephemeral_range",
                message: format!(
                    "{ephemeral} overlaps the NodePort range {} (sysctl.nodeport_range)",
                    self.nodeport_range
                ),
            });
        }
        if PortRange::UNPRIVILEGED.largest_part_outside(self.nodeport_range).is_none() {
            return Err(Invalid {
                field: "nodeport_range",
                message: format!("{} leaves no ports for outgoing connections", self.nodeport_range),
            });
        }
        if self.check_interval < MIN_CHECK_INTERVAL {
            return Err(Invalid {
                field: "check_interval",
                message: format!("must be at least {}", humantime::format_duration(MIN_CHECK_INTERVAL)),
            });
        }
        Ok(())
    }
}

/// A value for an extra sysctl, written to the kernel as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Integer(i64),
    Text(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Integer(n) => write!(f, "{n}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Integer(n) => serializer.serialize_i64(*n),
            Value::Text(s) => serializer.serialize_str(s),
        }
    }
}

/// `[sysctl.extra]`: sysctl name → value. Names may be quoted (`"net.core.somaxconn" =
/// 4096`) or written as plain TOML dotted keys (`net.core.somaxconn = 4096`); both mean
/// the same sysctl.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra(pub BTreeMap<SysctlKey, Value>);

impl Serialize for Extra {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k.as_str(), v)))
    }
}

impl<'de> Deserialize<'de> for Extra {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut entries = Vec::new();
        deserializer.deserialize_map(Node { prefix: String::new(), out: &mut entries })?;
        let mut extra = BTreeMap::new();
        for (key, value) in entries {
            if extra.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!("{key} is set twice")));
            }
        }
        Ok(Extra(extra))
    }
}

/// One level of `[sysctl.extra]`: a value (a sysctl named by the path so far) or
/// a table of further levels. A value's errors are raised while it is read, so they
/// carry its own key and position in the file.
struct Node<'a> {
    prefix: String,
    out: &'a mut Vec<(SysctlKey, Value)>,
}

impl Node<'_> {
    fn leaf<E: de::Error>(self, value: Value) -> Result<(), E> {
        if self.prefix.is_empty() {
            return Err(E::custom("expected a table of sysctl names and values"));
        }
        let key = SysctlKey::parse(&self.prefix).map_err(E::custom)?;
        if is_port_key(&key) {
            return Err(E::custom(format!(
                "{key} is managed by the port-range guard; set sysctl.ephemeral_range or sysctl.reserve_nodeport_range instead"
            )));
        }
        self.out.push((key, value));
        Ok(())
    }
}

impl<'de> de::DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, a string, or a table of sysctls")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(Value::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let v = i64::try_from(v).map_err(|_| E::custom("integer out of range"))?;
        self.leaf(Value::Integer(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(Value::Text(v.to_owned()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<String>()? {
            // At the top, a quoted name is a whole dotted sysctl name; below it, a
            // dot inside one part is literal (`conf."eth0.100"` is VLAN eth0.100).
            let prefix =
                if self.prefix.is_empty() { name } else { format!("{}.{}", self.prefix, name.replace('.', "/")) };
            map.next_value_seed(Node { prefix, out: &mut *self.out })?;
        }
        Ok(())
    }
}
