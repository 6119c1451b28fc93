//! The pipeline and worker against a real DynamoDB/SQS wire protocol (moto server).
//!
//! Each test process starts its own moto on a free loopback port (or uses `MOTO_ENDPOINT`);
//! moto exits when the test process does (it watches its stdin). Every test makes its own
//! table and queues, so tests never share state.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use twilio_webhook::payload::Endpoint;
use twilio_webhook::{AuthToken, Validator};
use webhook_aws::WorkerApp;
use webhook_aws::dynamo::DynamoStore;
use webhook_aws::sqs::SqsQueue;
use webhook_pipeline::samples::{self, CALL_SID, MESSAGE_SID, TEST_AUTH_TOKEN, signed_request};
use webhook_pipeline::store::{ClaimTimes, Job};
use webhook_pipeline::worker::{Outcome, WorkerSettings};
use webhook_pipeline::{Clock, EventStore, Pipeline, ReplyPolicy, Settings, Worker};

const MOTO: &str = r#"
import sys
from moto.server import ThreadedMotoServer
s = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
s.start()
print("ready", flush=True)
sys.stdin.read()
s.stop()
"#;

struct Moto {
    endpoint: String,
    _child: Option<Mutex<Child>>,
}

fn moto() -> &'static Moto {
    static MOTO_SERVER: OnceLock<Moto> = OnceLock::new();
    MOTO_SERVER.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
            return Moto {
                endpoint,
                _child: None,
            };
        }
        let port = free_port();
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .args(["-c", MOTO, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] installed (pip install 'moto[server]')");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "moto did not start (pip install 'moto[server]')"
        );
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: Some(Mutex::new(child)),
        }
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sdk(endpoint: &str) -> SdkConfig {
    // SAFETY: every test sets the same values before any client reads them.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let base = webhook_aws::aws_config().await.expect("SDK config");
    base.into_builder().endpoint_url(endpoint).build()
}

struct Aws {
    table: String,
    queue_url: String,
    dlq_url: String,
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
}

