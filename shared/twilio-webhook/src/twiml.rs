//! TwiML builders for webhook replies.
//!
//! Output is compact (no newlines, no indentation) and starts with the XML declaration at byte 0:
//! Twilio answers error 12100 ("Document parse failure") to anything before it, including
//! whitespace. An empty response renders as `<Response/>`, which tells Twilio "do nothing".
//!
//! Attributes are written in a fixed order (the order of the fields of each type, as listed in
//! its builder methods), not in the order they were set, so the same reply always renders the
//! same bytes whatever order the builder calls came in.
//!
//! Text and attribute values are escaped. Characters that XML 1.0 forbids outright (control
//! characters other than tab, LF and CR, and U+FFFE/U+FFFF) are silently dropped: they cannot be
//! escaped, Twilio rejects the whole document with 12100 if they appear, and a reply to a webhook
//! must never fail because of a stray byte in user-supplied text.
//!
//! ```
//! use twilio_webhook::twiml::{Message, MessagingResponse, Twiml};
//!
//! let reply = MessagingResponse::new().message(Message::new("Thanks & bye"));
//! assert_eq!(
//!     reply.to_xml(),
//!     r#"<?xml version="1.0" encoding="UTF-8"?><Response><Message>Thanks &amp; bye</Message></Response>"#
//! );
//! ```

use std::fmt;

/// `Content-Type` to send TwiML with.
pub const CONTENT_TYPE: &str = "text/xml";

const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Builder setters that store their argument as the attribute's value: `name: text` takes
/// `impl Into<String>`, `name: u32` and `name: bool` take the value. Each setter's doc starts
/// with "Sets `name`." (the field, whose XML spelling may differ); doc comments given here
/// follow it.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $kind:ident,)*) => {
        $( setters!(@one $(#[$doc])* $name $kind); )*
    };
    (@one $(#[$doc:meta])* $name:ident text) => {
        #[doc = concat!("Sets `", stringify!($name), "`.")]
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$name = Some(value.into());
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident $ty:ident) => {
        #[doc = concat!("Sets `", stringify!($name), "`.")]
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = Some(value);
            self
        }
    };
}

/// A complete TwiML document.
pub trait Twiml {
    /// Render the document, XML declaration included.
    fn to_xml(&self) -> String;
}

// ---------------------------------------------------------------------------------------------
// XML writer
// ---------------------------------------------------------------------------------------------

/// Characters allowed by the XML 1.0 `Char` production. Surrogates cannot occur in a `char`.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escape character data. `>` is escaped too so `]]>` can never appear.
fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // A literal CR is read back as LF (XML end-of-line handling): keep it a CR.
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
}

/// Escape a double-quoted attribute value. Tab, LF and CR become character references because
/// attribute-value normalization would otherwise turn them into plain spaces.
fn push_attr_value(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
}

/// Attribute list of the element being opened; unset (`None`) attributes are skipped.
struct Attrs<'a>(&'a mut String);

impl Attrs<'_> {
    fn str(&mut self, name: &str, value: Option<&str>) -> &mut Self {
        if let Some(v) = value {
            self.0.push(' ');
            self.0.push_str(name);
            self.0.push_str("=\"");
            push_attr_value(self.0, v);
            self.0.push('"');
        }
        self
    }

    fn num(&mut self, name: &str, value: Option<u32>) -> &mut Self {
        self.str(name, value.map(|n| n.to_string()).as_deref())
    }

    fn bool(&mut self, name: &str, value: Option<bool>) -> &mut Self {
        self.str(name, value.map(|b| if b { "true" } else { "false" }))
    }
}

