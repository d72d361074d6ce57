//! `/metrics` in the Prometheus text format, written out from the jobs' live counters on
//! each scrape. No global recorder: a deleted job's series disappear with it, and the
//! figures are exactly the ones the API shows.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::runner::Running;

/// States a job can show; `ferry_job_state` has one series per state, 1 for the current.
const STATES: [&str; 7] = [
    "starting",
    "full-sync",
    "incremental",
    "retrying",
    "completed",
    "stopped",
    "failed",
];

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const FAMILIES: [Family; 12] = [
    Family {
        name: "ferry_records_read_total",
        kind: "counter",
        help: "Records (snapshot keys and commands) read from the source.",
    },
    Family {
        name: "ferry_records_applied_total",
        kind: "counter",
        help: "Records applied on the target.",
    },
    Family {
        name: "ferry_bytes_read_total",
        kind: "counter",
        help: "Bytes received from the source.",
    },
    Family {
        name: "ferry_lag_bytes",
        kind: "gauge",
        help: "Replication bytes read but not yet applied.",
    },
    Family {
        name: "ferry_lag_seconds",
        kind: "gauge",
        help: "Age of the oldest write read but not yet applied.",
    },
    Family {
        name: "ferry_source_link_up",
        kind: "gauge",
        help: "1 while the shard's reader is connected to the source and reading; while 0 the lag is unknown and the lag series are absent.",
    },
    Family {
        name: "ferry_source_last_contact_seconds",
        kind: "gauge",
        help: "Seconds since anything (data, pings, newlines) was last read from the source.",
    },
    Family {
        name: "ferry_job_state",
        kind: "gauge",
        help: "1 for the job's current state.",
    },
    Family {
        name: "ferry_retries_total",
        kind: "counter",
        help: "Attempts retried after a failure.",
    },
    Family {
        name: "ferry_errors_total",
        kind: "counter",
        help: "Failures seen (retried or final).",
    },
    Family {
        name: "ferry_split_transactions_total",
        kind: "counter",
        help: "Source transactions spanning slots of a cluster target, applied as one transaction per slot (each part atomic, not the whole), since the task started on this worker.",
    },
    Family {
        name: "ferry_commands_failed_total",
        kind: "counter",
        help: "Replicated commands the target refused and the job went past (skip_failed_commands), since the task started on this worker.",
    },
];

/// Escapes a label value as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One job (or task) as `/metrics` shows it.
pub struct Series<'a> {
    pub job: &'a str,
    pub shard: &'a str,
    pub status: &'a ferry_sync::JobStatus,
    pub totals: crate::store::Totals,
    pub retries: u64,
    pub errors: u64,
}

pub fn render(jobs: &[std::sync::Arc<Running>]) -> String {
    let series: Vec<Series> = jobs
        .iter()
        .map(|r| Series {
            job: &r.name,
            shard: &r.key.shard,
            status: &r.status,
            totals: r.totals(),
            retries: r.retries_total.load(Relaxed),
            errors: r.errors_total.load(Relaxed),
        })
        .collect();
    render_series(&series)
}

/// `ferry sync --metrics-listen`: the same families for the one job the CLI runs.
pub fn render_cli(job: &str, status: &ferry_sync::JobStatus) -> String {
    let s = &status.stats;
    let view = status.view();
    render_series(&[Series {
        job,
        shard: "all",
        status,
        totals: crate::store::Totals {
            records_read: s.records_read.load(Relaxed),
            records_applied: s.records_applied.load(Relaxed),
            keys_read: s.keys_read.load(Relaxed),
            keys_applied: s.keys_applied.load(Relaxed),
            bytes_read: s.bytes_read.load(Relaxed),
        },
        retries: u64::from(view.attempts),
        errors: u64::from(view.last_error.is_some()),
    }])
}

