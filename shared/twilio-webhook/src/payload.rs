//! Typed webhook payloads.
//!
//! Every payload is built from a [`VerifiedRequest`], so holding one proves the signature was
//! checked. Each keeps all raw parameters ([`FormParams`]): Twilio adds parameters without
//! notice, and nothing it sends is ever dropped.
//!
//! `Debug` of phone numbers and message bodies is redacted, so `?payload` in a log line does
//! not leak personal data.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::form::FormParams;
use crate::signature::VerifiedRequest;

/// Why a verified request's parameters do not make the expected payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// This required parameter is absent or empty.
    #[error("required parameter {0} is missing or empty")]
    Missing(&'static str),
    /// A parameter is present but not a valid sid or number.
    #[error("parameter {name} has an invalid value")]
    Invalid {
        /// The parameter's name.
        name: &'static str,
    },
    /// A request at the status endpoint that matches no known callback kind.
    #[error(
        "status callback of an unknown kind (no MessageStatus, CallStatus, RecordingStatus or StatusCallbackEvent)"
    )]
    UnknownCallback,
}

macro_rules! sid {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Sids are ASCII letters and digits (a two-letter prefix and 32 hex digits today);
            /// only that alphabet and a sane length are enforced so a new prefix still works.
            pub fn parse(s: &str) -> Option<Self> {
                let ok = (2..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
                ok.then(|| Self(s.to_owned()))
            }

            /// The sid as Twilio sent it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

sid!(/// `SM...`/`MM...`: one message.
    MessageSid);
sid!(/// `CA...`: one call.
    CallSid);
sid!(/// `AC...`: the account.
    AccountSid);
sid!(/// `RE...`: one recording.
    RecordingSid);
sid!(/// `CF...`: one conference.
    ConferenceSid);
sid!(/// `MG...`: a messaging service.
    MessagingServiceSid);

/// A phone number or address (`+14155550100`, `whatsapp:+1...`, `client:alice`, `sip:...`).
/// `Debug` shows only the last two characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Wraps a number or address as given; nothing is checked or normalised.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The full, unredacted value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs: `+1*********00`.
    pub fn redacted(&self) -> String {
        redact(&self.0, 2)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.redacted())
    }
}

/// Message text. `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageBody(String);

impl MessageBody {
    /// The full text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageBody(<{} chars>)", self.0.chars().count())
    }
}

fn redact(s: &str, keep: usize) -> String {
    let n = s.chars().count();
    let prefix = if s.starts_with('+') { 2 } else { 0 };
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < prefix || i + keep >= n { c } else { '*' })
        .collect()
}

/// Defines a status enum with Twilio's wire names and an `Other` catch-all, because Twilio
/// adds statuses without notice and an unknown one must still be stored.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $(
                #[doc = concat!("`", $wire, "`")]
                $variant,
            )+
            /// A value not listed here, kept as Twilio sent it.
            Other(String),
        }

        impl $name {
            /// The value as Twilio sends it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $wire,)+
                    Self::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $($wire => Self::$variant,)+
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::from(s.as_str())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(/// `MessageStatus` of a message status callback.
MessageStatus {
    Accepted = "accepted",
    Scheduled = "scheduled",
    Queued = "queued",
    Sending = "sending",
    Sent = "sent",
    Delivered = "delivered",
    Undelivered = "undelivered",
    Failed = "failed",
    Read = "read",
    PartiallyDelivered = "partially_delivered",
    Canceled = "canceled",
    Receiving = "receiving",
    Received = "received",
});

wire_enum!(/// `CallStatus` of an inbound call or a call status callback.
CallStatus {
    Queued = "queued",
    Initiated = "initiated",
    Ringing = "ringing",
    InProgress = "in-progress",
    Completed = "completed",
    Busy = "busy",
    Failed = "failed",
    NoAnswer = "no-answer",
    Canceled = "canceled",
});

wire_enum!(/// `Direction` of a call.
Direction {
    Inbound = "inbound",
    OutboundApi = "outbound-api",
    OutboundDial = "outbound-dial",
});

wire_enum!(/// `RecordingStatus` of a recording status callback.
RecordingStatus {
    InProgress = "in-progress",
    Completed = "completed",
    Absent = "absent",
    Failed = "failed",
});

wire_enum!(/// `OptOutType` (Advanced Opt-Out keywords).
OptOutType {
    Stop = "STOP",
    Start = "START",
    Help = "HELP",
});

/// City/state/zip/country Twilio derives from a number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geo {
    /// `FromCity` / `ToCity`.
    pub city: Option<String>,
    /// `FromState` / `ToState`.
    pub state: Option<String>,
    /// `FromZip` / `ToZip`.
    pub zip: Option<String>,
    /// `FromCountry` / `ToCountry` (ISO 3166-1 alpha-2).
    pub country: Option<String>,
}