/// Write `<name attrs>content</name>`, or `<name attrs/>` when `content` writes nothing.
fn element(
    out: &mut String,
    name: &str,
    attrs: impl FnOnce(&mut Attrs<'_>),
    content: impl FnOnce(&mut String),
) {
    out.push('<');
    out.push_str(name);
    attrs(&mut Attrs(out));
    out.push('>');
    let mark = out.len();
    content(out);
    if out.len() == mark {
        out.pop();
        out.push_str("/>");
    } else {
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
}

fn text_element(out: &mut String, name: &str, text: &str) {
    element(out, name, |_| {}, |o| push_text(o, text));
}

fn document(content: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(DECLARATION);
    element(&mut out, "Response", |_| {}, content);
    out
}

// ---------------------------------------------------------------------------------------------
// Shared verbs
// ---------------------------------------------------------------------------------------------

/// `<Redirect>`: hand control to the TwiML at another URL (messaging and voice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    url: String,
    method: Option<String>,
}

impl Redirect {
    /// Redirect to `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            method: None,
        }
    }

    setters! {
        /// `method`: `GET` or `POST` (Twilio's default is `POST`).
        method: text,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Redirect",
            |a| {
                a.str("method", self.method.as_deref());
            },
            |o| push_text(o, &self.url),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Messaging
// ---------------------------------------------------------------------------------------------

/// `<Message>`: an SMS/MMS reply, with optional media URLs.
///
/// Attribute order: `to`, `from`, `action`, `method`, `statusCallback`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    body: String,
    media: Vec<String>,
    to: Option<String>,
    from: Option<String>,
    action: Option<String>,
    method: Option<String>,
    status_callback: Option<String>,
}

impl Message {
    /// A message with `body`; pass `""` for a media-only message.
    pub fn new(body: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// Attach a media URL (Twilio accepts up to 10 per message).
    pub fn media(mut self, url: impl Into<String>) -> Self {
        self.media.push(url.into());
        self
    }

    setters! {
        to: text,
        from: text,
        action: text,
        method: text,
        /// Rendered as `statusCallback`.
        status_callback: text,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Message",
            |a| {
                a.str("to", self.to.as_deref())
                    .str("from", self.from.as_deref())
                    .str("action", self.action.as_deref())
                    .str("method", self.method.as_deref())
                    .str("statusCallback", self.status_callback.as_deref());
            },
            |o| {
                // Plain text is the short form; once there is <Media>, the text must be in <Body>.
                if self.media.is_empty() {
                    push_text(o, &self.body);
                } else {
                    if !self.body.is_empty() {
                        text_element(o, "Body", &self.body);
                    }
                    for url in &self.media {
                        text_element(o, "Media", url);
                    }
                }
            },
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MessagingVerb {
    Message(Message),
    Redirect(Redirect),
}

/// Messaging TwiML document: `<Message>` and `<Redirect>` verbs, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagingResponse {
    verbs: Vec<MessagingVerb>,
}

impl MessagingResponse {
    /// An empty response (`<Response/>`): no reply is sent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a `<Message>`.
    pub fn message(mut self, message: Message) -> Self {
        self.verbs.push(MessagingVerb::Message(message));
        self
    }

    /// Add a `<Redirect>`; verbs after it never run.
    pub fn redirect(mut self, redirect: Redirect) -> Self {
        self.verbs.push(MessagingVerb::Redirect(redirect));
        self
    }
}

impl Twiml for MessagingResponse {
    fn to_xml(&self) -> String {
        document(|out| {
            for verb in &self.verbs {
                match verb {
                    MessagingVerb::Message(m) => m.write(out),
                    MessagingVerb::Redirect(r) => r.write(out),
                }
            }
        })
    }
}

impl fmt::Display for MessagingResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml())
    }
}

// ---------------------------------------------------------------------------------------------
// Voice
// ---------------------------------------------------------------------------------------------

/// `<Say>`: text-to-speech. Attribute order: `voice`, `language`, `loop`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Say {
    text: String,
    voice: Option<String>,
    language: Option<String>,
    loop_count: Option<u32>,
}

impl Say {
    /// Speak `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    setters! {
        /// e.g. `Polly.Joanna`.
        voice: text,
        /// e.g. `en-US`.
        language: text,
        /// Rendered as `loop`; `0` repeats until the call ends.
        loop_count: u32,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Say",
            |a| {
                a.str("voice", self.voice.as_deref())
                    .str("language", self.language.as_deref())
                    .num("loop", self.loop_count);
            },
            |o| push_text(o, &self.text),
        );
    }
}

/// `<Play>`: play an audio file. Attribute: `loop`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Play {
    url: String,
    loop_count: Option<u32>,
}

impl Play {
    /// Play the audio at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            loop_count: None,
        }
    }

    setters! {
        /// Rendered as `loop`; `0` repeats until the call ends.
        loop_count: u32,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Play",
            |a| {
                a.num("loop", self.loop_count);
            },
            |o| push_text(o, &self.url),
        );
    }
}

/// `<Pause>`: silence. Attribute: `length` (seconds, Twilio's default is 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pause {
    length: Option<u32>,
}

