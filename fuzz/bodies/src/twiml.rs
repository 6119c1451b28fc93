//! TwiML (shared/twilio-webhook/src/twiml.rs) with any text and attribute values: the output is
//! well-formed XML 1.0 (checked by `roxmltree`, a strict parser), starts with the declaration at
//! byte 0, and parses back to exactly the elements, attributes (in their fixed order) and text
//! that were put in, less only the characters XML cannot carry at all.
//!
//! Input: a length byte `n`, a program of `n` bytes, then the strings used for text and
//! attribute values (`\0`-separated, taken in turn and again from the first when they run out).
//! Program: byte 0 picks the document (even: messaging, odd: voice), then 3 bytes per verb
//! (which verb, and 16 bits saying which attributes are set).

use twilio_webhook::twiml::{
    Dial, Gather, Message, MessagingResponse, Number, Pause, Play, Record, Redirect, Reject, Say,
    Twiml, VoiceResponse,
};

use crate::Fields;

const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// What a rendered element must parse back to.
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    name: &'static str,
    attrs: Vec<(&'static str, String)>,
    text: String,
    children: Vec<Expected>,
}

impl Expected {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            attrs: Vec::new(),
            text: String::new(),
            children: Vec::new(),
        }
    }

    fn text(mut self, s: &str) -> Self {
        self.text = xml_text(s);
        self
    }
}

/// The characters XML 1.0 allows (the rest must be dropped, there is no escaping them).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// What an attribute value or text parses back to: the input less the characters XML cannot
/// carry. (Exactly: a CR in text is written `&#13;` since fuzz finding F1, see RESULTS.md.)
fn xml_attr(s: &str) -> String {
    s.chars().filter(|c| is_xml_char(*c)).collect()
}

fn xml_text(s: &str) -> String {
    xml_attr(s)
}

/// The strings of the input, handed out in turn.
struct Strings {
    pool: Vec<String>,
    next: usize,
}

impl Strings {
    fn take(&mut self) -> String {
        if self.pool.is_empty() {
            return String::new();
        }
        let s = self.pool[self.next % self.pool.len()].clone();
        self.next += 1;
        s
    }

    fn num(&mut self) -> u32 {
        let s = self.take();
        s.parse().unwrap_or(s.len() as u32)
    }

    fn flag(&mut self) -> bool {
        self.take().len() % 2 == 1
    }
}

/// Attribute setters driven by a mask: each set bit sets the next attribute, in order.
struct Attrs<'a> {
    mask: u16,
    bit: u8,
    strings: &'a mut Strings,
    expected: Vec<(&'static str, String)>,
}

impl<'a> Attrs<'a> {
    fn new(mask: u16, strings: &'a mut Strings) -> Self {
        Self {
            mask,
            bit: 0,
            strings,
            expected: Vec::new(),
        }
    }

    fn on(&mut self) -> bool {
        let on = self.mask >> self.bit & 1 == 1;
        self.bit += 1;
        on
    }

    fn str(&mut self, name: &'static str) -> Option<String> {
        self.on().then(|| {
            let s = self.strings.take();
            self.expected.push((name, xml_attr(&s)));
            s
        })
    }

    fn num(&mut self, name: &'static str) -> Option<u32> {
        self.on().then(|| {
            let n = self.strings.num();
            self.expected.push((name, n.to_string()));
            n
        })
    }

    fn bool(&mut self, name: &'static str) -> Option<bool> {
        self.on().then(|| {
            let b = self.strings.flag();
            self.expected.push((name, b.to_string()));
            b
        })
    }
}

fn say(s: &mut Strings, mask: u16) -> (Say, Expected) {
    let text = s.take();
    let mut a = Attrs::new(mask, s);
    let mut v = Say::new(text.as_str());
    if let Some(x) = a.str("voice") {
        v = v.voice(x);
    }
    if let Some(x) = a.str("language") {
        v = v.language(x);
    }
    if let Some(x) = a.num("loop") {
        v = v.loop_count(x);
    }
    let mut e = Expected::new("Say").text(&text);
    e.attrs = a.expected;
    (v, e)
}

fn play(s: &mut Strings, mask: u16) -> (Play, Expected) {
    let url = s.take();
    let mut a = Attrs::new(mask, s);
    let mut v = Play::new(url.as_str());
    if let Some(x) = a.num("loop") {
        v = v.loop_count(x);
    }
    let mut e = Expected::new("Play").text(&url);
    e.attrs = a.expected;
    (v, e)
}

