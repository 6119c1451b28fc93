//! The log lines as CloudWatch receives them: captured through the production format layer
//! (`LogSettings::layer`), inside the Lambda runtime's own request span, from the real handlers
//! (`WebhookApp`, `WorkerApp`) over the in-memory adapters.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use lambda_http::Request;
use serde_json::Value;
use tracing::Instrument;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use webhook_aws::logging::{LogFormat, LogSettings};
use webhook_aws::{Endpoint, WebhookApp, WorkerApp};
use webhook_pipeline::store::{EventRecord, Job};
use webhook_pipeline::worker::{WorkError, WorkerSettings};
use webhook_pipeline::{IncomingRequest, Pipeline, SlowWork, Worker};
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{self, MESSAGE_SID, TEST_AUTH_TOKEN, signed_request};

const URL: &str = "https://abc123.execute-api.us-east-1.amazonaws.com";
/// What the samples carry that must never reach a log without `LOG_PII`.
const PERSONAL: [&str; 4] = ["14155550100", "14155550199", "Hello", "secret-body"];

// ---------------------------------------------------------------------------------------------
// Capture
// ---------------------------------------------------------------------------------------------

/// Everything written, shared with the layer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Every line, each a JSON object.
    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The one line whose `outcome` is set (a summary line).
    fn summary(&self) -> Value {
        let mut found: Vec<Value> = self
            .lines()
            .into_iter()
            .filter(|l| l.get("outcome").is_some())
            .collect();
        assert_eq!(found.len(), 1, "one summary line: {}", self.text());
        found.remove(0)
    }

    /// No personal data and no auth token anywhere in the output.
    fn assert_clean(&self) {
        let text = self.text();
        for secret in PERSONAL.iter().chain([&TEST_AUTH_TOKEN]) {
            assert!(!text.contains(secret), "{secret} reached the logs: {text}");
        }
    }
}

/// Settings from these variables only (not the process's environment).
fn settings(vars: &[(&str, &str)]) -> LogSettings {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    LogSettings::from_vars(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

/// Run `f` with logs in Lambda's JSON format at `INFO` going to the returned capture.
fn capture_with(s: &LogSettings) -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(s.layer(out.clone())));
    (out, guard)
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    capture_with(&settings(&[("AWS_LAMBDA_LOG_FORMAT", "JSON")]))
}

/// The span the Lambda runtime opens around each invocation.
fn invocation(request_id: &str) -> tracing::Span {
    let mut ctx = lambda_runtime::Context::default();
    ctx.request_id = request_id.to_owned();
    ctx.xray_trace_id = Some("Root=1-5759e988-bd862e3fe1be46a994272793".to_owned());
    lambda_runtime::layers::trace::request_span(&ctx)
}

// ---------------------------------------------------------------------------------------------
// Apps over the in-memory adapters
// ---------------------------------------------------------------------------------------------

struct Harness {
    pipeline: Pipeline,
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
}

fn harness() -> Harness {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone());
    Harness {
        pipeline,
        store,
        queue,
    }
}

fn sms() -> IncomingRequest {
    signed_request(
        TEST_AUTH_TOKEN,
        &format!("{URL}/sms"),
        &samples::inbound_sms(MESSAGE_SID, "Hello, secret-body"),
    )
}

fn status_callback(status: &str, code: Option<&str>) -> IncomingRequest {
    signed_request(
        TEST_AUTH_TOKEN,
        &format!("{URL}/status"),
        &samples::message_status(MESSAGE_SID, status, code),
    )
}

async fn handle(h: &Harness, endpoint: Endpoint, req: &IncomingRequest) -> u16 {
    h.pipeline
        .handle(endpoint, req)
        .instrument(invocation("req-1"))
        .await
        .status
}

// ---------------------------------------------------------------------------------------------
// The format
// ---------------------------------------------------------------------------------------------

