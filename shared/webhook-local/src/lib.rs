//! Run the whole product locally: an SQLite [`Store`](webhook_pipeline::Store) and
//! [`WorkQueue`](webhook_pipeline::WorkQueue) in one file (`<data>/webhooks.db`, WAL mode), the
//! worker loop, and the axum server with the four webhook endpoints, all behind the same
//! [`webhook_pipeline::Pipeline`] as the Lambda functions.
//!
//! Crash safety: an accepted event is a committed row before Twilio gets its reply; a job
//! received but not acknowledged comes back (after its visibility timeout, or at once at the
//! next start, see [`Database::recover`]); a job received 5 times goes to `dead_jobs`.

#![warn(missing_docs)]

pub mod db;
pub mod inspect;
pub mod queue;
pub mod server;
pub mod store;
pub mod worker;

pub use db::{DB_FILE, Database, DirLock, OpenError, Recovery};
pub use inspect::{InspectError, inspect};
pub use queue::{JobId, QueueCounts, QueueSettings, SqliteQueue};
pub use server::{
    BODY_LIMIT, ServeConfig, ServeError, Server, serve, shutdown_signal, termination_signal,
};
pub use store::SqliteStore;
pub use worker::{LoopSettings, WorkerLoop, run_worker};