fn pause(s: &mut Strings, mask: u16) -> (Pause, Expected) {
    let mut a = Attrs::new(mask, s);
    let mut v = Pause::new();
    if let Some(x) = a.num("length") {
        v = v.length(x);
    }
    let mut e = Expected::new("Pause");
    e.attrs = a.expected;
    (v, e)
}

fn redirect(s: &mut Strings, mask: u16) -> (Redirect, Expected) {
    let url = s.take();
    let mut a = Attrs::new(mask, s);
    let mut v = Redirect::new(url.as_str());
    if let Some(x) = a.str("method") {
        v = v.method(x);
    }
    let mut e = Expected::new("Redirect").text(&url);
    e.attrs = a.expected;
    (v, e)
}

fn message(s: &mut Strings, mask: u16) -> (Message, Expected) {
    let body = s.take();
    let media: Vec<String> = (0..(mask >> 13)).map(|_| s.take()).collect();
    let mut a = Attrs::new(mask, s);
    let mut v = Message::new(body.as_str());
    for m in &media {
        v = v.media(m.as_str());
    }
    if let Some(x) = a.str("to") {
        v = v.to(x);
    }
    if let Some(x) = a.str("from") {
        v = v.from(x);
    }
    if let Some(x) = a.str("action") {
        v = v.action(x);
    }
    if let Some(x) = a.str("method") {
        v = v.method(x);
    }
    if let Some(x) = a.str("statusCallback") {
        v = v.status_callback(x);
    }
    let mut e = Expected::new("Message");
    e.attrs = a.expected;
    if media.is_empty() {
        e.text = xml_text(&body);
    } else {
        if !body.is_empty() {
            e.children.push(Expected::new("Body").text(&body));
        }
        e.children
            .extend(media.iter().map(|m| Expected::new("Media").text(m)));
    }
    (v, e)
}

fn gather(s: &mut Strings, mask: u16, prompts: &[(u8, u16)]) -> (Gather, Expected) {
    let mut a = Attrs::new(mask, s);
    let mut v = Gather::new();
    if let Some(x) = a.str("input") {
        v = v.input(x);
    }
    if let Some(x) = a.str("action") {
        v = v.action(x);
    }
    if let Some(x) = a.str("method") {
        v = v.method(x);
    }
    if let Some(x) = a.num("timeout") {
        v = v.timeout(x);
    }
    if let Some(x) = a.str("speechTimeout") {
        v = v.speech_timeout(x);
    }
    if let Some(x) = a.num("numDigits") {
        v = v.num_digits(x);
    }
    if let Some(x) = a.str("finishOnKey") {
        v = v.finish_on_key(x);
    }
    if let Some(x) = a.str("language") {
        v = v.language(x);
    }
    if let Some(x) = a.str("hints") {
        v = v.hints(x);
    }
    if let Some(x) = a.bool("actionOnEmptyResult") {
        v = v.action_on_empty_result(x);
    }
    let mut e = Expected::new("Gather");
    e.attrs = a.expected;
    for &(kind, m) in prompts {
        match kind % 3 {
            0 => {
                let (p, pe) = say(s, m);
                v = v.say(p);
                e.children.push(pe);
            }
            1 => {
                let (p, pe) = play(s, m);
                v = v.play(p);
                e.children.push(pe);
            }
            _ => {
                let (p, pe) = pause(s, m);
                v = v.pause(p);
                e.children.push(pe);
            }
        }
    }
    (v, e)
}

fn record(s: &mut Strings, mask: u16) -> (Record, Expected) {
    let mut a = Attrs::new(mask, s);
    let mut v = Record::new();
    if let Some(x) = a.str("action") {
        v = v.action(x);
    }
    if let Some(x) = a.str("method") {
        v = v.method(x);
    }
    if let Some(x) = a.num("timeout") {
        v = v.timeout(x);
    }
    if let Some(x) = a.str("finishOnKey") {
        v = v.finish_on_key(x);
    }
    if let Some(x) = a.num("maxLength") {
        v = v.max_length(x);
    }
    if let Some(x) = a.bool("playBeep") {
        v = v.play_beep(x);
    }
    if let Some(x) = a.str("trim") {
        v = v.trim(x);
    }
    if let Some(x) = a.bool("transcribe") {
        v = v.transcribe(x);
    }
    if let Some(x) = a.str("transcribeCallback") {
        v = v.transcribe_callback(x);
    }
    if let Some(x) = a.str("recordingStatusCallback") {
        v = v.recording_status_callback(x);
    }
    if let Some(x) = a.str("recordingStatusCallbackMethod") {
        v = v.recording_status_callback_method(x);
    }
    if let Some(x) = a.str("recordingStatusCallbackEvent") {
        v = v.recording_status_callback_event(x);
    }
    let mut e = Expected::new("Record");
    e.attrs = a.expected;
    (v, e)
}

