//! The webhook pipeline shared by the Lambda functions and the local server:
//! verify → parse → dedup key → record once → enqueue → reply, behind narrow ports
//! ([`store`]: event log, leases, state, consent, work queue; [`intake`]: the request path's
//! one call), the record lifecycle written once ([`lifecycle`]), and the worker that does the
//! slow work.

#![warn(missing_docs)]

pub mod config;
pub mod consent;
pub mod error;
pub mod forward;
pub mod intake;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod replay;
pub mod reply;
pub mod rotation;
pub mod state;
pub mod store;
pub mod summary;
pub mod worker;

pub use config::Settings;
pub use error::PipelineError;
pub use intake::{ClaimThenSend, Intake, IntakeError};
pub use pipeline::{Clock, IncomingRequest, Pipeline, now_ms, system_clock};
pub use reply::{Reply, ReplyPolicy};
pub use store::{
    Claim, ConsentStore, ErrorKind, EventLog, EventRecord, Job, Leases, PortError, Processing,
    StateStore, Store, WorkQueue,
};
pub use worker::{SlowWork, Worker};
