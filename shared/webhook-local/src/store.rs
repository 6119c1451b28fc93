//! [`SqliteStore`]: the store ports on SQLite. Every transition of an event record reads the
//! record's fields and asks [`lifecycle`] inside the database thread's transaction, so it is
//! atomic and follows the one rule (checked by `webhook_testkit::contract`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use webhook_pipeline::consent::{ConsentLedger, ConsentUpdate};
use webhook_pipeline::lifecycle::{self, Params, RecordFields, RecordState};
use webhook_pipeline::replay::{Candidate, ReplayFilter, ReplaySource};
use webhook_pipeline::state::{StateRecord, StateUpdate};
use webhook_pipeline::store::{ClaimTimes, Stale};
use webhook_pipeline::{
    Claim, ConsentStore, EventLog, EventRecord, Leases, PortError, Processing, Reply, StateStore,
};

use crate::db::{Database, DbError, OpenError};

/// Event records, dedup, worker leases and state records in the `events` / `states` tables.
#[derive(Clone)]
pub struct SqliteStore {
    db: Database,
    /// Where [`SqliteStore::purge_expired`] goes on in `events` and `states` (a rowid).
    purge_from: Arc<[AtomicI64; 2]>,
}

impl SqliteStore {
    /// The store in `db`.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            purge_from: Arc::new([AtomicI64::new(0), AtomicI64::new(0)]),
        }
    }

    /// Open (creating if needed) a database file.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Database::open(path).map(Self::new)
    }

    /// Its database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Delete records and states whose TTL passed (DynamoDB's TTL does this in the cloud).
    ///
    /// Each call goes on through each table from where the last one stopped, in rowid order,
    /// 1000 rows per database call and at most [`PURGE_CHUNKS_PER_CALL`] calls per table,
    /// starting over at the end: no call holds the writer for long, and a row that stays live
    /// (a state updated again and again) is passed over, not read again. (A plain `DELETE ...
    /// WHERE expires_at_s <= now` read both tables whole: 0.4 s at 500k events, every minute,
    /// with every webhook waiting; an index on the expiry cost every new event 2 µs of the
    /// writer.) Claims never see an expired record anyway: they check the expiry.
    pub async fn purge_expired(&self, now_ms: i64) -> Result<usize, PortError> {
        const CHUNK: i64 = 1000;
        let now_s = now_ms.div_euclid(1000);
        let mut purged = 0;
        for (cursor, [last_sql, delete_sql]) in self.purge_from.iter().zip([
            [
                "SELECT MAX(rowid) FROM
                 (SELECT rowid FROM events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)",
                "DELETE FROM events WHERE rowid > ?1 AND rowid <= ?2 AND expires_at_s <= ?3",
            ],
            [
                "SELECT MAX(rowid) FROM
                 (SELECT rowid FROM states WHERE rowid > ?1 ORDER BY rowid LIMIT ?2)",
                "DELETE FROM states WHERE rowid > ?1 AND rowid <= ?2 AND expires_at_s <= ?3",
            ],
        ]) {
            for _ in 0..PURGE_CHUNKS_PER_CALL {
                let from = cursor.load(Ordering::Relaxed);
                let (deleted, last) = self
                    .db
                    .call(move |c| {
                        let last: Option<i64> = c
                            .prepare_cached(last_sql)?
                            .query_row(params![from, CHUNK], |r| r.get(0))?;
                        let Some(last) = last else {
                            return Ok((0, None));
                        };
                        let n = c
                            .prepare_cached(delete_sql)?
                            .execute(params![from, last, now_s])?;
                        Ok((n, Some(last)))
                    })
                    .await?;
                purged += deleted;
                match last {
                    Some(last) => cursor.store(last, Ordering::Relaxed),
                    None => {
                        // The end of the table: the next call starts over.
                        cursor.store(0, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        Ok(purged)
    }
}

/// Database calls per table per [`SqliteStore::purge_expired`] (1000 rows each): the sweeper
/// purges every minute, so a table of 600k rows is gone through every few minutes, for about
/// 1 ms of the writer per call.
pub const PURGE_CHUNKS_PER_CALL: usize = 100;

/// An event record ready to be claimed on the database thread (serialized beforehand: the
/// database thread is what every call waits for).
pub(crate) struct ClaimRow {
    key: String,
    kind: String,
    received_at: i64,
    event_json: String,
    reply_json: String,
    attempt: String,
    t: ClaimTimes,
}

impl ClaimRow {
    pub(crate) fn new(
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Self, PortError> {
        Ok(Self {
            key: event.key.clone(),
            kind: event.kind.clone(),
            received_at: event.received_at,
            event_json: serde_json::to_string(event).map_err(PortError::permanent)?,
            reply_json: serde_json::to_string(&event.reply).map_err(PortError::permanent)?,
            attempt: attempt.to_owned(),
            t,
        })
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Insert the record unless a live one has its key ([`lifecycle::CLAIM`]);
    /// `Some((reply, processed))` of the live one if so.
    pub(crate) fn claim(
        &self,
        c: &rusqlite::Connection,
    ) -> Result<Option<(String, bool)>, DbError> {
        let t = self.t;
        // One statement for a new event (most claims); the record in the way, if any, is
        // read and judged by the rule, and replaced if the rule allows.
        let insert = || -> Result<usize, DbError> {
            Ok(c.prepare_cached(
                "INSERT INTO events
                 (key, kind, received_at, event, reply, attempt, lock_until_ms, expires_at_s,
                  processed, processed_at_ms, lease_until_ms, sweeps)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, NULL, 0, 0)
                 ON CONFLICT (key) DO NOTHING",
            )?
            .execute(params![
                self.key,
                self.kind,
                self.received_at,
                self.event_json,
                self.reply_json,
                self.attempt,
                t.lock_until_ms,
                t.expires_at_s,
            ])?)
        };
        if insert()? == 1 {
            return Ok(None);
        }
        let Some(found) = read_record(c, &self.key)? else {
            return Err(DbError::Vanished);
        };
        let p = Params {
            now_ms: t.now_ms,
            attempt: &self.attempt,
            ..Params::default()
        };
        if !lifecycle::CLAIM.holds(Some(&found.fields()), &p) {
            let reply: String = c
                .prepare_cached("SELECT reply FROM events WHERE rowid = ?1")?
                .query_row([found.rowid], |r| r.get(0))?;
            return Ok(Some((reply, found.rec.processed)));
        }
        // The rule lets this copy take the record's place (rare: a re-claim).
        c.prepare_cached("DELETE FROM events WHERE rowid = ?1")?
            .execute([found.rowid])?;
        insert()?;
        Ok(None)
    }
}

/// The lifecycle fields of an event record, and its rowid (for the write that follows: no
/// second walk of the key index).
pub(crate) struct StoredRecord {
    rowid: i64,
    rec: RecordState,
}

impl StoredRecord {
    fn fields(&self) -> RecordFields<'_> {
        self.rec.fields()
    }
}

/// The record under `key`, inside the caller's transaction.
fn read_record(c: &rusqlite::Connection, key: &str) -> Result<Option<StoredRecord>, DbError> {
    Ok(c.prepare_cached(
        "SELECT rowid, processed, lock_until_ms, lease_until_ms, expires_at_s, attempt, sweeps
         FROM events WHERE key = ?1",
    )?
    .query_row([key], |r| {
        Ok(StoredRecord {
            rowid: r.get(0)?,
            rec: RecordState {
                processed: r.get(1)?,
                lock_until_ms: r.get(2)?,
                lease_until_ms: r.get(3)?,
                expires_at_s: r.get(4)?,
                attempt: r.get(5)?,
                sweeps: r.get(6)?,
            },
        })
    })
    .optional()?)
}

/// The record under `key` if `rule` allows the transition now, inside the caller's
/// transaction.
fn allowed(
    c: &rusqlite::Connection,
    key: &str,
    rule: lifecycle::Cond,
    p: &Params<'_>,
) -> Result<Option<StoredRecord>, DbError> {
    Ok(read_record(c, key)?.filter(|r| rule.holds(Some(&r.fields()), p)))
}

fn at(now_ms: i64) -> Params<'static> {
    Params {
        now_ms,
        ..Params::default()
    }
}

/// The [`Claim`] for what [`ClaimRow::claim`] found, parsed off the database thread.
pub(crate) fn claim_outcome(stored: Option<(String, bool)>) -> Result<Claim, PortError> {
    match stored {
        None => Ok(Claim::New),
        Some((reply, processed)) => Ok(Claim::Duplicate {
            reply: serde_json::from_str::<Reply>(&reply)
                .map_err(|e| PortError::permanent(DbError::Json(e)))?,
            processed,
        }),
    }
}

/// What a worker asking for the lease gets now ([`lifecycle::lease_outcome`]), and the
/// record's rowid.
fn record_status(
    c: &rusqlite::Connection,
    key: &str,
    now_ms: i64,
) -> Result<(Processing, i64), DbError> {
    let found = read_record(c, key)?;
    let outcome =
        lifecycle::lease_outcome(found.as_ref().map(|r| r.fields()).as_ref(), &at(now_ms));
    Ok((outcome, found.map_or(0, |r| r.rowid)))
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn claim(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, PortError> {
        let row = ClaimRow::new(event, attempt, t)?;
        // Each call is atomic on the database thread (see `Database::call`): the check and the
        // insert cannot interleave with another claim.
        let stored = self.db.call_for_request(move |c| row.claim(c)).await?;
        claim_outcome(stored)
    }

    async fn release(&self, key: &str, attempt: &str) -> Result<(), PortError> {
        let (key, attempt) = (key.to_owned(), attempt.to_owned());
        Ok(self
            .db
            .call_for_request(move |c| {
                let p = Params {
                    attempt: &attempt,
                    ..Params::default()
                };
                if let Some(r) = allowed(c, &key, lifecycle::RELEASE, &p)? {
                    c.prepare_cached("UPDATE events SET lock_until_ms = 0 WHERE rowid = ?1")?
                        .execute([r.rowid])?;
                }
                Ok(())
            })
            .await?)
    }

    async fn stale_pending(
        &self,
        lock_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stale>, PortError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT key, event, sweeps FROM events
                     WHERE processed = 0 AND lock_until_ms < ?1
                     ORDER BY lock_until_ms LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![lock_before_ms, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u32>(2)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        // Decoded here, one by one: a corrupt record is listed as such, not an error for all.
        Ok(rows
            .into_iter()
            .map(|(key, event, sweeps)| Stale {
                key,
                sweeps,
                event: match serde_json::from_str(&event) {
                    Ok(event) => Ok(Box::new(event)),
                    Err(e) => Err(PortError::unreadable("event", &e)),
                },
            })
            .collect())
    }

    async fn extend_lock(
        &self,
        key: &str,
        lock_until_ms: i64,
        sweeps_read: u32,
    ) -> Result<(), PortError> {
        let key = key.to_owned();
        Ok(self
            .db
            .call(move |c| {
                let p = Params {
                    sweeps_read,
                    ..Params::default()
                };
                if let Some(r) = allowed(c, &key, lifecycle::EXTEND_LOCK, &p)? {
                    c.prepare_cached(
                        "UPDATE events SET lock_until_ms = ?2, sweeps = sweeps + 1 WHERE rowid = ?1",
                    )?
                    .execute(params![r.rowid, lock_until_ms])?;
                }
                Ok(())
            })
            .await?)
    }
}

#[async_trait]
impl Leases for SqliteStore {
    async fn begin_processing(
        &self,
        key: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Processing, PortError> {
        let key = key.to_owned();
        Ok(self
            .db
            .call(move |c| {
                let (outcome, rowid) = record_status(c, &key, now_ms)?;
                if outcome == Processing::Ready {
                    c.prepare_cached("UPDATE events SET lease_until_ms = ?2 WHERE rowid = ?1")?
                        .execute(params![rowid, lease_until_ms])?;
                }
                Ok(outcome)
            })
            .await?)
    }

    async fn finish_processing(&self, key: &str, now_ms: i64) -> Result<(), PortError> {
        let key = key.to_owned();
        Ok(self
            .db
            .call(move |c| {
                if let Some(r) = allowed(c, &key, lifecycle::FINISH, &at(now_ms))? {
                    c.prepare_cached(
                        "UPDATE events SET processed = 1, processed_at_ms = ?2 WHERE rowid = ?1",
                    )?
                    .execute(params![r.rowid, now_ms])?;
                }
                Ok(())
            })
            .await?)
    }

    async fn abandon_processing(&self, key: &str) -> Result<(), PortError> {
        let key = key.to_owned();
        Ok(self
            .db
            .call(move |c| {
                if let Some(r) = allowed(c, &key, lifecycle::ABANDON, &at(0))? {
                    c.prepare_cached("UPDATE events SET lease_until_ms = 0 WHERE rowid = ?1")?
                        .execute([r.rowid])?;
                }
                Ok(())
            })
            .await?)
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, PortError> {
        let id = id.to_owned();
        Ok(self
            .db
            .call(move |c| {
                let row = c
                    .prepare_cached("SELECT state, version FROM states WHERE id = ?1")?
                    .query_row([&id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .optional()?;
                match row {
                    None => Ok(None),
                    Some((state, version)) => {
                        Ok(Some((serde_json::from_str(&state)?, version as u64)))
                    }
                }
            })
            .await?)
    }

    async fn save_state(
        &self,
        id: &str,
        state: &StateRecord,
        expected: Option<u64>,
        expires_at_s: i64,
    ) -> Result<bool, PortError> {
        let id = id.to_owned();
        let json = serde_json::to_string(state).map_err(PortError::permanent)?;
        let saved = self
            .db
            .call(move |c| -> Result<usize, DbError> {
                Ok(match expected {
                    None => c
                        .prepare_cached(
                            "INSERT INTO states (id, state, version, expires_at_s)
                             VALUES (?1, ?2, 1, ?3) ON CONFLICT (id) DO NOTHING",
                        )?
                        .execute(params![id, json, expires_at_s])?,
                    Some(v) => c
                        .prepare_cached(
                            "UPDATE states SET state = ?2, version = version + 1,
                             expires_at_s = ?3 WHERE id = ?1 AND version = ?4",
                        )?
                        .execute(params![id, json, expires_at_s, v as i64])?,
                })
            })
            .await?;
        Ok(saved == 1)
    }
}

#[async_trait]
impl ConsentStore for SqliteStore {
    async fn load_consent(
        &self,
        subscriber: &str,
    ) -> Result<Option<(ConsentLedger, u64)>, PortError> {
        let subscriber = subscriber.to_owned();
        Ok(self
            .db
            .call(move |c| load_consent_in(c, &subscriber))
            .await?)
    }

    async fn save_consent(
        &self,
        subscriber: &str,
        ledger: &ConsentLedger,
        expected: Option<u64>,
    ) -> Result<bool, PortError> {
        let subscriber = subscriber.to_owned();
        let ledger = ledger.clone();
        Ok(self
            .db
            .call(move |c| save_consent_in(c, &subscriber, &ledger, expected))
            .await?)
    }
}

/// What [`fold_in_tx`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Folded {
    /// Folded by this call and marked processed.
    Processed,
    /// Already processed: acknowledge the job.
    AlreadyDone,
    /// A worker holds a live lease: retry later.
    Busy,
    /// No record (expired): nothing to do.
    Missing,
}

/// The worker's whole job for an event without slow work, inside the caller's transaction
/// ([`crate::SqliteQueue::fold_ready`]): the record is checked as for a lease
/// ([`lifecycle::lease_outcome`]), the state and ledger folded, the record marked processed.
/// No lease is taken: nothing else runs inside the transaction.
pub(crate) fn fold_in_tx(
    c: &rusqlite::Connection,
    key: &str,
    received_at: i64,
    update: Option<&StateUpdate>,
    consent: Option<&ConsentUpdate>,
    now_ms: i64,
    state_expires_at_s: i64,
) -> Result<Folded, DbError> {
    let rowid = match record_status(c, key, now_ms)? {
        (Processing::Missing, _) => return Ok(Folded::Missing),
        (Processing::AlreadyDone, _) => return Ok(Folded::AlreadyDone),
        (Processing::Busy, _) => return Ok(Folded::Busy),
        (Processing::Ready, rowid) => rowid,
    };
    if let Some(u) = update {
        let stored = c
            .prepare_cached("SELECT rowid, state FROM states WHERE id = ?1")?
            .query_row([&u.id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        let mut state: StateRecord = match &stored {
            Some((_, json)) => serde_json::from_str(json)?,
            None => StateRecord::default(),
        };
        if state.apply(u, key, received_at) {
            let json = serde_json::to_string(&state)?;
            match stored {
                Some((state_rowid, _)) => c
                    .prepare_cached(
                        "UPDATE states SET state = ?2, version = version + 1, expires_at_s = ?3
                         WHERE rowid = ?1",
                    )?
                    .execute(params![state_rowid, json, state_expires_at_s])?,
                None => c
                    .prepare_cached(
                        "INSERT INTO states (id, state, version, expires_at_s)
                         VALUES (?1, ?2, 1, ?3)",
                    )?
                    .execute(params![u.id, json, state_expires_at_s])?,
            };
        }
    }
    if let Some(u) = consent {
        let stored = load_consent_in(c, &u.subscriber)?;
        let (mut ledger, version) = stored.unwrap_or_default();
        if ledger.apply(u) {
            save_consent_in(c, &u.subscriber, &ledger, (version > 0).then_some(version))?;
        }
    }
    c.prepare_cached("UPDATE events SET processed = 1, processed_at_ms = ?2 WHERE rowid = ?1")?
        .execute(params![rowid, now_ms])?;
    Ok(Folded::Processed)
}

/// A subscriber's ledger and its version, inside the caller's transaction.
pub(crate) fn load_consent_in(
    c: &rusqlite::Connection,
    subscriber: &str,
) -> Result<Option<(ConsentLedger, u64)>, DbError> {
    let row = c
        .prepare_cached("SELECT ledger, version FROM consent WHERE subscriber = ?1")?
        .query_row([subscriber], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?;
    match row {
        None => Ok(None),
        Some((json, version)) => Ok(Some((serde_json::from_str(&json)?, version as u64))),
    }
}

/// Save a ledger if its version is still `expected` (`None`: it must not exist); whether it
/// was saved.
fn save_consent_in(
    c: &rusqlite::Connection,
    subscriber: &str,
    ledger: &ConsentLedger,
    expected: Option<u64>,
) -> Result<bool, DbError> {
    let json = serde_json::to_string(ledger)?;
    let n = match expected {
        None => c
            .prepare_cached(
                "INSERT INTO consent (subscriber, ledger, version) VALUES (?1, ?2, 1)
                 ON CONFLICT (subscriber) DO NOTHING",
            )?
            .execute(params![subscriber, json])?,
        Some(v) => c
            .prepare_cached(
                "UPDATE consent SET ledger = ?2, version = version + 1
                 WHERE subscriber = ?1 AND version = ?3",
            )?
            .execute(params![subscriber, json, v as i64])?,
    };
    Ok(n == 1)
}

/// `twilio-webhooks replay --data DIR`: the events table has the received time and kind as
/// columns, so the listing is one pass over the table in SQL (it runs once, by hand).
#[async_trait]
impl ReplaySource for SqliteStore {
    async fn candidates(
        &self,
        filter: &ReplayFilter,
        now_ms: i64,
    ) -> Result<(Vec<Candidate>, usize), PortError> {
        let (since, kind) = (filter.since_ms, filter.kind.clone());
        let rows = self
            .db
            .call(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT key, event, processed FROM events
                     WHERE received_at >= ?1 AND (?2 IS NULL OR kind = ?2)
                       AND expires_at_s * 1000 > ?3
                     ORDER BY received_at",
                )?;
                let rows = stmt.query_map(params![since, kind, now_ms], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let mut out = Vec::new();
        let mut unreadable = 0;
        for (key, event, processed) in rows {
            match serde_json::from_str::<EventRecord>(&event) {
                Ok(event) if filter.matches(&event) => out.push(Candidate { event, processed }),
                Ok(_) => {}
                Err(e) => {
                    // Not serde's message: it may quote stored personal data.
                    tracing::error!(%key, line = e.line(), column = e.column(), "replay: unreadable event record");
                    unreadable += 1;
                }
            }
        }
        Ok((out, unreadable))
    }

    async fn reopen(&self, key: &str, now_ms: i64, lock_until_ms: i64) -> Result<bool, PortError> {
        let key = key.to_owned();
        let n = self
            .db
            .call(move |c| {
                // `sweeps = 1`: the record goes through the job queue (the replay sends it a
                // job), never also as a record that is its own job. A processed record's
                // lease is over whatever `lease_until_ms` still says.
                let Some(r) = allowed(c, &key, lifecycle::REOPEN, &at(now_ms))? else {
                    return Ok(0);
                };
                Ok(c.prepare_cached(
                    "UPDATE events SET processed = 0, processed_at_ms = NULL, lease_until_ms = 0,
                         sweeps = 1, lock_until_ms = ?2
                     WHERE rowid = ?1",
                )?
                .execute(params![r.rowid, lock_until_ms])?)
            })
            .await?;
        Ok(n == 1)
    }
}
