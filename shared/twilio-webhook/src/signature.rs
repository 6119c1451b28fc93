//! `X-Twilio-Signature` validation, behaving like twilio-python's `RequestValidator`.
//!
//! Signed string: the URL Twilio requested (query string byte for byte, fragment excluded),
//! then for form POSTs every parameter, keys sorted by bytes, a repeated key's values sorted and
//! de-duplicated, appended as `key + value`. JSON bodies are covered through the `bodySHA256`
//! query parameter instead. The URL is tried as given and with its port removed / the scheme's
//! default port added, because Twilio signs some callbacks with the port and some without.
//!
//! Two algorithms share this path: the account auth token with HMAC-SHA1 (the default), and a
//! Webhooks SharedKey named by `X-Twilio-Webhooks-Signature-Settings: key=<id>,algorithm=...`
//! with HMAC-SHA1 or HMAC-SHA256 (public beta; same signed string, other key and hash).
//!
//! Many accounts: a validator may hold tokens per `AccountSid` ([`Validator::with_account`]).
//! The request's own `AccountSid` (form or query parameter, or the top-level field of a JSON
//! body) picks the tokens to check with, and only those: a request signed with account A's
//! token that claims account B fails. A request without one, or naming an account not listed,
//! uses the default token, if there is one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use std::collections::HashMap;

use crate::form::{FormError, FormParams};

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";
/// Header naming the SharedKey and algorithm when the Webhooks configuration API signs.
pub const SIGNATURE_SETTINGS_HEADER: &str = "X-Twilio-Webhooks-Signature-Settings";
/// Header Twilio sets so a receiver can tell retries of the same webhook apart.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";

/// A secret used as an HMAC key: an account auth token or a SharedKey secret.
///
/// Never blank: anyone can compute an HMAC under the empty key, so a validator holding one
/// would accept forged requests. Surrounding whitespace (a pasted newline) is trimmed; no
/// Twilio token contains any. `Debug` never prints it, so it cannot leak through logs or panics.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Box<str>);

/// An empty or whitespace-only secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the secret is empty or blank")]
pub struct BlankSecret;

impl AuthToken {
    /// The trimmed secret, or [`BlankSecret`] if nothing is left.
    pub fn new(token: impl AsRef<str>) -> Result<Self, BlankSecret> {
        let token = token.as_ref().trim();
        if token.is_empty() {
            return Err(BlankSecret);
        }
        Ok(Self(token.into()))
    }

    /// The raw secret; call only where the HMAC needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl std::str::FromStr for AuthToken {
    type Err = BlankSecret;
    fn from_str(s: &str) -> Result<Self, BlankSecret> {
        Self::new(s)
    }
}

/// HMAC algorithm of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC-SHA1: auth tokens, and SharedKeys by default.
    HmacSha1,
    /// HMAC-SHA256, SharedKeys only.
    HmacSha256,
}

impl Algorithm {
    /// Parse the `algorithm=` value of the settings header (case-insensitive like twilio-python).
    pub fn from_header_value(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "HMAC_SHA1" => Some(Self::HmacSha1),
            "HMAC_SHA256" => Some(Self::HmacSha256),
            _ => None,
        }
    }

    /// The `algorithm=` value in the settings header: `HMAC_SHA1` or `HMAC_SHA256`.
    pub fn header_value(self) -> &'static str {
        match self {
            Self::HmacSha1 => "HMAC_SHA1",
            Self::HmacSha256 => "HMAC_SHA256",
        }
    }
}

/// Which configured secret accepted a request (logged, useful during rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUsed {
    /// The current auth token.
    Primary,
    /// The secondary auth token, kept while a rotation is under way.
    Secondary,
    /// The SharedKey with this id.
    SharedKey(String),
}

/// Why a request was not accepted. [`SignatureError::is_server_error`] and
/// [`SignatureError::is_malformed`] decide the HTTP status in the pipeline.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// No `X-Twilio-Signature` header.
    #[error("missing X-Twilio-Signature header")]
    MissingSignature,
    /// No configured secret produces this signature for this URL and body.
    #[error("X-Twilio-Signature does not match the request")]
    InvalidSignature,
    /// A JSON body, but no `bodySHA256` query parameter to check it with.
    #[error("JSON body without bodySHA256 in the URL")]
    MissingBodyHash,
    /// The JSON body is not the one `bodySHA256` names.
    #[error("bodySHA256 does not match the body")]
    BodyHashMismatch,
    /// The settings header names an algorithm other than `HMAC_SHA1` / `HMAC_SHA256`.
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The settings header has no `key=`.
    #[error("malformed X-Twilio-Webhooks-Signature-Settings header")]
    MalformedSettings,
    /// The settings header names a SharedKey id that is not configured.
    #[error("request signed with unknown shared key {0:?}")]
    UnknownSharedKey(String),
    /// A SharedKey-signed request, and no SharedKeys configured (a server error).
    #[error("request signed with a shared key, but no shared keys are configured")]
    SharedKeysNotConfigured,
    /// An HTTP method other than GET, HEAD or POST.
    #[error("unsupported method {0}: only GET and POST webhooks can be validated")]
    UnsupportedMethod(String),
    /// A POST body that is neither form-encoded nor JSON.
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    /// The form body cannot be parsed.
    #[error("malformed form body: {0}")]
    Form(#[from] FormError),
    /// The request names an account with no token of its own, and there is no default token.
    #[error("AccountSid {0} has no token, and there is no default token")]
    UnknownAccount(String),
    /// No `AccountSid` in the request, and no default token to check it with.
    #[error("no AccountSid in the request, and there is no default token")]
    MissingAccountSid,
    /// `AccountSid` given twice with different values, or not a string in a JSON body: which
    /// account's token applies cannot be told.
    #[error("the request names its AccountSid more than once, or not as a string")]
    AmbiguousAccountSid,
}

