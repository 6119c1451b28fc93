//! Metrics in CloudWatch Embedded Metric Format (EMF): one JSON line on stdout per
//! measurement, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics. No API
//! call and no batching on the hot path: a few lines of `serde_json` instead of a crate (the
//! ones that exist wrap the same dozen lines and pull an async runtime of their own).
//!
//! Names (the template's alarms and dashboard use exactly these; `check_template.py` checks):
//! Each is published in total (no dimension: what the alarms watch) and by its dimensions.
//! - per webhook, dimensions `Endpoint` and `Endpoint`+`Kind`: `Accepted`, `Duplicate`,
//!   `Refused` (401/403), `Malformed` (400), `Failed` (5xx, or a fallback not recorded),
//!   `Latency` (ms), and `FallbackUsed` on the fallback endpoint;
//! - per worker job, dimension `Kind`: `Processed`, `JobFailed`, `EventAge` (ms from receipt to
//!   processing), and `ForwardLatency` (ms) per slow work, dimension `Work`;
//! - per sweep: `Resent`, `Parked`, `SweepFailed`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::config::METRICS_NAMESPACE;
use crate::pipeline::now_ms;

/// Set by Lambda from the function's `LoggingConfig.ApplicationLogLevel` (JSON log format):
/// TRACE, DEBUG, INFO, WARN, ERROR or FATAL.
pub const AWS_LAMBDA_LOG_LEVEL: &str = "AWS_LAMBDA_LOG_LEVEL";

/// The namespace when `METRICS_NAMESPACE` is unset.
pub const DEFAULT_NAMESPACE: &str = "TwilioWebhooks";

/// Where EMF lines go: stdout in Lambda, a buffer in tests.
pub type Sink = Arc<dyn Fn(String) + Send + Sync>;

/// A CloudWatch unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A number of things (events, records).
    Count,
    /// A duration.
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// Emits EMF lines, or nothing when disabled (the local server, tests by default).
#[derive(Clone, Default)]
pub struct Metrics {
    target: Option<(String, Sink)>,
    /// The line's `level` member, when set (see [`Metrics::stdout_from_env`]).
    level: Option<&'static str>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("namespace", &self.target.as_ref().map(|(n, _)| n))
            .finish()
    }
}

impl Metrics {
    /// No metrics.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// EMF lines on stdout, in `METRICS_NAMESPACE`, each with the `level` Lambda's log-level
    /// filter keeps ([`kept_level`] of `AWS_LAMBDA_LOG_LEVEL`).
    pub fn stdout_from_env() -> Self {
        let namespace =
            crate::config::var(METRICS_NAMESPACE).unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let level = kept_level(crate::config::var(AWS_LAMBDA_LOG_LEVEL).as_deref());
        Self::to_sink(
            namespace,
            Arc::new(|line: String| {
                use std::io::Write as _;
                // One write per line, so concurrent lines never interleave.
                let _ = std::io::stdout()
                    .lock()
                    .write_all(format!("{line}\n").as_bytes());
            }),
        )
        .with_level(level)
    }

    /// Give every line this `level` member.
    pub fn with_level(mut self, level: &'static str) -> Self {
        self.level = Some(level);
        self
    }

    /// EMF lines handed to `sink`.
    pub fn to_sink(namespace: impl Into<String>, sink: Sink) -> Self {
        Self {
            target: Some((namespace.into(), sink)),
            level: None,
        }
    }

