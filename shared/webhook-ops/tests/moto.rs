//! `redrive`, `replay` and the opt-out ledger against moto (DynamoDB and SQS wire protocol).
//!
//! The same moto harness as `moto.rs`: one server per test process on a free port (or
//! `MOTO_ENDPOINT`), fresh tables and queues per test.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType,
};
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use twilio_webhook::payload::Endpoint;
use webhook_aws::dynamo::{DynamoStore, consent_key};
use webhook_aws::sqs::SqsQueue;
use webhook_ops::{DynamoReplay, redrive};
use webhook_pipeline::consent::ConsentStatus;
use webhook_pipeline::replay::{self, ReplayFilter};
use webhook_pipeline::store::Job;
use webhook_pipeline::worker::{Outcome, WorkerSettings};
use webhook_pipeline::{Clock, ConsentStore, Pipeline, StateStore, Worker};
use webhook_testkit::samples::{self, TEST_AUTH_TOKEN, signed_request};

async fn sdk() -> SdkConfig {
    // SAFETY: every test sets the same values before any client reads them.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let base = webhook_aws::aws_config().await.expect("SDK config");
    base.into_builder()
        .endpoint_url(webhook_testkit::moto::endpoint())
        .build()
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn queue(sqs: &aws_sdk_sqs::Client, name: &str, fifo: bool) -> String {
    let mut create = sqs.create_queue().queue_name(name);
    if fifo {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    create.send().await.unwrap().queue_url.unwrap()
}

/// A table as template.yaml makes it.
async fn table(ddb: &aws_sdk_dynamodb::Client) -> String {
    let table = format!("events-{}", unique());
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
    table
}

/// Every message left in `url`: (body, message attributes, system attributes), deleted.
async fn take_all(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
) -> Vec<(
    String,
    HashMap<String, MessageAttributeValue>,
    HashMap<MessageSystemAttributeName, String>,
)> {
    let mut out = Vec::new();
    loop {
        let r = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        if r.messages().is_empty() {
            return out;
        }
        for m in r.messages() {
            out.push((
                m.body().unwrap().to_owned(),
                m.message_attributes().cloned().unwrap_or_default(),
                m.attributes().cloned().unwrap_or_default(),
            ));
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

fn attribute(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .unwrap()
}

#[tokio::test]
async fn redrive_moves_every_dead_job_once_with_its_attributes_and_a_dry_run_moves_none() {
    let sdk = sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let id = unique();
    let dlq = queue(&sqs, &format!("dlq-{id}"), false).await;
    let work = queue(&sqs, &format!("work-{id}"), false).await;
    const N: usize = 25;
    for i in 0..N {
        sqs.send_message()
            .queue_url(&dlq)
            .message_body(format!("{{\"job\":{i}}}"))
            .message_attributes("origin", attribute(&format!("o{i}")))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(redrive::depth(&sqs, &dlq).await.unwrap(), (N as u64, 0));
    // The dry run's count reads the queue's attributes: nothing received, nothing hidden.
    assert_eq!(redrive::depth(&sqs, &work).await.unwrap(), (0, 0));

    let mut seen = Vec::new();
    let report = redrive::redrive(&sqs, &dlq, &work, None, &mut |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!(report.moved, N);
    assert_eq!((report.failed, report.copied_not_deleted), (0, 0));
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    assert_eq!(
        redrive::depth(&sqs, &dlq).await.unwrap(),
        (0, 0),
        "none left"
    );
    let moved = take_all(&sqs, &work).await;
    assert_eq!(moved.len(), N, "none doubled");
    let bodies: BTreeSet<_> = moved.iter().map(|(b, _, _)| b.clone()).collect();
    assert_eq!(bodies.len(), N);
    for (body, attrs, _) in &moved {
        let i: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            attrs["origin"].string_value(),
            Some(format!("o{}", i["job"]).as_str())
        );
    }
    // An empty DLQ: nothing to do.
    let again = redrive::redrive(&sqs, &dlq, &work, None, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.moved, 0);
}

#[tokio::test]
async fn redrive_stops_at_max_and_keeps_fifo_group_and_deduplication_ids() {
    let sdk = sdk().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let id = unique();
    let dlq = queue(&sqs, &format!("dlq-{id}.fifo"), true).await;
    let work = queue(&sqs, &format!("work-{id}.fifo"), true).await;
    for i in 0..4 {
        sqs.send_message()
            .queue_url(&dlq)
            .message_body(format!("job {i}"))
            .message_group_id(format!("g{}", i % 2))
            .message_deduplication_id(format!("d{i}"))
            .send()
            .await
            .unwrap();
    }
    let first = redrive::redrive(&sqs, &dlq, &work, Some(3), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(first.moved, 3);
    let rest = redrive::redrive(&sqs, &dlq, &work, None, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(rest.moved, 1);
    let moved = take_all(&sqs, &work).await;
    assert_eq!(moved.len(), 4);
    for (body, _, system) in &moved {
        let i: usize = body.trim_start_matches("job ").parse().unwrap();
        assert_eq!(
            system[&MessageSystemAttributeName::MessageGroupId],
            format!("g{}", i % 2)
        );
        assert_eq!(
            system[&MessageSystemAttributeName::MessageDeduplicationId],
            format!("d{i}")
        );
    }
}

struct Rig {
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    work: String,
    store: Arc<DynamoStore>,
    replay: DynamoReplay,
    queue: Arc<SqsQueue>,
    pipeline: Pipeline,
    worker: Worker,
    now: Arc<AtomicI64>,
}

async fn rig() -> Rig {
    let sdk = sdk().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let table = table(&ddb).await;
    let work = queue(&sqs, &format!("work-{}", unique()), false).await;
    let store = Arc::new(DynamoStore::new(ddb.clone(), &table));
    let queue = Arc::new(SqsQueue::new(sqs.clone(), &work));
    // The records must not have expired in moto's real time: the clock starts now.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let now = Arc::new(AtomicI64::new(start));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone())
        .with_clock(clock.clone());
    let worker =
        Worker::new(store.clone(), queue.clone(), WorkerSettings::default()).with_clock(clock);
    Rig {
        replay: DynamoReplay::new(ddb.clone(), &table),
        ddb,
        sqs,
        table,
        work,
        store,
        queue,
        pipeline,
        worker,
        now,
    }
}

impl Rig {
    async fn sms(&self, sid: &str, body: &str) {
        let r = self
            .pipeline
            .handle(
                Endpoint::Sms,
                &signed_request(
                    TEST_AUTH_TOKEN,
                    "https://hooks.example.com/sms",
                    &samples::inbound_sms(sid, body),
                ),
            )
            .await;
        assert_eq!(r.status, 200);
    }

    /// Process every job on the work queue; how many were processed.
    async fn drain(&self) -> usize {
        let mut n = 0;
        for (body, _, _) in take_all(&self.sqs, &self.work).await {
            let job: Job = serde_json::from_str(&body).unwrap();
            if self.worker.process(&job).await.unwrap() == Outcome::Processed {
                n += 1;
            }
        }
        n
    }

    async fn pending(&self, key: &str) -> bool {
        self.ddb
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.into()))
            .send()
            .await
            .unwrap()
            .item()
            .unwrap()
            .contains_key("pending")
    }
}

fn sid(n: u32) -> String {
    format!("SM{n:032}")
}

#[tokio::test]
async fn replay_scans_the_table_reopens_and_enqueues_what_matches() {
    let rig = rig().await;
    let start = rig.now.load(Ordering::SeqCst);
    for i in 0..3 {
        rig.now
            .store(start + i64::from(i) * 60_000, Ordering::SeqCst);
        rig.sms(&sid(i), "hello").await;
    }
    assert_eq!(rig.drain().await, 3);
    assert!(!rig.pending(&format!("sms#{}", sid(2))).await);
    let now = start + 5 * 60_000;
    rig.now.store(now, Ordering::SeqCst);
    // Since 4 minutes ago: the events of +1 and +2 minutes.
    let filter = ReplayFilter {
        since_ms: replay::parse_since("4m", now).unwrap(),
        ..Default::default()
    };
    let dry = replay::replay(&rig.replay, &*rig.queue, &filter, true, now, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.processed, dry.enqueued), (2, 2, 2));
    assert_eq!(redrive::depth(&rig.sqs, &rig.work).await.unwrap(), (0, 0));
    assert!(!rig.pending(&format!("sms#{}", sid(2))).await);

    let by_sid = ReplayFilter {
        sid: Some(sid(2)),
        ..filter.clone()
    };
    let r = replay::replay(
        &rig.replay,
        &*rig.queue,
        &by_sid,
        false,
        now,
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!((r.matched, r.enqueued, r.failed), (1, 1, 0));
    assert!(rig.pending(&format!("sms#{}", sid(2))).await, "reopened");
    assert!(!rig.pending(&format!("sms#{}", sid(1))).await);
    // The job is the one the webhook enqueued, and the worker processes it again.
    assert_eq!(rig.drain().await, 1);
    assert!(!rig.pending(&format!("sms#{}", sid(2))).await);
    let (_, version) = rig
        .store
        .load_state(&format!("msg#{}", sid(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(version, 1, "the state was folded once");
}

#[tokio::test]
async fn the_worker_keeps_the_ledger_in_dynamodb_without_a_ttl() {
    let rig = rig().await;
    let start = rig.now.load(Ordering::SeqCst);
    rig.sms(&sid(1), "STOP").await;
    rig.now.store(start + 1_000, Ordering::SeqCst);
    rig.sms(&sid(2), " start ").await;
    let jobs: Vec<Job> = take_all(&rig.sqs, &rig.work)
        .await
        .into_iter()
        .map(|(b, _, _)| serde_json::from_str(&b).unwrap())
        .collect();
    // START first, then the older STOP, then the STOP again.
    let (stop, start_job) = if jobs[0].event.params.get("Body") == Some("STOP") {
        (&jobs[0], &jobs[1])
    } else {
        (&jobs[1], &jobs[0])
    };
    rig.worker.process(start_job).await.unwrap();
    rig.worker.process(stop).await.unwrap();
    rig.worker.process(stop).await.unwrap();
    let (ledger, version) = rig
        .store
        .load_consent("+14155550100")
        .await
        .unwrap()
        .unwrap();
    let e = ledger.get("MG55555555555555555555555555555555").unwrap();
    assert_eq!(e.status, Some(ConsentStatus::OptedIn));
    assert_eq!(e.source_message_sid, Some(sid(2)));
    assert_eq!(version, 1);
    let item = rig
        .ddb
        .get_item()
        .table_name(&rig.table)
        .key("pk", AttributeValue::S(consent_key("+14155550100")))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(!item.contains_key("expires_at"), "consent never expires");
}
