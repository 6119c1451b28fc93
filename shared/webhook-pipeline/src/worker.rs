//! The worker: folds status into state records and runs the slow work, idempotently (a queue
//! can deliver a job twice), plus the sweeper that re-sends records accepted but never processed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, error, info, warn};

use crate::consent::{ConsentLedger, Consents};
use crate::metrics::{Metrics, Unit};
use crate::pipeline::{Clock, system_clock};
use crate::state::StateRecord;
use crate::store::{ErrorKind, EventRecord, Job, PortError, Processing, Stale, Store, WorkQueue};

/// Slow work a user adds, run once per accepted event (after the state fold). Return an
/// error to have the job retried (and, after the queue's max receives, dead-lettered).
#[async_trait]
pub trait SlowWork: Send + Sync {
    /// Its name in logs and metrics (the `Work` dimension).
    fn name(&self) -> &'static str;
    /// Do the work for one event; it may run again for the same event (a redelivery), so
    /// receivers should deduplicate by its key.
    async fn run(&self, event: &EventRecord) -> Result<(), WorkError>;
    /// The longest one `run` can take (its timeouts and retries): a Lambda batch starts a
    /// record only if this much time is left before the invocation's deadline.
    fn max_duration(&self) -> Duration {
        Duration::ZERO
    }
}

/// Time allowed for one record's store calls (lease, state fold, finish) when budgeting a
/// batch against a deadline: they take milliseconds; one that stalls longer is cut short by
/// the SDK's timeouts, and the lease keeps a second worker away meanwhile.
pub const STORE_ALLOWANCE: Duration = Duration::from_secs(2);

/// A failed [`SlowWork::run`]: why, in words that may be logged (no personal data).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkError(pub String);

/// Why a job failed: the queue delivers it again (see [`WorkerError::is_permanent`]).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A store call failed.
    #[error("store: {0}")]
    Store(#[from] PortError),
    /// Another worker holds the record's lease: not a failure of the job.
    #[error("another worker is processing {0}")]
    Busy(String),
    /// A slow work failed.
    #[error("{work} failed: {error}")]
    Work {
        /// Its [`SlowWork::name`].
        work: &'static str,
        /// Its error.
        error: WorkError,
    },
    /// The state or consent record (named) kept changing under the fold: retry later.
    #[error("state record {0} kept changing under us")]
    Contention(String),
    /// Queue first and slow work together (refused: see [`Worker::with_queue_first`]).
    #[error("QUEUE_FIRST with slow work: the slow work needs a lease and a processed mark")]
    QueueFirstWithSlowWork,
}

impl WorkerError {
    /// Whether retrying the job cannot help: a store call failed for good (an unreadable
    /// state record...). The local queue dead-letters such a job at once; SQS counts receives.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Store(e) if e.kind() == ErrorKind::Permanent)
    }
}

/// What a job did besides its outcome, for its summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobReport {
    /// How long the slow work (`FORWARD_URL`) took in all, when it ran.
    pub slow_work_ms: Option<f64>,
}

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: folded into its state (and consent) record, slow work run.
    Processed,
    /// Already processed (a redelivery) or expired: acknowledged without effect.
    Skipped,
}

/// Lease, sweep and lifetime settings of the worker.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// How long one processing attempt owns a record; must cover the slow work.
    pub lease: Duration,
    /// A record whose lock ended this long ago and is still unprocessed gets re-sent.
    pub sweep_grace: Duration,
    /// After this many re-sends the sweeper parks a record (it is in the DLQ by then).
    pub max_sweeps: u32,
    /// How long records live (`EVENT_TTL_SECONDS`): state records, parked records, and
    /// the age past which a queue-first job is dropped.
    pub event_ttl: Duration,
}

impl WorkerSettings {
    /// The defaults, with `WORKER_LEASE_SECONDS` and `SWEEP_GRACE_SECONDS` when set (tests and
    /// the fault harness shorten them; production keeps the defaults).
    pub fn from_env(event_ttl: Duration) -> Result<Self, crate::config::ConfigError> {
        use crate::config::{SWEEP_GRACE_SECONDS, WORKER_LEASE_SECONDS, secs};
        let d = Self::default();
        Ok(Self {
            lease: secs(WORKER_LEASE_SECONDS, d.lease, 1..=900)?,
            sweep_grace: secs(SWEEP_GRACE_SECONDS, d.sweep_grace, 1..=86_400)?,
            event_ttl,
            ..d
        })
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            sweep_grace: Duration::from_secs(120),
            max_sweeps: 3,
            event_ttl: crate::config::DEFAULT_EVENT_TTL,
        }
    }
}

