//! The opt-out ledger and replay through the real pipeline and worker (in-memory adapters).

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use twilio_webhook::payload::Endpoint;
use webhook_pipeline::consent::{ConsentStatus, ConsentVia, Consents};
use webhook_pipeline::replay::{self, ReplayFilter};
use webhook_pipeline::worker::{Outcome, WorkError, WorkerSettings};
use webhook_pipeline::{Clock, EventRecord, Pipeline, SlowWork, Worker};
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{self, TEST_AUTH_TOKEN, signed_request};

const SMS_URL: &str = "https://hooks.example.com/sms";
const STATUS_URL: &str = "https://hooks.example.com/status";
/// What `samples::inbound_sms` carries.
const SERVICE: &str = "MG55555555555555555555555555555555";
const OUR_NUMBER: &str = "+14155550199";
const SUBSCRIBER: &str = "+14155550100";
const T0: i64 = 1_800_000_000_000;

/// Counts its runs and records the consent it saw for the event's pair.
struct Recorder {
    runs: AtomicUsize,
    consents: Consents,
    seen: Mutex<Vec<Option<ConsentStatus>>>,
}

#[async_trait]
impl SlowWork for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    async fn run(&self, _event: &EventRecord) -> Result<(), WorkError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let entry = self
            .consents
            .get(SERVICE, SUBSCRIBER)
            .await
            .map_err(|e| WorkError(e.to_string()))?;
        self.seen.lock().unwrap().push(entry.and_then(|e| e.status));
        Ok(())
    }
}

struct Rig {
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    pipeline: Pipeline,
    worker: Worker,
    recorder: Arc<Recorder>,
    now: Arc<AtomicI64>,
}

fn rig() -> Rig {
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let now = Arc::new(AtomicI64::new(T0));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone())
        .with_clock(clock.clone());
    let worker =
        Worker::new(store.clone(), queue.clone(), WorkerSettings::default()).with_clock(clock);
    // A user's slow work gets its read access from the worker it is added to.
    let recorder = Arc::new(Recorder {
        runs: AtomicUsize::new(0),
        consents: worker.consents(),
        seen: Mutex::new(Vec::new()),
    });
    let worker = worker.with_work(recorder.clone());
    Rig {
        store,
        queue,
        pipeline,
        worker,
        recorder,
        now,
    }
}

