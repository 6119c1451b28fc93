//! [`SqliteQueue`]: the [`WorkQueue`] on SQLite, with SQS-like semantics: a received job is
//! invisible for a visibility timeout and comes back if it is not acknowledged (the worker
//! crashed); after [`QueueSettings::max_receives`] receives it moves to `dead_jobs` (the DLQ).

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;
use webhook_pipeline::consent::ConsentUpdate;
use webhook_pipeline::state::StateUpdate;
use webhook_pipeline::store::ClaimTimes;
use webhook_pipeline::{
    Claim, Clock, EventRecord, Intake, IntakeError, Job, PortError, WorkQueue, system_clock,
};

use crate::db::{Database, DbError};
use crate::store::{ClaimRow, Folded, claim_outcome, fold_in_tx};

/// Row id of a job in the `jobs` table.
pub type JobId = i64;

/// Redelivery and dead-letter settings of the local queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// Receives before a job is dead-lettered (SQS `maxReceiveCount`).
    pub max_receives: u32,
    /// Delay before a nacked job is visible again, doubled at each receive...
    pub backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
    /// How long acknowledged jobs are kept (for debugging with `sqlite3`).
    pub keep_done: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_receives: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            keep_done: Duration::from_secs(3600),
        }
    }
}

/// The [`WorkQueue`] on SQLite (see the module docs).
pub struct SqliteQueue {
    db: Database,
    notify: Notify,
    settings: QueueSettings,
    clock: Clock,
    records_are_jobs: bool,
}

impl SqliteQueue {
    /// A queue in `db`, with default settings.
    pub fn new(db: Database) -> Self {
        Self {
            db,
            notify: Notify::new(),
            settings: QueueSettings::default(),
            clock: system_clock(),
            records_are_jobs: false,
        }
    }

    /// The outbox enqueues nothing: a claimed record not yet processed is its own job, taken by
    /// [`SqliteQueue::fold_ready`] (which every worker of this queue must then use, as `serve`
    /// does without slow work). A new event then costs one row and its index entries instead
    /// of two rows, and its processing no job row to find and acknowledge. A record handed to
    /// the job queue later (by the sweeper, [`Database::recover`] or
    /// [`SqliteQueue::set_aside_records`]) is taken as a job from then on.
    pub fn with_records_as_jobs(mut self) -> Self {
        self.records_are_jobs = true;
        self
    }

