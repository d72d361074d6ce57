//! `ferry job …`: the jobs of a running `ferry serve`, over its REST API.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::out::{out, outln};
use anyhow::{bail, Context};
use ferry_sync::FileConfig;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct JobArgs {
    /// The service's address.
    #[arg(
        long,
        global = true,
        env = "FERRY_SERVER",
        default_value = "http://127.0.0.1:7379"
    )]
    server: String,
    /// The service's token, if it has one.
    #[arg(long, global = true, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(clap::Subcommand)]
enum JobCommand {
    /// The jobs, one a line.
    List,
    /// One job's figures and history.
    Show {
        name: String,
    },
    /// Create a job from a TOML file (as for `ferry sync --config`, plus `description`)
    /// or a JSON job spec (`.json`).
    Create {
        #[arg(long)]
        config: PathBuf,
        /// Start it right away (after a passing pre-check).
        #[arg(long)]
        start: bool,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Stop the job, delete its checkpoint on the target, and forget it.
    Delete {
        name: String,
    },
    /// Run the job's pre-check.
    Precheck {
        name: String,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base.trim_end_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the service at {}", self.base))?;
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let mut msg = value["error"]
                .as_str()
                .unwrap_or("request failed")
                .to_string();
            if let Some(checks) = value["checks"].as_array() {
                msg.push('\n');
                msg.push_str(&checks_table(checks));
            }
            bail!("{status}: {msg}");
        }
        Ok(value)
    }
}