impl Pause {
    /// A pause of Twilio's default length.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        length: u32,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Pause",
            |a| {
                a.num("length", self.length);
            },
            |_| {},
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GatherVerb {
    Say(Say),
    Play(Play),
    Pause(Pause),
}

/// `<Gather>`: collect DTMF digits and/or speech, with nested `<Say>`/`<Play>`/`<Pause>` prompts.
///
/// Attribute order: `input`, `action`, `method`, `timeout`, `speechTimeout`, `numDigits`,
/// `finishOnKey`, `language`, `hints`, `actionOnEmptyResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gather {
    input: Option<String>,
    action: Option<String>,
    method: Option<String>,
    timeout: Option<u32>,
    speech_timeout: Option<String>,
    num_digits: Option<u32>,
    finish_on_key: Option<String>,
    language: Option<String>,
    hints: Option<String>,
    action_on_empty_result: Option<bool>,
    prompts: Vec<GatherVerb>,
}

impl Gather {
    /// A `<Gather>` with Twilio's defaults and no prompt.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// `dtmf`, `speech` or `dtmf speech`.
        input: text,
        action: text,
        method: text,
        /// Seconds of silence before giving up.
        timeout: u32,
        /// Rendered as `speechTimeout`: seconds, or `auto`.
        speech_timeout: text,
        /// Rendered as `numDigits`.
        num_digits: u32,
        /// Rendered as `finishOnKey`; `""` disables it.
        finish_on_key: text,
        language: text,
        /// Comma-separated speech recognition hints.
        hints: text,
        /// Rendered as `actionOnEmptyResult`.
        action_on_empty_result: bool,
    }

    /// Add a `<Say>` prompt, heard while input is gathered.
    pub fn say(mut self, say: Say) -> Self {
        self.prompts.push(GatherVerb::Say(say));
        self
    }

    /// Add a `<Play>` prompt.
    pub fn play(mut self, play: Play) -> Self {
        self.prompts.push(GatherVerb::Play(play));
        self
    }

    /// Add a `<Pause>` between prompts.
    pub fn pause(mut self, pause: Pause) -> Self {
        self.prompts.push(GatherVerb::Pause(pause));
        self
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Gather",
            |a| {
                a.str("input", self.input.as_deref())
                    .str("action", self.action.as_deref())
                    .str("method", self.method.as_deref())
                    .num("timeout", self.timeout)
                    .str("speechTimeout", self.speech_timeout.as_deref())
                    .num("numDigits", self.num_digits)
                    .str("finishOnKey", self.finish_on_key.as_deref())
                    .str("language", self.language.as_deref())
                    .str("hints", self.hints.as_deref())
                    .bool("actionOnEmptyResult", self.action_on_empty_result);
            },
            |o| {
                for prompt in &self.prompts {
                    match prompt {
                        GatherVerb::Say(s) => s.write(o),
                        GatherVerb::Play(p) => p.write(o),
                        GatherVerb::Pause(p) => p.write(o),
                    }
                }
            },
        );
    }
}

/// `<Record>`: record the caller (voicemail).
///
/// Attribute order: `action`, `method`, `timeout`, `finishOnKey`, `maxLength`, `playBeep`,
/// `trim`, `transcribe`, `transcribeCallback`, `recordingStatusCallback`,
/// `recordingStatusCallbackMethod`, `recordingStatusCallbackEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    action: Option<String>,
    method: Option<String>,
    timeout: Option<u32>,
    finish_on_key: Option<String>,
    max_length: Option<u32>,
    play_beep: Option<bool>,
    trim: Option<String>,
    transcribe: Option<bool>,
    transcribe_callback: Option<String>,
    recording_status_callback: Option<String>,
    recording_status_callback_method: Option<String>,
    recording_status_callback_event: Option<String>,
}

