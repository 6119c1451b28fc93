//! **The record lifecycle, written once.** Every transition of a stored event record (claim,
//! release, lease, abandon, sweep, reopen) is allowed by one [`Cond`] over the record's fields
//! ([`RecordFields`]). The memory and SQLite adapters evaluate it ([`Cond::holds`]) inside
//! their atomic step; DynamoDB sends it as the write's `ConditionExpression`
//! ([`Cond::dynamo`]). The outcome an adapter reports for a refused write is decided here too
//! ([`claim_outcome`], [`lease_outcome`]), so the adapters cannot disagree; the contract suite
//! (`webhook_testkit::contract`) drives every transition through each of them.

use crate::store::{Claim, Processing};

/// A condition over one stored event record (or its absence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// There is no record under the key.
    Absent,
    /// The record's TTL passed (`expires_at_s * 1000 <= now_ms`): it no longer counts, even
    /// if the store has not deleted it yet (DynamoDB's TTL deletes days late).
    Expired,
    /// A worker finished it.
    Processed,
    /// The lock of the attempt that wrote it ended (`lock_until_ms <= now_ms`).
    LockEnded,
    /// No worker holds a lease on it (`lease_until_ms <= now_ms`; none: 0).
    LeaseEnded,
    /// It was written by the calling attempt ([`Params::attempt`]).
    OwnAttempt,
    /// Its lease was taken by the calling lease taker ([`Params::lease_owner`]): a retried
    /// call whose first answer was lost. Only adapters whose calls are retried name the taker.
    OwnLease,
    /// Its sweep count is still the one the sweeper read ([`Params::sweeps_read`]).
    SweepsRead,
    /// The condition does not hold.
    Not(&'static Cond),
    /// Every condition holds.
    All(&'static [Cond]),
    /// At least one condition holds.
    Any(&'static [Cond]),
}

use Cond::*;

/// A new copy of an event may write its record ([`crate::store::EventLog::claim`]): there is
/// none, it expired, or it was never processed while no lease is live and either its writer's
/// lock ended or the writer is this very attempt (a retried write whose answer was lost).
/// Otherwise the record is *live* and the copy is a duplicate. A live lease is never
/// overwritten: that would let the event be processed twice at the same moment.
pub const CLAIM: Cond = Any(&[
    Absent,
    Expired,
    All(&[Not(&Processed), LeaseEnded, Any(&[LockEnded, OwnAttempt])]),
]);

/// The attempt that wrote a record may end its lock after a failed send
/// ([`crate::store::EventLog::release`]) while it is unprocessed.
pub const RELEASE: Cond = All(&[Not(&Absent), OwnAttempt, Not(&Processed)]);

/// A worker may take the lease ([`crate::store::Leases::begin_processing`]): the record is
/// there, unprocessed, and nobody else's lease is live.
pub const TAKE_LEASE: Cond = All(&[Not(&Absent), Not(&Processed), Any(&[LeaseEnded, OwnLease])]);

/// A worker may mark the record processed ([`crate::store::Leases::finish_processing`]).
pub const FINISH: Cond = Not(&Absent);

/// A worker may drop its lease after a failure ([`crate::store::Leases::abandon_processing`]).
pub const ABANDON: Cond = All(&[Not(&Absent), Not(&Processed)]);

/// The sweeper may push the lock forward and count a sweep
/// ([`crate::store::EventLog::extend_lock`]): still unprocessed, and nobody counted this sweep
/// yet (a retried call whose answer was lost must not count twice).
pub const EXTEND_LOCK: Cond = All(&[Not(&Absent), Not(&Processed), SweepsRead]);

/// A replay may reopen a record ([`crate::replay::ReplaySource::reopen`]): not expired, and
/// processed or not held by a worker.
pub const REOPEN: Cond = All(&[Not(&Absent), Not(&Expired), Any(&[Processed, LeaseEnded])]);

/// The fields of a stored event record that the rules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFields<'a> {
    /// A worker finished it.
    pub processed: bool,
    /// Until when the attempt that wrote it owns it (unix ms).
    pub lock_until_ms: i64,
    /// Until when a worker holds it (unix ms; 0: nobody).
    pub lease_until_ms: i64,
    /// Unix seconds; the record no longer counts after it.
    pub expires_at_s: i64,
    /// The attempt that wrote it.
    pub attempt: &'a str,
    /// Who took the current lease, where the adapter names it.
    pub lease_owner: Option<&'a str>,
    /// How many times the sweeper re-sent it.
    pub sweeps: u32,
}

/// The same fields, owned: what an adapter that reads records into memory keeps (memory,
/// SQLite). DynamoDB reads [`RecordFields`] straight from an item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordState {
    /// A worker finished it.
    pub processed: bool,
    /// Until when the attempt that wrote it owns it (unix ms).
    pub lock_until_ms: i64,
    /// Until when a worker holds it (unix ms; 0: nobody).
    pub lease_until_ms: i64,
    /// Unix seconds; the record no longer counts after it.
    pub expires_at_s: i64,
    /// The attempt that wrote it.
    pub attempt: String,
    /// How many times the sweeper re-sent it.
    pub sweeps: u32,
}