/// One MMS attachment (`MediaUrl{N}` / `MediaContentType{N}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// `MediaUrl{N}`: where Twilio serves the file.
    pub url: String,
    /// `MediaContentType{N}`, e.g. `image/jpeg`.
    pub content_type: Option<String>,
}

/// Messaging "A message comes in" (SMS, MMS, WhatsApp...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// `MessageSid` (or the deprecated `SmsMessageSid` / `SmsSid`).
    pub message_sid: MessageSid,
    /// `AccountSid`.
    pub account_sid: AccountSid,
    /// `MessagingServiceSid`, when the number belongs to a messaging service.
    pub messaging_service_sid: Option<MessagingServiceSid>,
    /// `From`: the sender.
    pub from: PhoneNumber,
    /// `To`: the receiving number.
    pub to: PhoneNumber,
    /// `Body`; empty for a media-only message.
    pub body: MessageBody,
    /// `NumMedia`; 0 when absent.
    pub num_media: u32,
    /// `NumSegments`: SMS segments the text took.
    pub num_segments: Option<u32>,
    /// `MediaUrl{N}` / `MediaContentType{N}`, from index 0 up to the first gap.
    pub media: Vec<Media>,
    /// `FromCity`, `FromState`, `FromZip`, `FromCountry`.
    pub from_geo: Geo,
    /// `ToCity`, `ToState`, `ToZip`, `ToCountry`.
    pub to_geo: Geo,
    /// WhatsApp sender's profile name.
    pub profile_name: Option<String>,
    /// WhatsApp id of the sender.
    pub wa_id: Option<PhoneNumber>,
    /// `OptOutType`: set when the text is a `STOP`, `START` or `HELP` keyword.
    pub opt_out_type: Option<OptOutType>,
    /// Every parameter Twilio sent, unknown ones included.
    pub raw: FormParams,
}

/// Voice "A call comes in".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundCall {
    /// `CallSid`.
    pub call_sid: CallSid,
    /// `AccountSid`.
    pub account_sid: AccountSid,
    /// `From`: the caller; empty when absent.
    pub from: PhoneNumber,
    /// `To`: the called number; empty when absent.
    pub to: PhoneNumber,
    /// `CallStatus`; `ringing` when absent.
    pub call_status: CallStatus,
    /// `Direction`.
    pub direction: Option<Direction>,
    /// `ApiVersion`, e.g. `2010-04-01`.
    pub api_version: Option<String>,
    /// `ForwardedFrom`: the number that forwarded the call, when the carrier says.
    pub forwarded_from: Option<PhoneNumber>,
    /// `CallerName` (CNAM lookup, when enabled).
    pub caller_name: Option<String>,
    /// `ParentCallSid`: the call that dialed this one.
    pub parent_call_sid: Option<CallSid>,
    /// `FromCity`, `FromState`, `FromZip`, `FromCountry`.
    pub from_geo: Geo,
    /// `ToCity`, `ToState`, `ToZip`, `ToCountry`.
    pub to_geo: Geo,
    /// Every parameter Twilio sent, unknown ones included.
    pub raw: FormParams,
}

