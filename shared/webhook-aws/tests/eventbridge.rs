//! `EVENT_BUS_NAME`: the worker's PutEvents against moto's EventBridge. A rule on the bus sends
//! what arrives to an SQS queue, which the test reads: exactly what a user's rule target gets.
//!
//! Its own moto server (moto.rs has its own), started on a free loopback port.

use std::sync::{Arc, Mutex};

use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use twilio_webhook::payload::Endpoint;
use webhook_aws::eventbridge::{EventBridge, SOURCE};
use webhook_forward::HttpForwarder;
use webhook_pipeline::Worker;
use webhook_pipeline::forward::normalized;
use webhook_pipeline::worker::{Outcome, WorkerSettings};
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{self, CALL_SID, MESSAGE_SID, TEST_AUTH_TOKEN, signed_request};

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

/// A fresh bus whose rule (every `twilio.webhooks` event) feeds a fresh queue: (bus, queue URL).
async fn bus_into_queue(sdk: &SdkConfig) -> (String, String) {
    let eb = aws_sdk_eventbridge::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let bus = format!("bus-{id}");
    eb.create_event_bus().name(&bus).send().await.unwrap();
    let queue = sqs
        .create_queue()
        .queue_name(format!("seen-{id}"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    eb.put_rule()
        .name("all-twilio")
        .event_bus_name(&bus)
        .event_pattern(json!({ "source": [SOURCE] }).to_string())
        .send()
        .await
        .unwrap();
    eb.put_targets()
        .rule("all-twilio")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    (bus, queue)
}

/// Every EventBridge event the rule delivered so far, parsed.
async fn delivered(sdk: &SdkConfig, queue: &str) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            out.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// A receiver for `FORWARD_URL` answering 200; returns its URL and the bodies it received.
async fn receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            // Headers, then as much body as content-length says.
            loop {
                let n = sock.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        log.lock().unwrap().push(body.to_owned());
                        break;
                    }
                }
            }
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (url, seen)
}

const HTTP_API: &str = "https://abc123.execute-api.us-east-1.amazonaws.com";

/// A stuck call fails the test instead of hanging it (every step is bounded by a timeout of
/// its own; this is the backstop).
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(std::time::Duration::from_secs(120), test)
        .await
        .expect("the test finishes within 120 s");
}

#[tokio::test]
async fn each_processed_event_is_put_once_on_the_bus_and_forward_url_still_gets_it() {
    within(put_once_with_forward_url()).await;
}

async fn put_once_with_forward_url() {
    let sdk = sdk().await;
    let (bus, seen_queue) = bus_into_queue(&sdk).await;
    let (forward_url, forwarded) = receiver().await;

    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone());
    // As WorkerApp::from_env composes them with FORWARD_URL and EVENT_BUS_NAME.
    let worker = Worker::new(store, queue.clone(), WorkerSettings::default())
        .with_work(Arc::new(HttpForwarder::new(forward_url)))
        .with_work(Arc::new(EventBridge::new(&sdk, &bus)));

    let requests = [
        (
            Endpoint::Sms,
            samples::inbound_sms(MESSAGE_SID, "hello from the bus"),
        ),
        (
            Endpoint::Status,
            samples::call_status(CALL_SID, "completed", 3),
        ),
    ];
    let mut jobs = Vec::new();
    for (endpoint, params) in &requests {
        let url = format!("{HTTP_API}/{}", endpoint.as_str());
        let reply = pipeline
            .handle(*endpoint, &signed_request(TEST_AUTH_TOKEN, &url, params))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        jobs.push(queue.pop().expect("a job"));
    }
    for job in &jobs {
        assert_eq!(worker.process(job).await.unwrap(), Outcome::Processed);
        // A redelivered job has no second effect: nothing more reaches the bus.
        assert_eq!(worker.process(job).await.unwrap(), Outcome::Skipped);
    }

    let events = delivered(&sdk, &seen_queue).await;
    assert_eq!(events.len(), jobs.len(), "one event per processed record");
    let forwarded = forwarded.lock().unwrap().clone();
    assert_eq!(forwarded.len(), jobs.len(), "FORWARD_URL got each one too");
    for (job, want_type) in jobs
        .iter()
        .zip(["Twilio Inbound Message", "Twilio Call Status"])
    {
        let event = events
            .iter()
            .find(|e| e["detail"]["key"] == json!(job.event.key))
            .unwrap_or_else(|| panic!("no event for {}: {events:?}", job.event.key));
        assert_eq!(event["source"], SOURCE);
        assert_eq!(event["detail-type"], want_type);
        // The detail is exactly the JSON FORWARD_URL receives, idempotency key included.
        assert_eq!(event["detail"], normalized(&job.event));
        let body: Value = forwarded
            .iter()
            .map(|b| serde_json::from_str::<Value>(b).unwrap())
            .find(|b| b["key"] == json!(job.event.key))
            .expect("forwarded");
        assert_eq!(event["detail"], body);
    }
    let sms = &events
        .iter()
        .find(|e| e["detail-type"] == "Twilio Inbound Message")
        .unwrap()["detail"];
    assert_eq!(sms["params"]["Body"], "hello from the bus");
    assert_eq!(sms["params"]["MessageSid"], MESSAGE_SID);
}

#[tokio::test]
async fn a_refused_entry_fails_the_job_so_sqs_retries_it() {
    within(refused_entry_fails_the_job()).await;
}

async fn refused_entry_fails_the_job() {
    let sdk = sdk().await;
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone());
    // A bus that does not exist: moto answers 200 with FailedEntryCount 1, as EventBridge does.
    let worker = Worker::new(store, queue.clone(), WorkerSettings::default())
        .with_work(Arc::new(EventBridge::new(&sdk, "no-such-bus")));
    let url = format!("{HTTP_API}/sms");
    let params = samples::inbound_sms(MESSAGE_SID, "hi");
    pipeline
        .handle(
            Endpoint::Sms,
            &signed_request(TEST_AUTH_TOKEN, &url, &params),
        )
        .await;
    let job = queue.pop().expect("a job");

    let err = worker.process(&job).await.expect_err("a refused entry");
    let text = err.to_string();
    assert!(text.contains("eventbridge failed"), "{text}");
    assert!(text.contains("no-such-bus"), "{text}");
    assert!(!text.contains("hi\""), "no detail in the error: {text}");
    // Not marked processed: the redelivery runs it again (and fails again here).
    assert!(worker.process(&job).await.is_err());
}
