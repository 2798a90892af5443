//! The packaging under `deploy/`: systemd units, the Dockerfile, Prometheus alert rules and the
//! Grafana dashboard parse, have the shape their tools expect, and name only subcommands and
//! metrics Meridian has (the metric names are read from the source, so a renamed metric fails
//! here rather than silently in production).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric name the nodes' source registers (string literals `"meridian_…"`).
fn known_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack: Vec<PathBuf> = [
        "origin/src",
        "edge/src",
        "net/src",
        "core/src",
        "store/src",
        "src",
    ]
    .iter()
    .map(|d| root().join(d))
    .collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                for piece in source.split("\"meridian_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if piece[name.len()..].starts_with('"') {
                        names.insert(format!("meridian_{name}"));
                    }
                }
            }
        }
    }
    assert!(names.len() > 30, "{names:?}");
    names
}

/// The `meridian_…` metric names a PromQL expression uses, with a histogram's suffix removed.
fn metrics_in(expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
        if let Some(stripped) = word.strip_prefix("meridian_") {
            let mut name = format!("meridian_{stripped}");
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix)
                    && known.contains(base)
                {
                    name = base.to_owned();
                }
            }
            out.push(name);
        }
    }
    out
}

fn check_expr(what: &str, expr: &str, known: &BTreeSet<String>) {
    assert!(!expr.trim().is_empty(), "{what}: empty expression");
    let mut depth = 0i32;
    for c in expr.chars() {
        depth += match c {
            '(' | '{' | '[' => 1,
            ')' | '}' | ']' => -1,
            _ => 0,
        };
        assert!(depth >= 0, "{what}: unbalanced {expr}");
    }
    assert_eq!(depth, 0, "{what}: unbalanced {expr}");
    let used = metrics_in(expr, known);
    for m in &used {
        assert!(
            known.contains(m),
            "{what}: {m} is not a metric Meridian exports ({expr})"
        );
    }
}

#[test]
fn prometheus_alert_rules_are_well_formed_and_use_real_metrics() {
    let known = known_metrics();
    let doc: Value = serde_norway::from_str(&text("deploy/prometheus/alerts.yml")).unwrap();
    let groups = doc["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    let mut names = HashSet::new();
    let mut count = 0;
    for g in groups {
        assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()), "{g}");
        for rule in g["rules"].as_array().expect("rules") {
            count += 1;
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alert.starts_with("Meridian"), "{alert}");
            assert!(names.insert(alert.to_owned()), "{alert} twice");
            let expr = rule["expr"].as_str().expect("expr");
            check_expr(alert, expr, &known);
            assert!(
                !metrics_in(expr, &known).is_empty() || expr.contains("up{"),
                "{alert} watches no Meridian metric"
            );
            if let Some(d) = rule.get("for") {
                let d = d.as_str().expect("for is a duration");
                let (n, unit) = d.split_at(d.len() - 1);
                assert!(
                    n.parse::<u32>().is_ok() && "smhd".contains(unit),
                    "{alert}: for {d}"
                );
            }
            let severity = rule["labels"]["severity"].as_str().expect("severity");
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{alert}"
            );
            for field in ["summary", "description"] {
                assert!(
                    rule["annotations"][field]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{alert}: {field}"
                );
            }
        }
    }
    assert!(count >= 10, "{count} rules");
}

#[test]
fn grafana_dashboard_is_well_formed_and_uses_real_metrics() {
    let known = known_metrics();
    let dash: Value = serde_json::from_str(&text("deploy/grafana/meridian.json")).unwrap();
    assert_eq!(dash["uid"], "meridian-overview");
    assert!(dash["schemaVersion"].as_u64().is_some());
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = HashSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id twice"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            check_expr(title, expr, &known);
            assert!(!metrics_in(expr, &known).is_empty(), "{title}: {expr}");
        }
    }
}

/// `[Section]` → key → values of a systemd unit file.
fn unit(rel: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = None;
    for line in text(rel).lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_owned());
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: {line}"));
        let s = section
            .clone()
            .unwrap_or_else(|| panic!("{rel}: {line} outside a section"));
        out.entry(s)
            .or_default()
            .entry(k.to_owned())
            .or_default()
            .push(v.to_owned());
    }
    out
}

#[test]
fn systemd_units_run_a_real_subcommand_unprivileged() {
    for (file, sub) in [
        ("deploy/systemd/meridian-origin.service", "origin"),
        ("deploy/systemd/meridian-edge.service", "edge"),
    ] {
        let u = unit(file);
        assert_eq!(
            u.keys().map(String::as_str).collect::<Vec<_>>(),
            ["Install", "Service", "Unit"],
            "{file}"
        );
        let one = |s: &str, k: &str| -> String {
            let v = u[s].get(k).unwrap_or_else(|| panic!("{file}: [{s}] {k}"));
            assert_eq!(v.len(), 1, "{file}: {k} once");
            v[0].clone()
        };
        assert!(!one("Unit", "Description").is_empty());
        assert_eq!(one("Install", "WantedBy"), "multi-user.target");
        assert_eq!(one("Service", "User"), "meridian", "{file}: not root");
        assert_eq!(one("Service", "NoNewPrivileges"), "yes");
        assert_eq!(one("Service", "ProtectSystem"), "strict");
        assert_eq!(one("Service", "Restart"), "on-failure");
        assert_eq!(one("Service", "StateDirectoryMode"), "0700");
        let exec = one("Service", "ExecStart");
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(
            args[..2],
            ["/usr/local/bin/meridian", sub],
            "{file}: {exec}"
        );
        assert_eq!(args[2], "--config", "{file}");
        assert!(Path::new(args[3]).is_absolute(), "{file}: {exec}");
        // The subcommand and its flag exist in the binary the unit runs.
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "meridian {sub} --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--config"),
            "{sub}"
        );
    }
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let file = text("deploy/Dockerfile");
    let lines: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS build"),
        "{}",
        froms[0]
    );
    assert!(
        froms[1].starts_with("FROM debian:") && froms[1].ends_with(" AS run"),
        "{}",
        froms[1]
    );
    // The builder's toolchain is at least the workspace's rust-version.
    let image = froms[0]
        .trim_start_matches("FROM rust:")
        .split('-')
        .next()
        .unwrap();
    let manifest: toml::Value = toml::from_str(&text("Cargo.toml")).unwrap();
    let wanted = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        v(image) >= v(wanted),
        "rust:{image} is older than rust-version {wanted}"
    );
    let run_stage = &lines[lines
        .iter()
        .position(|l| l.starts_with("FROM debian:"))
        .unwrap()..];
    assert!(
        run_stage
            .iter()
            .any(|l| l.starts_with("COPY --from=build ") && l.contains("meridian"))
    );
    let user = run_stage
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER in the run stage");
    assert!(!["USER root", "USER 0"].contains(user), "{user}");
    assert!(
        run_stage
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT [\"/usr/local/bin/meridian\""))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cargo build --release --locked --bin meridian"))
    );
}