impl RecordState {
    /// A record just written by `attempt` with the claim's times.
    pub fn claimed(attempt: &str, t: &crate::store::ClaimTimes) -> Self {
        Self {
            lock_until_ms: t.lock_until_ms,
            expires_at_s: t.expires_at_s,
            attempt: attempt.to_owned(),
            ..Self::default()
        }
    }

    /// The fields the rules read (these adapters name no lease owner).
    pub fn fields(&self) -> RecordFields<'_> {
        RecordFields {
            processed: self.processed,
            lock_until_ms: self.lock_until_ms,
            lease_until_ms: self.lease_until_ms,
            expires_at_s: self.expires_at_s,
            attempt: &self.attempt,
            lease_owner: None,
            sweeps: self.sweeps,
        }
    }
}

/// What a transition is compared with, all from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    /// Unix milliseconds now.
    pub now_ms: i64,
    /// The calling attempt (claim, release).
    pub attempt: &'a str,
    /// The calling lease taker, where the adapter names it.
    pub lease_owner: Option<&'a str>,
    /// The sweep count the sweeper read (extend_lock).
    pub sweeps_read: u32,
}

impl Cond {
    /// Whether the condition holds for `record` (`None`: there is none).
    pub fn holds(&self, record: Option<&RecordFields<'_>>, p: &Params<'_>) -> bool {
        let Some(r) = record else {
            // Every field condition is false without a record, as in a DynamoDB condition.
            return match self {
                Absent => true,
                Not(c) => !c.holds(None, p),
                All(cs) => cs.iter().all(|c| c.holds(None, p)),
                Any(cs) => cs.iter().any(|c| c.holds(None, p)),
                _ => false,
            };
        };
        match self {
            Absent => false,
            Expired => r.expires_at_s.saturating_mul(1000) <= p.now_ms,
            Processed => r.processed,
            LockEnded => r.lock_until_ms <= p.now_ms,
            LeaseEnded => r.lease_until_ms <= p.now_ms,
            OwnAttempt => r.attempt == p.attempt,
            OwnLease => r.lease_owner.is_some() && r.lease_owner == p.lease_owner,
            SweepsRead => r.sweeps == p.sweeps_read,
            Not(c) => !c.holds(record, p),
            All(cs) => cs.iter().all(|c| c.holds(record, p)),
            Any(cs) => cs.iter().any(|c| c.holds(record, p)),
        }
    }

    /// The condition as a DynamoDB `ConditionExpression` over the event item's attributes
    /// (`pk`, `expires_at` in seconds, `pending` present until processed, `lock_until`,
    /// `lease_until` (absent: none), `lease_owner`, `attempt`, `sweeps`), with the
    /// placeholders it uses. DynamoDB refuses unused expression values: bind exactly those.
    pub fn dynamo(&self) -> DynamoCondition {
        let mut uses = Uses::default();
        let expression = self.dynamo_into(&mut uses);
        DynamoCondition { expression, uses }
    }

    fn dynamo_into(&self, uses: &mut Uses) -> String {
        let join = |cs: &[Cond], op: &str, uses: &mut Uses| {
            let parts: Vec<String> = cs.iter().map(|c| c.dynamo_into(uses)).collect();
            format!("({})", parts.join(op))
        };
        match self {
            Absent => "attribute_not_exists(pk)".into(),
            Expired => {
                uses.now_s = true;
                "expires_at <= :now_s".into()
            }
            Processed => "attribute_not_exists(pending)".into(),
            LockEnded => {
                uses.now_ms = true;
                "lock_until <= :now_ms".into()
            }
            LeaseEnded => {
                uses.now_ms = true;
                "(attribute_not_exists(lease_until) OR lease_until <= :now_ms)".into()
            }
            OwnAttempt => {
                uses.attempt = true;
                "attempt = :attempt".into()
            }
            OwnLease => {
                uses.lease_owner = true;
                "lease_owner = :lease_owner".into()
            }
            SweepsRead => {
                uses.sweeps_read = true;
                // A record written without a count (queue first) has had no sweep to count.
                "(sweeps = :sweeps_read OR attribute_not_exists(sweeps))".into()
            }
            Not(c) => format!("(NOT {})", c.dynamo_into(uses)),
            All(cs) => join(cs, " AND ", uses),
            Any(cs) => join(cs, " OR ", uses),
        }
    }
}

/// A rule rendered for DynamoDB ([`Cond::dynamo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoCondition {
    /// The `ConditionExpression`.
    pub expression: String,
    /// The placeholders it uses.
    pub uses: Uses,
}

/// Which placeholders a rendered condition uses: `:now_ms`, `:now_s` (unix seconds,
/// `now_ms` floored), `:attempt`, `:lease_owner`, `:sweeps_read`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// `:now_ms`.
    pub now_ms: bool,
    /// `:now_s`.
    pub now_s: bool,
    /// `:attempt`.
    pub attempt: bool,
    /// `:lease_owner`.
    pub lease_owner: bool,
    /// `:sweeps_read`.
    pub sweeps_read: bool,
}

