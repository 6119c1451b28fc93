//! `application/x-www-form-urlencoded` parsing that keeps what Twilio sent.

/// Largest body accepted (Twilio bodies are a few KB; a 1600-char SMS with 10 media URLs fits easily).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a form body is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// The body's length in bytes, over [`MAX_BODY_BYTES`].
    #[error("form body is {0} bytes, larger than the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed percent-escape at byte {0}")]
    /// A `%` not followed by two hex digits, at this byte offset of the body.
    BadEscape(usize),
    /// The decoded bytes, or one key or value of them, are not UTF-8 (decoded byte offset).
    #[error("form body is not valid UTF-8 after decoding (at decoded byte {0})")]
    InvalidUtf8(usize),
}

/// Decoded form parameters in arrival order, duplicates and blank values kept.
///
/// Stored as one decoded buffer plus spans, so parsing a 20-parameter Twilio body costs two
/// allocations instead of forty (it is on every request's hot path).
///
/// `Debug` lists the keys only: values hold phone numbers and message bodies.
#[derive(Clone, Default)]
pub struct FormParams {
    buf: String,
    /// (key start, key end, value end): the value starts where the key ends.
    spans: Vec<(u32, u32, u32)>,
}

impl PartialEq for FormParams {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for FormParams {}

/// Serialized as `[[key, value], ...]`: order, duplicates and blanks survive storage.
impl serde::Serialize for FormParams {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for FormParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = <Vec<(String, String)>>::deserialize(d)?;
        Ok(Self::from_pairs(pairs))
    }
}

impl std::fmt::Debug for FormParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FormParams")
            .field(&self.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl FormParams {
    /// Parse a raw body. Never panics; rejects bad escapes and invalid UTF-8.
    ///
    /// One pass over the body: runs of literal bytes are copied whole, and only `&`, `=`, `%`
    /// and `+` stop the scan (this runs on every request, before the signature check).
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(FormError::TooLarge(body.len()));
        }
        // Decoding never grows the text, so one allocation holds it all; the 16 spare bytes
        // let short runs be copied as one fixed 16-byte move instead of a memcpy call.
        let n = body.len();
        let mut out = vec![0u8; n + 16];
        let mut w = 0;
        let mut spans = Vec::with_capacity(24);
        let (mut i, mut pair_start, mut start, mut key_end) = (0, 0, 0, None);
        loop {
            let run = body[i..]
                .iter()
                .position(|b| SPECIAL[*b as usize])
                .unwrap_or(n - i);
            // `w <= i` always, so both 16-byte windows are in bounds whenever the input's is.
            if run <= 16 && i + 16 <= n {
                out[w..w + 16].copy_from_slice(&body[i..i + 16]);
            } else {
                out[w..w + run].copy_from_slice(&body[i..i + run]);
            }
            (i, w) = (i + run, w + run);
            match body.get(i) {
                // An empty pair (`&&`, a leading or trailing `&`) is no parameter.
                None | Some(b'&') => {
                    if i > pair_start {
                        spans.push((start, key_end.unwrap_or(w as u32), w as u32));
                    }
                    if i == n {
                        break;
                    }
                    i += 1;
                    (pair_start, start, key_end) = (i, w as u32, None);
                }
                Some(b'=') => {
                    // Only the first `=` of a pair separates; later ones belong to the value.
                    match key_end {
                        None => key_end = Some(w as u32),
                        Some(_) => {
                            out[w] = b'=';
                            w += 1;
                        }
                    }
                    i += 1;
                }
                Some(b'+') => {
                    out[w] = b' ';
                    (i, w) = (i + 1, w + 1);
                }
                Some(_) => {
                    let hex = |at: usize| body.get(at).map_or(0xff, |b| HEX[*b as usize]);
                    let (h, l) = (hex(i + 1), hex(i + 2));
                    if (h | l) > 0xf {
                        return Err(FormError::BadEscape(i));
                    }
                    out[w] = h << 4 | l;
                    (i, w) = (i + 3, w + 1);
                }
            }
        }
        out.truncate(w);
        // One UTF-8 check for everything, then each key and value must also be whole on its
        // own (`%C3` as a key and `%A9` as its value are valid only together).
        let buf = String::from_utf8(out)
            .map_err(|e| FormError::InvalidUtf8(e.utf8_error().valid_up_to()))?;
        let split = |i: u32| !buf.is_char_boundary(i as usize);
        if let Some(&(_, k, e)) = spans.iter().find(|&&(_, k, e)| split(k) || split(e)) {
            return Err(FormError::InvalidUtf8(if split(k) { k } else { e } as usize));
        }
        Ok(Self { buf, spans })
    }

    /// Parameters from already decoded pairs, in order (no size limit).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut out = Self::default();
        for (k, v) in pairs {
            let start = out.buf.len() as u32;
            out.buf.push_str(k.as_ref());
            let key_end = out.buf.len() as u32;
            out.buf.push_str(v.as_ref());
            out.spans.push((start, key_end, out.buf.len() as u32));
        }
        out
    }

    /// First value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every value of `key`, in arrival order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every `(key, value)`, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans.iter().map(|&(s, k, e)| {
            (
                &self.buf[s as usize..k as usize],
                &self.buf[k as usize..e as usize],
            )
        })
    }

    /// Parameter `i` as `(key, key followed by its value)`: the two are adjacent in the
    /// buffer, so the signature check hashes a parameter with one call.
    pub(crate) fn raw_pair(&self, i: usize) -> (&[u8], &[u8]) {
        let (s, k, e) = self.spans[i];
        let buf = self.buf.as_bytes();
        (&buf[s as usize..k as usize], &buf[s as usize..e as usize])
    }

    /// The number of parameters, duplicates counted.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Encode back to a form body (for tests, the CLI and forwarding).
    pub fn encode(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.iter())
            .finish()
    }
}

