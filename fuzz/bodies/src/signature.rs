//! `Validator::verify` (shared/twilio-webhook/src/signature.rs) with any URL, method,
//! `Content-Type`, `X-Twilio-Signature`, `X-Twilio-Webhooks-Signature-Settings` and body, and
//! `sign` / `sign_with` / `sign_json` → `verify` round trips for that URL and body.
//!
//! Input: a flags byte, then `\n`-separated fields: auth token, method, URL, content type,
//! signature, signature settings, body (the rest). Flags: bit 0 no `Content-Type`, bit 1 no
//! signature, bit 2 no settings header, bit 3 a secondary token is configured, bit 4 a
//! SharedKey `wk_1` (secret: the token) is configured.

use twilio_webhook::AuthToken;
use twilio_webhook::form::{FormError, FormParams, MAX_BODY_BYTES};
use twilio_webhook::signature::{
    Algorithm, KeyUsed, SignatureError, SignedRequest, Validator, VerifiedRequest, sign, sign_json,
    sign_with,
};

use crate::{Fields, bit};

const FALLBACK_TOKEN: &str = "12345";
const SECONDARY_TOKEN: &str = "secondary-token";
const SHARED_KEY_ID: &str = "wk_1";

/// The parts of one fuzz input.
pub struct Input {
    pub token: String,
    pub method: String,
    pub url: String,
    pub content_type: Option<String>,
    pub signature: Option<String>,
    pub settings: Option<String>,
    pub body: Vec<u8>,
    pub secondary: bool,
    pub shared_key: bool,
}

impl Input {
    pub fn decode(data: &[u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let mut f = Fields::new(data.get(1..).unwrap_or(b""), b'\n');
        let token = f.next_str();
        let method = f.next_str();
        let url = f.next_str();
        let content_type = f.next_str();
        let signature = f.next_str();
        let settings = f.next_str();
        let body = f.rest().to_vec();
        Self {
            token,
            method,
            url,
            content_type: (!bit(flags, 0)).then_some(content_type),
            signature: (!bit(flags, 1)).then_some(signature),
            settings: (!bit(flags, 2)).then_some(settings),
            body,
            secondary: bit(flags, 3),
            shared_key: bit(flags, 4),
        }
    }

    /// The input bytes this decodes from (for seeds).
    pub fn encode(&self) -> Vec<u8> {
        let flags = u8::from(self.content_type.is_none())
            | u8::from(self.signature.is_none()) << 1
            | u8::from(self.settings.is_none()) << 2
            | u8::from(self.secondary) << 3
            | u8::from(self.shared_key) << 4;
        let mut out = vec![flags];
        out.extend(crate::join_fields(
            [
                self.token.as_bytes(),
                self.method.as_bytes(),
                self.url.as_bytes(),
                self.content_type.as_deref().unwrap_or("").as_bytes(),
                self.signature.as_deref().unwrap_or("").as_bytes(),
                self.settings.as_deref().unwrap_or("").as_bytes(),
                &self.body,
            ],
            b'\n',
        ));
        out
    }
}

fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(u, _)| u)
}

fn query_of(url: &str) -> &str {
    url.split_once('?').map_or("", |(_, q)| q)
}

/// What a GET's parameters must be: the query string, leniently decoded.
fn query_pairs(url: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query_of(strip_fragment(url)).as_bytes())
        .into_owned()
        .collect()
}

fn token(s: &str) -> AuthToken {
    let t = AuthToken::new(s);
    assert_eq!(t.is_err(), s.trim().is_empty(), "AuthToken::new({s:?})");
    match t {
        Ok(t) => {
            assert_eq!(t.expose(), s.trim());
            assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");
            t
        }
        Err(_) => AuthToken::new(FALLBACK_TOKEN).expect("not blank"),
    }
}

pub fn run(data: &[u8]) {
    let input = Input::decode(data);
    let primary = token(&input.token);
    let mut v = Validator::new(primary.clone());
    if input.secondary {
        v = v.with_secondary(Some(token(SECONDARY_TOKEN)));
    }
    if input.shared_key {
        v = v.with_shared_key(SHARED_KEY_ID, primary.clone());
    }
    let req = SignedRequest {
        method: &input.method,
        url: &input.url,
        content_type: input.content_type.as_deref(),
        body: &input.body,
        signature: input.signature.as_deref(),
        signature_settings: input.settings.as_deref(),
    };
    let verdict = v.verify(&req);
    check_verdict(&input, &req, &verdict);
    round_trips(&input, &v, &primary);
}