/// A fresh table (same design as template.yaml) and a queue with a DLQ after `max_receives`.
async fn setup(max_receives: u32) -> Aws {
    let sdk = sdk(&moto().endpoint).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let table = format!("events-{id}");
    let attr = |n: &str, t| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(t)
            .build()
            .unwrap()
    };
    let key = |n: &str, t| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .unwrap()
    };
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("pending", ScalarAttributeType::S))
        .attribute_definitions(attr("lock_until", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("pending-index")
                .key_schema(key("pending", KeyType::Hash))
                .key_schema(key("lock_until", KeyType::Range))
                .projection(
                    // As template.yaml: keys and `sweeps` only.
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .non_key_attributes("sweeps")
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("dlq-{id}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("work-{id}"))
        .attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    Aws {
        table,
        queue_url,
        dlq_url,
        ddb,
        sqs,
    }
}

impl Aws {
    fn store(&self) -> Arc<DynamoStore> {
        Arc::new(DynamoStore::new(self.ddb.clone(), &self.table))
    }

    fn queue(&self) -> Arc<SqsQueue> {
        Arc::new(SqsQueue::new(self.sqs.clone(), &self.queue_url))
    }

    fn pipeline(&self, clock: Clock) -> Pipeline {
        Pipeline::new(
            Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
            self.store(),
            self.queue(),
            ReplyPolicy {
                sms_auto_reply: Some("Got it".into()),
                ..Default::default()
            },
            Settings::default(),
        )
        .with_clock(clock)
    }

    fn worker(&self, clock: Clock) -> WorkerApp {
        WorkerApp {
            worker: Worker::new(self.store(), self.queue(), WorkerSettings::default())
                .with_clock(clock),
        }
    }

    /// Receive everything visible now and hide it for 30 s, as a Lambda poller would.
    async fn receive(&self, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
        let mut all = Vec::new();
        loop {
            let out = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(30)
                .send()
                .await
                .unwrap();
            let msgs = out.messages.unwrap_or_default();
            if msgs.is_empty() {
                return all;
            }
            all.extend(msgs);
        }
    }

    /// Deliver the queue to the worker like Lambda does: reported failures become visible
    /// again, the rest are deleted. Returns the failed message ids.
    async fn drain(&self, worker: &WorkerApp) -> Vec<String> {
        let msgs = self.receive(&self.queue_url).await;
        let mut event = SqsEvent::default();
        event.records = msgs
            .iter()
            .map(|m| {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id.clone();
                r.body = m.body.clone();
                r
            })
            .collect();
        let resp = worker.handle_batch(event, None).await;
        let failed: Vec<String> = resp
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        for m in &msgs {
            let handle = m.receipt_handle().unwrap();
            if failed.contains(m.message_id.as_ref().unwrap()) {
                self.sqs
                    .change_message_visibility()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .visibility_timeout(0)
                    .send()
                    .await
                    .unwrap();
            } else {
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .unwrap();
            }
        }
        failed
    }

    async fn item(&self, key: &str) -> Option<HashMap<String, AttributeValue>> {
        self.ddb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    }
}

fn fixed_clock() -> (Clock, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    ));
    let n = now.clone();
    (Arc::new(move || n.load(Ordering::SeqCst)), now)
}

fn sms(sid: &str) -> webhook_pipeline::IncomingRequest {
    signed_request(
        TEST_AUTH_TOKEN,
        "https://abc123.execute-api.us-east-1.amazonaws.com/sms",
        &samples::inbound_sms(sid, "hi"),
    )
}

/// The crash: the record was written, the process died before SendMessage.
async fn crash_after_record(aws: &Aws, p: &Pipeline, now: i64) -> String {
    let (_, event) = p.accept(Endpoint::Sms, &sms(MESSAGE_SID)).unwrap();
    let t = ClaimTimes {
        now_ms: now,
        lock_until_ms: now + 30_000,
        expires_at_s: now / 1000 + 3600,
    };
    aws.store().claim(&event, "crashed", t).await.unwrap();
    event.key
}

#[tokio::test]
async fn new_event_is_stored_and_enqueued_once_and_a_duplicate_replays_the_reply() {
    let aws = setup(5).await;
    let (clock, _) = fixed_clock();
    let p = aws.pipeline(clock);
    let first = p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("<Message>Got it</Message>"));
    let again = p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(again, first, "identical reply");
    let msgs = aws.receive(&aws.queue_url).await;
    assert_eq!(msgs.len(), 1, "one enqueue for two deliveries");
    let job: Job = serde_json::from_str(msgs[0].body().unwrap()).unwrap();
    assert_eq!(job.event.key, format!("sms#{MESSAGE_SID}"));
    assert_eq!(
        job.event.idempotency_token.as_deref(),
        Some("sample-idempotency-token")
    );
    let item = aws.item(&job.event.key).await.expect("record stored");
    assert!(item.contains_key("pending") && item.contains_key("expires_at"));
}

#[tokio::test]
async fn twenty_concurrent_identical_deliveries_enqueue_exactly_once() {
    let aws = setup(5).await;
    let (clock, _) = fixed_clock();
    let p = Arc::new(aws.pipeline(clock));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert!(
        replies.iter().all(|r| r == &replies[0] && r.status == 200),
        "{replies:?}"
    );
    assert_eq!(aws.receive(&aws.queue_url).await.len(), 1);
}