/// Processes jobs (state fold, consent, slow work) and sweeps; built once at cold start.
pub struct Worker {
    store: Arc<dyn Store>,
    queue: Arc<dyn WorkQueue>,
    work: Vec<Arc<dyn SlowWork>>,
    /// Fold by the state record alone ([`Worker::with_queue_first`]).
    queue_first: bool,
    settings: WorkerSettings,
    clock: Clock,
    metrics: Metrics,
}

impl Worker {
    /// A worker over `store`; the sweeper re-sends to `queue`.
    pub fn new(store: Arc<dyn Store>, queue: Arc<dyn WorkQueue>, settings: WorkerSettings) -> Self {
        Self {
            store,
            queue,
            work: Vec::new(),
            queue_first: false,
            settings,
            clock: system_clock(),
            metrics: Metrics::disabled(),
        }
    }

    /// Count processed and failed jobs, event age, slow work latency and sweeps.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Queue first (`QUEUE_FIRST`, [`crate::ClaimThenSend::queue_first`]): every accepted
    /// event is a job, its record only the webhook's reply cache. A job is folded into its
    /// state and consent records and nothing else is written: no lease, no processed mark.
    /// The sweeper only sees records whose send failed; once it has re-sent one it takes it
    /// out of the index (`finish_processing`), since the queue holds it from then on.
    /// The fold is once-only by itself (the state record remembers the keys it applied; the
    /// ledger keeps the latest event per pair), so a job delivered twice, or sent by two
    /// copies of one webhook, changes nothing the second time. Not with slow work, which must
    /// run once between a lease and a processed mark: with both, jobs fail (configuration
    /// refuses the pair at cold start).
    pub fn with_queue_first(mut self, on: bool) -> Self {
        self.queue_first = on;
        self
    }

    /// Add slow work, run in the order added.
    pub fn with_work(mut self, work: Arc<dyn SlowWork>) -> Self {
        self.work.push(work);
        self
    }

    /// Use `clock` instead of the wall clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Its settings.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// The longest one job can take: the slow work's worst case plus [`STORE_ALLOWANCE`].
    pub fn record_budget(&self) -> Duration {
        self.work.iter().map(|w| w.max_duration()).sum::<Duration>() + STORE_ALLOWANCE
    }

    /// Whether slow work runs for each event (else the state fold is all there is to do).
    pub fn has_slow_work(&self) -> bool {
        !self.work.is_empty()
    }

    /// Process one job. `Err` means "retry this job later".
    pub async fn process(&self, job: &Job) -> Result<Outcome, WorkerError> {
        self.process_reported(job).await.0
    }

    /// [`Worker::process`], with what its summary line reports besides the outcome.
    pub async fn process_reported(&self, job: &Job) -> (Result<Outcome, WorkerError>, JobReport) {
        let mut report = JobReport::default();
        let result = self.process_uncounted(job, &mut report).await;
        let kind = [("Kind", job.event.kind.as_str())];
        match &result {
            Ok(Outcome::Processed) => {
                let age = ((self.clock)() - job.event.received_at).max(0) as f64;
                self.metrics.emit(
                    &kind,
                    &[
                        ("Processed", Unit::Count, 1.0),
                        ("EventAge", Unit::Milliseconds, age),
                    ],
                );
            }
            Ok(Outcome::Skipped) => {}
            // Another worker has it: not a failure of the job.
            Err(WorkerError::Busy(_)) => {}
            Err(_) => self.metrics.emit(&kind, &[("JobFailed", Unit::Count, 1.0)]),
        }
        (result, report)
    }

