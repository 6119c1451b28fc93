//! DynamoDB event store. One table, partition key `pk`:
//!
//! | item | `pk` | attributes |
//! |---|---|---|
//! | event | dedup key (`sms#SM...`) | `event` (JSON), `attempt`, `lock_until` (ms), `expires_at` (s, TTL), `pending` ("1" until processed), `lease_until` (ms), `processed_at` (ms), `sweeps` |
//! | state | `state#` + id (`state#msg#SM...`) | `state` (JSON), `version`, `expires_at` |
//! | consent | `consent#` + subscriber (`consent#+1555...`) | `consent` (JSON: every pair of the subscriber), `version`; no TTL |
//!
//! GSI `pending-index` (`pending` / `lock_until`, projecting only `sweeps`) is sparse: only
//! unprocessed events are in it, which is what the sweeper queries. Expiry is always checked in conditions because TTL
//! deletes items up to days late.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use webhook_pipeline::consent::ConsentLedger;
use webhook_pipeline::lifecycle::{self, Cond, Params, RecordFields};
use webhook_pipeline::state::StateRecord;
use webhook_pipeline::store::{
    Claim, ClaimTimes, ConsentStore, EventLog, EventRecord, Leases, PortError, Processing, Stale,
    StateStore,
};

/// The table's partition key attribute.
pub const PK: &str = "pk";
/// The TTL attribute (unix seconds).
pub const TTL_ATTRIBUTE: &str = "expires_at";
/// The sparse GSI of unprocessed events, which the sweeper queries.
pub const PENDING_INDEX: &str = "pending-index";
/// The attribute that puts an event in `pending-index` ("1" until processed).
pub const PENDING: &str = "pending";
/// Until when the writing attempt owns an event (unix ms); `pending-index`'s sort key.
pub const LOCK_UNTIL: &str = "lock_until";

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB adapter of the event log, leases, state and consent ports: one table.
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Records are the reply cache only ([`DynamoStore::queue_first`]).
    queue_first: bool,
}

impl DynamoStore {
    /// The item under `key` (strongly consistent read).
    async fn get(&self, key: &str) -> Result<Option<Item>, PortError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(r.item)
    }

    /// The record under `key` if it is still unprocessed.
    async fn pending_record(&self, key: &str) -> Result<Option<Item>, PortError> {
        Ok(self
            .get(key)
            .await?
            .filter(|item| item.contains_key(PENDING)))
    }

    /// The store in `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            queue_first: false,
        }
    }

    /// An UpdateItem of the item under `key`.
    fn update(
        &self,
        key: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
    }

    /// Queue first (`QUEUE_FIRST`, `ClaimThenSend::queue_first`): a claim writes the event, its
    /// reply, `attempt` and `expires_at`, and nothing for a sweeper or a worker: no `pending`
    /// (so no `pending-index` entry, a write unit when written and another when removed), no
    /// lock, no sweep count. Such a record is live until it expires (the claim rule's
    /// `pending` clause never holds), and a typical SMS record stays under 1 KB. `release`
    /// (after a failed send) hands the record to the sweeper instead.
    pub fn queue_first(mut self, on: bool) -> Self {
        self.queue_first = on;
        self
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_n(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

#[doc(hidden)] // pub for the fuzz targets (fuzz/bodies/src/stored_json.rs)
pub fn event_of(item: &Item) -> Result<EventRecord, PortError> {
    let json = get_s(item, "event").ok_or_else(|| PortError::permanent("record without event"))?;
    // Not serde's message: it may quote the stored event (phone numbers, bodies).
    let mut event: EventRecord =
        serde_json::from_str(json).map_err(|e| PortError::unreadable("event", &e))?;
    // The key is the item's `pk`, not repeated in the stored JSON (see `stored_event`).
    if event.key.is_empty()
        && let Some(pk) = get_s(item, PK)
    {
        event.key = pk.to_owned();
    }
    Ok(event)
}

/// The event as stored in its item: its JSON without the key, which is the item's `pk` (every
/// byte counts: a record over 1 KB costs two write units per write).
fn stored_event(event: &EventRecord) -> Result<String, PortError> {
    let keyless = EventRecord {
        key: String::new(),
        ..event.clone()
    };
    serde_json::to_string(&keyless).map_err(PortError::permanent)
}

/// A conditional write that failed: the item as it was, when DynamoDB returned it.
enum Conditional<T> {
    Done(T),
    Failed(Option<Item>),
}

fn conditional<T, E>(
    r: Result<T, SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>,
    old: impl FnOnce(&E) -> Option<Option<Item>>,
) -> Result<Conditional<T>, PortError>
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    match r {
        Ok(v) => Ok(Conditional::Done(v)),
        Err(SdkError::ServiceError(se)) => match old(se.err()) {
            Some(item) => Ok(Conditional::Failed(item)),
            None => Err(sdk_error(SdkError::ServiceError(se))),
        },
        Err(e) => Err(sdk_error(e)),
    }
}

fn sdk_error<E, R>(e: SdkError<E, R>) -> PortError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    crate::sdk_error("DynamoDB", e)
}

