//! Property tests: what `sign` produces, `Validator::verify` accepts, and any one-character
//! change to the URL, a key, a value or the signature is refused.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use twilio_webhook::signature::{SignatureError, SignedRequest, Validator, sign};
use twilio_webhook::{AuthToken, FormError, FormParams};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn verify(url: &str, params: &FormParams, signature: &str) -> Result<(), SignatureError> {
    let body = params.encode();
    Validator::new(AuthToken::new(TOKEN).unwrap())
        .verify(&SignedRequest {
            method: "POST",
            url,
            content_type: Some("application/x-www-form-urlencoded"),
            body: body.as_bytes(),
            signature: Some(signature),
            signature_settings: None,
        })
        .map(|_| ())
}

/// The signed string, written independently of the library as the oracle for collisions.
fn signed_string(url: &str, params: &FormParams) -> String {
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
        .into_iter()
        .fold(url.to_owned(), |s, (k, v)| s + &k + &v)
}

fn url_strategy() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("https"), Just("http")],
        "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5}){1,2}",
        prop_oneof![Just(String::new()), (1u16..65535).prop_map(|p| format!(":{p}"))],
        "(/[A-Za-z0-9._~-]{0,10}){0,4}",
        prop_oneof![
            Just(String::new()),
            "\\?[A-Za-z0-9_]{1,8}=[A-Za-z0-9%+~._-]{0,12}(&[A-Za-z0-9_]{1,8}=[A-Za-z0-9%+._~-]{0,12}){0,3}"
        ],
    )
        .prop_map(|(s, h, port, path, q)| format!("{s}://{h}{port}{path}{q}"))
}

/// Arbitrary Unicode keys and values, repeated keys included.
fn params_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof!["[A-Za-z][A-Za-z0-9]{0,12}", "\\PC{1,8}"];
    prop::collection::vec((key, "\\PC{0,20}"), 0..14).prop_flat_map(|pairs| {
        // Repeat some keys with other values, as Twilio does for multi-valued parameters.
        let n = pairs.len();
        (
            Just(pairs),
            prop::collection::vec((0..n.max(1), "\\PC{0,6}"), 0..3),
        )
            .prop_map(move |(mut pairs, extra)| {
                for (i, v) in extra {
                    if let Some((k, _)) = pairs.get(i).cloned() {
                        pairs.push((k, v));
                    }
                }
                pairs
            })
    })
}