/// What a claim found: [`Claim::New`] if [`CLAIM`] allowed the write, else the duplicate's
/// reply (from the stored record, read by the caller only in that case).
pub fn claim_outcome<E>(
    record: Option<&RecordFields<'_>>,
    p: &Params<'_>,
    stored_reply: impl FnOnce() -> Result<crate::reply::Reply, E>,
) -> Result<Claim, E> {
    if CLAIM.holds(record, p) {
        return Ok(Claim::New);
    }
    Ok(Claim::Duplicate {
        reply: stored_reply()?,
        processed: record.is_some_and(|r| r.processed),
    })
}

/// What a worker asking for the lease gets ([`TAKE_LEASE`]), for the record as it was.
pub fn lease_outcome(record: Option<&RecordFields<'_>>, p: &Params<'_>) -> Processing {
    match record {
        _ if TAKE_LEASE.holds(record, p) => Processing::Ready,
        None => Processing::Missing,
        Some(r) if r.processed => Processing::AlreadyDone,
        Some(_) => Processing::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn record(processed: bool, lock: i64, lease: i64) -> RecordFields<'static> {
        RecordFields {
            processed,
            lock_until_ms: NOW + lock,
            lease_until_ms: if lease == 0 { 0 } else { NOW + lease },
            expires_at_s: NOW / 1000 + 3600,
            attempt: "a1",
            lease_owner: None,
            sweeps: 0,
        }
    }

    fn at(attempt: &'static str) -> Params<'static> {
        Params {
            now_ms: NOW,
            attempt,
            ..Params::default()
        }
    }

    #[test]
    fn claim_rule() {
        let p = at("a2");
        assert!(CLAIM.holds(None, &p), "no record: new");
        assert!(!CLAIM.holds(Some(&record(false, 1, 0)), &p), "locked");
        assert!(CLAIM.holds(Some(&record(false, -1, 0)), &p), "lock ended");
        assert!(
            !CLAIM.holds(Some(&record(false, -1, 1)), &p),
            "lock ended but a live lease: never wiped"
        );
        assert!(!CLAIM.holds(Some(&record(true, -1, 0)), &p), "processed");
        let mut expired = record(true, 1, 1);
        expired.expires_at_s = NOW / 1000;
        assert!(CLAIM.holds(Some(&expired), &p), "expired beats everything");
        assert!(
            CLAIM.holds(Some(&record(false, 1, 0)), &at("a1")),
            "its own write, retried"
        );
        assert!(
            !CLAIM.holds(Some(&record(false, 1, 1)), &at("a1")),
            "its own write, but a worker holds it"
        );
    }

    #[test]
    fn lease_rule_and_outcomes() {
        let p = at("x");
        assert_eq!(lease_outcome(None, &p), Processing::Missing);
        assert_eq!(
            lease_outcome(Some(&record(false, 1, 0)), &p),
            Processing::Ready
        );
        assert_eq!(
            lease_outcome(Some(&record(false, 1, 1)), &p),
            Processing::Busy
        );
        assert_eq!(
            lease_outcome(Some(&record(true, 1, 0)), &p),
            Processing::AlreadyDone
        );
        let mut mine = record(false, 1, 1);
        mine.lease_owner = Some("w1");
        let retried = Params {
            lease_owner: Some("w1"),
            ..p
        };
        assert_eq!(lease_outcome(Some(&mine), &retried), Processing::Ready);
        assert_eq!(lease_outcome(Some(&mine), &p), Processing::Busy);
    }

    #[test]
    fn release_extend_reopen() {
        assert!(RELEASE.holds(Some(&record(false, 1, 0)), &at("a1")));
        assert!(!RELEASE.holds(Some(&record(false, 1, 0)), &at("a2")));
        assert!(!RELEASE.holds(Some(&record(true, 1, 0)), &at("a1")));
        assert!(!RELEASE.holds(None, &at("a1")));
        let p = Params {
            sweeps_read: 0,
            ..at("x")
        };
        assert!(EXTEND_LOCK.holds(Some(&record(false, -1, 0)), &p));
        let counted = Params {
            sweeps_read: 1,
            ..p
        };
        assert!(!EXTEND_LOCK.holds(Some(&record(false, -1, 0)), &counted));
        assert!(REOPEN.holds(Some(&record(true, 1, 0)), &p));
        assert!(
            !REOPEN.holds(Some(&record(false, 1, 1)), &p),
            "a live lease"
        );
    }

    #[test]
    fn dynamo_rendering_names_exactly_what_it_uses() {
        let c = CLAIM.dynamo();
        assert_eq!(
            c.expression,
            "(attribute_not_exists(pk) OR expires_at <= :now_s OR \
             ((NOT attribute_not_exists(pending)) AND \
             (attribute_not_exists(lease_until) OR lease_until <= :now_ms) AND \
             (lock_until <= :now_ms OR attempt = :attempt)))"
        );
        assert_eq!(
            c.uses,
            Uses {
                now_ms: true,
                now_s: true,
                attempt: true,
                ..Uses::default()
            }
        );
        assert_eq!(FINISH.dynamo().uses, Uses::default());
        assert!(EXTEND_LOCK.dynamo().uses.sweeps_read);
    }
}
