//! The SQLite store and queue: the store contract, queue redelivery and dead-lettering,
//! durability across reopen, crash recovery, the worker loop and the HTTP server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twilio_webhook::payload::Endpoint;
use twilio_webhook::{AuthToken, FormParams, sign};
use webhook_local::{
    Database, DirLock, LoopSettings, OpenError, QueueSettings, ServeConfig, Server, SqliteQueue,
    SqliteStore, WorkerLoop, inspect,
};
use webhook_pipeline::store::ClaimTimes;
use webhook_pipeline::worker::WorkerSettings;
use webhook_pipeline::{Claim, Clock, EventLog, Job, Leases, StateStore, WorkQueue, Worker};
use webhook_testkit::contract::sample_event;
use webhook_testkit::samples::{self, TEST_AUTH_TOKEN};

/// A fresh data directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("webhook-local-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn manual_clock(start: i64) -> (Clock, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(start));
    let n = now.clone();
    (Arc::new(move || n.load(Ordering::SeqCst)), now)
}

/// A claim at `now_ms`: locked for 30 s, expiring in an hour.
fn claim_times(now_ms: i64) -> ClaimTimes {
    ClaimTimes {
        now_ms,
        lock_until_ms: now_ms + 30_000,
        expires_at_s: now_ms / 1000 + 3600,
    }
}

fn job(tag: &str) -> Job {
    Job {
        event: sample_event(tag),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_contract() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0.join("contract.db")).unwrap();
    webhook_testkit::contract::run_all(Arc::new(store)).await;
}

#[tokio::test]
async fn queue_redelivers_after_the_visibility_timeout() {
    let dir = TempDir::new();
    let (clock, now) = manual_clock(1_000_000);
    let q = SqliteQueue::new(Database::open_dir(&dir.0).unwrap()).with_clock(clock);
    let j = job("redeliver");
    q.enqueue(&j).await.unwrap();

    let got = q.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, j, "the job round-trips");
    let id = got[0].0;
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "invisible while received"
    );
    now.fetch_add(29_999, Ordering::SeqCst);
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    now.fetch_add(1, Ordering::SeqCst);
    let again = q.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "unacknowledged job comes back (crash recovery)"
    );
    assert_eq!(again[0].0, id);

    q.ack(id).await.unwrap();
    now.fetch_add(60_000, Ordering::SeqCst);
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "an acknowledged job never comes back"
    );
    assert_eq!(q.counts().await.unwrap().pending, 0);
}

#[tokio::test]
async fn queue_is_fifo_and_respects_the_limit() {
    let dir = TempDir::new();
    let q = SqliteQueue::new(Database::open_dir(&dir.0).unwrap());
    let jobs: Vec<Job> = (0..5).map(|i| job(&format!("fifo{i}"))).collect();
    for j in &jobs {
        q.enqueue(j).await.unwrap();
    }
    let first = q.receive(3, Duration::from_secs(30)).await.unwrap();
    let rest = q.receive(3, Duration::from_secs(30)).await.unwrap();
    let got: Vec<Job> = first.into_iter().chain(rest).map(|(_, j)| j).collect();
    assert_eq!(got, jobs);
}

#[tokio::test]
async fn nack_backs_off_then_dead_letters_after_5_receives() {
    let dir = TempDir::new();
    let (clock, now) = manual_clock(1_000_000);
    let q = SqliteQueue::new(Database::open_dir(&dir.0).unwrap()).with_clock(clock);
    let j = job("poison");
    q.enqueue(&j).await.unwrap();
    for n in 1..=5 {
        let got = q.receive(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1, "receive #{n}");
        q.nack(got[0].0, "boom").await.unwrap();
        if n < 5 {
            assert!(
                q.receive(10, Duration::from_secs(30))
                    .await
                    .unwrap()
                    .is_empty(),
                "backoff after a nack"
            );
            // Backoff is 1 s, 2 s, 4 s, 8 s.
            now.fetch_add(1000 << (n - 1), Ordering::SeqCst);
        }
    }
    now.fetch_add(3_600_000, Ordering::SeqCst);
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let counts = q.counts().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (0, 1));

    let lines = inspect(&dir.0).unwrap();
    let dead: Vec<_> = lines.iter().filter(|v| v["type"] == "job").collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["status"], "dead");
    assert_eq!(dead[0]["key"], j.event.key.as_str());
    assert_eq!(dead[0]["receive_count"], 5);
    assert_eq!(dead[0]["reason"], "boom");
}

