//! Per-message and per-call state, folded from status callbacks that may arrive out of order
//! and more than once. The fold is idempotent (an event key is applied once) and monotonic
//! (the latest status never moves back to an earlier stage). A record stays small whatever
//! the number of events (a long conference sends thousands): the timeline keeps the last
//! [`TIMELINE_LIMIT`] entries, counters keep the totals, and the memory of applied events keeps
//! 8-byte digests of the last [`APPLIED_LIMIT`] keys.

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use twilio_webhook::payload::{CallStatus, FallbackOriginal, MessageStatus, Webhook};

/// One status seen for a message or call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The status (`delivered`, `in-progress`, `recording-completed`, `conference-end`...).
    pub status: String,
    /// Twilio's `SequenceNumber`, when it sends one (calls, conferences).
    pub sequence: Option<u32>,
    /// Stage of `status` (see [`message_rank`], [`call_rank`]).
    pub stage: u8,
    /// Twilio's `ErrorCode`, if any.
    pub error_code: Option<u32>,
    /// Unix ms when we received it.
    pub received_at: i64,
    /// The event's dedup key: applying the same event twice is a no-op.
    pub event_key: String,
}

/// The state record of one message (`msg#SM...`), call (`call#CA...`) or conference (`conf#CF...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Its key: `msg#SM...`, `call#CA...`, `conf#CF...` (or `recording#RE...`).
    pub id: String,
    /// The status of the highest rank seen (stage-0 entries, recordings, never count).
    pub latest_status: String,
    /// Stage of `latest_status`, then sequence number: the order statuses never go back in.
    pub latest_rank: (u8, i64),
    /// The latest `ErrorCode` seen.
    pub error_code: Option<u32>,
    /// What that code means, when it is one we know ([`error_meaning`]).
    pub error_meaning: Option<String>,
    /// The last [`TIMELINE_LIMIT`] entries, in event order.
    pub timeline: Vec<TimelineEntry>,
    /// Events applied in all.
    #[serde(default)]
    pub events: u64,
    /// Events applied per status.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// Which events were applied (the last [`APPLIED_LIMIT`]).
    #[serde(default)]
    pub applied: AppliedKeys,
}

/// Entries kept in a state record's timeline.
pub const TIMELINE_LIMIT: usize = 50;
/// Applied event keys remembered per state record: about 11 KB. A repeat is caught by the
/// event record's processed mark first; this memory covers the one window that mark cannot
/// (the state was saved, the worker died before marking the event processed), which closes
/// at the job's next delivery, long before 2,048 more events reach the same record.
pub const APPLIED_LIMIT: usize = 2048;

/// SHA-256 digests (first 8 bytes) of the last applied event keys, oldest first; stored as
/// one base64 string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedKeys(VecDeque<[u8; 8]>);

impl AppliedKeys {
    fn digest(key: &str) -> [u8; 8] {
        let d = Sha256::digest(key.as_bytes());
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }

    /// Whether the event `key` was applied (among the last [`APPLIED_LIMIT`]).
    pub fn contains(&self, key: &str) -> bool {
        let d = Self::digest(key);
        self.0.contains(&d)
    }

    fn insert(&mut self, key: &str) {
        if self.0.len() == APPLIED_LIMIT {
            self.0.pop_front();
        }
        self.0.push_back(Self::digest(key));
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for AppliedKeys {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flatten().copied().collect();
        s.serialize_str(&BASE64.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for AppliedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = BASE64.decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom(
                "applied keys: not a whole number of digests",
            ));
        }
        Ok(Self(
            bytes
                .chunks_exact(8)
                .map(|c| c.try_into().expect("chunks of 8"))
                .collect(),
        ))
    }
}

/// What a webhook contributes to a state record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateUpdate {
    /// The state record it changes (see [`StateRecord::id`]).
    pub id: String,
    /// The status it reports (as in [`TimelineEntry::status`]).
    pub status: String,
    /// Its stage, then its sequence number: compared with [`StateRecord::latest_rank`].
    pub rank: (u8, i64),
    /// Twilio's `SequenceNumber`, when it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u32>,
    /// Twilio's `ErrorCode`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        // The timeline check covers records written before `applied` existed.
        if self.applied.contains(event_key)
            || self.timeline.iter().any(|e| e.event_key == event_key)
        {
            return false;
        }
        self.applied.insert(event_key);
        self.events += 1;
        *self.counts.entry(u.status.clone()).or_default() += 1;
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
        if self.timeline.len() > TIMELINE_LIMIT {
            // The earliest in event order goes (which may be the one just inserted).
            self.timeline.remove(0);
        }
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