/// What any verdict must be consistent with.
fn check_verdict(
    input: &Input,
    req: &SignedRequest<'_>,
    verdict: &Result<VerifiedRequest, SignatureError>,
) {
    let method = req.method;
    let media_type = req.content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let is_get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
    let is_post = method.eq_ignore_ascii_case("POST");
    match verdict {
        Ok(ok) => {
            assert!(is_get || is_post, "accepted method {method:?}");
            assert_eq!(ok.url(), strip_fragment(req.url));
            match (&input.settings, ok.key_used()) {
                (None, KeyUsed::Primary) => {}
                (None, KeyUsed::Secondary) => assert!(input.secondary),
                (Some(_), KeyUsed::SharedKey(id)) => {
                    assert!(input.shared_key);
                    assert_eq!(id, SHARED_KEY_ID);
                }
                (settings, key) => panic!("settings {settings:?} but accepted by {key:?}"),
            }
            if is_get {
                let got: Vec<(String, String)> = ok
                    .params()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                assert_eq!(got, query_pairs(req.url));
                assert_eq!(ok.json_body(), None);
            } else if media_type.as_deref() == Some("application/json") {
                assert_eq!(ok.json_body().map(str::as_bytes), Some(req.body));
                assert!(ok.params().is_empty());
            } else {
                assert_eq!(Ok(ok.params()), FormParams::parse(req.body).as_ref());
                assert_eq!(ok.json_body(), None);
            }
        }
        Err(e) => {
            let _ = e.to_string();
            if e.is_malformed() {
                assert!(
                    !is_get,
                    "GET/HEAD is never malformed (the body is ignored): {e:?}"
                );
            }
            match e {
                SignatureError::UnsupportedMethod(m) => {
                    assert_eq!(m, method);
                    assert!(!is_get && !is_post);
                }
                SignatureError::MissingSignature => assert!(
                    req.signature.is_none_or(|s| s.trim().is_empty()),
                    "MissingSignature with a signature"
                ),
                SignatureError::SharedKeysNotConfigured => {
                    assert!(input.settings.is_some() && !input.shared_key);
                    assert!(e.is_server_error());
                }
                SignatureError::UnknownSharedKey(_) => assert!(input.shared_key),
                SignatureError::Form(FormError::TooLarge(n)) => {
                    assert!(*n > MAX_BODY_BYTES)
                }
                _ => assert!(!e.is_server_error()),
            }
        }
    }
}

/// A request signed for this URL and body, the way Twilio signs it, verifies.
fn round_trips(input: &Input, v: &Validator, primary: &AuthToken) {
    let url = input.url.as_str();
    let form = "application/x-www-form-urlencoded";

    // Form POST, with the auth token and with the SharedKey (HMAC-SHA256).
    if let Ok(params) = FormParams::parse(&input.body) {
        let sig = sign(primary, url, &params);
        let req = SignedRequest {
            method: "POST",
            url,
            content_type: Some(form),
            body: &input.body,
            signature: Some(&sig),
            signature_settings: None,
        };
        let ok = v
            .verify(&req)
            .expect("a form POST signed for its URL verifies");
        assert_eq!(ok.key_used(), &KeyUsed::Primary);
        assert_eq!(ok.params(), &params);
        assert_eq!(ok.url(), strip_fragment(url));
        let ok = v
            .verify_form(url, params.clone(), Some(&sig), None)
            .expect("verify_form accepts what sign signed");
        assert_eq!(ok.params(), &params);

        if input.shared_key {
            for alg in [Algorithm::HmacSha256, Algorithm::HmacSha1] {
                let sig = sign_with(alg, primary, url, &params);
                let settings = format!("key={SHARED_KEY_ID},algorithm={}", alg.header_value());
                let req = SignedRequest {
                    signature: Some(&sig),
                    signature_settings: Some(&settings),
                    ..req
                };
                let ok = v.verify(&req).expect("a SharedKey signature verifies");
                assert_eq!(ok.key_used(), &KeyUsed::SharedKey(SHARED_KEY_ID.into()));
            }
        }
    }

    // GET: the URL alone is signed, the parameters are its query string.
    let sig = sign(primary, url, &FormParams::default());
    let req = SignedRequest {
        method: "GET",
        url,
        content_type: None,
        body: b"",
        signature: Some(&sig),
        signature_settings: None,
    };
    let ok = v.verify(&req).expect("a GET signed for its URL verifies");
    let got: Vec<(String, String)> = ok
        .params()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(got, query_pairs(url));

    // JSON: `bodySHA256` goes into the URL's query string, before any fragment (fuzz finding
    // F2, see RESULTS.md). A URL whose query already names `bodySHA256` is signed over that
    // one: no round trip to expect there.
    let has_hash = query_pairs(url).iter().any(|(k, _)| k == "bodySHA256");
    if !has_hash {
        let (signed_url, sig) = sign_json(primary, url, &input.body);
        let req = SignedRequest {
            method: "POST",
            url: &signed_url,
            content_type: Some("application/json"),
            body: &input.body,
            signature: Some(&sig),
            signature_settings: None,
        };
        match (v.verify(&req), std::str::from_utf8(&input.body)) {
            (Ok(ok), Ok(text)) => assert_eq!(ok.json_body(), Some(text)),
            (Err(SignatureError::Form(FormError::InvalidUtf8(_))), Err(_)) => {}
            (verdict, _) => panic!("sign_json round trip for {url:?}: {verdict:?}"),
        }
    }
}
