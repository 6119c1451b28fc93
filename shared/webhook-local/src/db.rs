//! The SQLite database behind [`crate::SqliteStore`] and [`crate::SqliteQueue`]: one file in
//! WAL mode, one connection behind a mutex, every call on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use webhook_pipeline::StoreError;

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
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: dead_jobs keeps the id
    key           TEXT NOT NULL,
    body          TEXT NOT NULL,     -- Job as JSON
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    done          INTEGER NOT NULL DEFAULT 0,
    acked_at_ms   INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (done, visible_at_ms);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key);
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
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database task failed: {0}")]
    Join(String),
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::new(e)
    }
}

/// Opening a data directory failed; the message names the path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("no local data in {0} (start `twilio-webhooks serve --data {0}` first)")]
    Missing(PathBuf),
    #[error(
        "data directory {0} is in use by another `twilio-webhooks serve`; stop it or pick another --data"
    )]
    InUse(PathBuf),
}

/// A shared handle on the database file (cheap to clone).
#[derive(Clone)]
pub struct Database {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
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
            conn.execute_batch("PRAGMA synchronous = NORMAL;")?;
            conn.execute_batch(SCHEMA)
        };
        setup(&conn).map_err(|source| OpenError::Db {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the connection, on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
    }

    /// Run `f` on the connection, on this thread (for sync callers such as `inspect`).
    pub(crate) fn call_sync<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    /// After a crash, with the data directory locked (so no other process can be working):
    /// jobs the dead process had received are visible again, its worker leases are dropped,
    /// and records it claimed but never enqueued get a job. Returns what was done.
    pub async fn recover(&self, now_ms: i64) -> Result<Recovery, DbError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let jobs_made_visible = tx.execute(
                "UPDATE jobs SET visible_at_ms = ?1 WHERE done = 0 AND visible_at_ms > ?1",
                [now_ms],
            )?;
            let leases_dropped = tx.execute(
                "UPDATE events SET lease_until_ms = 0 WHERE processed = 0 AND lease_until_ms > 0",
                [],
            )?;
            let orphans_enqueued = tx.execute(
                "INSERT INTO jobs (key, body, visible_at_ms)
                 SELECT e.key, '{\"event\":' || e.event || '}', ?1 FROM events e
                 WHERE e.processed = 0 AND e.expires_at_s * 1000 > ?1
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.key = e.key AND j.done = 0)
                   AND NOT EXISTS (SELECT 1 FROM dead_jobs d WHERE d.key = e.key)",
                [now_ms],
            )?;
            tx.commit()?;
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
    pub jobs_made_visible: usize,
    pub leases_dropped: usize,
    pub orphans_enqueued: usize,
}

impl Recovery {
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

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
