//! Our check against the raw HMAC-SHA1 floor, measured interleaved (issue 6, "Benchmarks").
//!
//! This VM's speed drifts by tens of percent within seconds, so two criterion benches run a few
//! seconds apart can disagree by more than the ratio being measured. Here each case runs for a
//! 5 ms slice in turn, round after round, and the totals are compared: every case sees the same
//! mix of fast and slow moments. `scripts/bench/signature.sh` judges the floor target on this.
//!
//! Usage: `cargo run --release -p twilio-webhook --example floor_ratio -- [SECONDS]` (default 3).
//! Prints one JSON object: nanoseconds per call of each case.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use twilio_webhook::signature::SignedRequest;
use twilio_webhook::{AuthToken, FormParams, Validator};

#[path = "../benches/common/fixture.rs"]
mod fixture;
const SLICE: Duration = Duration::from_millis(5);
/// Calls between clock reads; parameters for `verify_form` are cloned before each batch.
const BATCH: usize = 32;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("SECONDS is a number"))
        .unwrap_or(3.0);
    let fx = fixture::Fixture::load();
    let (url, token) = (fx.url.clone(), fx.auth_token.clone());
    let (valid, invalid) = (fx.valid_signature.clone(), fx.invalid_signature.clone());
    let params = FormParams::from_pairs(fx.params.iter().cloned());
    let body = params.encode();
    // The string the floor hashes, as in the bench: URL, then key + value sorted by key.
    let signed = fx.signed_string();
    let validator = Validator::new(AuthToken::new(token.as_str()).unwrap());
    let request = |sig: &str| {
        validator.verify(&SignedRequest {
            method: "POST",
            url: &url,
            content_type: Some("application/x-www-form-urlencoded"),
            body: body.as_bytes(),
            signature: Some(sig),
            signature_settings: None,
        })
    };
    let form = |p: FormParams, sig: &str| validator.verify_form(&url, p, Some(sig), None);
    let floor = || {
        let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("any key length");
        mac.update(black_box(&signed));
        mac.finalize().into_bytes()
    };
    // The answers must be right before anything is timed.
    assert!(request(&valid).is_ok() && request(&invalid).is_err());
    assert!(form(params.clone(), &valid).is_ok() && form(params.clone(), &invalid).is_err());

    let names = [
        "verify/valid",
        "verify/invalid",
        "verify_parsed/valid",
        "verify_parsed/invalid",
        "hmac_sha1_floor",
    ];
    let mut totals = [(0u64, Duration::ZERO); 5];
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        for (case, total) in totals.iter_mut().enumerate() {
            let slice_end = Instant::now() + SLICE;
            while Instant::now() < slice_end {
                let mut batch: Vec<FormParams> = match case {
                    2 | 3 => vec![params.clone(); BATCH],
                    _ => Vec::new(),
                };
                // Results are dropped after the clock is read, as criterion's `iter_batched`
                // does (the bench this complements).
                let mut out = Vec::with_capacity(BATCH);
                let mut floors = Vec::with_capacity(BATCH);
                let t0 = Instant::now();
                for _ in 0..BATCH {
                    match case {
                        0 => out.push(request(black_box(&valid))),
                        1 => out.push(request(black_box(&invalid))),
                        2 => out.push(form(batch.pop().expect("one per call"), black_box(&valid))),
                        3 => out.push(form(
                            batch.pop().expect("one per call"),
                            black_box(&invalid),
                        )),
                        _ => floors.push(floor()),
                    }
                }
                total.1 += t0.elapsed();
                total.0 += BATCH as u64;
                black_box((out, floors));
            }
        }
    }
    let fields: Vec<String> = names
        .iter()
        .zip(totals)
        .map(|(n, (calls, t))| format!("\"{n}\": {:.1}", t.as_nanos() as f64 / calls as f64))
        .collect();
    println!("{{{}}}", fields.join(", "));
}
