//! The webhook pipeline shared by the Lambda functions and the local server:
//! verify → parse → dedup key → record once → enqueue → reply, behind two narrow ports
//! ([`EventStore`], [`WorkQueue`]), and the worker that does the slow work.

pub mod config;
pub mod consent;
pub mod error;
pub mod forward;
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
pub use pipeline::{Clock, IncomingRequest, Pipeline, now_ms, system_clock};
pub use reply::{Reply, ReplyPolicy};
pub use store::{
    Claim, EventRecord, EventStore, FoldInOne, Folded, Job, Outbox, Processing, StoreError,
    WorkQueue,
};
pub use worker::{SlowWork, Worker};
