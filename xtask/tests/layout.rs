//! The workspace's dependencies run one way: no cycle among its crates, dev
//! dependencies included, and the test fixtures (`nodeplane-testkit`) are a
//! dev-dependency of whoever uses them, never a normal one.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Workspace crate → the workspace crates it names, with the kind of each
/// dependency (`normal`, `dev`, `build`).
fn workspace_graph() -> BTreeMap<String, Vec<(String, String)>> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    packages
        .iter()
        .map(|package| {
            let deps = package["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| names.contains(d["name"].as_str().unwrap()))
                .map(|d| (d["name"].as_str().unwrap().to_owned(), d["kind"].as_str().unwrap_or("normal").to_owned()))
                .collect();
            (package["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn no_cycle_among_the_workspace_crates_dev_dependencies_included() {
    let graph = workspace_graph();
    // Depth-first search; a crate met again while on the path closes a cycle.
    fn visit<'a>(
        name: &'a str,
        graph: &'a BTreeMap<String, Vec<(String, String)>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(start) = path.iter().position(|p| *p == name) {
            panic!("dependency cycle: {} -> {name}", path[start..].join(" -> "));
        }
        if !done.insert(name) {
            return;
        }
        path.push(name);
        for (dep, _) in &graph[name] {
            visit(dep, graph, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for name in graph.keys() {
        visit(name, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn test_fixtures_are_only_ever_a_dev_dependency() {
    for (name, deps) in workspace_graph() {
        for (dep, kind) in deps {
            if dep == "nodeplane-testkit" {
                assert_eq!(kind, "dev", "{name} depends on the test fixtures as a {kind} dependency");
            }
        }
    }
}
