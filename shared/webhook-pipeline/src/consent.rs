//! The opt-out ledger: who may be messaged, per pair (our number or Messaging Service,
//! subscriber), as the subscriber last said it.
//!
//! What changes it, decided at ingestion from the verified payload ([`ConsentUpdate::from_webhook`]):
//! - an inbound message whose `OptOutType` (Advanced Opt-Out) is STOP, START or HELP; without
//!   it (or with a value Twilio may add later), the body matched as Twilio matches its default
//!   keywords: the whole body, trimmed, case-insensitive ("stop please" is not an opt-out);
//! - a message status callback with error 21610 (the recipient has opted out): the pair is
//!   (`From`, `To`) of the outbound message.
//!
//! "Ours" is the `MessagingServiceSid` when the webhook carries one (Twilio scopes opt-outs to
//! the service then), else our number.
//!
//! How it is applied ([`ConsentLedger::apply`], by the worker): a pair keeps the latest event
//! by `(time, MessageSid)`, so an older event processed late never overwrites a newer one, and
//! a repeat is a no-op. HELP changes no consent; only its last time is kept. The time is the
//! webhook's arrival: Twilio sends no event time with inbound messages or message status
//! callbacks.
//!
//! Storage: one ledger per subscriber (`consent#<subscriber>`), holding every pair of that
//! subscriber, so one read answers "may I message +1555...?" for all our senders. Consent never
//! expires (no TTL): it is a compliance record.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use twilio_webhook::payload::{FallbackOriginal, InboundMessage, OptOutType, Webhook};

use crate::store::{ConsentStore, PortError};

/// The error code of a message sent to a recipient who opted out.
pub const OPTED_OUT_ERROR: u32 = 21610;

/// Twilio's default opt-out keywords (with the newer REVOKE and OPTOUT).
pub const OPT_OUT_KEYWORDS: [&str; 8] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
/// Twilio's default opt-in keywords.
pub const OPT_IN_KEYWORDS: [&str; 3] = ["START", "YES", "UNSTOP"];
/// Twilio's default help keywords.
pub const HELP_KEYWORDS: [&str; 2] = ["HELP", "INFO"];

/// What a subscriber said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentAction {
    /// An opt-out keyword (STOP...): message them no more.
    OptOut,
    /// An opt-in keyword (START...): messages are welcome again.
    OptIn,
    /// A help keyword (HELP, INFO): changes no consent.
    Help,
}

/// How the action was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentVia {
    /// Twilio's `OptOutType` parameter (Advanced Opt-Out).
    OptOutType,
    /// The body is one of the default keywords.
    Keyword,
    /// A status callback with error 21610.
    Error21610,
}

/// The keyword action of a message body: the whole body, trimmed, case-insensitive.
pub fn keyword_action(body: &str) -> Option<ConsentAction> {
    let word = body.trim();
    let is = |list: &[&str]| list.iter().any(|k| word.eq_ignore_ascii_case(k));
    if is(&OPT_OUT_KEYWORDS) {
        Some(ConsentAction::OptOut)
    } else if is(&OPT_IN_KEYWORDS) {
        Some(ConsentAction::OptIn)
    } else if is(&HELP_KEYWORDS) {
        Some(ConsentAction::Help)
    } else {
        None
    }
}

/// What an inbound message says about consent, and how that is known: `OptOutType` first
/// (it reflects the account's own keyword lists), the default keywords otherwise.
pub fn message_action(m: &InboundMessage) -> Option<(ConsentAction, ConsentVia)> {
    let from_type = m.opt_out_type.as_ref().and_then(|t| {
        let t = t.as_str().trim();
        [
            (OptOutType::Stop, ConsentAction::OptOut),
            (OptOutType::Start, ConsentAction::OptIn),
            (OptOutType::Help, ConsentAction::Help),
        ]
        .into_iter()
        .find(|(known, _)| t.eq_ignore_ascii_case(known.as_str()))
        .map(|(_, action)| action)
    });
    match from_type {
        Some(action) => Some((action, ConsentVia::OptOutType)),
        None => keyword_action(m.body.as_str()).map(|a| (a, ConsentVia::Keyword)),
    }
}

