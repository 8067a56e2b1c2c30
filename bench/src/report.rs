//! docs/BENCHMARKS.md and its SVG charts, drawn from the JSON results in
//! `<out>/bench/*.json` (so a scenario re-run alone keeps the others).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::env::Pg;
use crate::scenarios::{now_utc, num_cores, ALL};
use crate::{Outcome, Verdict};

/// When, from which commit and with which command the scenarios ran (kept in
/// `<out>/bench/run.json`, so `--report-only` writes the same header).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Run {
    pub date: String,
    pub commit: String,
    pub command: String,
    pub secs: f64,
    /// The machine and PostgreSQL the run measured on (empty in a run.json
    /// older than these fields: the report then reads this machine's).
    #[serde(default)]
    pub machine: String,
    #[serde(default)]
    pub pg_version: String,
}

impl Run {
    pub fn now(command: &str, took: Duration) -> Run {
        Run {
            date: now_utc(),
            commit: commit(),
            command: command.into(),
            secs: took.as_secs_f64(),
            machine: machine(),
            pg_version: String::new(),
        }
    }

    /// The run a `run.json` describes (for `--report-only`): its own date,
    /// commit and machine; this machine only where the file predates the
    /// field, and an "(unknown)" run where there is no file.
    fn stored(text: Option<&str>) -> Run {
        let mut run = text
            .and_then(|t| serde_json::from_str::<Run>(t).ok())
            .unwrap_or_else(|| Run::now("(unknown)", Duration::ZERO));
        if run.machine.is_empty() {
            run.machine = machine();
        }
        run
    }
}

pub async fn write(out: &Path, pg: &Pg, run: Option<Run>) -> Result<()> {
    let dir = out.join("bench");
    let live_pg = match pg.admin().await {
        Ok(c) => c
            .query_one("SHOW server_version", &[])
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut run = match run {
        Some(mut r) => {
            r.pg_version = live_pg.clone();
            std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(&r)?)?;
            r
        }
        None => Run::stored(
            std::fs::read_to_string(dir.join("run.json"))
                .ok()
                .as_deref(),
        ),
    };
    if run.pg_version.is_empty() {
        run.pg_version = live_pg;
    }
    let results: Vec<Outcome> = ALL
        .iter()
        .filter_map(|id| {
            let text = std::fs::read_to_string(dir.join(format!("{id}.json"))).ok()?;
            serde_json::from_str(&text).ok()
        })
        .collect();
    let mut md = String::new();
    let w = &mut md;
    writeln!(w, "# roomcast benchmarks\n")?;
    writeln!(w, "Written by `roomcast-bench` (bench/); every figure below was measured by it in one run unless its scenario's date says otherwise. Do not edit by hand: re-run the tool.\n")?;
    writeln!(w, "| | |\n|---|---|")?;
    writeln!(w, "| date | {} |", run.date)?;
    writeln!(w, "| machine | {} |", run.machine)?;
    writeln!(
        w,
        "| PostgreSQL | {} (on the same machine, loopback) |",
        run.pg_version
    )?;
    writeln!(w, "| commit | {} |", run.commit)?;
    writeln!(w, "| command | `cargo build --release && cargo run --release -p roomcast-bench` (this run: `{}`, {:.0} s) |", run.command, run.secs)?;
    writeln!(w, "| server | `target/release/roomcast serve`, a fresh process on a fresh database per scenario, `ROOMCAST_RATE_LIMITS=off`, 2 HTTP workers |")?;
    writeln!(w, "| clients | tokio-tungstenite WebSockets and hyper HTTP/1.1 keep-alive connections on a 2-thread tokio runtime, in the bench process, spread over 127.0.0.1-32 |\n")?;
    writeln!(w, "The clients share the two cores with the server and PostgreSQL. Each scenario lists the CPU seconds each side used during its measured phase; where the clients used as much as the server, or the cores were saturated, the scenario says so: the figure is then a floor of what the server can do, not its ceiling.\n")?;

    writeln!(w, "## Summary\n")?;
    writeln!(
        w,
        "| scenario | goal | measured | verdict |\n|---|---|---|---|"
    )?;
    for r in &results {
        writeln!(
            w,
            "| {} | {} | {} | {} |",
            r.title,
            r.goal,
            r.headline,
            verdict(r)
        )?;
    }
    writeln!(w)?;
    std::fs::write(dir.join("goals.svg"), goals_chart(&results))?;
    writeln!(w, "![each goal, measured / goal](bench/goals.svg)\n")?;

    let notes = std::fs::read_to_string(dir.join("notes.md")).unwrap_or_default();
    if !notes.trim().is_empty() {
        writeln!(w, "{}\n", notes.trim())?;
    }

    for r in &results {
        writeln!(w, "## {}\n", r.title)?;
        writeln!(
            w,
            "Goal: {}. Measured: **{}**: {}.\n",
            r.goal,
            r.headline,
            verdict(r)
        )?;
        writeln!(w, "| | |\n|---|---|")?;
        for (k, v) in &r.rows {
            writeln!(w, "| {k} | {v} |")?;
        }
        let c = &r.cpu;
        if c.wall_s > 0.0 {
            writeln!(w, "| CPU during the measured phase | server {:.2} s, PostgreSQL {:.2} s, bench clients {:.2} s, over {:.2} s |", c.server_s, c.postgres_s, c.client_s, c.wall_s)?;
        }
        writeln!(w, "| measured | {} ({} size) |\n", r.when, r.size)?;
        for n in &r.notes {
            writeln!(w, "{n}\n")?;
        }
        if let Some(svg) = chart(r) {
            std::fs::write(dir.join(format!("{}.svg", r.id)), svg)?;
            writeln!(w, "![{}](bench/{}.svg)\n", r.id, r.id)?;
        }
        writeln!(
            w,
            "Reproduce: `cargo run --release -p roomcast-bench -- --only {}`\n",
            r.id
        )?;
    }
    std::fs::write(out.join("BENCHMARKS.md"), md)?;
    Ok(())
}

