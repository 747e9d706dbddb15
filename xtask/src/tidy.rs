//! Repository rules, checked by `cargo test -p xtask`.

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;
    use std::process::Command;

    /// Normal (non-dev) dependency closure of a workspace package, from `cargo tree`
    /// (host platform only, so nothing needs downloading).
    fn closure(pkg: &str) -> BTreeSet<String> {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::workspace_root())
            .args([
                "tree", "-p", pkg, "-e", "normal", "--prefix", "none", "--format", "{p}",
            ])
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn dependency_arrows_point_one_way() {
        let forbid = |pkg: &str, bad: &[&str]| {
            let deps = closure(pkg);
            assert!(
                deps.contains("tokio") || deps.contains("prost"),
                "{pkg}: empty dependency tree? {deps:?}"
            );
            for b in bad {
                assert!(
                    !deps.contains(*b),
                    "{pkg} must not depend on {b}, but does (via normal deps)"
                );
            }
        };
        forbid(
            "craft-core",
            &[
                "tonic",
                "rocksdb",
                "librocksdb-sys",
                // raft's own codec is prost 0.11: that prost is raft's. The CITA
                // types and gRPC (cita-proto, tonic) stay out.
                "cita-proto",
                "craft-storage",
                "craft-transport",
                "craft-controller",
                "consensus",
            ],
        );
        forbid(
            "craft-storage",
            &[
                "tonic",
                "cita-proto",
                "craft-transport",
                "craft-controller",
                "consensus",
            ],
        );
        forbid("cita-proto", &["raft", "craft-core", "craft-storage"]);
        forbid("craft-controller", &["raft", "craft-core", "rocksdb"]);
        forbid(
            "craft-transport",
            &["rocksdb", "craft-storage", "consensus", "craft-controller"],
        );
        forbid("craft-kv", &["consensus", "craft-controller"]);
    }

    #[test]
    fn lincheck_depends_on_nothing_of_ours() {
        let deps = closure("craft-lincheck");
        assert!(
            deps.contains("serde"),
            "craft-lincheck: empty dependency tree? {deps:?}"
        );
        for ours in [
            "cita-proto",
            "craft-core",
            "craft-storage",
            "craft-transport",
            "craft-controller",
            "consensus",
            "craft-mutate",
            "craft-kv",
        ] {
            assert!(
                !deps.contains(ours),
                "craft-lincheck must not depend on {ours}, but does (via normal deps)"
            );
        }
    }

    /// Every workspace package that reaches `pkg` through normal dependencies, but the
    /// harness itself (xtask ships nothing).
    fn normal_dependents(pkg: &str) -> BTreeSet<String> {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::workspace_root())
            .args([
                "tree",
                "--workspace",
                "-e",
                "normal",
                "-i",
                pkg,
                "--prefix",
                "none",
                "--format",
                "{p}",
            ])
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| *p != pkg && *p != "xtask")
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn faultfs_is_a_test_tool_nothing_ships_with() {
        let dependents = normal_dependents("craft-faultfs");
        assert!(
            dependents.is_empty(),
            "craft-faultfs is a test tool: only dev-dependencies and xtask may name it, but {dependents:?} \
             depend on it"
        );
        let deps = closure("craft-faultfs");
        assert!(deps.contains("fuser"), "craft-faultfs: {deps:?}");
        for ours in [
            "craft-core",
            "craft-storage",
            "consensus",
            "craft-transport",
        ] {
            assert!(
                !deps.contains(ours),
                "craft-faultfs must not depend on {ours}"
            );
        }
    }

    #[test]
    fn no_production_crate_compiles_the_development_tools() {
        let dependents = normal_dependents("craft-devnet");
        assert!(
            dependents.is_empty(),
            "craft-devnet holds development tools: only dev-dependencies and xtask may name it, \
             but {dependents:?} depend on it"
        );
        let deps = closure("craft-devnet");
        assert!(deps.contains("craft-transport"), "craft-devnet: {deps:?}");
        assert!(
            !deps.contains("consensus") && !deps.contains("craft-storage"),
            "craft-devnet stands beside the service, not on it: {deps:?}"
        );
    }

    /// The top-level modules of xtask each one names (`crate::m`), from the sources.
    fn xtask_module_graph() -> std::collections::BTreeMap<String, BTreeSet<String>> {
        let src = crate::workspace_root().join("xtask/src");
        let mut files: Vec<(String, std::path::PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let module = path.file_name().unwrap().to_string_lossy().into_owned();
                let mut stack = vec![path];
                while let Some(dir) = stack.pop() {
                    for e in std::fs::read_dir(&dir).unwrap() {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if p.extension().is_some_and(|x| x == "rs") {
                            files.push((module.clone(), p));
                        }
                    }
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                let module = path.file_stem().unwrap().to_string_lossy().into_owned();
                files.push((module, path));
            }
        }
        let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
        let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = modules
            .iter()
            .map(|m| (m.clone(), BTreeSet::new()))
            .collect();
        for (module, path) in &files {
            let text = std::fs::read_to_string(path).unwrap();
            let mut named = BTreeSet::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    for item in group.split(',') {
                        let name = item.trim().split("::").next().unwrap_or("").trim();
                        named.insert(name.to_string());
                    }
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    named.insert(rest[..end].to_string());
                }
            }
            let edges = graph.get_mut(module).unwrap();
            for n in named {
                if n != *module && modules.contains(&n) {
                    edges.insert(n);
                }
            }
        }
        graph
    }

    #[test]
    fn xtask_modules_form_no_cycle() {
        let graph = xtask_module_graph();
        assert!(
            graph.get("ci").is_some_and(|e| e.contains("harness")),
            "the module graph looks empty: {graph:?}"
        );
        // Depth-first search; a module met again while on the path closes a cycle.
        fn visit<'a>(
            m: &'a str,
            graph: &'a std::collections::BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if let Some(at) = path.iter().position(|p| *p == m) {
                panic!(
                    "xtask modules form a cycle: {} -> {m}",
                    path[at..].join(" -> ")
                );
            }
            if !done.insert(m) {
                return;
            }
            path.push(m);
            for next in &graph[m] {
                visit(next, graph, path, done);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            visit(m, &graph, &mut Vec::new(), &mut done);
        }
    }
}
