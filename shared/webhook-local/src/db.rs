//! The SQLite database behind [`crate::SqliteStore`] and [`crate::SqliteQueue`]: one file in
//! WAL mode, one connection owned by one thread that runs every call.
//!
//! Group commit: calls that arrive while a transaction is being written are run together in the
//! next transaction, and every caller gets its answer only after that transaction committed. So
//! an answer still means "on disk" (as far as `synchronous = NORMAL` goes, see
//! [`Database::open`]), and under load one WAL commit covers hundreds of calls instead of one.
//! A call that fails must undo only its own writes: then the whole transaction is rolled back
//! and every call of it runs again, each in a transaction of its own (see `run_and_answer`).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};
use webhook_pipeline::{ErrorKind, PortError};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "webhooks.db";
/// File name of the lock held by the one `serve` that owns a data directory.
pub const LOCK_FILE: &str = "serve.lock";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    key             TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    received_at     INTEGER NOT NULL,
    event           TEXT NOT NULL,   -- EventRecord as JSON
    reply           TEXT NOT NULL,   -- Reply as JSON, replayed to duplicates
    attempt         TEXT NOT NULL,
    lock_until_ms   INTEGER NOT NULL,
    expires_at_s    INTEGER NOT NULL,
    processed       INTEGER NOT NULL DEFAULT 0,
    processed_at_ms INTEGER,
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    sweeps          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_pending ON events (processed, lock_until_ms);
CREATE TABLE IF NOT EXISTS states (
    id           TEXT PRIMARY KEY,
    state        TEXT NOT NULL,      -- StateRecord as JSON
    version      INTEGER NOT NULL,
    expires_at_s INTEGER NOT NULL
);
-- The opt-out ledger, one row per subscriber; never expires (a compliance record).
CREATE TABLE IF NOT EXISTS consent (
    subscriber TEXT PRIMARY KEY,
    ledger     TEXT NOT NULL,        -- ConsentLedger as JSON
    version    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: dead_jobs keeps the id
    key           TEXT NOT NULL,
    body          TEXT NOT NULL,     -- Job as JSON; empty: the event is the events row's (outbox)
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    done          INTEGER NOT NULL DEFAULT 0,
    acked_at_ms   INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (done, visible_at_ms);
-- No index on jobs (key): it would cost a random page write per job, and only recovery
-- looks jobs up by key. Data directories made before this schema may still have it.
DROP INDEX IF EXISTS jobs_key;
CREATE TABLE IF NOT EXISTS dead_jobs (
    id            INTEGER PRIMARY KEY,
    key           TEXT NOT NULL,
    body          TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    died_at_ms    INTEGER NOT NULL,
    reason        TEXT NOT NULL
);
";

/// Everything that can go wrong inside the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused or failed the call (busy, full, I/O, an unreadable column...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column cannot be read: permanent.
    #[error("corrupt row: {0}")]
    Json(#[from] serde_json::Error),
    /// A row contradicts itself (a record holding another key's event): permanent.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A database call panicked.
    #[error("database task failed: {0}")]
    Join(String),
    /// The transaction the call ran in could not be committed (or was rolled back by SQLite):
    /// none of its writes were kept.
    #[error("transaction not committed: {0}")]
    Commit(String),
    /// The database thread has stopped.
    #[error("the database thread has stopped")]
    Closed,
    /// A row the same transaction saw a moment ago is gone (cannot happen inside one
    /// transaction; answered as retryable all the same).
    #[error("the record changed during the call")]
    Vanished,
}

impl DbError {
    /// What a caller may do about it: a busy, locked or full database, an I/O error or a
    /// rolled-back transaction may pass; a row SQLite or serde cannot read never will.
    pub fn kind(&self) -> ErrorKind {
        use rusqlite::ErrorCode as C;
        match self {
            Self::Json(_) | Self::Corrupt(_) => ErrorKind::Permanent,
            Self::Sqlite(
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::IntegralValueOutOfRange(..)
                | rusqlite::Error::InvalidColumnType(..),
            ) => ErrorKind::Permanent,
            Self::Sqlite(e) => match e.sqlite_error_code() {
                Some(C::DatabaseCorrupt | C::NotADatabase | C::ConstraintViolation) => {
                    ErrorKind::Permanent
                }
                Some(C::CannotOpen) => ErrorKind::NotFound,
                _ => ErrorKind::Retryable,
            },
            Self::Join(_) | Self::Commit(_) | Self::Closed | Self::Vanished => ErrorKind::Retryable,
        }
    }
}

impl From<DbError> for PortError {
    fn from(e: DbError) -> Self {
        PortError::new(e.kind(), e)
    }
}

/// Opening a data directory failed; the message names the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created or used.
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database (or lock) file cannot be opened.
    #[error("cannot open database {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// No `webhooks.db` in the directory (`inspect` creates nothing).
    #[error("no local data in {0} (start `twilio-webhooks serve --data {0}` first)")]
    Missing(PathBuf),
    /// Another `serve` holds the directory's lock.
    #[error(
        "data directory {0} is in use by another `twilio-webhooks serve`; stop it or pick another --data"
    )]
    InUse(PathBuf),
}