/// Serves `GET /metrics` for the CLI's job on `addr` until the process ends.
pub async fn serve_cli(
    addr: std::net::SocketAddr,
    job: String,
    status: std::sync::Arc<ferry_sync::JobStatus>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = render_cli(&job, &status);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    body,
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    }))
}

pub fn render_series(jobs: &[Series]) -> String {
    let mut out = String::new();
    // Present with no job at all: a scrape always shows the build and the task counts.
    let _ = writeln!(
        out,
        "# HELP ferry_build_info The ferry build serving these metrics."
    );
    let _ = writeln!(out, "# TYPE ferry_build_info gauge");
    let _ = writeln!(
        out,
        "ferry_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP ferry_tasks Tasks (one job's source shard each) this process runs, by state."
    );
    let _ = writeln!(out, "# TYPE ferry_tasks gauge");
    let states: Vec<&str> = jobs.iter().map(|r| r.status.view().state.name()).collect();
    for st in STATES {
        let n = states.iter().filter(|s| **s == st).count();
        let _ = writeln!(out, "ferry_tasks{{state=\"{st}\"}} {n}");
    }
    for f in &FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for r in jobs {
            let stats = &r.status.stats;
            let totals = &r.totals;
            let labels = format!("job=\"{}\",shard=\"{}\"", label(r.job), label(r.shard));
            let value = match f.name {
                "ferry_records_read_total" => totals.records_read.to_string(),
                "ferry_records_applied_total" => totals.records_applied.to_string(),
                "ferry_bytes_read_total" => totals.bytes_read.to_string(),
                // No lag series while it is unknown: a 0 would look healthy.
                "ferry_lag_bytes" => match stats.known_lag_bytes() {
                    Some(l) => l.to_string(),
                    None => continue,
                },
                "ferry_lag_seconds" => match stats.known_lag_seconds() {
                    Some(l) => format!("{l:.3}"),
                    None => continue,
                },
                "ferry_source_link_up" => u8::from(stats.link_up()).to_string(),
                "ferry_source_last_contact_seconds" => match stats.seconds_since_contact() {
                    Some(s) => format!("{s:.3}"),
                    None => continue,
                },
                "ferry_retries_total" => r.retries.to_string(),
                "ferry_errors_total" => r.errors.to_string(),
                "ferry_split_transactions_total" => {
                    stats.split_transactions.load(Relaxed).to_string()
                }
                "ferry_commands_failed_total" => stats.commands_failed.load(Relaxed).to_string(),
                _ => {
                    let current = r.status.view().state.name();
                    for s in STATES {
                        let _ = writeln!(
                            out,
                            "{}{{{labels},state=\"{s}\"}} {}",
                            f.name,
                            u8::from(s == current)
                        );
                    }
                    continue;
                }
            };
            let _ = writeln!(out, "{}{{{labels}}} {value}", f.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the shipped Grafana dashboard queries is one ferry exports.
    #[test]
    fn the_dashboard_uses_only_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../docs/grafana/ferry.json"))
                .expect("the dashboard is JSON");
        let exported = render_series(&[]);
        let mut exprs = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        if k == "expr" {
                            out.push(v.as_str().unwrap_or_default().to_string());
                        } else {
                            walk(v, out);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut exprs);
        assert!(
            exprs.len() >= 6,
            "the dashboard has {} queries",
            exprs.len()
        );
        for e in &exprs {
            let names: Vec<&str> = e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("ferry_"))
                .collect();
            assert!(!names.is_empty(), "a query without a ferry series: {e}");
            for n in names {
                assert!(
                    exported.contains(&format!("# TYPE {n} ")),
                    "the dashboard queries {n}, which ferry does not export ({e})"
                );
            }
        }
    }

    #[test]
    fn build_and_task_counts_with_no_job() {
        let out = render_series(&[]);
        assert!(out.contains("ferry_build_info{version=\""));
        assert!(out.contains("ferry_tasks{state=\"incremental\"} 0"));
    }
}