    /// One EMF line: `values` in total, by the first of `dimensions`, and by all of them.
    pub fn emit(&self, dimensions: &[(&str, &str)], values: &[(&str, Unit, f64)]) {
        let Some((namespace, sink)) = &self.target else {
            return;
        };
        if values.is_empty() {
            return;
        }
        let names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
        // The total (an empty set: no dimensions, what the alarms watch), then by the first
        // dimension, then by all of them.
        let mut sets = vec![Vec::new()];
        if let Some(first) = names.first() {
            sets.push(vec![*first]);
        }
        if names.len() > 1 {
            sets.push(names.clone());
        }
        let mut line = Map::new();
        line.insert(
            "_aws".into(),
            json!({
                "Timestamp": now_ms(),
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": sets,
                    "Metrics": values
                        .iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        if let Some(level) = self.level {
            line.insert("level".into(), Value::String(level.into()));
        }
        for (k, v) in dimensions {
            line.insert((*k).into(), Value::String((*v).into()));
        }
        for (name, _, v) in values {
            line.insert((*name).into(), json!(v));
        }
        sink(Value::Object(line).to_string());
    }
}

/// The level Lambda's application log-level filter (`AWS_LAMBDA_LOG_LEVEL`, JSON log format)
/// keeps: INFO, or the configured level when it is above INFO. Lambda reads a line without a
/// `level` as INFO, so with `ApplicationLogLevel: WARN` it would drop every EMF line, and the
/// metrics and their alarms would go silent.
pub fn kept_level(aws_lambda_log_level: Option<&str>) -> &'static str {
    match aws_lambda_log_level
        .map(|l| l.trim().to_ascii_uppercase())
        .as_deref()
    {
        Some("WARN") => "WARN",
        Some("ERROR") => "ERROR",
        Some("FATAL") => "FATAL",
        _ => "INFO",
    }
}

/// Check one line against the EMF specification's structure (used by tests): `_aws` with an
/// integer `Timestamp` and `CloudWatchMetrics` directives, each with a `Namespace`,
/// `Dimensions` (arrays of at most 30 names, each a top-level string member) and `Metrics`
/// (at most 100, each named, with a valid unit, whose value is a top-level number).
pub fn check_emf(line: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let root = v.as_object().ok_or("not an object")?;
    let aws = root
        .get("_aws")
        .and_then(Value::as_object)
        .ok_or("no _aws object")?;
    if !aws.get("Timestamp").is_some_and(Value::is_i64) {
        return Err("_aws.Timestamp must be an integer (ms)".into());
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("_aws.CloudWatchMetrics must be an array")?;
    for d in directives {
        let ns = d
            .get("Namespace")
            .and_then(Value::as_str)
            .ok_or("no Namespace")?;
        if ns.is_empty() || ns.len() > 255 {
            return Err("Namespace must be 1-255 characters".into());
        }
        let sets = d
            .get("Dimensions")
            .and_then(Value::as_array)
            .ok_or("Dimensions must be an array")?;
        for set in sets {
            let set = set.as_array().ok_or("a dimension set must be an array")?;
            if set.len() > 30 {
                return Err("more than 30 dimensions in a set".into());
            }
            for name in set {
                let name = name.as_str().ok_or("a dimension name must be a string")?;
                if !root.get(name).is_some_and(Value::is_string) {
                    return Err(format!("dimension {name} is not a top-level string"));
                }
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(Value::as_array)
            .ok_or("Metrics must be an array")?;
        if metrics.is_empty() || metrics.len() > 100 {
            return Err("1 to 100 metrics per directive".into());
        }
        for m in metrics {
            let name = m
                .get("Name")
                .and_then(Value::as_str)
                .ok_or("a metric without Name")?;
            if !matches!(
                m.get("Unit").and_then(Value::as_str),
                Some("Count" | "Milliseconds")
            ) {
                return Err(format!("metric {name}: unexpected unit"));
            }
            if !root.get(name).is_some_and(Value::is_number) {
                return Err(format!("metric {name} has no top-level number"));
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn capture() -> (Metrics, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        (
            Metrics::to_sink("Test", Arc::new(move |l| sink.lock().unwrap().push(l))),
            lines,
        )
    }

    #[test]
    fn lines_follow_the_emf_structure() {
        let (m, lines) = capture();
        m.emit(
            &[("Endpoint", "sms"), ("Kind", "inbound_message")],
            &[
                ("Accepted", Unit::Count, 1.0),
                ("Latency", Unit::Milliseconds, 3.5),
            ],
        );
        m.emit(&[], &[("Resent", Unit::Count, 2.0)]);
        // (checked below: a dimension-less metric has one empty dimension set)
        m.emit(&[("Kind", "x")], &[]);
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2);
        let v = check_emf(&lines[0]).unwrap();
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[], ["Endpoint"], ["Endpoint", "Kind"]])
        );
        assert_eq!(v["Accepted"], 1.0);
        assert_eq!(v["Kind"], "inbound_message");
        let v = check_emf(&lines[1]).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([[]]));
        // The checker rejects what CloudWatch would drop.
        for bad in [
            r#"{"_aws":{"Timestamp":"1","CloudWatchMetrics":[]}}"#,
            r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["D"]],"Metrics":[{"Name":"M","Unit":"Count"}]}]},"M":1}"#,
            r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[],"Metrics":[{"Name":"M","Unit":"Count"}]}]},"M":"1"}"#,
        ] {
            assert!(check_emf(bad).is_err(), "{bad}");
        }
        assert!(Metrics::disabled().target.is_none());
    }

    #[test]
    fn lines_carry_a_level_lambdas_filter_keeps() {
        let (m, lines) = capture();
        let m = m.with_level(kept_level(Some("WARN")));
        m.emit(&[("Kind", "x")], &[("Processed", Unit::Count, 1.0)]);
        let v = check_emf(&lines.lock().unwrap()[0]).unwrap();
        assert_eq!(v["level"], "WARN");
        for (configured, kept) in [
            (None, "INFO"),
            (Some("TRACE"), "INFO"),
            (Some("debug"), "INFO"),
            (Some("INFO"), "INFO"),
            (Some("ERROR"), "ERROR"),
            (Some("FATAL"), "FATAL"),
        ] {
            assert_eq!(kept_level(configured), kept, "{configured:?}");
        }
    }
}
