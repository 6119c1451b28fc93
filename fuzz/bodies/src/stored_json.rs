//! The decoders of stored records: the DynamoDB item decoder (`event_of`,
//! shared/webhook-aws/src/dynamo.rs) on an item whose `event` attribute is any string (or not a
//! string, or missing), and the JSON forms every store and queue keeps (`EventRecord`, `Job`,
//! `Reply`, `StateRecord`, shared/webhook-pipeline). The SQLite rows themselves, column types
//! included, are [`crate::sqlite_rows`].
//!
//! Properties: no panic; `event_of` accepts exactly what `EventRecord`'s JSON form accepts and
//! gives the same record (with the item's `pk` as the key when the JSON has none); whatever decodes re-encodes to JSON that decodes to the same value;
//! a decoded record can be normalized for forwarding and `inspect`, and its state update
//! applied.
//!
//! Input: a byte choosing the shape of the DynamoDB item, then the stored text.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use webhook_aws::dynamo::event_of;
use webhook_pipeline::state::StateRecord;
use webhook_pipeline::{EventRecord, Job, Reply};

/// `value` survives JSON → value → JSON → value unchanged.
fn round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(value).expect("a decoded value encodes");
    let back: T = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("re-encoded JSON does not decode ({e}): {json}"));
    assert_eq!(&back, value, "JSON round trip changed the value: {json}");
}

fn check_record(rec: &EventRecord) {
    round_trips(rec);
    round_trips(&Job { event: rec.clone() });
    let normalized = webhook_pipeline::forward::normalized(rec);
    assert!(normalized.is_object());
    if let Some(u) = &rec.state_update {
        let mut state = StateRecord::default();
        state.apply(u, &rec.key, rec.received_at);
        round_trips(&state);
    }
}

pub fn run(data: &[u8]) {
    let shape = data.first().copied().unwrap_or(0);
    let bytes = data.get(1..).unwrap_or(b"");
    let text = String::from_utf8_lossy(bytes).into_owned();

    let reference = serde_json::from_str::<EventRecord>(&text);
    let mut item: HashMap<String, AttributeValue> = HashMap::new();
    item.insert("pk".into(), AttributeValue::S("sms#SM1".into()));
    let is_string = match shape % 6 {
        0 => {
            item.insert("event".into(), AttributeValue::S(text.clone()));
            true
        }
        1 => {
            // What a conditional put returns for an item: every attribute.
            item.insert("event".into(), AttributeValue::S(text.clone()));
            item.insert("pending".into(), AttributeValue::S("1".into()));
            item.insert("lock_until".into(), AttributeValue::N(text.clone()));
            item.insert("sweeps".into(), AttributeValue::N("0".into()));
            true
        }
        2 => {
            item.insert("event".into(), AttributeValue::N(text.clone()));
            false
        }
        3 => {
            item.insert("event".into(), AttributeValue::B(Blob::new(bytes)));
            false
        }
        4 => {
            item.insert(
                "event".into(),
                AttributeValue::L(vec![AttributeValue::S(text.clone())]),
            );
            false
        }
        _ => false,
    };
    let decoded = event_of(&item);
    match (&decoded, &reference, is_string) {
        (Ok(d), Ok(r), true) => {
            let mut r = r.clone();
            if r.key.is_empty() {
                r.key = "sms#SM1".into();
            }
            assert_eq!(d, &r);
            check_record(d);
        }
        (Err(e), Err(_), true) => {
            let _ = e.to_string();
        }
        (Err(_), _, false) => {}
        (d, r, s) => panic!("event_of: {d:?}, JSON decoder: {r:?}, string attribute: {s}"),
    }
    if !is_string && let Ok(r) = &reference {
        check_record(r);
    }

    // The other JSON forms a store or queue keeps.
    if let Ok(job) = serde_json::from_str::<Job>(&text) {
        round_trips(&job);
        check_record(&job.event);
    }
    if let Ok(reply) = serde_json::from_str::<Reply>(&text) {
        round_trips(&reply);
    }
    if let Ok(state) = serde_json::from_str::<StateRecord>(&text) {
        round_trips(&state);
    }
}
