//! One summary log line per webhook request and per worker record: what on-call searches first
//! (CloudWatch Logs Insights: `filter outcome = "failed"`). Its fields are identifiers, never
//! content: endpoint, kind, the Sid (not personal data), Twilio's idempotency token, the HTTP
//! status. Phone numbers and bodies are not fields; a refused request's URL comes through
//! [`crate::redact::url_for_log`], which drops query values unless `LOG_PII`.

use std::fmt::Display;

use tracing::Level;
use twilio_webhook::payload::{Endpoint, MessageStatus, Webhook};

use crate::pipeline::Outcome;
use crate::state::error_meaning;
use crate::worker::{self, WorkerError};

/// The longest idempotency token logged: Twilio's are under 100 characters; a forged request
/// may send anything, and the line must stay small.
const TOKEN_MAX: usize = 128;

/// The Sid in a dedup key: every key is `<prefix>#<Sid>[#...]` (`sms#SM...`,
/// `msgstatus#SM...#delivered`, `conference#CF...#event#3`).
pub fn sid_of_key(key: &str) -> Option<&str> {
    key.split('#').nth(1).filter(|s| !s.is_empty())
}

/// What the summary line says about a verified, parsed webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFacts {
    /// The payload kind (`inbound_message`, `call_status`...).
    pub kind: &'static str,
    /// The Sid of its dedup key.
    pub sid: Option<String>,
    /// `ErrorCode` of a message status callback whose status is failed or undelivered.
    pub error_code: Option<u32>,
}

impl EventFacts {
    /// The facts of `webhook`, whose dedup key is `key`.
    pub fn of(webhook: &Webhook, key: &str) -> Self {
        let error_code = match webhook {
            Webhook::MessageStatus(s)
                if matches!(
                    s.message_status,
                    MessageStatus::Failed | MessageStatus::Undelivered
                ) =>
            {
                s.error_code
            }
            _ => None,
        };
        Self {
            kind: webhook.kind(),
            sid: sid_of_key(key).map(str::to_owned),
            error_code,
        }
    }
}

impl Outcome {
    /// The `outcome` field of the summary line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "new",
            Self::Duplicate => "duplicate",
            Self::InProgress => "in_progress",
            Self::Challenged => "challenged",
            Self::Refused => "refused",
            Self::Malformed => "malformed",
            Self::Failed => "failed",
        }
    }

    /// Failures page someone (ERROR), refusals may be a misconfiguration or an attack (WARN),
    /// and the Basic auth challenge is every webhook's first try (DEBUG, or it would double
    /// the log volume of a Basic auth setup).
    fn level(self) -> Level {
        match self {
            Self::Failed => Level::ERROR,
            Self::Refused | Self::Malformed => Level::WARN,
            Self::Challenged => Level::DEBUG,
            Self::Accepted | Self::Duplicate | Self::InProgress => Level::INFO,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Accepted => "webhook accepted",
            Self::Duplicate => "duplicate webhook: replaying the stored reply",
            Self::InProgress => {
                "duplicate webhook (its event is not processed yet): replaying the stored reply"
            }
            Self::Challenged => "Basic auth challenge sent",
            Self::Refused => "webhook refused",
            Self::Malformed => "malformed webhook refused",
            Self::Failed => "webhook failed",
        }
    }
}

/// The summary of one webhook request.
#[derive(Clone, Copy)]
pub struct RequestSummary<'a> {
    /// The endpoint called.
    pub endpoint: Endpoint,
    /// What became of the request.
    pub outcome: Outcome,
    /// The HTTP status answered.
    pub status: u16,
    /// How long the pipeline took.
    pub duration_ms: f64,
    /// Known once the request is verified and parsed.
    pub facts: Option<&'a EventFacts>,
    /// `I-Twilio-Idempotency-Token`, when sent.
    pub idempotency_token: Option<&'a str>,
    /// Why it failed or was refused, if it did.
    pub error: Option<&'a dyn Display>,
    /// The URL the signature was checked against, already redacted for logs.
    pub url: Option<&'a str>,
}

macro_rules! request_event {
    ($level:expr, $s:expr) => {{
        let s = $s;
        let error_code = s.facts.and_then(|f| f.error_code);
        tracing::event!(
            $level,
            endpoint = s.endpoint.as_str(),
            kind = s.facts.map(|f| f.kind),
            sid = s.facts.and_then(|f| f.sid.as_deref()),
            outcome = s.outcome.as_str(),
            status = s.status,
            duration_ms = round_ms(s.duration_ms),
            idempotency_token = s.idempotency_token.map(|t| clip(t, TOKEN_MAX)),
            error_code,
            error_meaning = error_code.and_then(error_meaning),
            error = s.error.map(tracing::field::display),
            url = s.url,
            "{}",
            s.outcome.message()
        )
    }};
}

