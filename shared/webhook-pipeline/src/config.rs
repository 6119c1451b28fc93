//! Settings read once at cold start from the environment (names documented in the README).

use std::time::Duration;

pub const EVENT_TTL_SECONDS: &str = "EVENT_TTL_SECONDS";
pub const LOCK_SECONDS: &str = "LOCK_SECONDS";
pub const SMS_AUTO_REPLY: &str = "SMS_AUTO_REPLY";
pub const VOICE_GREETING: &str = "VOICE_GREETING";
pub const VOICE_FORWARD_TO: &str = "VOICE_FORWARD_TO";
pub const STATUS_CALLBACK_URL: &str = "STATUS_CALLBACK_URL";
pub const FALLBACK_VOICE_MESSAGE: &str = "FALLBACK_VOICE_MESSAGE";
pub const FORWARD_URL: &str = "FORWARD_URL";
pub const LOG_PII: &str = "LOG_PII";

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
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

impl Default for Settings {
    fn default() -> Self {
        Self {
            event_ttl: Duration::from_secs(7 * 24 * 3600),
            lock: Duration::from_secs(30),
        }
    }
}

/// Longest `EVENT_TTL_SECONDS`: a year. Larger values would overflow the millisecond
/// arithmetic of the claim conditions (a wrapped, negative expiry turns deduplication off).
pub const MAX_EVENT_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// Longest `LOCK_SECONDS`: a day (a Lambda invocation lasts at most 15 minutes).
pub const MAX_LOCK_SECONDS: u64 = 24 * 3600;

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let settings = Self {
            event_ttl: secs(EVENT_TTL_SECONDS, d.event_ttl, MAX_EVENT_TTL_SECONDS)?,
            lock: secs(LOCK_SECONDS, d.lock, MAX_LOCK_SECONDS)?,
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

fn secs(name: &'static str, default: Duration, max: u64) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .map(Duration::from_secs)
            .ok_or_else(|| ConfigError {
                name,
                reason: format!("expected a whole number of seconds from 1 to {max}, got {v:?}"),
            }),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = with_env(&[(EVENT_TTL_SECONDS, "60"), (LOCK_SECONDS, "60")]).unwrap_err();
        assert_eq!(err.name, LOCK_SECONDS);
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
