//! Per-message and per-call state, folded from status callbacks that may arrive out of order
//! and more than once. The fold is idempotent (an event key is applied once) and monotonic
//! (the latest status never moves back to an earlier stage).

use serde::{Deserialize, Serialize};
use twilio_webhook::payload::{CallStatus, FallbackOriginal, MessageStatus, Webhook};

/// One status seen for a message or call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub status: String,
    pub sequence: Option<u32>,
    /// Stage of `status` (see [`message_rank`], [`call_rank`]).
    pub stage: u8,
    pub error_code: Option<u32>,
    /// Unix ms when we received it.
    pub received_at: i64,
    /// The event's dedup key: applying the same event twice is a no-op.
    pub event_key: String,
}

/// The state record of one message (`msg#SM...`), call (`call#CA...`) or conference (`conf#CF...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    pub id: String,
    pub latest_status: String,
    /// Stage of `latest_status`, then sequence number: the order statuses never go back in.
    pub latest_rank: (u8, i64),
    pub error_code: Option<u32>,
    pub error_meaning: Option<String>,
    pub timeline: Vec<TimelineEntry>,
}

/// What a webhook contributes to a state record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateUpdate {
    pub id: String,
    pub status: String,
    pub rank: (u8, i64),
    pub sequence: Option<u32>,
    pub error_code: Option<u32>,
}

impl StateUpdate {
    /// `None` for webhooks that do not change a message/call state (fallbacks).
    pub fn from_webhook(w: &Webhook) -> Option<Self> {
        let u = match w {
            Webhook::InboundMessage(m) => Self {
                id: format!("msg#{}", m.message_sid),
                status: "received".into(),
                rank: (message_rank(&MessageStatus::Received), 0),
                sequence: None,
                error_code: None,
            },
            Webhook::MessageStatus(s) => Self {
                id: format!("msg#{}", s.message_sid),
                status: s.message_status.to_string(),
                rank: (message_rank(&s.message_status), 0),
                sequence: None,
                error_code: s.error_code,
            },
            Webhook::InboundCall(c) => Self {
                id: format!("call#{}", c.call_sid),
                status: c.call_status.to_string(),
                rank: (call_rank(&c.call_status), -1),
                sequence: None,
                error_code: None,
            },
            Webhook::CallStatus(s) => Self {
                id: format!("call#{}", s.call_sid),
                status: s.call_status.to_string(),
                rank: (
                    call_rank(&s.call_status),
                    s.sequence_number.map_or(-1, i64::from),
                ),
                sequence: s.sequence_number,
                error_code: None,
            },
            Webhook::RecordingStatus(r) => Self {
                // A recording belongs to its call when Twilio says which; otherwise it has its own.
                id: r.call_sid.as_ref().map_or_else(
                    || format!("recording#{}", r.recording_sid),
                    |c| format!("call#{c}"),
                ),
                status: format!("recording-{}", r.recording_status),
                rank: (0, -1),
                sequence: None,
                error_code: r.error_code,
            },
            Webhook::ConferenceStatus(c) => Self {
                id: format!("conf#{}", c.conference_sid),
                status: c.status_callback_event.clone(),
                rank: (
                    if c.status_callback_event == "conference-end" {
                        9
                    } else {
                        1
                    },
                    c.sequence_number.map_or(-1, i64::from),
                ),
                sequence: c.sequence_number,
                error_code: None,
            },
            // An event first accepted at the fallback URL changes state as the primary would.
            Webhook::Fallback(f) => {
                return Self::from_webhook(&match &f.original {
                    FallbackOriginal::Message(m) => Webhook::InboundMessage(m.clone()),
                    FallbackOriginal::Call(c) => Webhook::InboundCall(c.clone()),
                });
            }
        };
        Some(u)
    }
}

impl StateRecord {
    /// Apply one event; `false` when it was already applied.
    pub fn apply(&mut self, u: &StateUpdate, event_key: &str, received_at: i64) -> bool {
        if self.timeline.iter().any(|e| e.event_key == event_key) {
            return false;
        }
        if self.id.is_empty() {
            self.id = u.id.clone();
        }
        // Rank 0 entries (recordings) join the timeline without touching the call status.
        if u.rank.0 > 0 && (self.latest_status.is_empty() || u.rank > self.latest_rank) {
            self.latest_status = u.status.clone();
            self.latest_rank = u.rank;
        }
        if let Some(code) = u.error_code {
            self.error_code = Some(code);
            self.error_meaning = error_meaning(code).map(str::to_owned);
        }
        let entry = TimelineEntry {
            status: u.status.clone(),
            sequence: u.sequence,
            stage: u.rank.0,
            error_code: u.error_code,
            received_at,
            event_key: event_key.to_owned(),
        };
        // Timeline in event order: by sequence when Twilio numbers them, else by stage, then
        // by arrival.
        let order = |e: &TimelineEntry| (e.sequence.map_or(-1, i64::from), e.stage, e.received_at);
        let pos = self
            .timeline
            .iter()
            .position(|e| order(e) > order(&entry))
            .unwrap_or(self.timeline.len());
        self.timeline.insert(pos, entry);
        true
    }
}

