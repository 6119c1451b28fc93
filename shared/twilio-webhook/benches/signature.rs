//! Signature-check throughput on a typical inbound-SMS webhook (issue 6, "Benchmarks").
//!
//! The request is `scripts/bench/fixtures/sms-request.json`, shared with the twilio-python and
//! twilio-node peers that `scripts/bench/signature.sh` runs next to this bench. Benches:
//!
//! - `verify/valid`, `verify/invalid`: [`Validator::verify`] on the raw form body. This includes
//!   parsing the body, which the peers do not do (they are handed a parsed dict/object).
//! - `verify_parsed/valid`, `verify_parsed/invalid`: [`Validator::verify_form`] on parameters
//!   parsed before the timed loop, like for like with the peers.
//! - `form_parse`: [`FormParams::parse`] of the same body alone.
//! - `hmac_sha1_floor`: one HMAC-SHA1 (key schedule included) over the exact signed string,
//!   URL + sorted `key + value`, with the `hmac`/`sha1` crates directly: the cost of the
//!   cryptography alone.
//! - `hmac_sha1_floor_prekeyed`: the same with the key schedule computed once, as `Validator` does.
//!
//! Before measuring, the fixture is checked: our `sign` must agree with the signature that
//! twilio-python computed, `verify` must accept it and reject the invalid one, and the floor must
//! hash the string that was signed.

use std::hint::black_box;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use twilio_webhook::signature::{SignedRequest, sign};
use twilio_webhook::{AuthToken, FormParams, SignatureError, Validator};

const FORM: &str = "application/x-www-form-urlencoded";

#[path = "common/fixture.rs"]
mod fixture;
use fixture::Fixture;

fn request<'a>(url: &'a str, body: &'a str, signature: &'a str) -> SignedRequest<'a> {
    SignedRequest {
        method: "POST",
        url,
        content_type: Some(FORM),
        body: body.as_bytes(),
        signature: Some(signature),
        signature_settings: None,
    }
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn benches(c: &mut Criterion) {
    let fx = Fixture::load();
    let token = AuthToken::new(fx.auth_token.as_str()).unwrap();
    let params = FormParams::from_pairs(fx.params.iter().cloned());
    let body = params.encode();
    let signed = fx.signed_string();
    let key = fx.auth_token.as_bytes();

    // The fixture, our signer, the verifier and the floor must all agree before timing anything.
    assert_eq!(
        sign(&token, &fx.url, &params),
        fx.valid_signature,
        "twilio_webhook::sign disagrees with the twilio-python signature in the fixture"
    );
    assert_eq!(
        BASE64.encode(hmac_sha1(key, &signed)),
        fx.valid_signature,
        "the floor does not hash the string that was signed"
    );
    assert_eq!(FormParams::parse(body.as_bytes()).as_ref(), Ok(&params));
    let validator = Validator::new(token.clone());
    let valid = request(&fx.url, &body, &fx.valid_signature);
    let invalid = request(&fx.url, &body, &fx.invalid_signature);
    let ok = validator.verify(&valid).expect("valid signature verifies");
    assert_eq!(ok.params(), &params);
    assert_eq!(
        validator.verify(&invalid),
        Err(SignatureError::InvalidSignature)
    );

    let mut group = c.benchmark_group("verify");
    group.bench_function("valid", |b| {
        b.iter(|| validator.verify(black_box(&valid)).is_ok())
    });
    group.bench_function("invalid", |b| {
        b.iter(|| validator.verify(black_box(&invalid)).is_ok())
    });
    group.finish();

    // Like for like with the peers, which are handed parsed parameters: the parse is outside
    // the timed loop (the clone of the parsed params stays inside, as `verify_form` consumes them).
    let mut group = c.benchmark_group("verify_parsed");
    for (name, sig) in [
        ("valid", &fx.valid_signature),
        ("invalid", &fx.invalid_signature),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || params.clone(),
                |p| {
                    validator
                        .verify_form(black_box(&fx.url), p, Some(sig), None)
                        .is_ok()
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();

    c.bench_function("form_parse", |b| {
        b.iter(|| FormParams::parse(black_box(body.as_bytes())))
    });

    c.bench_function("hmac_sha1_floor", |b| {
        b.iter(|| hmac_sha1(black_box(key), black_box(&signed)))
    });

    let keyed = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    c.bench_function("hmac_sha1_floor_prekeyed", |b| {
        b.iter(|| {
            let mut mac = keyed.clone();
            mac.update(black_box(&signed));
            mac.finalize()
        })
    });
}

criterion_group!(signature, benches);
criterion_main!(signature);