    /// Use these settings instead of the defaults.
    pub fn with_settings(mut self, settings: QueueSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Use `clock` instead of the wall clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Its settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// Resolves at the next enqueue (or at once if one happened since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Up to `limit` visible jobs, oldest first, each invisible for `visibility` from now on.
    /// Jobs already received `max_receives` times, and jobs whose body cannot be read, go to
    /// `dead_jobs` instead.
    pub async fn receive(
        &self,
        limit: usize,
        visibility: Duration,
    ) -> Result<Vec<(JobId, Job)>, PortError> {
        let now = (self.clock)();
        let invisible_until = now.saturating_add(visibility.as_millis() as i64);
        let max = i64::from(self.settings.max_receives);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let received = self
            .db
            .call(move |tx| {
                let mut out = Vec::new();
                let mut dead = Vec::new();
                for (id, body, count) in ready_jobs(tx, now, limit)? {
                    let Some(body) = body else { continue };
                    if let Some(reason) = used_up(count, max) {
                        dead_letter(tx, id, now, &reason)?;
                        dead.push((id, reason));
                        continue;
                    }
                    tx.prepare_cached(
                        "UPDATE jobs SET receive_count = receive_count + 1, visible_at_ms = ?2
                         WHERE id = ?1",
                    )?
                    .execute(params![id, invisible_until])?;
                    out.push((id, body));
                }
                Ok((out, dead))
            })
            .await?;
        let (received, dead) = received;
        dead.iter()
            .for_each(|(id, reason)| log_dead_letter(*id, reason));
        // Parsed here, not on the database thread every call waits for. A job that cannot be
        // read is dead-lettered at once (if that fails, it comes back after `visibility`).
        let mut out = Vec::with_capacity(received.len());
        for (id, body) in received {
            let job = match body {
                Body::Job(body) => serde_json::from_str::<Job>(&body),
                Body::Event(event) => serde_json::from_str(&event).map(|event| Job { event }),
            };
            match job {
                Ok(job) => out.push((id, job)),
                Err(e) => {
                    let reason = format!("unreadable job: {e}");
                    let logged = reason.clone();
                    self.db
                        .call(move |c| dead_letter(c, id, now, &reason))
                        .await?;
                    log_dead_letter(id, &logged);
                }
            }
        }
        Ok(out)
    }

    /// The worker's whole job for up to `limit` visible jobs whose only work is the state fold,
    /// in one database call: each job's event is folded as [`Worker::process`] folds it
    /// and the job acknowledged (or, if another worker holds its record, put back for
    /// `busy_delay`; if it cannot be read or used up its receives, dead-lettered), all in one
    /// transaction. That spares each job the receive, the trip of its event through the
    /// worker's task and the acknowledgement, which were half of what `serve` did per event.
    ///
    /// Only for a worker without slow work whose store is this queue's database (`serve`).
    /// `Err` leaves every job as it was (the transaction is rolled back): the caller then
    /// takes them one by one with [`SqliteQueue::receive`], which retries and dead-letters
    /// each on its own.
    ///
    /// [`Worker::process`]: webhook_pipeline::Worker::process
    pub async fn fold_ready(
        &self,
        limit: usize,
        state_ttl: Duration,
        busy_delay: Duration,
        name_processed: bool,
    ) -> Result<FoldReport, PortError> {
        let now = (self.clock)();
        let state_expires_at_s = now.div_euclid(1000) + state_ttl.as_secs() as i64;
        let busy_until = now.saturating_add(busy_delay.as_millis() as i64);
        let max = i64::from(self.settings.max_receives);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let records_are_jobs = self.records_are_jobs;
        let report = self
            .db
            .call(move |tx| {
                let mut report = FoldReport::default();
                let mut work: Vec<Taken> = ready_jobs(tx, now, limit)?
                    .into_iter()
                    .map(|(id, body, count)| (None, Some(id), body, count))
                    .collect();
                if records_are_jobs && work.len() < limit as usize {
                    let rest = limit - work.len() as i64;
                    work.extend(
                        pending_records(tx, now, rest)?
                            .into_iter()
                            .map(|(key, event)| (Some(key), None, Some(Body::Event(event)), 0)),
                    );
                }
                for (record, job, body, count) in work {
                    report.taken += 1;
                    let Some(body) = body else { continue };
                    let event = match (job, body.fold_view()) {
                        // A record that is its own job: if it cannot be read, the call fails
                        // and the worker hands it to the job queue.
                        (None, view) => {
                            let event = view?;
                            if record.as_deref() != Some(event.key.as_str()) {
                                // Folding it would mark another record, and take it again.
                                return Err(DbError::Corrupt(format!(
                                    "record {:?} holds the event of {}",
                                    record, event.key
                                )));
                            }
                            event
                        }
                        (Some(id), view) => {
                            let view = match view {
                                Err(e) => Err(format!("unreadable job: {e}")),
                                Ok(event) => used_up(count, max).map_or(Ok(event), Err),
                            };
                            match view {
                                Ok(event) => event,
                                Err(reason) => {
                                    dead_letter(tx, id, now, &reason)?;
                                    report.dead.push((id, reason));
                                    continue;
                                }
                            }
                        }
                    };
                    let folded = fold_in_tx(
                        tx,
                        &event.key,
                        event.received_at,
                        event.state_update.as_ref(),
                        event.consent.as_ref(),
                        now,
                        state_expires_at_s,
                    )?;
                    // A record that is its own job has no row to settle (and was not leased,
                    // so it cannot be busy).
                    match (job, folded) {
                        // Processed, or already by its job earlier in this call.
                        (None, Folded::Processed | Folded::AlreadyDone) => {}
                        (None, other) => {
                            return Err(DbError::Corrupt(format!(
                                "pending record {} found {other:?}",
                                event.key
                            )));
                        }
                        (Some(id), Folded::Busy) => {
                            tx.prepare_cached("UPDATE jobs SET visible_at_ms = ?2 WHERE id = ?1")?
                                .execute(params![id, busy_until])?;
                            report.deferred += 1;
                        }
                        (Some(id), Folded::Processed | Folded::AlreadyDone | Folded::Missing) => {
                            // Counted as one receive, as the job would have been.
                            tx.prepare_cached(
                                "UPDATE jobs SET done = 1, acked_at_ms = ?2,
                                     receive_count = receive_count + 1
                                 WHERE id = ?1",
                            )?
                            .execute(params![id, now])?;
                        }
                    }
                    if folded == Folded::Processed {
                        report.processed += 1;
                        if name_processed {
                            report.named.push((event.key, event.kind));
                        }
                    }
                }
                Ok(report)
            })
            .await?;
        report
            .dead
            .iter()
            .for_each(|(id, reason)| log_dead_letter(*id, reason));
        Ok(report)
    }

    /// Hand up to `limit` records that are their own job (see
    /// [`SqliteQueue::with_records_as_jobs`]) to the job queue: each gets a job row, visible
    /// now, and is taken as a job from then on (retries, backoff, dead letters). What a worker
    /// does when [`SqliteQueue::fold_ready`] fails, so that one bad record cannot stop the
    /// others. Returns how many were handed over.
    pub async fn set_aside_records(&self, limit: usize) -> Result<usize, PortError> {
        if !self.records_are_jobs {
            return Ok(0);
        }
        let now = (self.clock)();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .db
            .call(move |tx| {
                let records = pending_records(tx, now, limit)?;
                for (key, _) in &records {
                    tx.prepare_cached(
                        "INSERT INTO jobs (key, body, visible_at_ms) VALUES (?1, '', ?2)",
                    )?
                    .execute(params![key, now])?;
                    tx.prepare_cached("UPDATE events SET sweeps = sweeps + 1 WHERE key = ?1")?
                        .execute([key])?;
                }
                Ok(records.len())
            })
            .await?)
    }