#[tokio::test]
async fn dynamodb_unreachable_is_5xx_and_nothing_is_half_written() {
    let aws = setup(5).await;
    let dead = sdk(&format!("http://127.0.0.1:{}", free_port())).await;
    let p = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&dead),
            &aws.table,
        )),
        aws.queue(),
        ReplyPolicy::default(),
        Settings::default(),
    );
    let started = std::time::Instant::now();
    let reply = p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(reply.status, 503);
    assert!(
        started.elapsed().as_secs() < 10,
        "answered inside Twilio's 15 s: {:?}",
        started.elapsed()
    );
    assert!(aws.receive(&aws.queue_url).await.is_empty());
    assert!(aws.item(&format!("sms#{MESSAGE_SID}")).await.is_none());
    // With DynamoDB back, Twilio's retry is accepted.
    let (clock, _) = fixed_clock();
    let retry = aws
        .pipeline(clock)
        .handle(Endpoint::Sms, &sms(MESSAGE_SID))
        .await;
    assert_eq!(retry.status, 200);
}

#[tokio::test]
async fn sqs_send_failure_is_5xx_and_the_retry_succeeds() {
    let aws = setup(5).await;
    let (clock, _) = fixed_clock();
    let broken = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        aws.store(),
        Arc::new(SqsQueue::new(
            aws.sqs.clone(),
            format!("{}-missing", aws.queue_url),
        )),
        ReplyPolicy::default(),
        Settings::default(),
    )
    .with_clock(clock.clone());
    assert_eq!(
        broken.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await.status,
        503
    );
    let item = aws
        .item(&format!("sms#{MESSAGE_SID}"))
        .await
        .expect("record kept for the retry");
    assert_eq!(
        item["lock_until"].as_n().unwrap(),
        "0",
        "the claim was released"
    );
    let p = aws.pipeline(clock);
    assert_eq!(p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await.status, 200);
    assert_eq!(aws.receive(&aws.queue_url).await.len(), 1);
}

#[tokio::test]
async fn lock_expiry_lets_a_crashed_attempt_be_redone() {
    let aws = setup(5).await;
    let (clock, now) = fixed_clock();
    let p = aws.pipeline(clock.clone());
    crash_after_record(&aws, &p, now.load(Ordering::SeqCst)).await;
    let reply = p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(reply.status, 200, "the event is durable: replay the reply");
    assert!(
        aws.receive(&aws.queue_url).await.is_empty(),
        "lock still live"
    );
    now.fetch_add(30_001, Ordering::SeqCst);
    assert_eq!(p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await.status, 200);
    assert_eq!(
        aws.receive(&aws.queue_url).await.len(),
        1,
        "redone after the lock expired"
    );
}

#[tokio::test]
async fn the_sweeper_delivers_a_crashed_event_nobody_retried() {
    let aws = setup(5).await;
    let (clock, now) = fixed_clock();
    let p = aws.pipeline(clock.clone());
    let key = crash_after_record(&aws, &p, now.load(Ordering::SeqCst)).await;
    let worker = aws.worker(clock);
    now.fetch_add(30_000 + 120_001, Ordering::SeqCst);
    let tick = serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event"});
    let swept = worker.handle(tick, None).await.unwrap();
    assert_eq!(swept["resent"], 1);
    assert!(aws.drain(&worker).await.is_empty());
    assert!(
        !aws.item(&key).await.unwrap().contains_key("pending"),
        "processed"
    );
}