#[tokio::test]
async fn a_job_never_acknowledged_dies_after_5_receives() {
    let dir = TempDir::new();
    let (clock, now) = manual_clock(1_000_000);
    let q = SqliteQueue::new(Database::open_dir(&dir.0).unwrap()).with_clock(clock);
    q.enqueue(&job("crashy")).await.unwrap();
    for _ in 0..5 {
        assert_eq!(q.receive(1, Duration::from_secs(1)).await.unwrap().len(), 1);
        now.fetch_add(1000, Ordering::SeqCst);
    }
    assert!(
        q.receive(1, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.counts().await.unwrap().dead, 1);
}

#[tokio::test]
async fn defer_does_not_count_a_receive() {
    let dir = TempDir::new();
    let (clock, _now) = manual_clock(1_000_000);
    let q = SqliteQueue::new(Database::open_dir(&dir.0).unwrap())
        .with_clock(clock)
        .with_settings(QueueSettings {
            max_receives: 2,
            ..Default::default()
        });
    q.enqueue(&job("defer")).await.unwrap();
    for _ in 0..10 {
        let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1);
        q.defer(got[0].0, Duration::ZERO).await.unwrap();
    }
    assert_eq!(q.counts().await.unwrap().dead, 0);
}

#[tokio::test]
async fn events_states_and_jobs_survive_a_reopen() {
    let dir = TempDir::new();
    let e = sample_event("durable");
    let t = ClaimTimes {
        now_ms: 1_800_000_000_000,
        lock_until_ms: 1_800_000_030_000,
        expires_at_s: 1_800_003_600,
    };
    {
        let db = Database::open_dir(&dir.0).unwrap();
        let store = SqliteStore::new(db.clone());
        let q = SqliteQueue::new(db);
        assert_eq!(store.claim(&e, "a1", t).await.unwrap(), Claim::New);
        q.enqueue(&Job { event: e.clone() }).await.unwrap();
        let state = webhook_pipeline::state::StateRecord {
            id: "msg#SM1".into(),
            latest_status: "received".into(),
            ..Default::default()
        };
        assert!(
            store
                .save_state("msg#SM1", &state, None, 1_800_003_600)
                .await
                .unwrap()
        );
    }
    let db = Database::open_dir(&dir.0).unwrap();
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db);
    match store.claim(&e, "a2", t).await.unwrap() {
        Claim::Duplicate { reply, processed } => {
            assert_eq!(reply, e.reply);
            assert!(!processed);
        }
        other => panic!("the record was lost: {other:?}"),
    }
    let (state, version) = store.load_state("msg#SM1").await.unwrap().unwrap();
    assert_eq!((state.latest_status.as_str(), version), ("received", 1));
    let got = q.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.event, e);
}

#[tokio::test]
async fn outbox_claims_and_enqueues_in_one_call_and_the_job_carries_the_record() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let (clock, now) = manual_clock(1_800_000_000_000);
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db.clone()).with_clock(clock);
    let at = claim_times;
    let t0 = now.load(Ordering::SeqCst);
    let event = sample_event("outbox");
    assert_eq!(
        q.claim_and_enqueue(&event, "a", at(t0)).await.unwrap(),
        Claim::New
    );
    // A duplicate gets the stored reply and no second job.
    assert_eq!(
        q.claim_and_enqueue(&event, "b", at(t0 + 1)).await.unwrap(),
        Claim::Duplicate {
            reply: event.reply.clone(),
            processed: false
        }
    );
    assert_eq!(q.counts().await.unwrap().pending, 1);
    let got = q.receive(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1.event, event,
        "the job is the record, read back whole"
    );

    // Never acknowledged: its dead letter keeps the event, though the job row held none.
    for _ in 1..5 {
        now.fetch_add(31_000, Ordering::SeqCst);
        assert_eq!(
            q.receive(10, Duration::from_secs(30)).await.unwrap().len(),
            1
        );
    }
    now.fetch_add(31_000, Ordering::SeqCst);
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    let body: String = db_body(&dir.0);
    let dead: Job = serde_json::from_str(&body).unwrap();
    assert_eq!(dead.event, event);

    // A job whose record expired and was purged is acknowledged, not handed to the worker.
    let gone = sample_event("purged");
    let t1 = now.load(Ordering::SeqCst);
    assert_eq!(
        q.claim_and_enqueue(&gone, "a", at(t1)).await.unwrap(),
        Claim::New
    );
    assert_eq!(store.purge_expired(t1 + 3_601_000).await.unwrap(), 2);
    assert!(
        q.receive(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.counts().await.unwrap().pending, 0);
}