/// Most calls run in one transaction. More would make the callers at the front of a batch wait
/// for the ones at the back without making the commit any cheaper.
const MAX_BATCH: usize = 512;

/// A shared handle on the database file (cheap to clone). The connection closes when the last
/// clone is dropped (after the calls already sent have run).
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    ops: Option<mpsc::Sender<Box<dyn Op>>>,
    thread: Option<JoinHandle<()>>,
    checkpointer: Option<Checkpointer>,
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // First, so that the writer's connection is the last one: closing it checkpoints the
        // rest and removes the WAL.
        drop(self.checkpointer.take());
        drop(self.ops.take());
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Database {
    /// Open (creating if needed) the database of a data directory.
    pub fn open_dir(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        Self::open(&dir.join(DB_FILE))
    }

    /// Open an existing data directory without creating anything (for `inspect`).
    pub fn open_existing_dir(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join(DB_FILE);
        if !path.is_file() {
            return Err(OpenError::Missing(dir.to_owned()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(|source| OpenError::Db {
            path: path.clone(),
            source,
        })?;
        Self::init(conn, path)
    }

    /// Open (creating if needed) a database file.
    ///
    /// Durability: WAL mode with `synchronous = NORMAL`. A commit is in the WAL file (in the OS
    /// page cache) before any caller hears about it, so a crash or kill of the process loses
    /// nothing that was answered; the WAL is fsynced at each checkpoint, so a power loss or
    /// kernel crash can drop the commits since the last one (SQLite's documented trade-off;
    /// `FULL` would fsync every commit).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let conn = Connection::open(path).map_err(|source| OpenError::Db {
            path: path.to_owned(),
            source,
        })?;
        Self::init(conn, path.to_owned())
    }

    fn init(conn: Connection, path: PathBuf) -> Result<Self, OpenError> {
        let setup = |conn: &Connection| -> rusqlite::Result<()> {
            conn.busy_timeout(Duration::from_secs(5))?;
            // WAL: readers (`inspect`) never block the server. synchronous=NORMAL in WAL mode
            // survives a process crash (only a power loss can drop the last commits).
            let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!(%mode, "SQLite refused WAL mode");
            }
            // Statement journals in memory; a page cache that holds the pages a batch touches
            // (the default 2 MB makes every batch re-read pages it wrote a moment ago).
            conn.execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;
                 PRAGMA cache_size = -32768;",
            )?;
            conn.set_prepared_statement_cache_capacity(64);
            // One plan per statement whatever its parameters: with this build's STAT4, binding
            // new values made SQLite re-prepare hot statements at each step (under load, about
            // 2 % of the server's CPU went to re-parsing them).
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
                true,
            )?;
            conn.execute_batch(SCHEMA)?;
            // Checkpoints run on their own thread (below): on this one, each stalled every
            // call waiting behind it for the copy of ~1000 pages and two fsyncs.
            // After a rewind, the WAL file is cut back to 64 MiB.
            conn.execute_batch(
                "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = 67108864;",
            )
        };
        setup(&conn).map_err(|source| OpenError::Db {
            path: path.clone(),
            source,
        })?;
        let (tx, rx) = mpsc::channel::<Box<dyn Op>>();
        let rewind = Arc::new(AtomicBool::new(false));
        let writer_rewind = rewind.clone();
        let name = format!(
            "sqlite {}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_ops(conn, rx, &writer_rewind))
            .map_err(|e| OpenError::Dir {
                path: path.clone(),
                source: e,
            })?;
        let checkpointer = Checkpointer::start(&path, rewind).map_err(|source| OpenError::Db {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                ops: Some(tx),
                thread: Some(thread),
                checkpointer: Some(checkpointer),
                path,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn send(&self, op: Box<dyn Op>) -> Result<(), DbError> {
        self.inner
            .ops
            .as_ref()
            .ok_or(DbError::Closed)?
            .send(op)
            .map_err(|_| DbError::Closed)
    }

    /// Run `f` on the database thread, inside a transaction (`f` must not open one), and
    /// answer once that transaction committed. `f`'s writes are all kept or, if it returns an
    /// error, all undone. `f` may run more than once (when another call of its transaction
    /// failed, see [`run_and_answer`]): only its last run counts.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.call_kind(Kind::Writes, Lane::Background, f).await
    }

    /// [`Database::call`] for a webhook request waiting on it: it goes ahead of background work
    /// (the worker, the sweeper), which fills the rest of each transaction.
    pub(crate) async fn call_for_request<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        self.call_kind(Kind::Writes, Lane::Request, f).await
    }

    async fn call_kind<T, F>(&self, kind: Kind, lane: Lane, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Box::new(Call {
            f,
            out: None,
            kind,
            lane,
            deliver: move |r| {
                let _ = tx.send(r);
            },
        }))?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Run a read-only `f` on the database thread and wait for it on this thread (for sync
    /// callers such as `inspect`). Alone, it runs in a deferred (read) transaction: one
    /// consistent snapshot that never blocks or waits for a writer in another process. Like
    /// [`Database::call`]'s, `f` may run more than once.
    pub(crate) fn read_sync<T: Send + 'static>(
        &self,
        f: impl FnMut(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Box::new(Call {
            f,
            out: None,
            kind: Kind::Read,
            lane: Lane::Request,
            deliver: move |r| {
                let _ = tx.send(r);
            },
        }))?;
        rx.recv().map_err(|_| DbError::Closed)?
    }

    /// After a crash, with the data directory locked (so no other process can be working):
    /// jobs the dead process had received are visible again, its worker leases are dropped,
    /// and records it claimed but never enqueued get a job. With `records_are_jobs` (see
    /// [`crate::SqliteQueue::with_records_as_jobs`]) a pending record never handed to the job
    /// queue is a job already and gets none. Returns what was done.
    pub async fn recover(&self, now_ms: i64, records_are_jobs: bool) -> Result<Recovery, DbError> {
        self.call(move |tx| {
            let jobs_made_visible = tx
                .prepare_cached(
                    "UPDATE jobs SET visible_at_ms = ?1 WHERE done = 0 AND visible_at_ms > ?1",
                )?
                .execute([now_ms])?;
            let leases_dropped = tx
                .prepare_cached(
                    "UPDATE events SET lease_until_ms = 0 WHERE processed = 0 AND lease_until_ms > 0",
                )?
                .execute([])?;
            let orphans_enqueued = tx.prepare_cached(
                "INSERT INTO jobs (key, body, visible_at_ms)
                 SELECT e.key, '{\"event\":' || e.event || '}', ?1 FROM events e
                 WHERE e.processed = 0 AND e.expires_at_s * 1000 > ?1
                   AND NOT (?2 AND e.sweeps = 0)
                   AND e.key NOT IN (SELECT key FROM jobs WHERE done = 0)
                   AND e.key NOT IN (SELECT key FROM dead_jobs)",
            )?
            .execute(params![now_ms, records_are_jobs])?;
            Ok(Recovery {
                jobs_made_visible,
                leases_dropped,
                orphans_enqueued,
            })
        })
        .await
    }
}

