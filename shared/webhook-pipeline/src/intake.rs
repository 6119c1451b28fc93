//! The request path's port: record an accepted event once and hand it to the worker.
//! [`ClaimThenSend`] builds it from an [`EventLog`] and a [`WorkQueue`] (DynamoDB + SQS,
//! memory); an adapter whose log and queue share one database may implement [`Intake`] in one
//! transaction instead (`webhook-local` does, privately).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, warn};

use crate::store::{Claim, ClaimTimes, EventLog, EventRecord, Job, PortError, WorkQueue};

/// Which port an [`Intake`] failure came from (they are counted and logged apart).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Recording the event failed.
    #[error("event store failed: {0}")]
    Store(PortError),
    /// Handing it to the worker failed.
    #[error("work queue failed: {0}")]
    Queue(PortError),
}

/// Record an event and, if it is new, hand it to the worker; a duplicate gets the stored
/// reply. On `Ok(Claim::New)` the event is durably recorded and its job sent; on an error the
/// caller answers 5xx and Twilio's retry (or the fallback, or the sweeper) redoes it.
#[async_trait]
pub trait Intake: Send + Sync {
    /// One event; `attempt` names this request's write (see [`EventLog::claim`]).
    async fn record(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, IntakeError>;
}

/// How long freeing a failed claim may hold up the 5xx answer: the store may be what fails.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// [`Intake`] from two ports: claim, then send the job of a new event (2 sequential round
/// trips for a new event, 1 for a duplicate), or both at once with
/// [`ClaimThenSend::queue_first`].
pub struct ClaimThenSend {
    log: Arc<dyn EventLog>,
    queue: Arc<dyn WorkQueue>,
    queue_first: bool,
}

impl ClaimThenSend {
    /// Claim in `log`, send to `queue`.
    pub fn new(log: Arc<dyn EventLog>, queue: Arc<dyn WorkQueue>) -> Self {
        Self {
            log,
            queue,
            queue_first: false,
        }
    }

    /// Queue first (`QUEUE_FIRST`): the claim and the job's send run at once, for every copy,
    /// so the queue holds every accepted event and the answer waits for one round trip, new
    /// or duplicate. Success needs both; after a failed send the record goes to the sweeper
    /// ([`EventLog::release`]) in case no retry or fallback comes. The store must write
    /// records that no sweeper re-sends until then, and the worker must fold by the state
    /// record alone ([`crate::Worker::with_queue_first`]): a job can come without its record,
    /// or twice.
    pub fn queue_first(mut self, on: bool) -> Self {
        self.queue_first = on;
        self
    }

    /// Free a claim this attempt may hold, bounded by [`RELEASE_TIMEOUT`]; if even that fails
    /// the lock simply ends later.
    async fn release(&self, key: &str, attempt: &str) {
        match tokio::time::timeout(RELEASE_TIMEOUT, self.log.release(key, attempt)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%key, error = %e, "could not release the claim"),
            Err(_) => warn!(%key, "releasing the claim timed out"),
        }
    }

    async fn record_queue_first(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, IntakeError> {
        let job = Job {
            event: event.clone(),
        };
        let (claim, sent) =
            tokio::join!(self.log.claim(event, attempt, t), self.queue.enqueue(&job));
        match (claim, sent) {
            // A duplicate's job went out too: the worker folds it once all the same.
            (Ok(claim), Ok(())) => Ok(claim),
            // The job went out: the event will be folded (once), but the record may be
            // missing, so the answer is the usual 503 and Twilio's retry gets the reply.
            (Err(e), Ok(())) => Err(IntakeError::Store(e)),
            (_, Err(e)) => {
                // No job: the record (this attempt's, an earlier copy's, or a failed claim's
                // that landed with its answer lost) goes to the sweeper, in case no retry or
                // fallback ever comes; a copy that does come sends its own job first. Without
                // a record this changes nothing.
                self.release(&event.key, attempt).await;
                Err(IntakeError::Queue(e))
            }
        }
    }
}

#[async_trait]
impl Intake for ClaimThenSend {
    async fn record(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, IntakeError> {
        if self.queue_first {
            return self.record_queue_first(event, attempt, t).await;
        }
        match self.log.claim(event, attempt, t).await {
            Ok(Claim::New) => {}
            Ok(duplicate) => return Ok(duplicate),
            Err(e) => {
                // The write may have landed with its answer lost. Free it (only if this
                // attempt wrote it), so that Twilio's retry claims it at once instead of
                // finding it locked and unsent until the sweeper comes by.
                debug!(key = %event.key, error = %e, "claim failed; releasing it");
                self.release(&event.key, attempt).await;
                return Err(IntakeError::Store(e));
            }
        }
        let job = Job {
            event: event.clone(),
        };
        if let Err(e) = self.queue.enqueue(&job).await {
            // Free the record so Twilio's retry (or the fallback, or the sweeper) redoes it
            // now.
            self.release(&event.key, attempt).await;
            return Err(IntakeError::Queue(e));
        }
        Ok(Claim::New)
    }
}
