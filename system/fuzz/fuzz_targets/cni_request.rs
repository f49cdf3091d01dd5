//! The CNI plugin's input, as a container runtime (or anyone who can run it)
//! gives it: the `CNI_*` variables and the network configuration on stdin. Any
//! input is a request or an error with the specification's code, never a
//! panic, and a request names interfaces the kernel takes.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nodeplane::cni::Request;
use nodeplane::config::NodeConfig;

#[derive(Arbitrary, Debug)]
struct Input {
    /// ADD, DEL, CHECK most of the time; anything else sometimes.
    command: u8,
    other_command: String,
    container_id: Option<String>,
    netns: Option<String>,
    ifname: Option<String>,
    path: Option<String>,
    args: Option<String>,
    stdin: String,
    /// node.toml's interface prefix, as a node may set it.
    prefix: Option<String>,
    node_has_pod_cidr: bool,
}

fuzz_target!(|input: Input| {
    let command = match input.command % 4 {
        0 => "ADD".to_owned(),
        1 => "DEL".to_owned(),
        2 => "CHECK".to_owned(),
        _ => input.other_command.clone(),
    };
    let var = |name: &str| match name {
        "CNI_COMMAND" => Some(command.clone()),
        "CNI_CONTAINERID" => input.container_id.clone(),
        "CNI_NETNS" => input.netns.clone(),
        "CNI_IFNAME" => input.ifname.clone(),
        "CNI_PATH" => input.path.clone(),
        "CNI_ARGS" => input.args.clone(),
        _ => None,
    };
    let mut toml = String::from("[datapath]\n");
    if let Some(prefix) = &input.prefix {
        toml += &format!("pod_interface_prefix = {prefix:?}\n");
    }
    if input.node_has_pod_cidr {
        toml += "pod_cidr = \"10.244.1.0/24\"\n";
    }
    let node = NodeConfig::parse(&toml, "fuzz.toml").map_err(|e| nodeplane::cni::CniError {
        code: 4,
        msg: "node.toml".into(),
        details: e.to_string(),
    });
    match Request::parse(var, &input.stdin, node) {
        Ok(request) => {
            let host = request.host_interface();
            assert!(!host.is_empty() && host.len() <= 15, "{host:?}");
            assert!(!host.contains(['/', ':']) && !host.contains(char::is_whitespace), "{host:?}");
            assert!(request.ipam_configuration()["ipam"]["type"].is_string());
        }
        Err(error) => assert!(matches!(error.code, 4 | 7), "{error:?}"),
    }
});
