//! Sample webhooks (realistic parameters) and signed requests for them: used by tests, the
//! benchmarks and `twilio-webhooks events` / `serve`'s curl example.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use twilio_webhook::payload::Endpoint;
use twilio_webhook::signature::{IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
use twilio_webhook::{AuthToken, FormParams, sign};

use webhook_pipeline::pipeline::IncomingRequest;

pub use webhook_pipeline::config::TEST_AUTH_TOKEN;

/// The AccountSid of every sample.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// The MessageSid of the message samples.
pub const MESSAGE_SID: &str = "SM11111111111111111111111111111111";
/// The CallSid of the call samples.
pub const CALL_SID: &str = "CA22222222222222222222222222222222";
/// The RecordingSid of the recording sample.
pub const RECORDING_SID: &str = "RE33333333333333333333333333333333";
/// The ConferenceSid of the conference sample.
pub const CONFERENCE_SID: &str = "CF44444444444444444444444444444444";

/// A named sample: which endpoint it goes to and its parameters.
pub struct Sample {
    /// Its name (the `events/` file names start with it).
    pub name: &'static str,
    /// The endpoint it goes to.
    pub endpoint: Endpoint,
    /// Its form parameters, in the order sent.
    pub params: Vec<(&'static str, String)>,
}

fn p(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// An inbound SMS like Twilio sends it (13+ parameters).
pub fn inbound_sms(message_sid: &str, body: &str) -> Vec<(&'static str, String)> {
    p(&[
        ("ToCountry", "US"),
        ("ToState", "CA"),
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("ToCity", "SAN FRANCISCO"),
        ("FromZip", "94105"),
        ("SmsSid", message_sid),
        ("FromState", "CA"),
        ("SmsStatus", "received"),
        ("FromCity", "SAN FRANCISCO"),
        ("Body", body),
        ("FromCountry", "US"),
        ("To", "+14155550199"),
        ("MessagingServiceSid", "MG55555555555555555555555555555555"),
        ("ToZip", "94105"),
        ("NumSegments", "1"),
        ("MessageSid", message_sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", "+14155550100"),
        ("ApiVersion", "2010-04-01"),
    ])
}

/// An inbound call like Twilio sends it (`CallStatus` ringing).
pub fn inbound_call(call_sid: &str) -> Vec<(&'static str, String)> {
    p(&[
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", "ringing"),
        ("Called", "+14155550199"),
        ("CalledCountry", "US"),
        ("Caller", "+14155550100"),
        ("CallerCountry", "US"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("FromCity", "SAN FRANCISCO"),
        ("FromCountry", "US"),
        ("To", "+14155550199"),
        ("ToCountry", "US"),
    ])
}

/// A message status callback, with `ErrorCode` when given.
pub fn message_status(
    message_sid: &str,
    status: &str,
    error_code: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut v = p(&[
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("From", "+14155550199"),
        ("MessageSid", message_sid),
        ("MessageStatus", status),
        ("SmsSid", message_sid),
        ("SmsStatus", status),
        ("To", "+14155550100"),
    ]);
    if let Some(code) = error_code {
        v.push(("ErrorCode", code.to_owned()));
    }
    v
}

/// A call status callback with its `SequenceNumber`.
pub fn call_status(call_sid: &str, status: &str, sequence: u32) -> Vec<(&'static str, String)> {
    let mut v = p(&[
        ("AccountSid", ACCOUNT_SID),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", status),
        ("CallbackSource", "call-progress-events"),
        ("Direction", "inbound"),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
        ("Timestamp", "Fri, 27 Nov 2026 14:00:00 +0000"),
    ]);
    v.push(("SequenceNumber", sequence.to_string()));
    if status == "completed" {
        v.push(("CallDuration", "42".to_owned()));
        v.push(("Duration", "1".to_owned()));
    }
    v
}

/// Every kind of webhook, one each (the `events/` files are made from these).
pub fn all() -> Vec<Sample> {
    let mut fallback_sms = inbound_sms(MESSAGE_SID, "Hello from the fallback");
    fallback_sms.push(("ErrorCode", "11200".into()));
    fallback_sms.push(("ErrorUrl", "https://example.com/sms".into()));
    let mut fallback_voice = inbound_call(CALL_SID);
    fallback_voice.push(("ErrorCode", "11205".into()));
    fallback_voice.push(("ErrorUrl", "https://example.com/voice".into()));
    vec![
        Sample {
            name: "sms",
            endpoint: Endpoint::Sms,
            params: inbound_sms(MESSAGE_SID, "Hello! Is this thing on? 👋"),
        },
        Sample {
            name: "voice",
            endpoint: Endpoint::Voice,
            params: inbound_call(CALL_SID),
        },
        Sample {
            name: "status-message",
            endpoint: Endpoint::Status,
            params: message_status(MESSAGE_SID, "undelivered", Some("30003")),
        },
        Sample {
            name: "status-call",
            endpoint: Endpoint::Status,
            params: call_status(CALL_SID, "completed", 3),
        },
        Sample {
            name: "status-recording",
            endpoint: Endpoint::Status,
            params: p(&[
                ("AccountSid", ACCOUNT_SID),
                ("CallSid", CALL_SID),
                ("RecordingSid", RECORDING_SID),
                (
                    "RecordingUrl",
                    "https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000000/Recordings/RE33333333333333333333333333333333",
                ),
                ("RecordingStatus", "completed"),
                ("RecordingDuration", "12"),
                ("RecordingChannels", "1"),
                ("RecordingStartTime", "Fri, 27 Nov 2026 14:00:05 +0000"),
                ("RecordingSource", "RecordVerb"),
            ]),
        },
        Sample {
            name: "status-conference",
            endpoint: Endpoint::Status,
            params: p(&[
                ("AccountSid", ACCOUNT_SID),
                ("ConferenceSid", CONFERENCE_SID),
                ("FriendlyName", "standup"),
                ("StatusCallbackEvent", "participant-join"),
                ("SequenceNumber", "2"),
                ("CallSid", CALL_SID),
                ("Timestamp", "Fri, 27 Nov 2026 14:00:00 +0000"),
            ]),
        },
        Sample {
            name: "fallback-sms",
            endpoint: Endpoint::Fallback,
            params: fallback_sms,
        },
        Sample {
            name: "fallback-voice",
            endpoint: Endpoint::Fallback,
            params: fallback_voice,
        },
    ]
}

/// A form POST to `url` signed with `token`, as Twilio would send it.
pub fn signed_request(token: &str, url: &str, params: &[(&str, String)]) -> IncomingRequest {
    let form = FormParams::from_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    let signature = sign(
        &AuthToken::new(token).expect("a non-blank token"),
        url,
        &form,
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(
        SIGNATURE_HEADER,
        HeaderValue::from_str(&signature).expect("base64 is a valid header"),
    );
    headers.insert(
        IDEMPOTENCY_HEADER,
        HeaderValue::from_static("sample-idempotency-token"),
    );
    IncomingRequest {
        method: Method::POST,
        url: url.to_owned(),
        other_urls: Vec::new(),
        headers,
        body: Bytes::from(form.encode()),
    }
}

/// A pipeline checking the public test token, claiming in `log` and sending to `queue`, with
/// the default reply policy and settings: the one most tests need.
pub fn test_pipeline(
    log: std::sync::Arc<dyn webhook_pipeline::EventLog>,
    queue: std::sync::Arc<dyn webhook_pipeline::WorkQueue>,
) -> webhook_pipeline::Pipeline {
    webhook_pipeline::Pipeline::new(
        twilio_webhook::Validator::new(AuthToken::new(TEST_AUTH_TOKEN).expect("the test token")),
        std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(log, queue)),
        webhook_pipeline::ReplyPolicy::default(),
        webhook_pipeline::Settings::default(),
    )
}