impl RequestSummary<'_> {
    /// Emit the line, at the outcome's level (failures ERROR, refusals WARN).
    pub fn log(&self) {
        match self.outcome.level() {
            Level::ERROR => request_event!(Level::ERROR, self),
            Level::WARN => request_event!(Level::WARN, self),
            Level::DEBUG => request_event!(Level::DEBUG, self),
            _ => request_event!(Level::INFO, self),
        }
    }
}

/// What became of one worker record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done: folded into its state (and consent) record, slow work run.
    Processed,
    /// Already processed (a redelivery) or expired: acknowledged without effect.
    Skipped,
    /// Another worker holds its lease: the queue delivers it again.
    Busy,
    /// Failed: the queue delivers it again (and dead-letters it after its max receives).
    Failed,
    /// Not started: too little time left before the invocation's deadline.
    Deferred,
    /// The job's body could not be read: it goes to the DLQ for a human.
    Unreadable,
}

impl JobOutcome {
    /// The outcome of a [`crate::Worker::process`] result.
    pub fn of(result: &Result<worker::Outcome, WorkerError>) -> Self {
        match result {
            Ok(worker::Outcome::Processed) => Self::Processed,
            Ok(worker::Outcome::Skipped) => Self::Skipped,
            Err(WorkerError::Busy(_)) => Self::Busy,
            Err(_) => Self::Failed,
        }
    }

    /// The `outcome` field of the summary line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Skipped => "skipped",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::Deferred => "deferred",
            Self::Unreadable => "unreadable",
        }
    }

    fn level(self) -> Level {
        match self {
            Self::Failed | Self::Unreadable => Level::ERROR,
            Self::Busy | Self::Deferred => Level::WARN,
            Self::Processed | Self::Skipped => Level::INFO,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Processed => "event processed",
            Self::Skipped => "job skipped (already processed or expired)",
            Self::Busy => "another worker holds the record; the queue delivers it again",
            Self::Failed => "job failed; the queue delivers it again",
            Self::Deferred => "job not started before the deadline; the queue delivers it again",
            Self::Unreadable => "unreadable job; it ends in the DLQ",
        }
    }
}

/// The summary of one worker record.
#[derive(Clone, Copy)]
pub struct JobSummary<'a> {
    /// What became of the record.
    pub outcome: JobOutcome,
    /// The event's dedup key (its Sid is logged too), once the job is read.
    pub key: Option<&'a str>,
    /// The payload kind, once the job is read.
    pub kind: Option<&'a str>,
    /// Deliveries of this job so far, this one included (SQS `ApproximateReceiveCount`).
    pub attempts: Option<u32>,
    /// How long the slow work (`FORWARD_URL`) took, when it ran.
    pub forward_ms: Option<f64>,
    /// The queue's id of the message.
    pub message_id: Option<&'a str>,
    /// Why it failed, if it did.
    pub error: Option<&'a dyn Display>,
}

macro_rules! job_event {
    ($level:expr, $s:expr) => {{
        let s = $s;
        tracing::event!(
            $level,
            outcome = s.outcome.as_str(),
            key = s.key,
            sid = s.key.and_then(sid_of_key),
            kind = s.kind,
            attempts = s.attempts,
            forward_ms = s.forward_ms.map(round_ms),
            message_id = s.message_id,
            error = s.error.map(tracing::field::display),
            "{}",
            s.outcome.message()
        )
    }};
}

impl JobSummary<'_> {
    /// Emit the line, at the outcome's level (failures ERROR, busy and deferred WARN).
    pub fn log(&self) {
        match self.outcome.level() {
            Level::ERROR => job_event!(Level::ERROR, self),
            Level::WARN => job_event!(Level::WARN, self),
            _ => job_event!(Level::INFO, self),
        }
    }
}

/// Milliseconds to two decimals: enough to read, short in the line.
fn round_ms(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

fn clip(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_is_the_second_part_of_every_key_shape() {
        assert_eq!(sid_of_key("sms#SM1"), Some("SM1"));
        assert_eq!(sid_of_key("msgstatus#SM1#undelivered"), Some("SM1"));
        assert_eq!(sid_of_key("conference#CF1#participant-join#3"), Some("CF1"));
        assert_eq!(sid_of_key("nohash"), None);
        assert_eq!(sid_of_key("sms#"), None);
    }

    #[test]
    fn long_tokens_are_clipped_on_a_char_boundary() {
        assert_eq!(clip("abc", 2), "ab");
        assert_eq!(clip("ééé", 2), "éé");
        assert_eq!(clip("abc", 10), "abc");
    }
}
