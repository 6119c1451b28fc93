//! The local worker loop: receive → [`Worker::process`] → ack / nack, plus the sweeper every
//! minute (what SQS + EventBridge do in the cloud).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};
use webhook_pipeline::Worker;
use webhook_pipeline::summary::{JobOutcome, JobSummary};
use webhook_pipeline::worker::SweepReport;
use webhook_pipeline::worker::WorkerError;

use crate::queue::{JobId, SqliteQueue};
use crate::store::SqliteStore;

/// How the worker loop batches, polls and sweeps.
#[derive(Debug, Clone, Copy)]
pub struct LoopSettings {
    /// Jobs taken per receive. Large, because each job's calls wait for the request lane
    /// (see `Database`): the worker keeps up with `serve` at full load only with big batches.
    pub batch: usize,
    /// Jobs of a batch processed at the same time. Their database calls share transactions
    /// (see `Database`), so under load this is what lets the worker keep up; jobs of one batch
    /// may finish in any order (as with SQS). A crash repeats the slow work of the jobs in
    /// flight, so `serve` uses 1 when there is slow work (see `ServeConfig::slow_work`).
    pub concurrency: usize,
    /// How long a received job stays invisible; longer than processing one batch.
    pub visibility: Duration,
    /// How often the sweeper runs (EventBridge's 1 minute in the cloud).
    pub sweep_every: Duration,
    /// Longest sleep when idle (catches jobs whose backoff ended).
    pub idle_poll: Duration,
    /// When another worker holds a record's lease, look again after this.
    pub busy_delay: Duration,
    /// Jobs folded per database call when the worker folds in the database (see
    /// [`WorkerLoop::folding_in_database`]): each call is part of a transaction that webhook
    /// requests wait for, so it stays short (~64 × 10 µs).
    pub fold_batch: usize,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            batch: 256,
            concurrency: 256,
            visibility: Duration::from_secs(300),
            sweep_every: Duration::from_secs(60),
            idle_poll: Duration::from_secs(1),
            busy_delay: Duration::from_secs(5),
            fold_batch: 64,
        }
    }
}

/// The worker loop; see [`run_worker`] for the plain version.
pub struct WorkerLoop {
    worker: Arc<Worker>,
    queue: Arc<SqliteQueue>,
    store: Option<Arc<SqliteStore>>,
    settings: LoopSettings,
    fold_in_database: bool,
}

impl WorkerLoop {
    /// Runs `worker` on the jobs of `queue`, with default settings.
    pub fn new(worker: Arc<Worker>, queue: Arc<SqliteQueue>) -> Self {
        Self {
            worker,
            queue,
            store: None,
            settings: LoopSettings::default(),
            fold_in_database: false,
        }
    }

    /// While the worker has no slow work, process jobs with [`SqliteQueue::fold_ready`]: many
    /// jobs per database call, none of them passing through [`Worker::process`]. The worker's
    /// store must be the queue's database (as in `serve`). Jobs that fail there are taken one
    /// by one through the worker (retries, backoff and dead letters as usual).
    pub fn folding_in_database(mut self) -> Self {
        self.fold_in_database = true;
        self
    }

