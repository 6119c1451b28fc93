//! What each endpoint answers. This is the one place to change the reply policy; its inputs
//! come from the environment (see [`ReplyPolicy::from_env`]).

use serde::{Deserialize, Serialize};
use twilio_webhook::payload::{FallbackOriginal, Webhook};
use twilio_webhook::twiml::{
    self, Dial, Message, MessagingResponse, Record, Say, Twiml, VoiceResponse,
};

use crate::config::{
    FALLBACK_VOICE_MESSAGE, SMS_AUTO_REPLY, STATUS_CALLBACK_URL, VOICE_FORWARD_TO, VOICE_GREETING,
    var,
};

/// An HTTP reply, stored with the event so a duplicate gets the same bytes back. Stored
/// without the usual status (200) and content type (TwiML's), to keep the record small.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The HTTP status (stored only when not 200).
    #[serde(default = "ok", skip_serializing_if = "is_ok")]
    pub status: u16,
    /// `None` is stored as `null`; only TwiML's type is left out.
    #[serde(default = "twiml_type", skip_serializing_if = "is_twiml_type")]
    pub content_type: Option<String>,
    /// The body: TwiML, or a short text.
    pub body: String,
    /// `WWW-Authenticate` of a 401 (the Basic auth challenge); never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub www_authenticate: Option<String>,
}

fn ok() -> u16 {
    200
}

fn is_ok(status: &u16) -> bool {
    *status == 200
}

fn twiml_type() -> Option<String> {
    Some(twiml::CONTENT_TYPE.to_owned())
}

fn is_twiml_type(t: &Option<String>) -> bool {
    t.as_deref() == Some(twiml::CONTENT_TYPE)
}

impl Reply {
    /// A 200 with a TwiML document.
    pub fn twiml(doc: &impl Twiml) -> Self {
        Self {
            status: 200,
            content_type: Some(twiml::CONTENT_TYPE.to_owned()),
            body: doc.to_xml(),
            www_authenticate: None,
        }
    }

    /// A plain-text reply with this status.
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: Some("text/plain; charset=utf-8".to_owned()),
            body: body.to_owned(),
            www_authenticate: None,
        }
    }
}

/// The reply policy: auto-reply text, voice greeting, forwarding number, fallback message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyPolicy {
    /// `SMS_AUTO_REPLY`: text sent back to every inbound message (none when unset).
    pub sms_auto_reply: Option<String>,
    /// `VOICE_GREETING`: said first on every inbound call.
    pub voice_greeting: Option<String>,
    /// `VOICE_FORWARD_TO`: dial this number; when unset, take a voicemail.
    pub voice_forward_to: Option<String>,
    /// `STATUS_CALLBACK_URL`: where recording callbacks go; derived from the request URL
    /// (`.../voice` → `.../status`) when unset.
    pub status_callback_url: Option<String>,
    /// `FALLBACK_VOICE_MESSAGE`: said by the fallback before hanging up.
    pub fallback_voice_message: Option<String>,
}

const DEFAULT_VOICEMAIL_PROMPT: &str = "Please leave a message after the beep.";
const DEFAULT_FALLBACK_MESSAGE: &str =
    "Sorry, we cannot take your call right now. Please try again later.";

impl ReplyPolicy {
    /// From the environment variables named on each field; unset ones are `None`.
    pub fn from_env() -> Self {
        Self {
            sms_auto_reply: var(SMS_AUTO_REPLY),
            voice_greeting: var(VOICE_GREETING),
            voice_forward_to: var(VOICE_FORWARD_TO),
            status_callback_url: var(STATUS_CALLBACK_URL),
            fallback_voice_message: var(FALLBACK_VOICE_MESSAGE),
        }
    }

