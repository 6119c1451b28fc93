//! In-memory adapters: for tests, benchmarks and as the reference the contract suite checks.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use webhook_pipeline::consent::ConsentLedger;
use webhook_pipeline::lifecycle::{self, Params, RecordFields, RecordState};
use webhook_pipeline::replay::{Candidate, ReplayFilter, ReplaySource};
use webhook_pipeline::state::StateRecord;
use webhook_pipeline::store::{
    Claim, ClaimTimes, ConsentStore, EventLog, EventRecord, Job, Leases, PortError, Processing,
    Stale, StateStore, WorkQueue,
};

#[derive(Debug, Clone)]
struct Row {
    event: EventRecord,
    rec: RecordState,
}

impl Row {
    fn fields(&self) -> RecordFields<'_> {
        self.rec.fields()
    }
}

/// Whether `rule` allows the transition on the record under `key` (the one rule of
/// [`lifecycle`]), and the record if so.
fn allowed<'a>(
    rows: &'a mut HashMap<String, Row>,
    key: &str,
    rule: lifecycle::Cond,
    p: &Params<'_>,
) -> Option<&'a mut Row> {
    rows.get_mut(key)
        .filter(|r| rule.holds(Some(&r.fields()), p))
}

fn at(now_ms: i64) -> Params<'static> {
    Params {
        now_ms,
        ..Params::default()
    }
}

#[derive(Default)]
struct Inner {
    rows: HashMap<String, Row>,
    states: HashMap<String, (StateRecord, u64)>,
    consents: HashMap<String, (ConsentLedger, u64)>,
}

/// A `Mutex<HashMap>` store with the same semantics as the DynamoDB one.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Number of upcoming calls that fail, to test error paths.
    pub fail_next: AtomicUsize,
    /// Number of upcoming claims that take effect but answer an error (a lost answer).
    pub lose_next_answer: AtomicUsize,
}

