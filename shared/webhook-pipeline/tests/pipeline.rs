//! The pipeline with in-memory adapters: statuses, dedup, failure paths, worker, sweeper.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use http::HeaderValue;
use twilio_webhook::payload::Endpoint;
use twilio_webhook::{AuthToken, Validator};
use webhook_pipeline::store::ClaimTimes;
use webhook_pipeline::worker::{Outcome, WorkerSettings};
use webhook_pipeline::{
    Claim, Clock, EventLog, EventRecord, Intake, IntakeError, Job, Pipeline, PortError,
    ReplyPolicy, Settings, SlowWork, StateStore, WorkQueue, Worker,
};
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{self, CALL_SID, MESSAGE_SID, TEST_AUTH_TOKEN, signed_request};

const URL: &str = "https://hooks.example.com/sms";

struct Rig {
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    pipeline: Pipeline,
    worker: Worker,
    now: Arc<AtomicI64>,
}

impl Rig {
    /// The status of a signed inbound SMS with this MessageSid.
    async fn sms_status(&self, sid: &str) -> u16 {
        self.pipeline.handle(Endpoint::Sms, &sms(sid)).await.status
    }
}

fn rig(policy: ReplyPolicy) -> Rig {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let now = Arc::new(AtomicI64::new(1_800_000_000_000));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let pipeline = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
            store.clone(),
            queue.clone(),
        )),
        policy,
        Settings::default(),
    )
    .with_clock(clock.clone());
    let worker =
        Worker::new(store.clone(), queue.clone(), WorkerSettings::default()).with_clock(clock);
    Rig {
        store,
        queue,
        pipeline,
        worker,
        now,
    }
}

/// [`rig`] with `QUEUE_FIRST`: the pipeline claims and enqueues at once, the worker folds by
/// the state record alone.
fn queue_first_rig(policy: ReplyPolicy) -> Rig {
    let r = rig(policy.clone());
    let clock: Clock = {
        let now = r.now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    Rig {
        pipeline: Pipeline::new(
            Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
            std::sync::Arc::new(
                webhook_pipeline::ClaimThenSend::new(r.store.clone(), r.queue.clone())
                    .queue_first(true),
            ),
            policy,
            Settings::default(),
        )
        .with_clock(clock.clone()),
        worker: Worker::new(r.store.clone(), r.queue.clone(), WorkerSettings::default())
            .with_clock(clock)
            .with_queue_first(true),
        ..r
    }
}

fn sms(sid: &str) -> webhook_pipeline::IncomingRequest {
    signed_request(TEST_AUTH_TOKEN, URL, &samples::inbound_sms(sid, "hi"))
}

#[tokio::test]
async fn new_event_is_stored_and_enqueued_once_and_duplicates_replay_the_reply() {
    let r = rig(ReplyPolicy {
        sms_auto_reply: Some("Thanks!".into()),
        ..Default::default()
    });
    let first = r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.content_type.as_deref(), Some("text/xml"));
    assert_eq!(
        first.body,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message>Thanks!</Message></Response>"#
    );
    for _ in 0..3 {
        assert_eq!(
            r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await,
            first
        );
    }
    assert_eq!(r.store.len(), 1);
    assert_eq!(r.queue.len(), 1, "duplicates are never enqueued");
    let job = r.queue.pop().unwrap();
    assert_eq!(
        job.event.idempotency_token.as_deref(),
        Some("sample-idempotency-token")
    );
    assert_eq!(job.event.key, format!("sms#{MESSAGE_SID}"));
}

#[tokio::test]
async fn signature_problems_are_403_and_malformed_bodies_400_and_nothing_is_stored() {
    let r = rig(ReplyPolicy::default());
    let mut req = sms(MESSAGE_SID);
    req.headers.remove("x-twilio-signature");
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &req).await.status, 403);
    req.headers
        .insert("x-twilio-signature", HeaderValue::from_static("bm9wZQ=="));
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &req).await.status, 403);
    let mut other_url = sms(MESSAGE_SID);
    other_url.url = "https://evil.example.com/sms".into();
    assert_eq!(
        r.pipeline.handle(Endpoint::Sms, &other_url).await.status,
        403
    );
    let mut bad = sms(MESSAGE_SID);
    bad.body = bytes::Bytes::from_static(b"Body=%ZZ");
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &bad).await.status, 400);
    // Signed but missing what an SMS needs: 400 (a retry would fail the same way).
    let no_sid = signed_request(TEST_AUTH_TOKEN, URL, &[("Body", "x".to_owned())]);
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &no_sid).await.status, 400);
    assert!(r.store.is_empty());
    assert!(r.queue.is_empty());
}

#[tokio::test]
async fn store_failure_is_503_with_nothing_half_written() {
    let r = rig(ReplyPolicy::default());
    r.store.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 503);
    assert!(r.store.is_empty() && r.queue.is_empty());
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    assert_eq!(r.queue.len(), 1);
}

#[tokio::test]
async fn queue_failure_is_503_and_the_retry_succeeds_at_once() {
    let r = rig(ReplyPolicy::default());
    r.queue.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 503);
    assert_eq!(r.queue.len(), 0);
    // Twilio's retry comes right away: the released claim does not block it.
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    assert_eq!(r.queue.len(), 1);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    assert_eq!(r.queue.len(), 1);
}