/// What [`Database::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Jobs received but not acknowledged, visible again.
    pub jobs_made_visible: usize,
    /// Worker leases dropped.
    pub leases_dropped: usize,
    /// Records accepted but never enqueued, now with a job.
    pub orphans_enqueued: usize,
}

impl Recovery {
    /// Whether there was nothing to recover.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Exclusive ownership of a data directory by one `serve` process, released when dropped or
/// when the process dies (it is an SQLite lock on a side file, held by an open transaction).
pub struct DirLock {
    _conn: Connection,
}

impl DirLock {
    /// Take the directory's lock, creating the directory; [`OpenError::InUse`] if another
    /// `serve` holds it.
    pub fn acquire(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(LOCK_FILE);
        let db_err = |source| OpenError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db_err)?;
        conn.busy_timeout(Duration::ZERO).map_err(db_err)?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS owner (pid INTEGER)")
            .map_err(|e| busy_or(e, dir, &path))?;
        conn.execute_batch("BEGIN EXCLUSIVE")
            .map_err(|e| busy_or(e, dir, &path))?;
        conn.execute(
            "INSERT INTO owner (pid) VALUES (?1)",
            [i64::from(std::process::id())],
        )
        .map_err(|e| busy_or(e, dir, &path))?;
        Ok(Self { _conn: conn })
    }
}

