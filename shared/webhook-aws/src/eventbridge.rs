//! EventBridge: with `EVENT_BUS_NAME` set, the worker sends each processed event to that bus
//! (one PutEvents entry), after `FORWARD_URL` if both are set.
//!
//! - `Source`: `twilio.webhooks`; `DetailType`: one per kind ([`detail_type`]);
//! - `Detail`: the normalized event, the same JSON `FORWARD_URL` receives
//!   (`webhook_pipeline::forward::normalized`); its `key` is the idempotency key (the
//!   `Idempotency-Key` header of a forward). A job that fails after a successful PutEvents is
//!   retried whole, so a rule target may see an event twice: deduplicate on `detail.key`;
//! - `Time`: when the webhook was received.
//!
//! An entry EventBridge refuses (`FailedEntryCount` > 0) fails the job like a failed call: SQS
//! redelivers it, and after 5 receives it waits in the DLQ.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use webhook_pipeline::forward::normalized;
use webhook_pipeline::store::EventRecord;
use webhook_pipeline::worker::{SlowWork, WorkError};

/// `Source` of every entry (rules match on it).
pub const SOURCE: &str = "twilio.webhooks";
/// The longest one PutEvents can take: the client's operation timeout (retries included).
/// `scripts/check_template.py` reads this line to check the worker's Timeout and BatchSize.
pub const PUT_EVENTS_WORST_CASE_SECS: u64 = 5;

/// The `DetailType` of an event kind (`EventRecord::kind`): what a rule matches to pick, say,
/// inbound messages only.
pub fn detail_type(kind: &str) -> String {
    let known = match kind {
        "inbound_message" => "Twilio Inbound Message",
        "inbound_call" => "Twilio Inbound Call",
        "message_status" => "Twilio Message Status",
        "call_status" => "Twilio Call Status",
        "recording_status" => "Twilio Recording Status",
        "conference_status" => "Twilio Conference Status",
        "fallback" => "Twilio Fallback",
        // A kind added later still gets a readable, stable name: `new_kind` -> "Twilio New Kind".
        other => {
            let words: Vec<String> = other
                .split('_')
                .filter(|w| !w.is_empty())
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_uppercase().chain(c).collect())
                        .unwrap_or_default()
                })
                .collect();
            return format!("Twilio {}", words.join(" "));
        }
    };
    known.to_owned()
}

/// The worker's EventBridge step.
pub struct EventBridge {
    client: Client,
    bus: String,
}

impl EventBridge {
    /// A client with the worker's SDK settings and an operation timeout of
    /// [`PUT_EVENTS_WORST_CASE_SECS`], the budget the worker plans each record with.
    pub fn new(sdk: &SdkConfig, bus: impl Into<String>) -> Self {
        let conf = aws_sdk_eventbridge::config::Builder::from(sdk)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .operation_attempt_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(PUT_EVENTS_WORST_CASE_SECS))
                    .build(),
            )
            .build();
        Self::with_client(Client::from_conf(conf), bus)
    }

    /// Puts events on `bus` with a client built by the caller.
    pub fn with_client(client: Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }

    /// The PutEvents entry of one event.
    pub fn entry(&self, event: &EventRecord) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(detail_type(&event.kind))
            .detail(normalized(event).to_string())
            .time(DateTime::from_millis(event.received_at))
            .build()
    }

    /// The EventBridge client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait]
impl SlowWork for EventBridge {
    fn name(&self) -> &'static str {
        "eventbridge"
    }

    fn max_duration(&self) -> Duration {
        Duration::from_secs(PUT_EVENTS_WORST_CASE_SECS)
    }

    async fn run(&self, event: &EventRecord) -> Result<(), WorkError> {
        let out = self
            .client
            .put_events()
            .entries(self.entry(event))
            .send()
            .await
            .map_err(|e| {
                WorkError(format!(
                    "PutEvents to bus {}: {}",
                    self.bus,
                    aws_sdk_eventbridge::error::DisplayErrorContext(e)
                ))
            })?;
        if out.failed_entry_count() > 0 {
            // One entry per call: the first result is this event's. Its code and message name
            // the cause (AccessDenied, a missing bus, an entry too large...), never the detail.
            let (code, message) = out
                .entries()
                .first()
                .map(|e| {
                    (
                        e.error_code().unwrap_or("unknown"),
                        e.error_message().unwrap_or(""),
                    )
                })
                .unwrap_or(("unknown", ""));
            return Err(WorkError(format!(
                "PutEvents to bus {}: the entry was refused: {code}: {message}",
                self.bus
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_detail_type() {
        let kinds = [
            "inbound_message",
            "inbound_call",
            "message_status",
            "call_status",
            "recording_status",
            "conference_status",
            "fallback",
        ];
        let mut types: Vec<String> = kinds.iter().map(|k| detail_type(k)).collect();
        assert_eq!(types[0], "Twilio Inbound Message");
        assert_eq!(types[3], "Twilio Call Status");
        types.sort();
        types.dedup();
        assert_eq!(types.len(), kinds.len());
        assert_eq!(detail_type("new_kind"), "Twilio New Kind");
    }

    /// The worker budgets each record with `max_duration`: it must be the client's own limit.
    #[tokio::test]
    async fn the_budget_is_the_clients_operation_timeout() {
        let sdk = SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let eb = EventBridge::new(&sdk, "bus");
        let timeouts = eb.client.config().timeout_config().expect("timeouts");
        assert_eq!(timeouts.operation_timeout(), Some(eb.max_duration()));
    }
}