/// Trust issue, item 4: an unreadable record came first in lock order and made every sweep
/// fail until its TTL, so no other stale record was ever re-sent. It is parked now, once.
#[tokio::test]
async fn an_unreadable_record_is_parked_and_the_sweep_goes_on() {
    let aws = setup(5).await;
    let (clock, now) = fixed_clock();
    let t0 = now.load(Ordering::SeqCst);
    let p = aws.pipeline(clock.clone());
    aws.ddb
        .put_item()
        .table_name(&aws.table)
        .item("pk", AttributeValue::S("sms#SMcorrupt".into()))
        .item("event", AttributeValue::S("{not json".into()))
        .item("attempt", AttributeValue::S("x".into()))
        .item("pending", AttributeValue::S("1".into()))
        .item("lock_until", AttributeValue::N((t0 - 1).to_string()))
        .item(
            "expires_at",
            AttributeValue::N((t0 / 1000 + 3600).to_string()),
        )
        .item("sweeps", AttributeValue::N("0".into()))
        .send()
        .await
        .unwrap();
    let key = crash_after_record(&aws, &p, t0).await;
    let worker = aws.worker(clock);
    now.fetch_add(30_000 + 120_001, Ordering::SeqCst);
    let tick = serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event"});
    let report = worker.handle(tick.clone(), None).await.unwrap();
    assert_eq!(
        (report["resent"].as_u64(), report["parked"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(aws.drain(&worker).await.is_empty());
    assert!(
        !aws.item(&key).await.unwrap().contains_key("pending"),
        "processed"
    );
    let corrupt = aws.item("sms#SMcorrupt").await.unwrap();
    assert_eq!(corrupt["sweeps"], AttributeValue::N("1".into()));
    // Parked: later sweeps pass it by.
    now.fetch_add(3_600_000, Ordering::SeqCst);
    let report = worker.handle(tick, None).await.unwrap();
    assert_eq!(
        (report["resent"].as_u64(), report["parked"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn worker_reports_partial_batch_failures_and_poison_lands_in_the_dlq() {
    let aws = setup(2).await;
    let (clock, _) = fixed_clock();
    let p = aws.pipeline(clock.clone());
    assert_eq!(p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await.status, 200);
    aws.sqs
        .send_message()
        .queue_url(&aws.queue_url)
        .message_body("not a job")
        .send()
        .await
        .unwrap();
    let worker = aws.worker(clock);
    let failed = aws.drain(&worker).await;
    assert_eq!(failed.len(), 1, "only the poison message fails");
    let item = aws.item(&format!("sms#{MESSAGE_SID}")).await.unwrap();
    assert!(!item.contains_key("pending"), "the good one was processed");
    // Redelivered until maxReceiveCount, then moved to the DLQ by SQS.
    for _ in 0..3 {
        aws.drain(&worker).await;
    }
    let dead = aws.receive(&aws.dlq_url).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("not a job"));
    assert!(aws.receive(&aws.queue_url).await.is_empty());
}

#[tokio::test]
async fn redelivered_jobs_have_no_second_effect() {
    let aws = setup(5).await;
    let (clock, _) = fixed_clock();
    let p = aws.pipeline(clock.clone());
    p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    let body = aws.receive(&aws.queue_url).await[0]
        .body()
        .unwrap()
        .to_owned();
    let job: Job = serde_json::from_str(&body).unwrap();
    let worker = aws.worker(clock);
    assert_eq!(
        worker.worker.process(&job).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(worker.worker.process(&job).await.unwrap(), Outcome::Skipped);
}

#[tokio::test]
async fn out_of_order_status_callbacks_end_in_the_right_state() {
    let aws = setup(5).await;
    let (clock, now) = fixed_clock();
    let p = aws.pipeline(clock.clone());
    let url = "https://abc123.execute-api.us-east-1.amazonaws.com/status";
    for (status, code) in [
        ("undelivered", Some("30006")),
        ("sent", None),
        ("queued", None),
    ] {
        now.fetch_add(1, Ordering::SeqCst);
        let params = samples::message_status(MESSAGE_SID, status, code);
        let req = signed_request(TEST_AUTH_TOKEN, url, &params);
        assert_eq!(p.handle(Endpoint::Status, &req).await.status, 200);
    }
    for (status, seq) in [
        ("completed", 3),
        ("in-progress", 2),
        ("ringing", 1),
        ("completed", 3),
    ] {
        let params = samples::call_status(CALL_SID, status, seq);
        let req = signed_request(TEST_AUTH_TOKEN, url, &params);
        assert_eq!(p.handle(Endpoint::Status, &req).await.status, 200);
    }
    let worker = aws.worker(clock);
    assert!(aws.drain(&worker).await.is_empty());
    let store = aws.store();
    let (msg, _) = store
        .load_state(&format!("msg#{MESSAGE_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.latest_status, "undelivered");
    assert_eq!(msg.error_code, Some(30006));
    assert!(msg.error_meaning.unwrap().contains("landline"));
    assert_eq!(msg.timeline.len(), 3);
    let (call, _) = store
        .load_state(&format!("call#{CALL_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call.latest_status, "completed");
    assert_eq!(
        call.timeline.len(),
        3,
        "the repeated callback was a duplicate"
    );
}

#[tokio::test]
async fn dynamodb_store_passes_the_contract() {
    let aws = setup(5).await;
    webhook_pipeline::contract::run_all(aws.store()).await;
}

#[tokio::test]
async fn the_sample_worker_events_drive_the_worker_function() {
    let aws = setup(5).await;
    let (clock, _) = fixed_clock();
    let worker = aws.worker(clock.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap()
    };
    // The job refers to a record the webhook function wrote first.
    let sqs = read("event-worker.sqs.json");
    let job: Job = serde_json::from_str(sqs["Records"][0]["body"].as_str().unwrap()).unwrap();
    let t = ClaimTimes {
        now_ms: job.event.received_at,
        lock_until_ms: job.event.received_at + 30_000,
        expires_at_s: i64::MAX / 2000,
    };
    aws.store().claim(&job.event, "webhook", t).await.unwrap();
    let out = worker.handle(sqs, None).await.unwrap();
    assert_eq!(out, serde_json::json!({"batchItemFailures": []}));
    assert!(
        !aws.item(&job.event.key)
            .await
            .unwrap()
            .contains_key("pending")
    );
    let out = worker
        .handle(read("event-worker.schedule.json"), None)
        .await
        .unwrap();
    assert_eq!(
        out,
        serde_json::json!({"resent": 0, "parked": 0, "failed": 0})
    );
}

/// Trust issue, item 1: a Secrets Manager secret `{"auth_token":""}` made the functions accept
/// requests signed with the empty key. It must be a configuration error (500 to every
/// request, logged once), told apart from a failed read (init fails and is retried).
#[tokio::test]
async fn a_blank_token_in_secrets_manager_is_a_configuration_error() {
    let sdk = sdk(&moto().endpoint).await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let n = uuid::Uuid::new_v4();
    let mut arns = HashMap::new();
    for (name, value) in [
        ("empty", r#"{"auth_token":""}"#),
        ("blank", r#"{"auth_token":" \n"}"#),
        (
            "blank-secondary",
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","secondary_auth_token":" "}"#,
        ),
        (
            "blank-shared-key",
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","shared_keys":{"k":""}}"#,
        ),
        (
            "test-token",
            r#"{"auth_token":"12345678901234567890123456789012"}"#,
        ),
        (
            "good",
            r#"{"auth_token":" 0123456789abcdef0123456789abcdef\n"}"#,
        ),
    ] {
        let out = sm
            .create_secret()
            .name(format!("{name}-{n}"))
            .secret_string(value)
            .send()
            .await
            .unwrap();
        arns.insert(name, out.arn().unwrap().to_owned());
    }
    // ... and so is the public test token, which anyone can sign with.
    for name in [
        "empty",
        "blank",
        "blank-secondary",
        "blank-shared-key",
        "test-token",
    ] {
        let err = webhook_aws::secret_from_arn(&sdk, &arns[name])
            .await
            .expect_err(name);
        assert!(
            err.downcast_ref::<webhook_pipeline::config::ConfigError>()
                .is_some(),
            "{name}: {err}"
        );
    }
    assert!(
        webhook_aws::secret_from_arn(&sdk, &arns["good"])
            .await
            .is_ok()
    );
    // A secret that cannot be read is not a configuration error: init fails and is retried.
    let err = webhook_aws::secret_from_arn(
        &sdk,
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing",
    )
    .await
    .expect_err("missing secret");
    assert!(
        err.downcast_ref::<webhook_pipeline::config::ConfigError>()
            .is_none()
    );
}