/// What one event changes in the ledger, worked out at ingestion (where the payload was
/// verified) and stored with the event.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentUpdate {
    /// Our number, or the Messaging Service Sid.
    pub ours: String,
    /// The subscriber's number.
    pub subscriber: String,
    /// What the subscriber said.
    pub action: ConsentAction,
    /// How that is known.
    pub via: ConsentVia,
    /// Unix ms of the event.
    pub at_ms: i64,
    /// The MessageSid of the event (the inbound message, or the failed outbound one).
    pub message_sid: String,
}

// Phone numbers are personal data: never in a log line by accident.
impl std::fmt::Debug for ConsentUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentUpdate")
            .field("action", &self.action)
            .field("via", &self.via)
            .field("at_ms", &self.at_ms)
            .field("message_sid", &self.message_sid)
            .finish_non_exhaustive()
    }
}

impl ConsentUpdate {
    /// `None` for webhooks that say nothing about consent.
    pub fn from_webhook(w: &Webhook, received_at_ms: i64) -> Option<Self> {
        let message = |m: &InboundMessage| {
            let (action, via) = message_action(m)?;
            Some(Self {
                ours: m
                    .messaging_service_sid
                    .as_ref()
                    .map_or_else(|| m.to.as_str().to_owned(), |s| s.as_str().to_owned()),
                subscriber: m.from.as_str().to_owned(),
                action,
                via,
                at_ms: received_at_ms,
                message_sid: m.message_sid.as_str().to_owned(),
            })
        };
        match w {
            Webhook::InboundMessage(m) => message(m),
            Webhook::Fallback(f) => match &f.original {
                FallbackOriginal::Message(m) => message(m),
                FallbackOriginal::Call(_) => None,
            },
            Webhook::MessageStatus(s) if s.error_code == Some(OPTED_OUT_ERROR) => {
                let service = s
                    .raw
                    .get("MessagingServiceSid")
                    .map(str::trim)
                    .filter(|v| !v.is_empty());
                let ours = service
                    .map(str::to_owned)
                    .or_else(|| s.from.as_ref().map(|f| f.as_str().to_owned()))?;
                Some(Self {
                    ours,
                    subscriber: s.to.as_ref()?.as_str().to_owned(),
                    action: ConsentAction::OptOut,
                    via: ConsentVia::Error21610,
                    at_ms: received_at_ms,
                    message_sid: s.message_sid.as_str().to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The order events of one pair are applied in: time, then MessageSid (a tie-break that
    /// every worker computes the same way).
    fn order(&self) -> (i64, &str) {
        (self.at_ms, &self.message_sid)
    }
}

/// May we message this subscriber from this sender?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentStatus {
    /// The latest word was an opt-out: do not message them.
    OptedOut,
    /// The latest word was an opt-in.
    OptedIn,
}

/// The consent of one pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEntry {
    /// `None` while only HELP was seen.
    pub status: Option<ConsentStatus>,
    /// Unix ms of the event that set `status`.
    pub changed_at_ms: Option<i64>,
    /// Its MessageSid.
    pub source_message_sid: Option<String>,
    /// How the action that set `status` was known.
    pub via: Option<ConsentVia>,
    /// Unix ms of the latest HELP (it changes no consent).
    pub last_help_at_ms: Option<i64>,
    /// The MessageSid of the latest HELP.
    pub last_help_message_sid: Option<String>,
}

impl ConsentEntry {
    /// Whether the pair opted out (and did not opt in again since).
    pub fn is_opted_out(&self) -> bool {
        self.status == Some(ConsentStatus::OptedOut)
    }
}

/// Every pair of one subscriber, keyed by our number or Messaging Service Sid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentLedger {
    /// The consent of each pair, by our number or Messaging Service Sid.
    pub pairs: BTreeMap<String, ConsentEntry>,
}

impl ConsentLedger {
    /// Apply one event; `false` when it changes nothing (a repeat, or older than what the
    /// pair holds).
    pub fn apply(&mut self, u: &ConsentUpdate) -> bool {
        let entry = self.pairs.entry(u.ours.clone()).or_default();
        let newer = |at: Option<i64>, sid: &Option<String>| match (at, sid) {
            (Some(at), Some(sid)) => u.order() > (at, sid.as_str()),
            _ => true,
        };
        match u.action {
            ConsentAction::Help => {
                if !newer(entry.last_help_at_ms, &entry.last_help_message_sid) {
                    return false;
                }
                entry.last_help_at_ms = Some(u.at_ms);
                entry.last_help_message_sid = Some(u.message_sid.clone());
            }
            ConsentAction::OptOut | ConsentAction::OptIn => {
                if !newer(entry.changed_at_ms, &entry.source_message_sid) {
                    return false;
                }
                entry.status = Some(if u.action == ConsentAction::OptOut {
                    ConsentStatus::OptedOut
                } else {
                    ConsentStatus::OptedIn
                });
                entry.changed_at_ms = Some(u.at_ms);
                entry.source_message_sid = Some(u.message_sid.clone());
                entry.via = Some(u.via);
            }
        }
        true
    }

    /// The consent of one pair.
    pub fn get(&self, ours: &str) -> Option<&ConsentEntry> {
        self.pairs.get(ours)
    }
}

/// Read access to the ledger, for a [`crate::SlowWork`] (get one with
/// [`crate::Worker::consents`] and keep it in the work).
#[derive(Clone)]
pub struct Consents {
    store: Arc<dyn ConsentStore>,
}

impl Consents {
    /// Reads from `store`.
    pub fn new(store: Arc<dyn ConsentStore>) -> Self {
        Self { store }
    }

    /// Every pair of `subscriber`.
    pub async fn ledger(&self, subscriber: &str) -> Result<ConsentLedger, PortError> {
        Ok(self
            .store
            .load_consent(subscriber)
            .await?
            .map(|(l, _)| l)
            .unwrap_or_default())
    }

    /// The consent between `ours` (number or Messaging Service Sid) and `subscriber`.
    pub async fn get(
        &self,
        ours: &str,
        subscriber: &str,
    ) -> Result<Option<ConsentEntry>, PortError> {
        Ok(self.ledger(subscriber).await?.pairs.remove(ours))
    }

    /// Whether `subscriber` opted out from `ours` (the safe answer for sending).
    pub async fn is_opted_out(&self, ours: &str, subscriber: &str) -> Result<bool, PortError> {
        Ok(self
            .get(ours, subscriber)
            .await?
            .is_some_and(|e| e.is_opted_out()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(action: ConsentAction, at_ms: i64, sid: &str) -> ConsentUpdate {
        ConsentUpdate {
            ours: "+15550000001".into(),
            subscriber: "+15559990000".into(),
            action,
            via: ConsentVia::Keyword,
            at_ms,
            message_sid: sid.into(),
        }
    }

    #[test]
    fn every_keyword_in_any_case_with_surrounding_whitespace() {
        for (list, action) in [
            (&OPT_OUT_KEYWORDS[..], ConsentAction::OptOut),
            (&OPT_IN_KEYWORDS[..], ConsentAction::OptIn),
            (&HELP_KEYWORDS[..], ConsentAction::Help),
        ] {
            for k in list {
                let lower = k.to_ascii_lowercase();
                let mut mixed: String = lower.clone();
                mixed.replace_range(..1, &k[..1]);
                for body in [
                    k.to_string(),
                    lower.clone(),
                    mixed,
                    format!("  {k}\n"),
                    format!("\t{lower} "),
                ] {
                    assert_eq!(keyword_action(&body), Some(action), "{body:?}");
                }
            }
        }
    }

    #[test]
    fn a_keyword_is_the_whole_body() {
        for body in [
            "stop please",
            "STOP!",
            "stop.",
            "please stop",
            "S TOP",
            "stopp",
            "",
            "   ",
            "yes please",
            "help me",
            "unsubscribe me",
        ] {
            assert_eq!(keyword_action(body), None, "{body:?}");
        }
    }

    #[test]
    fn stop_and_start_out_of_order_keep_the_latest() {
        let stop = upd(ConsentAction::OptOut, 1_000, "SM1");
        let start = upd(ConsentAction::OptIn, 2_000, "SM2");
        // In order.
        let mut a = ConsentLedger::default();
        assert!(a.apply(&stop));
        assert!(a.apply(&start));
        // Processed the other way round: the older STOP changes nothing.
        let mut b = ConsentLedger::default();
        assert!(b.apply(&start));
        assert!(!b.apply(&stop));
        assert_eq!(a, b);
        let e = b.get("+15550000001").unwrap();
        assert_eq!(e.status, Some(ConsentStatus::OptedIn));
        assert_eq!(e.changed_at_ms, Some(2_000));
        assert_eq!(e.source_message_sid.as_deref(), Some("SM2"));
    }

    #[test]
    fn duplicates_are_no_ops() {
        let mut l = ConsentLedger::default();
        let stop = upd(ConsentAction::OptOut, 1_000, "SM1");
        assert!(l.apply(&stop));
        let before = l.clone();
        assert!(!l.apply(&stop));
        let help = upd(ConsentAction::Help, 1_500, "SM3");
        assert!(l.apply(&help));
        let after_help = l.clone();
        assert!(!l.apply(&help));
        assert_eq!(l, after_help);
        assert_ne!(before, after_help);
    }

    #[test]
    fn help_keeps_consent_and_only_its_latest_time() {
        let mut l = ConsentLedger::default();
        assert!(l.apply(&upd(ConsentAction::Help, 500, "SM0")));
        assert_eq!(l.get("+15550000001").unwrap().status, None);
        assert!(l.apply(&upd(ConsentAction::OptOut, 1_000, "SM1")));
        assert!(l.apply(&upd(ConsentAction::Help, 3_000, "SM3")));
        assert!(!l.apply(&upd(ConsentAction::Help, 2_000, "SM2")));
        let e = l.get("+15550000001").unwrap();
        assert!(e.is_opted_out());
        assert_eq!(e.last_help_at_ms, Some(3_000));
        assert_eq!(e.last_help_message_sid.as_deref(), Some("SM3"));
    }

    #[test]
    fn same_time_ties_break_on_the_message_sid_in_any_order() {
        let x = upd(ConsentAction::OptOut, 1_000, "SMa");
        let y = upd(ConsentAction::OptIn, 1_000, "SMb");
        let mut a = ConsentLedger::default();
        a.apply(&x);
        a.apply(&y);
        let mut b = ConsentLedger::default();
        b.apply(&y);
        b.apply(&x);
        assert_eq!(a, b);
        assert_eq!(
            a.get("+15550000001").unwrap().status,
            Some(ConsentStatus::OptedIn)
        );
    }

    #[test]
    fn pairs_are_independent() {
        let mut l = ConsentLedger::default();
        l.apply(&upd(ConsentAction::OptOut, 1_000, "SM1"));
        let mut other = upd(ConsentAction::OptIn, 500, "SM2");
        other.ours = "MG00000000000000000000000000000001".into();
        assert!(l.apply(&other));
        assert!(l.get("+15550000001").unwrap().is_opted_out());
        assert!(
            !l.get("MG00000000000000000000000000000001")
                .unwrap()
                .is_opted_out()
        );
    }

    #[test]
    fn debug_hides_the_numbers() {
        let text = format!("{:?}", upd(ConsentAction::OptOut, 1, "SM1"));
        assert!(!text.contains("+1555"), "{text}");
    }
}
