//! Typed payloads (shared/twilio-webhook/src/payload.rs) from any form body that verified,
//! and what the pipeline does with one: its dedup key, the state update it makes
//! (shared/webhook-pipeline/src/state.rs) and the reply (reply.rs).
//!
//! Input: a flags byte (bits 0-1: the endpoint; bit 2: a reply policy with every option set),
//! then the URL, `\n`, and the form body (the rest). The body is signed with a fixed token and
//! goes through `Validator::verify` like a real request: only that makes a `VerifiedRequest`.

use twilio_webhook::form::FormParams;
use twilio_webhook::payload::{Endpoint, FallbackOriginal, MessageBody, PhoneNumber, Webhook};
use twilio_webhook::signature::{SignedRequest, Validator};
use twilio_webhook::twiml::CONTENT_TYPE;
use twilio_webhook::{AuthToken, sign};
use webhook_pipeline::ReplyPolicy;
use webhook_pipeline::state::{StateRecord, StateUpdate};

use crate::{Fields, bit};

pub const TOKEN: &str = "12345678901234567890123456789012";

pub fn encode(endpoint: Endpoint, full_policy: bool, url: &str, body: &[u8]) -> Vec<u8> {
    let e = Endpoint::ALL.iter().position(|x| *x == endpoint).unwrap() as u8;
    let mut out = vec![e | u8::from(full_policy) << 2];
    out.extend(crate::join_fields([url.as_bytes(), body], b'\n'));
    out
}

fn check_phone(n: &PhoneNumber) {
    let s = n.as_str();
    let r = n.redacted();
    let (sc, rc): (Vec<char>, Vec<char>) = (s.chars().collect(), r.chars().collect());
    assert_eq!(sc.len(), rc.len(), "redaction changes the length");
    let prefix = if s.starts_with('+') { 2 } else { 0 };
    for (i, (a, b)) in sc.iter().zip(&rc).enumerate() {
        if i < prefix || i + 2 >= sc.len() {
            assert_eq!(a, b);
        } else {
            assert_eq!(*b, '*', "{i}th character of a number shown");
        }
    }
    assert_eq!(format!("{n:?}"), format!("PhoneNumber({r})"));
}

fn check_body(b: &MessageBody) {
    assert_eq!(
        format!("{b:?}"),
        format!("MessageBody(<{} chars>)", b.as_str().chars().count())
    );
}

fn is_sid(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

pub fn run(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let endpoint = Endpoint::ALL[usize::from(flags & 3)];
    let mut f = Fields::new(data.get(1..).unwrap_or(b""), b'\n');
    let url = f.next_str();
    let body = f.rest();

    let Ok(params) = FormParams::parse(body) else {
        return;
    };
    let token = AuthToken::new(TOKEN).expect("not blank");
    let sig = sign(&token, &url, &params);
    let req = SignedRequest {
        method: "POST",
        url: &url,
        content_type: Some("application/x-www-form-urlencoded"),
        body,
        signature: Some(&sig),
        signature_settings: None,
    };
    let verified = Validator::new(token)
        .verify(&req)
        .expect("a signed form POST verifies");

    let parsed = Webhook::parse(endpoint, &verified);
    let Ok(w) = parsed else {
        let _ = parsed.unwrap_err().to_string();
        return;
    };
    assert_eq!(w.raw(), &params, "the payload keeps every parameter");
    let key = w.dedup_key();
    let _ = format!("{w:?}");

    // The endpoint decides the kind.
    let (message, call) = match &w {
        Webhook::InboundMessage(m) => (Some(m), None),
        Webhook::InboundCall(c) => (None, Some(c)),
        Webhook::Fallback(fb) => match &fb.original {
            FallbackOriginal::Message(m) => (Some(m), None),
            FallbackOriginal::Call(c) => (None, Some(c)),
        },
        _ => (None, None),
    };
    match (endpoint, &w) {
        (Endpoint::Sms, Webhook::InboundMessage(_))
        | (Endpoint::Voice, Webhook::InboundCall(_))
        | (Endpoint::Fallback, Webhook::Fallback(_))
        | (
            Endpoint::Status,
            Webhook::MessageStatus(_)
            | Webhook::CallStatus(_)
            | Webhook::RecordingStatus(_)
            | Webhook::ConferenceStatus(_),
        ) => {}
        (e, w) => panic!("{e:?} gave a {}", w.kind()),
    }
    if let Some(m) = message {
        assert!(is_sid(m.message_sid.as_str()) && is_sid(m.account_sid.as_str()));
        assert_eq!(key, format!("sms#{}", m.message_sid));
        check_phone(&m.from);
        check_phone(&m.to);
        check_body(&m.body);
        let body_debug = format!("{m:?}");
        // The body never shows (when it is long enough to be told apart from the rest of the
        // Debug text, and no other parameter holds it).
        let text = m.body.as_str();
        let elsewhere = params
            .iter()
            .any(|(k, v)| k.contains(text) || (k != "Body" && v.contains(text)));
        if text.chars().count() >= 24 && !elsewhere {
            assert!(!body_debug.contains(text), "message body in Debug");
        }
    }
    if let Some(c) = call {
        assert!(is_sid(c.call_sid.as_str()) && is_sid(c.account_sid.as_str()));
        assert_eq!(key, format!("call#{}", c.call_sid));
        check_phone(&c.from);
        check_phone(&c.to);
        assert_eq!(
            twilio_webhook::payload::CallStatus::from(c.call_status.as_str()),
            c.call_status
        );
    }

    // State: one update per event, applied once.
    // (A fallback updates its message's or call's record, as the primary would have.)
    let update = StateUpdate::from_webhook(&w);
    assert!(update.is_some(), "every webhook updates a state record");
    if let Some(u) = update {
        let mut state = StateRecord::default();
        assert!(state.apply(&u, &key, 1));
        assert!(!state.apply(&u, &key, 2), "the same event applied twice");
        assert_eq!(state.id, u.id);
        assert_eq!(state.timeline.len(), 1);
        let json = serde_json::to_string(&state).expect("state serializes");
        let back: StateRecord = serde_json::from_str(&json).expect("state deserializes");
        assert_eq!(back, state);
    }

    // The reply is a TwiML document.
    let policy = if bit(flags, 2) {
        ReplyPolicy {
            sms_auto_reply: Some("Thanks & see you <soon>".into()),
            voice_greeting: Some("Hello \"there\"".into()),
            voice_forward_to: Some("+14155550100".into()),
            status_callback_url: Some("https://example.com/status?a=1&b=2".into()),
            fallback_voice_message: Some("Sorry ]]> later".into()),
        }
    } else {
        ReplyPolicy::default()
    };
    let reply = policy.reply(&w, &url);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type.as_deref(), Some(CONTENT_TYPE));
    let doc = roxmltree::Document::parse(&reply.body)
        .unwrap_or_else(|e| panic!("reply is not XML ({e}): {}", reply.body));
    assert_eq!(doc.root_element().tag_name().name(), "Response");
}