    async fn process_uncounted(
        &self,
        job: &Job,
        report: &mut JobReport,
    ) -> Result<Outcome, WorkerError> {
        let key = &job.event.key;
        let now = (self.clock)();
        if self.queue_first {
            if !self.work.is_empty() {
                return Err(WorkerError::QueueFirstWithSlowWork);
            }
            // A job older than the records' lifetime (a late DLQ redrive) could meet a state
            // record that forgot it: it is dropped, as an expired record would be.
            let ttl_ms = self.settings.event_ttl.as_millis() as i64;
            if now - job.event.received_at > ttl_ms {
                return Ok(Outcome::Skipped);
            }
            let folded = self.fold_state(&job.event).await?;
            self.fold_consent(&job.event).await?;
            return Ok(if folded == Some(false) {
                Outcome::Skipped
            } else {
                debug!(%key, kind = %job.event.kind, "event processed");
                Outcome::Processed
            });
        }
        let lease_until = now + self.settings.lease.as_millis() as i64;
        match self.store.begin_processing(key, now, lease_until).await? {
            Processing::Ready => {}
            Processing::AlreadyDone | Processing::Missing => return Ok(Outcome::Skipped),
            Processing::Busy => return Err(WorkerError::Busy(key.clone())),
        }
        if let Err(e) = self.run(&job.event, report).await {
            if let Err(release) = self.store.abandon_processing(key).await {
                warn!(%key, error = %release, "could not drop the worker lease");
            }
            return Err(e);
        }
        self.store.finish_processing(key, (self.clock)()).await?;
        debug!(%key, kind = %job.event.kind, "event processed");
        Ok(Outcome::Processed)
    }

    async fn run(&self, event: &EventRecord, report: &mut JobReport) -> Result<(), WorkerError> {
        self.fold_state(event).await?;
        self.fold_consent(event).await?;
        for w in &self.work {
            let started = std::time::Instant::now();
            let result = w.run(event).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            *report.slow_work_ms.get_or_insert(0.0) += ms;
            self.metrics.emit(
                &[("Work", w.name())],
                &[("ForwardLatency", Unit::Milliseconds, ms)],
            );
            result.map_err(|error| WorkerError::Work {
                work: w.name(),
                error,
            })?;
        }
        Ok(())
    }

    /// Optimistic read-modify-write of the state record; a lost race reloads and folds again.
    /// `Some(false)`: the record had it already; `None`: the event changes no state.
    async fn fold_state(&self, event: &EventRecord) -> Result<Option<bool>, WorkerError> {
        let Some(update) = &event.state_update else {
            return Ok(None);
        };
        let expires = (self.clock)() / 1000 + self.settings.event_ttl.as_secs() as i64;
        // An inbound message or call (or its fallback) starts its record: try to create it
        // without reading it first (the read costs as much as a third of the fold). If it
        // exists after all (a copy's job, a status callback that came first), the failed
        // create is the read-modify-write's first lost race.
        if matches!(
            event.kind.as_str(),
            "inbound_message" | "inbound_call" | "fallback"
        ) {
            let mut state = StateRecord::default();
            state.apply(update, &event.key, event.received_at);
            if self
                .store
                .save_state(&update.id, &state, None, expires)
                .await?
            {
                return Ok(Some(true));
            }
        }
        for _ in 0..16 {
            let (mut state, version) = match self.store.load_state(&update.id).await? {
                Some((s, v)) => (s, Some(v)),
                None => (StateRecord::default(), None),
            };
            if !state.apply(update, &event.key, event.received_at) {
                return Ok(Some(false));
            }
            if self
                .store
                .save_state(&update.id, &state, version, expires)
                .await?
            {
                return Ok(Some(true));
            }
        }
        Err(WorkerError::Contention(update.id.clone()))
    }

    /// The opt-out ledger, as the state: optimistic read-modify-write. Applying is idempotent
    /// and keeps the latest event per pair, so a redelivery or a late event changes nothing.
    async fn fold_consent(&self, event: &EventRecord) -> Result<(), WorkerError> {
        let Some(update) = &event.consent else {
            return Ok(());
        };
        for _ in 0..16 {
            let (mut ledger, version) = match self.store.load_consent(&update.subscriber).await? {
                Some((l, v)) => (l, Some(v)),
                None => (ConsentLedger::default(), None),
            };
            if !ledger.apply(update) {
                return Ok(());
            }
            if self
                .store
                .save_consent(&update.subscriber, &ledger, version)
                .await?
            {
                info!(key = %event.key, action = ?update.action, via = ?update.via, "consent updated");
                return Ok(());
            }
        }
        // The key, not the subscriber's number: logs carry no phone numbers.
        Err(WorkerError::Contention(format!(
            "consent ledger of {}",
            event.key
        )))
    }

