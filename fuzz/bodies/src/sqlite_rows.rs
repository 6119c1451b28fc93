//! The SQLite row decoders of shared/webhook-local, through the public store and queue API on
//! a real database: rows with any text in their JSON columns, and any SQLite value (integer
//! out of range, real, text, blob, NULL) in the columns read back (`sweeps`, `processed`,
//! `lease_until_ms`, `receive_count`, `version`...), are planted with a second connection,
//! then read by `SqliteStore::stale_pending` (the sweeper), `SqliteQueue::receive`,
//! `SqliteQueue::fold_ready` (records that are their own job, and outbox jobs),
//! `SqliteStore::load_state`, `SqliteStore::claim` (the duplicate's stored reply),
//! `Database::recover` and `inspect`.
//!
//! Properties: no panic (an unreadable row is an `Err` or skipped); whatever comes back decoded
//! is what the planted JSON decodes to.
//!
//! Input: `\0`-separated fields: control bytes (byte 0: which operations run, bit per
//! operation; then one byte per planted column value choosing its SQLite type), the key, the
//! event JSON, the reply JSON, the job body, the state JSON.

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

/// Operation bits of the first control byte.
pub mod op {
    pub const STALE_PENDING: u8 = 1;
    pub const RECEIVE: u8 = 1 << 1;
    pub const FOLD_READY: u8 = 1 << 2;
    pub const LOAD_STATE: u8 = 1 << 3;
    pub const CLAIM: u8 = 1 << 4;
    pub const RECOVER: u8 = 1 << 5;
    /// Runs only with [`SET_ASIDE`] too (it opens a database of its own: slow).
    pub const INSPECT: u8 = 1 << 6;
    pub const SET_ASIDE: u8 = 1 << 7;
    pub const ALL: u8 = u8::MAX;
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
    // One transaction for the lot (one commit per input), statements prepared once.
    let run = |sql: &str, p: &[&dyn rusqlite::ToSql]| {
        conn.prepare_cached(sql).and_then(|mut st| st.execute(p))
    };
    for sql in [
        "BEGIN IMMEDIATE",
        "DELETE FROM events",
        "DELETE FROM states",
        "DELETE FROM jobs",
        "DELETE FROM dead_jobs",
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
    let ops = ctl.first().copied().unwrap_or(op::ALL);

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

        if ops & op::STALE_PENDING != 0
            && let Ok(stale) = rt.block_on(env.store.stale_pending(i64::MAX, 10))
        {
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
        if ops & op::RECOVER != 0 {
            let _ = rt.block_on(
                env.store
                    .database()
                    .recover(NOW_MS, ops & op::SET_ASIDE != 0),
            );
        }
        if ops & op::RECEIVE != 0
            && let Ok(jobs) = rt.block_on(env.queue.receive(10, Duration::from_secs(30)))
        {
            for (_, job) in jobs {
                let from_event = planted_event().as_ref() == Some(&job.event);
                let from_job = planted_job().as_ref() == Some(&job);
                // `recover` wraps the event row's text as a job body.
                let wrapped: Option<Job> = decoded(&format!("{{\"event\":{event}}}"));
                let from_recover = ops & op::RECOVER != 0 && wrapped.as_ref() == Some(&job);
                assert!(from_event || from_job || from_recover, "received {job:?}");
            }
        }
        if ops & op::SET_ASIDE != 0 {
            let _ = rt.block_on(env.records_queue.set_aside_records(10));
        }
        if ops & op::FOLD_READY != 0 {
            let queue = if ops & op::SET_ASIDE != 0 {
                &env.queue
            } else {
                &env.records_queue
            };
            let folded = rt.block_on(queue.fold_ready(
                10,
                Duration::from_secs(3600),
                Duration::from_secs(1),
                true,
            ));
            if let Ok(report) = folded {
                assert!(report.processed + report.dead.len() + report.deferred <= report.taken);
            }
        }
        if ops & op::LOAD_STATE != 0
            && let Ok(Some((s, _))) = rt.block_on(env.store.load_state(&key))
        {
            assert_eq!(Some(&s), planted_state().as_ref(), "loaded state");
        }
        if ops & op::CLAIM != 0 {
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
        // `inspect` opens a database of its own: one input in four, not one in two.
        if ops & op::INSPECT != 0
            && ops & op::SET_ASIDE != 0
            && let Ok(values) = webhook_local::inspect(&env.dir)
        {
            for v in values {
                assert!(v.get("type").is_some());
            }
        }
    });
}