impl SignatureError {
    /// Our configuration cannot check this request (twilio-node answers 500 here too).
    pub fn is_server_error(&self) -> bool {
        matches!(self, Self::SharedKeysNotConfigured)
    }

    /// The request itself is unreadable, whoever sent it.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::Form(_) | Self::UnsupportedContentType(_) | Self::UnsupportedMethod(_)
        )
    }
}

/// The parts of an HTTP request that the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// The HTTP method (`POST`, or `GET` with parameters in the query string).
    pub method: &'a str,
    /// The URL Twilio requested, as reconstructed by [`crate::url`].
    pub url: &'a str,
    /// The `Content-Type` header, parameters (`; charset=...`) included.
    pub content_type: Option<&'a str>,
    /// The body exactly as received.
    pub body: &'a [u8],
    /// `X-Twilio-Signature`.
    pub signature: Option<&'a str>,
    /// `X-Twilio-Webhooks-Signature-Settings`.
    pub signature_settings: Option<&'a str>,
}

/// A request whose signature was checked. Only [`Validator::verify`] makes one, so every typed
/// payload (built from it) is known to come from Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRequest {
    url: String,
    params: FormParams,
    json_body: Option<String>,
    key: KeyUsed,
    by_account: bool,
}

impl VerifiedRequest {
    /// The URL that was signed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Form parameters (POST body, or the query string of a GET).
    pub fn params(&self) -> &FormParams {
        &self.params
    }

    /// The raw JSON body of a JSON webhook, its hash already checked.
    pub fn json_body(&self) -> Option<&str> {
        self.json_body.as_deref()
    }

    /// The secret that accepted the request.
    pub fn key_used(&self) -> &KeyUsed {
        &self.key
    }

    /// Whether the tokens of the request's own `AccountSid` entry verified it (false: the
    /// default token, or a shared key).
    pub fn by_account(&self) -> bool {
        self.by_account
    }
}

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// A secret with its HMAC key schedule computed once, so each check only hashes the message.
#[derive(Clone)]
enum Keyed {
    Sha1(HmacSha1),
    Sha256(HmacSha256),
}

impl Keyed {
    fn new(alg: Algorithm, secret: &AuthToken) -> Self {
        let key = secret.expose().as_bytes();
        match alg {
            Algorithm::HmacSha1 => {
                Self::Sha1(HmacSha1::new_from_slice(key).expect("HMAC takes keys of any length"))
            }
            Algorithm::HmacSha256 => Self::Sha256(
                HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"),
            ),
        }
    }

    /// Constant-time check of `expected` against the HMAC of the signed string.
    /// `url` comes in pieces (a port variant is hashed from slices, never built as a string).
    fn verify(&self, url: &UrlPieces<'_>, tail: &SignedTail<'_>, expected: &[u8]) -> bool {
        match self {
            Self::Sha1(m) => {
                let mut m = m.clone();
                url.iter().for_each(|p| m.update(p.as_bytes()));
                tail.for_each(|p| m.update(p));
                m.verify_slice(expected).is_ok()
            }
            Self::Sha256(m) => {
                let mut m = m.clone();
                url.iter().for_each(|p| m.update(p.as_bytes()));
                tail.for_each(|p| m.update(p));
                m.verify_slice(expected).is_ok()
            }
        }
    }

    fn sign(&self, url: &str, tail: &SignedTail<'_>) -> Vec<u8> {
        match self {
            Self::Sha1(m) => {
                let mut m = m.clone();
                m.update(url.as_bytes());
                tail.for_each(|p| m.update(p));
                m.finalize().into_bytes().to_vec()
            }
            Self::Sha256(m) => {
                let mut m = m.clone();
                m.update(url.as_bytes());
                tail.for_each(|p| m.update(p));
                m.finalize().into_bytes().to_vec()
            }
        }
    }
}

#[derive(Clone)]
struct Secret {
    used: KeyUsed,
    sha1: Keyed,
    sha256: Option<Keyed>,
}