/// Message status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageStatusCallback {
    /// `MessageSid` (or the deprecated `SmsSid`).
    pub message_sid: MessageSid,
    /// `AccountSid`.
    pub account_sid: Option<AccountSid>,
    /// `MessageStatus` (or the deprecated `SmsStatus`).
    pub message_status: MessageStatus,
    /// `ErrorCode`, on `failed` and `undelivered`.
    pub error_code: Option<u32>,
    /// `From`.
    pub from: Option<PhoneNumber>,
    /// `To`.
    pub to: Option<PhoneNumber>,
    /// `YYMMDDhhmm` from the carrier's delivery receipt.
    pub raw_dlr_done_date: Option<String>,
    /// Every parameter Twilio sent, unknown ones included.
    pub raw: FormParams,
}

/// Call status callback (`statusCallback` of a call, with `StatusCallbackEvent`s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStatusCallback {
    /// `CallSid`.
    pub call_sid: CallSid,
    /// `AccountSid`.
    pub account_sid: Option<AccountSid>,
    /// `CallStatus`.
    pub call_status: CallStatus,
    /// Order of callbacks for this call, from 0; arrival order is not guaranteed.
    pub sequence_number: Option<u32>,
    /// `CallDuration`: seconds, on `completed`.
    pub call_duration: Option<u32>,
    /// `Duration`: billed minutes, on `completed`.
    pub duration: Option<u32>,
    /// RFC 2822 time of the event.
    pub timestamp: Option<String>,
    /// `CallbackSource`, e.g. `call-progress-events`.
    pub callback_source: Option<String>,
    /// `SipResponseCode`: the call's final SIP response code.
    pub sip_response_code: Option<u32>,
    /// Every parameter Twilio sent, unknown ones included.
    pub raw: FormParams,
}

/// Recording status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingStatusCallback {
    /// `RecordingSid`.
    pub recording_sid: RecordingSid,
    /// `RecordingStatus`.
    pub recording_status: RecordingStatus,
    /// `RecordingUrl`: where the audio can be fetched.
    pub recording_url: Option<String>,
    /// `RecordingDuration`: seconds.
    pub recording_duration: Option<u32>,
    /// `RecordingChannels`: 1 or 2.
    pub recording_channels: Option<u32>,
    /// `RecordingStartTime` (RFC 2822).
    pub recording_start_time: Option<String>,
    /// `RecordingSource`, e.g. `RecordVerb` or `DialVerb`.
    pub recording_source: Option<String>,
    /// `CallSid` of the recorded call.
    pub call_sid: Option<CallSid>,
    /// `AccountSid`.
    pub account_sid: Option<AccountSid>,
    /// `ErrorCode`, when the recording failed.
    pub error_code: Option<u32>,
    /// Every parameter Twilio sent, unknown ones included.
    pub raw: FormParams,
}

/// Conference status callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceStatusCallback {
    /// `ConferenceSid`.
    pub conference_sid: ConferenceSid,
    /// `StatusCallbackEvent`, e.g. `participant-join`.
    pub status_callback_event: String,
    /// `FriendlyName`: the name given in `<Conference>`.
    pub friendly_name: Option<String>,
    /// `SequenceNumber`: order of callbacks for this conference.
    pub sequence_number: Option<u32>,
    /// `CallSid` of the participant, for participant events.
    pub call_sid: Option<CallSid>,
    /// `Timestamp` (RFC 2822).
    pub timestamp: Option<String>,
    /// Every parameter Twilio sent, unknown ones included.
    pub raw: FormParams,
}

/// What the fallback URL received: the original webhook plus Twilio's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// `ErrorCode`: why the primary URL failed, e.g. 11200.
    pub error_code: Option<u32>,
    /// `ErrorUrl`: the primary URL that failed.
    pub error_url: Option<String>,
    /// The webhook as it was sent to the primary URL.
    pub original: FallbackOriginal,
}