/// Meaning of the message error codes users meet most (Twilio's error dictionary): 21211,
/// 21408, 21610, 21612, 21614 (sending refused), 30001-30010 (delivery), 30032-30034 (US
/// toll-free and A2P 10DLC registration), 63016 (WhatsApp). Any other code has no meaning here.
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
        30032 => "toll-free number has not been verified",
        30033 => "US A2P 10DLC campaign suspended",
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

#[cfg(test)]
mod bounded {
    use super::*;

    fn conference_event(seq: u32) -> (StateUpdate, String) {
        let event = if seq % 3 == 0 {
            "participant-leave"
        } else {
            "participant-join"
        };
        (
            StateUpdate {
                id: "conf#CF1".into(),
                status: event.into(),
                rank: (1, i64::from(seq)),
                sequence: Some(seq),
                error_code: None,
            },
            format!("conference#CF00000000000000000000000000000001#{event}#{seq}"),
        )
    }

    /// Trust issue, item 5: every event was appended to the timeline and the whole item
    /// rewritten, until DynamoDB's 400 KB item limit failed every later event into the DLQ.
    #[test]
    fn ten_thousand_events_stay_small_and_end_in_the_right_state() {
        let mut state = StateRecord::default();
        // Out of order: odd sequence numbers first, then the even ones backwards.
        let order: Vec<u32> = (1..=10_000)
            .filter(|n| n % 2 == 1)
            .chain((1..=10_000).filter(|n| n % 2 == 0).rev())
            .collect();
        for (i, seq) in order.iter().enumerate() {
            let (u, key) = conference_event(*seq);
            assert!(state.apply(&u, &key, i as i64));
        }
        let end = StateUpdate {
            id: "conf#CF1".into(),
            status: "conference-end".into(),
            rank: (9, 10_001),
            sequence: Some(10_001),
            error_code: None,
        };
        assert!(state.apply(&end, "conference#CF1#conference-end#10001", 10_001));
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.len() < 100 * 1024, "{} bytes", json.len());
        assert_eq!(state.latest_status, "conference-end");
        assert_eq!(state.events, 10_001);
        assert_eq!(state.counts.values().sum::<u64>(), 10_001);
        assert_eq!(state.counts["participant-leave"], 3_333);
        assert_eq!(state.timeline.len(), TIMELINE_LIMIT);
        // The timeline holds the latest events, in event order.
        let seqs: Vec<u32> = state.timeline.iter().filter_map(|e| e.sequence).collect();
        assert_eq!(seqs, (9_952..=10_001).collect::<Vec<_>>());
        // Recent events are remembered: a redelivery is a no-op, before and after a round trip.
        let mut reloaded: StateRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(reloaded, state);
        // (the last applied were the even numbers, backwards, down to 2)
        for seq in [2, 1_000, 4_000] {
            let (u, key) = conference_event(seq);
            assert!(!reloaded.apply(&u, &key, 0), "{seq} applied twice");
        }
        assert_eq!(reloaded.events, 10_001);
        assert_eq!(reloaded.applied.len(), APPLIED_LIMIT);
    }

    /// A record saved before the applied-key memory existed still refuses a repeat.
    #[test]
    fn records_without_the_memory_still_deduplicate_by_timeline() {
        let old = r#"{"id":"msg#SM1","latest_status":"sent","latest_rank":[5,0],"error_code":null,
            "error_meaning":null,"timeline":[{"status":"sent","sequence":null,"stage":5,
            "error_code":null,"received_at":1,"event_key":"msgstatus#SM1#sent"}]}"#;
        let mut state: StateRecord = serde_json::from_str(old).unwrap();
        let u = StateUpdate {
            id: "msg#SM1".into(),
            status: "sent".into(),
            rank: (5, 0),
            sequence: None,
            error_code: None,
        };
        assert!(!state.apply(&u, "msgstatus#SM1#sent", 2));
    }
}