    /// Read access to the opt-out ledger, for slow work that must check consent before
    /// sending (keep it in the work: `worker.with_work(Arc::new(MyWork { consents:
    /// worker.consents() }))`).
    pub fn consents(&self) -> Consents {
        Consents::new(self.store.clone())
    }

    /// Re-send records that were accepted but never processed (the function died between the
    /// record and the enqueue, or the message was lost). Each record is handled on its own: a
    /// failed read, enqueue or lock extension is counted and logged, and the sweep goes on.
    /// `Err` only when the stale records could not be listed at all.
    pub async fn sweep(&self) -> Result<SweepReport, PortError> {
        let now = (self.clock)();
        let grace = self.settings.sweep_grace.as_millis() as i64;
        let stale = self.store.stale_pending(now - grace, 100).await?;
        let mut report = SweepReport::default();
        let park_until = now + self.settings.event_ttl.as_millis() as i64;
        for Stale { key, sweeps, event } in stale {
            let event = match event {
                Ok(event) => *event,
                Err(why) if why.kind() == ErrorKind::Permanent => {
                    // It never will be readable: park it so it stops blocking the sweep.
                    error!(%key, error = %why, "unreadable event record parked");
                    match self.store.extend_lock(&key, park_until, sweeps).await {
                        Ok(()) => report.parked += 1,
                        Err(e) => report.fail(&key, "park", &e),
                    }
                    continue;
                }
                Err(e) => {
                    report.fail(&key, "read", &e);
                    continue;
                }
            };
            if sweeps >= self.settings.max_sweeps {
                // Parked until it expires: re-sending a poison event forever helps no one.
                error!(%key, sweeps, "event never processed; parked (see the DLQ)");
                match self.store.extend_lock(&key, park_until, sweeps).await {
                    Ok(()) => report.parked += 1,
                    Err(e) => report.fail(&key, "park", &e),
                }
                continue;
            }
            if let Err(e) = self.queue.enqueue(&Job { event }).await {
                report.fail(&key, "enqueue", &e);
                continue;
            }
            if self.queue_first {
                // The queue holds it now, and the worker will not mark it processed: the
                // record leaves the sweeper's index here (a failure re-sends it next time,
                // folded once all the same).
                if let Err(e) = self.store.finish_processing(&key, now).await {
                    report.fail(&key, "hand over", &e);
                }
                warn!(%key, sweeps, "re-sent an event whose job was never sent");
                report.resent += 1;
                continue;
            }
            // Back off: 2, 4, 8 minutes... beyond the grace before the next re-send. If this
            // fails the record is re-sent at the next sweep: a duplicate job, which the
            // worker's lease and processed mark make harmless.
            let next = now + grace * (1 << sweeps.min(10));
            if let Err(e) = self.store.extend_lock(&key, next, sweeps).await {
                report.fail(&key, "extend the lock of", &e);
            }
            warn!(%key, sweeps, "re-sent an event that was never processed");
            report.resent += 1;
        }
        self.metrics.emit(
            &[],
            &[
                ("Resent", Unit::Count, report.resent as f64),
                ("Parked", Unit::Count, report.parked as f64),
                ("SweepFailed", Unit::Count, report.failed as f64),
            ],
        );
        Ok(report)
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SweepReport {
    /// Records sent to the work queue again.
    pub resent: usize,
    /// Records set aside until they expire (too many re-sends, or unreadable).
    pub parked: usize,
    /// Records skipped because a call failed; the next sweep tries them again.
    pub failed: usize,
}

impl SweepReport {
    fn fail(&mut self, key: &str, what: &str, e: &PortError) {
        error!(%key, error = %e, "sweeper could not {what} a record; it is tried again at the next sweep");
        self.failed += 1;
    }
}