#[test]
fn json_lines_have_lambdas_fields_at_the_top_level() {
    let (out, _guard) = capture();
    invocation("8476a536-e9f4-11e8-9739-2dfe598c3fcd").in_scope(|| {
        tracing::warn!(answer = 42, ratio = 0.5, ok = true, "something {}", "odd");
    });
    tracing::info!(level = "shadow", "outside any invocation");
    // Lambda's order: timestamp, level, message, requestId, then the rest.
    let first = out.text().lines().next().unwrap().to_owned();
    let at = |key: &str| first.find(&format!("\"{key}\":")).unwrap_or(usize::MAX);
    assert!(first.starts_with("{\"timestamp\":"), "{first}");
    assert!(
        at("level") < at("message") && at("message") < at("requestId"),
        "{first}"
    );
    assert!(at("requestId") < at("answer"), "{first}");
    let lines = out.lines();
    assert_eq!(lines.len(), 2, "{}", out.text());
    let l = &lines[0];
    assert_eq!(l["level"], "WARN");
    assert_eq!(l["message"], "something odd");
    assert_eq!(l["requestId"], "8476a536-e9f4-11e8-9739-2dfe598c3fcd");
    assert_eq!(l["xrayTraceId"], "Root=1-5759e988-bd862e3fe1be46a994272793");
    assert_eq!(l["answer"], 42);
    assert_eq!(l["ratio"], 0.5);
    assert_eq!(l["ok"], true);
    // RFC 3339 in UTC, as Lambda writes its own.
    let ts = l["timestamp"].as_str().expect("a timestamp string");
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.starts_with("20"),
        "{ts}"
    );
    // Nothing nested, as tracing-subscriber's own JSON would have it.
    for nested in ["fields", "spans", "span", "target"] {
        assert!(l.get(nested).is_none(), "{nested} in {l}");
    }
    // An event's own `level` field cannot shadow the line's level.
    assert_eq!(lines[1]["level"], "INFO");
    assert!(lines[1].get("requestId").is_none());
}

