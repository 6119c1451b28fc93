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

#[test]
fn all_official_vectors_give_the_expected_verdict() {
    let vectors = load();
    assert_eq!(vectors.len(), 120, "the published set has 120 vectors");
    let mut wrong = Vec::new();
    for (i, v) in vectors.iter().enumerate() {
        let form;
        let (content_type, body): (&str, &[u8]) = match &v.body {
            // A raw body is JSON unless it looks like a form (one Go vector posts a form body).
            Some(b) if b.trim_start().starts_with(['{', '[']) => ("application/json", b.as_bytes()),
            Some(b) => ("application/x-www-form-urlencoded", b.as_bytes()),
            None => {
                form = FormParams::from_pairs(v.params.clone().unwrap_or_default()).encode();
                ("application/x-www-form-urlencoded", form.as_bytes())
            }
        };
        let req = SignedRequest {
            method: "POST",
            url: &v.url,
            content_type: Some(content_type),
            body,
            signature: v.signature.as_deref(),
            signature_settings: None,
        };
        let verdict = Validator::new(AuthToken::new(&v.auth_token).unwrap()).verify(&req);
        if verdict.is_ok() != v.valid {
            wrong.push(format!("#{i} {} ({}): {verdict:?}", v.source, v.url));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} vectors disagree:\n{}",
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