fn busy_or(e: rusqlite::Error, dir: &Path, path: &Path) -> OpenError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            OpenError::InUse(dir.to_owned())
        }
        _ => OpenError::Db {
            path: path.to_owned(),
            source: e,
        },
    }
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// WAL size (frames of 4 KiB) above which the writer is asked to rewind it.
const REWIND_AT_FRAMES: i64 = 16 * 1024;

/// A thread with its own connection that checkpoints the WAL every [`CHECKPOINT_EVERY`].
///
/// PASSIVE checkpoints copy committed frames beside the writer without blocking it. But the WAL
/// only starts over when the writer begins a transaction at a moment when every frame has been
/// copied, which under steady load does not happen by itself. So once the WAL passes
/// [`REWIND_AT_FRAMES`] (64 MiB), the checkpointer raises `rewind`: between two transactions
/// the writer then copies the few frames written since the last checkpoint itself, and its next
/// transaction rewinds the WAL. (A RESTART checkpoint would do the same by making the writer
/// wait on SQLite's busy handler, which sleeps 1, 2, 5, 10 ms: a latency spike.)
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, rewind: Arc<AtomicBool>) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite checkpoint".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    if let Err(e) = checkpoint(&conn, &rewind) {
                        tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// One round of the checkpointer (see [`Checkpointer`]). While a rewind is wanted and the
/// writer keeps adding frames, it copies every 200 µs, so that what the writer has left to copy
/// itself stays a few frames. Once everything is copied, the writer's next transaction rewinds
/// the WAL: there is nothing left to do until then (an idle server must not spin here).
fn checkpoint(conn: &Connection, rewind: &AtomicBool) -> rusqlite::Result<()> {
    for _ in 0..2000 {
        let (frames, copied) = passive_checkpoint(conn)?;
        let wanted = frames >= REWIND_AT_FRAMES;
        rewind.store(wanted, Ordering::Relaxed);
        if !wanted || copied >= frames {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Copy what can be copied without waiting: `(frames in the WAL, frames copied)`.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a call does, which decides how its transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Reads only: a batch of reads takes no write lock.
    Read,
    /// May write: its transaction takes the write lock at once (`BEGIN IMMEDIATE`).
    Writes,
}

/// Who waits for a call: the request lane goes first (see [`run_ops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Request,
    Background,
}

/// One call waiting for the database thread.
trait Op: Send {
    fn kind(&self) -> Kind;
    fn lane(&self) -> Lane;
    /// Run the call (inside a transaction); `false` if it failed. May run again after a
    /// rollback: the last run's result is the answer.
    fn run(&mut self, c: &mut Connection) -> bool;
    /// Hand the answer over: the call's own result if its transaction committed (`None`).
    fn finish(self: Box<Self>, not_committed: Option<&str>);
}

struct Call<T, F, D> {
    f: F,
    out: Option<Result<T, DbError>>,
    kind: Kind,
    lane: Lane,
    deliver: D,
}

impl<T, F, D> Op for Call<T, F, D>
where
    T: Send,
    F: FnMut(&mut Connection) -> Result<T, DbError> + Send,
    D: FnOnce(Result<T, DbError>) + Send,
{
    fn kind(&self) -> Kind {
        self.kind
    }

    fn lane(&self) -> Lane {
        self.lane
    }

    fn run(&mut self, c: &mut Connection) -> bool {
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| (self.f)(c)))
            .unwrap_or_else(|_| Err(DbError::Join("database call panicked".into())));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, not_committed: Option<&str>) {
        let out = match (self.out, not_committed) {
            // A call that failed was undone whatever happened to the others: its own error.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), None) => Ok(v),
            (Some(Ok(_)), Some(why)) | (None, Some(why)) => Err(DbError::Commit(why.to_owned())),
            (None, None) => Err(DbError::Commit("the call was not run".into())),
        };
        (self.deliver)(out)
    }
}

