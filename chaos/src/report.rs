//! A run's report directory: the history and observed state as JSON (so `chaos check <dir>` can
//! recompute the verdict), the verdict as JSON and as its one line, and `index.html`, one
//! self-contained page (no scripts, no external styles: it is attached to CI runs and opened
//! from disk) with the timeline drawn as inline SVG.

use crate::checker::{self, Verdict, thousands};
use crate::history::{FaultWindow, History, Observed, Op, Outcome};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

/// Writes `history.json`, `observed.json`, `verdict.json`, `verdict.txt` and `index.html` into
/// `dir`, creating it.
pub fn write(dir: &Path, history: &History, observed: &Observed, verdict: &Verdict) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("history.json"), serde_json::to_vec_pretty(history)?)?;
    std::fs::write(dir.join("observed.json"), serde_json::to_vec_pretty(observed)?)?;
    std::fs::write(dir.join("verdict.json"), serde_json::to_vec_pretty(verdict)?)?;
    std::fs::write(dir.join("verdict.txt"), format!("{verdict}\n"))?;
    std::fs::write(dir.join("index.html"), html(history, observed, verdict))?;
    Ok(())
}

/// Reads back the `history.json` and `observed.json` that [`write`] wrote.
pub fn load(dir: &Path) -> io::Result<(History, Observed)> {
    fn read<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
        let bytes = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
    }
    Ok((read(&dir.join("history.json"))?, read(&dir.join("observed.json"))?))
}

/// Escapes text for HTML element content and quoted attribute values. Everything shown comes
/// from the run (error messages, problem types, region names): none of it is trusted markup.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}\
.verdict{font:600 15px/1.5 ui-monospace,monospace;padding:.6em .8em;border-radius:4px}\
.valid{background:#e6f4ea;border:1px solid #34a853}.invalid{background:#fce8e6;border:1px solid #d93025}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
svg{font:11px system-ui,sans-serif}.muted{color:#777}";

fn html(history: &History, observed: &Observed, verdict: &Verdict) -> String {
    let mut h = String::new();
    let run = escape(&history.run);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>chaos: {run}</title>\
         <style>{STYLE}</style></head><body>\n<h1>Chaos run {run}</h1>\n"
    );
    let _ = writeln!(
        h,
        "<p class=\"verdict {}\">{}</p>",
        if verdict.ok { "valid" } else { "invalid" },
        escape(&verdict.to_string())
    );
    let _ = writeln!(
        h,
        "<p class=\"muted\">seed {} &middot; started {} ms after the Unix epoch &middot; regions {}</p>",
        history.seed,
        history.started_unix_ms,
        escape(&history.regions.join(", "))
    );

    h.push_str("<h2>Timeline</h2>\n");
    h.push_str(&timeline(&history.ops, &history.faults));

    faults_table(&mut h, &history.faults);
    violations_table(&mut h, verdict);
    regions_table(&mut h, history, observed);
    h.push_str("</body></html>\n");
    h
}

fn faults_table(h: &mut String, faults: &[FaultWindow]) {
    let _ = writeln!(h, "<h2>Faults ({})</h2>", faults.len());
    if faults.is_empty() {
        h.push_str("<p class=\"muted\">None injected.</p>\n");
        return;
    }
    h.push_str("<table><tr><th>#</th><th>nemesis</th><th>target</th><th>start (s)</th><th>end (s)</th><th>duration (s)</th></tr>\n");
    for (i, f) in faults.iter().enumerate() {
        let _ = writeln!(
            h,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td><td class=\"n\">{:.1}</td></tr>",
            i + 1,
            escape(&f.nemesis),
            escape(&f.target),
            secs(f.start_ms),
            secs(f.end_ms),
            secs(f.end_ms.saturating_sub(f.start_ms))
        );
    }
    h.push_str("</table>\n");
}

fn violations_table(h: &mut String, verdict: &Verdict) {
    let _ = writeln!(h, "<h2>Violations ({})</h2>", thousands(verdict.total()));
    h.push_str("<table><tr><th>rule</th><th>count</th><th>listed</th></tr>\n");
    for rule in checker::RULES {
        let listed = verdict.violations.iter().filter(|v| v.rule == rule).count();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{listed}</td></tr>",
            escape(rule),
            thousands(verdict.count(rule))
        );
    }
    h.push_str("</table>\n");
    if verdict.violations.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<p class=\"muted\">At most {} listed per rule; the counts above include every one.</p>",
        checker::MAX_LISTED_PER_RULE
    );
    h.push_str("<table><tr><th>rule</th><th>region</th><th>subject</th><th>detail</th></tr>\n");
    for v in &verdict.violations {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&v.rule),
            escape(&v.region),
            escape(&v.subject),
            escape(&v.detail)
        );
    }
    h.push_str("</table>\n");
}