impl Record {
    /// A `<Record>` with Twilio's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        action: text,
        method: text,
        /// Seconds of silence that end the recording; `0` disables it.
        timeout: u32,
        /// Rendered as `finishOnKey`.
        finish_on_key: text,
        /// Rendered as `maxLength` (seconds).
        max_length: u32,
        /// Rendered as `playBeep`.
        play_beep: bool,
        /// `trim-silence` or `do-not-trim`.
        trim: text,
        transcribe: bool,
        /// Rendered as `transcribeCallback`.
        transcribe_callback: text,
        /// Rendered as `recordingStatusCallback`.
        recording_status_callback: text,
        /// Rendered as `recordingStatusCallbackMethod`.
        recording_status_callback_method: text,
        /// Rendered as `recordingStatusCallbackEvent`: space-separated `in-progress`, `completed`,
        /// `absent`.
        recording_status_callback_event: text,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Record",
            |a| {
                a.str("action", self.action.as_deref())
                    .str("method", self.method.as_deref())
                    .num("timeout", self.timeout)
                    .str("finishOnKey", self.finish_on_key.as_deref())
                    .num("maxLength", self.max_length)
                    .bool("playBeep", self.play_beep)
                    .str("trim", self.trim.as_deref())
                    .bool("transcribe", self.transcribe)
                    .str("transcribeCallback", self.transcribe_callback.as_deref())
                    .str(
                        "recordingStatusCallback",
                        self.recording_status_callback.as_deref(),
                    )
                    .str(
                        "recordingStatusCallbackMethod",
                        self.recording_status_callback_method.as_deref(),
                    )
                    .str(
                        "recordingStatusCallbackEvent",
                        self.recording_status_callback_event.as_deref(),
                    );
            },
            |_| {},
        );
    }
}

/// `<Number>` noun inside `<Dial>`. Attribute order: `sendDigits`, `url`, `method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    number: String,
    send_digits: Option<String>,
    url: Option<String>,
    method: Option<String>,
}

impl Number {
    /// An E.164 phone number.
    pub fn new(number: impl Into<String>) -> Self {
        Self {
            number: number.into(),
            send_digits: None,
            url: None,
            method: None,
        }
    }

    setters! {
        /// Rendered as `sendDigits`: DTMF sent once answered (`w` waits half a second).
        send_digits: text,
        /// TwiML run for the called party (whisper) before the calls are connected.
        url: text,
        method: text,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Number",
            |a| {
                a.str("sendDigits", self.send_digits.as_deref())
                    .str("url", self.url.as_deref())
                    .str("method", self.method.as_deref());
            },
            |o| push_text(o, &self.number),
        );
    }
}

impl From<&str> for Number {
    fn from(number: &str) -> Self {
        Self::new(number)
    }
}

impl From<String> for Number {
    fn from(number: String) -> Self {
        Self::new(number)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DialTarget {
    Text(String),
    Numbers(Vec<Number>),
}

/// `<Dial>`: connect the caller to a phone number, as plain text or `<Number>` nouns.
///
/// Attribute order: `action`, `method`, `timeout`, `callerId`, `answerOnBridge`, `hangupOnStar`,
/// `timeLimit`, `record`, `recordingStatusCallback`, `ringTone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    target: DialTarget,
    action: Option<String>,
    method: Option<String>,
    timeout: Option<u32>,
    caller_id: Option<String>,
    answer_on_bridge: Option<bool>,
    hangup_on_star: Option<bool>,
    time_limit: Option<u32>,
    record: Option<String>,
    recording_status_callback: Option<String>,
    ring_tone: Option<String>,
}

impl Dial {
    fn with_target(target: DialTarget) -> Self {
        Self {
            target,
            action: None,
            method: None,
            timeout: None,
            caller_id: None,
            answer_on_bridge: None,
            hangup_on_star: None,
            time_limit: None,
            record: None,
            recording_status_callback: None,
            ring_tone: None,
        }
    }

    /// `<Dial>+15551234567</Dial>`: the number as plain text.
    pub fn new(number: impl Into<String>) -> Self {
        Self::with_target(DialTarget::Text(number.into()))
    }

    /// `<Dial><Number>+15551234567</Number></Dial>`: a `<Number>` noun, which takes attributes.
    pub fn number(number: impl Into<Number>) -> Self {
        Self::with_target(DialTarget::Numbers(vec![number.into()]))
    }

    /// Add another `<Number>`: all numbers ring at once and the first to answer wins. A plain-text
    /// number from [`Dial::new`] becomes a `<Number>` first, since text and nouns can't be mixed.
    pub fn add_number(mut self, number: impl Into<Number>) -> Self {
        let number = number.into();
        match &mut self.target {
            DialTarget::Numbers(numbers) => numbers.push(number),
            DialTarget::Text(text) => {
                let first = Number::new(std::mem::take(text));
                self.target = DialTarget::Numbers(vec![first, number]);
            }
        }
        self
    }