fn verdict(r: &Outcome) -> &'static str {
    match r.verdict {
        Verdict::Met => "met",
        Verdict::Missed => "**missed**",
        Verdict::Context => "context",
        Verdict::Failed => "**failed**",
    }
}

fn chart(r: &Outcome) -> Option<String> {
    let d = &r.data;
    match r.id.as_str() {
        "latency" => {
            let mut bars = Vec::new();
            for s in d["sizes"].as_array()? {
                let n = s["subscribers"].as_u64()?;
                bars.push((
                    format!("{n} subs p50"),
                    s["delivery_ms"]["p50"].as_f64()?,
                    "#2b8a3e",
                ));
                bars.push((
                    format!("{n} subs p99"),
                    s["delivery_ms"]["p99"].as_f64()?,
                    "#e67700",
                ));
            }
            Some(bar_chart(
                "Publish -> WebSocket delivery latency (ms)",
                &bars,
                &[(5.0, "p50 goal 5 ms"), (25.0, "p99 goal 25 ms")],
                false,
            ))
        }
        "fanout" => Some(bar_chart(
            "Fan-out, frames/s delivered",
            &[("roomcast".into(), d["frames_per_s"].as_f64()?, "#1971c2")],
            &[(300_000.0, "goal 300k/s")],
            false,
        )),
        "safety_net" => Some(bar_chart(
            "Database queries/s for the safety net (log scale)",
            &[
                (
                    "roomcast".into(),
                    d["roomcast_queries_per_s"].as_f64()?.max(0.01),
                    "#1971c2",
                ),
                (
                    "seed 000, answered".into(),
                    d["seed000_queries_per_s"].as_f64()?,
                    "#c92a2a",
                ),
                (
                    "seed 000, demanded".into(),
                    d["seed000_demanded_per_s"].as_f64()?,
                    "#ffa8a8",
                ),
            ],
            &[],
            true,
        )),
        "soak" => {
            let samples = d["samples"].as_array()?;
            let series = |k: &str| -> Vec<(f64, f64)> {
                samples
                    .iter()
                    .filter_map(|x| Some((x["t_s"].as_f64()?, x[k].as_f64()?)))
                    .collect()
            };
            Some(line_chart(
                "Soak with retention: events table (MiB) and server RSS (MiB) over time (s)",
                &[
                    ("events table MiB", series("table_mib"), "#1971c2"),
                    ("server RSS MiB", series("rss_mib"), "#e67700"),
                ],
            ))
        }
        "scale_out" => {
            let mut bars = Vec::new();
            for run in d["runs"].as_array()? {
                let (bus, n) = (run["bus"].as_str()?, run["instances"].as_u64()?);
                bars.push((
                    format!("{bus} x{n} local p50"),
                    run["local_ms"]["p50"].as_f64()?,
                    "#2b8a3e",
                ));
                if let Some(remote) = run["remote_ms"]["p50"].as_f64() {
                    bars.push((format!("{bus} x{n} remote p50"), remote, "#1971c2"));
                }
            }
            Some(bar_chart(
                "Scale-out: publish -> delivery p50 (ms), local vs remote instances",
                &bars,
                &[],
                false,
            ))
        }
        _ => None,
    }
}