/// The webhook the primary URL failed to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FallbackOriginal {
    /// An incoming message (no `CallSid`).
    Message(InboundMessage),
    /// An incoming call.
    Call(InboundCall),
}

/// The endpoint a request arrived at; decides how its parameters are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// Incoming messages.
    Sms,
    /// Incoming calls.
    Voice,
    /// Message, call, recording and conference status callbacks.
    Status,
    /// Twilio's fallback URL, called when the primary URL failed.
    Fallback,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 4] = [Self::Sms, Self::Voice, Self::Status, Self::Fallback];

    /// `sms`, `voice`, `status` or `fallback`, as serde writes it too.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
            Self::Status => "status",
            Self::Fallback => "fallback",
        }
    }
}

/// Any webhook this project handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Webhook {
    /// An incoming message.
    InboundMessage(InboundMessage),
    /// An incoming call.
    InboundCall(InboundCall),
    /// A message status callback.
    MessageStatus(MessageStatusCallback),
    /// A call status callback.
    CallStatus(CallStatusCallback),
    /// A recording status callback.
    RecordingStatus(RecordingStatusCallback),
    /// A conference status callback.
    ConferenceStatus(ConferenceStatusCallback),
    /// A request at the fallback URL.
    Fallback(Fallback),
}

impl Webhook {
    /// Read the payload of a verified request that arrived at `endpoint`.
    pub fn parse(endpoint: Endpoint, req: &VerifiedRequest) -> Result<Self, PayloadError> {
        let p = req.params();
        match endpoint {
            Endpoint::Sms => InboundMessage::from_params(p).map(Self::InboundMessage),
            Endpoint::Voice => InboundCall::from_params(p).map(Self::InboundCall),
            Endpoint::Status => status_callback(p),
            Endpoint::Fallback => Fallback::from_params(p).map(Self::Fallback),
        }
    }

    /// Key under which this event is stored once. A fallback uses its original's key, so a
    /// fallback of an already stored webhook is a duplicate, not a second event.
    pub fn dedup_key(&self) -> String {
        match self {
            Self::InboundMessage(m) => format!("sms#{}", m.message_sid),
            Self::InboundCall(c) => format!("call#{}", c.call_sid),
            Self::MessageStatus(s) => format!("msgstatus#{}#{}", s.message_sid, s.message_status),
            Self::CallStatus(s) => match s.sequence_number {
                Some(n) => format!("callstatus#{}#{n}", s.call_sid),
                None => format!("callstatus#{}#{}", s.call_sid, s.call_status),
            },
            Self::RecordingStatus(r) => {
                format!("recording#{}#{}", r.recording_sid, r.recording_status)
            }
            Self::ConferenceStatus(c) => format!(
                "conference#{}#{}#{}",
                c.conference_sid,
                c.status_callback_event,
                c.sequence_number.map_or(String::new(), |n| n.to_string())
            ),
            Self::Fallback(f) => match &f.original {
                FallbackOriginal::Message(m) => Self::InboundMessage(m.clone()).dedup_key(),
                FallbackOriginal::Call(c) => Self::InboundCall(c.clone()).dedup_key(),
            },
        }
    }

    /// Short name of the kind, for logs and the stored event.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InboundMessage(_) => "inbound_message",
            Self::InboundCall(_) => "inbound_call",
            Self::MessageStatus(_) => "message_status",
            Self::CallStatus(_) => "call_status",
            Self::RecordingStatus(_) => "recording_status",
            Self::ConferenceStatus(_) => "conference_status",
            Self::Fallback(_) => "fallback",
        }
    }

    /// Every parameter Twilio sent.
    pub fn raw(&self) -> &FormParams {
        match self {
            Self::InboundMessage(m) => &m.raw,
            Self::InboundCall(c) => &c.raw,
            Self::MessageStatus(s) => &s.raw,
            Self::CallStatus(s) => &s.raw,
            Self::RecordingStatus(r) => &r.raw,
            Self::ConferenceStatus(c) => &c.raw,
            Self::Fallback(f) => match &f.original {
                FallbackOriginal::Message(m) => &m.raw,
                FallbackOriginal::Call(c) => &c.raw,
            },
        }
    }
}