    setters! {
        action: text,
        method: text,
        /// Seconds to ring before giving up.
        timeout: u32,
        /// Rendered as `callerId`: must be a Twilio number or a verified caller ID.
        caller_id: text,
        /// Rendered as `answerOnBridge`: the caller hears ringing, not silence, until answer.
        answer_on_bridge: bool,
        /// Rendered as `hangupOnStar`.
        hangup_on_star: bool,
        /// Rendered as `timeLimit` (seconds).
        time_limit: u32,
        /// e.g. `record-from-answer`, `record-from-ringing-dual`, `do-not-record`.
        record: text,
        /// Rendered as `recordingStatusCallback`.
        recording_status_callback: text,
        /// Rendered as `ringTone`: a country code such as `us` or `uk`.
        ring_tone: text,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Dial",
            |a| {
                a.str("action", self.action.as_deref())
                    .str("method", self.method.as_deref())
                    .num("timeout", self.timeout)
                    .str("callerId", self.caller_id.as_deref())
                    .bool("answerOnBridge", self.answer_on_bridge)
                    .bool("hangupOnStar", self.hangup_on_star)
                    .num("timeLimit", self.time_limit)
                    .str("record", self.record.as_deref())
                    .str(
                        "recordingStatusCallback",
                        self.recording_status_callback.as_deref(),
                    )
                    .str("ringTone", self.ring_tone.as_deref());
            },
            |o| match &self.target {
                DialTarget::Text(text) => push_text(o, text),
                DialTarget::Numbers(numbers) => numbers.iter().for_each(|n| n.write(o)),
            },
        );
    }
}

/// `<Reject>`: refuse an incoming call without answering it (not billed). Attribute: `reason`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reject {
    reason: Option<String>,
}