/// How many of a TRACE..ERROR burst pass the filter of these settings.
fn levels_passing(vars: &[(&str, &str)]) -> Vec<String> {
    let (out, _guard) = capture_with(&settings(vars));
    tracing::trace!("t");
    tracing::debug!("d");
    tracing::info!("i");
    tracing::warn!("w");
    tracing::error!("e");
    out.lines()
        .iter()
        .map(|l| l["level"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_level_comes_from_lambda_and_rust_log_wins() {
    let json = ("AWS_LAMBDA_LOG_FORMAT", "JSON");
    assert_eq!(levels_passing(&[json]), ["INFO", "WARN", "ERROR"]);
    assert_eq!(
        levels_passing(&[json, ("AWS_LAMBDA_LOG_LEVEL", "WARN")]),
        ["WARN", "ERROR"]
    );
    assert_eq!(
        levels_passing(&[json, ("AWS_LAMBDA_LOG_LEVEL", "TRACE")]),
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
    );
    // tracing has no FATAL: ERROR is the closest.
    assert_eq!(
        levels_passing(&[json, ("AWS_LAMBDA_LOG_LEVEL", "FATAL")]),
        ["ERROR"]
    );
    assert_eq!(
        levels_passing(&[
            json,
            ("AWS_LAMBDA_LOG_LEVEL", "ERROR"),
            ("RUST_LOG", "debug")
        ]),
        ["DEBUG", "INFO", "WARN", "ERROR"]
    );
    // An unreadable RUST_LOG does not silence the function.
    assert_eq!(
        levels_passing(&[
            json,
            ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
            ("RUST_LOG", "webhook_aws=loud")
        ]),
        ["WARN", "ERROR"]
    );
}

#[test]
fn the_format_comes_from_lambda_and_log_format_wins() {
    assert_eq!(settings(&[]).format, LogFormat::Json);
    assert_eq!(
        settings(&[("AWS_LAMBDA_LOG_FORMAT", "JSON")]).format,
        LogFormat::Json
    );
    let text = settings(&[("AWS_LAMBDA_LOG_FORMAT", "Text")]);
    assert_eq!(text.format, LogFormat::Text);
    assert_eq!(
        settings(&[("AWS_LAMBDA_LOG_FORMAT", "Text"), ("LOG_FORMAT", "json")]).format,
        LogFormat::Json
    );
    assert_eq!(
        settings(&[("AWS_LAMBDA_LOG_FORMAT", "JSON"), ("LOG_FORMAT", "text")]).format,
        LogFormat::Text
    );
    // Text is tracing's plain format: not JSON, the message and the request id in it.
    let (out, _guard) = capture_with(&text);
    invocation("req-text").in_scope(|| tracing::info!(status = 200, "plain line"));
    let line = out.text();
    assert!(
        serde_json::from_str::<Value>(line.trim()).is_err(),
        "{line}"
    );
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("plain line"), "{line}");
    assert!(line.contains("req-text"), "{line}");
    assert!(line.contains("status=200"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// One summary line per webhook request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn accepted_webhook_summary_through_the_lambda_handler() {
    let (out, _guard) = capture();
    let event = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/sms.http-api.json"),
    )
    .unwrap();
    let h = harness();
    let app = WebhookApp {
        pipeline: h.pipeline,
        base: None,
    };
    let req: Request = lambda_http::request::from_str(&event).unwrap();
    let response = app
        .handle(Endpoint::Sms, req)
        .instrument(invocation("req-accepted"))
        .await;
    assert_eq!(response.status(), 200);
    let s = out.summary();
    assert_eq!(s["requestId"], "req-accepted");
    assert_eq!(s["level"], "INFO");
    assert_eq!(s["message"], "webhook accepted");
    assert_eq!(s["endpoint"], "sms");
    assert_eq!(s["kind"], "inbound_message");
    assert_eq!(s["sid"], MESSAGE_SID);
    assert_eq!(s["outcome"], "new");
    assert_eq!(s["status"], 200);
    assert!(s["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{s}");
    assert_eq!(
        s["idempotency_token"],
        "00000000-0000-4000-8000-000000000001"
    );
    assert!(s.get("timestamp").is_some());
    for absent in ["error_code", "error_meaning", "error", "url"] {
        assert!(s.get(absent).is_none(), "{absent} in {s}");
    }
    assert_eq!(h.queue.len(), 1);
    out.assert_clean();
}

#[tokio::test]
async fn duplicates_say_whether_the_event_was_processed() {
    let h = harness();
    assert_eq!(handle(&h, Endpoint::Sms, &sms()).await, 200);
    {
        let (out, _guard) = capture();
        assert_eq!(handle(&h, Endpoint::Sms, &sms()).await, 200);
        let s = out.summary();
        assert_eq!(s["outcome"], "in_progress");
        assert_eq!(s["level"], "INFO");
        assert_eq!(s["sid"], MESSAGE_SID);
        assert_eq!(s["idempotency_token"], "sample-idempotency-token");
        out.assert_clean();
    }
    let worker = Worker::new(h.store.clone(), h.queue.clone(), WorkerSettings::default());
    worker.process(&h.queue.pop().unwrap()).await.unwrap();
    let (out, _guard) = capture();
    assert_eq!(handle(&h, Endpoint::Sms, &sms()).await, 200);
    let s = out.summary();
    assert_eq!(s["outcome"], "duplicate");
    assert_eq!(s["status"], 200);
    assert_eq!(s["requestId"], "req-1");
    out.assert_clean();
}

#[tokio::test]
async fn refused_webhook_summary_shows_the_url_without_personal_data() {
    let h = harness();
    // A forged request whose URL carries personal data, as GET webhooks do.
    let mut req = sms();
    req.url = format!("{URL}/sms?From=%2B14155550100&Body=secret-body");
    req.headers
        .insert("x-twilio-signature", "forged=".parse().unwrap());
    let (out, guard) = capture();
    assert_eq!(handle(&h, Endpoint::Sms, &req).await, 403);
    let s = out.summary();
    assert_eq!(s["outcome"], "refused");
    assert_eq!(s["level"], "WARN");
    assert_eq!(s["status"], 403);
    assert_eq!(s["endpoint"], "sms");
    assert_eq!(s["url"], format!("{URL}/sms?From=***&Body=***"));
    assert!(s["error"].as_str().is_some(), "{s}");
    // Unverified: nothing read from the payload.
    assert!(s.get("kind").is_none() && s.get("sid").is_none(), "{s}");
    assert_eq!(h.store.len(), 0);
    out.assert_clean();
    drop(guard);

    // With LOG_PII the query's values are logged: the switch is what keeps them out.
    let Harness {
        pipeline,
        store,
        queue,
    } = harness();
    let h = Harness {
        pipeline: pipeline.with_log_pii(true),
        store,
        queue,
    };
    let (out, _guard) = capture();
    assert_eq!(handle(&h, Endpoint::Sms, &req).await, 403);
    assert!(out.text().contains("14155550100"), "{}", out.text());
    assert!(!out.text().contains(TEST_AUTH_TOKEN));
}

#[tokio::test]
async fn malformed_webhook_summary() {
    let h = harness();
    // Signed correctly, but no MessageSid: unreadable.
    let params: Vec<_> = samples::inbound_sms(MESSAGE_SID, "Hello")
        .into_iter()
        .filter(|(k, _)| !k.ends_with("Sid") || *k == "AccountSid")
        .collect();
    let req = signed_request(TEST_AUTH_TOKEN, &format!("{URL}/sms"), &params);
    let (out, _guard) = capture();
    assert_eq!(handle(&h, Endpoint::Sms, &req).await, 400);
    let s = out.summary();
    assert_eq!(s["outcome"], "malformed");
    assert_eq!(s["level"], "WARN");
    assert_eq!(s["status"], 400);
    assert_eq!(s["idempotency_token"], "sample-idempotency-token");
    out.assert_clean();
}

#[tokio::test]
async fn failed_webhook_summary_when_the_store_fails() {
    let h = harness();
    h.store.fail_next.store(10, Ordering::SeqCst);
    let (out, _guard) = capture();
    assert_eq!(handle(&h, Endpoint::Sms, &sms()).await, 503);
    let s = out.summary();
    assert_eq!(s["outcome"], "failed");
    assert_eq!(s["level"], "ERROR");
    assert_eq!(s["status"], 503);
    assert_eq!(s["kind"], "inbound_message");
    assert_eq!(s["sid"], MESSAGE_SID);
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("injected store failure")),
        "{s}"
    );
    assert!(s.get("url").is_none(), "{s}");
    out.assert_clean();
}

#[tokio::test]
async fn failed_status_callback_summary_has_the_error_code_and_its_meaning() {
    let h = harness();
    let (out, guard) = capture();
    assert_eq!(
        handle(
            &h,
            Endpoint::Status,
            &status_callback("undelivered", Some("30003"))
        )
        .await,
        200
    );
    let s = out.summary();
    assert_eq!(s["kind"], "message_status");
    assert_eq!(s["outcome"], "new");
    assert_eq!(s["error_code"], 30003);
    assert!(
        s["error_meaning"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")),
        "{s}"
    );
    out.assert_clean();
    drop(guard);

    // A code outside the table: the code, no meaning.
    let (out, guard) = capture();
    handle(
        &h,
        Endpoint::Status,
        &status_callback("failed", Some("39999")),
    )
    .await;
    let s = out.summary();
    assert_eq!(s["error_code"], 39999);
    assert!(s.get("error_meaning").is_none(), "{s}");
    drop(guard);

    // Not failed or undelivered: no error fields.
    let (out, _guard) = capture();
    handle(&h, Endpoint::Status, &status_callback("delivered", None)).await;
    let s = out.summary();
    assert!(s.get("error_code").is_none(), "{s}");
}

#[tokio::test]
async fn a_url_that_cannot_be_rebuilt_gets_a_summary_too() {
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/sms.http-api.json"),
        )
        .unwrap(),
    )
    .unwrap();
    event["headers"].as_object_mut().unwrap().remove("host");
    let app = WebhookApp {
        pipeline: harness().pipeline,
        base: None,
    };
    let (out, _guard) = capture();
    let req: Request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let response = app
        .handle(Endpoint::Sms, req)
        .instrument(invocation("req-no-host"))
        .await;
    assert_eq!(response.status(), 400);
    let s = out.summary();
    assert_eq!(s["requestId"], "req-no-host");
    assert_eq!(s["outcome"], "malformed");
    assert_eq!(s["status"], 400);
    assert_eq!(
        s["idempotency_token"],
        "00000000-0000-4000-8000-000000000001"
    );
    assert!(s["duration_ms"].as_f64().is_some(), "{s}");
    out.assert_clean();
}

#[test]
fn misconfigured_function_logs_a_failed_summary_per_request() {
    let event = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/voice.http-api.json"),
    )
    .unwrap();
    let req: Request = lambda_http::request::from_str(&event).unwrap();
    let (out, _guard) = capture();
    let response = invocation("req-misconfigured")
        .in_scope(|| webhook_aws::misconfigured_response(Endpoint::Voice, &req));
    assert_eq!(response.status(), 500);
    let s = out.summary();
    assert_eq!(s["requestId"], "req-misconfigured");
    assert_eq!(s["outcome"], "failed");
    assert_eq!(s["level"], "ERROR");
    assert_eq!(s["status"], 500);
    assert_eq!(s["endpoint"], "voice");
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("misconfigured")),
        "{s}"
    );
    out.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// One summary line per worker record
