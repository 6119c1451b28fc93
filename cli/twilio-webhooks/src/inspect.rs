//! `twilio-webhooks inspect`: what the local store holds, as a readable summary or JSON lines.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use crate::util::CliResult;

#[derive(Args)]
#[command(after_help = "\
Exit codes:
  0  printed
  1  error (no local data in --data, unreadable store)
  2  usage error")]
pub struct InspectArgs {
    /// Data directory of `twilio-webhooks serve`.
    #[arg(long, value_name = "DIR", default_value = ".local-data")]
    data: PathBuf,
    /// One JSON value per line instead of the summary: `{"type":"event",...}`,
    /// `{"type":"state",...}`, `{"type":"job","status":"queued|dead",...}`.
    #[arg(long)]
    json: bool,
}

/// Safe while `serve` runs (one read snapshot).
pub fn run(args: InspectArgs) -> CliResult {
    let lines = webhook_local::inspect(&args.data).map_err(|e| e.to_string())?;
    let text = if args.json {
        lines.iter().fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "{line}");
            out
        })
    } else {
        summary(&lines)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `inspect | head`: the reader left, which is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("cannot write to stdout: {e}")),
    }
}

/// Unix milliseconds as `2026-11-29 10:00:01Z`.
fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        )
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// Events (time, kind, key, outcome, processed), then states, then the job counts.
fn summary(lines: &[Value]) -> String {
    let of = |t: &'static str| lines.iter().filter(move |l| l["type"] == t);
    // The worst job per key: a dead-lettered job is what the operator must see.
    let mut job_of: HashMap<&str, &str> = HashMap::new();
    for job in of("job") {
        let status = str_of(job, "status");
        let slot = job_of.entry(str_of(job, "key")).or_insert(status);
        if status == "dead" {
            *slot = "dead";
        }
    }
    let now_ms = webhook_pipeline::now_ms();
    let mut out = String::new();

    let events: Vec<&Value> = of("event").collect();
    let _ = writeln!(out, "Events ({})", events.len());
    if !events.is_empty() {
        let _ = writeln!(
            out,
            "  {:<20}  {:<22}  {:<12}  {:<20}  KEY",
            "RECEIVED", "KIND", "OUTCOME", "PROCESSED"
        );
    }
    for e in &events {
        let processed = e["processed"].as_bool().unwrap_or(false);
        let key = str_of(e, "key");
        let outcome = if processed {
            "processed"
        } else if job_of.get(key) == Some(&"dead") {
            "dead-letter"
        } else if e["lease_until"].as_i64().is_some_and(|l| l > now_ms) {
            "in progress"
        } else {
            "pending"
        };
        let _ = writeln!(
            out,
            "  {:<20}  {:<22}  {:<12}  {:<20}  {key}",
            time(e["received_at"].as_i64()),
            str_of(e, "kind"),
            outcome,
            if processed {
                time(e["processed_at"].as_i64())
            } else {
                "-".to_owned()
            },
        );
    }

    let states: Vec<&Value> = of("state").collect();
    let _ = writeln!(out, "\nStates ({})", states.len());
    for s in &states {
        let mut line = format!(
            "  {}  {}  ({} updates, version {})",
            str_of(s, "id"),
            str_of(s, "latest_status"),
            s["timeline"].as_array().map_or(0, Vec::len),
            s["version"]
        );
        if let Some(code) = s.get("error_code").filter(|c| !c.is_null()) {
            let _ = write!(
                line,
                "  error {}",
                code.as_str()
                    .map_or_else(|| code.to_string(), str::to_owned)
            );
            if let Some(meaning) = s["error_meaning"].as_str() {
                let _ = write!(line, ": {meaning}");
            }
        }
        let _ = writeln!(out, "{line}");
    }

    let queued = of("job").filter(|j| j["status"] == "queued").count();
    let dead = of("job").filter(|j| j["status"] == "dead").count();
    let _ = writeln!(out, "\nJobs: {queued} queued, {dead} dead-lettered");
    let others = lines
        .iter()
        .filter(|l| !matches!(l["type"].as_str(), Some("event" | "state" | "job")))
        .count();
    if others > 0 {
        let _ = writeln!(out, "({others} more records: see --json)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_shows_each_event_outcome_states_and_jobs() {
        let lines = vec![
            json!({"type": "event", "key": "SM1", "kind": "inbound_message", "processed": true,
                   "received_at": 1_795_788_000_000_i64, "processed_at": 1_795_788_001_000_i64, "lease_until": 0}),
            json!({"type": "event", "key": "SM2", "kind": "inbound_message", "processed": false,
                   "received_at": 1_795_788_002_000_i64, "processed_at": null, "lease_until": 0}),
            json!({"type": "event", "key": "CA1#0", "kind": "call_status", "processed": false,
                   "received_at": 1_795_788_003_000_i64, "processed_at": null, "lease_until": 0}),
            json!({"type": "event", "key": "CA2#0", "kind": "call_status", "processed": false,
                   "received_at": 1_795_788_003_000_i64, "processed_at": null, "lease_until": i64::MAX}),
            json!({"type": "state", "id": "SM9", "latest_status": "undelivered", "version": 3,
                   "timeline": [1, 2, 3], "error_code": "30003", "error_meaning": "Unreachable destination handset"}),
            json!({"type": "job", "key": "SM2", "status": "queued"}),
            json!({"type": "job", "key": "CA1#0", "status": "dead"}),
        ];
        let text = summary(&lines);
        assert!(text.starts_with("Events (4)\n"), "{text}");
        assert!(text.contains("2026-11-27 14:00:00Z  inbound_message         processed     2026-11-27 14:00:01Z  SM1"), "{text}");
        assert!(
            text.contains("inbound_message         pending       -                     SM2"),
            "{text}"
        );
        assert!(
            text.contains("dead-letter") && text.contains("in progress"),
            "{text}"
        );
        assert!(text.contains("SM9  undelivered  (3 updates, version 3)  error 30003: Unreachable destination handset"), "{text}");
        assert!(text.contains("Jobs: 1 queued, 1 dead-lettered"), "{text}");
        assert_eq!(
            summary(&[]),
            "Events (0)\n\nStates (0)\n\nJobs: 0 queued, 0 dead-lettered\n"
        );
    }
}
