//! Every official Twilio signature vector gives the expected verdict.

use std::path::PathBuf;

use serde::Deserialize;
use twilio_webhook::signature::{SignedRequest, Validator};
use twilio_webhook::{AuthToken, FormParams};

#[derive(Deserialize)]
struct Vector {
    source: String,
    auth_token: String,
    url: String,
    params: Option<Vec<(String, String)>>,
    body: Option<String>,
    signature: Option<String>,
    valid: bool,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load() -> Vec<Vector> {
    let path = repo_root().join("testdata/twilio-signature-vectors.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read vectors")).expect("parse vectors")
}

/// The request a vector describes, always a POST as Twilio's libraries test them.
fn request<'a>(v: &'a Vector, form: &'a mut String) -> SignedRequest<'a> {
    let (content_type, body): (&str, &[u8]) = match &v.body {
        // A raw body is JSON unless it looks like a form (one Go vector posts a form body).
        Some(b) if b.trim_start().starts_with(['{', '[']) => ("application/json", b.as_bytes()),
        Some(b) => ("application/x-www-form-urlencoded", b.as_bytes()),
        None => {
            *form = FormParams::from_pairs(v.params.clone().unwrap_or_default()).encode();
            ("application/x-www-form-urlencoded", form.as_bytes())
        }
    };
    SignedRequest {
        method: "POST",
        url: &v.url,
        content_type: Some(content_type),
        body,
        signature: v.signature.as_deref(),
        signature_settings: None,
    }
}

/// Every vector's verdict through `validator(vector)`, with `want(vector)` expected.
fn disagreements(
    validator: impl Fn(&Vector) -> Validator,
    want: impl Fn(&Vector) -> bool,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for (i, v) in load().iter().enumerate() {
        let mut form = String::new();
        let verdict = validator(v).verify(&request(v, &mut form));
        if verdict.is_ok() != want(v) {
            wrong.push(format!("#{i} {} ({}): {verdict:?}", v.source, v.url));
        }
    }
    wrong
}

fn token(s: &str) -> AuthToken {
    AuthToken::new(s).unwrap()
}

#[test]
fn all_official_vectors_give_the_expected_verdict() {
    assert_eq!(load().len(), 120, "the published set has 120 vectors");
    let wrong = disagreements(|v| Validator::new(token(&v.auth_token)), |v| v.valid);
    assert!(
        wrong.is_empty(),
        "{} vectors disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The request's `AccountSid` (form parameter, or the JSON body's top-level field).
fn account_of(v: &Vector) -> Option<String> {
    let from_params = v
        .params
        .iter()
        .flatten()
        .find(|(k, _)| k == "AccountSid")
        .map(|(_, sid)| sid.clone());
    let from_body = v
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .and_then(|j| j.get("AccountSid")?.as_str().map(str::to_owned));
    from_params.or(from_body)
}

const OTHER_ACCOUNT: &str = "AC0000000000000000000000000000000f";

/// Many accounts: each vector's token sits in an account entry (the request's own AccountSid,
/// or the default when the request names none; the published vectors name none), beside other
/// accounts' tokens, and every verdict is unchanged.
#[test]
fn all_official_vectors_verify_through_an_account_entry() {
    let wrong = disagreements(
        |v| {
            let decoys = |val: Validator| {
                val.with_account(OTHER_ACCOUNT, token("other-account-token"), None)
                    .with_account(
                        "AC1111111111111111111111111111111e",
                        token("third"),
                        Some(token("third-secondary")),
                    )
            };
            match account_of(v) {
                Some(sid) => {
                    decoys(Validator::accounts_only()).with_account(sid, token(&v.auth_token), None)
                }
                None => decoys(Validator::new(token(&v.auth_token))),
            }
        },
        |v| v.valid,
    );
    assert!(
        wrong.is_empty(),
        "{} vectors disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// The same vectors with their token under another account's entry (and a wrong default):
/// every one is refused, since a request is never checked with another account's token.
#[test]
fn no_vector_verifies_with_another_accounts_token() {
    let wrong = disagreements(
        |v| {
            Validator::new(token("not-the-vectors-token")).with_account(
                OTHER_ACCOUNT,
                token(&v.auth_token),
                None,
            )
        },
        |_| false,
    );
    assert!(
        wrong.is_empty(),
        "{} vectors accepted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // And without any default, none of them (they name no account) gets a token at all.
    let wrong = disagreements(
        |v| Validator::accounts_only().with_account(OTHER_ACCOUNT, token(&v.auth_token), None),
        |_| false,
    );
    assert!(
        wrong.is_empty(),
        "{} vectors accepted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn vectors_cover_both_verdicts() {
    let vectors = load();
    let valid = vectors.iter().filter(|v| v.valid).count();
    assert!(valid > 50 && vectors.len() - valid > 10, "{valid} valid");
}

/// The repo keeps its own copy so it stands alone; when the shared original is next to the
/// checkout, the copy must still be identical.
#[test]
fn vendored_copy_matches_the_shared_original() {
    let original = repo_root().join("../shared/testdata/twilio-signature-vectors.json");
    let Ok(original) = std::fs::read(&original) else {
        eprintln!("../shared not present: nothing to compare");
        return;
    };
    let copy = std::fs::read(repo_root().join("testdata/twilio-signature-vectors.json")).unwrap();
    assert!(
        copy == original,
        "testdata/twilio-signature-vectors.json differs from ../shared"
    );
}