impl MemoryStore {
    fn check_fail(&self) -> Result<(), PortError> {
        let n = self.fail_next.load(Ordering::SeqCst);
        if n > 0 {
            self.fail_next.store(n - 1, Ordering::SeqCst);
            return Err(PortError::retryable("injected store failure"));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of stored event records.
    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    /// Whether no event record is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the record under `key` is processed; `None` without one.
    pub fn is_processed(&self, key: &str) -> Option<bool> {
        self.lock().rows.get(key).map(|r| r.rec.processed)
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn claim(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, PortError> {
        self.check_fail()?;
        let mut g = self.lock();
        let p = Params {
            now_ms: t.now_ms,
            attempt,
            ..Params::default()
        };
        let row = g.rows.get(&event.key);
        let claim = lifecycle::claim_outcome(row.map(Row::fields).as_ref(), &p, || {
            row.map(|r| r.event.reply.clone())
                .ok_or_else(|| PortError::permanent("no record to reply from"))
        })?;
        if claim != Claim::New {
            return Ok(claim);
        }
        g.rows.insert(
            event.key.clone(),
            Row {
                event: event.clone(),
                rec: RecordState::claimed(attempt, &t),
            },
        );
        drop(g);
        let lost = self.lose_next_answer.load(Ordering::SeqCst);
        if lost > 0 {
            self.lose_next_answer.store(lost - 1, Ordering::SeqCst);
            return Err(PortError::retryable(
                "injected lost answer (the write took effect)",
            ));
        }
        Ok(Claim::New)
    }

    async fn release(&self, key: &str, attempt: &str) -> Result<(), PortError> {
        self.check_fail()?;
        let p = Params {
            attempt,
            ..Params::default()
        };
        if let Some(row) = allowed(&mut self.lock().rows, key, lifecycle::RELEASE, &p) {
            row.rec.lock_until_ms = 0;
        }
        Ok(())
    }

    async fn stale_pending(
        &self,
        lock_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stale>, PortError> {
        self.check_fail()?;
        let g = self.lock();
        let mut rows: Vec<&Row> = g
            .rows
            .values()
            .filter(|r| !r.rec.processed && r.rec.lock_until_ms < lock_before_ms)
            .collect();
        rows.sort_by_key(|r| r.rec.lock_until_ms);
        Ok(rows
            .into_iter()
            .take(limit)
            .map(|r| Stale {
                key: r.event.key.clone(),
                sweeps: r.rec.sweeps,
                event: Ok(Box::new(r.event.clone())),
            })
            .collect())
    }

    async fn extend_lock(
        &self,
        key: &str,
        lock_until_ms: i64,
        sweeps_read: u32,
    ) -> Result<(), PortError> {
        self.check_fail()?;
        let p = Params {
            sweeps_read,
            ..Params::default()
        };
        if let Some(row) = allowed(&mut self.lock().rows, key, lifecycle::EXTEND_LOCK, &p) {
            row.rec.lock_until_ms = lock_until_ms;
            row.rec.sweeps += 1;
        }
        Ok(())
    }
}

#[async_trait]
impl Leases for MemoryStore {
    async fn begin_processing(
        &self,
        key: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Processing, PortError> {
        self.check_fail()?;
        let mut g = self.lock();
        let row = g.rows.get_mut(key);
        let outcome =
            lifecycle::lease_outcome(row.as_ref().map(|r| r.fields()).as_ref(), &at(now_ms));
        if let (Processing::Ready, Some(row)) = (&outcome, row) {
            row.rec.lease_until_ms = lease_until_ms;
        }
        Ok(outcome)
    }

    async fn finish_processing(&self, key: &str, now_ms: i64) -> Result<(), PortError> {
        self.check_fail()?;
        if let Some(row) = allowed(&mut self.lock().rows, key, lifecycle::FINISH, &at(now_ms)) {
            row.rec.processed = true;
        }
        Ok(())
    }

    async fn abandon_processing(&self, key: &str) -> Result<(), PortError> {
        self.check_fail()?;
        if let Some(row) = allowed(&mut self.lock().rows, key, lifecycle::ABANDON, &at(0)) {
            row.rec.lease_until_ms = 0;
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, PortError> {
        self.check_fail()?;
        Ok(self.lock().states.get(id).cloned())
    }

    async fn save_state(
        &self,
        id: &str,
        state: &StateRecord,
        expected: Option<u64>,
        _expires_at_s: i64,
    ) -> Result<bool, PortError> {
        self.check_fail()?;
        let mut g = self.lock();
        let current = g.states.get(id).map(|(_, v)| *v);
        if current != expected {
            return Ok(false);
        }
        g.states
            .insert(id.to_owned(), (state.clone(), expected.unwrap_or(0) + 1));
        Ok(true)
    }
}

#[async_trait]
impl ConsentStore for MemoryStore {
    async fn load_consent(
        &self,
        subscriber: &str,
    ) -> Result<Option<(ConsentLedger, u64)>, PortError> {
        self.check_fail()?;
        Ok(self.lock().consents.get(subscriber).cloned())
    }

    async fn save_consent(
        &self,
        subscriber: &str,
        ledger: &ConsentLedger,
        expected: Option<u64>,
    ) -> Result<bool, PortError> {
        self.check_fail()?;
        let mut g = self.lock();
        let current = g.consents.get(subscriber).map(|(_, v)| *v);
        if current != expected {
            return Ok(false);
        }
        g.consents.insert(
            subscriber.to_owned(),
            (ledger.clone(), expected.unwrap_or(0) + 1),
        );
        Ok(true)
    }
}

#[async_trait]
impl ReplaySource for MemoryStore {
    async fn candidates(
        &self,
        filter: &ReplayFilter,
        now_ms: i64,
    ) -> Result<(Vec<Candidate>, usize), PortError> {
        self.check_fail()?;
        let g = self.lock();
        let mut out: Vec<Candidate> = g
            .rows
            .values()
            .filter(|r| {
                r.rec.expires_at_s.saturating_mul(1000) > now_ms && filter.matches(&r.event)
            })
            .map(|r| Candidate {
                event: r.event.clone(),
                processed: r.rec.processed,
            })
            .collect();
        out.sort_by_key(|c| c.event.received_at);
        Ok((out, 0))
    }

    async fn reopen(&self, key: &str, now_ms: i64, lock_until_ms: i64) -> Result<bool, PortError> {
        self.check_fail()?;
        let mut g = self.lock();
        let Some(row) = allowed(&mut g.rows, key, lifecycle::REOPEN, &at(now_ms)) else {
            return Ok(false);
        };
        row.rec.processed = false;
        row.rec.lease_until_ms = 0;
        row.rec.sweeps = 0;
        row.rec.lock_until_ms = lock_until_ms;
        Ok(true)
    }
}

/// A FIFO of jobs.
#[derive(Default)]
pub struct MemoryQueue {
    jobs: Mutex<VecDeque<Job>>,
    /// Number of upcoming sends that fail.
    pub fail_next: AtomicUsize,
    /// Successful sends so far.
    pub sent: AtomicUsize,
}

impl MemoryQueue {
    /// Take the oldest job.
    pub fn pop(&self) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// Number of jobs waiting.
    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl WorkQueue for MemoryQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), PortError> {
        let n = self.fail_next.load(Ordering::SeqCst);
        if n > 0 {
            self.fail_next.store(n - 1, Ordering::SeqCst);
            return Err(PortError::retryable("injected queue failure"));
        }
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job.clone());
        self.sent.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
