//! The opt-out ledger and `replay` on the SQLite store: both fold paths of `serve` (one call
//! per batch, one transaction per event) and the lease path with slow work.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use webhook_local::{Database, SqliteQueue, SqliteStore};
use webhook_pipeline::consent::{ConsentAction, ConsentStatus, ConsentUpdate, ConsentVia};
use webhook_pipeline::replay::{self, ReplayFilter};
use webhook_pipeline::store::ClaimTimes;
use webhook_pipeline::worker::{Outcome, WorkError, WorkerSettings};
use webhook_pipeline::{
    Claim, Clock, ConsentStore, EventRecord, SlowWork, StateStore, WorkQueue, Worker,
};
use webhook_testkit::contract::sample_event;

const T0: i64 = 1_800_000_000_000;
const SUBSCRIBER: &str = "+15559990000";
const OURS: &str = "+15550000001";

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("webhook-ops-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn times(now_ms: i64) -> ClaimTimes {
    ClaimTimes {
        now_ms,
        lock_until_ms: now_ms + 30_000,
        expires_at_s: now_ms / 1000 + 3600,
    }
}

/// An inbound message event received at `at`, saying `action` (if any).
fn message(tag: &str, at: i64, action: Option<ConsentAction>) -> EventRecord {
    let mut e = sample_event(tag);
    e.received_at = at;
    e.state_update.as_mut().unwrap().id = format!("msg#{tag}");
    e.consent = action.map(|action| ConsentUpdate {
        ours: OURS.into(),
        subscriber: SUBSCRIBER.into(),
        action,
        via: ConsentVia::Keyword,
        at_ms: at,
        message_sid: format!("SM{tag}"),
    });
    e
}

#[tokio::test]
async fn both_one_call_folds_apply_consent_latest_first_and_once() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db.clone()).with_records_as_jobs();
    let ttl = Duration::from_secs(3600);
    // The START is claimed (so folded) before the older STOP.
    let start = message("start", T0 + 5_000, Some(ConsentAction::OptIn));
    let stop = message("stop", T0, Some(ConsentAction::OptOut));
    for e in [&start, &stop] {
        assert_eq!(
            q.claim_and_enqueue(e, "a", times(T0 + 6_000))
                .await
                .unwrap(),
            Claim::New
        );
    }
    let folded = q
        .fold_ready(64, ttl, Duration::from_secs(1), false)
        .await
        .unwrap();
    assert_eq!(folded.processed, 2);
    let (ledger, v) = store.load_consent(SUBSCRIBER).await.unwrap().unwrap();
    let e = ledger.get(OURS).unwrap();
    assert_eq!(e.status, Some(ConsentStatus::OptedIn));
    assert_eq!(e.source_message_sid.as_deref(), Some("SMstart"));
    assert_eq!(v, 1, "the older STOP wrote nothing");

    // A HELP keeps consent and records its time.
    let help = message("help", T0 + 7_000, Some(ConsentAction::Help));
    q.claim_and_enqueue(&help, "a", times(T0 + 7_000))
        .await
        .unwrap();
    let folded = q
        .fold_ready(64, ttl, Duration::from_secs(1), false)
        .await
        .unwrap();
    assert_eq!(folded.processed, 1);
    let (ledger, v) = store.load_consent(SUBSCRIBER).await.unwrap().unwrap();
    assert_eq!(ledger.get(OURS).unwrap().last_help_at_ms, Some(T0 + 7_000));
    assert_eq!(
        ledger.get(OURS).unwrap().status,
        Some(ConsentStatus::OptedIn)
    );
    assert_eq!(v, 2);
    // Its job again (a redelivery) finds it processed and folds nothing.
    q.enqueue(&webhook_pipeline::Job {
        event: help.clone(),
    })
    .await
    .unwrap();
    let again = q
        .fold_ready(64, ttl, Duration::from_secs(1), false)
        .await
        .unwrap();
    assert_eq!((again.taken, again.processed), (1, 0));
    // The ledger has no TTL: a purge long after leaves it.
    store.purge_expired(T0 + 365 * 86_400_000).await.unwrap();
    assert!(store.load_consent(SUBSCRIBER).await.unwrap().is_some());
}

struct Counter(AtomicUsize);

