//! The store contract: one suite every [`Store`] adapter must pass (in-memory, SQLite,
//! DynamoDB against moto), so the adapters cannot drift apart. [`transitions_follow_the_rules`]
//! drives every lifecycle transition from every record state and compares each answer with
//! [`webhook_pipeline::lifecycle`], the one definition. Keys are unique per run, so a
//! long-lived store (a moto server) can be reused.

use std::sync::Arc;

use twilio_webhook::payload::Endpoint;

use webhook_pipeline::consent::{ConsentAction, ConsentLedger, ConsentUpdate, ConsentVia};
use webhook_pipeline::lifecycle::{self, Params, RecordState};
use webhook_pipeline::reply::Reply;
use webhook_pipeline::state::{StateRecord, StateUpdate};
use webhook_pipeline::store::{Claim, ClaimTimes, EventRecord, Processing, Stale, Store};

const NOW: i64 = 1_800_000_000_000;

/// A sample event under a fresh unique key.
pub fn sample_event(tag: &str) -> EventRecord {
    EventRecord {
        key: format!("sms#SM{}{tag}", uuid::Uuid::new_v4().simple()),
        kind: "inbound_message".into(),
        endpoint: Endpoint::Sms,
        url: "https://example.com/sms".into(),
        params: twilio_webhook::FormParams::from_pairs([
            ("MessageSid", "SM1"),
            ("Body", "héllo & <ünïcode> 🎉"),
            ("Body", ""),
        ]),
        idempotency_token: Some("token-1".into()),
        received_at: NOW,
        reply: Reply::text(200, "<Response/>"),
        state_update: Some(StateUpdate {
            id: "msg#SM1".into(),
            status: "received".into(),
            rank: (6, 0),
            sequence: None,
            error_code: None,
        }),
        consent: Some(ConsentUpdate {
            ours: "+15550000001".into(),
            subscriber: "+15559990000".into(),
            action: ConsentAction::OptOut,
            via: ConsentVia::Keyword,
            at_ms: NOW,
            message_sid: "SM1".into(),
        }),
    }
}

fn times(now: i64) -> ClaimTimes {
    ClaimTimes {
        now_ms: now,
        lock_until_ms: now + 30_000,
        expires_at_s: now / 1000 + 3600,
    }
}

/// Run every contract case against `store`.
pub async fn run_all(store: Arc<dyn Store>) {
    claim_is_once_and_duplicates_get_the_stored_reply(&*store).await;
    expired_records_do_not_block(&*store).await;
    abandoned_claims_can_be_redone(&*store).await;
    release_only_by_owner(&*store).await;
    processing_lease(&*store).await;
    a_claim_never_wipes_a_live_lease(&*store).await;
    a_retried_claim_recognises_its_own_record(&*store).await;
    transitions_follow_the_rules(&*store).await;
    a_late_worker_cannot_reopen_a_processed_record(&*store).await;
    sweeper_view(&*store).await;
    state_is_optimistic(&*store).await;
    consent_is_optimistic(&*store).await;
    concurrent_claims_make_one_winner(store.clone()).await;
}

