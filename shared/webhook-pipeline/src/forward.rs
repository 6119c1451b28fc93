//! What `FORWARD_URL` receives: the normalized event JSON, and the forwarder's retry policy
//! (the worker budgets records with it). The forwarder itself is `webhook-forward`, linked
//! only into the worker and `serve`.

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::store::EventRecord;

/// The event as JSON: parameters as an object (repeated keys become arrays).
pub fn normalized(event: &EventRecord) -> Value {
    let mut params = Map::new();
    for (k, v) in event.params.iter() {
        match params.get_mut(k) {
            None => {
                params.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            Some(Value::Array(a)) => a.push(Value::String(v.to_owned())),
            Some(existing) => {
                *existing = Value::Array(vec![existing.take(), Value::String(v.to_owned())])
            }
        }
    }
    json!({
        "key": event.key,
        "kind": event.kind,
        "endpoint": event.endpoint,
        "received_at": event.received_at,
        "idempotency_token": event.idempotency_token,
        "params": params,
    })
}

/// Timeout of one POST to `FORWARD_URL`.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs per event and processing attempt; the queue's redelivery handles longer outages.
pub const FORWARD_ATTEMPTS: u32 = 3;

/// The longest one event's forwarding can take: every attempt timing out, plus the pauses
/// between them. `scripts/check_template.py` reads this line to check the worker's Timeout.
pub const FORWARD_WORST_CASE_SECS: u64 = 16;