    /// The job is done: it is never received again.
    pub async fn ack(&self, id: JobId) -> Result<(), PortError> {
        let now = (self.clock)();
        Ok(self.db.call(move |c| ack_in_tx(c, id, now)).await?)
    }

    /// [`SqliteQueue::ack`] for many jobs in one call (the worker settles a batch at once).
    pub async fn ack_many(&self, ids: Vec<JobId>) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = (self.clock)();
        Ok(self
            .db
            .call(move |c| ids.iter().try_for_each(|&id| ack_in_tx(c, id, now)))
            .await?)
    }

    /// The job failed: visible again after a backoff that grows with its receives, or
    /// dead-lettered if it used up its receives.
    pub async fn nack(&self, id: JobId, reason: &str) -> Result<(), PortError> {
        let now = (self.clock)();
        let s = self.settings;
        let reason = reason.to_owned();
        let logged = reason.clone();
        let dead = self
            .db
            .call(move |tx| {
                let count: Option<i64> = tx
                    .prepare_cached("SELECT receive_count FROM jobs WHERE id = ?1 AND done = 0")?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                let Some(count) = count else { return Ok(false) };
                if count >= i64::from(s.max_receives) {
                    dead_letter(tx, id, now, &reason)?;
                    return Ok(true);
                }
                let exp = u32::try_from(count.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
                let delay = s.backoff.saturating_mul(1 << exp).min(s.max_backoff);
                tx.prepare_cached("UPDATE jobs SET visible_at_ms = ?2 WHERE id = ?1")?
                    .execute(params![id, now.saturating_add(delay.as_millis() as i64)])?;
                Ok(false)
            })
            .await?;
        if dead {
            log_dead_letter(id, &logged);
        }
        Ok(())
    }

    /// The job can never succeed (a permanent failure): to the dead-letter table now, without
    /// burning its remaining receives.
    pub async fn dead_letter(&self, id: JobId, reason: &str) -> Result<(), PortError> {
        let now = (self.clock)();
        let reason = reason.to_owned();
        let logged = reason.clone();
        let moved = self
            .db
            .call(move |tx| {
                let live: Option<i64> = tx
                    .prepare_cached("SELECT id FROM jobs WHERE id = ?1 AND done = 0")?
                    .query_row([id], |r| r.get(0))
                    .optional()?;
                if live.is_none() {
                    return Ok(false);
                }
                dead_letter(tx, id, now, &reason)?;
                Ok(true)
            })
            .await?;
        if moved {
            log_dead_letter(id, &logged);
        }
        Ok(())
    }

    /// Put a received job back without counting the receive (not the job's fault: shutdown,
    /// another worker holds the record), visible after `delay`.
    pub async fn defer(&self, id: JobId, delay: Duration) -> Result<(), PortError> {
        let at = (self.clock)().saturating_add(delay.as_millis() as i64);
        Ok(self
            .db
            .call(move |c| {
                c.prepare_cached(
                    "UPDATE jobs SET visible_at_ms = ?2, receive_count = MAX(receive_count - 1, 0)
                     WHERE id = ?1 AND done = 0",
                )?
                .execute(params![id, at])?;
                Ok(())
            })
            .await?)
    }

    /// Unix ms at which the next not-yet-visible job becomes visible, if any.
    pub async fn next_visible_at(&self) -> Result<Option<i64>, PortError> {
        Ok(self
            .db
            .call(|c| {
                Ok(c.query_row(
                    "SELECT MIN(visible_at_ms) FROM jobs WHERE done = 0",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await?)
    }

    /// Jobs not yet acknowledged, and dead jobs.
    pub async fn counts(&self) -> Result<QueueCounts, PortError> {
        Ok(self
            .db
            .call(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT COUNT(*) FROM jobs WHERE done = 0),
                            (SELECT COUNT(*) FROM dead_jobs)",
                    [],
                    |r| {
                        Ok(QueueCounts {
                            pending: r.get(0)?,
                            dead: r.get(1)?,
                        })
                    },
                )?)
            })
            .await?)
    }

    /// Delete acknowledged jobs older than [`QueueSettings::keep_done`].
    pub async fn prune_done(&self) -> Result<usize, PortError> {
        let before = (self.clock)() - self.settings.keep_done.as_millis() as i64;
        Ok(self
            .db
            .call(move |c| {
                Ok(c.execute(
                    "DELETE FROM jobs WHERE done = 1 AND acked_at_ms < ?1",
                    [before],
                )?)
            })
            .await?)
    }
}

