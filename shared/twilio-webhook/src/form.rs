//! `application/x-www-form-urlencoded` parsing that keeps what Twilio sent.

use std::borrow::Cow;

/// Largest body accepted (Twilio bodies are a few KB; a 1600-char SMS with 10 media URLs fits easily).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("form body is {0} bytes, larger than the {MAX_BODY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("form body is not valid UTF-8 after decoding (at byte {0})")]
    InvalidUtf8(usize),
}

/// Decoded form parameters in arrival order, duplicates and blank values kept.
///
/// `Debug` lists the keys only: values hold phone numbers and message bodies.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FormParams(Vec<(String, String)>);

impl std::fmt::Debug for FormParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FormParams")
            .field(&self.0.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl FormParams {
    /// Parse a raw body. Never panics; rejects bad escapes and invalid UTF-8.
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(FormError::TooLarge(body.len()));
        }
        let mut out = Vec::new();
        let mut offset = 0;
        for pair in body.split(|b| *b == b'&') {
            if !pair.is_empty() {
                let (k, v) = match pair.iter().position(|b| *b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &[][..]),
                };
                let key = decode(k, offset)?;
                let value = decode(v, offset + k.len() + 1)?;
                out.push((key.into_owned(), value.into_owned()));
            }
            offset += pair.len() + 1;
        }
        Ok(Self(out))
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// First value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in arrival order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encode back to a form body (for tests, the CLI and forwarding).
    pub fn encode(&self) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(self.iter())
            .finish()
    }
}

fn decode(raw: &[u8], at: usize) -> Result<Cow<'_, str>, FormError> {
    if !raw.iter().any(|b| *b == b'%' || *b == b'+') {
        return std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|e| FormError::InvalidUtf8(at + e.valid_up_to()));
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3).ok_or(FormError::BadEscape(at + i))?;
                let hi = (hex[0] as char).to_digit(16);
                let lo = (hex[1] as char).to_digit(16);
                match (hi, lo) {
                    (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                    _ => return Err(FormError::BadEscape(at + i)),
                }
                i += 2;
            }
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|e| FormError::InvalidUtf8(at + e.utf8_error().valid_up_to()))
}