fn number(s: &mut Strings, mask: u16) -> (Number, Expected) {
    let n = s.take();
    let mut a = Attrs::new(mask, s);
    let mut v = Number::new(n.as_str());
    if let Some(x) = a.str("sendDigits") {
        v = v.send_digits(x);
    }
    if let Some(x) = a.str("url") {
        v = v.url(x);
    }
    if let Some(x) = a.str("method") {
        v = v.method(x);
    }
    let mut e = Expected::new("Number").text(&n);
    e.attrs = a.expected;
    (v, e)
}

/// `<Dial>`: plain text, or `<Number>` nouns (`numbers` masks); `as_text_first`: a plain-text
/// number that `add_number` turns into the first `<Number>`.
fn dial(s: &mut Strings, mask: u16, numbers: &[u16], as_text_first: bool) -> (Dial, Expected) {
    let mut e = Expected::new("Dial");
    let mut v = if numbers.is_empty() || as_text_first {
        let text = s.take();
        if numbers.is_empty() {
            e.text = xml_text(&text);
        } else {
            e.children.push(Expected::new("Number").text(&text));
        }
        Dial::new(text)
    } else {
        let (n, ne) = number(s, numbers[0]);
        e.children.push(ne);
        Dial::number(n)
    };
    let rest = if as_text_first {
        numbers
    } else {
        numbers.get(1..).unwrap_or(&[])
    };
    for &m in rest {
        let (n, ne) = number(s, m);
        v = v.add_number(n);
        e.children.push(ne);
    }
    let mut a = Attrs::new(mask, s);
    if let Some(x) = a.str("action") {
        v = v.action(x);
    }
    if let Some(x) = a.str("method") {
        v = v.method(x);
    }
    if let Some(x) = a.num("timeout") {
        v = v.timeout(x);
    }
    if let Some(x) = a.str("callerId") {
        v = v.caller_id(x);
    }
    if let Some(x) = a.bool("answerOnBridge") {
        v = v.answer_on_bridge(x);
    }
    if let Some(x) = a.bool("hangupOnStar") {
        v = v.hangup_on_star(x);
    }
    if let Some(x) = a.num("timeLimit") {
        v = v.time_limit(x);
    }
    if let Some(x) = a.str("record") {
        v = v.record(x);
    }
    if let Some(x) = a.str("recordingStatusCallback") {
        v = v.recording_status_callback(x);
    }
    if let Some(x) = a.str("ringTone") {
        v = v.ring_tone(x);
    }
    e.attrs = a.expected;
    (v, e)
}

fn reject(s: &mut Strings, mask: u16) -> (Reject, Expected) {
    let mut a = Attrs::new(mask, s);
    let mut v = Reject::new();
    if let Some(x) = a.str("reason") {
        v = v.reason(x);
    }
    let mut e = Expected::new("Reject");
    e.attrs = a.expected;
    (v, e)
}

/// Compare a parsed element with what was put in.
fn check(node: roxmltree::Node<'_, '_>, e: &Expected, xml: &str) {
    assert_eq!(node.tag_name().name(), e.name, "{xml}");
    assert_eq!(node.tag_name().namespace(), None, "{xml}");
    let attrs: Vec<(&str, &str)> = node.attributes().map(|a| (a.name(), a.value())).collect();
    let want: Vec<(&str, &str)> = e.attrs.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(attrs, want, "attributes of <{}> in {xml}", e.name);
    let children: Vec<_> = node.children().filter(|n| n.is_element()).collect();
    assert_eq!(
        children.len(),
        e.children.len(),
        "children of <{}> in {xml}",
        e.name
    );
    for (c, ce) in children.iter().zip(&e.children) {
        check(*c, ce, xml);
    }
    let text: String = node
        .children()
        .filter(|n| n.is_text())
        .map(|n| n.text().unwrap_or(""))
        .collect();

    assert_eq!(text, e.text, "text of <{}> in {xml}", e.name);
}

