//! Logs in Lambda's own shapes: with the function's `LogFormat: JSON` (template.yaml), one JSON
//! object per line with `timestamp`, `level`, `message` and `requestId` at the top level, as
//! Lambda's managed runtimes write them, so that CloudWatch Logs Insights and Lambda's level
//! filter (`ApplicationLogLevel`) read our lines like theirs. `lambda_runtime::tracing`'s own
//! subscriber is not used: its JSON nests the message under `fields` and `requestId` under
//! `spans`, and it has no FATAL.
//!
//! Settings, read once at cold start:
//! - format: `LOG_FORMAT` (`json` / `text`) when set, else `AWS_LAMBDA_LOG_FORMAT` (`JSON` /
//!   `Text`, set by Lambda from `LoggingConfig.LogFormat`), else JSON;
//! - level: `RUST_LOG` (a filter such as `warn,webhook_pipeline=debug`) when set, else
//!   `AWS_LAMBDA_LOG_LEVEL` (TRACE, DEBUG, INFO, WARN, ERROR, FATAL; FATAL is ERROR here, as
//!   `tracing` has no FATAL), else INFO.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

use crate::config::{AWS_LAMBDA_LOG_FORMAT, AWS_LAMBDA_LOG_LEVEL, LOG_FORMAT, RUST_LOG};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, in Lambda's shape ([`LambdaJson`]).
    Json,
    /// `tracing`'s plain text.
    Text,
}

/// The format and filter, from the environment.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `LOG_FORMAT`, else `AWS_LAMBDA_LOG_FORMAT`, else JSON.
    pub format: LogFormat,
    /// `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`, else INFO.
    pub filter: Targets,
}

impl LogSettings {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(webhook_pipeline::config::var)
    }

    /// From `var` (a variable's value, `None` when unset or blank).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let format = match var(LOG_FORMAT).or_else(|| var(AWS_LAMBDA_LOG_FORMAT)) {
            Some(f) if f.trim().eq_ignore_ascii_case("text") => LogFormat::Text,
            _ => LogFormat::Json,
        };
        // `Targets` instead of `EnvFilter`: the same syntax minus regex field filters, and no
        // regex engine in every function binary. An unreadable RUST_LOG falls back to the level.
        let filter = var(RUST_LOG)
            .and_then(|v| v.parse::<Targets>().ok())
            .unwrap_or_else(|| {
                let level =
                    var(AWS_LAMBDA_LOG_LEVEL).map_or(LevelFilter::INFO, |l| lambda_level(&l));
                Targets::new().with_default(level)
            });
        Self { format, filter }
    }

    /// The filtered format layer, writing to `writer` (stdout in Lambda, a buffer in tests).
    pub fn layer<W>(&self, writer: W) -> impl Layer<Registry> + Send + Sync + 'static
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
        let layer: Box<dyn Layer<Registry> + Send + Sync> = match self.format {
            LogFormat::Json => Box::new(fmt.fmt_fields(JsonFields::new()).event_format(LambdaJson)),
            // CloudWatch stamps each line with its own time.
            LogFormat::Text => Box::new(fmt.with_target(false).without_time().with_ansi(false)),
        };
        layer.with_filter(self.filter.clone())
    }
}

/// Lambda's level names; unknown names are INFO (Lambda validates the parameter anyway).
fn lambda_level(name: &str) -> LevelFilter {
    match name.trim().to_ascii_uppercase().as_str() {
        "TRACE" => LevelFilter::TRACE,
        "DEBUG" => LevelFilter::DEBUG,
        "WARN" => LevelFilter::WARN,
        "ERROR" | "FATAL" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    }
}

/// Logs for CloudWatch, as [`LogSettings::from_env`] says, on stdout.
pub fn init_tracing() {
    use tracing_subscriber::prelude::*;
    let layer = LogSettings::from_env().layer(std::io::stdout);
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// One JSON object per line: `timestamp` (RFC 3339, UTC), `level` (`INFO`...), `message`,
/// then `requestId` and the other fields of the enclosing spans (the Lambda runtime's
/// `Lambda runtime invoke` span carries `requestId` and `xrayTraceId`), then the event's own
/// fields, all at the top level. A field of an inner span or of the event wins over an outer
/// one of the same name; fields named `timestamp` or `level` are dropped (Lambda's own).
#[derive(Debug, Clone, Copy, Default)]
pub struct LambdaJson;

impl<S, N> FormatEvent<S, N> for LambdaJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                // With `JsonFields`, a span's fields are stored as one JSON object.
                if let Some(Ok(Value::Object(span_fields))) = ext
                    .get::<FormattedFields<N>>()
                    .map(|f| serde_json::from_str::<Value>(f.as_str()))
                {
                    fields.extend(span_fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));

        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let message = fields
            .remove("message")
            .unwrap_or_else(|| Value::String(String::new()));
        // Written by hand rather than as one map, to keep Lambda's order: timestamp, level,
        // message, requestId, then the rest.
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        line.push_str(&json(&Value::String(timestamp))?);
        line.push_str(",\"level\":\"");
        line.push_str(level_name(event.metadata().level()));
        line.push_str("\",\"message\":");
        line.push_str(&json(&message)?);
        let request_id = fields.remove("requestId");
        for (k, v) in request_id
            .map(|id| ("requestId".to_owned(), id))
            .into_iter()
            .chain(fields)
        {
            if matches!(k.as_str(), "timestamp" | "level") {
                continue;
            }
            line.push(',');
            line.push_str(&json(&Value::String(k))?);
            line.push(':');
            line.push_str(&json(&v)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

fn json(v: &Value) -> Result<String, fmt::Error> {
    serde_json::to_string(v).map_err(|_| fmt::Error)
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// An event's fields as JSON values: numbers stay numbers, the rest are strings.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}