/// Run SQL on the data directory's database with a plain connection (the server's writer
/// thread is another connection: WAL lets both in).
fn sql(dir: &std::path::Path, sql: &str) {
    let c = rusqlite::Connection::open(dir.join(webhook_local::DB_FILE)).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch(sql).unwrap();
}

/// A sample event with a state record of its own (`sample_event`s share one).
fn own_state_event(tag: &str) -> webhook_pipeline::EventRecord {
    let mut e = sample_event(tag);
    e.state_update.as_mut().unwrap().id = format!("msg#{tag}");
    e
}

/// The first column of every row of a query, with a plain connection.
fn strings(dir: &std::path::Path, sql: &str) -> Vec<String> {
    let c = rusqlite::Connection::open(dir.join(webhook_local::DB_FILE)).unwrap();
    let mut stmt = c.prepare(sql).unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn fold_ready_does_the_whole_job_of_each_visible_job_in_one_call() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let (clock, now) = manual_clock(1_800_000_000_000);
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db.clone()).with_clock(clock);
    let t0 = now.load(Ordering::SeqCst);
    let t = claim_times(t0);
    let ttl = Duration::from_secs(7 * 24 * 3600);
    let busy_delay = Duration::from_secs(5);
    // Outbox jobs (the record is the job), a job with its own body (the sweeper's), a job
    // whose record another worker leased, one that cannot be read, one whose record is gone.
    let outbox: Vec<_> = (0..3).map(|i| own_state_event(&format!("ob{i}"))).collect();
    for e in &outbox {
        assert_eq!(q.claim_and_enqueue(e, "a", t).await.unwrap(), Claim::New);
    }
    let swept = own_state_event("swept");
    store.claim(&swept, "a", t).await.unwrap();
    q.enqueue(&Job {
        event: swept.clone(),
    })
    .await
    .unwrap();
    let leased = own_state_event("leased");
    q.claim_and_enqueue(&leased, "a", t).await.unwrap();
    store
        .begin_processing(&leased.key, t0, t0 + 60_000)
        .await
        .unwrap();
    sql(
        &dir.0,
        "INSERT INTO jobs (key, body, visible_at_ms) VALUES ('sms#bad', 'not json', 0)",
    );
    let gone = own_state_event("gone");
    q.claim_and_enqueue(&gone, "a", t).await.unwrap();
    sql(&dir.0, "DELETE FROM events WHERE key LIKE '%gone%'");

    // A limit takes the oldest jobs first.
    let first = q.fold_ready(2, ttl, busy_delay, true).await.unwrap();
    assert_eq!((first.taken, first.processed), (2, 2));
    let keys: Vec<_> = first.named.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![outbox[0].key.clone(), outbox[1].key.clone()]);
    assert_eq!(first.named[0].1, outbox[0].kind);

    let rest = q.fold_ready(64, ttl, busy_delay, false).await.unwrap();
    assert_eq!(rest.taken, 5);
    assert_eq!(rest.processed, 2, "ob2 and the swept job: {rest:?}");
    assert!(rest.named.is_empty(), "names only when asked for");
    assert_eq!(rest.deferred, 1, "the leased record is left to its worker");
    assert_eq!(rest.dead.len(), 1);
    assert!(rest.dead[0].1.contains("unreadable job"), "{:?}", rest.dead);

    for e in outbox.iter().chain([&swept]) {
        let id = &e.state_update.as_ref().unwrap().id;
        let (state, version) = store.load_state(id).await.unwrap().expect("state folded");
        assert_eq!((state.latest_status.as_str(), version), ("received", 1));
        assert_eq!(
            store
                .begin_processing(&e.key, t0 + 1, t0 + 60_000)
                .await
                .unwrap(),
            webhook_pipeline::Processing::AlreadyDone,
            "{} marked processed",
            e.key
        );
    }
    // Only the deferred job is left; it was not counted as a receive.
    assert_eq!(
        q.counts().await.unwrap(),
        webhook_local::QueueCounts {
            pending: 1,
            dead: 1
        }
    );
    let lines = inspect(&dir.0).unwrap();
    let queued: Vec<_> = lines
        .iter()
        .filter(|v| v["type"] == "job" && v["status"] == "queued")
        .collect();
    assert_eq!(queued.len(), 1, "{lines:?}");
    assert_eq!(queued[0]["receive_count"], 0);
    assert!(
        q.fold_ready(64, ttl, busy_delay, true).await.unwrap().taken == 0,
        "invisible until the busy delay is over"
    );
    // Once the other worker gave up its lease and the delay passed, it is processed here.
    store.abandon_processing(&leased.key).await.unwrap();
    now.fetch_add(busy_delay.as_millis() as i64, Ordering::SeqCst);
    let last = q.fold_ready(64, ttl, busy_delay, true).await.unwrap();
    assert_eq!((last.taken, last.processed), (1, 1));
    assert_eq!(q.counts().await.unwrap().pending, 0);
}

