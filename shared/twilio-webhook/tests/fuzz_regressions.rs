//! Inputs the fuzz targets (fuzz/, see fuzz/RESULTS.md) found, as plain tests. Each names its
//! finding; the raw fuzz input is kept in fuzz/regressions/<target>/ and replayed by the fuzz
//! crate's own tests. Each failed before its fix.

use twilio_webhook::signature::{SignedRequest, sign_json};
use twilio_webhook::twiml::{Message, MessagingResponse, Say, Twiml, VoiceResponse};
use twilio_webhook::{AuthToken, Validator};

/// F1 (target `twiml`, fuzz/regressions/twiml/f1-cr-in-message-text). A carriage return in
/// text is written as is, and an XML parser reads a literal CR back as a line feed (XML 1.0
/// section 2.11, end-of-line handling): `Message::new("a\r\nb")` reaches Twilio as `"a\nb"`.
/// Attribute values already write it as `&#13;`; text needs the same (in `push_text`), and the
/// unit test `whitespace_kept_in_text_and_char_referenced_in_attributes` then expects `&#13;`.
#[test]
fn carriage_returns_in_text_survive_xml_parsing() {
    let messaging = MessagingResponse::new()
        .message(Message::new("a\r\nb\rc"))
        .to_xml();
    let voice = VoiceResponse::new().say(Say::new("line\r\nend")).to_xml();
    for xml in [messaging, voice] {
        assert!(
            !xml.contains('\r'),
            "a literal CR is read back as LF: {xml:?}"
        );
        assert!(xml.contains("&#13;"), "{xml:?}");
    }
}

/// F2 (target `signature`, fuzz/regressions/signature/f2-sign-json-url-with-fragment).
/// `sign_json` appends `bodySHA256` to the end of the URL, so for a URL with a fragment
/// (`#rc=2`, Twilio's connection overrides) it lands in the fragment, which `verify` strips:
/// the request it signs is refused with `MissingBodyHash` (the `sign --json` CLI command
/// prints such a URL). The hash must go at the end of the query string, before the `#`.
#[test]
fn sign_json_of_a_url_with_a_fragment_verifies() {
    let token = AuthToken::new("12345").expect("not blank");
    for url in [
        "https://example.com/hook#rc=2",
        "https://example.com/hook?a=1#rc=2&rp=all",
    ] {
        let body = br#"{"a": 1}"#;
        let (signed_url, signature) = sign_json(&token, url, body);
        let req = SignedRequest {
            method: "POST",
            url: &signed_url,
            content_type: Some("application/json"),
            body,
            signature: Some(&signature),
            signature_settings: None,
        };
        let verdict = Validator::new(token.clone()).verify(&req);
        assert!(verdict.is_ok(), "{url} -> {signed_url}: {verdict:?}");
    }
}