fn regions_table(h: &mut String, history: &History, observed: &Observed) {
    h.push_str("<h2>Regions</h2>\n<table><tr><th>region</th><th>ops sent (ok / refused / indeterminate)</th><th>accounts</th><th>transfers</th><th>conflicts</th><th>pending events</th><th>balances by currency</th></tr>\n");
    for r in &observed.regions {
        let (mut ok, mut fail, mut ind) = (0u64, 0u64, 0u64);
        for op in history.ops.iter().filter(|op| op.region == r.name) {
            match op.outcome {
                Outcome::Ok { .. } => ok += 1,
                Outcome::Fail { .. } => fail += 1,
                Outcome::Indeterminate { .. } => ind += 1,
            }
        }
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &r.conflicts {
            *kinds.entry(c.kind.as_str()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
        for a in r.accounts.values() {
            *sums.entry(a.currency.as_str()).or_default() += i128::from(a.balance);
        }
        let sums: Vec<String> = sums.iter().map(|(c, s)| format!("{c} {s}")).collect();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"n\">{} / {} / {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&r.name),
            thousands(ok),
            thousands(fail),
            thousands(ind),
            r.accounts.len(),
            thousands(r.transfers.len() as u64),
            escape(&if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") }),
            thousands(r.pending_events),
            escape(&sums.join(", "))
        );
    }
    h.push_str("</table>\n");
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Per second of completion: how many ops ended each way, and their latencies.
#[derive(Default, Clone)]
struct Second {
    ok: u64,
    fail: u64,
    indeterminate: u64,
    latencies: Vec<u64>,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A tick step (in seconds) giving at most about ten ticks over `span`.
fn tick_step(span: u64) -> u64 {
    [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600]
        .into_iter()
        .find(|s| span / s <= 10)
        .unwrap_or_else(|| span.div_ceil(10).max(1))
}

const WIDTH: f64 = 960.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const PANEL: f64 = 170.0;
const GAP: f64 = 40.0;
const OK_FILL: &str = "#34a853";
const FAIL_FILL: &str = "#f9ab00";
const IND_FILL: &str = "#d93025";

/// Throughput (stacked bars per second) over latency (p50/p99 lines per second), sharing one time
/// axis, with every fault window shaded across both so cause and effect line up.
fn timeline(ops: &[Op], faults: &[FaultWindow]) -> String {
    let end_ms = ops
        .iter()
        .map(|o| o.complete_ms.max(o.invoke_ms))
        .chain(faults.iter().map(|f| f.end_ms.max(f.start_ms)))
        .max()
        .unwrap_or(0)
        .max(1000);
    let seconds = end_ms.div_ceil(1000) as usize;
    let mut per = vec![Second::default(); seconds];
    for op in ops {
        let s = &mut per[((op.complete_ms / 1000) as usize).min(seconds - 1)];
        match op.outcome {
            Outcome::Ok { .. } => s.ok += 1,
            Outcome::Fail { .. } => s.fail += 1,
            Outcome::Indeterminate { .. } => s.indeterminate += 1,
        }
        s.latencies.push(op.complete_ms.saturating_sub(op.invoke_ms));
    }
    let quantiles: Vec<Option<(u64, u64)>> = per
        .iter_mut()
        .map(|s| {
            s.latencies.sort_unstable();
            (!s.latencies.is_empty()).then(|| (percentile(&s.latencies, 0.5), percentile(&s.latencies, 0.99)))
        })
        .collect();

    let plot_w = WIDTH - LEFT - RIGHT;
    let span_ms = (seconds as u64 * 1000) as f64;
    let x = |ms: f64| LEFT + ms / span_ms * plot_w;
    let tp_top = TOP;
    let tp_bottom = TOP + PANEL;
    let lat_top = tp_bottom + GAP;
    let lat_bottom = lat_top + PANEL;
    let height = lat_bottom + 40.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"throughput and latency over time\">"
    );
    let _ = writeln!(s, "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#fff\"/>");

    // Throughput.
    let max_tp = per.iter().map(|p| p.ok + p.fail + p.indeterminate).max().unwrap_or(0).max(1);
    let bar_w = plot_w / seconds as f64;
    let ty = |n: f64| tp_bottom - n / max_tp as f64 * PANEL;
    for (i, p) in per.iter().enumerate() {
        let bx = LEFT + i as f64 * bar_w;
        let mut base = 0u64;
        for (n, fill) in [(p.ok, OK_FILL), (p.fail, FAIL_FILL), (p.indeterminate, IND_FILL)] {
            if n == 0 {
                continue;
            }
            let y1 = ty((base + n) as f64);
            let _ = writeln!(
                s,
                "<rect x=\"{bx:.1}\" y=\"{y1:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{fill}\"/>",
                (bar_w * 0.9).max(0.5),
                ty(base as f64) - y1
            );
            base += n;
        }
    }
    axes(&mut s, tp_top, tp_bottom, &format!("{max_tp} ops/s"), "ops completed per second");
    legend(&mut s, tp_top, &[(OK_FILL, "ok"), (FAIL_FILL, "refused"), (IND_FILL, "indeterminate")]);

    // Latency.
    let max_lat = quantiles.iter().flatten().map(|q| q.1).max().unwrap_or(0).max(1);
    let ly = |v: u64| lat_bottom - v as f64 / max_lat as f64 * PANEL;
    for (pick, colour) in [(0usize, "#1a73e8"), (1, "#a142f4")] {
        let points: Vec<String> = quantiles
            .iter()
            .enumerate()
            .filter_map(|(i, q)| {
                q.map(|q| {
                    let v = if pick == 0 { q.0 } else { q.1 };
                    format!("{:.1},{:.1}", LEFT + (i as f64 + 0.5) * bar_w, ly(v))
                })
            })
            .collect();
        if !points.is_empty() {
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    axes(&mut s, lat_top, lat_bottom, &format!("{max_lat} ms"), "latency per second of completion");
    legend(&mut s, lat_top, &[("#1a73e8", "p50"), ("#a142f4", "p99")]);

    // Over the data, translucent: a window hidden behind the bars it explains would be useless.
    for (i, f) in faults.iter().enumerate() {
        let x0 = x(f.start_ms as f64);
        let w = (x(f.end_ms.max(f.start_ms) as f64) - x0).max(1.0);
        let label = escape(&format!("{} {}", f.nemesis, f.target));
        let _ = writeln!(
            s,
            "<rect class=\"fault\" x=\"{x0:.1}\" y=\"{tp_top}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"#9aa0a6\" fill-opacity=\"0.3\" stroke=\"#5f6368\" stroke-dasharray=\"3 2\"><title>{label} ({:.1}s to {:.1}s)</title></rect>",
            lat_bottom - tp_top,
            secs(f.start_ms),
            secs(f.end_ms)
        );
        // Staggered so neighbouring windows' labels do not print over each other.
        let label_y = 14.0 + (i % 3) as f64 * 12.0;
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{label_y}\" fill=\"#5f6368\">{label}</text>", x0 + 2.0);
    }

    // Shared time axis.
    let step = tick_step(seconds as u64);
    let mut t = 0;
    while t <= seconds as u64 {
        let tx = x((t * 1000) as f64);
        for bottom in [tp_bottom, lat_bottom] {
            let _ = writeln!(
                s,
                "<line x1=\"{tx:.1}\" y1=\"{bottom}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#555\"/>",
                bottom + 4.0
            );
        }
        let _ = writeln!(s, "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}s</text>", lat_bottom + 16.0);
        t += step;
    }
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, top: f64, bottom: f64, max_label: &str, title: &str) {
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#555\"/>\
         <line x1=\"{LEFT}\" y1=\"{top}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"#555\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#5f6368\">{}</text>",
        LEFT - 4.0,
        top + 10.0,
        escape(max_label),
        LEFT - 4.0,
        LEFT + 4.0,
        top - 4.0,
        escape(title)
    );
}

fn legend(s: &mut String, top: f64, items: &[(&str, &str)]) {
    let mut lx = WIDTH - RIGHT - 90.0 * items.len() as f64;
    for (fill, label) in items {
        let _ = writeln!(
            s,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{fill}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            top - 13.0,
            lx + 14.0,
            top - 4.0,
            escape(label)
        );
        lx += 90.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(escape("a<b>&\"c\"'d'"), "a&lt;b&gt;&amp;&quot;c&quot;&#39;d&#39;");
        assert_eq!(escape("plain us-east<->eu-west"), "plain us-east&lt;-&gt;eu-west");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn ticks_stay_few() {
        assert_eq!(tick_step(5), 1);
        assert_eq!(tick_step(60), 10);
        assert!(100_000 / tick_step(100_000) <= 10);
    }

    #[test]
    fn timeline_without_ops_still_draws() {
        let svg = timeline(&[], &[]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