#[tokio::test]
async fn with_records_as_jobs_a_pending_record_is_folded_without_a_job_row() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let (clock, now) = manual_clock(1_800_000_000_000);
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db.clone())
        .with_clock(clock)
        .with_records_as_jobs();
    let t0 = now.load(Ordering::SeqCst);
    let t = claim_times(t0);
    let ttl = Duration::from_secs(7 * 24 * 3600);
    let busy = Duration::from_secs(5);
    let records: Vec<_> = (0..3).map(|i| own_state_event(&format!("r{i}"))).collect();
    for e in &records {
        assert_eq!(q.claim_and_enqueue(e, "a", t).await.unwrap(), Claim::New);
    }
    assert_eq!(q.counts().await.unwrap().pending, 0, "no job rows");
    // Not taken: a record the sweeper parked (or handed to the queue), one a worker leased.
    let parked = own_state_event("parked");
    q.claim_and_enqueue(&parked, "a", t).await.unwrap();
    store
        .extend_lock(&parked.key, t0 + 3_600_000, 0)
        .await
        .unwrap();
    let leased = own_state_event("leased");
    q.claim_and_enqueue(&leased, "a", t).await.unwrap();
    store
        .begin_processing(&leased.key, t0, t0 + 60_000)
        .await
        .unwrap();

    let first = q.fold_ready(2, ttl, busy, true).await.unwrap();
    assert_eq!(
        (first.taken, first.processed),
        (2, 2),
        "oldest claims first"
    );
    assert_eq!(first.named[0].0, records[0].key);
    let rest = q.fold_ready(64, ttl, busy, true).await.unwrap();
    assert_eq!((rest.taken, rest.processed), (1, 1), "{rest:?}");
    assert_eq!(rest.named[0].0, records[2].key);
    assert_eq!(q.fold_ready(64, ttl, busy, true).await.unwrap().taken, 0);
    for e in &records {
        let id = &e.state_update.as_ref().unwrap().id;
        assert_eq!(
            store.load_state(id).await.unwrap().unwrap().1,
            1,
            "folded once"
        );
    }
    let unprocessed = strings(
        &dir.0,
        "SELECT key FROM events WHERE processed = 0 ORDER BY key",
    );
    let mut want = vec![leased.key.clone(), parked.key.clone()];
    want.sort();
    assert_eq!(unprocessed, want);

    // Handed to the job queue, pending records are jobs from then on, folded once.
    let late: Vec<_> = (0..2)
        .map(|i| own_state_event(&format!("late{i}")))
        .collect();
    for e in &late {
        q.claim_and_enqueue(e, "a", t).await.unwrap();
    }
    assert_eq!(q.set_aside_records(10).await.unwrap(), 2);
    assert_eq!(q.counts().await.unwrap().pending, 2);
    let jobs = q.fold_ready(64, ttl, busy, false).await.unwrap();
    assert_eq!((jobs.taken, jobs.processed), (2, 2), "{jobs:?}");
    assert_eq!(q.counts().await.unwrap().pending, 0);

    // A record whose event names another key fails the call (folding it would leave it
    // pending, and the worker would take it again forever); set aside, it stops coming back.
    let odd = own_state_event("odd");
    q.claim_and_enqueue(&odd, "a", t).await.unwrap();
    sql(
        &dir.0,
        &format!(
            "UPDATE events SET key = 'sms#renamed' WHERE key = '{}'",
            odd.key
        ),
    );
    let err = q.fold_ready(64, ttl, busy, false).await.unwrap_err();
    assert!(err.to_string().contains("corrupt row"), "{err}");
    assert_eq!(q.set_aside_records(10).await.unwrap(), 1);
    assert_eq!(q.fold_ready(64, ttl, busy, false).await.unwrap().taken, 1);
    assert_eq!(q.fold_ready(64, ttl, busy, false).await.unwrap().taken, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_to_fold_is_retried_alone_and_the_others_are_processed() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let store = Arc::new(SqliteStore::new(db.clone()));
    // As `serve` has it without slow work: records are their own jobs.
    let queue = Arc::new(
        SqliteQueue::new(db.clone())
            .with_settings(QueueSettings {
                backoff: Duration::from_secs(60),
                ..Default::default()
            })
            .with_records_as_jobs(),
    );
    let now = webhook_pipeline::system_clock()();
    let t = claim_times(now);
    let events: Vec<_> = (0..3).map(|i| own_state_event(&format!("f{i}"))).collect();
    for e in &events {
        queue.claim_and_enqueue(e, "a", t).await.unwrap();
    }
    assert_eq!(queue.counts().await.unwrap().pending, 0, "no job rows");
    // The middle event's state record is corrupt: its fold fails, and with it the whole
    // transaction of the batch; the records are then handed to the job queue.
    let bad = events[1].state_update.as_ref().unwrap().id.clone();
    sql(
        &dir.0,
        &format!("INSERT INTO states VALUES ('{bad}', 'corrupt', 1, 9999999999)"),
    );
    let worker = Arc::new(Worker::new(
        store.clone(),
        queue.clone(),
        WorkerSettings::default(),
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(
        WorkerLoop::new(worker, queue.clone())
            .with_settings(LoopSettings {
                idle_poll: Duration::from_millis(20),
                ..Default::default()
            })
            .folding_in_database()
            .run(stop_rx),
    );
    // (`inspect` would refuse the corrupt state record: read the tables directly.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let processed = strings(&dir.0, "SELECT key FROM events WHERE processed = 1");
        let nacked = strings(&dir.0, "SELECT key FROM dead_jobs");
        if processed.len() == 2 && nacked == [events[1].key.clone()] {
            assert!(!processed.contains(&events[1].key), "{processed:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the good jobs were not processed: {processed:?}, nacked {nacked:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        queue.counts().await.unwrap(),
        webhook_local::QueueCounts {
            pending: 0,
            dead: 1
        },
        "an unreadable state record is a permanent failure: dead-lettered at once, not retried"
    );
}

#[tokio::test]
async fn purge_deletes_every_expired_row_a_chunk_at_a_time() {
    let dir = TempDir::new();
    let store = SqliteStore::new(Database::open_dir(&dir.0).unwrap());
    // Oldest first: 1,500 rows that stay live (states updated since, more than a chunk), then
    // 2,500 expired (more than two chunks), a live one and an expired one, in both tables.
    let rows = |prefix: &str, from: i64, to: i64, expires: i64| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to})
             INSERT INTO events (key, kind, received_at, event, reply, attempt, lock_until_ms,
                                 expires_at_s)
             SELECT 'sms#{prefix}' || i, 'inbound_message', 0, '{{}}', '{{}}', 'a', 0, {expires}
             FROM n;
             WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to})
             INSERT INTO states (id, state, version, expires_at_s)
             SELECT 'msg#{prefix}' || i, '{{}}', 1, {expires} FROM n;"
        )
    };
    sql(&dir.0, &rows("live", 1, 1500, 300));
    sql(&dir.0, &rows("old", 1, 2500, 100));
    sql(&dir.0, &rows("live", 1501, 1501, 300));
    sql(&dir.0, &rows("later", 1, 1, 100));
    assert_eq!(store.purge_expired(200_000).await.unwrap(), 5002);
    let live = |table| strings(&dir.0, &format!("SELECT COUNT(*) || '' FROM {table}"));
    assert_eq!(live("events"), ["1501"]);
    assert_eq!(live("states"), ["1501"]);
    assert!(
        strings(
            &dir.0,
            "SELECT key FROM events WHERE key NOT LIKE 'sms#live%'"
        )
        .is_empty(),
        "only live rows are left"
    );
    // The next purge goes on from there and finds nothing more.
    assert_eq!(store.purge_expired(200_000).await.unwrap(), 0);
    // Rows that expire later are found by a later purge, which starts over.
    assert_eq!(store.purge_expired(400_000).await.unwrap(), 3002);
}