#[tokio::test]
async fn a_crashed_attempt_is_redone_after_its_lock_or_by_the_sweeper() {
    let r = rig(ReplyPolicy::default());
    // Simulate a crash between the record and the enqueue: the record exists, no job.
    r.queue.fail_next.store(1, Ordering::SeqCst);
    r.store.fail_next.store(0, Ordering::SeqCst);
    let (_, event) = r.pipeline.accept(Endpoint::Sms, &sms(MESSAGE_SID)).unwrap();
    let now = r.now.load(Ordering::SeqCst);
    let t = webhook_pipeline::store::ClaimTimes {
        now_ms: now,
        lock_until_ms: now + 30_000,
        expires_at_s: now / 1000 + 3600,
    };
    r.store.claim(&event, "crashed", t).await.unwrap();
    r.queue.fail_next.store(0, Ordering::SeqCst);
    // While the lock lives, a retry gets the reply (the event is durable) and enqueues nothing.
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    assert_eq!(r.queue.len(), 0);
    // Nobody retries: the sweeper re-sends it once the lock and grace have passed.
    r.now.fetch_add(31_000, Ordering::SeqCst);
    assert_eq!(
        r.worker.sweep().await.unwrap().resent,
        0,
        "within the grace period"
    );
    r.now.fetch_add(120_000, Ordering::SeqCst);
    assert_eq!(r.worker.sweep().await.unwrap().resent, 1);
    assert_eq!(
        r.worker.sweep().await.unwrap().resent,
        0,
        "backed off after a re-send"
    );
    let job = r.queue.pop().unwrap();
    assert_eq!(r.worker.process(&job).await.unwrap(), Outcome::Processed);
    assert_eq!(
        r.worker.process(&job).await.unwrap(),
        Outcome::Skipped,
        "redelivery has no effect"
    );
    r.now.fetch_add(3_600_000, Ordering::SeqCst);
    assert_eq!(
        r.worker.sweep().await.unwrap().resent,
        0,
        "processed events are never re-sent"
    );
}

/// Trust issue, item 4: one enqueue that fails stopped the whole sweep, and none of the
/// other stale records was re-sent.
#[tokio::test]
async fn one_failing_record_does_not_stop_the_sweep() {
    let r = rig(ReplyPolicy::default());
    let now = r.now.load(Ordering::SeqCst);
    let t = webhook_pipeline::store::ClaimTimes {
        now_ms: now,
        lock_until_ms: now + 30_000,
        expires_at_s: now / 1000 + 3600,
    };
    for i in 0..5 {
        let sid = format!("SM{i:032}");
        let (_, event) = r.pipeline.accept(Endpoint::Sms, &sms(&sid)).unwrap();
        r.store.claim(&event, "crashed", t).await.unwrap();
    }
    r.now.fetch_add(151_000, Ordering::SeqCst);
    r.queue.fail_next.store(1, Ordering::SeqCst);
    let report = r.worker.sweep().await.unwrap();
    assert_eq!((report.resent, report.failed, report.parked), (4, 1, 0));
    assert_eq!(r.queue.len(), 4);
    // The one that failed keeps its lock (and count): the next sweep re-sends it alone.
    let report = r.worker.sweep().await.unwrap();
    assert_eq!((report.resent, report.failed), (1, 0));
    assert_eq!(r.queue.len(), 5);
}

#[tokio::test]
async fn a_retry_after_the_lock_expired_redoes_the_enqueue() {
    let r = rig(ReplyPolicy::default());
    let (_, event) = r.pipeline.accept(Endpoint::Sms, &sms(MESSAGE_SID)).unwrap();
    let now = r.now.load(Ordering::SeqCst);
    let t = webhook_pipeline::store::ClaimTimes {
        now_ms: now,
        lock_until_ms: now + 30_000,
        expires_at_s: now / 1000 + 3600,
    };
    r.store.claim(&event, "crashed", t).await.unwrap();
    r.now.fetch_add(30_001, Ordering::SeqCst);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    assert_eq!(r.queue.len(), 1);
}

#[tokio::test]
async fn fallback_shares_the_primary_key_and_answers_safe_twiml_even_when_the_store_is_down() {
    let r = rig(ReplyPolicy {
        voice_forward_to: Some("+14155550123".into()),
        ..Default::default()
    });
    let voice_url = "https://hooks.example.com/voice";
    let primary = signed_request(TEST_AUTH_TOKEN, voice_url, &samples::inbound_call(CALL_SID));
    let primary_reply = r.pipeline.handle(Endpoint::Voice, &primary).await;
    assert!(
        primary_reply
            .body
            .contains("<Dial timeout=\"20\"><Number>+14155550123</Number></Dial>"),
        "{}",
        primary_reply.body
    );
    let mut params = samples::inbound_call(CALL_SID);
    params.push(("ErrorCode", "11205".into()));
    let fb_url = "https://hooks.example.com/fallback";
    let fallback = signed_request(TEST_AUTH_TOKEN, fb_url, &params);
    // Same call: a duplicate of the primary, no second event.
    assert_eq!(
        r.pipeline.handle(Endpoint::Fallback, &fallback).await,
        primary_reply
    );
    assert_eq!(r.queue.len(), 1);
    // Another call whose primary failed entirely, with the store down too.
    let mut params = samples::inbound_call("CA99999999999999999999999999999999");
    params.push(("ErrorCode", "11205".into()));
    let fallback = signed_request(TEST_AUTH_TOKEN, fb_url, &params);
    r.store.fail_next.store(1, Ordering::SeqCst);
    let reply = r.pipeline.handle(Endpoint::Fallback, &fallback).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .body
            .contains("<Say>Sorry, we cannot take your call right now."),
        "{}",
        reply.body
    );
    assert!(reply.body.ends_with("<Hangup/></Response>"));
}