fn goals_chart(results: &[Outcome]) -> String {
    let bars: Vec<(String, f64, &str)> = results
        .iter()
        .filter_map(|r| {
            let s = r.score?;
            let color = if s >= 1.0 { "#2b8a3e" } else { "#c92a2a" };
            Some((r.id.clone(), s.clamp(0.01, 1000.0), color))
        })
        .collect();
    bar_chart(
        "Measured / goal (>= 1 meets the goal; log scale)",
        &bars,
        &[(1.0, "goal")],
        true,
    )
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart with optional goal lines.
fn bar_chart(
    title: &str,
    bars: &[(String, f64, &str)],
    lines: &[(f64, &str)],
    log: bool,
) -> String {
    let (left, right, top, row) = (170.0, 110.0, 40.0, 26.0);
    let width = 760.0;
    let plot = width - left - right;
    let height = top + row * bars.len() as f64 + 40.0;
    let max = bars
        .iter()
        .map(|b| b.1)
        .chain(lines.iter().map(|l| l.0))
        .fold(0.0f64, f64::max)
        * 1.1;
    let min = if log {
        bars.iter()
            .map(|b| b.1)
            .chain(lines.iter().map(|l| l.0))
            .fold(f64::INFINITY, f64::min)
            .max(1e-3)
            / 2.0
    } else {
        0.0
    };
    let x = |v: f64| -> f64 {
        if log {
            left + plot * ((v.max(min) / min).ln() / (max / min).ln())
        } else {
            left + plot * (v / max.max(1e-9))
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, (label, v, color)) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 16.0,
            esc(label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{}" width="{:.1}" height="{}" fill="{color}"/>"#,
            y + 4.0,
            (x(*v) - left).max(1.0),
            row - 8.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            x(*v) + 4.0,
            y + 16.0,
            fmt_num(*v)
        );
    }
    let bottom = top + row * bars.len() as f64;
    for (v, label) in lines {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="black" stroke-dasharray="4 3"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"#,
            x(*v),
            top - 4.0,
            bottom + 4.0,
            bottom + 18.0,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A line chart of a few series over a shared x axis.
fn line_chart(title: &str, series: &[(&str, Vec<(f64, f64)>, &str)]) -> String {
    let (left, right, top, bottom) = (60.0, 160.0, 40.0, 40.0);
    let (width, height) = (760.0, 300.0);
    let (pw, ph) = (width - left - right, height - top - bottom);
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let xmax = xs.fold(0.0f64, f64::max).max(1e-9);
    let ymax = ys.fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let x = |v: f64| left + pw * v / xmax;
    let y = |v: f64| top + ph * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="22" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{0}" stroke="black"/>"#,
        top + ph,
        left + pw
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y(v) + 4.0,
            fmt_num(v)
        );
        let t = xmax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text>"#,
            x(t),
            top + ph + 16.0,
            t
        );
    }
    for (i, (label, points, color)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            left + pw + 14.0,
            top + 20.0 * i as f64,
            left + pw + 30.0,
            top + 10.0 + 20.0 * i as f64,
            esc(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn mem_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib / 1024 / 1024)
        .unwrap_or(0)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// This machine, as the report's header names it.
fn machine() -> String {
    format!(
        "{} ({} cores), {} GiB RAM, Linux {}",
        cpu_model(),
        num_cores(),
        mem_gib(),
        kernel()
    )
}

fn commit() -> String {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let sha = out(&["rev-parse", "--short", "HEAD"]);
    // The results of earlier runs (docs/) do not make the code dirty.
    let dirty = !out(&[
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!docs",
    ])
    .is_empty();
    if dirty {
        format!("{sha} (with uncommitted changes)")
    } else {
        sha
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--report-only` writes the header of the run that measured, not of
    /// the machine it is called on (it used to read the machine live).
    #[test]
    fn a_stored_run_keeps_its_machine() {
        let text = r#"{"date": "2026-12-03T08:23:03.293Z", "commit": "bcefd35",
            "command": "roomcast-bench", "secs": 369.5,
            "machine": "AMD EPYC (2 cores), 23 GiB RAM, Linux 6.18.44-fc-v1098",
            "pg_version": "15.20"}"#;
        let run = Run::stored(Some(text));
        assert_eq!(
            (
                run.commit.as_str(),
                run.machine.as_str(),
                run.pg_version.as_str()
            ),
            (
                "bcefd35",
                "AMD EPYC (2 cores), 23 GiB RAM, Linux 6.18.44-fc-v1098",
                "15.20"
            )
        );
        // A run.json from before the field: the machine is this one.
        let old = r#"{"date": "d", "commit": "c", "command": "x", "secs": 1.0}"#;
        let run = Run::stored(Some(old));
        assert_eq!((run.commit.as_str(), run.machine.clone()), ("c", machine()));
        assert!(run.pg_version.is_empty(), "filled from the live server");
        assert_eq!(Run::stored(None).command, "(unknown)");
    }
}