/// The body of the one dead letter, read with a plain connection.
fn db_body(dir: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(dir.join(webhook_local::DB_FILE)).unwrap();
    c.query_row("SELECT body FROM dead_jobs", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn recover_requeues_orphans_and_drops_dead_leases() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let store = SqliteStore::new(db.clone());
    let q = SqliteQueue::new(db.clone());
    let now = webhook_pipeline::system_clock()();
    let t = claim_times(now);
    // Claimed, then the process died before the enqueue.
    let orphan = sample_event("orphan");
    store.claim(&orphan, "a", t).await.unwrap();
    // Claimed, enqueued, received, lease taken, then the process died.
    let leased = sample_event("leased");
    store.claim(&leased, "a", t).await.unwrap();
    q.enqueue(&Job {
        event: leased.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        q.receive(10, Duration::from_secs(300)).await.unwrap().len(),
        1
    );
    store
        .begin_processing(&leased.key, now, now + 60_000)
        .await
        .unwrap();

    let r = db.recover(now + 1, false).await.unwrap();
    assert_eq!(
        (r.jobs_made_visible, r.leases_dropped, r.orphans_enqueued),
        (1, 1, 1)
    );
    let mut keys: Vec<String> = q
        .receive(10, Duration::from_secs(300))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, j)| j.event.key)
        .collect();
    keys.sort();
    let mut want = vec![orphan.key.clone(), leased.key.clone()];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(
        store
            .begin_processing(&leased.key, now + 2, now + 60_000)
            .await
            .unwrap(),
        webhook_pipeline::Processing::Ready
    );
    assert!(db.recover(now + 3, false).await.unwrap().orphans_enqueued == 0);
    // Where records are their own jobs (serve without slow work), a pending record is no
    // orphan; a run with slow work gives it a job.
    let pending = sample_event("pending");
    store.claim(&pending, "a", t).await.unwrap();
    assert_eq!(db.recover(now + 4, true).await.unwrap().orphans_enqueued, 0);
    assert_eq!(
        db.recover(now + 5, false).await.unwrap().orphans_enqueued,
        1
    );
}

