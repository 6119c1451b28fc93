//! Settings read once at cold start from the environment (names documented in the README).

use std::collections::BTreeMap;
use std::time::Duration;

use twilio_webhook::basic::BasicAuth;
use twilio_webhook::signature::is_account_sid;
use twilio_webhook::{AuthToken, Validator};

/// How long a record (and so dedup) lives, in seconds (default 7 days, from an hour to a year).
pub const EVENT_TTL_SECONDS: &str = "EVENT_TTL_SECONDS";
/// How long an attempt owns a new record before another copy may redo it (default 30).
pub const LOCK_SECONDS: &str = "LOCK_SECONDS";
/// The SMS auto-reply text (none when unset; never sent to STOP/START/HELP).
pub const SMS_AUTO_REPLY: &str = "SMS_AUTO_REPLY";
/// Said first on every call.
pub const VOICE_GREETING: &str = "VOICE_GREETING";
/// Forward calls to this number; unset: voicemail.
pub const VOICE_FORWARD_TO: &str = "VOICE_FORWARD_TO";
/// Where voicemail recording callbacks go (default: the request URL with `/voice` replaced by
/// `/status`).
pub const STATUS_CALLBACK_URL: &str = "STATUS_CALLBACK_URL";
/// Said by the fallback before hanging up when the primary voice URL failed.
pub const FALLBACK_VOICE_MESSAGE: &str = "FALLBACK_VOICE_MESSAGE";
/// The worker POSTs each processed event's normalized JSON here (the default slow work).
pub const FORWARD_URL: &str = "FORWARD_URL";
/// `true` lets personal data into logs (the query values of a refused request's URL).
pub const LOG_PII: &str = "LOG_PII";
/// `QUEUE_FIRST=true`: the queue holds every accepted event, the record is only the reply
/// cache and the state record the processed mark (see [`queue_first`]).
pub const QUEUE_FIRST: &str = "QUEUE_FIRST";
/// How long a worker owns a record it processes (default 60; must cover one record).
pub const WORKER_LEASE_SECONDS: &str = "WORKER_LEASE_SECONDS";
/// How long after its lock ends an unprocessed record waits for the sweeper (default 120).
pub const SWEEP_GRACE_SECONDS: &str = "SWEEP_GRACE_SECONDS";
/// The CloudWatch namespace of the EMF metrics (default `TwilioWebhooks`).
pub const METRICS_NAMESPACE: &str = "METRICS_NAMESPACE";

/// A missing or invalid setting: the function refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault (for a bad secret, the one that names it).
    pub name: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Dedup timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a record (and so dedup) lives. Twilio retries within minutes; a week also
    /// covers a DLQ redrive.
    pub event_ttl: Duration,
    /// How long an attempt owns a new record before another copy may redo it; longer than the
    /// function timeout so a slow-but-alive attempt is never doubled.
    pub lock: Duration,
}

/// The project's public test token: the sample events and `serve`'s default are signed with
/// it, so anyone can sign with it. Lambda refuses it; `serve` accepts it on loopback only.
pub const TEST_AUTH_TOKEN: &str = "12345678901234567890123456789012";

/// How long records and dedup keys live by default (`EVENT_TTL_SECONDS`): 7 days, longer than
/// Twilio's retries and a DLQ redrive.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Settings {
    fn default() -> Self {
        Self {
            event_ttl: DEFAULT_EVENT_TTL,
            lock: Duration::from_secs(30),
        }
    }
}

/// Longest `EVENT_TTL_SECONDS`: a year. Larger values would overflow the millisecond
/// arithmetic of the claim conditions (a wrapped, negative expiry turns deduplication off).
pub const MAX_EVENT_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// Shortest `EVENT_TTL_SECONDS`: an hour. Dedup must outlive Twilio's retries, every lock and
/// lease, and the sweeper's re-sends; an expired record no longer protects its event.
pub const MIN_EVENT_TTL_SECONDS: u64 = 3600;
/// Longest `LOCK_SECONDS`: a day (a Lambda invocation lasts at most 15 minutes).
pub const MAX_LOCK_SECONDS: u64 = 24 * 3600;

impl Settings {
    /// From `EVENT_TTL_SECONDS` and `LOCK_SECONDS`, defaults when unset; the lock must be
    /// shorter than the TTL.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let settings = Self {
            event_ttl: secs(
                EVENT_TTL_SECONDS,
                d.event_ttl,
                MIN_EVENT_TTL_SECONDS..=MAX_EVENT_TTL_SECONDS,
            )?,
            lock: secs(LOCK_SECONDS, d.lock, 1..=MAX_LOCK_SECONDS)?,
        };
        if settings.lock >= settings.event_ttl {
            return Err(ConfigError {
                name: LOCK_SECONDS,
                reason: format!(
                    "must be shorter than {EVENT_TTL_SECONDS} ({} s): a record must outlive its lock",
                    settings.event_ttl.as_secs()
                ),
            });
        }
        Ok(settings)
    }
}