/// Background calls in one transaction at most: a request's call waits for at most this much
/// of the worker's work (a worker batch is 256 jobs of ~4 calls each).
const MAX_BACKGROUND_PER_BATCH: usize = 64;

/// The database thread: take every call waiting, run them in one transaction, commit, answer
/// them, repeat until every [`Database`] handle is gone. Request calls all go in (up to
/// [`MAX_BATCH`]); background calls fill up to [`MAX_BACKGROUND_PER_BATCH`] places and the
/// rest wait for the next transactions, so a burst from the worker never delays a webhook by
/// more than a short transaction.
fn run_ops(mut conn: Connection, rx: mpsc::Receiver<Box<dyn Op>>, rewind: &AtomicBool) {
    let mut waiting: std::collections::VecDeque<Box<dyn Op>> = Default::default();
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
    loop {
        if rewind.swap(false, Ordering::Relaxed) {
            // The checkpointer is nearly caught up: copy the rest (see `Checkpointer`).
            if let Err(e) = passive_checkpoint(&conn) {
                tracing::warn!(error = %e, "SQLite checkpoint before a WAL rewind failed");
            }
        }
        if waiting.is_empty() {
            match rx.recv() {
                Ok(op) => waiting.push_back(op),
                Err(_) => return,
            }
        }
        waiting.extend(rx.try_iter().take(MAX_BATCH));
        let mut background = 0;
        let mut i = 0;
        while i < waiting.len() && batch.len() < MAX_BATCH {
            let take = waiting[i].lane() == Lane::Request || background < MAX_BACKGROUND_PER_BATCH;
            if take {
                background += usize::from(waiting[i].lane() == Lane::Background);
                batch.extend(waiting.remove(i));
            } else {
                i += 1;
            }
        }
        run_and_answer(&mut conn, &mut batch);
    }
}

fn exec(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(drop)
}

/// Run `batch` in one transaction and answer every call. Calls are not fenced off from each
/// other by savepoints: those copied every page a call touched into a journal, and cost about
/// 13% of the throughput under load (interleaved A/B runs: 16.3k vs 18.7k req/s). Instead,
/// when a call fails, the transaction is rolled back, that call is answered with its own error
/// (its writes are undone), and the others run again without it. Calls only fail on a broken
/// database (I/O, a corrupt row), so the rerun is rare, and one failing call costs one rerun.
fn run_and_answer(c: &mut Connection, batch: &mut Vec<Box<dyn Op>>) {
    loop {
        match run_batch(c, batch) {
            Err(BatchError::CallFailed(i)) if batch.len() > 1 => {
                // `finish(None)` answers a failed call with its own error.
                batch.remove(i).finish(None);
            }
            result => {
                let not_committed = result.err().map(|e| e.to_string());
                for op in batch.drain(..) {
                    op.finish(not_committed.as_deref());
                }
                return;
            }
        }
    }
}

/// Why a transaction kept nothing.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// The call at this index failed.
    #[error("a call of the transaction failed")]
    CallFailed(usize),
    #[error("SQLite rolled the transaction back")]
    RolledBack,
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// One transaction for `batch`; on any error it is rolled back and nothing is kept.
fn run_batch(c: &mut Connection, batch: &mut [Box<dyn Op>]) -> Result<(), BatchError> {
    let begin = if batch.iter().any(|op| op.kind() != Kind::Read) {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN DEFERRED"
    };
    exec(c, begin)?;
    let result = (|| {
        for (i, op) in batch.iter_mut().enumerate() {
            let ok = op.run(c);
            if c.is_autocommit() {
                // SQLite undid the whole transaction by itself (I/O error, full disk), even if
                // the call went on and answered Ok: nothing of it is kept.
                return Err(BatchError::RolledBack);
            }
            if !ok {
                return Err(BatchError::CallFailed(i));
            }
        }
        Ok(exec(c, "COMMIT")?)
    })();
    if result.is_err() && !c.is_autocommit() {
        if let Err(e) = c.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "SQLite rollback failed");
        }
    }
    result
}