/// Serde as one form body (`a=1&b=2`): the compact way to store parameters (about a sixth
/// smaller than `[[key, value], ...]` for a Twilio SMS, which keeps a stored event under
/// DynamoDB's 1 KB write unit). Reads both shapes, so records stored as pairs stay readable.
/// Use with `#[serde(with = "twilio_webhook::form::as_body")]`.
pub mod as_body {
    use super::FormParams;

    /// Writes the parameters as one form body string.
    pub fn serialize<S: serde::Serializer>(p: &FormParams, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.encode())
    }

    /// Reads a form body string or a list of `[key, value]` pairs.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FormParams, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Body(String),
            Pairs(Vec<(String, String)>),
        }
        Ok(match Stored::deserialize(d)? {
            // No size limit here: the body was checked when it arrived, and re-encoding may
            // have grown it (raw UTF-8 becomes percent-escapes).
            Stored::Body(body) => FormParams::from_pairs(form_urlencoded::parse(body.as_bytes())),
            Stored::Pairs(pairs) => FormParams::from_pairs(pairs),
        })
    }

    use serde::Deserialize as _;
}

/// The bytes that end a run of literal bytes in a form body.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'&' as usize] = true;
    t[b'=' as usize] = true;
    t[b'%' as usize] = true;
    t[b'+' as usize] = true;
    t
};

/// Value of a hex digit, or 0xff.
static HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &FormParams) -> Vec<(&str, &str)> {
        p.iter().collect()
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Stored {
        #[serde(with = "as_body")]
        params: FormParams,
    }

    #[test]
    fn stored_as_one_body_round_trips_and_reads_the_old_pairs() {
        let p = FormParams::from_pairs([
            ("Body", "héllo & =+ 100%"),
            ("From", "+14155550100"),
            ("b", ""),
            ("b", "2"),
        ]);
        let json = serde_json::to_string(&Stored { params: p.clone() }).unwrap();
        assert_eq!(
            json,
            r#"{"params":"Body=h%C3%A9llo+%26+%3D%2B+100%25&From=%2B14155550100&b=&b=2"}"#
        );
        let back: Stored = serde_json::from_str(&json).unwrap();
        assert_eq!(back.params, p);
        // Records stored before the compact form: `[[key, value], ...]`.
        let old: Stored = serde_json::from_str(
            r#"{"params":[["Body","héllo & =+ 100%"],["From","+14155550100"],["b",""],["b","2"]]}"#,
        )
        .unwrap();
        assert_eq!(old.params, p);
    }

    #[test]
    fn keeps_order_duplicates_and_blank_values() {
        let p = FormParams::parse(b"b=2&a=1&b=&c&a=1").unwrap();
        assert_eq!(
            pairs(&p),
            [("b", "2"), ("a", "1"), ("b", ""), ("c", ""), ("a", "1")]
        );
        assert_eq!(p.get_all("b").collect::<Vec<_>>(), ["2", ""]);
        assert_eq!(p.get("c"), Some(""));
        assert!(FormParams::parse(b"").unwrap().is_empty());
        assert_eq!(FormParams::parse(b"&&a=1&").unwrap().len(), 1);
    }

    #[test]
    fn decodes_plus_and_percent_escapes() {
        let p =
            FormParams::parse(b"From=%2B14155550100&Body=Hello+world%21+%F0%9F%91%8B&k%3D=v%26")
                .unwrap();
        assert_eq!(
            pairs(&p),
            [
                ("From", "+14155550100"),
                ("Body", "Hello world! 👋"),
                ("k=", "v&")
            ]
        );
    }

    #[test]
    fn rejects_bad_escapes_and_invalid_utf8_with_a_position() {
        assert_eq!(FormParams::parse(b"a=%2"), Err(FormError::BadEscape(2)));
        assert_eq!(
            FormParams::parse(b"a=1&b=%G1"),
            Err(FormError::BadEscape(6))
        );
        assert!(matches!(
            FormParams::parse(b"a=%FF%FE"),
            Err(FormError::InvalidUtf8(_))
        ));
        assert!(matches!(
            FormParams::parse(b"a=\xff"),
            Err(FormError::InvalidUtf8(_))
        ));
        // Valid only across a key/value boundary: rejected, never a panic when read.
        for body in [&b"%C3=%A9"[..], b"a=%C3&%A9=b", b"%E2%82=%AC"] {
            assert!(
                matches!(FormParams::parse(body), Err(FormError::InvalidUtf8(_))),
                "{body:?}"
            );
        }
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        assert_eq!(
            FormParams::parse(&big),
            Err(FormError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }

    #[test]
    fn encode_round_trips() {
        let p = FormParams::from_pairs([("Body", "a&b=c +%"), ("E", ""), ("Body", "ü")]);
        assert_eq!(FormParams::parse(p.encode().as_bytes()).unwrap(), p);
    }
}