pub async fn run(args: JobArgs) -> ExitCode {
    match go(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry job: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn path_name(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn go(args: JobArgs) -> anyhow::Result<()> {
    let client = Client {
        http: reqwest::Client::new(),
        base: args.server,
        token: args.token,
    };
    use reqwest::Method;
    let post = |action: &'static str, name: String| {
        let c = &client;
        async move {
            c.call(
                Method::POST,
                &format!("/jobs/{}/{action}", path_name(&name)),
                None,
            )
            .await
        }
    };
    match args.command {
        JobCommand::List => {
            let v = client.call(Method::GET, "/jobs", None).await?;
            out!(
                "{}",
                list_table(v["jobs"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            );
        }
        JobCommand::Show { name } => {
            let v = client
                .call(Method::GET, &format!("/jobs/{}", path_name(&name)), None)
                .await?;
            out!("{}", show(&v));
        }
        JobCommand::Create { config, start } => {
            let body = spec_from_file(&config)?;
            let q = if start { "?start=true" } else { "" };
            let v = client
                .call(Method::POST, &format!("/jobs{q}"), Some(body))
                .await?;
            outln!(
                "created job {} ({})",
                v["name"].as_str().unwrap_or(""),
                v["state"].as_str().unwrap_or("")
            );
        }
        JobCommand::Start { name } => report(&post("start", name).await?),
        JobCommand::Stop { name } => report(&post("stop", name).await?),
        JobCommand::Pause { name } => report(&post("pause", name).await?),
        JobCommand::Resume { name } => report(&post("resume", name).await?),
        JobCommand::Precheck { name } => {
            let v = post("precheck", name).await?;
            out!(
                "{}",
                checks_table(v["checks"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            );
        }
        JobCommand::Delete { name } => {
            let v = client
                .call(Method::DELETE, &format!("/jobs/{}", path_name(&name)), None)
                .await?;
            outln!("deleted job {}", v["deleted"].as_str().unwrap_or(&name));
            if let Some(w) = v["warning"].as_str() {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(())
}

fn report(v: &Value) {
    outln!(
        "{}: {}",
        v["name"].as_str().unwrap_or(""),
        v["state"].as_str().unwrap_or("")
    );
}

/// A job spec from `ferry sync`'s TOML (URLs for source and target) or a JSON spec.
fn spec_from_file(path: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text).with_context(|| format!("{}", path.display()));
    }
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let description = table.remove("description");
    let file: FileConfig = table
        .try_into()
        .with_context(|| format!("{}", path.display()))?;
    let at = path.display();
    // What `ferry sync --config` honours and a service job cannot hold is refused by name,
    // never dropped.
    let tls_set = |t: &ferry_sync::TlsConfig| {
        t.ca_file.is_some()
            || t.cert_file.is_some()
            || t.key_file.is_some()
            || t.server_name.is_some()
            || t.insecure.is_some()
    };
    let mut cannot = Vec::new();
    if file.source_method.as_deref().is_some_and(|m| m != "psync") {
        cannot.push("source_method (a service job reads by PSYNC)");
    }
    if file.psync_command.is_some() {
        cannot.push("psync_command");
    }
    if file.aof_until.is_some() {
        cannot.push("aof_until");
    }
    if tls_set(&file.source_tls) {
        cannot.push("[source_tls] (the service takes rediss:// with the system's CAs)");
    }
    if tls_set(&file.target_tls) {
        cannot.push("[target_tls] (the service takes rediss:// with the system's CAs)");
    }
    if file
        .source
        .as_deref()
        .is_some_and(|s| s.starts_with("rdb:") || s.starts_with("aof:"))
    {
        cannot.push("a file source (rdb:/aof:): run it with ferry sync");
    }
    if !cannot.is_empty() {
        anyhow::bail!(
            "{at}: a service job cannot carry {}; run this job with `ferry sync --config {at}`",
            cannot.join(", ")
        );
    }
    let topology = |what: &str, t: &Option<String>| -> anyhow::Result<String> {
        match t.as_deref() {
            // The service's default, as for a spec sent to the API.
            None => Ok("standalone".to_string()),
            Some("auto") => anyhow::bail!(
                "{at}: the service stores the {what}'s topology: set {what}_type to standalone, replica-set, cluster or sentinel (not auto)"
            ),
            Some(t) => Ok(t.to_string()),
        }
    };
    let source_type = topology("source", &file.source_type)?;
    let target_type = topology("target", &file.target_type)?;
    let name = file
        .name
        .clone()
        .with_context(|| format!("{at}: give the job a name"))?;
    // Every address, parsed as `ferry sync` parses them (credentials of the first apply to
    // the others).
    let job = FileConfig {
        name: Some(name.clone()),
        source: file.source.clone(),
        target: file.target.clone(),
        source_type: Some(source_type.clone()),
        source_master: file.source_master.clone(),
        target_type: Some(target_type.clone()),
        target_master: file.target_master.clone(),
        ..Default::default()
    }
    .merge(FileConfig::default())
    .with_context(|| format!("{at}"))?;
    if job.source_seeds[0].db.is_some() || job.target.db.is_some() {
        anyhow::bail!(
            "{at}: a service job takes no database in its URLs: use [filter] include_dbs and db_map"
        );
    }
    let endpoint = |seeds: &[ferry_resp::Endpoint], topology: &str, master: &Option<String>| {
        let first = &seeds[0];
        json!({
            "topology": topology,
            "addresses": seeds.iter().map(|e| e.addr()).collect::<Vec<_>>(),
            "username": first.username, "password": first.password, "tls": first.tls,
            "master_name": master,
        })
    };
    let mut spec = json!({
        "name": name,
        "source": endpoint(&job.source_seeds, &source_type, &file.source_master),
        "target": endpoint(&job.target_seeds, &target_type, &file.target_master),
        "use_replica": file.use_replica,
        "mode": file.mode, "overwrite": file.overwrite, "checkpoint": file.checkpoint,
        "allow_nonempty_target": file.allow_nonempty_target, "allow_flush": file.allow_flush,
        "rate_limit_mb": file.rate_limit_mb, "source_timeout": file.source_timeout,
        "target_timeout": file.target_timeout,
        "big_key_threshold": file.big_key_threshold, "big_key_elements": file.big_key_elements,
        "skip_unsupported": file.skip_unsupported,
        "skip_failed_commands": file.skip_failed_commands,
        "filter": file.filter, "db_map": file.db_map,
        "retry": {
            "policy": file.retry.policy, "connection_limit": file.retry.connection_limit,
            "other_limit": file.retry.other_limit, "connection_window": file.retry.connection_window,
            "other_window": file.retry.other_window, "time_zone": file.retry.time_zone,
        },
    });
    if let Some(d) = description.and_then(|d| d.as_str().map(str::to_string)) {
        spec["description"] = json!(d);
    }
    strip_nulls(&mut spec);
    Ok(spec)
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, v| !v.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.1}"),
        None => "-".into(),
    }
}

/// The lag of a job or shard view, or why it is unknown: the API leaves the lag out while
/// the source link is down, and a 0 there would look healthy.
fn lag_text(v: &Value, short: bool) -> String {
    match (v["lag_bytes"].as_u64(), v["lag_seconds"].as_f64()) {
        (Some(_), Some(secs)) if short => format!("{secs:.1}"),
        (Some(bytes), Some(secs)) => format!("{bytes} bytes, {secs:.1} s"),
        _ if short => "unknown".into(),
        _ => match v["seconds_since_contact"].as_f64() {
            Some(n) => format!("lag unknown (source unreachable for {n:.0} s)"),
            None => "lag unknown (source not reached yet)".into(),
        },
    }
}

fn list_table(jobs: &[Value]) -> String {
    let mut rows = vec![[
        "NAME", "STATE", "PROGRESS", "MODE", "SOURCE", "TARGET", "READ", "APPLIED", "LAG(s)",
    ]
    .map(String::from)];
    for j in jobs {
        let nodes = |k: &str| {
            j[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        rows.push([
            j["name"].as_str().unwrap_or("").to_string(),
            j["state"].as_str().unwrap_or("").to_string(),
            format!("{}%", num(&j["progress_percent"])),
            j["mode"].as_str().unwrap_or("").to_string(),
            nodes("source_nodes"),
            nodes("target_nodes"),
            num(&j["source_transactions"]),
            num(&j["target_transactions"]),
            lag_text(j, true),
        ]);
    }
    columns(&rows)
}

/// Rows as left-aligned columns two spaces apart.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn show(v: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, val: String| out.push_str(&format!("{k:<30} {val}\n"));
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let nodes = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    line(&mut out, "Name", s("name"));
    line(&mut out, "Description", s("description"));
    line(&mut out, "Source node", nodes("source_nodes"));
    line(&mut out, "Target node", nodes("target_nodes"));
    line(&mut out, "Status", s("state"));
    line(&mut out, "Sync progress (%)", num(&v["progress_percent"]));
    line(&mut out, "Mode", s("mode"));
    line(
        &mut out,
        "Source transactions executed",
        num(&v["source_transactions"]),
    );
    line(
        &mut out,
        "Target transactions executed",
        num(&v["target_transactions"]),
    );
    line(&mut out, "Lag", lag_text(v, false));
    line(
        &mut out,
        "Rate",
        format!("{} records/s applied", num(&v["apply_rate"])),
    );
    line(&mut out, "Attempts", num(&v["attempts"]));
    if let Some(n) = v["next_attempt"].as_str() {
        line(&mut out, "Next attempt", n.to_string());
    }
    if let Some(e) = v["last_error"].as_str() {
        line(&mut out, "Last error", e.to_string());
    }
    if let Some(w) = v["worker"].as_str() {
        let addr = v["worker_address"].as_str().unwrap_or("?");
        line(&mut out, "Worker", format!("{w} ({addr})"));
    }
    if let Some(shards) = v["shards"].as_array().filter(|a| !a.is_empty()) {
        out.push_str("Shards:\n");
        let mut rows = vec![[
            "SHARD", "STATE", "NODE", "WORKER", "PROGRESS", "APPLIED", "LAG(s)", "ERROR",
        ]
        .map(String::from)];
        for sh in shards {
            let text = |k: &str| sh[k].as_str().unwrap_or("-").to_string();
            rows.push([
                text("shard"),
                text("state"),
                text("node"),
                text("worker"),
                format!("{}%", num(&sh["progress_percent"])),
                num(&sh["records_applied"]),
                lag_text(sh, true),
                sh["error"]
                    .as_str()
                    .or(sh["last_error"].as_str())
                    .unwrap_or("")
                    .to_string(),
            ]);
        }
        for l in columns(&rows).lines() {
            out.push_str(&format!("  {l}\n"));
        }
    }
    if let Some(h) = v["history"].as_array() {
        out.push_str("History:\n");
        for e in h {
            let at = e["at"]
                .as_i64()
                .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
            out.push_str(&format!(
                "  {}  {}\n",
                at.map(|t| t.to_string()).unwrap_or_default(),
                e["message"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

fn checks_table(checks: &[Value]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<5} {:<32} {}\n",
            c["level"].as_str().unwrap_or("").to_uppercase(),
            c["name"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        ));
        if let Some(f) = c["fix"].as_str() {
            out.push_str(&format!("{:<5} {:<32} fix: {f}\n", "", ""));
        }
    }
    out
}

#[cfg(test)]
mod lag_tests {
    use super::lag_text;
    use serde_json::json;

    #[test]
    fn an_absent_lag_is_unknown_not_zero() {
        let up = json!({"lag_bytes": 12, "lag_seconds": 0.25, "link_up": true});
        assert_eq!(lag_text(&up, false), "12 bytes, 0.2 s");
        assert_eq!(lag_text(&up, true), "0.2");
        let down = json!({"link_up": false, "seconds_since_contact": 42.4});
        assert_eq!(
            lag_text(&down, false),
            "lag unknown (source unreachable for 42 s)"
        );
        assert_eq!(lag_text(&down, true), "unknown");
        assert_eq!(
            lag_text(&json!({"link_up": false}), false),
            "lag unknown (source not reached yet)"
        );
    }
}