/// The status endpoint serves four kinds of callbacks; the parameters say which. Recording
/// and conference callbacks are checked first because call callbacks may also carry
/// `RecordingSid` and `CallStatus` appears in several.
fn status_callback(p: &FormParams) -> Result<Webhook, PayloadError> {
    if has(p, "ConferenceSid") && has(p, "StatusCallbackEvent") {
        return ConferenceStatusCallback::from_params(p).map(Webhook::ConferenceStatus);
    }
    if has(p, "RecordingStatus") {
        return RecordingStatusCallback::from_params(p).map(Webhook::RecordingStatus);
    }
    if has(p, "MessageStatus") || has(p, "SmsStatus") {
        return MessageStatusCallback::from_params(p).map(Webhook::MessageStatus);
    }
    if has(p, "CallStatus") {
        return CallStatusCallback::from_params(p).map(Webhook::CallStatus);
    }
    Err(PayloadError::UnknownCallback)
}

fn has(p: &FormParams, key: &str) -> bool {
    p.get(key).is_some_and(|v| !v.is_empty())
}

fn opt(p: &FormParams, key: &str) -> Option<String> {
    p.get(key).filter(|v| !v.is_empty()).map(str::to_owned)
}

fn req<'a>(p: &'a FormParams, key: &'static str) -> Result<&'a str, PayloadError> {
    p.get(key)
        .filter(|v| !v.is_empty())
        .ok_or(PayloadError::Missing(key))
}

fn sid<T>(
    p: &FormParams,
    key: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, PayloadError> {
    parse(req(p, key)?).ok_or(PayloadError::Invalid { name: key })
}

fn opt_sid<T>(
    p: &FormParams,
    key: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<Option<T>, PayloadError> {
    match p.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse(v)
            .map(Some)
            .ok_or(PayloadError::Invalid { name: key }),
    }
}

fn num(p: &FormParams, key: &'static str) -> Result<Option<u32>, PayloadError> {
    match p.get(key).map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| PayloadError::Invalid { name: key }),
    }
}

/// `[City, State, Zip, Country]` parameter names of one side (static: no formatting per request).
const FROM_GEO: [&str; 4] = ["FromCity", "FromState", "FromZip", "FromCountry"];
const TO_GEO: [&str; 4] = ["ToCity", "ToState", "ToZip", "ToCountry"];

fn geo(p: &FormParams, keys: [&str; 4]) -> Geo {
    Geo {
        city: opt(p, keys[0]),
        state: opt(p, keys[1]),
        zip: opt(p, keys[2]),
        country: opt(p, keys[3]),
    }
}

impl InboundMessage {
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        // `SmsSid`/`SmsMessageSid` are deprecated duplicates of `MessageSid`.
        let message_sid = ["MessageSid", "SmsMessageSid", "SmsSid"]
            .iter()
            .find_map(|k| p.get(k).filter(|v| !v.is_empty()))
            .ok_or(PayloadError::Missing("MessageSid"))?;
        let message_sid =
            MessageSid::parse(message_sid).ok_or(PayloadError::Invalid { name: "MessageSid" })?;
        let num_media = num(p, "NumMedia")?.unwrap_or(0);
        let media = (0..)
            .map_while(|i| {
                p.get(&format!("MediaUrl{i}")).map(|url| Media {
                    url: url.to_owned(),
                    content_type: opt(p, &format!("MediaContentType{i}")),
                })
            })
            .collect();
        Ok(Self {
            message_sid,
            account_sid: sid(p, "AccountSid", AccountSid::parse)?,
            messaging_service_sid: opt_sid(p, "MessagingServiceSid", MessagingServiceSid::parse)?,
            from: PhoneNumber::new(req(p, "From")?),
            to: PhoneNumber::new(req(p, "To")?),
            body: MessageBody(p.get("Body").unwrap_or("").to_owned()),
            num_media,
            num_segments: num(p, "NumSegments")?,
            media,
            from_geo: geo(p, FROM_GEO),
            to_geo: geo(p, TO_GEO),
            profile_name: opt(p, "ProfileName"),
            wa_id: opt(p, "WaId").map(PhoneNumber),
            opt_out_type: opt(p, "OptOutType").map(OptOutType::from),
            raw: p.clone(),
        })
    }
}