#[test]
fn a_data_directory_has_one_owner() {
    let dir = TempDir::new();
    let lock = DirLock::acquire(&dir.0).unwrap();
    assert!(matches!(DirLock::acquire(&dir.0), Err(OpenError::InUse(_))));
    drop(lock);
    DirLock::acquire(&dir.0).expect("released on drop");
}

#[test]
fn inspect_of_a_missing_directory_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("webhook-local-missing-{}", uuid::Uuid::new_v4()));
    let err = inspect(&dir).unwrap_err().to_string();
    assert!(err.contains("no local data"), "{err}");
    assert!(!dir.exists(), "inspect creates nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_loop_processes_what_the_pipeline_accepts_and_stops_cleanly() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let store = Arc::new(SqliteStore::new(db.clone()));
    let queue = Arc::new(SqliteQueue::new(db));
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone());
    let worker = Arc::new(Worker::new(
        store.clone(),
        queue.clone(),
        WorkerSettings::default(),
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(
        WorkerLoop::new(worker, queue.clone())
            .with_store(store.clone())
            .with_settings(LoopSettings {
                idle_poll: Duration::from_millis(50),
                ..Default::default()
            })
            .run(stop_rx),
    );
    let url = "http://127.0.0.1:3000/sms";
    for i in 0..10 {
        let sid = format!("SM{i:032}");
        let req = samples::signed_request(TEST_AUTH_TOKEN, url, &samples::inbound_sms(&sid, "hi"));
        assert_eq!(pipeline.handle(Endpoint::Sms, &req).await.status, 200);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = inspect(&dir.0).unwrap();
        let processed = lines
            .iter()
            .filter(|v| v["type"] == "event" && v["processed"] == true)
            .count();
        let queued = lines.iter().filter(|v| v["type"] == "job").count();
        if processed == 10 && queued == 0 {
            assert_eq!(
                lines.iter().filter(|v| v["type"] == "state").count(),
                10,
                "one message state each"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker did not drain: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("worker stops")
        .unwrap();
}

async fn start_server(
    dir: &TempDir,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_server_with(dir, |_| {}).await
}

/// A server on a free port with `adjust` applied to its configuration.
async fn start_server_with(
    dir: &TempDir,
    adjust: impl FnOnce(&mut ServeConfig),
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.0.clone(),
        AuthToken::new(TEST_AUTH_TOKEN).unwrap(),
    );
    adjust(&mut config);
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = rx.await;
            })
            .await
            .unwrap()
    });
    (addr, tx, task)
}