impl Reject {
    /// A `<Reject>` with Twilio's default reason.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// `rejected` (Twilio's default) or `busy`.
        reason: text,
    }

    fn write(&self, out: &mut String) {
        element(
            out,
            "Reject",
            |a| {
                a.str("reason", self.reason.as_deref());
            },
            |_| {},
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VoiceVerb {
    Say(Say),
    Play(Play),
    Gather(Gather),
    Record(Record),
    Dial(Dial),
    Hangup,
    Redirect(Redirect),
    Pause(Pause),
    Reject(Reject),
}

/// Voice TwiML document: verbs run in the order they were added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VoiceResponse {
    verbs: Vec<VoiceVerb>,
}

impl VoiceResponse {
    /// An empty response (`<Response/>`): Twilio hangs up.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a `<Say>`.
    pub fn say(mut self, say: Say) -> Self {
        self.verbs.push(VoiceVerb::Say(say));
        self
    }

    /// Add a `<Play>`.
    pub fn play(mut self, play: Play) -> Self {
        self.verbs.push(VoiceVerb::Play(play));
        self
    }

    /// Add a `<Gather>`.
    pub fn gather(mut self, gather: Gather) -> Self {
        self.verbs.push(VoiceVerb::Gather(gather));
        self
    }

    /// Add a `<Record>`.
    pub fn record(mut self, record: Record) -> Self {
        self.verbs.push(VoiceVerb::Record(record));
        self
    }

    /// Add a `<Dial>`.
    pub fn dial(mut self, dial: Dial) -> Self {
        self.verbs.push(VoiceVerb::Dial(dial));
        self
    }

    /// `<Hangup/>`.
    pub fn hangup(mut self) -> Self {
        self.verbs.push(VoiceVerb::Hangup);
        self
    }

    /// Add a `<Redirect>`; verbs after it never run.
    pub fn redirect(mut self, redirect: Redirect) -> Self {
        self.verbs.push(VoiceVerb::Redirect(redirect));
        self
    }

    /// Add a `<Pause>`.
    pub fn pause(mut self, pause: Pause) -> Self {
        self.verbs.push(VoiceVerb::Pause(pause));
        self
    }

    /// Add a `<Reject>`.
    pub fn reject(mut self, reject: Reject) -> Self {
        self.verbs.push(VoiceVerb::Reject(reject));
        self
    }
}

impl Twiml for VoiceResponse {
    fn to_xml(&self) -> String {
        document(|out| {
            for verb in &self.verbs {
                match verb {
                    VoiceVerb::Say(v) => v.write(out),
                    VoiceVerb::Play(v) => v.write(out),
                    VoiceVerb::Gather(v) => v.write(out),
                    VoiceVerb::Record(v) => v.write(out),
                    VoiceVerb::Dial(v) => v.write(out),
                    VoiceVerb::Hangup => element(out, "Hangup", |_| {}, |_| {}),
                    VoiceVerb::Redirect(v) => v.write(out),
                    VoiceVerb::Pause(v) => v.write(out),
                    VoiceVerb::Reject(v) => v.write(out),
                }
            }
        })
    }
}

impl fmt::Display for VoiceResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_xml())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefix every expected document with the declaration so the literals stay readable.
    fn doc(body: &str) -> String {
        format!(r#"<?xml version="1.0" encoding="UTF-8"?>{body}"#)
    }

    #[test]
    fn content_type_is_text_xml() {
        assert_eq!(CONTENT_TYPE, "text/xml");
    }

    #[test]
    fn empty_messaging_response() {
        assert_eq!(
            MessagingResponse::new().to_xml(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
        );
    }

    #[test]
    fn empty_voice_response() {
        assert_eq!(
            VoiceResponse::new().to_xml(),
            r#"<?xml version="1.0" encoding="UTF-8"?><Response/>"#
        );
    }

    #[test]
    fn display_matches_to_xml() {
        let m = MessagingResponse::new().message(Message::new("hi"));
        assert_eq!(m.to_string(), m.to_xml());
        let v = VoiceResponse::new().say(Say::new("hi")).hangup();
        assert_eq!(v.to_string(), v.to_xml());
    }

    #[test]
    fn message_body_only() {
        let xml = MessagingResponse::new()
            .message(Message::new("Thanks!"))
            .to_xml();
        assert_eq!(xml, doc("<Response><Message>Thanks!</Message></Response>"));
    }

    #[test]
    fn message_with_body_and_two_media() {
        let xml = MessagingResponse::new()
            .message(
                Message::new("Look")
                    .media("https://example.com/a.jpg")
                    .media("https://example.com/b.png?x=1&y=2"),
            )
            .to_xml();
        assert_eq!(
            xml,
            doc("<Response><Message><Body>Look</Body>\
                 <Media>https://example.com/a.jpg</Media>\
                 <Media>https://example.com/b.png?x=1&amp;y=2</Media>\
                 </Message></Response>")
        );
    }

    #[test]
    fn media_only_message_has_no_body() {
        let xml = MessagingResponse::new()
            .message(Message::new("").media("https://example.com/a.jpg"))
            .to_xml();
        assert_eq!(
            xml,
            doc("<Response><Message><Media>https://example.com/a.jpg</Media></Message></Response>")
        );
    }

    #[test]
    fn message_attributes_in_fixed_order() {
        // Set in reverse order on purpose: output order must not depend on call order.
        let msg = Message::new("hi")
            .status_callback("https://example.com/status")
            .method("POST")
            .action("https://example.com/action")
            .from("+15550000002")
            .to("+15550000001");
        let xml = MessagingResponse::new().message(msg).to_xml();
        assert_eq!(
            xml,
            doc(
                r#"<Response><Message to="+15550000001" from="+15550000002" action="https://example.com/action" method="POST" statusCallback="https://example.com/status">hi</Message></Response>"#
            )
        );
    }

    #[test]
    fn messaging_redirect() {
        let xml = MessagingResponse::new()
            .message(Message::new("one moment"))
            .redirect(Redirect::new("https://example.com/next"))
            .to_xml();
        assert_eq!(
            xml,
            doc("<Response><Message>one moment</Message>\
                 <Redirect>https://example.com/next</Redirect></Response>")
        );
    }

    #[test]
    fn voice_redirect_with_method() {
        let xml = VoiceResponse::new()
            .redirect(Redirect::new("https://example.com/twiml?a=1&b=2").method("GET"))
            .to_xml();
        assert_eq!(
            xml,
            doc(
                r#"<Response><Redirect method="GET">https://example.com/twiml?a=1&amp;b=2</Redirect></Response>"#
            )
        );
    }

    #[test]
    fn escapes_text_and_attributes() {
        let xml = MessagingResponse::new()
            .message(Message::new(r#"Tom & Jerry <3 "quotes" 'apos' ]]>"#).to(r#"a&b<c>d"e'f"#))
            .to_xml();
        // Text: & < > escaped, quotes left alone. Attribute: " escaped too; ' is safe inside "…".
        assert_eq!(
            xml,
            doc(
                r#"<Response><Message to="a&amp;b&lt;c&gt;d&quot;e'f">Tom &amp; Jerry &lt;3 "quotes" 'apos' ]]&gt;</Message></Response>"#
            )
        );
    }

    #[test]
    fn whitespace_kept_in_text_and_char_referenced_in_attributes() {
        let xml = VoiceResponse::new()
            .say(Say::new("a\tb\nc\r\nd").voice("x\ty\nz\r"))
            .to_xml();
        assert_eq!(
            xml,
            doc("<Response><Say voice=\"x&#9;y&#10;z&#13;\">a\tb\nc&#13;\nd</Say></Response>")
        );
    }

    #[test]
    fn strips_characters_illegal_in_xml() {
        let xml = MessagingResponse::new()
            .message(
                Message::new("a\u{0}b\u{1}c\u{8}d\u{b}e\u{c}f\u{1f}g\u{fffe}h\u{ffff}i")
                    .action("https://x/\u{7}y"),
            )
            .to_xml();
        assert_eq!(
            xml,
            doc(r#"<Response><Message action="https://x/y">abcdefghi</Message></Response>"#)
        );
    }

    #[test]
    fn keeps_non_ascii_text() {
        let xml = VoiceResponse::new().say(Say::new("Grüße 👋 日本")).to_xml();
        assert_eq!(xml, doc("<Response><Say>Grüße 👋 日本</Say></Response>"));
    }

    #[test]
    fn voicemail_flow() {
        let xml = VoiceResponse::new()
            .say(
                Say::new("Please leave a message after the beep.")
                    .voice("Polly.Joanna")
                    .language("en-US"),
            )
            .record(
                Record::new()
                    .action("https://example.com/voicemail/done")
                    .max_length(120)
                    .play_beep(true)
                    .finish_on_key("#")
                    .recording_status_callback("https://example.com/recording?id=1&k=2")
                    .recording_status_callback_event("completed")
                    .transcribe(false)
                    .timeout(5),
            )
            .hangup()
            .to_xml();
        assert_eq!(
            xml,
            doc(concat!(
                r#"<Response>"#,
                r#"<Say voice="Polly.Joanna" language="en-US">Please leave a message after the beep.</Say>"#,
                r##"<Record action="https://example.com/voicemail/done" timeout="5" finishOnKey="#" maxLength="120" playBeep="true" transcribe="false" recordingStatusCallback="https://example.com/recording?id=1&amp;k=2" recordingStatusCallbackEvent="completed"/>"##,
                r#"<Hangup/>"#,
                r#"</Response>"#
            ))
        );
    }

    #[test]
    fn forward_flow() {
        let xml = VoiceResponse::new()
            .say(Say::new("Connecting you now."))
            .dial(
                Dial::number("+15551234567")
                    .caller_id("+15557654321")
                    .timeout(20)
                    .action("https://example.com/dial-status")
                    .record("record-from-answer"),
            )
            .to_xml();
        assert_eq!(
            xml,
            doc(concat!(
                r#"<Response><Say>Connecting you now.</Say>"#,
                r#"<Dial action="https://example.com/dial-status" timeout="20" callerId="+15557654321" record="record-from-answer">"#,
                r#"<Number>+15551234567</Number></Dial></Response>"#
            ))
        );
    }

    #[test]
    fn dial_plain_text_and_multiple_numbers() {
        let text = VoiceResponse::new()
            .dial(Dial::new("+15551234567").time_limit(600))
            .to_xml();
        assert_eq!(
            text,
            doc(r#"<Response><Dial timeLimit="600">+15551234567</Dial></Response>"#)
        );

        let many = VoiceResponse::new()
            .dial(
                Dial::new("+15550000001")
                    .add_number(Number::new("+15550000002").send_digits("ww12"))
                    .answer_on_bridge(true),
            )
            .to_xml();
        assert_eq!(
            many,
            doc(concat!(
                r#"<Response><Dial answerOnBridge="true"><Number>+15550000001</Number>"#,
                r#"<Number sendDigits="ww12">+15550000002</Number></Dial></Response>"#
            ))
        );
    }

    #[test]
    fn gather_with_nested_prompts() {
        let xml = VoiceResponse::new()
            .gather(
                Gather::new()
                    .input("dtmf speech")
                    .action("https://example.com/menu")
                    .method("POST")
                    .timeout(5)
                    .num_digits(1)
                    .finish_on_key("#")
                    .say(Say::new("Press 1 for sales & support."))
                    .pause(Pause::new().length(1))
                    .play(Play::new("https://example.com/menu.mp3")),
            )
            .say(Say::new("We didn't get that."))
            .to_xml();
        assert_eq!(
            xml,
            doc(concat!(
                r#"<Response>"#,
                r##"<Gather input="dtmf speech" action="https://example.com/menu" method="POST" timeout="5" numDigits="1" finishOnKey="#">"##,
                r#"<Say>Press 1 for sales &amp; support.</Say><Pause length="1"/>"#,
                r#"<Play>https://example.com/menu.mp3</Play>"#,
                r#"</Gather><Say>We didn't get that.</Say></Response>"#
            ))
        );
    }

    #[test]
    fn empty_gather_self_closes() {
        let xml = VoiceResponse::new()
            .gather(Gather::new().speech_timeout("auto"))
            .to_xml();
        assert_eq!(
            xml,
            doc(r#"<Response><Gather speechTimeout="auto"/></Response>"#)
        );
    }

    #[test]
    fn reject() {
        assert_eq!(
            VoiceResponse::new().reject(Reject::new()).to_xml(),
            doc("<Response><Reject/></Response>")
        );
        assert_eq!(
            VoiceResponse::new()
                .reject(Reject::new().reason("busy"))
                .to_xml(),
            doc(r#"<Response><Reject reason="busy"/></Response>"#)
        );
    }

    #[test]
    fn pause() {
        let xml = VoiceResponse::new()
            .pause(Pause::new())
            .pause(Pause::new().length(2))
            .to_xml();
        assert_eq!(
            xml,
            doc(r#"<Response><Pause/><Pause length="2"/></Response>"#)
        );
    }

    #[test]
    fn play_with_loop_and_say_with_loop() {
        let xml = VoiceResponse::new()
            .play(Play::new("https://example.com/hold.mp3").loop_count(0))
            .say(Say::new("Bye").loop_count(2))
            .to_xml();
        assert_eq!(
            xml,
            doc(concat!(
                r#"<Response><Play loop="0">https://example.com/hold.mp3</Play>"#,
                r#"<Say loop="2">Bye</Say></Response>"#
            ))
        );
    }

    /// Independent oracle for escaping: undo the five escapes and compare with the input minus
    /// the characters XML forbids.
    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#10;", "\n")
            .replace("&#13;", "\r")
            .replace("&#9;", "\t")
            .replace("&amp;", "&")
    }

    proptest::proptest! {
        #[test]
        fn text_escaping_round_trips(s in "(?s).*") {
            let xml = MessagingResponse::new().message(Message::new(s.clone())).to_xml();
            let inner = xml
                .strip_prefix(&doc("<Response><Message>"))
                .and_then(|r| r.strip_suffix("</Message></Response>"));
            let expected: String = s.chars().filter(|c| is_xml_char(*c)).collect();
            match inner {
                Some(inner) => {
                    proptest::prop_assert!(!inner.contains('<') && !inner.contains('>'));
                    proptest::prop_assert_eq!(unescape(inner), expected);
                }
                // Nothing left after stripping: the element self-closes.
                None => {
                    proptest::prop_assert!(expected.is_empty());
                    proptest::prop_assert_eq!(xml, doc("<Response><Message/></Response>"));
                }
            }
        }

        #[test]
        fn attribute_escaping_round_trips(s in "(?s).*") {
            let xml = VoiceResponse::new().redirect(Redirect::new("u").method(s.clone())).to_xml();
            let inner = xml
                .strip_prefix(&doc(r#"<Response><Redirect method=""#))
                .and_then(|r| r.strip_suffix(r#"">u</Redirect></Response>"#))
                .expect("attribute present");
            proptest::prop_assert!(!inner.contains(['<', '>', '"', '\n', '\r', '\t']));
            let expected: String = s.chars().filter(|c| is_xml_char(*c)).collect();
            proptest::prop_assert_eq!(unescape(inner), expected);
        }
    }
}
