//! A manifests directory's files as nodeplaned reads them, and the policies
//! they hold compiled for the pods they list: any text is objects and errors,
//! never a panic, and each error names a document that exists. The input is
//! the files' texts one after another, NUL-separated.
#![no_main]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use nodeplane_model::compile::CompiledPolicy;
use nodeplane_model::manifests;
use nodeplane_model::policy::Cluster;

fuzz_target!(|input: &str| {
    let files: Vec<(PathBuf, String)> =
        input.split('\0').enumerate().map(|(n, text)| (PathBuf::from(format!("{n}.yaml")), text.to_owned())).collect();
    let found = manifests::parse(&files);
    for error in &found.errors {
        let n: usize = error.file.to_string_lossy().trim_end_matches(".yaml").parse().unwrap();
        assert!(n < files.len() && error.document >= 1, "{error}");
    }
    let pods = found
        .pods
        .into_iter()
        .enumerate()
        .map(|(n, pod)| pod.with_ip(Ipv4Addr::from(0x0af4_0000 + n as u32)))
        .collect();
    let cluster = Cluster { namespaces: found.namespaces, pods, remote_pods: Vec::new(), policies: found.policies };
    CompiledPolicy::compile(&cluster);
});