/// `name` as a whole number of seconds in `range`; `default` when unset.
pub fn secs(
    name: &'static str,
    default: Duration,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .map(Duration::from_secs)
            .ok_or_else(|| ConfigError {
                name,
                reason: format!(
                    "expected a whole number of seconds from {} to {}, got {v:?}",
                    range.start(),
                    range.end()
                ),
            }),
    }
}

/// What the auth secret holds: the signature validator and, optionally, the HTTP Basic
/// credentials Twilio must send.
#[derive(Debug)]
pub struct Secret {
    /// Verifies `X-Twilio-Signature` with every key of the secret.
    pub validator: Validator,
    /// The HTTP Basic credentials Twilio must send, if the secret has them.
    pub basic_auth: Option<BasicAuth>,
    /// Every key the validator holds (to refuse a publicly known one where it matters).
    pub keys: Vec<AuthToken>,
    /// The primary token of each account entry (`accounts`), by AccountSid.
    pub account_tokens: BTreeMap<String, AuthToken>,
    /// The top-level `auth_token`, for requests of other accounts; none with `accounts` alone.
    pub default_token: Option<AuthToken>,
}

impl Secret {
    /// One auth token, nothing else.
    pub fn from_token(token: AuthToken) -> Self {
        Self {
            validator: Validator::new(token.clone()),
            basic_auth: None,
            keys: vec![token.clone()],
            account_tokens: BTreeMap::new(),
            default_token: Some(token),
        }
    }

    /// The token Twilio signs a webhook of `account_sid` with, as the validator picks it:
    /// the account's own entry, else the default.
    pub fn token_for(&self, account_sid: &str) -> Option<&AuthToken> {
        self.account_tokens
            .get(account_sid)
            .or(self.default_token.as_ref())
    }