impl Rig {
    /// Accept a webhook at `t` (the pipeline's clock), without processing it.
    async fn accept(&self, endpoint: Endpoint, url: &str, params: &[(&str, String)], t: i64) {
        self.now.store(t, Ordering::SeqCst);
        let r = self
            .pipeline
            .handle(endpoint, &signed_request(TEST_AUTH_TOKEN, url, params))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    async fn sms(&self, sid: &str, body: &str, extra: &[(&'static str, &str)], t: i64) {
        let mut params = samples::inbound_sms(sid, body);
        for (k, v) in extra {
            params.retain(|(name, _)| name != k);
            if !v.is_empty() {
                params.push((k, (*v).to_owned()));
            }
        }
        self.accept(Endpoint::Sms, SMS_URL, &params, t).await;
    }

    /// Process every queued job, in the order given by `order` (indexes into the queue).
    async fn drain(&self) -> usize {
        let mut n = 0;
        while let Some(job) = self.queue.pop() {
            self.worker.process(&job).await.unwrap();
            n += 1;
        }
        n
    }

    async fn status(&self, ours: &str) -> Option<(ConsentStatus, String, i64)> {
        let e = self
            .worker
            .consents()
            .get(ours, SUBSCRIBER)
            .await
            .unwrap()?;
        Some((e.status?, e.source_message_sid?, e.changed_at_ms?))
    }
}

fn sid(n: u32) -> String {
    format!("SM{n:032}")
}

#[tokio::test]
async fn keywords_update_the_ledger_of_the_service_and_ordinary_texts_do_not() {
    let rig = rig();
    rig.sms(&sid(1), "hello", &[], T0).await;
    rig.sms(&sid(2), "stop please", &[], T0 + 1).await;
    rig.drain().await;
    assert_eq!(rig.status(SERVICE).await, None, "not a keyword");

    rig.sms(&sid(3), "  Stop\n", &[], T0 + 10).await;
    rig.drain().await;
    assert_eq!(
        rig.status(SERVICE).await,
        Some((ConsentStatus::OptedOut, sid(3), T0 + 10))
    );
    // Without a Messaging Service, the pair is our number.
    rig.sms(&sid(4), "unstop", &[("MessagingServiceSid", "")], T0 + 20)
        .await;
    rig.drain().await;
    assert_eq!(
        rig.status(OUR_NUMBER).await,
        Some((ConsentStatus::OptedIn, sid(4), T0 + 20))
    );
    assert_eq!(
        rig.status(SERVICE).await.unwrap().0,
        ConsentStatus::OptedOut,
        "pairs are separate"
    );
    // The slow work read the ledger after this event's change: the STOP was visible to it.
    assert!(
        rig.recorder
            .seen
            .lock()
            .unwrap()
            .contains(&Some(ConsentStatus::OptedOut))
    );
}

#[tokio::test]
async fn opt_out_type_takes_precedence_over_the_body() {
    let rig = rig();
    // A custom keyword of Advanced Opt-Out: the body alone would not say it.
    rig.sms(&sid(1), "ARRET", &[("OptOutType", "STOP")], T0)
        .await;
    rig.drain().await;
    let e = rig
        .worker
        .consents()
        .get(SERVICE, SUBSCRIBER)
        .await
        .unwrap();
    assert_eq!(e.as_ref().unwrap().via, Some(ConsentVia::OptOutType));
    assert!(e.unwrap().is_opted_out());
    // OptOutType says START even though the body is a stop word.
    rig.sms(&sid(2), "stop", &[("OptOutType", "START")], T0 + 1)
        .await;
    rig.drain().await;
    assert_eq!(rig.status(SERVICE).await.unwrap().0, ConsentStatus::OptedIn);
    // HELP leaves consent alone and keeps its time.
    rig.sms(&sid(3), "info", &[], T0 + 2).await;
    rig.drain().await;
    let e = rig
        .worker
        .consents()
        .get(SERVICE, SUBSCRIBER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.status, Some(ConsentStatus::OptedIn));
    assert_eq!(e.last_help_at_ms, Some(T0 + 2));
    assert_eq!(e.last_help_message_sid, Some(sid(3)));
}

#[tokio::test]
async fn stop_then_start_processed_in_reverse_ends_opted_in() {
    let rig = rig();
    rig.sms(&sid(1), "STOP", &[], T0).await;
    rig.sms(&sid(2), "START", &[], T0 + 5_000).await;
    // The queue delivers the START first.
    let stop = rig.queue.pop().unwrap();
    let start = rig.queue.pop().unwrap();
    rig.worker.process(&start).await.unwrap();
    rig.worker.process(&stop).await.unwrap();
    assert_eq!(
        rig.status(SERVICE).await,
        Some((ConsentStatus::OptedIn, sid(2), T0 + 5_000))
    );
}

#[tokio::test]
async fn error_21610_opts_out_the_pair_of_the_outbound_message() {
    let rig = rig();
    // An ordinary failure says nothing about consent.
    let failed = samples::message_status(&sid(7), "failed", Some("30003"));
    rig.accept(Endpoint::Status, STATUS_URL, &failed, T0).await;
    let opted_out = samples::message_status(&sid(8), "failed", Some("21610"));
    rig.accept(Endpoint::Status, STATUS_URL, &opted_out, T0 + 1)
        .await;
    rig.drain().await;
    // From = our number, To = the subscriber.
    let e = rig
        .worker
        .consents()
        .get(OUR_NUMBER, SUBSCRIBER)
        .await
        .unwrap()
        .unwrap();
    assert!(e.is_opted_out());
    assert_eq!(e.via, Some(ConsentVia::Error21610));
    assert_eq!(e.source_message_sid, Some(sid(8)));
    assert_eq!(
        rig.worker
            .consents()
            .ledger(SUBSCRIBER)
            .await
            .unwrap()
            .pairs
            .len(),
        1
    );
}

#[tokio::test]
async fn a_redelivered_stop_changes_nothing() {
    let rig = rig();
    rig.sms(&sid(1), "STOP", &[], T0).await;
    let job = rig.queue.pop().unwrap();
    assert_eq!(rig.worker.process(&job).await.unwrap(), Outcome::Processed);
    let (before, v1) = rig.store_consent().await;
    assert_eq!(rig.worker.process(&job).await.unwrap(), Outcome::Skipped);
    // Even processed again (a replay), the ledger is not rewritten.
    use webhook_pipeline::replay::ReplaySource;
    assert!(rig.store.reopen(&job.event.key, T0, T0 + 1).await.unwrap());
    assert_eq!(rig.worker.process(&job).await.unwrap(), Outcome::Processed);
    let (after, v2) = rig.store_consent().await;
    assert_eq!(before, after);
    assert_eq!(v1, v2, "no write for a repeat");
}

impl Rig {
    async fn store_consent(&self) -> (webhook_pipeline::consent::ConsentLedger, u64) {
        use webhook_pipeline::ConsentStore;
        self.store.load_consent(SUBSCRIBER).await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn replay_runs_the_slow_work_again_for_processed_events_and_folds_nothing_twice() {
    let rig = rig();
    rig.sms(&sid(1), "hello", &[], T0).await;
    rig.sms(&sid(2), "STOP", &[], T0 + 60_000).await;
    let status = samples::message_status(&sid(1), "delivered", None);
    rig.accept(Endpoint::Status, STATUS_URL, &status, T0 + 120_000)
        .await;
    assert_eq!(rig.drain().await, 3);
    assert_eq!(rig.recorder.runs.load(Ordering::SeqCst), 3);
    let state_before = {
        use webhook_pipeline::StateStore;
        rig.store
            .load_state(&format!("msg#{}", sid(1)))
            .await
            .unwrap()
    };
    let consent_before = rig.store_consent().await;
    rig.now.store(T0 + 3_600_000, Ordering::SeqCst);
    let now = T0 + 3_600_000;
    let since = |s: &str| replay::parse_since(s, now).unwrap();
    let mut quiet = |_: usize, _: usize| {};

    // Dry run: counts, changes nothing.
    let filter = ReplayFilter {
        since_ms: since("59m"), // the last two events
        ..Default::default()
    };
    let r = replay::replay(&*rig.store, &*rig.queue, &filter, true, now, &mut quiet)
        .await
        .unwrap();
    assert_eq!((r.matched, r.processed, r.enqueued), (2, 2, 2));
    assert!(rig.queue.is_empty());
    assert_eq!(
        rig.store.is_processed(&format!("sms#{}", sid(2))),
        Some(true)
    );

    // --unprocessed: all of them were processed, nothing to do.
    let only = ReplayFilter {
        unprocessed_only: true,
        ..filter.clone()
    };
    let r = replay::replay(&*rig.store, &*rig.queue, &only, false, now, &mut quiet)
        .await
        .unwrap();
    assert_eq!((r.matched, r.enqueued), (2, 0));
    assert!(rig.queue.is_empty());

    // By kind: the status callback only. It is reopened, enqueued and its slow work runs again.
    let by_kind = ReplayFilter {
        since_ms: since("2h"),
        kind: Some("message_status".into()),
        ..Default::default()
    };
    let r = replay::replay(&*rig.store, &*rig.queue, &by_kind, false, now, &mut quiet)
        .await
        .unwrap();
    assert_eq!((r.matched, r.enqueued, r.failed), (1, 1, 0));
    assert_eq!(rig.drain().await, 1);
    assert_eq!(rig.recorder.runs.load(Ordering::SeqCst), 4);

    // By sid: the message's own events (its inbound and its status callback).
    let by_sid = ReplayFilter {
        since_ms: since("2h"),
        sid: Some(sid(1)),
        ..Default::default()
    };
    let r = replay::replay(&*rig.store, &*rig.queue, &by_sid, false, now, &mut quiet)
        .await
        .unwrap();
    assert_eq!(r.enqueued, 2);
    assert_eq!(rig.drain().await, 2);
    assert_eq!(rig.recorder.runs.load(Ordering::SeqCst), 6);

    // The state and the ledger saw each event once.
    use webhook_pipeline::StateStore;
    assert_eq!(
        rig.store
            .load_state(&format!("msg#{}", sid(1)))
            .await
            .unwrap(),
        state_before
    );
    assert_eq!(rig.store_consent().await, consent_before);
    assert_eq!(
        rig.store.is_processed(&format!("sms#{}", sid(1))),
        Some(true)
    );
}

#[tokio::test]
async fn replay_leaves_a_record_a_worker_holds() {
    let rig = rig();
    rig.sms(&sid(1), "hello", &[], T0).await;
    let key = format!("sms#{}", sid(1));
    use webhook_pipeline::Leases;
    // A worker is on it right now.
    rig.store
        .begin_processing(&key, T0, T0 + 60_000)
        .await
        .unwrap();
    rig.queue.pop().unwrap();
    let filter = ReplayFilter {
        since_ms: T0,
        ..Default::default()
    };
    let r = replay::replay(
        &*rig.store,
        &*rig.queue,
        &filter,
        false,
        T0 + 1,
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!((r.matched, r.skipped, r.enqueued), (1, 1, 0));
    assert!(rig.queue.is_empty());
}