/// A key is claimed once; a duplicate gets the first reply byte for byte, and the
/// stored event reads back exactly (unicode, blanks, repeated keys).
pub async fn claim_is_once_and_duplicates_get_the_stored_reply(store: &dyn Store) {
    let e = sample_event("once");
    assert_eq!(store.claim(&e, "a1", times(NOW)).await.unwrap(), Claim::New);
    let mut again = e.clone();
    again.reply = Reply::text(200, "different");
    match store.claim(&again, "a2", times(NOW + 1)).await.unwrap() {
        Claim::Duplicate { reply, processed } => {
            assert_eq!(
                reply, e.reply,
                "a duplicate gets the first reply, byte for byte"
            );
            assert!(!processed);
        }
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // The stored event round-trips exactly (unicode, blanks, repeated keys).
    store.release(&e.key, "a1").await.unwrap();
    let stale = store.stale_pending(NOW + 1, 1000).await.unwrap();
    let found = stale
        .iter()
        .find(|r| r.key == e.key)
        .expect("pending record");
    match &found.event {
        Ok(event) => assert_eq!(**event, e),
        other => panic!("the record reads back: {other:?}"),
    }
    assert_eq!(found.sweeps, 0);
}

/// A record past its expiry no longer counts for dedup, even before the store deletes it.
pub async fn expired_records_do_not_block(store: &dyn Store) {
    let e = sample_event("expiry");
    let t = ClaimTimes {
        now_ms: NOW,
        lock_until_ms: NOW + 1_000,
        expires_at_s: NOW / 1000 + 10,
    };
    assert_eq!(store.claim(&e, "a1", t).await.unwrap(), Claim::New);
    store
        .begin_processing(&e.key, NOW, NOW + 1000)
        .await
        .unwrap();
    store.finish_processing(&e.key, NOW).await.unwrap();
    assert!(matches!(
        store.claim(&e, "a2", times(NOW + 9_999)).await.unwrap(),
        Claim::Duplicate {
            processed: true,
            ..
        }
    ));
    assert_eq!(
        store.claim(&e, "a3", times(NOW + 10_000)).await.unwrap(),
        Claim::New,
        "an expired record must not block even if TTL has not deleted it"
    );
}

/// A claim whose lock ended unprocessed (a crashed attempt) may be redone; once
/// processed it may not.
pub async fn abandoned_claims_can_be_redone(store: &dyn Store) {
    let e = sample_event("abandon");
    assert_eq!(store.claim(&e, "a1", times(NOW)).await.unwrap(), Claim::New);
    assert!(matches!(
        store.claim(&e, "a2", times(NOW + 29_000)).await.unwrap(),
        Claim::Duplicate { .. }
    ));
    assert_eq!(
        store.claim(&e, "a3", times(NOW + 30_001)).await.unwrap(),
        Claim::New,
        "a claim whose lock expired unprocessed (crashed attempt) is redone"
    );
    // Once processed, an expired lock no longer matters.
    store
        .begin_processing(&e.key, NOW + 30_002, NOW + 40_000)
        .await
        .unwrap();
    store.finish_processing(&e.key, NOW + 30_003).await.unwrap();
    match store.claim(&e, "a4", times(NOW + 90_000)).await.unwrap() {
        Claim::Duplicate { processed, .. } => assert!(processed),
        other => panic!("{other:?}"),
    }
}

/// Only the attempt that wrote a record can release it.
pub async fn release_only_by_owner(store: &dyn Store) {
    let e = sample_event("release");
    store.claim(&e, "owner", times(NOW)).await.unwrap();
    store.release(&e.key, "someone-else").await.unwrap();
    assert!(matches!(
        store.claim(&e, "x", times(NOW + 1)).await.unwrap(),
        Claim::Duplicate { .. }
    ));
    store.release(&e.key, "owner").await.unwrap();
    assert_eq!(
        store.claim(&e, "retry", times(NOW + 2)).await.unwrap(),
        Claim::New
    );
}

/// A lease is Missing without a record, Ready once, Busy while held, Ready again after
/// an abandon, and AlreadyDone once processed.
pub async fn processing_lease(store: &dyn Store) {
    let e = sample_event("lease");
    assert_eq!(
        store.begin_processing(&e.key, NOW, NOW + 1).await.unwrap(),
        Processing::Missing
    );
    store.claim(&e, "a", times(NOW)).await.unwrap();
    assert_eq!(
        store
            .begin_processing(&e.key, NOW, NOW + 60_000)
            .await
            .unwrap(),
        Processing::Ready
    );
    assert_eq!(
        store
            .begin_processing(&e.key, NOW + 1, NOW + 60_000)
            .await
            .unwrap(),
        Processing::Busy
    );
    store.abandon_processing(&e.key).await.unwrap();
    assert_eq!(
        store
            .begin_processing(&e.key, NOW + 2, NOW + 60_000)
            .await
            .unwrap(),
        Processing::Ready
    );
    store.finish_processing(&e.key, NOW + 3).await.unwrap();
    assert_eq!(
        store
            .begin_processing(&e.key, NOW + 4, NOW + 60_000)
            .await
            .unwrap(),
        Processing::AlreadyDone
    );
}

/// Trust issue, item 6: after a release (an SQS send that timed out but was delivered) or a
/// late duplicate, a re-claim rewrote the record and wiped the worker's live lease, so the
/// event was processed twice at the same moment.
pub async fn a_claim_never_wipes_a_live_lease(store: &dyn Store) {
    let e = sample_event("lease-wipe");
    assert_eq!(store.claim(&e, "a1", times(NOW)).await.unwrap(), Claim::New);
    assert_eq!(
        store
            .begin_processing(&e.key, NOW + 1, NOW + 120_000)
            .await
            .unwrap(),
        Processing::Ready
    );
    store.release(&e.key, "a1").await.unwrap();
    // The lock is gone, the lease is live: a new copy is a duplicate, not a new claim.
    assert!(matches!(
        store.claim(&e, "a2", times(NOW + 2)).await.unwrap(),
        Claim::Duplicate {
            processed: false,
            ..
        }
    ));
    assert_eq!(
        store
            .begin_processing(&e.key, NOW + 3, NOW + 120_000)
            .await
            .unwrap(),
        Processing::Busy,
        "the first worker's lease must survive the re-claim"
    );
    // Once the lease ends unfinished (the worker died), a copy may redo the event.
    assert_eq!(
        store.claim(&e, "a3", times(NOW + 120_001)).await.unwrap(),
        Claim::New
    );
    // And after the abandon of a failed attempt, at once.
    let f = sample_event("lease-abandon");
    assert_eq!(store.claim(&f, "b1", times(NOW)).await.unwrap(), Claim::New);
    store.release(&f.key, "b1").await.unwrap();
    assert_eq!(
        store
            .begin_processing(&f.key, NOW + 1, NOW + 120_000)
            .await
            .unwrap(),
        Processing::Ready
    );
    store.abandon_processing(&f.key).await.unwrap();
    assert_eq!(
        store.claim(&f, "b2", times(NOW + 2)).await.unwrap(),
        Claim::New
    );
}

/// Trust issue, item 14: a claim retried by the same attempt (its first answer was lost)
/// finds the record it wrote; that is this attempt's own new event, not a duplicate.
pub async fn a_retried_claim_recognises_its_own_record(store: &dyn Store) {
    let e = sample_event("own");
    assert_eq!(store.claim(&e, "a1", times(NOW)).await.unwrap(), Claim::New);
    assert_eq!(
        store.claim(&e, "a1", times(NOW + 5)).await.unwrap(),
        Claim::New,
        "the same attempt again is still new"
    );
    assert!(matches!(
        store.claim(&e, "a2", times(NOW + 6)).await.unwrap(),
        Claim::Duplicate { .. }
    ));
}

/// The sweeper sees an unprocessed record once its lock ends, counts each sweep once
/// (a repeated `extend_lock` too), and no longer sees it once processed.
pub async fn sweeper_view(store: &dyn Store) {
    let e = sample_event("sweep");
    store.claim(&e, "a", times(NOW)).await.unwrap();
    let find = |v: &[Stale]| v.iter().find(|r| r.key == e.key).map(|r| r.sweeps);
    assert_eq!(
        find(&store.stale_pending(NOW + 30_000, 1000).await.unwrap()),
        None,
        "lock still live"
    );
    assert_eq!(
        find(&store.stale_pending(NOW + 30_001, 1000).await.unwrap()),
        Some(0)
    );
    store.extend_lock(&e.key, NOW + 100_000, 0).await.unwrap();
    // Trust issue, item 4: the same call again (an SDK retry whose first answer was lost)
    // must not count a second sweep; nor may a call made on a stale count.
    store.extend_lock(&e.key, NOW + 100_000, 0).await.unwrap();
    assert_eq!(
        find(&store.stale_pending(NOW + 60_000, 1000).await.unwrap()),
        None
    );
    assert_eq!(
        find(&store.stale_pending(NOW + 100_001, 1000).await.unwrap()),
        Some(1),
        "one sweep counted once"
    );
    store.extend_lock(&e.key, NOW + 200_000, 1).await.unwrap();
    assert_eq!(
        find(&store.stale_pending(NOW + 200_001, 1000).await.unwrap()),
        Some(2)
    );
    store.begin_processing(&e.key, NOW, NOW + 1).await.unwrap();
    store.finish_processing(&e.key, NOW).await.unwrap();
    assert_eq!(
        find(&store.stale_pending(i64::MAX / 2, 1000).await.unwrap()),
        None,
        "processed is not pending"
    );
}

/// A state record is saved only at the version read (created only if absent).
pub async fn state_is_optimistic(store: &dyn Store) {
    let id = format!("msg#SM{}", uuid::Uuid::new_v4().simple());
    assert!(store.load_state(&id).await.unwrap().is_none());
    let mut s = StateRecord {
        id: id.clone(),
        latest_status: "sent".into(),
        ..Default::default()
    };
    assert!(
        store
            .save_state(&id, &s, None, NOW / 1000 + 60)
            .await
            .unwrap()
    );
    assert!(
        !store
            .save_state(&id, &s, None, NOW / 1000 + 60)
            .await
            .unwrap(),
        "create twice"
    );
    let (loaded, v) = store.load_state(&id).await.unwrap().unwrap();
    assert_eq!(loaded, s);
    s.latest_status = "delivered".into();
    assert!(
        store
            .save_state(&id, &s, Some(v), NOW / 1000 + 60)
            .await
            .unwrap()
    );
    assert!(
        !store
            .save_state(&id, &s, Some(v), NOW / 1000 + 60)
            .await
            .unwrap(),
        "stale version"
    );
    assert_eq!(
        store
            .load_state(&id)
            .await
            .unwrap()
            .unwrap()
            .0
            .latest_status,
        "delivered"
    );
}

/// A consent ledger is saved only at the version read (created only if absent).
pub async fn consent_is_optimistic(store: &dyn Store) {
    let subscriber = format!("+1555{}", uuid::Uuid::new_v4().as_u128() % 10_000_000);
    assert!(store.load_consent(&subscriber).await.unwrap().is_none());
    let mut ledger = ConsentLedger::default();
    let mut u = sample_event("consent").consent.unwrap();
    u.subscriber = subscriber.clone();
    assert!(ledger.apply(&u));
    assert!(
        store
            .save_consent(&subscriber, &ledger, None)
            .await
            .unwrap()
    );
    assert!(
        !store
            .save_consent(&subscriber, &ledger, None)
            .await
            .unwrap(),
        "create twice"
    );
    let (loaded, v) = store.load_consent(&subscriber).await.unwrap().unwrap();
    assert_eq!(loaded, ledger);
    u.action = ConsentAction::OptIn;
    u.at_ms += 1;
    assert!(ledger.apply(&u));
    assert!(
        store
            .save_consent(&subscriber, &ledger, Some(v))
            .await
            .unwrap()
    );
    assert!(
        !store
            .save_consent(&subscriber, &ledger, Some(v))
            .await
            .unwrap(),
        "stale version"
    );
    assert_eq!(
        store.load_consent(&subscriber).await.unwrap().unwrap().0,
        ledger
    );
}

/// Of 20 concurrent claims of one key, exactly one is new.
pub async fn concurrent_claims_make_one_winner(store: Arc<dyn Store>) {
    let e = sample_event("race");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (store, e) = (store.clone(), e.clone());
            tokio::spawn(
                async move { store.claim(&e, &format!("a{i}"), times(NOW)).await.unwrap() },
            )
        })
        .collect();
    let mut new = 0;
    for t in tasks {
        if t.await.unwrap() == Claim::New {
            new += 1;
        }
    }
    assert_eq!(new, 1, "exactly one of 20 concurrent claims wins");
}

