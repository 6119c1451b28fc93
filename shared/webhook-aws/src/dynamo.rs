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
use webhook_pipeline::state::StateRecord;
use webhook_pipeline::store::{
    Claim, ClaimTimes, EventRecord, EventStore, Processing, Stale, StaleEvent, StoreError,
};

pub const PK: &str = "pk";
pub const TTL_ATTRIBUTE: &str = "expires_at";
pub const PENDING_INDEX: &str = "pending-index";
pub const PENDING: &str = "pending";
pub const LOCK_UNTIL: &str = "lock_until";

type Item = HashMap<String, AttributeValue>;

pub struct DynamoStore {
    client: Client,
    table: String,
    /// Records are the reply cache only ([`DynamoStore::queue_first`]).
    queue_first: bool,
}

impl DynamoStore {
    /// The record under `key` if it is still unprocessed (strongly consistent read).
    async fn pending_record(&self, key: &str) -> Result<Option<Item>, StoreError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(r.item.filter(|item| item.contains_key("pending")))
    }

    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            queue_first: false,
        }
    }

    /// Queue first (`QUEUE_FIRST`, `Pipeline::with_queue_first`): a claim writes the event, its
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
pub fn event_of(item: &Item) -> Result<EventRecord, StoreError> {
    let json = get_s(item, "event").ok_or_else(|| StoreError("record without event".into()))?;
    // Not serde's message: it may quote the stored event (phone numbers, bodies).
    let mut event: EventRecord = serde_json::from_str(json).map_err(|e| {
        StoreError(format!(
            "unreadable event ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
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
fn stored_event(event: &EventRecord) -> Result<String, StoreError> {
    let keyless = EventRecord {
        key: String::new(),
        ..event.clone()
    };
    serde_json::to_string(&keyless).map_err(StoreError::new)
}

/// A conditional write that failed: the item as it was, when DynamoDB returned it.
enum Conditional<T> {
    Done(T),
    Failed(Option<Item>),
}

fn conditional<T, E>(
    r: Result<T, SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>,
    old: impl FnOnce(&E) -> Option<Option<Item>>,
) -> Result<Conditional<T>, StoreError>
where
    E: std::error::Error + Send + Sync + 'static,
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

/// An SDK failure with its whole cause chain (the top-level message alone is "service error").
fn sdk_error(e: impl std::error::Error) -> StoreError {
    StoreError(format!(
        "DynamoDB: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(e)
    ))
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
    ) -> Result<Option<(T, u64)>, StoreError> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        let Some(item) = r.item() else {
            return Ok(None);
        };
        let value = serde_json::from_str(get_s(item, attribute).unwrap_or("{}"))
            .map_err(StoreError::new)?;
        Ok(Some((value, get_n(item, "version").unwrap_or(0) as u64)))
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
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(value).map_err(StoreError::new)?;
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
impl EventStore for DynamoStore {
    async fn claim(
        &self,
        event: &EventRecord,
        attempt: &str,
        t: ClaimTimes,
    ) -> Result<Claim, StoreError> {
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
        let r = put
            // RecordTimes::is_live, negated (the one claim rule): new, expired (TTL deletes
            // late), or never processed with both its attempt's lock and any lease ended.
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at <= :now_s \
                 OR (attribute_exists(pending) AND lock_until <= :now_ms \
                     AND (attribute_not_exists(lease_until) OR lease_until <= :now_ms))",
            )
            .expression_attribute_values(":now_s", n(t.now_ms.div_euclid(1000)))
            .expression_attribute_values(":now_ms", n(t.now_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match conditional(r, put_failed)? {
            Conditional::Done(_) => Ok(Claim::New),
            // Our own write: the put took effect, its answer was lost, and the SDK's retry
            // met the record it had just written. The event is new and must be enqueued.
            Conditional::Failed(Some(old))
                if get_s(&old, "attempt") == Some(attempt)
                    && (self.queue_first
                        || (old.contains_key(PENDING)
                            && get_n(&old, "lease_until").unwrap_or(0) <= t.now_ms)) =>
            {
                Ok(Claim::New)
            }
            Conditional::Failed(Some(old)) => Ok(Claim::Duplicate {
                reply: event_of(&old)?.reply,
                processed: !old.contains_key(PENDING),
            }),
            // Should not happen (ALL_OLD), but the record exists: treat as a duplicate of itself.
            Conditional::Failed(None) => Err(StoreError(
                "conditional put failed without the old item".into(),
            )),
        }
    }

    async fn release(&self, key: &str, attempt: &str) -> Result<(), StoreError> {
        if self.queue_first {
            // Queue first, the record was written without anything for the sweeper. Its job
            // did not go out: hand the record to the sweeper (pending, lock ended), whoever
            // wrote it. A copy that claims it meanwhile rewrites it without `pending` and
            // sends its own job; the sweeper's re-send of the stored event is folded once.
            let r = self
                .client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(key))
                .update_expression("SET pending = :p, lock_until = :zero, sweeps = :zero")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(pending)")
                .expression_attribute_values(":p", s("1"))
                .expression_attribute_values(":zero", n(0))
                .send()
                .await;
            return conditional(r, update_failed).map(|_| ());
        }
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .update_expression("SET lock_until = :zero")
            .condition_expression("attempt = :a AND attribute_exists(pending)")
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":a", s(attempt))
            .send()
            .await;
        conditional(r, update_failed).map(|_| ())
    }

    async fn begin_processing(
        &self,
        key: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Processing, StoreError> {
        // The lease names its taker, so that an SDK retry of this very call (the lease was
        // taken, the answer lost) recognises its own lease instead of reporting Busy.
        let owner = uuid::Uuid::new_v4().to_string();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .update_expression("SET lease_until = :until, lease_owner = :owner")
            .condition_expression(
                "attribute_exists(pending) AND (attribute_not_exists(lease_until) OR lease_until <= :now)",
            )
            .expression_attribute_values(":until", n(lease_until_ms))
            .expression_attribute_values(":owner", s(&owner))
            .expression_attribute_values(":now", n(now_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        Ok(match conditional(r, update_failed)? {
            Conditional::Done(_) => Processing::Ready,
            Conditional::Failed(None) => Processing::Missing,
            Conditional::Failed(Some(old)) if !old.contains_key(PENDING) => Processing::AlreadyDone,
            Conditional::Failed(Some(old))
                if get_s(&old, "lease_owner") == Some(owner.as_str()) =>
            {
                Processing::Ready
            }
            Conditional::Failed(Some(_)) => Processing::Busy,
        })
    }

    async fn finish_processing(&self, key: &str, now_ms: i64) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .update_expression("SET processed_at = :now REMOVE pending, lease_until")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":now", n(now_ms))
            .send()
            .await;
        conditional(r, update_failed).map(|_| ())
    }

    async fn abandon_processing(&self, key: &str) -> Result<(), StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .update_expression("SET lease_until = :zero")
            .condition_expression("attribute_exists(pending)")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        conditional(r, update_failed).map(|_| ())
    }

    async fn stale_pending(
        &self,
        lock_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Stale>, StoreError> {
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
                        event: match event_of(&item) {
                            Ok(event) => StaleEvent::Readable(Box::new(event)),
                            Err(e) => StaleEvent::Corrupt(e.to_string()),
                        },
                    },
                    Err(e) => Stale {
                        key: key.to_owned(),
                        sweeps: sweeps_in_index,
                        event: StaleEvent::ReadFailed(e),
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
    ) -> Result<(), StoreError> {
        // A SET to the value read plus one, on condition it is still the value read: an SDK
        // retry of a call whose answer was lost fails the condition instead of counting twice.
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(key))
            .update_expression("SET lock_until = :l, sweeps = :next")
            .condition_expression(
                "attribute_exists(pending) AND (sweeps = :read OR attribute_not_exists(sweeps))",
            )
            .expression_attribute_values(":l", n(lock_until_ms))
            .expression_attribute_values(":next", n(u64::from(sweeps_read) + 1))
            .expression_attribute_values(":read", n(sweeps_read))
            .send()
            .await;
        conditional(r, update_failed).map(|_| ())
    }

    async fn load_state(&self, id: &str) -> Result<Option<(StateRecord, u64)>, StoreError> {
        self.load_versioned(format!("state#{id}"), "state").await
    }

    async fn save_state(
        &self,
        id: &str,
        state: &StateRecord,
        expected: Option<u64>,
        expires_at_s: i64,
    ) -> Result<bool, StoreError> {
        let key = format!("state#{id}");
        self.save_versioned(key, "state", state, expected, Some(expires_at_s))
            .await
    }

    async fn load_consent(
        &self,
        subscriber: &str,
    ) -> Result<Option<(ConsentLedger, u64)>, StoreError> {
        self.load_versioned(consent_key(subscriber), "consent")
            .await
    }

    async fn save_consent(
        &self,
        subscriber: &str,
        ledger: &ConsentLedger,
        expected: Option<u64>,
    ) -> Result<bool, StoreError> {
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