/// Checks Twilio signatures against the account auth token (and the secondary token during
/// rotation), the tokens of other accounts by `AccountSid` and, when configured, Webhooks
/// SharedKeys.
#[derive(Clone)]
pub struct Validator {
    /// The default tokens (primary, then secondary): for a request without an `AccountSid`, or
    /// naming an account without an entry. Empty for [`Validator::accounts_only`].
    tokens: Vec<Secret>,
    /// Primary, then secondary, by `AccountSid`. A lookup borrows: nothing is copied per request.
    accounts: HashMap<Box<str>, Vec<Secret>>,
    shared_keys: Vec<Secret>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("tokens", &self.tokens.len())
            .field("accounts", &self.accounts.len())
            .field(
                "shared_keys",
                &self.shared_keys.iter().map(|s| &s.used).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Validator {
    /// A validator for the account's primary auth token.
    pub fn new(primary: AuthToken) -> Self {
        Self {
            tokens: vec![Secret {
                used: KeyUsed::Primary,
                sha1: Keyed::new(Algorithm::HmacSha1, &primary),
                sha256: None,
            }],
            accounts: HashMap::new(),
            shared_keys: Vec::new(),
        }
    }

    /// A validator with no default token: only requests naming an account added with
    /// [`Validator::with_account`] (or signed with a shared key) can pass.
    pub fn accounts_only() -> Self {
        Self {
            tokens: Vec::new(),
            accounts: HashMap::new(),
            shared_keys: Vec::new(),
        }
    }

    /// Check requests whose `AccountSid` is `account_sid` with this account's tokens (and
    /// only with them). Replaces an earlier entry for the same account.
    pub fn with_account(
        mut self,
        account_sid: impl Into<String>,
        primary: AuthToken,
        secondary: Option<AuthToken>,
    ) -> Self {
        let tokens = std::iter::once((KeyUsed::Primary, primary))
            .chain(secondary.map(|t| (KeyUsed::Secondary, t)))
            .map(|(used, t)| Secret {
                used,
                sha1: Keyed::new(Algorithm::HmacSha1, &t),
                sha256: None,
            })
            .collect();
        self.accounts
            .insert(account_sid.into().into_boxed_str(), tokens);
        self
    }

    /// Whether requests without an entry of their own are checked with a default token.
    pub fn has_default(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// How many accounts have tokens of their own.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Also accept the secondary auth token (while rotating tokens in the Twilio console).
    pub fn with_secondary(mut self, secondary: Option<AuthToken>) -> Self {
        if let Some(t) = secondary {
            self.tokens.push(Secret {
                used: KeyUsed::Secondary,
                sha1: Keyed::new(Algorithm::HmacSha1, &t),
                sha256: None,
            });
        }
        self
    }

    /// Accept requests signed with this Webhooks SharedKey (`key=<id>` in the settings header).
    /// Add the old and the new key while rotating.
    pub fn with_shared_key(mut self, id: impl Into<String>, secret: AuthToken) -> Self {
        self.shared_keys.push(Secret {
            used: KeyUsed::SharedKey(id.into()),
            sha1: Keyed::new(Algorithm::HmacSha1, &secret),
            sha256: Some(Keyed::new(Algorithm::HmacSha256, &secret)),
        });
        self
    }

    /// Verify a request; on success the parsed parameters come back inside a [`VerifiedRequest`].
    pub fn verify(&self, req: &SignedRequest<'_>) -> Result<VerifiedRequest, SignatureError> {
        let body = Body::classify(req)?;
        let signature = present(req.signature)?;
        let url = strip_fragment(req.url);

        // Only form POST parameters are appended; GET and JSON sign the URL alone.
        let (params, json_body, signs_params) = match body {
            Body::None => (query_params(url), None, false),
            Body::Form(p) => (p, None, true),
            Body::Json(raw) => {
                check_body_hash(url, raw)?;
                let text = std::str::from_utf8(raw)
                    .map_err(|e| FormError::InvalidUtf8(e.valid_up_to()))?;
                (FormParams::default(), Some(text.to_owned()), false)
            }
        };
        // The claimed account picks the tokens; the HMAC then proves the claim. The JSON
        // body's field is covered by bodySHA256, already checked above.
        let json_account;
        let account = if self.accounts.is_empty() {
            None
        } else if let Some(text) = &json_body {
            json_account = json_account_sid(text)?;
            json_account.as_deref()
        } else {
            form_account_sid(&params)?
        };
        let (key, by_account) = self.check(
            url,
            signs_params.then_some(&params),
            account,
            signature,
            req.signature_settings,
        )?;
        Ok(VerifiedRequest {
            url: url.to_owned(),
            params,
            json_body,
            key,
            by_account,
        })
    }

    /// Verify a form POST whose body was already parsed (by a web framework's form extractor,
    /// say). Same checks as [`Validator::verify`]; the parameters are signed as given.
    pub fn verify_form(
        &self,
        url: &str,
        params: FormParams,
        signature: Option<&str>,
        signature_settings: Option<&str>,
    ) -> Result<VerifiedRequest, SignatureError> {
        let url = strip_fragment(url);
        let signature = present(signature)?;
        let account = if self.accounts.is_empty() {
            None
        } else {
            form_account_sid(&params)?
        };
        let (key, by_account) =
            self.check(url, Some(&params), account, signature, signature_settings)?;
        Ok(VerifiedRequest {
            url: url.to_owned(),
            params,
            json_body: None,
            key,
            by_account,
        })
    }

    /// The tokens that may have signed a request claiming `account`: its own entry, else the
    /// default; never another account's.
    fn tokens_for(&self, account: Option<&str>) -> Result<(&[Secret], bool), SignatureError> {
        if let Some(tokens) = account.and_then(|sid| self.accounts.get(sid)) {
            return Ok((tokens, true));
        }
        if !self.tokens.is_empty() {
            return Ok((&self.tokens, false));
        }
        Err(match account {
            // Untrusted input: named in the error (and so in logs) only if it is a Sid.
            Some(sid) if is_account_sid(sid) => SignatureError::UnknownAccount(sid.to_owned()),
            Some(_) => SignatureError::UnknownAccount("(not an AccountSid)".to_owned()),
            None => SignatureError::MissingAccountSid,
        })
    }

    /// Which secret, if any, signed `url` (+ `params`) with `signature`, and whether it was
    /// one of `account`'s own tokens.
    fn check(
        &self,
        url: &str,
        params: Option<&FormParams>,
        account: Option<&str>,
        signature: &str,
        signature_settings: Option<&str>,
    ) -> Result<(KeyUsed, bool), SignatureError> {
        // A signature that is not even base64 of a plausible length cannot match anything.
        let mut expected = [0u8; 64];
        let expected = match BASE64.decode_slice(signature, &mut expected) {
            Ok(n) => &expected[..n],
            Err(_) => return Err(SignatureError::InvalidSignature),
        };

        let (secrets, alg, by_account): (&[Secret], Algorithm, bool) = match signature_settings {
            None => {
                let (tokens, by_account) = self.tokens_for(account)?;
                (tokens, Algorithm::HmacSha1, by_account)
            }
            Some(settings) => {
                let (id, alg) = parse_settings(settings)?;
                if self.shared_keys.is_empty() {
                    return Err(SignatureError::SharedKeysNotConfigured);
                }
                let secret = self
                    .shared_keys
                    .iter()
                    .find(|s| matches!(&s.used, KeyUsed::SharedKey(k) if k == id))
                    .ok_or_else(|| SignatureError::UnknownSharedKey(id.to_owned()))?;
                (std::slice::from_ref(secret), alg, false)
            }
        };

        let tail = SignedTail::new(params);
        let matches = |candidate: &UrlPieces<'_>| {
            secrets.iter().find(|secret| {
                let keyed = match alg {
                    Algorithm::HmacSha1 => &secret.sha1,
                    Algorithm::HmacSha256 => secret.sha256.as_ref().unwrap_or(&secret.sha1),
                };
                keyed.verify(candidate, &tail, expected)
            })
        };
        // The URL as given matches almost always: build the port/credential variants only
        // when it does not.
        matches(&[url, "", "", "", ""])
            .or_else(|| {
                let (variants, n) = url_variants(url);
                variants[..n].iter().find_map(matches)
            })
            .map(|secret| (secret.used.clone(), by_account))
            .ok_or(SignatureError::InvalidSignature)
    }
}

/// `AC` and 32 lowercase hexadecimal characters, as Twilio writes every AccountSid.
pub fn is_account_sid(s: &str) -> bool {
    s.len() == 34
        && s.starts_with("AC")
        && s.bytes()
            .skip(2)
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `AccountSid` form (or GET query) parameter; the same value repeated counts once.
fn form_account_sid(params: &FormParams) -> Result<Option<&str>, SignatureError> {
    let mut values = params.get_all("AccountSid");
    let first = values.next();
    match first {
        Some(first) if values.any(|v| v != first) => Err(SignatureError::AmbiguousAccountSid),
        _ => Ok(first),
    }
}

/// The top-level `AccountSid` string of a JSON body; none if the body is not a JSON object.
fn json_account_sid(body: &str) -> Result<Option<String>, SignatureError> {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut o)) => match o.remove("AccountSid") {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(SignatureError::AmbiguousAccountSid),
        },
        _ => Ok(None),
    }
}

