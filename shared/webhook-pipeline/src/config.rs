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

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            event_ttl: secs(EVENT_TTL_SECONDS, d.event_ttl)?,
            lock: secs(LOCK_SECONDS, d.lock)?,
        })
    }
}

fn secs(name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| ConfigError {
                name,
                reason: format!("expected a positive number of seconds, got {v:?}"),
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
