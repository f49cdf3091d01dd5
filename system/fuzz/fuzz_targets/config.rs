//! node.toml as nodeplaned, nodeplanectl and the CNI plugin read it: any text
//! is a configuration or an error, never a panic, and a configuration accepted
//! keeps the limits the programs count on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeplane::config::NodeConfig;

fuzz_target!(|text: &str| {
    let Ok(config) = NodeConfig::parse(text, "fuzz.toml") else { return };
    let prefix = &config.datapath.pod_interface_prefix;
    // The CNI plugin fills a 15-character interface name after it.
    assert!((1..=10).contains(&prefix.len()), "{prefix:?}");
    // Parsing is a function of the text.
    assert_eq!(format!("{config:?}"), format!("{:?}", NodeConfig::parse(text, "fuzz.toml").unwrap()));
});