fn present(signature: Option<&str>) -> Result<&str, SignatureError> {
    signature
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(SignatureError::MissingSignature)
}

enum Body<'a> {
    None,
    Form(FormParams),
    Json(&'a [u8]),
}

impl<'a> Body<'a> {
    fn classify(req: &SignedRequest<'a>) -> Result<Self, SignatureError> {
        let media_type = req
            .content_type
            .map(|ct| ct.split(';').next().unwrap_or("").trim());
        let is = |m: &str| media_type.is_some_and(|t| t.eq_ignore_ascii_case(m));
        if req.method.eq_ignore_ascii_case("GET") || req.method.eq_ignore_ascii_case("HEAD") {
            return Ok(Self::None);
        }
        if !req.method.eq_ignore_ascii_case("POST") {
            return Err(SignatureError::UnsupportedMethod(req.method.to_owned()));
        }
        if is("application/x-www-form-urlencoded") {
            Ok(Self::Form(FormParams::parse(req.body)?))
        } else if is("application/json") {
            Ok(Self::Json(req.body))
        } else if media_type.is_none_or(str::is_empty) && req.body.is_empty() {
            Ok(Self::Form(FormParams::default()))
        } else {
            Err(SignatureError::UnsupportedContentType(
                media_type.unwrap_or("").to_owned(),
            ))
        }
    }
}

fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(u, _)| u)
}

fn query_of(url: &str) -> &str {
    url.split_once('?').map_or("", |(_, q)| q)
}

/// Parameters of a GET webhook, leniently (the signature covers the raw URL anyway).
fn query_params(url: &str) -> FormParams {
    FormParams::from_pairs(form_urlencoded::parse(query_of(url).as_bytes()))
}

fn check_body_hash(url: &str, body: &[u8]) -> Result<(), SignatureError> {
    let claimed = form_urlencoded::parse(query_of(url).as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
        .ok_or(SignatureError::MissingBodyHash)?;
    // The hash is public (it is in the URL), so an ordinary comparison is fine here.
    if hex::encode(Sha256::digest(body)) == claimed {
        Ok(())
    } else {
        Err(SignatureError::BodyHashMismatch)
    }
}

/// `key=<id>,algorithm=<alg>`; a missing algorithm means HMAC-SHA1 (as in twilio-python).
fn parse_settings(header: &str) -> Result<(&str, Algorithm), SignatureError> {
    let mut key = None;
    let mut alg = Algorithm::HmacSha1;
    for part in header.split(',') {
        let Some((name, value)) = part.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match name.trim() {
            "key" if !value.is_empty() => key = Some(value),
            "algorithm" if !value.is_empty() => {
                alg = Algorithm::from_header_value(value)
                    .ok_or_else(|| SignatureError::UnsupportedAlgorithm(value.to_owned()))?;
            }
            _ => {}
        }
    }
    Ok((key.ok_or(SignatureError::MalformedSettings)?, alg))
}

/// The parameter part of the signed string, in signing order: keys by bytes, a repeated key's
/// values sorted and de-duplicated (sorting whole pairs and skipping equal ones gives exactly
/// that). Hashed straight from the parsed buffer, never copied into one string.
struct SignedTail<'a> {
    params: Option<&'a FormParams>,
    /// Parameter indexes in signing order.
    order: Order,
}