pub(crate) use webhook_pipeline::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db() -> (Database, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "webhook-local-db-{}-{}-{}",
            std::process::id(),
            now_ms(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let db = Database::open_dir(&dir).unwrap();
        db.read_sync(|c| {
            c.execute_batch("CREATE TABLE IF NOT EXISTS t (v INTEGER PRIMARY KEY)")?;
            Ok(())
        })
        .unwrap();
        (db, dir)
    }

    fn values(db: &Database) -> Vec<i64> {
        db.read_sync(|c| {
            let mut s = c.prepare("SELECT v FROM t ORDER BY v")?;
            let v = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(v)
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failing_call_undoes_only_its_own_writes() {
        let (db, dir) = temp_db();
        let calls = (0..200i64).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.call(move |c| {
                    c.execute("INSERT INTO t (v) VALUES (?1)", [i])?;
                    if i % 3 == 0 {
                        // Written, then failed: must not be kept.
                        return Err(DbError::Join(format!("call {i} fails")));
                    }
                    if i % 7 == 0 {
                        panic!("call {i} panics");
                    }
                    Ok(i)
                })
                .await
            })
        });
        let results: Vec<_> = futures_join(calls).await;
        for (i, r) in results.iter().enumerate() {
            let i = i as i64;
            assert_eq!(r.is_ok(), i % 3 != 0 && i % 7 != 0, "call {i}: {r:?}");
        }
        let kept: Vec<i64> = (0..200).filter(|i| i % 3 != 0 && i % 7 != 0).collect();
        assert_eq!(values(&db), kept);
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn answers_come_from_the_run_that_was_committed() {
        let (db, dir) = temp_db();
        // Each call inserts a row and answers how many rows it sees; every fifth fails after
        // its insert. Answers taken from a run that was rolled back would count rows that
        // are not kept: the kept calls must see exactly 1, 2, ... in some order.
        let calls = (0..200i64).map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.call(move |c| {
                    c.execute("INSERT INTO t (v) VALUES (?1)", [i])?;
                    if i % 5 == 0 {
                        return Err(DbError::Join(format!("call {i} fails")));
                    }
                    Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?)
                })
                .await
            })
        });
        let mut seen: Vec<i64> = futures_join(calls)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=160).collect::<Vec<_>>());
        assert_eq!(values(&db).len(), 160);
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn calls_run_one_at_a_time_so_check_then_insert_is_atomic() {
        let (db, dir) = temp_db();
        // 100 callers race to insert the same value if absent: exactly one wins.
        let calls = (0..100).map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db.call(|c| {
                    let exists: bool =
                        c.query_row("SELECT EXISTS (SELECT 1 FROM t WHERE v = 1)", [], |r| {
                            r.get(0)
                        })?;
                    if !exists {
                        c.execute("INSERT INTO t (v) VALUES (1)", [])?;
                    }
                    Ok(!exists)
                })
                .await
            })
        });
        let won = futures_join(calls)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(won, 1);
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_call_does_not_wait_behind_a_burst_of_background_calls() {
        let (db, dir) = temp_db();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let burst: Vec<_> = (0..400)
            .map(|_| {
                let (db, done) = (db.clone(), done.clone());
                tokio::spawn(async move {
                    db.call(move |_| {
                        std::thread::sleep(Duration::from_millis(1));
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        // Let the burst reach the database thread first.
        while done.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        db.call_for_request(|_| Ok(())).await.unwrap();
        let ahead = done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            ahead <= 3 * MAX_BACKGROUND_PER_BATCH,
            "{ahead} background calls ran before the request's"
        );
        for b in burst {
            b.await.unwrap().unwrap();
        }
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let (db, dir) = temp_db();
        for i in 0..50i64 {
            db.call(move |c| Ok(c.execute("INSERT INTO t (v) VALUES (?1)", [i])?))
                .await
                .unwrap();
        }
        let file = || std::fs::metadata(dir.join(DB_FILE)).unwrap().len();
        let before = file();
        // No autocheckpoint on the writer: only the checkpointer thread can grow the file.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while file() == before && std::time::Instant::now() < deadline {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
        assert!(file() > before, "nothing was checkpointed");
        assert_eq!(values(&db), (0..50).collect::<Vec<_>>());
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_dropped_database_closes_its_file() {
        let (db, dir) = temp_db();
        db.read_sync(|_| Ok(())).unwrap();
        drop(db);
        // The thread has closed the connection: the last close checkpoints and removes the WAL.
        assert!(!dir.join(format!("{DB_FILE}-wal")).exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn futures_join<T: Send + 'static>(
        tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for t in tasks.collect::<Vec<_>>() {
            out.push(t.await.unwrap());
        }
        out
    }
}