// ---------------------------------------------------------------------------------------------

/// Slow work that takes 20 ms, then succeeds or fails.
struct Forward {
    fail: bool,
}

#[async_trait]
impl SlowWork for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }
    async fn run(&self, _event: &EventRecord) -> Result<(), WorkError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.fail {
            Err(WorkError("receiver answered 502".into()))
        } else {
            Ok(())
        }
    }
}

/// An accepted SMS's job, and a worker app over the same store.
async fn worker_and_job(fail: bool) -> (WorkerApp, Job) {
    let h = harness();
    assert_eq!(handle(&h, Endpoint::Sms, &sms()).await, 200);
    let job = h.queue.pop().unwrap();
    let worker = Worker::new(h.store.clone(), h.queue.clone(), WorkerSettings::default())
        .with_work(Arc::new(Forward { fail }));
    (WorkerApp { worker }, job)
}

fn batch(body: &str, receives: u32) -> SqsEvent {
    let mut m = SqsMessage::default();
    m.message_id = Some("msg-1".into());
    m.body = Some(body.to_owned());
    m.attributes
        .insert("ApproximateReceiveCount".into(), receives.to_string());
    let mut e = SqsEvent::default();
    e.records = vec![m];
    e
}

#[tokio::test]
async fn worker_record_summary() {
    let (app, job) = worker_and_job(false).await;
    let (out, _guard) = capture();
    let response = app
        .handle_batch(batch(&serde_json::to_string(&job).unwrap(), 2), None)
        .instrument(invocation("req-worker"))
        .await;
    assert!(response.batch_item_failures.is_empty());
    let s = out.summary();
    assert_eq!(s["requestId"], "req-worker");
    assert_eq!(s["level"], "INFO");
    assert_eq!(s["outcome"], "processed");
    assert_eq!(s["attempts"], 2);
    assert_eq!(s["key"], format!("sms#{MESSAGE_SID}"));
    assert_eq!(s["sid"], MESSAGE_SID);
    assert_eq!(s["kind"], "inbound_message");
    assert_eq!(s["message_id"], "msg-1");
    assert!(s["forward_ms"].as_f64().is_some_and(|ms| ms >= 20.0), "{s}");
    out.assert_clean();
}