impl InboundCall {
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        Ok(Self {
            call_sid: sid(p, "CallSid", CallSid::parse)?,
            account_sid: sid(p, "AccountSid", AccountSid::parse)?,
            from: PhoneNumber::new(p.get("From").unwrap_or("")),
            to: PhoneNumber::new(p.get("To").unwrap_or("")),
            call_status: CallStatus::from(p.get("CallStatus").unwrap_or("ringing")),
            direction: opt(p, "Direction").map(Direction::from),
            api_version: opt(p, "ApiVersion"),
            forwarded_from: opt(p, "ForwardedFrom").map(PhoneNumber),
            caller_name: opt(p, "CallerName"),
            parent_call_sid: opt_sid(p, "ParentCallSid", CallSid::parse)?,
            from_geo: geo(p, FROM_GEO),
            to_geo: geo(p, TO_GEO),
            raw: p.clone(),
        })
    }
}

impl MessageStatusCallback {
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        let message_sid = ["MessageSid", "SmsSid"]
            .iter()
            .find_map(|k| p.get(k).filter(|v| !v.is_empty()))
            .ok_or(PayloadError::Missing("MessageSid"))?;
        let status = ["MessageStatus", "SmsStatus"]
            .iter()
            .find_map(|k| p.get(k).filter(|v| !v.is_empty()))
            .ok_or(PayloadError::Missing("MessageStatus"))?;
        Ok(Self {
            message_sid: MessageSid::parse(message_sid)
                .ok_or(PayloadError::Invalid { name: "MessageSid" })?,
            account_sid: opt_sid(p, "AccountSid", AccountSid::parse)?,
            message_status: MessageStatus::from(status),
            error_code: num(p, "ErrorCode")?,
            from: opt(p, "From").map(PhoneNumber),
            to: opt(p, "To").map(PhoneNumber),
            raw_dlr_done_date: opt(p, "RawDlrDoneDate"),
            raw: p.clone(),
        })
    }
}

impl CallStatusCallback {
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        Ok(Self {
            call_sid: sid(p, "CallSid", CallSid::parse)?,
            account_sid: opt_sid(p, "AccountSid", AccountSid::parse)?,
            call_status: CallStatus::from(req(p, "CallStatus")?),
            sequence_number: num(p, "SequenceNumber")?,
            call_duration: num(p, "CallDuration")?,
            duration: num(p, "Duration")?,
            timestamp: opt(p, "Timestamp"),
            callback_source: opt(p, "CallbackSource"),
            sip_response_code: num(p, "SipResponseCode")?,
            raw: p.clone(),
        })
    }
}

impl RecordingStatusCallback {
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        Ok(Self {
            recording_sid: sid(p, "RecordingSid", RecordingSid::parse)?,
            recording_status: RecordingStatus::from(req(p, "RecordingStatus")?),
            recording_url: opt(p, "RecordingUrl"),
            recording_duration: num(p, "RecordingDuration")?,
            recording_channels: num(p, "RecordingChannels")?,
            recording_start_time: opt(p, "RecordingStartTime"),
            recording_source: opt(p, "RecordingSource"),
            call_sid: opt_sid(p, "CallSid", CallSid::parse)?,
            account_sid: opt_sid(p, "AccountSid", AccountSid::parse)?,
            error_code: num(p, "ErrorCode")?,
            raw: p.clone(),
        })
    }
}