fn replace_char(s: &str, idx: usize, with: char) -> Option<String> {
    let (i, c) = s.char_indices().nth(idx % s.chars().count().max(1))?;
    (c != with).then(|| format!("{}{with}{}", &s[..i], &s[i + c.len_utf8()..]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_verify_round_trips(url in url_strategy(), pairs in params_strategy()) {
        let params = FormParams::from_pairs(pairs);
        let sig = sign(&AuthToken::new(TOKEN).unwrap(), &url, &params);
        prop_assert_eq!(verify(&url, &params, &sig), Ok(()));
    }

    #[test]
    fn signature_made_without_the_port_still_verifies(url in url_strategy(), pairs in params_strategy()) {
        // Twilio signs voice webhooks over HTTPS without the port; the request may carry the
        // scheme's default port, or none.
        let (scheme, rest) = url.split_once("://").unwrap();
        let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
        prop_assume!(!rest[..host_end].contains(':'));
        let params = FormParams::from_pairs(pairs);
        let sig = sign(&AuthToken::new(TOKEN).unwrap(), &url, &params);
        let port = if scheme == "https" { 443 } else { 80 };
        let with_port = format!("{scheme}://{}:{port}{}", &rest[..host_end], &rest[host_end..]);
        prop_assert_eq!(verify(&with_port, &params, &sig), Ok(()));
    }

    #[test]
    fn any_change_to_the_url_is_rejected(
        url in url_strategy(), pairs in params_strategy(), idx in any::<usize>(),
        with in prop::char::range('!', '~'),
    ) {
        let params = FormParams::from_pairs(pairs);
        let sig = sign(&AuthToken::new(TOKEN).unwrap(), &url, &params);
        let Some(changed) = replace_char(&url, idx, with) else { return Ok(()) };
        // Cutting the URL with '#' drops what follows from the signed URL, still a change.
        prop_assert_eq!(verify(&changed, &params, &sig), Err(SignatureError::InvalidSignature));
    }

    #[test]
    fn any_change_to_a_key_or_value_is_rejected(
        url in url_strategy(), pairs in params_strategy().prop_filter("non-empty", |p| !p.is_empty()),
        which in any::<usize>(), idx in any::<usize>(), in_key in any::<bool>(), with in any::<char>(),
    ) {
        let params = FormParams::from_pairs(pairs.clone());
        let sig = sign(&AuthToken::new(TOKEN).unwrap(), &url, &params);
        let mut changed = pairs.clone();
        let pair = &mut changed[which % pairs.len()];
        let target = if in_key { &mut pair.0 } else { &mut pair.1 };
        let Some(new) = replace_char(target, idx, with) else { return Ok(()) };
        *target = new;
        let changed = FormParams::from_pairs(changed);
        // Keys and values are concatenated without separators; skip the (astronomically rare)
        // changes that leave the signed string itself unchanged.
        prop_assume!(signed_string(&url, &changed) != signed_string(&url, &params));
        prop_assert_eq!(verify(&url, &changed, &sig), Err(SignatureError::InvalidSignature));
    }

    #[test]
    fn any_change_to_the_signature_is_rejected(
        url in url_strategy(), pairs in params_strategy(), idx in any::<usize>(),
        with in prop::sample::select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=".to_vec()),
    ) {
        let params = FormParams::from_pairs(pairs);
        let sig = sign(&AuthToken::new(TOKEN).unwrap(), &url, &params);
        let Some(changed) = replace_char(&sig, idx, with as char) else { return Ok(()) };
        prop_assert_eq!(verify(&url, &params, &changed), Err(SignatureError::InvalidSignature));
    }

    #[test]
    fn form_parser_never_panics_and_round_trips(pairs in params_strategy(), junk in prop::collection::vec(any::<u8>(), 0..200)) {
        let params = FormParams::from_pairs(pairs);
        prop_assert_eq!(FormParams::parse(params.encode().as_bytes()), Ok(params));
        // Arbitrary bytes: an error or parameters that can all be read, never a panic.
        if let Ok(p) = FormParams::parse(&junk) {
            prop_assert_eq!(p.iter().count(), p.len());
        }
    }

    /// The signer sorts keys by a 7-byte numeric prefix and falls back to the bytes on ties
    /// (and above 255 parameters): keys built to tie, contain zero bytes or be prefixes of one
    /// another must still hash in plain sorted order.
    #[test]
    fn parameter_order_matches_a_plain_sort(
        pairs in prop::collection::vec(
            ("(MediaUrl|Caller|Ab\\x00|A|)[0-9a\\x00]{0,3}", "[ab]{0,2}"),
            0..300,
        )
    ) {
        let url = "https://example.com/sms?x=1";
        let params = FormParams::from_pairs(pairs);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
        mac.update(signed_string(url, &params).as_bytes());
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        prop_assert_eq!(sign(&AuthToken::new(TOKEN).unwrap(), url, &params), expected.clone());
        prop_assert_eq!(verify(url, &params, &expected), Ok(()));
    }

    /// The hand-written single-pass parser agrees with the `form_urlencoded` crate wherever
    /// the body is well-formed, and only refuses bodies that really are malformed.
    #[test]
    fn form_parser_agrees_with_form_urlencoded(
        body in "([a=&+%]|%[0-9A-Fa-f]{2}|%C3%A9|%E2%82|\u{e9}){0,40}"
    ) {
        match FormParams::parse(body.as_bytes()) {
            Ok(p) => {
                let theirs: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let ours: Vec<(String, String)> =
                    p.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                prop_assert_eq!(ours, theirs);
            }
            Err(FormError::BadEscape(i)) => {
                let hex = |j: usize| body.as_bytes().get(j).is_some_and(u8::is_ascii_hexdigit);
                prop_assert!(body.as_bytes()[i] == b'%' && !(hex(i + 1) && hex(i + 2)));
            }
            Err(FormError::InvalidUtf8(_)) => {
                let undecodable = body.split('&').flat_map(|pair| pair.splitn(2, '=')).any(|piece| {
                    percent_encoding::percent_decode_str(&piece.replace('+', " ")).decode_utf8().is_err()
                });
                prop_assert!(undecodable, "{body:?}");
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