/// A record state the test builds through the ports, and the fields it must then have.
#[derive(Debug, Clone, Copy)]
enum Built {
    /// Claimed by `a1`, its lock running.
    Locked,
    /// Claimed, then released by `a1`: no lock.
    Released,
    /// Claimed, a worker's lease running.
    Leased,
    /// Claimed, leased, then released (a send that timed out but was delivered).
    LeasedReleased,
    /// Claimed, leased, then the lease abandoned after a failure.
    Abandoned,
    /// Claimed, leased, finished.
    Processed,
}

const LOCK: i64 = 30_000;
const LEASE: i64 = 60_000;

async fn build(store: &dyn Store, state: Built, tag: &str) -> (EventRecord, RecordState) {
    let e = sample_event(tag);
    assert_eq!(store.claim(&e, "a1", times(NOW)).await.unwrap(), Claim::New);
    let mut f = RecordState::claimed("a1", &times(NOW));
    match state {
        Built::Locked => {}
        Built::Released => {
            store.release(&e.key, "a1").await.unwrap();
            f.lock_until_ms = 0;
        }
        Built::Leased => {
            lease(store, &e.key).await;
            f.lease_until_ms = NOW + LEASE;
        }
        Built::LeasedReleased => {
            lease(store, &e.key).await;
            store.release(&e.key, "a1").await.unwrap();
            f.lease_until_ms = NOW + LEASE;
            f.lock_until_ms = 0;
        }
        Built::Abandoned => {
            lease(store, &e.key).await;
            store.abandon_processing(&e.key).await.unwrap();
        }
        Built::Processed => {
            lease(store, &e.key).await;
            store.finish_processing(&e.key, NOW + 2).await.unwrap();
            f.processed = true;
            f.lease_until_ms = NOW + LEASE;
        }
    }
    (e, f)
}

