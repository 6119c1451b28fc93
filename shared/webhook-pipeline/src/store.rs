//! The ports of the pipeline, one per concern, and what crosses them:
//!
//! | port | used by | methods |
//! |---|---|---|
//! | [`EventLog`] | request path, sweeper | claim, release, stale_pending, extend_lock |
//! | [`Leases`] | worker | begin_processing, finish_processing, abandon_processing |
//! | [`StateStore`] | worker | load_state, save_state |
//! | [`ConsentStore`] | worker, `consent` | load_consent, save_consent |
//! | [`WorkQueue`] | request path, sweeper, replay | enqueue |
//!
//! [`Store`] is the four store ports together, as one adapter implements them. Adapters:
//! DynamoDB + SQS (`webhook-aws`), SQLite (`webhook-local`), in-memory
//! (`webhook_testkit::memory`). Which transitions of an event record each call may make is
//! decided in one place, [`crate::lifecycle`], and `webhook_testkit::contract` holds every
//! adapter to it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use twilio_webhook::FormParams;
use twilio_webhook::payload::Endpoint;

use crate::consent::{ConsentLedger, ConsentUpdate};
use crate::reply::Reply;
use crate::state::{StateRecord, StateUpdate};

/// What kind of failure a [`PortError`] is: what a caller may do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Transient (network, timeout, throttling, a busy database): the same call may succeed
    /// later. The request path answers 503 so Twilio retries or calls the fallback.
    Retryable,
    /// The call can never succeed as it is (an unreadable stored record, a value the backend
    /// refuses): retrying only burns attempts. The sweeper parks such a record; the local
    /// queue dead-letters such a job at once.
    Permanent,
    /// The table, queue or database itself does not exist (a deployment or configuration
    /// error, not a missing record: those are `Option`s and outcomes).
    NotFound,
}

/// A failure of an adapter behind a port (store or queue), with its [`ErrorKind`]. The
/// message never holds stored personal data (no serde message quoting a record).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    kind: ErrorKind,
    message: String,
}

impl PortError {
    /// A failure of the given kind.
    pub fn new(kind: ErrorKind, message: impl std::fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    /// A transient failure ([`ErrorKind::Retryable`]).
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Retryable, message)
    }

    /// A failure that retrying cannot fix ([`ErrorKind::Permanent`]).
    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }

    /// The resource behind the port does not exist ([`ErrorKind::NotFound`]).
    pub fn not_found(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// A stored JSON value serde cannot read ([`ErrorKind::Permanent`]), described by its
    /// position only: serde's message may quote the stored personal data.
    pub fn unreadable(what: &str, e: &serde_json::Error) -> Self {
        Self::permanent(format!(
            "unreadable {what} ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

/// One accepted webhook, as stored and as sent to the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Dedup key (`sms#SM...`, `callstatus#CA...#3`...). Left out of the JSON when empty:
    /// a DynamoDB record keeps it as its `pk` only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// Payload kind (`inbound_message`, `call_status`...).
    pub kind: String,
    /// The endpoint that accepted it.
    pub endpoint: Endpoint,
    /// The URL Twilio signed.
    pub url: String,
    /// Every parameter Twilio sent, in order; stored as one form body (compact: a typical
    /// SMS record fits in one DynamoDB write unit).
    #[serde(with = "twilio_webhook::form::as_body")]
    pub params: FormParams,
    /// `I-Twilio-Idempotency-Token` of the attempt that was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_token: Option<String>,
    /// Unix milliseconds.
    pub received_at: i64,
    /// The reply given, replayed to duplicates.
    pub reply: Reply,
    /// What the event changes in its message/call state record, decided at ingestion (where
    /// the payload was verified) so the worker never re-parses untrusted input.
    pub state_update: Option<StateUpdate>,
    /// What the event changes in the opt-out ledger, decided at ingestion too (absent in
    /// records stored before the ledger existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentUpdate>,
}

/// What the worker receives from the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The event to process.
    pub event: EventRecord,
}

/// Outcome of [`EventLog::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The record was written by this attempt, which must now enqueue it.
    New,
    /// A live record exists; answer with its reply and do not enqueue.
    Duplicate {
        /// The live record's reply.
        reply: Reply,
        /// Whether a worker already processed it.
        processed: bool,
    },
}

/// Outcome of [`Leases::begin_processing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processing {
    /// This worker holds the lease; do the work, then [`Leases::finish_processing`].
    Ready,
    /// Already processed: acknowledge the message.
    AlreadyDone,
    /// Another worker holds a live lease: retry later.
    Busy,
    /// No record (expired): nothing to do.
    Missing,
}