    /// The reply for a verified webhook that arrived at `url`.
    pub fn reply(&self, webhook: &Webhook, url: &str) -> Reply {
        match webhook {
            Webhook::InboundMessage(m) => {
                let mut doc = MessagingResponse::new();
                // Never auto-reply to STOP/START/HELP (OptOutType, or the default keywords
                // without Advanced Opt-Out): Twilio answers those itself, and a message to an
                // opted-out number fails with 21610.
                let keyword = m.opt_out_type.is_some()
                    || crate::consent::keyword_action(m.body.as_str()).is_some();
                if let (Some(text), false) = (&self.sms_auto_reply, keyword) {
                    doc = doc.message(Message::new(text.as_str()));
                }
                Reply::twiml(&doc)
            }
            Webhook::InboundCall(_) => Reply::twiml(&self.voice(url)),
            // An empty 200 <Response/> rather than 204: the status URL is also the <Record>
            // action, where Twilio needs TwiML (empty = hang up).
            Webhook::MessageStatus(_)
            | Webhook::CallStatus(_)
            | Webhook::RecordingStatus(_)
            | Webhook::ConferenceStatus(_) => Reply::twiml(&MessagingResponse::new()),
            Webhook::Fallback(f) => match f.original {
                FallbackOriginal::Message(_) => Reply::twiml(&MessagingResponse::new()),
                FallbackOriginal::Call(_) => Reply::twiml(
                    &VoiceResponse::new()
                        .say(Say::new(
                            self.fallback_voice_message
                                .as_deref()
                                .unwrap_or(DEFAULT_FALLBACK_MESSAGE),
                        ))
                        .hangup(),
                ),
            },
        }
    }

    fn voice(&self, url: &str) -> VoiceResponse {
        let mut doc = VoiceResponse::new();
        if let Some(greeting) = &self.voice_greeting {
            doc = doc.say(Say::new(greeting.as_str()));
        }
        if let Some(number) = &self.voice_forward_to {
            return doc.dial(Dial::number(number.as_str()).timeout(20));
        }
        if self.voice_greeting.is_none() {
            doc = doc.say(Say::new(DEFAULT_VOICEMAIL_PROMPT));
        }
        let status = self
            .status_callback_url
            .clone()
            .unwrap_or_else(|| sibling_url(url, "status"));
        // Without an action Twilio would re-request the voice URL after recording (a loop);
        // the status URL answers an empty <Response/>, which ends the call.
        doc.record(
            Record::new()
                .action(status.as_str())
                .max_length(120)
                .play_beep(true)
                .recording_status_callback(status.as_str())
                .recording_status_callback_event("completed"),
        )
        .hangup()
    }
}

/// `https://h/prod/voice?x=1` → `https://h/prod/status`. A URL with Basic credentials
/// (`https://user:pass@h/...`) gets the relative reference `status` instead, which Twilio
/// resolves against the request URL, credentials included: the password is never written
/// into a reply (replies are stored).
fn sibling_url(url: &str, name: &str) -> String {
    if let Some((_, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if rest[..authority_end].contains('@') {
            return name.to_owned();
        }
    }
    let path_end = url.find(['?', '#']).unwrap_or(url.len());
    let base = &url[..path_end];
    match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |j| j + 2) => format!("{}/{name}", &base[..i]),
        _ => format!("{}/{name}", base.trim_end_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_replies_leave_out_only_the_usual_status_and_type() {
        let twiml = Reply::twiml(&MessagingResponse::new());
        let json = serde_json::to_string(&twiml).unwrap();
        assert!(
            !json.contains("status") && !json.contains("content_type"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), twiml);
        let others = [
            Reply::text(503, "down"),
            Reply {
                content_type: None,
                ..Reply::text(204, "")
            },
        ];
        for r in others {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&json).unwrap(), r, "{json}");
        }
        // As stored before: every field written out.
        let old = r#"{"status":200,"content_type":"text/xml","body":"<Response/>"}"#;
        assert_eq!(
            serde_json::from_str::<Reply>(old)
                .unwrap()
                .content_type
                .as_deref(),
            Some("text/xml")
        );
    }

    #[test]
    fn sibling_url_replaces_the_last_segment() {
        assert_eq!(
            sibling_url("https://h/prod/voice?x=1", "status"),
            "https://h/prod/status"
        );
        assert_eq!(
            sibling_url("http://127.0.0.1:3000/voice", "status"),
            "http://127.0.0.1:3000/status"
        );
        assert_eq!(sibling_url("https://h", "status"), "https://h/status");
        // Never the password of a Basic-auth URL: a relative reference Twilio resolves.
        assert_eq!(
            sibling_url("https://u:p@h/prod/voice?x=1", "status"),
            "status"
        );
    }
}
