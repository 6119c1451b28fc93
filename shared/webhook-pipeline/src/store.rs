//! The two ports of the pipeline. Adapters: DynamoDB + SQS (`webhook-aws`), SQLite
//! (`webhook-local`), in-memory (`webhook_testkit::memory`). All pass `webhook_testkit::contract`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use twilio_webhook::FormParams;
use twilio_webhook::payload::Endpoint;

use crate::consent::{ConsentLedger, ConsentUpdate};
use crate::reply::Reply;
use crate::state::{StateRecord, StateUpdate};

/// An adapter failure (network, throttling, corrupt row...). Always retryable from Twilio's
/// point of view, so the pipeline answers 5xx.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
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
    pub event: EventRecord,
}

/// Outcome of [`EventStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The record was written by this attempt, which must now enqueue it.
    New,
    /// A live record exists; answer with its reply and do not enqueue.
    Duplicate { reply: Reply, processed: bool },
}

/// Outcome of [`EventStore::begin_processing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processing {
    /// This worker holds the lease; do the work, then [`EventStore::finish_processing`].
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
    pub key: String,
    /// How many times the sweeper already re-sent it, as read.
    pub sweeps: u32,
    pub event: StaleEvent,
}

/// The event of a [`Stale`] record, if it could be read.
#[derive(Debug)]
pub enum StaleEvent {
    Readable(Box<EventRecord>),
    /// The stored event cannot be decoded: it never will be (park it).
    Corrupt(String),
    /// Reading it failed (a timeout, a throttle): try again at the next sweep.
    ReadFailed(StoreError),
}

/// The fields of a stored event record that decide whether a new copy may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordTimes {
    pub processed: bool,
    /// Until when the attempt that wrote it owns it (unix ms).
    pub lock_until_ms: i64,
    /// Until when a worker holds it (unix ms; 0: nobody).
    pub lease_until_ms: i64,
    /// Unix seconds; the record no longer counts after it.
    pub expires_at_s: i64,
}

impl RecordTimes {
    /// **The claim rule**, the one every adapter implements (the memory adapter calls this;
    /// SQLite and DynamoDB state it in their own condition languages, and the contract suite
    /// holds all three to it): a record is *live*, and a new copy of its event is a duplicate,
    /// unless it expired, or it was never processed while both the lock of the attempt that
    /// wrote it and any worker's lease have ended. A live lease is never overwritten: that
    /// would let the event be processed twice at the same moment.
    pub fn is_live(&self, now_ms: i64) -> bool {
        let expired = self.expires_at_s.saturating_mul(1000) <= now_ms;
        !expired && (self.processed || self.lock_until_ms > now_ms || self.lease_until_ms > now_ms)
    }
}

/// Durable record of events, dedup, worker leases and per-message/call state.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Write `event` unless a live record has its key ([`RecordTimes::is_live`]; expiry is
    /// checked here, TTL deletes late). `attempt` identifies the writer: a record this same
    /// attempt already wrote (a retried call whose first answer was lost) is `New`, not a
    /// duplicate of itself.
    async fn claim(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, StoreError>;

    /// Give up a claim after a failed enqueue, only if `attempt` still owns it: its lock ends
    /// now, so a retry, the fallback or the sweeper redoes it at once. (A queue-first record,
    /// which nothing sweeps, goes to the sweeper whoever wrote it: see `webhook-aws`.)
    async fn release(&self, key: &str, attempt: &str) -> Result<(), StoreError>;

    /// Worker: take a lease on an unprocessed record.
    async fn begin_processing(
        &self,
        key: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Processing, StoreError>;

    /// Worker: mark processed (no longer pending for the sweeper).
    async fn finish_processing(&self, key: &str, now_ms: i64) -> Result<(), StoreError>;

    /// Worker: drop the lease after a failure so the next delivery can retry at once.
    async fn abandon_processing(&self, key: &str) -> Result<(), StoreError>;

    /// Sweeper: unprocessed records whose lock ended before `lock_before_ms`, oldest first.
    /// A record that cannot be read is listed too ([`StaleEvent::Corrupt`] or
    /// [`StaleEvent::ReadFailed`]), never an error for the whole list: one bad record must
    /// not stop the sweep of the others.
    async fn stale_pending(
        &self,
        lock_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stale>, StoreError>;

    /// Sweeper: push the lock of a re-sent (or parked) record forward so it is not re-sent
    /// every sweep, and count the sweep: `sweeps` becomes `sweeps_read + 1` only if it still
    /// is `sweeps_read`, so a retried call (its first answer lost) cannot count twice.
    async fn extend_lock(
        &self,
        key: &str,
        lock_until_ms: i64,
        sweeps_read: u32,
    ) -> Result<(), StoreError>;

    /// Per-message / per-call state, with a version for optimistic concurrency.
    async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, StoreError>;

    /// Save if the stored version is still `expected` (`None`: must not exist). `Ok(false)` on
    /// a lost race: reload and fold again.
    async fn save_state(
        &self,
        id: &str,
        state: &StateRecord,
        expected: Option<u64>,
        expires_at_s: i64,
    ) -> Result<bool, StoreError>;

    /// The opt-out ledger of one subscriber ([`crate::consent`]), with its version.
    async fn load_consent(
        &self,
        subscriber: &str,
    ) -> Result<Option<(ConsentLedger, u64)>, StoreError>;

    /// Save if the stored version is still `expected` (`None`: must not exist); `Ok(false)` on
    /// a lost race. Never expires: consent is a compliance record.
    async fn save_consent(
        &self,
        subscriber: &str,
        ledger: &ConsentLedger,
        expected: Option<u64>,
    ) -> Result<bool, StoreError>;
}

/// Hands accepted events to the worker.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    async fn enqueue(&self, job: &Job) -> Result<(), StoreError>;
}

/// Optional third port: claim and, if new, enqueue in one atomic call (the transactional
/// outbox). For adapters whose store and queue live in one database (SQLite): one call instead
/// of two on the request path, and no moment where a record is claimed but not enqueued. With
/// DynamoDB + SQS the pipeline calls [`EventStore::claim`] then [`WorkQueue::enqueue`].
#[async_trait]
pub trait Outbox: Send + Sync {
    /// [`EventStore::claim`]; on [`Claim::New`] the event's job is already enqueued.
    async fn claim_and_enqueue(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, StoreError>;
}

/// What [`FoldInOne::process_in_one`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// Processed by this call: state folded, record marked processed.
    Processed,
    /// Already processed: acknowledge the message.
    AlreadyDone,
    /// Another worker holds a live lease: retry later.
    Busy,
    /// No record (expired): nothing to do.
    Missing,
}

/// Optional port: process an event whose only work is its state fold in one atomic call:
/// the checks of [`EventStore::begin_processing`], the fold, and
/// [`EventStore::finish_processing`], with no lease in between. For stores with transactions
/// (SQLite): one call instead of four. The worker uses it only when no slow work is configured
/// (slow work must run between a lease and the finish).
#[async_trait]
pub trait FoldInOne: Send + Sync {
    async fn process_in_one(
        &self,
        event: &EventRecord,
        now_ms: i64,
        state_expires_at_s: i64,
    ) -> Result<Folded, StoreError>;
}
