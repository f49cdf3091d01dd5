//! Scraping nodeplaned's metrics endpoint as Prometheus would, parsed by the
//! Prometheus project's own parsers (`python3-prometheus-client`): a sample
//! either parser refuses fails the scrape.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

use serde::Deserialize;

/// Which exposition to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// No `Accept`: Prometheus' text format.
    Text,
    /// `Accept: application/openmetrics-text`, parsed strictly.
    OpenMetrics,
}

/// One scrape, parsed.
#[derive(Debug, Deserialize)]
pub struct Scrape {
    pub content_type: String,
    pub families: Vec<Family>,
}

#[derive(Debug, Deserialize)]
pub struct Family {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Scrape {
    /// The value of sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        self.samples().find(|s| s.name == name && s.labels == labels).map(|s| s.value)
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.families.iter().flat_map(|f| &f.samples)
    }

    /// The type of family `name` (the parsers name a counter's family without `_total`).
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.families.iter().find(|f| f.name == family).map(|f| f.kind.as_str())
    }
}

/// `GET http://{address}/metrics`, parsed.
pub fn scrape(address: SocketAddr, exposition: Exposition) -> Result<Scrape, crate::Error> {
    let form = match exposition {
        Exposition::Text => "text",
        Exposition::OpenMetrics => "openmetrics",
    };
    // Debian's interpreter, which has the package (a pyenv one may not).
    let out = Command::new("/usr/bin/python3")
        .args(["-c", include_str!("scrape.py"), &format!("http://{address}/metrics"), form])
        .output()
        .map_err(|e| format!("/usr/bin/python3 (package python3-prometheus-client): {e}"))?;
    if !out.status.success() {
        return Err(format!("scraping {address} ({form}): {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