/// Up to this many parameter indexes are kept inline: a Twilio webhook has 10 to 30, and the
/// check then allocates nothing for the order.
const INLINE: usize = 32;

// Lives on the stack for one check; the inline variant is the point.
#[allow(clippy::large_enum_variant)]
enum Order {
    Inline([u64; INLINE], usize),
    Heap(Vec<u64>),
}

impl Order {
    fn as_slice(&self) -> &[u64] {
        match self {
            Self::Inline(a, n) => &a[..*n],
            Self::Heap(v) => v,
        }
    }
}

impl<'a> SignedTail<'a> {
    fn new(params: Option<&'a FormParams>) -> Self {
        let Some(p) = params else {
            return Self {
                params,
                order: Order::Inline([0; INLINE], 0),
            };
        };
        let full = |a: &u64, b: &u64| {
            let (a, b) = (p.raw_pair(*a as usize), p.raw_pair(*b as usize));
            a.0.cmp(b.0).then_with(|| a.1.cmp(b.1))
        };
        // Sort plain integers (the standard library sorts those without branches): the first 7
        // key bytes, zero-padded and big-endian, above the index. Zero padding keeps the order
        // exact (a prefix sorts first); keys that tie on 7 bytes, or contain a zero byte, are
        // then put in order by their bytes.
        let packed = |i: usize| {
            let key = p.raw_pair(i).0;
            let head = (0..7).fold(0, |h, j| h << 8 | u64::from(*key.get(j).unwrap_or(&0)));
            head << 8 | i as u64
        };
        let sort_packed = |packed: &mut [u64]| {
            packed.sort_unstable();
            let mut group = 0;
            for i in 1..=packed.len() {
                if i == packed.len() || packed[i] >> 8 != packed[group] >> 8 {
                    let tie = &mut packed[group..i];
                    if tie.len() > 1 {
                        tie.iter_mut().for_each(|x| *x &= 0xff);
                        tie.sort_unstable_by(full);
                    }
                    group = i;
                }
            }
            packed.iter_mut().for_each(|x| *x &= 0xff);
        };
        let n = p.len();
        let order = if n <= INLINE {
            let mut a = [0; INLINE];
            a[..n]
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = packed(i));
            sort_packed(&mut a[..n]);
            Order::Inline(a, n)
        } else if n <= usize::from(u8::MAX) {
            let mut v: Vec<u64> = (0..n).map(packed).collect();
            sort_packed(&mut v);
            Order::Heap(v)
        } else {
            let mut v: Vec<u64> = (0..n as u64).collect();
            v.sort_unstable_by(full);
            Order::Heap(v)
        };
        Self { params, order }
    }

    fn for_each(&self, mut f: impl FnMut(&[u8])) {
        let Some(p) = self.params else { return };
        let mut last: Option<(&[u8], &[u8])> = None;
        for &i in self.order.as_slice() {
            let (key, pair) = p.raw_pair(i as usize);
            // A repeated identical pair is signed once: same key length and the same bytes.
            if last.is_some_and(|(k, kv)| kv == pair && k.len() == key.len()) {
                continue;
            }
            f(pair);
            last = Some((key, pair));
        }
    }
}

/// A URL to sign, as pieces hashed one after another.
type UrlPieces<'a> = [&'a str; 5];

