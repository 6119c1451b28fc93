//! `FormParams::parse` (shared/twilio-webhook/src/form.rs) on any bytes.
//!
//! Properties, besides never panicking:
//! - an accepted body gives exactly the pairs of the `form_urlencoded` crate (the WHATWG
//!   parser), in order, duplicates and blanks kept;
//! - a rejection names the right place: `BadEscape(i)` is the first `%` not followed by two
//!   hex digits; a body that is UTF-8 without `%` is never refused for its encoding;
//! - `encode` → `parse`, `from_pairs` and the JSON form (`[[k, v], ...]`) all round-trip;
//! - `get`/`get_all`/`len` agree with the pairs.

use twilio_webhook::form::{FormError, FormParams, MAX_BODY_BYTES};

fn is_hex(b: Option<&u8>) -> bool {
    b.is_some_and(u8::is_ascii_hexdigit)
}

pub fn run(data: &[u8]) {
    let parsed = FormParams::parse(data);
    let p = match parsed {
        Ok(p) => p,
        Err(FormError::TooLarge(n)) => {
            assert_eq!(n, data.len());
            assert!(n > MAX_BODY_BYTES);
            return;
        }
        Err(FormError::BadEscape(i)) => {
            assert!(data.len() <= MAX_BODY_BYTES);
            assert_eq!(data.get(i), Some(&b'%'), "BadEscape({i}) is not at a '%'");
            assert!(
                !(is_hex(data.get(i + 1)) && is_hex(data.get(i + 2))),
                "BadEscape({i}) at a valid escape"
            );
            // Every '%' before it starts a valid escape.
            let mut j = 0;
            while j < i {
                if data[j] == b'%' {
                    assert!(
                        is_hex(data.get(j + 1)) && is_hex(data.get(j + 2)),
                        "BadEscape({i}) but the bad escape at {j} came first"
                    );
                    j += 3;
                } else {
                    j += 1;
                }
            }
            return;
        }
        Err(FormError::InvalidUtf8(_)) => {
            assert!(
                data.contains(&b'%') || std::str::from_utf8(data).is_err(),
                "a UTF-8 body without escapes was refused as invalid UTF-8"
            );
            return;
        }
    };

    // Same pairs as the WHATWG parser.
    let reference: Vec<_> = form_urlencoded::parse(data).collect();
    assert_eq!(
        p.len(),
        reference.len(),
        "pair count differs from form_urlencoded"
    );
    assert_eq!(p.is_empty(), reference.is_empty());
    for ((k, v), (rk, rv)) in p.iter().zip(&reference) {
        assert_eq!(
            (k, v),
            (rk.as_ref(), rv.as_ref()),
            "pair differs from form_urlencoded"
        );
    }

    // Lookups agree with the pairs (first keys only: all of them is quadratic).
    for (k, _) in p.iter().take(8) {
        let all: Vec<&str> = reference
            .iter()
            .filter(|(rk, _)| rk == k)
            .map(|(_, rv)| rv.as_ref())
            .collect();
        assert_eq!(p.get(k), all.first().copied());
        assert!(p.get_all(k).eq(all.iter().copied()));
    }

    // Round trips.
    assert_eq!(FormParams::from_pairs(p.iter()), p);
    let encoded = p.encode();
    if encoded.len() <= MAX_BODY_BYTES {
        assert_eq!(
            FormParams::parse(encoded.as_bytes()).as_ref(),
            Ok(&p),
            "encode does not round-trip"
        );
    }
    let json = serde_json::to_string(&p).expect("FormParams serializes");
    let back: FormParams = serde_json::from_str(&json).expect("FormParams deserializes");
    assert_eq!(back, p, "JSON form does not round-trip");

    // Debug lists keys only and must not fail.
    let _ = format!("{p:?}");
}
