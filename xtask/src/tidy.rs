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

    #[test]
    fn faultfs_is_a_test_tool_nothing_ships_with() {
        // Inverted: every package that reaches craft-faultfs through normal dependencies.
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::workspace_root())
            .args([
                "tree",
                "--workspace",
                "-e",
                "normal",
                "-i",
                "craft-faultfs",
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
        let dependents: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|p| *p != "craft-faultfs")
            // The harness itself (it mounts faultfs under chaos clusters) ships nothing.
            .filter(|p| *p != "xtask")
            .map(str::to_string)
            .collect();
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
}