/// The URLs to try after the one given: with the port removed (if it has one) or the scheme's
/// default port added (if not). When the URL carries `user:pass@`, the given one and that one
/// without the credentials too: Twilio's docs say credentials are not signed, its libraries'
/// test vectors sign them. Only built on a miss (an invalid signature, or a proxy's port).
fn url_variants(url: &str) -> ([UrlPieces<'_>; 3], usize) {
    let mut out = [[""; 5]; 3];
    let Some((scheme, rest)) = url.split_once("://") else {
        return (out, 0);
    };
    let scheme_sep = &url[..scheme.len() + 3];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    // A port follows the last ':' unless that colon is inside an IPv6 literal.
    let port_colon = hostport
        .rfind(':')
        .filter(|i| !hostport[*i..].contains(']'));
    let (alt_host, alt_port) = match port_colon {
        Some(i) => (&hostport[..i], ""),
        None if scheme.eq_ignore_ascii_case("https") => (hostport, ":443"),
        None => (hostport, ":80"),
    };
    out[0] = [scheme_sep, userinfo, alt_host, alt_port, path];
    if userinfo.is_empty() {
        return (out, 1);
    }
    out[1] = [scheme_sep, hostport, path, "", ""];
    out[2] = [scheme_sep, alt_host, alt_port, path, ""];
    (out, 3)
}

/// Sign a form webhook with the auth token, HMAC-SHA1: the `X-Twilio-Signature` Twilio would send.
pub fn sign(token: &AuthToken, url: &str, params: &FormParams) -> String {
    sign_with(Algorithm::HmacSha1, token, url, params)
}

/// Sign with an explicit algorithm (SharedKey signatures).
pub fn sign_with(alg: Algorithm, secret: &AuthToken, url: &str, params: &FormParams) -> String {
    let keyed = Keyed::new(alg, secret);
    BASE64.encode(keyed.sign(strip_fragment(url), &SignedTail::new(Some(params))))
}

/// For a JSON webhook: the URL with `bodySHA256` appended, and its signature.
/// The hash goes at the end of the query string, before any fragment (`#rc=...`), which is
/// not signed.
pub fn sign_json(token: &AuthToken, url: &str, body: &[u8]) -> (String, String) {
    let hash = hex::encode(Sha256::digest(body));
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let signed = format!("{base}{sep}bodySHA256={hash}");
    let sig = sign(token, &signed, &FormParams::default());
    match fragment {
        Some(fragment) => (format!("{signed}#{fragment}"), sig),
        None => (signed, sig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> AuthToken {
        AuthToken::new(s).unwrap()
    }

    #[test]
    fn a_secret_is_never_blank_and_is_trimmed() {
        for blank in ["", " ", "\n", " \t\r\n "] {
            assert_eq!(AuthToken::new(blank), Err(BlankSecret), "{blank:?}");
            assert!(blank.parse::<AuthToken>().is_err());
        }
        assert_eq!(tok(" abc\n").expose(), "abc");
        assert_eq!(format!("{:?}", tok("abc")), "AuthToken(<redacted>)");
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn form_req<'a>(url: &'a str, body: &'a [u8], sig: Option<&'a str>) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            url,
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            body,
            signature: sig,
            signature_settings: None,
        }
    }

    fn params() -> FormParams {
        FormParams::from_pairs([
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    #[test]
    fn twilio_docs_example_signature() {
        // The example in Twilio's security docs and every helper library.
        assert_eq!(
            sign(&tok("12345"), URL, &params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn missing_header_is_distinguished_from_a_wrong_one() {
        let v = Validator::new(tok("12345"));
        let body = params().encode();
        assert_eq!(
            v.verify(&form_req(URL, body.as_bytes(), None)),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            v.verify(&form_req(
                URL,
                body.as_bytes(),
                Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            )),
            Err(SignatureError::InvalidSignature)
        );
    }

    #[test]
    fn verify_form_checks_already_parsed_params_like_verify() {
        let v = Validator::new(tok("12345"));
        let sig = sign(&tok("12345"), URL, &params());
        let ok = v.verify_form(URL, params(), Some(&sig), None).unwrap();
        assert_eq!(ok.params(), &params());
        assert_eq!(ok.key_used(), &KeyUsed::Primary);
        let mut other = params();
        other = FormParams::from_pairs(
            other
                .iter()
                .map(|(k, v)| (k, if k == "Digits" { "9" } else { v })),
        );
        assert_eq!(
            v.verify_form(URL, other, Some(&sig), None),
            Err(SignatureError::InvalidSignature)
        );
        assert_eq!(
            v.verify_form(URL, params(), None, None),
            Err(SignatureError::MissingSignature)
        );
    }

    #[test]
    fn debug_never_prints_the_token() {
        let t = AuthToken::new("supersecret-token").unwrap();
        let v = Validator::new(t.clone())
            .with_shared_key("key1", AuthToken::new("othersecret").unwrap());
        assert!(!format!("{t:?}{v:?}").contains("secret-token"));
        assert!(!format!("{v:?}").contains("othersecret"));
    }

    #[test]
    fn secondary_token_is_accepted_and_reported() {
        let v = Validator::new(tok("old")).with_secondary(Some(tok("new")));
        let body = params().encode();
        let sig = sign(&tok("new"), URL, &params());
        let ok = v
            .verify(&form_req(URL, body.as_bytes(), Some(&sig)))
            .unwrap();
        assert_eq!(ok.key_used(), &KeyUsed::Secondary);
        let sig = sign(&tok("other"), URL, &params());
        assert!(
            v.verify(&form_req(URL, body.as_bytes(), Some(&sig)))
                .is_err()
        );
    }

    #[test]
    fn shared_key_sha256_and_its_errors() {
        let secret = AuthToken::new("shared-secret").unwrap();
        let v = Validator::new(AuthToken::new("token").unwrap())
            .with_shared_key("wk_1", secret.clone());
        let body = params().encode();
        let sig = sign_with(Algorithm::HmacSha256, &secret, URL, &params());
        let mut req = form_req(URL, body.as_bytes(), Some(&sig));
        req.signature_settings = Some("key=wk_1,algorithm=HMAC_SHA256");
        assert_eq!(
            v.verify(&req).unwrap().key_used(),
            &KeyUsed::SharedKey("wk_1".into())
        );
        // The auth token must not validate a request that names a shared key.
        let token_sig = sign(&tok("token"), URL, &params());
        req.signature = Some(&token_sig);
        assert_eq!(v.verify(&req), Err(SignatureError::InvalidSignature));
        req.signature_settings = Some("key=wk_2,algorithm=HMAC_SHA256");
        assert_eq!(
            v.verify(&req),
            Err(SignatureError::UnknownSharedKey("wk_2".into()))
        );
        req.signature_settings = Some("key=wk_1,algorithm=HMAC_MD5");
        assert_eq!(
            v.verify(&req),
            Err(SignatureError::UnsupportedAlgorithm("HMAC_MD5".into()))
        );
        let plain = Validator::new(tok("token"));
        req.signature_settings = Some("key=wk_1,algorithm=HMAC_SHA256");
        let err = plain.verify(&req).unwrap_err();
        assert_eq!(err, SignatureError::SharedKeysNotConfigured);
        assert!(err.is_server_error());
    }

    #[test]
    fn json_body_needs_body_hash() {
        let v = Validator::new(tok("12345"));
        let body = br#"{"property": "value", "boolean": true}"#;
        let (url, sig) = sign_json(&tok("12345"), URL, body);
        let mut req = SignedRequest {
            method: "POST",
            url: &url,
            content_type: Some("application/json"),
            body,
            signature: Some(&sig),
            signature_settings: None,
        };
        assert_eq!(
            v.verify(&req).unwrap().json_body(),
            Some(std::str::from_utf8(body).unwrap())
        );
        req.body = br#"{"property": "other"}"#;
        assert_eq!(v.verify(&req), Err(SignatureError::BodyHashMismatch));
        let plain_sig = sign(&tok("12345"), URL, &FormParams::default());
        req.url = URL;
        req.signature = Some(&plain_sig);
        assert_eq!(v.verify(&req), Err(SignatureError::MissingBodyHash));
    }

    #[test]
    fn get_signs_the_url_only_and_exposes_query_params() {
        let v = Validator::new(tok("12345"));
        let url = "https://example.com/sms?MessageSid=SM1&Body=hi+there";
        let sig = sign(&tok("12345"), url, &FormParams::default());
        let req = SignedRequest {
            method: "GET",
            url,
            content_type: None,
            body: b"",
            signature: Some(&sig),
            signature_settings: None,
        };
        let ok = v.verify(&req).unwrap();
        assert_eq!(ok.params().get("Body"), Some("hi there"));
    }

    #[test]
    fn malformed_bodies_and_content_types_are_client_errors() {
        let v = Validator::new(tok("12345"));
        let err = v.verify(&form_req(URL, b"a=%zz", Some("x"))).unwrap_err();
        assert!(err.is_malformed(), "{err}");
        let mut req = form_req(URL, b"<xml/>", Some("x"));
        req.content_type = Some("text/xml");
        assert!(v.verify(&req).unwrap_err().is_malformed());
        req.method = "PUT";
        assert!(v.verify(&req).unwrap_err().is_malformed());
    }

    #[test]
    fn fragment_is_not_signed() {
        let v = Validator::new(tok("12345"));
        let body = params().encode();
        let sig = sign(&tok("12345"), URL, &params());
        let with_fragment = format!("{URL}#rc=2&rp=all");
        assert!(
            v.verify(&form_req(&with_fragment, body.as_bytes(), Some(&sig)))
                .is_ok()
        );
    }

    const AC_A: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const AC_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const AC_C: &str = "ACcccccccccccccccccccccccccccccccc";

    /// A validator with a default token and two accounts (B rotating: two tokens).
    fn accounts() -> Validator {
        Validator::new(tok("default"))
            .with_account(AC_A, tok("token-a"), None)
            .with_account(AC_B, tok("token-b"), Some(tok("token-b2")))
    }

    /// `params()` claiming `account` (if any), signed with `token`, through `v`.
    fn claim(
        v: &Validator,
        account: Option<&str>,
        token: &str,
    ) -> Result<VerifiedRequest, SignatureError> {
        let base = params();
        let mut pairs: Vec<(&str, &str)> = base.iter().collect();
        pairs.extend(account.map(|a| ("AccountSid", a)));
        let p = FormParams::from_pairs(pairs);
        let sig = sign(&tok(token), URL, &p);
        v.verify(&form_req(URL, p.encode().as_bytes(), Some(&sig)))
    }

    #[test]
    fn each_account_is_checked_with_its_own_tokens_only() {
        let v = accounts();
        let ok = claim(&v, Some(AC_A), "token-a").unwrap();
        assert!(ok.by_account());
        assert_eq!(ok.key_used(), &KeyUsed::Primary);
        let ok = claim(&v, Some(AC_B), "token-b2").unwrap();
        assert_eq!(
            (ok.key_used(), ok.by_account()),
            (&KeyUsed::Secondary, true)
        );
        // Signed by A (or by the default) but claiming B: B's tokens decide, and refuse.
        for token in ["token-a", "default"] {
            assert_eq!(
                claim(&v, Some(AC_B), token).unwrap_err(),
                SignatureError::InvalidSignature,
                "{token}"
            );
        }
        // An account without an entry, or no AccountSid at all: the default token, only.
        for account in [Some(AC_C), None] {
            let ok = claim(&v, account, "default").unwrap();
            assert!(!ok.by_account());
            for token in ["token-a", "token-b", "token-b2"] {
                assert_eq!(
                    claim(&v, account, token).unwrap_err(),
                    SignatureError::InvalidSignature,
                    "{account:?} {token}"
                );
            }
        }
    }

    #[test]
    fn without_a_default_an_unlisted_or_missing_account_is_refused() {
        let v = Validator::accounts_only().with_account(AC_A, tok("token-a"), None);
        assert!(!v.has_default());
        assert_eq!(v.account_count(), 1);
        assert!(claim(&v, Some(AC_A), "token-a").is_ok());
        let err = claim(&v, Some(AC_C), "token-a").unwrap_err();
        assert_eq!(err, SignatureError::UnknownAccount(AC_C.into()));
        // A refusal (403), not a malformed request or our own failure.
        assert!(!err.is_malformed() && !err.is_server_error());
        assert_eq!(
            claim(&v, None, "token-a").unwrap_err(),
            SignatureError::MissingAccountSid
        );
        // Whatever an attacker puts there is not repeated into logs unless it is a Sid.
        let err = claim(&v, Some("<script>+15551234567"), "token-a").unwrap_err();
        assert!(!err.to_string().contains("1555"), "{err}");
    }

    #[test]
    fn an_account_sid_given_twice_must_agree() {
        let v = accounts();
        let twice = |second: &str, token: &str| {
            let p = FormParams::from_pairs([
                ("AccountSid", AC_A),
                ("MessageSid", "SM1"),
                ("AccountSid", second),
            ]);
            let sig = sign(&tok(token), URL, &p);
            v.verify(&form_req(URL, p.encode().as_bytes(), Some(&sig)))
        };
        assert!(twice(AC_A, "token-a").unwrap().by_account());
        for token in ["token-a", "token-b", "default"] {
            assert_eq!(
                twice(AC_B, token).unwrap_err(),
                SignatureError::AmbiguousAccountSid
            );
        }
    }

    #[test]
    fn get_and_verify_form_pick_the_account_too() {
        let v = accounts();
        let url = format!("https://example.com/sms?MessageSid=SM1&AccountSid={AC_A}");
        let get = |token: &str| {
            let sig = sign(&tok(token), &url, &FormParams::default());
            v.verify(&SignedRequest {
                method: "GET",
                url: &url,
                content_type: None,
                body: b"",
                signature: Some(&sig),
                signature_settings: None,
            })
        };
        assert!(get("token-a").unwrap().by_account());
        assert_eq!(get("default"), Err(SignatureError::InvalidSignature));

        let p = FormParams::from_pairs([("AccountSid", AC_B), ("MessageSid", "SM1")]);
        let sig = sign(&tok("token-b"), URL, &p);
        assert!(v.verify_form(URL, p.clone(), Some(&sig), None).is_ok());
        let sig = sign(&tok("token-a"), URL, &p);
        assert_eq!(
            v.verify_form(URL, p, Some(&sig), None),
            Err(SignatureError::InvalidSignature)
        );
    }

    #[test]
    fn a_json_body_names_its_account_in_its_accountsid_field() {
        let v = accounts();
        let json = |body: &str, token: &str| {
            let (url, sig) = sign_json(&tok(token), URL, body.as_bytes());
            v.verify(&SignedRequest {
                method: "POST",
                url: &url,
                content_type: Some("application/json"),
                body: body.as_bytes(),
                signature: Some(&sig),
                signature_settings: None,
            })
        };
        let body_a = format!(r#"{{"AccountSid":"{AC_A}","x":1}}"#);
        assert!(json(&body_a, "token-a").unwrap().by_account());
        assert_eq!(
            json(&body_a, "default"),
            Err(SignatureError::InvalidSignature)
        );
        let body_b = format!(r#"{{"AccountSid":"{AC_B}"}}"#);
        assert_eq!(
            json(&body_b, "token-a"),
            Err(SignatureError::InvalidSignature)
        );
        // No top-level field (nested, an array, not JSON): the default token.
        for body in [r#"{"data":{"AccountSid":"ACx"}}"#, "[1,2]", "not json"] {
            assert!(!json(body, "default").unwrap().by_account(), "{body}");
            assert_eq!(json(body, "token-a"), Err(SignatureError::InvalidSignature));
        }
        assert_eq!(
            json(r#"{"AccountSid":["ACx"]}"#, "default"),
            Err(SignatureError::AmbiguousAccountSid)
        );
    }

    #[test]
    fn shared_keys_do_not_depend_on_the_account() {
        let secret = tok("shared-secret");
        let v = Validator::accounts_only()
            .with_account(AC_A, tok("token-a"), None)
            .with_shared_key("wk_1", secret.clone());
        let p = FormParams::from_pairs([("AccountSid", AC_C), ("MessageSid", "SM1")]);
        let sig = sign_with(Algorithm::HmacSha256, &secret, URL, &p);
        let body = p.encode();
        let mut req = form_req(URL, body.as_bytes(), Some(&sig));
        req.signature_settings = Some("key=wk_1,algorithm=HMAC_SHA256");
        let ok = v.verify(&req).unwrap();
        assert_eq!(ok.key_used(), &KeyUsed::SharedKey("wk_1".into()));
        assert!(!ok.by_account());
    }

    #[test]
    fn account_sid_shape() {
        assert!(is_account_sid(AC_A));
        assert!(is_account_sid("AC0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "AC",
            "AC0123456789ABCDEF0123456789abcdef",
            "AC0123456789abcdef0123456789abcde",
            "AC0123456789abcdef0123456789abcdef0",
            "SM0123456789abcdef0123456789abcdef",
            "ac0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_account_sid(bad), "{bad}");
        }
    }

    /// The URL, then its variants, each joined into one string.
    fn url_candidates(url: &str) -> Vec<String> {
        let (variants, n) = url_variants(url);
        std::iter::once(url.to_owned())
            .chain(variants[..n].iter().map(|p| p.concat()))
            .collect()
    }

    #[test]
    fn candidates_handle_ports_userinfo_and_ipv6() {
        assert_eq!(
            url_candidates("https://h.com/p?q=1"),
            ["https://h.com/p?q=1", "https://h.com:443/p?q=1"]
        );
        assert_eq!(
            url_candidates("http://h.com:8080/p"),
            ["http://h.com:8080/p", "http://h.com/p"]
        );
        assert_eq!(
            url_candidates("http://[::1]/p"),
            ["http://[::1]/p", "http://[::1]:80/p"]
        );
        assert_eq!(
            url_candidates("http://[::1]:3000"),
            ["http://[::1]:3000", "http://[::1]"]
        );
        assert_eq!(
            url_candidates("https://u:p@h.com/x"),
            [
                "https://u:p@h.com/x",
                "https://u:p@h.com:443/x",
                "https://h.com/x",
                "https://h.com:443/x"
            ]
        );
    }
}