#[async_trait]
impl SlowWork for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }

    async fn run(&self, _event: &EventRecord) -> Result<(), WorkError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Receive every visible job, process it, acknowledge it; how many.
async fn drain(q: &SqliteQueue, worker: &Worker) -> usize {
    let mut n = 0;
    loop {
        let jobs = q.receive(64, Duration::from_secs(30)).await.unwrap();
        if jobs.is_empty() {
            return n;
        }
        for (id, job) in jobs {
            assert_eq!(worker.process(&job).await.unwrap(), Outcome::Processed);
            q.ack(id).await.unwrap();
            n += 1;
        }
    }
}

#[tokio::test]
async fn replay_on_the_local_store_reprocesses_what_it_selects_once() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let now = Arc::new(AtomicI64::new(T0));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let store = Arc::new(SqliteStore::new(db.clone()));
    let q = Arc::new(SqliteQueue::new(db.clone()).with_clock(clock.clone()));
    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    let worker = Worker::new(store.clone(), q.clone(), WorkerSettings::default())
        .with_clock(clock)
        .with_work(counter.clone());
    let events: Vec<EventRecord> = (0..4)
        .map(|i| message(&format!("m{i}"), T0 + i * 60_000, None))
        .collect();
    for e in &events {
        q.claim_and_enqueue(e, "a", times(e.received_at))
            .await
            .unwrap();
    }
    now.store(T0 + 300_000, Ordering::SeqCst);
    assert_eq!(drain(&q, &worker).await, 4);
    assert_eq!(counter.0.load(Ordering::SeqCst), 4);

    let later = T0 + 600_000;
    now.store(later, Ordering::SeqCst);
    // The last two (received at +2 min and +3 min).
    let filter = ReplayFilter {
        since_ms: replay::parse_since("8m", later).unwrap(),
        ..Default::default()
    };
    let dry = replay::replay(&*store, &*q, &filter, true, later, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.processed, dry.enqueued), (2, 2, 2));
    assert_eq!(
        q.counts().await.unwrap().pending,
        0,
        "a dry run enqueues nothing"
    );

    let mut calls = Vec::new();
    let r = replay::replay(&*store, &*q, &filter, false, later, &mut |d, t| {
        calls.push((d, t))
    })
    .await
    .unwrap();
    assert_eq!((r.enqueued, r.skipped, r.failed), (2, 0, 0));
    assert_eq!(calls, [(1, 2), (2, 2)]);
    assert_eq!(drain(&q, &worker).await, 2);
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        6,
        "the slow work ran again"
    );
    for e in &events {
        let (_, version) = store
            .load_state(&e.state_update.as_ref().unwrap().id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(version, 1, "state folded once: {}", e.key);
    }
    // --unprocessed finds nothing left to do.
    let only = ReplayFilter {
        unprocessed_only: true,
        ..filter
    };
    let r = replay::replay(&*store, &*q, &only, false, later, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!((r.matched, r.enqueued), (2, 0));
}

#[tokio::test]
async fn a_replayed_record_goes_through_the_job_queue_of_a_serve_without_slow_work() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db.clone()).with_records_as_jobs();
    let ttl = Duration::from_secs(3600);
    let e = message("x", T0, Some(ConsentAction::OptOut));
    q.claim_and_enqueue(&e, "a", times(T0)).await.unwrap();
    let busy = Duration::from_secs(1);
    assert_eq!(
        q.fold_ready(64, ttl, busy, false).await.unwrap().processed,
        1
    );
    let filter = ReplayFilter {
        since_ms: T0,
        ..Default::default()
    };
    let r = replay::replay(&store, &q, &filter, false, T0 + 1_000, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(r.enqueued, 1);
    // Taken once: by its job, not also as a record that is its own job.
    let folded = q.fold_ready(64, ttl, busy, false).await.unwrap();
    assert_eq!((folded.taken, folded.processed), (1, 1), "{folded:?}");
    assert_eq!(q.fold_ready(64, ttl, busy, false).await.unwrap().taken, 0);
    assert_eq!(q.counts().await.unwrap().pending, 0);
    assert_eq!(store.load_consent(SUBSCRIBER).await.unwrap().unwrap().1, 1);
}
