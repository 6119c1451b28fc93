//! The pipeline and worker against a real DynamoDB/SQS wire protocol (moto server).
//!
//! Each test process starts its own moto on a free loopback port (or uses `MOTO_ENDPOINT`);
//! moto exits when the test process does (it watches its stdin). Every test makes its own
//! table and queues, so tests never share state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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
use webhook_pipeline::store::{ClaimTimes, Job};
use webhook_pipeline::worker::{Outcome, WorkerSettings};
use webhook_pipeline::{Clock, EventLog, Pipeline, ReplyPolicy, Settings, StateStore, Worker};
use webhook_testkit::samples::{self, CALL_SID, MESSAGE_SID, TEST_AUTH_TOKEN, signed_request};

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
    let sdk = sdk(webhook_testkit::moto::endpoint()).await;
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
            std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
                self.store(),
                self.queue(),
            )),
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
        std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
            Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&dead),
                &aws.table,
            )),
            aws.queue(),
        )),
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
        std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
            aws.store(),
            Arc::new(SqsQueue::new(
                aws.sqs.clone(),
                format!("{}-missing", aws.queue_url),
            )),
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
    webhook_testkit::contract::run_all(aws.store()).await;
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
    let sdk = sdk(webhook_testkit::moto::endpoint()).await;
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
            "test-token-of-an-account",
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","accounts":{"AC0123456789abcdef0123456789abcdef":{"auth_token":"12345678901234567890123456789012"}}}"#,
        ),
        (
            "blank-account-token",
            r#"{"accounts":{"AC0123456789abcdef0123456789abcdef":{"auth_token":" "}}}"#,
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
        "test-token-of-an-account",
        "blank-account-token",
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

// ---- Token rotation against Secrets Manager ----

const OLD_TOKEN: &str = "0123456789abcdef0123456789abcdef";
const NEW_TOKEN: &str = "fedcba9876543210fedcba9876543210";
const NEWER_TOKEN: &str = "00112233445566778899aabbccddeeff";

/// A secret in moto's Secrets Manager; its ARN.
async fn create_secret(sdk: &SdkConfig, value: &str) -> String {
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(format!("twilio-{}", uuid::Uuid::new_v4()))
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

async fn put_secret(sdk: &SdkConfig, arn: &str, value: &str) {
    aws_sdk_secretsmanager::Client::new(sdk)
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

/// The Secrets Manager source, noting when each GetSecretValue starts.
struct CountingSource {
    inner: webhook_aws::SecretsManagerSource,
    reads: Mutex<Vec<std::time::Instant>>,
}

#[async_trait::async_trait]
impl webhook_pipeline::rotation::SecretSource for CountingSource {
    async fn read(
        &self,
    ) -> Result<webhook_pipeline::config::Secret, webhook_pipeline::rotation::SecretSourceError>
    {
        self.reads.lock().unwrap().push(std::time::Instant::now());
        self.inner.read().await
    }
}

fn sms_signed_with(token: &str, sid: &str) -> webhook_pipeline::IncomingRequest {
    signed_request(
        token,
        "https://abc123.execute-api.us-east-1.amazonaws.com/sms",
        &samples::inbound_sms(sid, "hi"),
    )
}

/// Issue 14, "token rotation without downtime": a stream of valid webhooks (signed with
/// whatever token Twilio uses at that moment) and a flood of forged ones, while the token is
/// rotated twice: by the documented procedure (secondary first, wait, Promote, remove the old
/// one), which refuses nothing, and all at once (secret and Twilio switched together), which
/// refuses nothing sent later than one re-read window after the switch. Forgeries cause at
/// most one GetSecretValue per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_rotated_mid_stream_is_picked_up_and_forgeries_cost_one_read_per_window() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::{Duration, Instant};
    use webhook_pipeline::rotation::SecretSource;

    let aws = setup(5).await;
    let sdk = sdk(webhook_testkit::moto::endpoint()).await;
    let arn = create_secret(&sdk, &format!(r#"{{"auth_token":"{OLD_TOKEN}"}}"#)).await;
    let inner = webhook_aws::SecretsManagerSource::new(&sdk, &arn);
    let cold_start = inner.read().await.unwrap();
    let source = Arc::new(CountingSource {
        inner,
        reads: Mutex::new(Vec::new()),
    });
    let window = Duration::from_millis(1000);
    let pipeline = Arc::new(
        Pipeline::new(
            cold_start.validator,
            std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
                aws.store(),
                aws.queue(),
            )),
            ReplyPolicy::default(),
            Settings::default(),
        )
        .with_secret_source(source.clone(), window),
    );

    let twilio_token = Arc::new(Mutex::new(OLD_TOKEN));
    let stop = Arc::new(AtomicBool::new(false));
    let sent_total = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // Twilio: one webhook every 10 ms, each with a new MessageSid.
    let stream = {
        let (pipeline, token, stop) = (pipeline.clone(), twilio_token.clone(), stop.clone());
        let sent_total = sent_total.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0u64.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let at = Instant::now();
                let req = sms_signed_with(*token.lock().unwrap(), &format!("SM{n:032}"));
                let status = pipeline.handle(Endpoint::Sms, &req).await.status;
                sent.push((at, status));
                sent_total.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        })
    };
    // Forgers: requests signed with a token nobody holds, as fast as they are answered.
    let forged = Arc::new(AtomicUsize::new(0));
    let forgers: Vec<_> = (0..4)
        .map(|f| {
            let (pipeline, stop, forged) = (pipeline.clone(), stop.clone(), forged.clone());
            tokio::spawn(async move {
                for n in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let req = sms_signed_with(
                        "99999999999999999999999999999999",
                        &format!("SM{f:02}{n:030}"),
                    );
                    assert_eq!(pipeline.handle(Endpoint::Sms, &req).await.status, 403);
                    forged.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    // 1. The documented procedure.
    pause(300).await;
    put_secret(
        &sdk,
        &arn,
        &format!(r#"{{"auth_token":"{OLD_TOKEN}","secondary_auth_token":"{NEW_TOKEN}"}}"#),
    )
    .await;
    pause(window.as_millis() as u64 + 200).await;
    *twilio_token.lock().unwrap() = NEW_TOKEN; // "Promote" in the Twilio console
    pause(500).await;
    put_secret(&sdk, &arn, &format!(r#"{{"auth_token":"{NEW_TOKEN}"}}"#)).await;
    pause(300).await;
    let careless_at = Instant::now();

    // 2. All at once: the secret and Twilio switch together.
    put_secret(&sdk, &arn, &format!(r#"{{"auth_token":"{NEWER_TOKEN}"}}"#)).await;
    *twilio_token.lock().unwrap() = NEWER_TOKEN;
    // Past the window, then at least 30 more webhooks, however slow a busy machine is.
    pause(window.as_millis() as u64 + 100).await;
    let base = sent_total.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent_total.load(Ordering::SeqCst) < base + 30 && Instant::now() < deadline {
        pause(20).await;
    }

    stop.store(true, Ordering::SeqCst);
    let sent = stream.await.unwrap();
    for f in forgers {
        f.await.unwrap();
    }
    let elapsed = started.elapsed();

    let refused_in_procedure: Vec<_> = sent
        .iter()
        .filter(|(at, status)| *at < careless_at && *status != 200)
        .collect();
    assert!(
        refused_in_procedure.is_empty(),
        "the documented procedure refused {} webhook(s)",
        refused_in_procedure.len()
    );
    let after_window = careless_at + window + Duration::from_millis(50);
    let late: Vec<_> = sent.iter().filter(|(at, _)| *at >= after_window).collect();
    assert!(
        late.len() > 20,
        "only {} webhooks after the window",
        late.len()
    );
    assert!(
        late.iter().all(|(_, status)| *status == 200),
        "a valid webhook was refused after the re-read window: {:?}",
        late.iter().filter(|(_, s)| *s != 200).count()
    );

    // Reads: never two within a window, so at most one per window however many forgeries.
    let reads = source.reads.lock().unwrap().clone();
    let forged = forged.load(Ordering::SeqCst);
    assert!(forged > 500, "only {forged} forged requests");
    for pair in reads.windows(2) {
        assert!(
            pair[1] - pair[0] >= window - Duration::from_millis(5),
            "two reads {:?} apart",
            pair[1] - pair[0]
        );
    }
    eprintln!(
        "{} webhooks ({} refused in the careless switch's window), {forged} forged, {} reads in {elapsed:?}",
        sent.len(),
        sent.iter().filter(|(_, s)| *s != 200).count(),
        reads.len()
    );
    let max_reads = (elapsed.as_millis() / window.as_millis()) as usize + 1;
    assert!(
        !reads.is_empty() && reads.len() <= max_reads,
        "{} reads in {elapsed:?} ({forged} forged requests)",
        reads.len()
    );

    // Exactly the accepted webhooks were stored: no forgery, no refused one.
    let accepted = sent.iter().filter(|(_, s)| *s == 200).count();
    let stored = aws
        .ddb
        .scan()
        .table_name(&aws.table)
        .select(aws_sdk_dynamodb::types::Select::Count)
        .send()
        .await
        .unwrap()
        .count as usize;
    assert_eq!(stored, accepted);
}

/// The function itself (`WebhookApp::from_env`) reads its secret again on a refused request,
/// unless `SECRET_REFRESH_SECONDS=0`.
#[tokio::test]
async fn the_webhook_function_reads_its_secret_again_unless_refresh_is_off() {
    let aws = setup(5).await;
    let sdk = sdk(webhook_testkit::moto::endpoint()).await;
    let arn = create_secret(&sdk, &format!(r#"{{"auth_token":"{OLD_TOKEN}"}}"#)).await;
    let app = |refresh: &'static str| {
        // SAFETY: no other test reads these variables.
        unsafe {
            std::env::set_var("EVENT_TABLE", &aws.table);
            std::env::set_var("WORK_QUEUE_URL", &aws.queue_url);
            std::env::set_var("TWILIO_AUTH_TOKEN_SECRET_ARN", &arn);
            std::env::set_var("SECRET_REFRESH_SECONDS", refresh);
        }
        webhook_aws::WebhookApp::from_env(&sdk)
    };
    let (off, on) = (app("0").await.unwrap(), app("30").await.unwrap());
    put_secret(&sdk, &arn, &format!(r#"{{"auth_token":"{NEW_TOKEN}"}}"#)).await;
    let req = sms_signed_with(NEW_TOKEN, MESSAGE_SID);
    assert_eq!(off.pipeline.handle(Endpoint::Sms, &req).await.status, 403);
    assert_eq!(on.pipeline.handle(Endpoint::Sms, &req).await.status, 200);
    // Out of range is a configuration error (the function then answers 500).
    let err = app("86401").await.err().expect("out of range");
    assert!(
        err.downcast_ref::<webhook_pipeline::config::ConfigError>()
            .is_some(),
        "{err}"
    );
    unsafe {
        std::env::remove_var("SECRET_REFRESH_SECONDS");
    }
}

/// `QUEUE_FIRST` against DynamoDB and SQS: each copy sends a job, the record holds the reply
/// and nothing for a sweeper (no `pending`: not in `pending-index`), the worker writes only the
/// state record, and the record stays under 1 KB (one write unit).
#[tokio::test]
async fn queue_first_writes_one_small_record_and_only_the_state_record_after_it() {
    let aws = setup(5).await;
    let (clock, _) = fixed_clock();
    let store = Arc::new(DynamoStore::new(aws.ddb.clone(), &aws.table).queue_first(true));
    let p = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        std::sync::Arc::new(
            webhook_pipeline::ClaimThenSend::new(store.clone(), aws.queue()).queue_first(true),
        ),
        ReplyPolicy {
            sms_auto_reply: Some("Got it".into()),
            ..Default::default()
        },
        Settings::default(),
    )
    .with_clock(clock.clone());
    let first = p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(first.status, 200);
    assert_eq!(p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await, first);
    let key = format!("sms#{MESSAGE_SID}");
    let item = aws.item(&key).await.expect("record stored");
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["attempt", "event", "expires_at", "pk"]);
    let size: usize = item
        .iter()
        .map(|(k, v)| k.len() + v.as_s().or(v.as_n()).map_or(0, String::len))
        .sum();
    assert!(size <= 1024, "{size} bytes: more than one write unit");
    let index = aws
        .ddb
        .scan()
        .table_name(&aws.table)
        .index_name("pending-index")
        .send()
        .await
        .unwrap();
    assert_eq!(index.count(), 0, "nothing for the sweeper");

    let worker = WorkerApp {
        worker: Worker::new(store, aws.queue(), WorkerSettings::default())
            .with_clock(clock)
            .with_queue_first(true),
    };
    assert!(aws.drain(&worker).await.is_empty());
    assert_eq!(
        aws.item(&key).await,
        Some(item),
        "the worker left the record alone"
    );
    let state = aws.item(&format!("state#msg#{MESSAGE_SID}")).await.unwrap();
    let state: webhook_pipeline::state::StateRecord =
        serde_json::from_str(state["state"].as_s().unwrap()).unwrap();
    assert_eq!(state.events, 1, "two jobs, one fold");
}

/// `QUEUE_FIRST`, the send fails and no copy ever comes: the record goes to the sweeper, which
/// sends it once and takes it out of `pending-index`; the worker folds it once.
#[tokio::test]
async fn queue_first_a_record_whose_send_failed_is_sent_once_by_the_sweeper() {
    let aws = setup(5).await;
    let (clock, now) = fixed_clock();
    let store = Arc::new(DynamoStore::new(aws.ddb.clone(), &aws.table).queue_first(true));
    let broken = Arc::new(SqsQueue::new(
        aws.sqs.clone(),
        format!("{}-missing", aws.queue_url),
    ));
    let p = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        std::sync::Arc::new(
            webhook_pipeline::ClaimThenSend::new(store.clone(), broken).queue_first(true),
        ),
        ReplyPolicy::default(),
        Settings::default(),
    )
    .with_clock(clock.clone());
    assert_eq!(p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await.status, 503);
    let key = format!("sms#{MESSAGE_SID}");
    assert!(aws.item(&key).await.unwrap().contains_key("pending"));

    let worker = WorkerApp {
        worker: Worker::new(store, aws.queue(), WorkerSettings::default())
            .with_clock(clock)
            .with_queue_first(true),
    };
    now.fetch_add(
        WorkerSettings::default().sweep_grace.as_millis() as i64 + 1,
        Ordering::SeqCst,
    );
    assert_eq!(worker.worker.sweep().await.unwrap().resent, 1);
    assert!(!aws.item(&key).await.unwrap().contains_key("pending"));
    assert!(aws.drain(&worker).await.is_empty());
    now.fetch_add(3_600_000, Ordering::SeqCst);
    assert_eq!(worker.worker.sweep().await.unwrap().resent, 0);
    let state = aws.item(&format!("state#msg#{MESSAGE_SID}")).await.unwrap();
    let state: webhook_pipeline::state::StateRecord =
        serde_json::from_str(state["state"].as_s().unwrap()).unwrap();
    assert_eq!(state.events, 1);
}

/// Failures carry a kind the callers act on: a missing table or queue is `NotFound` (a
/// deployment error), an unreachable endpoint is `Retryable`, a stored event that cannot be
/// decoded is `Permanent` (the sweeper parks it instead of retrying it forever).
#[tokio::test]
async fn adapter_errors_say_what_kind_they_are() {
    use webhook_pipeline::{ErrorKind, WorkQueue};
    let aws = setup(5).await;
    let moto = sdk(webhook_testkit::moto::endpoint()).await;
    let event = webhook_testkit::contract::sample_event("kinds");
    let t = webhook_pipeline::store::ClaimTimes {
        now_ms: 1_800_000_000_000,
        lock_until_ms: 1_800_000_030_000,
        expires_at_s: 1_800_003_600,
    };
    let no_table = DynamoStore::new(aws_sdk_dynamodb::Client::new(&moto), "no-such-table");
    let e = no_table.claim(&event, "a", t).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let no_queue = webhook_aws::sqs::SqsQueue::new(
        aws_sdk_sqs::Client::new(&moto),
        format!("{}-missing", aws.queue_url),
    );
    let job = webhook_pipeline::Job {
        event: event.clone(),
    };
    let e = no_queue.enqueue(&job).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let dead = sdk(&format!("http://127.0.0.1:{}", free_port())).await;
    let e = DynamoStore::new(aws_sdk_dynamodb::Client::new(&dead), &aws.table)
        .claim(&event, "a", t)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Retryable, "{e}");
    // A record whose event JSON is not an event: listed by the sweeper as permanent.
    aws.ddb
        .put_item()
        .table_name(&aws.table)
        .item("pk", AttributeValue::S(event.key.clone()))
        .item("event", AttributeValue::S("{\"not\":\"an event\"}".into()))
        .item("pending", AttributeValue::S("1".into()))
        .item("lock_until", AttributeValue::N("0".into()))
        .item("expires_at", AttributeValue::N("9999999999".into()))
        .send()
        .await
        .unwrap();
    let stale = aws.store().stale_pending(1, 100).await.unwrap();
    let found = stale.iter().find(|s| s.key == event.key).expect("listed");
    let e = found.event.as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Permanent, "{e}");
    assert!(
        !e.to_string().contains("an event"),
        "no stored data quoted: {e}"
    );
}