async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_from_the_pipeline_and_guards_its_inputs() {
    let dir = TempDir::new();
    let (addr, stop, task) = start_server(&dir).await;
    let client = reqwest::Client::new();

    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    // Signed for the URL the client actually calls (Host header = addr), with a raw query.
    let url = format!("http://{addr}/voice?tenant=a%20b&x=1");
    let params = samples::inbound_call(samples::CALL_SID);
    let form = FormParams::from_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    let sig = sign(&AuthToken::new(TEST_AUTH_TOKEN).unwrap(), &url, &form);
    let post = || {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &sig)
            .body(form.encode())
    };
    let first = post().send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        first.headers()["content-type"].to_str().unwrap(),
        "text/xml"
    );
    let body = first.text().await.unwrap();
    assert!(body.contains("<Record"), "{body}");
    assert!(
        body.contains(&format!("http://{addr}/status")),
        "the status callback is derived from the signed URL: {body}"
    );
    let second = post().send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.text().await.unwrap(),
        body,
        "duplicate replays the reply"
    );

    let bad = client
        .post(format!("http://{addr}/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .body(form.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);

    let huge = client
        .post(format!("http://{addr}/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", &sig)
        .body(vec![b'a'; webhook_local::BODY_LIMIT + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);

    let no_host = raw_http(
        addr,
        "POST /sms HTTP/1.0\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(no_host.starts_with("HTTP/1.0 400"), "{no_host}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("graceful shutdown")
        .unwrap();

    let events: Vec<_> = inspect(&dir.0)
        .unwrap()
        .into_iter()
        .filter(|v| v["type"] == "event")
        .collect();
    assert_eq!(events.len(), 1, "only the valid call is stored: {events:?}");
    assert_eq!(events[0]["url"], url.as_str());
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = TempDir::new();
    let (_addr, stop, task) = start_server(&dir).await;
    let config = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.0.clone(),
        AuthToken::new(TEST_AUTH_TOKEN).unwrap(),
    );
    let err = Server::bind(config).await.err().expect("refused");
    assert!(err.to_string().contains("in use"), "{err}");
    stop.send(()).unwrap();
    task.await.unwrap();
}

struct AlwaysFails;

#[async_trait::async_trait]
impl webhook_pipeline::SlowWork for AlwaysFails {
    fn name(&self) -> &'static str {
        "always-fails"
    }

    async fn run(
        &self,
        _event: &webhook_pipeline::EventRecord,
    ) -> Result<(), webhook_pipeline::worker::WorkError> {
        Err(webhook_pipeline::worker::WorkError("CRM is down".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_loop_dead_letters_a_job_that_keeps_failing() {
    let dir = TempDir::new();
    let db = Database::open_dir(&dir.0).unwrap();
    let store = Arc::new(SqliteStore::new(db.clone()));
    let queue = Arc::new(SqliteQueue::new(db).with_settings(QueueSettings {
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        ..Default::default()
    }));
    let worker = Arc::new(
        Worker::new(store.clone(), queue.clone(), WorkerSettings::default())
            .with_work(Arc::new(AlwaysFails)),
    );
    let e = sample_event("failing");
    let now = webhook_pipeline::system_clock()();
    let t = claim_times(now);
    store.claim(&e, "a", t).await.unwrap();
    queue.enqueue(&Job { event: e.clone() }).await.unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(
        WorkerLoop::new(worker, queue.clone())
            .with_settings(LoopSettings {
                idle_poll: Duration::from_millis(10),
                ..Default::default()
            })
            .run(stop_rx),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue.counts().await.unwrap().dead == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    let lines = inspect(&dir.0).unwrap();
    let dead: Vec<_> = lines.iter().filter(|v| v["type"] == "job").collect();
    assert_eq!(dead.len(), 1, "{lines:?}");
    assert_eq!(dead[0]["status"], "dead");
    assert_eq!(dead[0]["receive_count"], 5);
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("CRM is down"),
        "{dead:?}"
    );
    let event = lines.iter().find(|v| v["type"] == "event").unwrap();
    assert_eq!(event["processed"], false, "left for the sweeper");
    assert_eq!(event["lease_until"], 0, "lease dropped after each failure");
}

/// Trust issue, item 13: one slow client held a connection open forever. A client that
/// trickles its headers is cut off, and one that stalls its body gets 408, both after the
/// configured timeouts, while other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out_on_headers_and_body() {
    let dir = TempDir::new();
    let (addr, stop, task) = start_server_with(&dir, |config| {
        config.header_read_timeout = Duration::from_millis(300);
        config.body_read_timeout = Duration::from_millis(300);
    })
    .await;

    // Headers begun, never finished.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /sms HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile, others are served.
    assert!(
        raw_http(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .await
        .starts_with("HTTP/1.1 200")
    );
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "a trickled header held the connection");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Headers complete, body promised and never sent.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nFrom=",
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut out))
        .await
        .expect("a stalled body held the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body over the limit is refused, not read whole.
    let big = format!(
        "POST /sms HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        webhook_local::BODY_LIMIT + 1,
        "a".repeat(webhook_local::BODY_LIMIT + 1)
    );
    assert!(raw_http(addr, &big).await.starts_with("HTTP/1.1 413"));
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// Trust issue, item 9, behind a tunnel: on the public test token, a loopback server still
/// refuses what reached it through a proxy or tunnel (anyone there can sign with that token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_token_serves_this_machine_only() {
    let dir = TempDir::new();
    let (addr, stop, task) = start_server(&dir).await;
    let post = |extra: &str| {
        format!(
            "POST /sms HTTP/1.1\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    for (extra, refused) in [
        ("Host: abc.ngrok.app\r\n".to_owned(), true),
        (
            format!("Host: {addr}\r\nX-Forwarded-For: 203.0.113.9\r\n"),
            true,
        ),
        (
            format!("Host: {addr}\r\nForwarded: for=203.0.113.9\r\n"),
            true,
        ),
        // From this machine: on to the signature check (403 there, for an unsigned request).
        (format!("Host: {addr}\r\n"), false),
        (format!("Host: localhost:{}\r\n", addr.port()), false),
    ] {
        let answer = raw_http(addr, &post(&extra)).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{extra}: {answer}");
        assert_eq!(
            answer.contains("serves this machine only"),
            refused,
            "{extra}: {answer}"
        );
    }
    stop.send(()).unwrap();
    task.await.unwrap();
}