/// The fields [`lifecycle`] reads, from an event item (`pending` present: unprocessed).
fn fields_of(item: &Item) -> RecordFields<'_> {
    RecordFields {
        processed: !item.contains_key(PENDING),
        lock_until_ms: get_n(item, LOCK_UNTIL).unwrap_or(0),
        lease_until_ms: get_n(item, "lease_until").unwrap_or(0),
        expires_at_s: get_n(item, TTL_ATTRIBUTE).unwrap_or(i64::MAX),
        attempt: get_s(item, "attempt").unwrap_or(""),
        lease_owner: get_s(item, "lease_owner"),
        sweeps: get_n(item, "sweeps").map_or(0, |n| n as u32),
    }
}

/// A lifecycle rule as a `ConditionExpression` ([`lifecycle::Cond::dynamo`]) and exactly the
/// expression values it uses (DynamoDB refuses unused ones).
pub fn condition(rule: Cond, p: &Params<'_>) -> (String, Vec<(&'static str, AttributeValue)>) {
    let rendered = rule.dynamo();
    let u = rendered.uses;
    let values = [
        (u.now_ms, ":now_ms", n(p.now_ms)),
        (u.now_s, ":now_s", n(p.now_ms.div_euclid(1000))),
        (u.attempt, ":attempt", s(p.attempt)),
        (
            u.lease_owner,
            ":lease_owner",
            s(p.lease_owner.unwrap_or("")),
        ),
        (u.sweeps_read, ":sweeps_read", n(p.sweeps_read)),
    ];
    let used = values.into_iter().filter(|v| v.0).map(|(_, k, v)| (k, v));
    (rendered.expression, used.collect())
}

/// Set the condition of `rule` ([`condition`]) on a request builder.
macro_rules! with_rule {
    ($call:expr, $rule:expr, $p:expr) => {{
        let (expression, values) = condition($rule, $p);
        let mut call = $call.condition_expression(expression);
        for (name, value) in values {
            call = call.expression_attribute_values(name, value);
        }
        call
    }};
}

fn put_failed(e: &PutItemError) -> Option<Option<Item>> {
    match e {
        PutItemError::ConditionalCheckFailedException(c) => Some(c.item().cloned()),
        _ => None,
    }
}

fn update_failed(e: &UpdateItemError) -> Option<Option<Item>> {
    match e {
        UpdateItemError::ConditionalCheckFailedException(c) => Some(c.item().cloned()),
        _ => None,
    }
}

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

/// State and consent records: a JSON attribute and a `version` for optimistic concurrency.
impl DynamoStore {
    async fn load_versioned<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        attribute: &str,
    ) -> Result<Option<(T, u64)>, PortError> {
        let Some(item) = self.get(&key).await? else {
            return Ok(None);
        };
        let value = serde_json::from_str(get_s(&item, attribute).unwrap_or("{}"))
            .map_err(|e| PortError::unreadable(attribute, &e))?;
        Ok(Some((value, get_n(&item, "version").unwrap_or(0) as u64)))
    }

    /// Writes version `expected + 1` if the stored version is still `expected` (`None`: no
    /// record yet); `false` when another writer came first.
    async fn save_versioned<T: serde::Serialize>(
        &self,
        key: String,
        attribute: &str,
        value: &T,
        expected: Option<u64>,
        expires_at_s: Option<i64>,
    ) -> Result<bool, PortError> {
        let json = serde_json::to_string(value).map_err(PortError::permanent)?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(key))
            .item(attribute, s(json))
            .item("version", n(expected.unwrap_or(0) + 1));
        if let Some(at) = expires_at_s {
            put = put.item(TTL_ATTRIBUTE, n(at));
        }
        put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
        };
        Ok(matches!(
            conditional(put.send().await, put_failed)?,
            Conditional::Done(_)
        ))
    }
}