/// Message stages: a later stage is never replaced by an earlier one arriving late.
pub fn message_rank(s: &MessageStatus) -> u8 {
    use MessageStatus::*;
    match s {
        Scheduled => 1,
        Accepted => 2,
        Queued => 3,
        Sending => 4,
        Sent => 5,
        Receiving => 5,
        Received => 6,
        PartiallyDelivered => 7,
        Delivered => 8,
        Undelivered | Failed | Canceled => 8,
        Read => 9,
        Other(_) => 1,
    }
}

/// Call stages; terminal statuses outrank everything.
pub fn call_rank(s: &CallStatus) -> u8 {
    use CallStatus::*;
    match s {
        Queued => 1,
        Initiated => 2,
        Ringing => 3,
        InProgress => 4,
        Completed | Busy | Failed | NoAnswer | Canceled => 5,
        Other(_) => 1,
    }
}

/// Meaning of the message error codes users meet most (Twilio's error dictionary).
pub fn error_meaning(code: u32) -> Option<&'static str> {
    Some(match code {
        21211 => "invalid 'To' phone number",
        21408 => "permission to send to this region is not enabled",
        21610 => "recipient unsubscribed (replied STOP): cannot send until they reply START",
        21612 => "the 'To' number cannot be reached from this 'From' number",
        21614 => "'To' number is not a valid mobile number",
        30001 => "queue overflow: too many messages queued",
        30002 => "account suspended",
        30003 => "unreachable destination handset (off, out of coverage, or unsubscribed)",
        30004 => "message blocked (by the recipient, the carrier, or a block list)",
        30005 => "unknown destination handset (number does not exist)",
        30006 => "landline or unreachable carrier",
        30007 => "message filtered by the carrier (spam or content rules)",
        30008 => "unknown error from the carrier",
        30009 => "missing segment of a multi-part message",
        30010 => "message price exceeds the max price",
        30034 => "message from an unregistered US A2P 10DLC number",
        63016 => "WhatsApp: outside the 24-hour session window; use a template",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(status: &str, rank: (u8, i64), err: Option<u32>) -> StateUpdate {
        StateUpdate {
            id: "msg#SM1".into(),
            status: status.into(),
            rank,
            sequence: None,
            error_code: err,
        }
    }

    #[test]
    fn out_of_order_statuses_never_regress() {
        let mut s = StateRecord::default();
        assert!(s.apply(&upd("delivered", (8, 0), None), "k-delivered", 10));
        assert!(s.apply(&upd("sent", (5, 0), None), "k-sent", 20));
        assert!(s.apply(&upd("queued", (3, 0), None), "k-queued", 30));
        assert_eq!(s.latest_status, "delivered");
        assert_eq!(
            s.timeline
                .iter()
                .map(|e| e.status.as_str())
                .collect::<Vec<_>>(),
            ["queued", "sent", "delivered"]
        );
    }

    #[test]
    fn applying_an_event_twice_changes_nothing() {
        let mut s = StateRecord::default();
        assert!(s.apply(&upd("sent", (5, 0), None), "k", 1));
        let before = s.clone();
        assert!(!s.apply(&upd("sent", (5, 0), None), "k", 2));
        assert_eq!(s, before);
    }

    #[test]
    fn error_code_gets_its_meaning() {
        let mut s = StateRecord::default();
        s.apply(&upd("undelivered", (8, 0), Some(30003)), "k", 1);
        assert_eq!(s.error_code, Some(30003));
        assert!(s.error_meaning.as_deref().unwrap().contains("unreachable"));
        assert!(error_meaning(21610).unwrap().contains("STOP"));
        for code in [30004, 30005, 30006, 30007, 30008] {
            assert!(error_meaning(code).is_some(), "{code}");
        }
    }

    #[test]
    fn call_sequence_orders_within_a_stage() {
        let mut s = StateRecord::default();
        s.apply(&upd("completed", (5, 3), None), "c3", 1);
        s.apply(&upd("in-progress", (4, 2), None), "c2", 2);
        s.apply(&upd("ringing", (3, 1), None), "c1", 3);
        assert_eq!(s.latest_status, "completed");
        assert_eq!(s.timeline[0].status, "ringing");
    }
}
