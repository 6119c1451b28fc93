//! Default slow work: POST the normalized event JSON to `FORWARD_URL` (a CRM, an API...).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tracing::warn;

use crate::store::EventRecord;
use crate::worker::{SlowWork, WorkError};

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

/// POSTs each event with a few quick retries; the queue's redelivery handles longer outages.
/// Sends `Idempotency-Key: <dedup key>` so the receiver can drop the rare repeat.
pub struct HttpForwarder {
    url: String,
    client: reqwest::Client,
    attempts: u32,
}

impl HttpForwarder {
    pub fn new(url: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("reqwest client with static settings");
        Self {
            url,
            client,
            attempts: 3,
        }
    }
}

#[async_trait]
impl SlowWork for HttpForwarder {
    fn name(&self) -> &'static str {
        "forward"
    }

    async fn run(&self, event: &EventRecord) -> Result<(), WorkError> {
        let body = normalized(event).to_string();
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1))).await;
            }
            let res = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("idempotency-key", &event.key)
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return Ok(()),
                // A 4xx other than 408/429 will not get better by retrying now.
                Ok(r)
                    if r.status().is_client_error()
                        && !matches!(r.status().as_u16(), 408 | 429) =>
                {
                    return Err(WorkError(format!("FORWARD_URL answered {}", r.status())));
                }
                Ok(r) => last = format!("FORWARD_URL answered {}", r.status()),
                Err(e) => last = format!("FORWARD_URL unreachable: {e}"),
            }
            warn!(key = %event.key, attempt, error = %last, "forward failed");
        }
        Err(WorkError(last))
    }
}