#[async_trait]
impl EventLog for DynamoStore {
    async fn claim(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, PortError> {
        let json = stored_event(event)?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(&event.key))
            .item("event", s(json))
            .item("attempt", s(attempt))
            .item(TTL_ATTRIBUTE, n(t.expires_at_s));
        if !self.queue_first {
            put = put
                .item(LOCK_UNTIL, n(t.lock_until_ms))
                .item(PENDING, s("1"))
                .item("sweeps", n(0));
        }
        let p = Params {
            now_ms: t.now_ms,
            attempt,
            ..Params::default()
        };
        let r = with_rule!(put, lifecycle::CLAIM, &p)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional(r, put_failed)? {
            Conditional::Done(_) => Ok(Claim::New),
            // Queue first, records carry nothing for a worker (no `pending`: they read as
            // processed), so the rule's own-attempt clause cannot apply: the put took
            // effect, its answer was lost, and the SDK's retry met the record it had written.
            Conditional::Failed(Some(old))
                if self.queue_first && get_s(&old, "attempt") == Some(attempt) =>
            {
                Ok(Claim::New)
            }
            Conditional::Failed(Some(old)) => {
                lifecycle::claim_outcome(Some(&fields_of(&old)), &p, || Ok(event_of(&old)?.reply))
            }
            Conditional::Failed(None) => Err(PortError::retryable(
                "conditional put failed without the old item",
            )),
        }
    }

    async fn release(&self, key: &str, attempt: &str) -> Result<(), PortError> {
        if self.queue_first {
            // Queue first, the record was written without anything for the sweeper. Its job
            // did not go out: hand the record to the sweeper (pending, lock ended), whoever
            // wrote it. A copy that claims it meanwhile rewrites it without `pending` and
            // sends its own job; the sweeper's re-send of the stored event is folded once.
            let r = self
                .update(key)
                .update_expression("SET pending = :p, lock_until = :zero, sweeps = :zero")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(pending)")
                .expression_attribute_values(":p", s("1"))
                .expression_attribute_values(":zero", n(0))
                .send()
                .await;
            return conditional(r, update_failed).map(|_| ());
        }
        let p = Params {
            attempt,
            ..Params::default()
        };
        let update = self
            .update(key)
            .update_expression("SET lock_until = :zero")
            .expression_attribute_values(":zero", n(0));
        let r = with_rule!(update, lifecycle::RELEASE, &p).send().await;
        conditional(r, update_failed).map(|_| ())
    }

