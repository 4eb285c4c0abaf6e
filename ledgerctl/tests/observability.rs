//! The dashboards check of issue 15: every expression in `observability/dashboards/*.json` parses
//! (`promtool check rules` on a temporary file holding each as a recording rule), and the
//! dashboards and `observability/alerts.yml` name only metrics the components export, as listed in
//! `observability/metrics.txt`, a list this test checks against the components' source. (The live
//! check of that list against a running stack's scrape is in `tests/alerts.rs`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    ledgerctl::config::repo_root()
}

/// The exported names (histograms as their `_bucket`, `_sum` and `_count` series) and, per
/// component, the base names.
fn exported() -> (BTreeSet<String>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(root().join("observability/metrics.txt")).unwrap();
    let (mut series, mut by_component) = (BTreeSet::new(), Vec::new());
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, kind, component] = parts[..] else { panic!("metrics.txt: bad line {line:?}") };
        if kind == "histogram" {
            series.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        } else {
            series.insert(name.to_owned());
        }
        by_component.push((name.to_owned(), component.to_owned()));
    }
    (series, by_component)
}

/// Names `alerts.yml` records (`record:`): dashboards may use them.
fn recorded() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("observability/alerts.yml")).unwrap();
    text.lines().filter_map(|l| l.trim().strip_prefix("- record:")).map(|n| n.trim().to_owned()).collect()
}

/// The `expr` values of alerts.yml: inline, or a `|` block of deeper-indented lines.
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("observability/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        if rest.trim() != "|" {
            out.push(rest.trim().to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let block: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .copied()
            .collect();
        out.push(block.join("\n"));
    }
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Every dashboard's expressions, Grafana's variables replaced by values PromQL accepts.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("observability/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the region and replication overviews: {files:?}");
    for file in files {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut exprs = Vec::new();
        collect_exprs(&json["panels"], &mut exprs);
        assert!(!exprs.is_empty(), "{} has no expression", file.display());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for e in exprs {
            let e = e.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$region", "us-east");
            assert!(!e.contains('$'), "{name}: unknown variable in {e}");
            out.push((name.clone(), e));
        }
    }
    out
}

const KEYWORDS: [&str; 25] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers, ranges and
/// label lists that are neither keywords nor function names.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut last_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' || c == '[' {
            let close = if c == '{' { '}' } else { ']' };
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
        } else if c == '(' && ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&&*last_word) {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            i += 1;
            last_word.clear();
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if !KEYWORDS.contains(&word.as_str()) && next != Some(&'(') {
                names.insert(word.clone());
            }
            last_word = word;
        } else {
            if !c.is_whitespace() {
                last_word.clear();
            }
            i += 1;
        }
    }
    names
}

#[test]
fn the_name_extraction_skips_functions_labels_and_ranges() {
    let names = metric_names(
        r#"histogram_quantile(0.95, sum by (region, le) (rate(a_bucket{route!~"/x|y",le="+Inf"}[5m]))) > 2e-3 or on (region) max(b:c) / ignoring (x) group_left (y) d offset 1h"#,
    );
    assert_eq!(names, BTreeSet::from(["a_bucket".into(), "b:c".into(), "d".into()]));
}

/// Every listed name is in its component's source (a constant, a literal or a format string), so
/// the list cannot name a metric nobody exports.
#[test]
fn every_listed_metric_is_in_its_components_source() {
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let (_, by_component) = exported();
    for (name, component) in by_component {
        let krate = match component.as_str() {
            "prometheus" => continue,
            "node" => "region-node",
            other => other,
        };
        let mut text = String::new();
        sources(&root().join(krate).join("src"), &mut text);
        let found = text.match_indices(&name).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            // A histogram's series carry a suffix after the name.
            !word(before) && (!word(after) || text[at + name.len()..].starts_with("_bucket"))
        });
        assert!(found, "{name} is listed for {component} but not in {krate}/src");
    }
}

#[test]
fn dashboards_and_alerts_name_only_exported_metrics() {
    let (series, _) = exported();
    let recorded = recorded();
    assert!(recorded.contains("ledger:replication_lag_seconds"), "{recorded:?}");
    let mut checked = 0;
    let everything = dashboard_exprs().into_iter().chain(alert_exprs().into_iter().map(|e| ("alerts.yml".into(), e)));
    for (file, expr) in everything {
        for name in metric_names(&expr) {
            assert!(series.contains(&name) || recorded.contains(&name), "{file}: {name} is not exported, in: {expr}");
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} names found: the extraction is broken");
}

#[test]
fn every_dashboard_expression_parses_with_promtool() {
    let exprs = dashboard_exprs();
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": e}))
        .collect();
    // JSON is YAML: promtool reads this as a rules file.
    let file = serde_json::json!({"groups": [{"name": "dashboards", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboards.rules.yml");
    std::fs::write(&path, file.to_string()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .expect("promtool missing: install Debian's package prometheus (scripts/install-deps.sh)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\nexpressions: {exprs:#?}");
    assert!(text.contains(&format!("{} rules found", exprs.len())), "{text}");
}