    /// A bare auth token, or JSON:
    /// `{"auth_token": ..., "secondary_auth_token": ..., "accounts": {"AC...": {"auth_token":
    /// ..., "secondary_auth_token": ...}}, "shared_keys": {"<key id>": "<secret>"},
    /// "basic_auth": {"username": ..., "password": ...}}`, with `auth_token`, `accounts` or
    /// both. Every value is trimmed, and a blank one is an error naming `name` (an empty HMAC
    /// key is one anyone can sign with).
    pub fn parse(secret: &str, name: &'static str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError { name, reason };
        let key = |field: &str, value: &str| {
            AuthToken::new(value)
                .map_err(|_| bad(format!("{field} in the secret is empty or blank")))
        };
        // An account auth token is 32 hex characters: anything else is a placeholder left in
        // (`<your auth token>`) or a paste gone wrong.
        let token = |field: &str, value: &str| {
            let t = key(field, value)?;
            if t.expose().len() != 32 || !t.expose().bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "{field} in the secret is not an auth token (32 hexadecimal characters)"
                )));
            }
            Ok(t)
        };
        let secret = secret.trim();
        if !secret.starts_with('{') {
            return Ok(Self::from_token(token("the token", secret)?));
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Json {
            auth_token: Option<String>,
            secondary_auth_token: Option<String>,
            /// Tokens by AccountSid (subaccounts, ISVs).
            #[serde(default)]
            accounts: BTreeMap<String, Account>,
            /// Webhooks SharedKeys by key id (`X-Twilio-Webhooks-Signature-Settings: key=<id>`).
            #[serde(default)]
            shared_keys: BTreeMap<String, String>,
            basic_auth: Option<Basic>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Account {
            auth_token: String,
            secondary_auth_token: Option<String>,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Basic {
            username: String,
            password: String,
        }
        // Never `{e}`: serde quotes the offending value, which may be a secret. Unknown
        // fields are named (a misspelt one would silently turn a protection off).
        const EXPECTED: &str = "expected \"auth_token\" or \"accounts\": {AccountSid: {\"auth_token\", \"secondary_auth_token\"}} or both; optional: \"secondary_auth_token\", \"shared_keys\": {id: secret}, \"basic_auth\": {\"username\", \"password\"}";
        let value: serde_json::Value = serde_json::from_str(secret).map_err(|e| {
            bad(format!(
                "the JSON secret does not parse ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let known = [
            "auth_token",
            "secondary_auth_token",
            "accounts",
            "shared_keys",
            "basic_auth",
        ];
        if let Some(obj) = value.as_object() {
            if let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(bad(format!(
                    "unknown field {unknown:?} in the JSON secret ({EXPECTED})"
                )));
            }
            let unknown_in = |field: &str, allowed: &[&str]| {
                obj.get(field)
                    .and_then(|b| b.as_object())
                    .and_then(|b| b.keys().find(|k| !allowed.contains(&k.as_str())).cloned())
            };
            if let Some(unknown) = unknown_in("basic_auth", &["username", "password"]) {
                return Err(bad(format!("unknown field {unknown:?} in \"basic_auth\"")));
            }
            for (sid, entry) in obj
                .get("accounts")
                .and_then(|a| a.as_object())
                .into_iter()
                .flatten()
            {
                let allowed = ["auth_token", "secondary_auth_token"];
                if let Some(unknown) = entry
                    .as_object()
                    .and_then(|e| e.keys().find(|k| !allowed.contains(&k.as_str())))
                {
                    // The key is named only once known to be a Sid (not a pasted token).
                    let at = if is_account_sid(sid.trim()) {
                        format!("\"accounts\".{:?}", sid.trim())
                    } else {
                        "an entry of \"accounts\"".to_owned()
                    };
                    return Err(bad(format!(
                        "unknown field {unknown:?} in {at} (expected \"auth_token\" and optionally \"secondary_auth_token\")"
                    )));
                }
            }
        }
        let t: Json = serde_json::from_value(value).map_err(|e| {
            bad(format!("the JSON secret has a field of the wrong type or a missing field ({EXPECTED}; {:?} error)", e.classify()))
        })?;
        let mut keys = Vec::new();
        let default_token = t
            .auth_token
            .map(|s| token("\"auth_token\"", &s))
            .transpose()?;
        let secondary = t
            .secondary_auth_token
            .map(|s| token("\"secondary_auth_token\"", &s))
            .transpose()?;
        let mut validator = match &default_token {
            Some(primary) => Validator::new(primary.clone()).with_secondary(secondary.clone()),
            None if secondary.is_some() => {
                return Err(bad(
                    "\"secondary_auth_token\" without \"auth_token\" in the secret".into(),
                ));
            }
            None if t.accounts.is_empty() => {
                return Err(bad(format!("the JSON secret holds no token ({EXPECTED})")));
            }
            None => Validator::accounts_only(),
        };
        keys.extend(default_token.iter().chain(&secondary).cloned());
        let mut account_tokens = BTreeMap::new();
        for (sid, account) in t.accounts {
            let sid = sid.trim();
            if !is_account_sid(sid) {
                // Not quoted: a token pasted in the wrong place must not reach the logs.
                return Err(bad(
                    "a key of \"accounts\" is not an AccountSid (AC followed by 32 lowercase hexadecimal characters)".into(),
                ));
            }
            if account_tokens.contains_key(sid) {
                return Err(bad(format!("\"accounts\" lists {sid} twice")));
            }
            let primary = token(
                &format!("\"accounts\".{sid:?}.\"auth_token\""),
                &account.auth_token,
            )?;
            let secondary = account
                .secondary_auth_token
                .map(|s| {
                    token(
                        &format!("\"accounts\".{sid:?}.\"secondary_auth_token\""),
                        &s,
                    )
                })
                .transpose()?;
            keys.extend(std::iter::once(&primary).chain(&secondary).cloned());
            validator = validator.with_account(sid, primary.clone(), secondary);
            account_tokens.insert(sid.to_owned(), primary);
        }
        for (id, secret) in t.shared_keys {
            if id.trim().is_empty() {
                return Err(bad("a \"shared_keys\" id is empty or blank".into()));
            }
            let shared = key(&format!("\"shared_keys\".{id:?}"), &secret)?;
            keys.push(shared.clone());
            validator = validator.with_shared_key(id.trim(), shared);
        }
        let basic_auth = t
            .basic_auth
            .map(|b| BasicAuth::new(&b.username, &b.password))
            .transpose()
            .map_err(|e| bad(format!("\"basic_auth\": {e}")))?;
        Ok(Self {
            validator,
            basic_auth,
            keys,
            account_tokens,
            default_token,
        })
    }
}

/// A non-empty environment variable (an empty one counts as unset: SAM passes "" for blanks).
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `LOG_PII=true` lets phone numbers and bodies into logs (off by default).
pub fn log_pii() -> bool {
    var(LOG_PII).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// `QUEUE_FIRST` (`true`/`false`, default `false`): the webhooks send every copy's job while
/// they write its record, and the worker folds without a lease or a processed mark. Only
/// without slow work (`FORWARD_URL`): the template sets it from the same condition. Anything
/// else than a boolean is refused, so a typo cannot pick a mode.
pub fn queue_first() -> Result<bool, ConfigError> {
    queue_first_from(var(QUEUE_FIRST).as_deref())
}

fn queue_first_from(value: Option<&str>) -> Result<bool, ConfigError> {
    match value.map(str::trim) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ConfigError {
            name: QUEUE_FIRST,
            reason: format!("expected true or false, got {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_first_is_a_strict_boolean_off_by_default() {
        assert!(!queue_first_from(None).unwrap());
        assert!(!queue_first_from(Some("false")).unwrap());
        assert!(queue_first_from(Some(" true")).unwrap());
        assert!(queue_first_from(Some("1")).unwrap());
        for typo in ["yes", "ture", "on"] {
            assert_eq!(queue_first_from(Some(typo)).unwrap_err().name, QUEUE_FIRST);
        }
    }

    /// Settings read from a map instead of the process environment (tests run in parallel).
    fn with_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: serialized by LOCK; no other test in this crate reads these variables.
        unsafe {
            std::env::remove_var(EVENT_TTL_SECONDS);
            std::env::remove_var(LOCK_SECONDS);
            for (k, v) in pairs {
                std::env::set_var(k, v);
            }
        }
        let out = Settings::from_env();
        unsafe {
            std::env::remove_var(EVENT_TTL_SECONDS);
            std::env::remove_var(LOCK_SECONDS);
        }
        out
    }

    /// Out-of-range values wrapped negative in the i64 arithmetic, and every record was
    /// then already expired: deduplication silently off. They must be refused.
    #[test]
    fn out_of_range_timing_is_refused() {
        for (name, value) in [
            (EVENT_TTL_SECONDS, "18446744073709551615"),
            (EVENT_TTL_SECONDS, "9223372036854775807"),
            (EVENT_TTL_SECONDS, "31536001"),
            (EVENT_TTL_SECONDS, "2"),
            (EVENT_TTL_SECONDS, "3599"),
            (EVENT_TTL_SECONDS, "0"),
            (EVENT_TTL_SECONDS, "-1"),
            (EVENT_TTL_SECONDS, "1e9"),
            (LOCK_SECONDS, "9223372036854775807"),
            (LOCK_SECONDS, "86401"),
            (LOCK_SECONDS, "0"),
            (LOCK_SECONDS, "thirty"),
        ] {
            let err = with_env(&[(name, value)]).expect_err(value);
            assert_eq!(err.name, name, "{value}");
        }
        // A lock as long as the record's life would let a record expire while locked.
        let err = with_env(&[(EVENT_TTL_SECONDS, "3600"), (LOCK_SECONDS, "3600")]).unwrap_err();
        assert_eq!(err.name, LOCK_SECONDS);
    }

    #[test]
    fn basic_auth_in_the_secret() {
        let s = Secret::parse(
            r#"{"auth_token":"0123456789abcdef0123456789ABCDEF","basic_auth":{"username":"u","password":" p "}}"#,
            "S",
        )
        .unwrap();
        let basic = s.basic_auth.unwrap();
        assert_eq!((basic.username(), basic.expose_password()), ("u", " p "));
        for bad in [
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basic_auth":{"username":"","password":"p"}}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basic_auth":{"username":"u","password":" "}}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basic_auth":{"username":"u:x","password":"p"}}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basic_auth":{"username":"u"}}"#,
            // A misspelt field would silently turn a protection off: refused.
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basicauth":{"username":"u","password":"p"}}"#,
        ] {
            let err = Secret::parse(bad, "S").expect_err(bad);
            assert_eq!(err.name, "S");
        }
    }

    const AC_A: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const AC_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const TA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
    const TA2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2";
    const TB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1";
    const TD: &str = "dddddddddddddddddddddddddddddddd";

    /// An SMS webhook claiming `account`, signed with `token`, checked by `secret`.
    fn verdict(secret: &Secret, account: &str, token: &str) -> bool {
        use twilio_webhook::FormParams;
        use twilio_webhook::signature::SignedRequest;
        let url = "https://h.example.com/sms";
        let p = FormParams::from_pairs([("AccountSid", account), ("MessageSid", "SM1")]);
        let sig = twilio_webhook::sign(&AuthToken::new(token).unwrap(), url, &p);
        let body = p.encode();
        secret
            .validator
            .verify(&SignedRequest {
                method: "POST",
                url,
                content_type: Some("application/x-www-form-urlencoded"),
                body: body.as_bytes(),
                signature: Some(&sig),
                signature_settings: None,
            })
            .is_ok()
    }

    #[test]
    fn many_accounts_in_the_secret() {
        let json = format!(
            r#"{{"accounts": {{"{AC_A}": {{"auth_token": "{TA}", "secondary_auth_token": " {TA2}\n"}},
                "{AC_B}": {{"auth_token": "{TB}"}}}}}}"#
        );
        let s = Secret::parse(&json, "S").unwrap();
        assert!(!s.validator.has_default());
        assert_eq!(s.validator.account_count(), 2);
        assert_eq!(s.keys.len(), 3);
        assert!(verdict(&s, AC_A, TA) && verdict(&s, AC_A, TA2) && verdict(&s, AC_B, TB));
        // Account B's token never passes for A, nor A's for B; no default for others.
        assert!(!verdict(&s, AC_A, TB) && !verdict(&s, AC_B, TA));
        let other = "AC0123456789abcdef0123456789abcdef";
        assert!(!verdict(&s, other, TA));
        assert_eq!(s.token_for(AC_B).map(AuthToken::expose), Some(TB));
        assert_eq!(s.token_for(other), None);

        // With a top-level token beside them: the default for every other account.
        let json = format!(
            r#"{{"auth_token": "{TD}", "accounts": {{"{AC_A}": {{"auth_token": "{TA}"}}}}}}"#
        );
        let s = Secret::parse(&json, "S").unwrap();
        assert!(s.validator.has_default());
        assert!(verdict(&s, other, TD) && verdict(&s, AC_A, TA));
        assert!(!verdict(&s, AC_A, TD) && !verdict(&s, other, TA));
        assert_eq!(s.token_for(other).map(AuthToken::expose), Some(TD));
    }

    #[test]
    fn account_entries_are_checked_like_the_token() {
        let entry = |sid: &str, body: &str| format!(r#"{{"accounts": {{"{sid}": {body}}}}}"#);
        let ok = format!(r#"{{"auth_token": "{TA}"}}"#);
        for (secret, says) in [
            // The AccountSid: AC and 32 lowercase hex, as Twilio writes them.
            (
                entry("ACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &ok),
                "not an AccountSid",
            ),
            (entry("AC123", &ok), "not an AccountSid"),
            (entry(TD, &ok), "not an AccountSid"),
            (entry(AC_A, r#"{"auth_token": " "}"#), "blank"),
            (
                entry(AC_A, r#"{"auth_token": "<your auth token>"}"#),
                "32 hexadecimal",
            ),
            (
                entry(
                    AC_A,
                    &format!(r#"{{"auth_token": "{TA}", "secondary_auth_token": ""}}"#),
                ),
                "blank",
            ),
            (
                entry(
                    AC_A,
                    &format!(r#"{{"auth_token": "{TA}", "secondary_auth_token": "x"}}"#),
                ),
                "32 hexadecimal",
            ),
            (entry(AC_A, r#"{}"#), "missing field"),
            (
                entry(AC_A, &format!(r#"{{"authtoken": "{TA}"}}"#)),
                "unknown field \"authtoken\"",
            ),
            (r#"{"accounts": {}}"#.to_owned(), "holds no token"),
            (r#"{}"#.to_owned(), "holds no token"),
            (
                format!(r#"{{"secondary_auth_token": "{TA2}", "accounts": {{"{AC_A}": {ok}}}}}"#),
                "without \"auth_token\"",
            ),
            (
                format!(r#"{{"accounts": {{"{AC_A}": {ok}, " {AC_A}": {ok}}}}}"#),
                "twice",
            ),
        ] {
            let err = Secret::parse(&secret, "S").expect_err(&secret);
            assert_eq!(err.name, "S");
            assert!(err.reason.contains(says), "{secret}: {}", err.reason);
            // No token value is ever repeated in the reason.
            for leak in [TA, TD, TA2] {
                assert!(!err.reason.contains(leak), "{secret}: {}", err.reason);
            }
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let s = with_env(&[(EVENT_TTL_SECONDS, "31536000"), (LOCK_SECONDS, "86400")]).unwrap();
        assert_eq!(s.event_ttl.as_secs(), MAX_EVENT_TTL_SECONDS);
        assert_eq!(s.lock.as_secs(), MAX_LOCK_SECONDS);
        assert_eq!(with_env(&[]).unwrap(), Settings::default());
        // The arithmetic of a claim cannot overflow at the bounds.
        let now_ms: i64 = 4_102_444_800_000; // 2100-01-01
        assert!(now_ms.checked_add(s.lock.as_millis() as i64).is_some());
        assert!((now_ms / 1000 + s.event_ttl.as_secs() as i64) > now_ms / 1000);
    }
}