async fn lease(store: &dyn Store, key: &str) {
    let taken = store.begin_processing(key, NOW + 1, NOW + LEASE).await;
    assert_eq!(taken.unwrap(), Processing::Ready);
}

/// From every state, at a moment inside the lock, after the lock, and after the lease: a
/// claim by another attempt, a claim by the writing attempt, and a lease request each get
/// the answer [`lifecycle`] gives for the record's fields.
pub async fn transitions_follow_the_rules(store: &dyn Store) {
    let states = [
        Built::Locked,
        Built::Released,
        Built::Leased,
        Built::LeasedReleased,
        Built::Abandoned,
        Built::Processed,
    ];
    for state in states {
        for at in [NOW + 10, NOW + LOCK + 1, NOW + LEASE + 1] {
            for attempt in ["a2", "a1"] {
                let (e, f) = build(store, state, "rules").await;
                let p = Params {
                    now_ms: at,
                    attempt,
                    ..Params::default()
                };
                let expected = lifecycle::claim_outcome(Some(&f.fields()), &p, || {
                    Ok::<_, ()>(e.reply.clone())
                })
                .unwrap();
                let got = store.claim(&e, attempt, times(at)).await.unwrap();
                assert_eq!(
                    got,
                    expected,
                    "claim by {attempt} of a {state:?} record at +{} ms",
                    at - NOW
                );
            }
            let (e, f) = build(store, state, "rules-lease").await;
            let expected = lifecycle::lease_outcome(
                Some(&f.fields()),
                &Params {
                    now_ms: at,
                    ..Params::default()
                },
            );
            let got = store
                .begin_processing(&e.key, at, at + LEASE)
                .await
                .unwrap();
            assert_eq!(
                got,
                expected,
                "lease of a {state:?} record at +{} ms",
                at - NOW
            );
        }
    }
}

/// A worker whose lease ran out, finishing or abandoning late, must not make a processed
/// record pending again, and a release by its writer changes nothing once it is processed.
pub async fn a_late_worker_cannot_reopen_a_processed_record(store: &dyn Store) {
    let (e, _) = build(store, Built::Processed, "late").await;
    store.abandon_processing(&e.key).await.unwrap();
    store.release(&e.key, "a1").await.unwrap();
    assert_eq!(
        store
            .begin_processing(&e.key, NOW + 10, NOW + LEASE)
            .await
            .unwrap(),
        Processing::AlreadyDone
    );
    assert!(matches!(
        store.claim(&e, "a2", times(NOW + 10)).await.unwrap(),
        Claim::Duplicate {
            processed: true,
            ..
        }
    ));
    let stale = store.stale_pending(i64::MAX / 2, 1000).await.unwrap();
    assert!(
        stale.iter().all(|s| s.key != e.key),
        "processed is not pending"
    );
}