/// What [`SqliteQueue::counts`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Jobs in the `jobs` table not yet acknowledged.
    pub pending: i64,
    /// Jobs in `dead_jobs`.
    pub dead: i64,
}

/// What a received job carries: a [`Job`] as JSON, or (outbox jobs) its event record's JSON.
enum Body {
    Job(String),
    Event(String),
}

/// What [`SqliteQueue::fold_ready`] took: a pending record's key or a job's id, the body (`None`:
/// a job whose record is gone), the job's receives so far.
type Taken = (Option<String>, Option<JobId>, Option<Body>, i64);

/// The fields of an [`EventRecord`] the fold reads (serde skips the rest).
#[derive(serde::Deserialize)]
struct FoldView {
    key: String,
    kind: String,
    received_at: i64,
    state_update: Option<StateUpdate>,
    #[serde(default)]
    consent: Option<ConsentUpdate>,
}

impl Body {
    fn fold_view(&self) -> serde_json::Result<FoldView> {
        #[derive(serde::Deserialize)]
        struct JobView {
            event: FoldView,
        }
        match self {
            Body::Job(job) => serde_json::from_str::<JobView>(job).map(|j| j.event),
            Body::Event(event) => serde_json::from_str(event),
        }
    }
}

/// What [`SqliteQueue::fold_ready`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FoldReport {
    /// Jobs taken off the queue (processed, skipped, put back or dead-lettered).
    pub taken: usize,
    /// Events processed by this call.
    pub processed: usize,
    /// `(key, kind)` of each of them, when asked for (for the log).
    pub named: Vec<(String, String)>,
    /// Jobs put back because another worker holds their record.
    pub deferred: usize,
    /// Jobs moved to `dead_jobs`, with why.
    pub dead: Vec<(JobId, String)>,
}

