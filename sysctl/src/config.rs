//! The `[sysctl]` section of `node.toml`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{PortRange, SysctlKey};

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
        if self.check_interval.is_zero() {
            return Err(Invalid { field: "check_interval", message: "must be greater than zero".into() });
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
        let Tree::Table(entries) = deserializer.deserialize_map(TreeVisitor)? else {
            return Err(de::Error::custom("expected a table of sysctl names and values"));
        };
        let mut extra = BTreeMap::new();
        flatten(String::new(), Tree::Table(entries), &mut extra).map_err(de::Error::custom)?;
        Ok(Extra(extra))
    }
}

/// A table of sysctls as written, before dotted keys are joined.
enum Tree {
    Leaf(Value),
    Table(Vec<(String, Tree)>),
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer, a string, or a table of sysctls")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tree, E> {
        Ok(Tree::Leaf(Value::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tree, E> {
        i64::try_from(v).map(|v| Tree::Leaf(Value::Integer(v))).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tree, E> {
        Ok(Tree::Leaf(Value::Text(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value::<TreeNode>()?.0));
        }
        Ok(Tree::Table(entries))
    }
}

struct TreeNode(Tree);

impl<'de> Deserialize<'de> for TreeNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TreeVisitor).map(TreeNode)
    }
}

fn flatten(prefix: String, tree: Tree, out: &mut BTreeMap<SysctlKey, Value>) -> Result<(), String> {
    match tree {
        Tree::Leaf(value) => {
            let key = SysctlKey::parse(&prefix)?;
            if matches!(key.as_str(), SysctlKey::IP_LOCAL_PORT_RANGE | SysctlKey::IP_LOCAL_RESERVED_PORTS) {
                return Err(format!(
                    "{key} is managed by the port-range guard; set sysctl.ephemeral_range or sysctl.reserve_nodeport_range instead"
                ));
            }
            if out.insert(key.clone(), value).is_some() {
                return Err(format!("{key} is set twice"));
            }
            Ok(())
        }
        Tree::Table(entries) => {
            for (name, subtree) in entries {
                let path = if prefix.is_empty() { name } else { format!("{prefix}.{name}") };
                flatten(path, subtree, out)?;
            }
            Ok(())
        }
    }
}