fn check_document(xml: &str, display: String, verbs: &[Expected]) {
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{xml}");
    }
    assert_eq!(display, xml, "Display differs from to_xml");
    assert!(
        xml.starts_with(DECLARATION),
        "no declaration at byte 0: {xml}"
    );
    let doc = roxmltree::Document::parse(xml)
        .unwrap_or_else(|err| panic!("not well-formed XML ({err}): {xml}"));
    let r = doc.root_element();
    assert_eq!(r.tag_name().name(), "Response");
    assert!(r.attributes().next().is_none());
    let children: Vec<_> = r.children().filter(|n| n.is_element()).collect();
    assert_eq!(children.len(), verbs.len(), "{xml}");
    assert!(
        r.children().all(|n| n.is_element()),
        "text between verbs: {xml}"
    );
    for (c, e) in children.iter().zip(verbs) {
        check(*c, e, xml);
    }
    // Nothing but the declaration and the root: no comments, PIs or stray text.
    assert_eq!(doc.root().children().count(), 1, "{xml}");
}

pub fn run(data: &[u8]) {
    let n = usize::from(data.first().copied().unwrap_or(0));
    let program = data.get(1..(1 + n).min(data.len())).unwrap_or(&[]);
    let mut f = Fields::new(data.get(1 + n..).unwrap_or(&[]), 0);
    let mut pool = Vec::new();
    while !f.is_done() {
        pool.push(String::from_utf8_lossy(f.next_bytes()).into_owned());
        if pool.len() >= 32 {
            pool.push(String::from_utf8_lossy(f.rest()).into_owned());
        }
    }
    let mut s = Strings { pool, next: 0 };
    let voice = program.first().is_some_and(|b| b & 1 == 1);
    let ops: Vec<(u8, u16)> = program
        .get(1..)
        .unwrap_or(&[])
        .chunks(3)
        .map(|c| {
            let mask = u16::from_le_bytes([
                c.get(1).copied().unwrap_or(0),
                c.get(2).copied().unwrap_or(0),
            ]);
            (c[0], mask)
        })
        .take(24)
        .collect();

    let mut expected = Vec::new();
    if !voice {
        let mut doc = MessagingResponse::new();
        for &(verb, mask) in &ops {
            if verb % 2 == 0 {
                let (m, e) = message(&mut s, mask);
                doc = doc.message(m);
                expected.push(e);
            } else {
                let (r, e) = redirect(&mut s, mask);
                doc = doc.redirect(r);
                expected.push(e);
            }
        }
        check_document(&doc.to_xml(), doc.to_string(), &expected);
        return;
    }

    let mut doc = VoiceResponse::new();
    let mut i = 0;
    while i < ops.len() {
        let (verb, mask) = ops[i];
        i += 1;
        match verb % 9 {
            0 => {
                let (v, e) = say(&mut s, mask);
                doc = doc.say(v);
                expected.push(e);
            }
            1 => {
                let (v, e) = play(&mut s, mask);
                doc = doc.play(v);
                expected.push(e);
            }
            2 => {
                let (v, e) = pause(&mut s, mask);
                doc = doc.pause(v);
                expected.push(e);
            }
            3 => {
                // The next (verb / 9 % 4) ops are its prompts.
                let n = usize::from(verb / 9 % 4).min(ops.len() - i);
                let (v, e) = gather(&mut s, mask, &ops[i..i + n]);
                i += n;
                doc = doc.gather(v);
                expected.push(e);
            }
            4 => {
                let (v, e) = record(&mut s, mask);
                doc = doc.record(v);
                expected.push(e);
            }
            5 => {
                // The next (verb / 9 % 4) ops are its numbers' attribute masks.
                let n = usize::from(verb / 9 % 4).min(ops.len() - i);
                let numbers: Vec<u16> = ops[i..i + n].iter().map(|(_, m)| *m).collect();
                i += n;
                let (v, e) = dial(&mut s, mask, &numbers, verb >= 128);
                doc = doc.dial(v);
                expected.push(e);
            }
            6 => {
                doc = doc.hangup();
                expected.push(Expected::new("Hangup"));
            }
            7 => {
                let (v, e) = redirect(&mut s, mask);
                doc = doc.redirect(v);
                expected.push(e);
            }
            _ => {
                let (v, e) = reject(&mut s, mask);
                doc = doc.reject(v);
                expected.push(e);
            }
        }
    }
    check_document(&doc.to_xml(), doc.to_string(), &expected);
}