/// Time values the store compares, all computed by the caller from one clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTimes {
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// Until when this attempt owns the record (unix ms).
    pub lock_until_ms: i64,
    /// When the record stops counting for dedup (unix seconds, the DynamoDB TTL attribute).
    pub expires_at_s: i64,
}

/// A record the sweeper found: unprocessed, its lock ended.
#[derive(Debug)]
pub struct Stale {
    /// Its dedup key.
    pub key: String,
    /// How many times the sweeper already re-sent it, as read.
    pub sweeps: u32,
    /// Its event; an [`ErrorKind::Permanent`] error if it cannot be decoded (it never will:
    /// park it), a retryable one if reading it failed (try again at the next sweep).
    pub event: Result<Box<EventRecord>, PortError>,
}

/// The event log: one record per event key, written once per live copy. Request path and
/// sweeper.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Write `event` if [`crate::lifecycle::CLAIM`] allows it (no live record has its key;
    /// expiry is checked here, TTL deletes late), else the live record's reply. `attempt`
    /// identifies the writer: a retried call whose first answer was lost finds its own record
    /// and is [`Claim::New`], not a duplicate of itself.
    async fn claim(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, PortError>;

    /// Give up a claim after a failed enqueue ([`crate::lifecycle::RELEASE`]): its lock ends
    /// now, so a retry, the fallback or the sweeper redoes it at once. (A queue-first record,
    /// which nothing sweeps, goes to the sweeper whoever wrote it: see `webhook-aws`.)
    async fn release(&self, key: &str, attempt: &str) -> Result<(), PortError>;

    /// Sweeper: unprocessed records whose lock ended before `lock_before_ms`, oldest first.
    /// A record that cannot be read is listed too (its [`Stale::event`] is the error), never
    /// an error for the whole list: one bad record must not stop the sweep of the others.
    async fn stale_pending(
        &self,
        lock_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stale>, PortError>;

    /// Sweeper: push the lock of a re-sent (or parked) record forward so it is not re-sent
    /// every sweep, and count the sweep ([`crate::lifecycle::EXTEND_LOCK`]): `sweeps` becomes
    /// `sweeps_read + 1` only if it still is `sweeps_read`.
    async fn extend_lock(
        &self,
        key: &str,
        lock_until_ms: i64,
        sweeps_read: u32,
    ) -> Result<(), PortError>;
}

/// Worker leases on event records.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Take the lease on an unprocessed record ([`crate::lifecycle::TAKE_LEASE`];
    /// [`crate::lifecycle::lease_outcome`] says what a refusal means).
    async fn begin_processing(
        &self,
        key: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Processing, PortError>;

    /// Mark processed: no longer pending for the sweeper, a duplicate from now on.
    async fn finish_processing(&self, key: &str, now_ms: i64) -> Result<(), PortError>;

    /// Drop the lease after a failure so the next delivery can retry at once.
    async fn abandon_processing(&self, key: &str) -> Result<(), PortError>;
}

/// Per-message / per-call state records, with a version for optimistic concurrency.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The state record and its version.
    async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, PortError>;

    /// Save if the stored version is still `expected` (`None`: must not exist). `Ok(false)` on
    /// a lost race: reload and fold again.
    async fn save_state(
        &self,
        id: &str,
        state: &StateRecord,
        expected: Option<u64>,
        expires_at_s: i64,
    ) -> Result<bool, PortError>;
}

/// The opt-out ledger ([`crate::consent`]), one record per subscriber, versioned.
#[async_trait]
pub trait ConsentStore: Send + Sync {
    /// The ledger of one subscriber, with its version.
    async fn load_consent(
        &self,
        subscriber: &str,
    ) -> Result<Option<(ConsentLedger, u64)>, PortError>;

    /// Save if the stored version is still `expected` (`None`: must not exist); `Ok(false)` on
    /// a lost race. Never expires: consent is a compliance record.
    async fn save_consent(
        &self,
        subscriber: &str,
        ledger: &ConsentLedger,
        expected: Option<u64>,
    ) -> Result<bool, PortError>;
}

/// The four store ports, as one adapter implements them (what the worker is given).
pub trait Store: EventLog + Leases + StateStore + ConsentStore {}

impl<T: EventLog + Leases + StateStore + ConsentStore + ?Sized> Store for T {}

/// Hands accepted events to the worker.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Send one job; the queue delivers it at least once.
    async fn enqueue(&self, job: &Job) -> Result<(), PortError>;
}
