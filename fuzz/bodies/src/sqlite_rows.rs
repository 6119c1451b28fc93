//! The SQLite row decoders of shared/webhook-local, through the public store and queue API on
//! a real database: rows with any text in their JSON columns, and any SQLite value (integer
//! out of range, real, text, blob, NULL) in the columns read back (`sweeps`, `processed`,
//! `lease_until_ms`, `receive_count`, `version`...), are planted with a second connection,
//! then read by one operation: `SqliteStore::stale_pending` (the sweeper),
//! `SqliteQueue::receive` (alone, or after `Database::recover`), `SqliteQueue::fold_ready`
//! (records that are their own job, or outbox jobs after `set_aside_records`),
//! `SqliteStore::load_state`, `SqliteStore::claim` (the duplicate's stored reply), or `inspect`.
//!
//! Properties: no panic (an unreadable row is an `Err` or skipped); whatever comes back decoded
//! is what the planted JSON decodes to.
//!
//! Input: `\0`-separated fields: control bytes, the key, the event JSON, the reply JSON, the job
//! body, the state JSON. Control byte 0 picks the operation (its low 3 bits, see [`op`]; bit 7
//! is [`op::RECORDS_ARE_JOBS`]; bits 3 to 6 are ignored, so that a seed can write
//! `STALE_PENDING` as 0x08, a 0 byte being the separator); then one byte per planted column
//! value chooses its SQLite type (see [`plant`]; missing bytes: the type the store writes). An
//! empty control field is `STALE_PENDING` on rows as the store writes them.
//!
//! One operation per input, not all of them: each is a hand-off to the database thread and a
//! transaction, and the planting and clean-up are shared, so running them all made an input cost
//! 8 of those (about 500 executions a second). The rows are planted afresh for every input, so
//! nothing one operation did could reach another's input anyway, except where one operation
//! prepares the rows the next reads (`recover` then `receive`, `set_aside_records` then
//! `fold_ready`): those pairs are operations of their own.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, params};
use twilio_webhook::FormParams;
use twilio_webhook::payload::Endpoint;
use webhook_local::{Database, SqliteQueue, SqliteStore};
use webhook_pipeline::state::StateRecord;
use webhook_pipeline::store::ClaimTimes;
use webhook_pipeline::{Claim, ErrorKind, EventLog, EventRecord, Job, Reply, StateStore};

use crate::Fields;

/// Fixed "now" (unix ms) for every clock: inputs must not depend on when they run.
const NOW_MS: i64 = 1_795_788_000_000;
/// Far enough in the future that nothing planted expires.
const EXPIRES_S: i64 = 4_000_000_000;

/// The operation: control byte 0's low 3 bits.
pub mod op {
    /// `SqliteStore::stale_pending`, the sweeper's read.
    pub const STALE_PENDING: u8 = 0;
    /// `SqliteQueue::receive`.
    pub const RECEIVE: u8 = 1;
    /// `Database::recover` (with [`RECORDS_ARE_JOBS`] as its `records_are_jobs`), then
    /// `SqliteQueue::receive` of what it enqueued.
    pub const RECOVER: u8 = 2;
    /// `SqliteQueue::fold_ready` on a queue whose records are their own jobs.
    pub const FOLD_READY: u8 = 3;
    /// `SqliteQueue::set_aside_records`, then `fold_ready` on the plain queue (the jobs made).
    pub const SET_ASIDE: u8 = 4;
    /// `SqliteStore::load_state`.
    pub const LOAD_STATE: u8 = 5;
    /// `SqliteStore::claim` of a new event under the planted key (a duplicate's reply).
    pub const CLAIM: u8 = 6;
    /// `webhook_local::inspect`. It opens a database of its own (a connection, the schema, two
    /// threads): several times the cost of the others.
    pub const INSPECT: u8 = 7;
    /// Bit 7 of control byte 0, for [`RECOVER`].
    pub const RECORDS_ARE_JOBS: u8 = 0x80;
}