impl ConferenceStatusCallback {
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        Ok(Self {
            conference_sid: sid(p, "ConferenceSid", ConferenceSid::parse)?,
            status_callback_event: req(p, "StatusCallbackEvent")?.to_owned(),
            friendly_name: opt(p, "FriendlyName"),
            sequence_number: num(p, "SequenceNumber")?,
            call_sid: opt_sid(p, "CallSid", CallSid::parse)?,
            timestamp: opt(p, "Timestamp"),
            raw: p.clone(),
        })
    }
}

impl Fallback {
    /// A call is recognised by `CallSid`; anything else must be a message.
    pub(crate) fn from_params(p: &FormParams) -> Result<Self, PayloadError> {
        let original = if has(p, "CallSid") {
            FallbackOriginal::Call(InboundCall::from_params(p)?)
        } else {
            FallbackOriginal::Message(InboundMessage::from_params(p)?)
        };
        Ok(Self {
            error_code: num(p, "ErrorCode")?,
            error_url: opt(p, "ErrorUrl"),
            original,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> FormParams {
        FormParams::from_pairs(pairs.iter().copied())
    }

    const SM: &str = "SM0123456789abcdef0123456789abcdef";
    const CA: &str = "CA0123456789abcdef0123456789abcdef";
    const AC: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn inbound_mms_with_whatsapp_fields_and_unknown_params() {
        let p = params(&[
            ("MessageSid", SM),
            ("AccountSid", AC),
            ("From", "whatsapp:+14155550100"),
            ("To", "whatsapp:+14155550199"),
            ("Body", "hello"),
            ("NumMedia", "2"),
            ("NumSegments", "1"),
            ("MediaUrl0", "https://api.twilio.com/m/0"),
            ("MediaContentType0", "image/jpeg"),
            ("MediaUrl1", "https://api.twilio.com/m/1"),
            ("MediaContentType1", "image/png"),
            ("FromCity", "SAN FRANCISCO"),
            ("ToCountry", "US"),
            ("ProfileName", "Ada"),
            ("WaId", "14155550100"),
            ("OptOutType", "STOP"),
            ("BrandNewTwilioParam", "kept"),
        ]);
        let m = InboundMessage::from_params(&p).unwrap();
        assert_eq!(m.media.len(), 2);
        assert_eq!(m.media[1].content_type.as_deref(), Some("image/png"));
        assert_eq!(m.from_geo.city.as_deref(), Some("SAN FRANCISCO"));
        assert_eq!(m.to_geo.country.as_deref(), Some("US"));
        assert_eq!(m.opt_out_type, Some(OptOutType::Stop));
        assert_eq!(
            m.wa_id.as_ref().map(PhoneNumber::as_str),
            Some("14155550100")
        );
        assert_eq!(m.raw.get("BrandNewTwilioParam"), Some("kept"));
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("5550100") && !dbg.contains("hello"), "{dbg}");
    }

    #[test]
    fn deprecated_sms_sid_is_accepted_and_bad_sids_rejected() {
        let m = InboundMessage::from_params(&params(&[
            ("SmsSid", SM),
            ("AccountSid", AC),
            ("From", "+1"),
            ("To", "+2"),
        ]))
        .unwrap();
        assert_eq!(m.message_sid.as_str(), SM);
        let err = InboundMessage::from_params(&params(&[
            ("MessageSid", "SM../../etc"),
            ("AccountSid", AC),
            ("From", "+1"),
            ("To", "+2"),
        ]))
        .unwrap_err();
        assert_eq!(err, PayloadError::Invalid { name: "MessageSid" });
        assert_eq!(
            InboundMessage::from_params(&params(&[("AccountSid", AC)])).unwrap_err(),
            PayloadError::Missing("MessageSid")
        );
    }

    #[test]
    fn status_callbacks_are_classified_and_keyed() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, String);
        let cases: [Case; 5] = [
            (
                &[("MessageSid", SM), ("MessageStatus", "delivered")],
                "message_status",
                format!("msgstatus#{SM}#delivered"),
            ),
            (
                &[
                    ("CallSid", CA),
                    ("CallStatus", "ringing"),
                    ("SequenceNumber", "1"),
                ],
                "call_status",
                format!("callstatus#{CA}#1"),
            ),
            (
                &[
                    ("CallSid", CA),
                    ("CallStatus", "completed"),
                    ("CallDuration", "42"),
                ],
                "call_status",
                format!("callstatus#{CA}#completed"),
            ),
            (
                &[
                    ("CallSid", CA),
                    ("CallStatus", "completed"),
                    ("RecordingSid", "RE1"),
                    ("RecordingStatus", "completed"),
                ],
                "recording_status",
                "recording#RE1#completed".to_owned(),
            ),
            (
                &[
                    ("ConferenceSid", "CF1"),
                    ("StatusCallbackEvent", "participant-join"),
                    ("SequenceNumber", "3"),
                    ("CallSid", CA),
                ],
                "conference_status",
                "conference#CF1#participant-join#3".to_owned(),
            ),
        ];
        for (p, kind, key) in cases {
            let w = status_callback(&params(p)).unwrap();
            assert_eq!(w.kind(), kind);
            assert_eq!(w.dedup_key(), key);
        }
        assert_eq!(
            status_callback(&params(&[("Foo", "bar")])).unwrap_err(),
            PayloadError::UnknownCallback
        );
    }