#[tokio::test]
async fn failed_and_unreadable_worker_record_summaries() {
    let (app, job) = worker_and_job(true).await;
    let (out, guard) = capture();
    let response = app
        .handle_batch(batch(&serde_json::to_string(&job).unwrap(), 5), None)
        .instrument(invocation("req-worker"))
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let s = out.summary();
    assert_eq!(s["outcome"], "failed");
    assert_eq!(s["level"], "ERROR");
    assert_eq!(s["attempts"], 5);
    assert!(s["forward_ms"].as_f64().is_some(), "{s}");
    assert!(
        s["error"].as_str().is_some_and(|e| e.contains("502")),
        "{s}"
    );
    out.assert_clean();
    drop(guard);

    // A body that is not a job (it may hold personal data: never quoted).
    let (out, _guard) = capture();
    let response = app
        .handle_batch(batch(r#"{"From":"+14155550100""#, 1), None)
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let s = out.summary();
    assert_eq!(s["outcome"], "unreadable");
    assert_eq!(s["level"], "ERROR");
    assert!(
        s.get("key").is_none() && s.get("forward_ms").is_none(),
        "{s}"
    );
    out.assert_clean();
}

#[tokio::test]
async fn records_past_the_deadline_get_a_deferred_summary() {
    let (app, job) = worker_and_job(false).await;
    let (out, _guard) = capture();
    // No time left: the record is handed back untried.
    let response = app
        .handle_batch(
            batch(&serde_json::to_string(&job).unwrap(), 1),
            Some(std::time::SystemTime::now()),
        )
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    let s = out.summary();
    assert_eq!(s["outcome"], "deferred");
    assert_eq!(s["level"], "WARN");
    assert_eq!(s["attempts"], 1);
}