struct Env {
    dir: PathBuf,
    /// For planting rows behind the store's back.
    conn: Connection,
    store: SqliteStore,
    queue: SqliteQueue,
    records_queue: SqliteQueue,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn new() -> Self {
        // In memory when there is a tmpfs (`FUZZ_SQLITE_DIR` to choose): every input commits.
        let base = std::env::var_os("FUZZ_SQLITE_DIR").map_or_else(
            || {
                let shm = std::path::Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_owned()
                } else {
                    std::env::temp_dir()
                }
            },
            PathBuf::from,
        );
        let dir = base.join(format!("fuzz-sqlite-rows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = Database::open_dir(&dir).expect("a fresh database");
        let conn = Connection::open(db.path()).expect("a second connection");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        // The planted rows need not survive a crash: no fsync of the WAL at each input's commit
        // (per connection: the store's own keeps `synchronous = NORMAL`).
        conn.execute_batch("PRAGMA synchronous = OFF")
            .expect("synchronous off");
        let clock: webhook_pipeline::Clock = Arc::new(|| NOW_MS);
        Self {
            dir,
            conn,
            store: SqliteStore::new(db.clone()),
            queue: SqliteQueue::new(db.clone()).with_clock(clock.clone()),
            records_queue: SqliteQueue::new(db)
                .with_clock(clock)
                .with_records_as_jobs(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a tokio runtime"),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

thread_local! {
    static ENV: RefCell<Option<Env>> = const { RefCell::new(None) };
}

/// A value for an integer column: the normal one, or something else SQLite will store.
fn int_value(kind: u8, normal: i64, text: &str) -> Sql {
    match kind % 8 {
        0..=2 => Sql::Integer(normal),
        3 => Sql::Integer(-1),
        4 => Sql::Integer(i64::from(u32::MAX) + 1),
        5 => Sql::Real(1.5),
        6 => Sql::Text(text.to_owned()),
        _ => Sql::Blob(text.as_bytes().to_vec()),
    }
}

/// A value for a JSON text column.
fn text_value(kind: u8, text: &str) -> Sql {
    match kind % 6 {
        0..=3 => Sql::Text(text.to_owned()),
        4 => Sql::Blob(text.as_bytes().to_vec()),
        _ => Sql::Integer(7),
    }
}

/// The text a JSON column holds after [`text_value`] (an integer in a TEXT column becomes
/// its digits), decoded.
fn stored<T: serde::de::DeserializeOwned>(kind: u8, text: &str) -> Option<T> {
    match kind % 6 {
        5 => decoded("7"),
        _ => decoded(text),
    }
}

/// Plant the rows; a row SQLite refuses (NOT NULL, UNIQUE...) is simply not there.
fn plant(
    conn: &Connection,
    ctl: &[u8],
    key: &str,
    event: &str,
    reply: &str,
    body: &str,
    state: &str,
) {
    let k = |i: usize| ctl.get(i).copied().unwrap_or(0);
    // One transaction for the lot (one commit per input), statements prepared once. `WHERE
    // true` turns off SQLite's truncate optimization, which rewrites a table's pages even when
    // it is empty (`consent` and `dead_jobs` mostly are): 8 WAL frames a commit instead of 11.
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql).and_then(|mut st| st.execute(p))
    };
    for sql in [
        "BEGIN IMMEDIATE",
        "DELETE FROM events WHERE true",
        "DELETE FROM states WHERE true",
        // Written by a fold of an event with a consent update: left over, it would change
        // what the next input's fold does.
        "DELETE FROM consent WHERE true",
        "DELETE FROM jobs WHERE true",
        "DELETE FROM dead_jobs WHERE true",
    ] {
        run(sql, &[]).expect("clear the tables");
    }
    let _ = run(
        "INSERT INTO events (key, kind, received_at, event, reply, attempt, lock_until_ms,
                             expires_at_s, processed, processed_at_ms, lease_until_ms, sweeps)
         VALUES (?1, 'inbound_message', ?2, ?3, ?4, 'attempt', ?5, ?6, ?7, NULL, ?8, ?9)",
        params![
            key,
            int_value(k(1), 0, key),
            text_value(k(2), event),
            text_value(k(3), reply),
            int_value(k(4), 0, key),
            int_value(k(5), EXPIRES_S, key),
            int_value(k(6), i64::from(k(6) >> 7), key),
            int_value(k(7), 0, key),
            int_value(k(8), 0, key),
        ],
    );
    // A job with its own body, and an outbox job (empty body: the event row's).
    let _ = run(
        "INSERT INTO jobs (key, body, visible_at_ms, receive_count) VALUES (?1, ?2, ?3, ?4)",
        params![
            key,
            text_value(k(9), body),
            int_value(k(10), 0, key),
            int_value(k(11), 0, key)
        ],
    );
    let _ = run(
        "INSERT INTO jobs (key, body, visible_at_ms, receive_count) VALUES (?1, '', 0, ?2)",
        params![key, int_value(k(12), 0, key)],
    );
    let _ = run(
        "INSERT INTO states (id, state, version, expires_at_s) VALUES (?1, ?2, ?3, ?4)",
        params![
            key,
            text_value(k(13), state),
            int_value(k(14), 1, key),
            int_value(k(15), EXPIRES_S, key)
        ],
    );
    run("COMMIT", &[]).expect("commit the planted rows");
}

fn decoded<T: serde::de::DeserializeOwned>(json: &str) -> Option<T> {
    serde_json::from_str(json).ok()
}

pub fn run(data: &[u8]) {
    let mut f = Fields::new(data, 0);
    let ctl = f.next_bytes();
    let key = f.next_str();
    let event = f.next_str();
    let reply = f.next_str();
    let body = f.next_str();
    let state = f.rest();
    let state = String::from_utf8_lossy(state);
    let ctl0 = ctl.first().copied().unwrap_or(0);

    ENV.with(|env| {
        let mut env = env.borrow_mut();
        let env = env.get_or_insert_with(Env::new);
        plant(&env.conn, ctl, &key, &event, &reply, &body, &state);
        // What the planted JSON decodes to, decoded only when something came back to compare.
        let k = |i: usize| ctl.get(i).copied().unwrap_or(0);
        let planted_event = || stored::<EventRecord>(k(2), &event);
        let planted_reply = || stored::<Reply>(k(3), &reply);
        let planted_job = || stored::<Job>(k(9), &body);
        let planted_state = || stored::<StateRecord>(k(13), &state);
        let rt = &env.rt;

        let receive = |recovered: bool| {
            let Ok(jobs) = rt.block_on(env.queue.receive(10, Duration::from_secs(30))) else {
                return;
            };
            for (_, job) in jobs {
                let from_event = planted_event().as_ref() == Some(&job.event);
                let from_job = planted_job().as_ref() == Some(&job);
                // `recover` wraps the event row's text as a job body.
                let wrapped: Option<Job> = decoded(&format!("{{\"event\":{event}}}"));
                let from_recover = recovered && wrapped.as_ref() == Some(&job);
                assert!(from_event || from_job || from_recover, "received {job:?}");
            }
        };
        let fold_ready = |queue: &SqliteQueue| {
            let folded = rt.block_on(queue.fold_ready(
                10,
                Duration::from_secs(3600),
                Duration::from_secs(1),
                true,
            ));
            if let Ok(report) = folded {
                assert!(report.processed + report.dead.len() + report.deferred <= report.taken);
            }
        };

        match ctl0 & 7 {
            op::STALE_PENDING => {
                let Ok(stale) = rt.block_on(env.store.stale_pending(i64::MAX, 10)) else {
                    return;
                };
                for st in stale {
                    assert_eq!(st.key, key, "sweeper key");
                    match st.event {
                        Ok(rec) => {
                            assert_eq!(Some(&*rec), planted_event().as_ref(), "sweeper record")
                        }
                        Err(e) if e.kind() == ErrorKind::Permanent => {
                            assert!(
                                planted_event().is_none(),
                                "a readable record listed as corrupt"
                            )
                        }
                        Err(_) => {}
                    }
                }
            }
            op::RECEIVE => receive(false),
            op::RECOVER => {
                let records_are_jobs = ctl0 & op::RECORDS_ARE_JOBS != 0;
                let _ = rt.block_on(env.store.database().recover(NOW_MS, records_are_jobs));
                receive(true);
            }
            op::FOLD_READY => fold_ready(&env.records_queue),
            op::SET_ASIDE => {
                let _ = rt.block_on(env.records_queue.set_aside_records(10));
                fold_ready(&env.queue);
            }
            op::LOAD_STATE => {
                if let Ok(Some((s, _))) = rt.block_on(env.store.load_state(&key)) {
                    assert_eq!(Some(&s), planted_state().as_ref(), "loaded state");
                }
            }
            op::CLAIM => {
                let mine = EventRecord {
                    key: key.clone(),
                    kind: "inbound_message".into(),
                    endpoint: Endpoint::Sms,
                    url: "https://example.com/sms".into(),
                    params: FormParams::default(),
                    idempotency_token: None,
                    received_at: NOW_MS,
                    reply: Reply::text(200, "new"),
                    state_update: None,
                    consent: None,
                };
                let t = ClaimTimes {
                    now_ms: NOW_MS,
                    lock_until_ms: NOW_MS + 30_000,
                    expires_at_s: NOW_MS / 1000 + 3600,
                };
                if let Ok(Claim::Duplicate { reply: r, .. }) =
                    rt.block_on(env.store.claim(&mine, "fuzz", t))
                {
                    assert_eq!(Some(&r), planted_reply().as_ref(), "duplicate's reply");
                }
            }
            op::INSPECT => {
                if let Ok(values) = webhook_local::inspect(&env.dir) {
                    for v in values {
                        assert!(v.get("type").is_some());
                    }
                }
            }
            _ => unreachable!("three bits"),
        }
    });
}