    #[test]
    fn every_documented_message_status_round_trips() {
        for s in [
            "accepted",
            "scheduled",
            "queued",
            "sending",
            "sent",
            "delivered",
            "undelivered",
            "failed",
            "read",
            "partially_delivered",
            "canceled",
            "receiving",
            "received",
        ] {
            let st = MessageStatus::from(s);
            assert!(!matches!(st, MessageStatus::Other(_)), "{s}");
            assert_eq!(st.as_str(), s);
        }
        assert_eq!(
            MessageStatus::from("new_one"),
            MessageStatus::Other("new_one".into())
        );
    }

    #[test]
    fn message_status_error_code_and_bad_numbers() {
        let s = MessageStatusCallback::from_params(&params(&[
            ("MessageSid", SM),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
        ]))
        .unwrap();
        assert_eq!(s.error_code, Some(30003));
        let err = MessageStatusCallback::from_params(&params(&[
            ("MessageSid", SM),
            ("MessageStatus", "failed"),
            ("ErrorCode", "x"),
        ]))
        .unwrap_err();
        assert_eq!(err, PayloadError::Invalid { name: "ErrorCode" });
    }

    #[test]
    fn fallback_keeps_the_original_key() {
        let p = params(&[
            ("CallSid", CA),
            ("AccountSid", AC),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("CallStatus", "ringing"),
            ("ErrorCode", "11200"),
            ("ErrorUrl", "https://example.com/voice"),
        ]);
        let f = Fallback::from_params(&p).unwrap();
        assert_eq!(f.error_code, Some(11200));
        assert_eq!(Webhook::Fallback(f).dedup_key(), format!("call#{CA}"));
        let p = params(&[
            ("MessageSid", SM),
            ("AccountSid", AC),
            ("From", "+14155550100"),
            ("To", "+14155550199"),
            ("ErrorCode", "11205"),
        ]);
        let f = Fallback::from_params(&p).unwrap();
        assert!(matches!(f.original, FallbackOriginal::Message(_)));
        assert_eq!(Webhook::Fallback(f).dedup_key(), format!("sms#{SM}"));
    }

    #[test]
    fn phone_numbers_are_redacted() {
        assert_eq!(PhoneNumber::new("+14155550100").redacted(), "+1********00");
        assert_eq!(PhoneNumber::new("client:alice").redacted(), "**********ce");
    }
}