    /// Also purge expired records at each sweep (DynamoDB's TTL in the cloud).
    pub fn with_store(mut self, store: Arc<SqliteStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Use these settings instead of the defaults.
    pub fn with_settings(mut self, settings: LoopSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Run until `shutdown` turns true (or its sender is dropped). Jobs being processed are
    /// finished first; jobs received but not started are put back for the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let s = self.settings;
        let mut next_sweep = Instant::now();
        info!("worker started");
        while !stopping(&shutdown) {
            if Instant::now() >= next_sweep {
                self.sweep().await;
                next_sweep = Instant::now() + s.sweep_every;
            }
            if self.fold_in_database && !self.worker.has_slow_work() {
                match self.fold_ready().await {
                    Ok(0) => {
                        self.idle(&mut shutdown, next_sweep).await;
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(
                            error = %e,
                            "could not fold jobs in one transaction; taking them one by one"
                        );
                        // Pending records become ordinary jobs, so the receive below gets
                        // them too.
                        if let Err(e) = self.queue.set_aside_records(s.batch).await {
                            error!(error = %e, "could not hand pending records to the job queue");
                        }
                    }
                }
            }
            let jobs = match self.queue.receive(s.batch, s.visibility).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    error!(error = %e, "could not receive jobs; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if jobs.is_empty() {
                self.idle(&mut shutdown, next_sweep).await;
                continue;
            }
            let mut jobs = jobs.into_iter().peekable();
            let mut running = tokio::task::JoinSet::new();
            // Done jobs are acknowledged together once the batch is over: one database call
            // instead of one each. A crash before that redelivers them, and the worker then
            // finds them processed (Outcome::Skipped) and acknowledges them again.
            let mut done = Vec::new();
            while jobs.peek().is_some() && !stopping(&shutdown) {
                if running.len() >= s.concurrency.max(1) {
                    done.extend(joined(running.join_next().await));
                    continue;
                }
                let (id, job) = jobs.next().expect("peeked");
                running.spawn(handle(
                    self.worker.clone(),
                    self.queue.clone(),
                    s.busy_delay,
                    id,
                    job,
                ));
            }
            // Jobs already started are finished, even when stopping.
            while let Some(r) = running.join_next().await {
                done.extend(joined(Some(r)));
            }
            if let Err(e) = self.queue.ack_many(done).await {
                error!(error = %e, "could not acknowledge jobs (they come back after their visibility timeout)");
            }
            for (id, _) in jobs {
                if let Err(e) = self.queue.defer(id, Duration::ZERO).await {
                    warn!(job = id, error = %e, "could not put a job back (it comes back after its visibility timeout)");
                }
            }
        }
        info!("worker stopped");
    }

    /// Nothing to do: wait for an enqueue, the idle poll, the next sweep or shutdown.
    async fn idle(&self, shutdown: &mut watch::Receiver<bool>, next_sweep: Instant) {
        let wait = self
            .settings
            .idle_poll
            .min(next_sweep.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = self.queue.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }

    /// One [`SqliteQueue::fold_ready`] call; how many jobs it took.
    async fn fold_ready(&self) -> Result<usize, webhook_pipeline::PortError> {
        let s = &self.settings;
        let report = self
            .queue
            .fold_ready(
                s.fold_batch.max(1),
                self.worker.settings().event_ttl,
                s.busy_delay,
                tracing::enabled!(tracing::Level::INFO),
            )
            .await?;
        for (key, kind) in &report.named {
            JobSummary {
                outcome: JobOutcome::Processed,
                key: Some(key),
                kind: Some(kind),
                attempts: None,
                forward_ms: None,
                message_id: None,
                error: None,
            }
            .log();
        }
        if report.deferred > 0 {
            debug!(
                jobs = report.deferred,
                "another worker holds their records; looking again later"
            );
        }
        Ok(report.taken)
    }

    async fn sweep(&self) {
        match self.worker.sweep().await {
            Ok(r) if r == SweepReport::default() => {}
            Ok(r) => warn!(
                resent = r.resent,
                parked = r.parked,
                failed = r.failed,
                "sweeper acted on events that were never processed"
            ),
            Err(e) => error!(error = %e, "sweep failed"),
        }
        if let Err(e) = self.queue.prune_done().await {
            warn!(error = %e, "could not prune acknowledged jobs");
        }
        if let Some(store) = &self.store {
            match store.purge_expired(crate::db::now_ms()).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "purged expired records"),
                Err(e) => warn!(error = %e, "could not purge expired records"),
            }
        }
    }
}

/// Process one job, then nack or defer it; `Some(id)` when it is done and must be acknowledged.
async fn handle(
    worker: Arc<Worker>,
    queue: Arc<SqliteQueue>,
    busy_delay: Duration,
    id: JobId,
    job: webhook_pipeline::Job,
) -> Option<JobId> {
    let (result, report) = worker.process_reported(&job).await;
    JobSummary {
        outcome: JobOutcome::of(&result),
        key: Some(&job.event.key),
        kind: Some(&job.event.kind),
        attempts: None,
        forward_ms: report.slow_work_ms,
        message_id: None,
        error: result.as_ref().err().map(|e| e as &dyn std::fmt::Display),
    }
    .log();
    let result = match result {
        Ok(_) => return Some(id),
        Err(WorkerError::Busy(_)) => queue.defer(id, busy_delay).await,
        Err(e) if e.is_permanent() => queue.dead_letter(id, &e.to_string()).await,
        Err(e) => queue.nack(id, &e.to_string()).await,
    };
    if let Err(e) = result {
        error!(job = id, error = %e, "could not settle a job (it comes back after its visibility timeout)");
    }
    None
}

/// The job to acknowledge, if the task ended with one.
fn joined(r: Option<Result<Option<JobId>, tokio::task::JoinError>>) -> Option<JobId> {
    match r? {
        Ok(done) => done,
        Err(e) => {
            // The job stays invisible until its visibility timeout, then comes back.
            error!(error = %e, "job task failed");
            None
        }
    }
}

fn stopping(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow() || shutdown.has_changed().is_err()
}

/// Receive → process → ack / nack until `shutdown` turns true; sweeps every 60 s.
pub async fn run_worker(
    worker: Arc<Worker>,
    queue: Arc<SqliteQueue>,
    shutdown: watch::Receiver<bool>,
) {
    WorkerLoop::new(worker, queue).run(shutdown).await
}