/// Up to `limit` jobs visible at `now`, oldest first: `(id, body, receive_count)`. A `None`
/// body is an outbox job whose record expired and was purged: it is acknowledged here, there
/// is nothing left to process.
fn ready_jobs(
    tx: &rusqlite::Connection,
    now: i64,
    limit: i64,
) -> Result<Vec<(JobId, Option<Body>, i64)>, DbError> {
    // A job enqueued by the outbox has an empty body: its event is the record's.
    let rows: Vec<(JobId, String, Option<String>, i64)> = {
        // The ids first, from the index alone: sorting every visible job with its body to keep
        // `limit` of them made each receive cost the whole backlog.
        let mut stmt = tx.prepare_cached(
            "SELECT j.id, j.body, e.event, j.receive_count FROM jobs j
             LEFT JOIN events e ON j.body = '' AND e.key = j.key
             WHERE j.id IN (
                 SELECT id FROM jobs WHERE done = 0 AND visible_at_ms <= ?1
                 ORDER BY id LIMIT ?2)
             ORDER BY j.id",
        )?;
        stmt.query_map(params![now, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(rows.len());
    for (id, body, event, count) in rows {
        let body = match (body.is_empty(), event) {
            (false, _) => Some(Body::Job(body)),
            (true, Some(event)) => Some(Body::Event(event)),
            (true, None) => {
                tracing::debug!(job = id, "job's event record is gone; acknowledged");
                ack_in_tx(tx, id, now)?;
                None
            }
        };
        out.push((id, body, count));
    }
    Ok(out)
}

/// Up to `limit` records that are their own job (see [`SqliteQueue::with_records_as_jobs`]),
/// oldest claim first: `(key, event JSON)`. Not processed, not leased by a worker, and never
/// handed to the job queue (`sweeps = 0`: the sweeper and `set_aside_records` count each
/// hand-over there). A record that `recover` gave a job at start-up may be taken both ways:
/// the second fold finds it processed.
fn pending_records(
    tx: &rusqlite::Connection,
    now: i64,
    limit: i64,
) -> Result<Vec<(String, String)>, DbError> {
    let mut stmt = tx.prepare_cached(
        "SELECT key, event FROM events
         WHERE processed = 0 AND sweeps = 0 AND lease_until_ms <= ?1
         ORDER BY processed, lock_until_ms LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![now, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The dead-letter reason of a job received `count` times already, if that is the most.
fn used_up(count: i64, max: i64) -> Option<String> {
    (count >= max).then(|| format!("received {count} times without being acknowledged"))
}

fn ack_in_tx(tx: &rusqlite::Connection, id: JobId, now: i64) -> Result<(), DbError> {
    tx.prepare_cached("UPDATE jobs SET done = 1, acked_at_ms = ?2 WHERE id = ?1")?
        .execute(params![id, now])?;
    Ok(())
}

fn dead_letter(
    tx: &rusqlite::Connection,
    id: JobId,
    now: i64,
    reason: &str,
) -> Result<(), DbError> {
    // An outbox job's body is its record's event: the dead letter keeps a copy of it.
    tx.prepare_cached(
        "INSERT OR REPLACE INTO dead_jobs (id, key, body, receive_count, died_at_ms, reason)
         SELECT j.id, j.key,
                CASE WHEN j.body = '' THEN COALESCE('{\"event\":' || e.event || '}', '')
                     ELSE j.body END,
                j.receive_count, ?2, ?3
         FROM jobs j LEFT JOIN events e ON e.key = j.key WHERE j.id = ?1",
    )?
    .execute(params![id, now, reason])?;
    tx.prepare_cached("DELETE FROM jobs WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Logged once the move is committed (a call's transaction can be rolled back and run again).
fn log_dead_letter(id: JobId, reason: &str) {
    tracing::error!(job = id, %reason, "job moved to the dead-letter table");
}

/// The request path's one call (the transactional outbox): the record and its job in one
/// transaction, so there is no moment where a record is claimed but not enqueued, and one
/// database call per webhook instead of two. This queue's database holds the store's tables
/// too (one file, see `Database`).
#[async_trait]
impl Intake for SqliteQueue {
    async fn record(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, IntakeError> {
        self.claim_and_enqueue(event, attempt, t)
            .await
            .map_err(IntakeError::Store)
    }
}

impl SqliteQueue {
    /// [`Intake::record`] with the store's error: the record and its job in one transaction.
    pub async fn claim_and_enqueue(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, PortError> {
        let row = ClaimRow::new(event, attempt, t)?;
        let records_are_jobs = self.records_are_jobs;
        let stored = self
            .db
            .call_for_request(move |c| {
                let live = row.claim(c)?;
                if live.is_none() && !records_are_jobs {
                    // Empty body: the worker reads the event from the record (one copy of it).
                    c.prepare_cached(
                        "INSERT INTO jobs (key, body, visible_at_ms) VALUES (?1, '', ?2)",
                    )?
                    .execute(params![row.key(), t.now_ms])?;
                }
                Ok(live)
            })
            .await?;
        if stored.is_none() {
            self.notify.notify_one();
        }
        claim_outcome(stored)
    }
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), PortError> {
        let body = serde_json::to_string(job).map_err(PortError::permanent)?;
        let key = job.event.key.clone();
        let now = (self.clock)();
        self.db
            .call_for_request(move |c| {
                c.prepare_cached(
                    "INSERT INTO jobs (key, body, visible_at_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![key, body, now])?;
                Ok(())
            })
            .await?;
        self.notify.notify_one();
        Ok(())
    }
}