#[tokio::test]
async fn voicemail_records_with_the_status_url_as_action_and_callback() {
    let r = rig(ReplyPolicy {
        voice_greeting: Some("Hi, you reached Acme.".into()),
        ..Default::default()
    });
    let req = signed_request(
        TEST_AUTH_TOKEN,
        "https://h.example.com/prod/voice",
        &samples::inbound_call(CALL_SID),
    );
    let reply = r.pipeline.handle(Endpoint::Voice, &req).await;
    assert_eq!(
        reply.body,
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Say>Hi, you reached Acme.</Say>"#,
            r#"<Record action="https://h.example.com/prod/status" maxLength="120" playBeep="true" "#,
            r#"recordingStatusCallback="https://h.example.com/prod/status" recordingStatusCallbackEvent="completed"/>"#,
            r#"<Hangup/></Response>"#
        )
    );
}

#[tokio::test]
async fn status_callbacks_out_of_order_end_in_the_right_state() {
    let r = rig(ReplyPolicy::default());
    let url = "https://hooks.example.com/status";
    for (status, code) in [
        ("delivered", None),
        ("queued", None),
        ("sent", None),
        ("sent", None),
    ] {
        let req = signed_request(
            TEST_AUTH_TOKEN,
            url,
            &samples::message_status(MESSAGE_SID, status, code),
        );
        let reply = r.pipeline.handle(Endpoint::Status, &req).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.body,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
        );
    }
    for (status, seq) in [("completed", 3), ("ringing", 1), ("in-progress", 2)] {
        let req = signed_request(
            TEST_AUTH_TOKEN,
            url,
            &samples::call_status(CALL_SID, status, seq),
        );
        r.pipeline.handle(Endpoint::Status, &req).await;
    }
    assert_eq!(r.queue.len(), 6, "the repeated 'sent' is a duplicate");
    while let Some(job) = r.queue.pop() {
        r.worker.process(&job).await.unwrap();
    }
    let (msg, _) = r
        .store
        .load_state(&format!("msg#{MESSAGE_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.latest_status, "delivered");
    assert_eq!(
        msg.timeline
            .iter()
            .map(|e| e.status.as_str())
            .collect::<Vec<_>>(),
        ["queued", "sent", "delivered"]
    );
    let (call, _) = r
        .store
        .load_state(&format!("call#{CALL_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(call.latest_status, "completed");
    assert_eq!(
        call.timeline.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
}

#[tokio::test]
async fn undelivered_message_gets_its_error_meaning() {
    let r = rig(ReplyPolicy::default());
    let req = signed_request(
        TEST_AUTH_TOKEN,
        "https://hooks.example.com/status",
        &samples::message_status(MESSAGE_SID, "undelivered", Some("30007")),
    );
    r.pipeline.handle(Endpoint::Status, &req).await;
    r.worker.process(&r.queue.pop().unwrap()).await.unwrap();
    let (msg, _) = r
        .store
        .load_state(&format!("msg#{MESSAGE_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.error_code, Some(30007));
    assert!(msg.error_meaning.unwrap().contains("filtered"));
}

#[tokio::test]
async fn auto_reply_is_not_sent_to_opt_out_keywords() {
    let r = rig(ReplyPolicy {
        sms_auto_reply: Some("Thanks!".into()),
        ..Default::default()
    });
    let mut params = samples::inbound_sms(MESSAGE_SID, "STOP");
    params.push(("OptOutType", "STOP".into()));
    let reply = r
        .pipeline
        .handle(
            Endpoint::Sms,
            &signed_request(TEST_AUTH_TOKEN, URL, &params),
        )
        .await;
    assert_eq!(
        reply.body,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
    );
    // Without Advanced Opt-Out (no OptOutType), the default keywords, in any case and spacing.
    for (i, body) in [" stop ", "Unsubscribe", "START", "help\n", "Cancel"]
        .iter()
        .enumerate()
    {
        let sid = format!("SM{:032x}", i + 1);
        let params = samples::inbound_sms(&sid, body);
        let reply = r
            .pipeline
            .handle(
                Endpoint::Sms,
                &signed_request(TEST_AUTH_TOKEN, URL, &params),
            )
            .await;
        assert_eq!(reply.status, 200, "{body:?}");
        assert!(!reply.body.contains("Thanks!"), "{body:?}: {}", reply.body);
    }
    // Anything else gets the auto-reply.
    let params = samples::inbound_sms(&format!("SM{:032x}", 99), "stop please");
    let reply = r
        .pipeline
        .handle(
            Endpoint::Sms,
            &signed_request(TEST_AUTH_TOKEN, URL, &params),
        )
        .await;
    assert!(
        reply.body.contains("<Message>Thanks!</Message>"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn memory_store_passes_the_contract() {
    webhook_testkit::contract::run_all(Arc::new(MemoryStore::default())).await;
}

/// An [`Intake`] of its own (as `webhook-local` has) over the memory adapters, that counts its
/// calls and can be made to fail.
struct CountingIntake {
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    calls: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Intake for CountingIntake {
    async fn record(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, IntakeError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(IntakeError::Store(PortError::retryable(
                "database is locked",
            )));
        }
        let claim = self
            .store
            .claim(event, attempt, t)
            .await
            .map_err(IntakeError::Store)?;
        if claim == Claim::New {
            let job = Job {
                event: event.clone(),
            };
            self.queue.enqueue(&job).await.map_err(IntakeError::Queue)?;
        }
        Ok(claim)
    }
}

#[tokio::test]
async fn with_its_own_intake_a_new_event_is_one_call_and_duplicates_are_not_enqueued() {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let outbox = Arc::new(CountingIntake {
        store: store.clone(),
        queue: queue.clone(),
        calls: Default::default(),
        fail: Default::default(),
    });
    let pipeline = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        outbox.clone(),
        ReplyPolicy::default(),
        Settings::default(),
    );
    let first = pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(first.status, 200);
    assert_eq!(outbox.calls.load(Ordering::SeqCst), 1);
    assert_eq!((store.len(), queue.len()), (1, 1));
    assert_eq!(
        pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await,
        first
    );
    assert_eq!(queue.len(), 1, "a duplicate is never enqueued");
    // The intake failing is a store failure: 503, so Twilio retries.
    outbox.fail.store(true, Ordering::SeqCst);
    let other = "SM00000000000000000000000000000002";
    assert_eq!(
        pipeline.handle(Endpoint::Sms, &sms(other)).await.status,
        503
    );
    assert_eq!((store.len(), queue.len()), (1, 1));
}

/// Trust issue, item 12: an event first accepted at `/fallback` got no state record.
#[tokio::test]
async fn an_event_first_accepted_at_the_fallback_updates_state_like_the_primary() {
    let r = rig(ReplyPolicy::default());
    let fb_url = "https://hooks.example.com/fallback";
    for (params, id, status) in [
        (
            samples::inbound_sms(MESSAGE_SID, "hi"),
            format!("msg#{MESSAGE_SID}"),
            "received",
        ),
        (
            samples::inbound_call(CALL_SID),
            format!("call#{CALL_SID}"),
            "ringing",
        ),
    ] {
        let mut params = params;
        params.push(("ErrorCode", "11200".into()));
        let fallback = signed_request(TEST_AUTH_TOKEN, fb_url, &params);
        assert_eq!(
            r.pipeline
                .handle(Endpoint::Fallback, &fallback)
                .await
                .status,
            200
        );
        let job = r.queue.pop().expect("the fallback's event is enqueued");
        assert_eq!(r.worker.process(&job).await.unwrap(), Outcome::Processed);
        let (state, _) = r
            .store
            .load_state(&id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no state record {id}"));
        assert_eq!(state.latest_status, status, "{id}");
        assert_eq!(state.timeline.len(), 1);
    }
}

/// A claim whose write landed but whose answer was lost (the SDK gave up) answered 503, and
/// Twilio's retry then found the record locked: a duplicate, 200, never enqueued, waiting for
/// the sweeper. The failed attempt now frees its own claim, so the retry takes it at once.
#[tokio::test]
async fn a_claim_whose_answer_was_lost_is_redone_by_the_retry_at_once() {
    let r = rig(ReplyPolicy::default());
    r.store.lose_next_answer.store(1, Ordering::SeqCst);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 503);
    assert_eq!(r.store.len(), 1, "the write took effect");
    assert_eq!(r.queue.len(), 0);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    assert_eq!(r.queue.len(), 1, "the retry enqueued it");
}

/// Every webhook counts once in EMF, by outcome, with its latency; the fallback's use is
/// counted; the worker counts processed jobs and their age. Lines follow the EMF structure
/// and carry no personal data.
#[tokio::test]
async fn outcomes_are_counted_in_emf_lines() {
    use std::sync::Mutex;
    use webhook_pipeline::metrics::{Metrics, check_emf};
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let metrics = Metrics::to_sink("Test", Arc::new(move |l| sink.lock().unwrap().push(l)));
    let mut r = rig(ReplyPolicy::default());
    r.pipeline = r.pipeline.with_metrics(metrics.clone());
    let now = r.now.clone();
    let worker = Worker::new(r.store.clone(), r.queue.clone(), WorkerSettings::default())
        .with_clock(Arc::new(move || now.load(Ordering::SeqCst)))
        .with_metrics(metrics);

    let sms_req = signed_request(
        TEST_AUTH_TOKEN,
        URL,
        &samples::inbound_sms(MESSAGE_SID, "secret body"),
    );
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &sms_req).await.status, 200);
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &sms_req).await.status, 200);
    let mut forged = sms_req.clone();
    forged
        .headers
        .insert("x-twilio-signature", HeaderValue::from_static("Zm9yZ2Vk"));
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &forged).await.status, 403);
    r.store.fail_next.store(1, Ordering::SeqCst);
    let other = signed_request(
        TEST_AUTH_TOKEN,
        URL,
        &samples::inbound_sms("SM99999999999999999999999999999999", "x"),
    );
    assert_eq!(r.pipeline.handle(Endpoint::Sms, &other).await.status, 503);
    let mut params = samples::inbound_call(CALL_SID);
    params.push(("ErrorCode", "11200".into()));
    let fallback = signed_request(
        TEST_AUTH_TOKEN,
        "https://hooks.example.com/fallback",
        &params,
    );
    assert_eq!(
        r.pipeline
            .handle(Endpoint::Fallback, &fallback)
            .await
            .status,
        200
    );
    let job = r.queue.pop().unwrap();
    r.now.fetch_add(1_500, Ordering::SeqCst);
    assert_eq!(worker.process(&job).await.unwrap(), Outcome::Processed);

    let lines = lines.lock().unwrap();
    let parsed: Vec<serde_json::Value> = lines.iter().map(|l| check_emf(l).unwrap()).collect();
    let count = |name: &str| parsed.iter().filter(|v| v.get(name).is_some()).count();
    assert_eq!(
        (
            count("Accepted"),
            count("Duplicate"),
            count("Refused"),
            count("Failed"),
            count("FallbackUsed")
        ),
        (2, 1, 1, 1, 1)
    );
    assert_eq!(count("Latency"), 5);
    let processed = parsed
        .iter()
        .find(|v| v.get("Processed").is_some())
        .unwrap();
    assert_eq!(processed["Kind"], "inbound_message");
    assert_eq!(processed["EventAge"], 1_500.0);
    let refused = parsed.iter().find(|v| v.get("Refused").is_some()).unwrap();
    assert_eq!(
        (refused["Endpoint"].as_str(), refused["Kind"].as_str()),
        (Some("sms"), Some("unknown"))
    );
    for line in lines.iter() {
        for secret in ["secret body", "+1415", TEST_AUTH_TOKEN, MESSAGE_SID] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
    }
}

// ---- Many accounts and token rotation ----

mod accounts_and_rotation {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use async_trait::async_trait;
    use webhook_pipeline::config::Secret;
    use webhook_pipeline::rotation::{SecretSource, SecretSourceError};

    use super::*;

    const AC_A: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const AC_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const AC_C: &str = "ACcccccccccccccccccccccccccccccccc";
    const TA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
    const TB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1";
    const OLD: &str = "0123456789abcdef0123456789abcdef";
    const NEW: &str = "fedcba9876543210fedcba9876543210";

    fn pipeline(secret: &str, store: &Arc<MemoryStore>, queue: &Arc<MemoryQueue>) -> Pipeline {
        let secret = Secret::parse(secret, "S").unwrap();
        Pipeline::new(
            secret.validator,
            std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
                store.clone(),
                queue.clone(),
            )),
            ReplyPolicy::default(),
            Settings::default(),
        )
        .with_basic_auth(secret.basic_auth)
    }

    /// An inbound SMS claiming `account` (none: no AccountSid), signed with `token`.
    fn sms_of(account: Option<&str>, token: &str, sid: &str) -> webhook_pipeline::IncomingRequest {
        let params: Vec<(&str, String)> = samples::inbound_sms(sid, "hi")
            .into_iter()
            .filter_map(|(k, v)| match k {
                "AccountSid" => account.map(|a| (k, a.to_owned())),
                _ => Some((k, v)),
            })
            .collect();
        signed_request(token, URL, &params)
    }

    fn sid(n: u32) -> String {
        format!("SM{n:032}")
    }

    #[tokio::test]
    async fn each_account_is_checked_with_its_own_token_and_refusals_store_nothing() {
        let (store, queue) = (Arc::default(), Arc::default());
        let p = pipeline(
            &format!(
                r#"{{"accounts": {{"{AC_A}": {{"auth_token": "{TA}"}}, "{AC_B}": {{"auth_token": "{TB}"}}}}}}"#
            ),
            &store,
            &queue,
        );
        let status = |req| {
            let p = &p;
            async move { p.handle(Endpoint::Sms, &req).await.status }
        };
        assert_eq!(status(sms_of(Some(AC_A), TA, &sid(1))).await, 200);
        assert_eq!(status(sms_of(Some(AC_B), TB, &sid(2))).await, 200);
        // A's token claiming B; an account not in the map; no AccountSid and no default.
        assert_eq!(status(sms_of(Some(AC_B), TA, &sid(3))).await, 403);
        assert_eq!(status(sms_of(Some(AC_C), TA, &sid(4))).await, 403);
        assert_eq!(status(sms_of(None, TA, &sid(5))).await, 403);
        assert_eq!(store.len(), 2);
        assert_eq!(queue.len(), 2);

        // With a default token: other accounts (and none) use it, and only it.
        let (store, queue) = (Arc::default(), Arc::default());
        let p = pipeline(
            &format!(
                r#"{{"auth_token": "{OLD}", "accounts": {{"{AC_A}": {{"auth_token": "{TA}"}}}}}}"#
            ),
            &store,
            &queue,
        );
        let status = |req| {
            let p = &p;
            async move { p.handle(Endpoint::Sms, &req).await.status }
        };
        assert_eq!(status(sms_of(Some(AC_C), OLD, &sid(1))).await, 200);
        assert_eq!(status(sms_of(Some(AC_A), OLD, &sid(2))).await, 403);
        assert_eq!(status(sms_of(Some(AC_C), TA, &sid(3))).await, 403);
        assert_eq!(store.len(), 1);
    }

    /// A secret source whose value the test changes, counting reads.
    struct Source {
        secret: Mutex<String>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl SecretSource for Source {
        async fn read(&self) -> Result<Secret, SecretSourceError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Secret::parse(&self.secret.lock().unwrap(), "S")?)
        }
    }

    fn source(secret: &str) -> Arc<Source> {
        Arc::new(Source {
            secret: Mutex::new(secret.to_owned()),
            reads: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn a_promoted_token_is_accepted_after_one_read_and_forgeries_cost_one_read() {
        let (store, queue) = (Arc::default(), Arc::default());
        let src = source(OLD);
        let p = Arc::new(
            pipeline(OLD, &store, &queue).with_secret_source(src.clone(), Duration::from_secs(30)),
        );
        assert_eq!(
            p.handle(Endpoint::Sms, &sms_of(Some(AC_A), OLD, &sid(1)))
                .await
                .status,
            200
        );
        assert_eq!(
            src.reads.load(Ordering::SeqCst),
            0,
            "an accepted request reads nothing"
        );

        // Rotation: the secret now holds the new token, and Twilio signs with it.
        *src.secret.lock().unwrap() = format!(r#"{{"auth_token": "{NEW}"}}"#);
        let concurrent: Vec<_> = (2..22)
            .map(|n| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.handle(Endpoint::Sms, &sms_of(Some(AC_A), NEW, &sid(n)))
                        .await
                        .status
                })
            })
            .collect();
        for t in concurrent {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(
            src.reads.load(Ordering::SeqCst),
            1,
            "one read for 20 concurrent requests"
        );

        // A flood of forgeries within the interval: 403, nothing stored, no further read.
        let flood: Vec<_> = (100..300)
            .map(|n| {
                let p = p.clone();
                tokio::spawn(async move {
                    p.handle(Endpoint::Sms, &sms_of(Some(AC_A), TB, &sid(n)))
                        .await
                        .status
                })
            })
            .collect();
        for t in flood {
            assert_eq!(t.await.unwrap(), 403);
        }
        assert_eq!(src.reads.load(Ordering::SeqCst), 1);
        assert_eq!(store.len(), 21);
    }

    #[tokio::test(start_paused = true)]
    async fn an_added_account_and_new_basic_credentials_are_picked_up() {
        let (store, queue) = (Arc::default(), Arc::default());
        let with_basic = |password: &str, accounts: &str| {
            format!(
                r#"{{"auth_token": "{OLD}", "basic_auth": {{"username": "twilio", "password": "{password}"}}{accounts}}}"#
            )
        };
        let src = source(&with_basic("old-pass", ""));
        let p = pipeline(&with_basic("old-pass", ""), &store, &queue)
            .with_secret_source(src.clone(), Duration::from_secs(30));
        let basic = |mut req: webhook_pipeline::IncomingRequest, password: &str| {
            use base64::Engine as _;
            let value =
                base64::engine::general_purpose::STANDARD.encode(format!("twilio:{password}"));
            req.headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {value}")).unwrap(),
            );
            req
        };
        // A new account in the map, signed with its own token: refused by the default,
        // accepted once the secret is read again.
        *src.secret.lock().unwrap() = with_basic(
            "new-pass",
            &format!(r#", "accounts": {{"{AC_B}": {{"auth_token": "{TB}"}}}}"#),
        );
        let req = basic(sms_of(Some(AC_B), TB, &sid(1)), "new-pass");
        assert_eq!(p.handle(Endpoint::Sms, &req).await.status, 200);
        assert_eq!(src.reads.load(Ordering::SeqCst), 1);
        // The old password is now wrong; no re-read before the interval has passed.
        let req = basic(sms_of(Some(AC_A), OLD, &sid(2)), "old-pass");
        assert_eq!(p.handle(Endpoint::Sms, &req).await.status, 401);
        assert_eq!(src.reads.load(Ordering::SeqCst), 1);
        // A missing Basic header is Twilio's first try, not a reason to read the secret.
        tokio::time::advance(Duration::from_secs(31)).await;
        let req = sms_of(Some(AC_A), OLD, &sid(3));
        assert_eq!(p.handle(Endpoint::Sms, &req).await.status, 401);
        assert_eq!(src.reads.load(Ordering::SeqCst), 1);
        assert_eq!(store.len(), 1);
    }
}

#[tokio::test]
async fn queue_first_every_copy_is_enqueued_and_folded_once_without_touching_the_record() {
    let r = queue_first_rig(ReplyPolicy {
        sms_auto_reply: Some("Thanks!".into()),
        ..Default::default()
    });
    let first = r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(first.status, 200);
    assert!(first.body.contains("Thanks!"));
    // A duplicate gets the stored reply, and sends its own job: the queue, not the record,
    // is what guarantees the worker sees the event.
    let again = r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(again, first);
    assert_eq!(r.store.len(), 1);
    assert_eq!(r.queue.len(), 2);
    let key = format!("sms#{MESSAGE_SID}");
    let outcomes = [
        r.worker.process(&r.queue.pop().unwrap()).await.unwrap(),
        r.worker.process(&r.queue.pop().unwrap()).await.unwrap(),
    ];
    assert_eq!(outcomes, [Outcome::Processed, Outcome::Skipped]);
    let (state, _) = r
        .store
        .load_state(&format!("msg#{MESSAGE_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.events, 1, "folded once");
    assert_eq!(state.timeline.len(), 1);
    // No lease, no processed mark: the record was written once, by the claim.
    assert_eq!(r.store.is_processed(&key), Some(false));
}

#[tokio::test]
async fn queue_first_a_failed_send_is_503_and_the_retry_sends_its_own_job() {
    let r = queue_first_rig(ReplyPolicy::default());
    r.queue.fail_next.store(1, Ordering::SeqCst);
    let failed = r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(failed.status, 503);
    // The record was written (it only holds the reply); no job went out.
    assert_eq!((r.store.len(), r.queue.len()), (1, 0));
    // Twilio's retry (or the fallback) finds the record and still sends the job.
    let retry = r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(retry.status, 200);
    assert_eq!(r.queue.len(), 1);
    assert_eq!(
        r.worker.process(&r.queue.pop().unwrap()).await.unwrap(),
        Outcome::Processed
    );
}

#[tokio::test]
async fn queue_first_a_failed_send_nobody_retries_is_sent_once_by_the_sweeper() {
    let r = queue_first_rig(ReplyPolicy::default());
    r.queue.fail_next.store(1, Ordering::SeqCst);
    assert_eq!(r.sms_status(MESSAGE_SID).await, 503);
    assert!(r.queue.is_empty());
    r.now.fetch_add(
        WorkerSettings::default().sweep_grace.as_millis() as i64 + 1,
        Ordering::SeqCst,
    );
    assert_eq!(r.worker.sweep().await.unwrap().resent, 1);
    assert_eq!(
        r.worker.process(&r.queue.pop().unwrap()).await.unwrap(),
        Outcome::Processed
    );
    // Handed over once: the queue holds it, the sweeper does not send it again.
    r.now.fetch_add(3_600_000, Ordering::SeqCst);
    assert_eq!(r.worker.sweep().await.unwrap().resent, 0);
    assert!(r.queue.is_empty());
}

#[tokio::test]
async fn queue_first_a_failed_claim_is_503_and_its_job_is_still_folded_once() {
    let r = queue_first_rig(ReplyPolicy::default());
    r.store.fail_next.store(1, Ordering::SeqCst);
    let failed = r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    assert_eq!(failed.status, 503);
    assert_eq!(r.queue.len(), 1, "the send went out with the claim");
    assert_eq!(r.sms_status(MESSAGE_SID).await, 200);
    // Two jobs of one event (the failed attempt's and the retry's): one fold.
    while let Some(job) = r.queue.pop() {
        r.worker.process(&job).await.unwrap();
    }
    let (state, _) = r
        .store
        .load_state(&format!("msg#{MESSAGE_SID}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.events, 1);
}

#[tokio::test]
async fn queue_first_drops_jobs_older_than_the_records_and_refuses_slow_work() {
    let r = queue_first_rig(ReplyPolicy::default());
    r.pipeline.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    let job = r.queue.pop().unwrap();
    r.now.fetch_add(
        WorkerSettings::default().event_ttl.as_millis() as i64 + 1,
        Ordering::SeqCst,
    );
    assert_eq!(r.worker.process(&job).await.unwrap(), Outcome::Skipped);
    assert!(
        r.store
            .load_state(&format!("msg#{MESSAGE_SID}"))
            .await
            .unwrap()
            .is_none()
    );

    struct Nothing;
    #[async_trait::async_trait]
    impl SlowWork for Nothing {
        fn name(&self) -> &'static str {
            "nothing"
        }
        async fn run(&self, _: &EventRecord) -> Result<(), webhook_pipeline::worker::WorkError> {
            Ok(())
        }
    }
    let with_work = Worker::new(r.store.clone(), r.queue.clone(), WorkerSettings::default())
        .with_queue_first(true)
        .with_work(Arc::new(Nothing));
    assert!(matches!(
        with_work.process(&job).await,
        Err(webhook_pipeline::worker::WorkerError::QueueFirstWithSlowWork)
    ));
}

/// A store and a queue whose every call takes 100 ms (the claim and the send: a round trip).
mod slow {
    use std::time::Duration;

    use async_trait::async_trait;
    use webhook_pipeline::consent::ConsentLedger;
    use webhook_pipeline::state::StateRecord;
    use webhook_pipeline::store::{ClaimTimes, Processing, Stale};
    use webhook_pipeline::{
        Claim, ConsentStore, EventLog, EventRecord, Job, Leases, PortError, StateStore, WorkQueue,
    };

    pub const TRIP: Duration = Duration::from_millis(100);

    /// Counts the state reads.
    pub struct Store(
        pub std::sync::Arc<webhook_testkit::memory::MemoryStore>,
        pub std::sync::atomic::AtomicUsize,
    );
    pub struct Queue(pub std::sync::Arc<webhook_testkit::memory::MemoryQueue>);

    #[async_trait]
    impl WorkQueue for Queue {
        async fn enqueue(&self, job: &Job) -> Result<(), PortError> {
            tokio::time::sleep(TRIP).await;
            self.0.enqueue(job).await
        }
    }

    #[async_trait]
    impl EventLog for Store {
        async fn claim(&self, e: &EventRecord, a: &str, t: ClaimTimes) -> Result<Claim, PortError> {
            tokio::time::sleep(TRIP).await;
            self.0.claim(e, a, t).await
        }
        async fn release(&self, k: &str, a: &str) -> Result<(), PortError> {
            self.0.release(k, a).await
        }
        async fn stale_pending(&self, b: i64, l: usize) -> Result<Vec<Stale>, PortError> {
            self.0.stale_pending(b, l).await
        }
        async fn extend_lock(&self, k: &str, l: i64, s: u32) -> Result<(), PortError> {
            self.0.extend_lock(k, l, s).await
        }
    }

    #[async_trait]
    impl Leases for Store {
        async fn begin_processing(&self, k: &str, n: i64, l: i64) -> Result<Processing, PortError> {
            self.0.begin_processing(k, n, l).await
        }
        async fn finish_processing(&self, k: &str, n: i64) -> Result<(), PortError> {
            self.0.finish_processing(k, n).await
        }
        async fn abandon_processing(&self, k: &str) -> Result<(), PortError> {
            self.0.abandon_processing(k).await
        }
    }

    #[async_trait]
    impl StateStore for Store {
        async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, PortError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.load_state(id).await
        }
        async fn save_state(
            &self,
            id: &str,
            s: &StateRecord,
            v: Option<u64>,
            e: i64,
        ) -> Result<bool, PortError> {
            self.0.save_state(id, s, v, e).await
        }
    }

    #[async_trait]
    impl ConsentStore for Store {
        async fn load_consent(&self, s: &str) -> Result<Option<(ConsentLedger, u64)>, PortError> {
            self.0.load_consent(s).await
        }
        async fn save_consent(
            &self,
            s: &str,
            l: &ConsentLedger,
            v: Option<u64>,
        ) -> Result<bool, PortError> {
            self.0.save_consent(s, l, v).await
        }
    }
}

#[tokio::test(start_paused = true)]
async fn round_trips_two_then_one_and_queue_first_one_for_new_and_duplicate_alike() {
    for queue_first in [false, true] {
        let store = Arc::new(MemoryStore::default());
        let queue = Arc::new(MemoryQueue::default());
        let p = Pipeline::new(
            Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
            std::sync::Arc::new(
                webhook_pipeline::ClaimThenSend::new(
                    Arc::new(slow::Store(store.clone(), Default::default())),
                    Arc::new(slow::Queue(queue.clone())),
                )
                .queue_first(queue_first),
            ),
            ReplyPolicy::default(),
            Settings::default(),
        );
        let mut trips = Vec::new();
        for _ in 0..2 {
            let started = tokio::time::Instant::now();
            assert_eq!(p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await.status, 200);
            trips.push(started.elapsed().as_millis() / slow::TRIP.as_millis());
        }
        let want = if queue_first { [1, 1] } else { [2, 1] };
        assert_eq!(trips, want, "queue first: {queue_first}");
    }
}

#[tokio::test]
async fn an_inbound_message_creates_its_state_without_reading_it_first() {
    let store = Arc::new(slow::Store(
        Arc::new(MemoryStore::default()),
        Default::default(),
    ));
    let queue = Arc::new(MemoryQueue::default());
    let p = Pipeline::new(
        Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap()),
        std::sync::Arc::new(
            webhook_pipeline::ClaimThenSend::new(store.clone(), queue.clone()).queue_first(true),
        ),
        ReplyPolicy::default(),
        Settings::default(),
    );
    let worker =
        Worker::new(store.clone(), queue.clone(), WorkerSettings::default()).with_queue_first(true);
    let reads = || store.1.load(Ordering::SeqCst);
    p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    p.handle(Endpoint::Sms, &sms(MESSAGE_SID)).await;
    let (first, copy) = (queue.pop().unwrap(), queue.pop().unwrap());
    assert_eq!(worker.process(&first).await.unwrap(), Outcome::Processed);
    assert_eq!(reads(), 0, "created without a read");
    // The copy's job: the create fails, the read finds it applied.
    assert_eq!(worker.process(&copy).await.unwrap(), Outcome::Skipped);
    assert_eq!(reads(), 1);
    // A status callback reads first: its record usually exists.
    let status = signed_request(
        TEST_AUTH_TOKEN,
        "https://hooks.example.com/status",
        &samples::message_status(CALL_SID, "sent", None),
    );
    p.handle(Endpoint::Status, &status).await;
    worker.process(&queue.pop().unwrap()).await.unwrap();
    assert_eq!(reads(), 2);
}