    async fn stale_pending(
        &self,
        lock_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stale>, PortError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PENDING_INDEX)
                .key_condition_expression("pending = :p AND lock_until < :before")
                .expression_attribute_values(":p", s("1"))
                .expression_attribute_values(":before", n(lock_before_ms))
                .set_exclusive_start_key(start.take())
                .limit((limit - out.len()).min(100) as i32)
                .send()
                .await
                .map_err(sdk_error)?;
            // The index holds keys and `sweeps` only (a small index entry per write instead
            // of a copy of the event): the record itself is read back, and skipped if it was
            // processed in the meantime. Each read stands alone: a failed or undecodable one
            // is listed as such and the others go on.
            for entry in page.items() {
                let Some(key) = get_s(entry, PK) else {
                    continue;
                };
                let sweeps_in_index = get_n(entry, "sweeps").unwrap_or(0) as u32;
                let stale = match self.pending_record(key).await {
                    Ok(None) => continue,
                    Ok(Some(item)) => Stale {
                        key: key.to_owned(),
                        // The consistent read's count, which `extend_lock` compares against.
                        sweeps: get_n(&item, "sweeps").map_or(sweeps_in_index, |n| n as u32),
                        event: event_of(&item).map(Box::new),
                    },
                    Err(e) => Stale {
                        key: key.to_owned(),
                        sweeps: sweeps_in_index,
                        event: Err(e),
                    },
                };
                out.push(stale);
            }
            match page.last_evaluated_key() {
                Some(k) if out.len() < limit => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    async fn extend_lock(
        &self,
        key: &str,
        lock_until_ms: i64,
        sweeps_read: u32,
    ) -> Result<(), PortError> {
        // A SET to the value read plus one, on condition it is still the value read: an SDK
        // retry of a call whose answer was lost fails the condition instead of counting twice.
        let p = Params {
            sweeps_read,
            ..Params::default()
        };
        let update = self
            .update(key)
            .update_expression("SET lock_until = :l, sweeps = :next")
            .expression_attribute_values(":l", n(lock_until_ms))
            .expression_attribute_values(":next", n(u64::from(sweeps_read) + 1));
        let r = with_rule!(update, lifecycle::EXTEND_LOCK, &p).send().await;
        conditional(r, update_failed).map(|_| ())
    }
}

#[async_trait]
impl Leases for DynamoStore {
    async fn begin_processing(
        &self,
        key: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Processing, PortError> {
        // The lease names its taker, so that an SDK retry of this very call (the lease was
        // taken, the answer lost) recognises its own lease instead of reporting Busy.
        let owner = uuid::Uuid::new_v4().to_string();
        let p = Params {
            now_ms,
            lease_owner: Some(&owner),
            ..Params::default()
        };
        let update = self
            .update(key)
            .update_expression("SET lease_until = :until, lease_owner = :lease_owner")
            .expression_attribute_values(":until", n(lease_until_ms));
        let r = with_rule!(update, lifecycle::TAKE_LEASE, &p)
            .expression_attribute_values(":lease_owner", s(&owner))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        Ok(match conditional(r, update_failed)? {
            Conditional::Done(_) => Processing::Ready,
            Conditional::Failed(old) => {
                lifecycle::lease_outcome(old.as_ref().map(fields_of).as_ref(), &p)
            }
        })
    }

    async fn finish_processing(&self, key: &str, now_ms: i64) -> Result<(), PortError> {
        let update = self
            .update(key)
            .update_expression("SET processed_at = :processed_at REMOVE pending, lease_until")
            .expression_attribute_values(":processed_at", n(now_ms));
        let r = with_rule!(update, lifecycle::FINISH, &Params::default())
            .send()
            .await;
        conditional(r, update_failed).map(|_| ())
    }

    async fn abandon_processing(&self, key: &str) -> Result<(), PortError> {
        let update = self
            .update(key)
            .update_expression("SET lease_until = :zero")
            .expression_attribute_values(":zero", n(0));
        let r = with_rule!(update, lifecycle::ABANDON, &Params::default())
            .send()
            .await;
        conditional(r, update_failed).map(|_| ())
    }
}

#[async_trait]
impl StateStore for DynamoStore {
    async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, PortError> {
        self.load_versioned(format!("state#{id}"), "state").await
    }

    async fn save_state(
        &self,
        id: &str,
        state: &StateRecord,
        expected: Option<u64>,
        expires_at_s: i64,
    ) -> Result<bool, PortError> {
        let key = format!("state#{id}");
        self.save_versioned(key, "state", state, expected, Some(expires_at_s))
            .await
    }
}

#[async_trait]
impl ConsentStore for DynamoStore {
    async fn load_consent(
        &self,
        subscriber: &str,
    ) -> Result<Option<(ConsentLedger, u64)>, PortError> {
        self.load_versioned(consent_key(subscriber), "consent")
            .await
    }

    async fn save_consent(
        &self,
        subscriber: &str,
        ledger: &ConsentLedger,
        expected: Option<u64>,
    ) -> Result<bool, PortError> {
        // No `expires_at`: TTL never deletes a consent record.
        let key = consent_key(subscriber);
        self.save_versioned(key, "consent", ledger, expected, None)
            .await
    }
}

/// The item of a subscriber's opt-out ledger.
pub fn consent_key(subscriber: &str) -> String {
    format!("consent#{subscriber}")
}
