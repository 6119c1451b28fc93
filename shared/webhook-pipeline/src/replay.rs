//! Which stored events `twilio-webhooks replay` enqueues again, and the times it reads and
//! prints. The adapters list and reopen the records (`webhook-aws`, `webhook-local`).
//!
//! A replayed event goes through the worker as any job does: the state fold and the opt-out
//! ledger are idempotent (an event is applied once), and the slow work (`FORWARD_URL`) runs
//! again with the same `Idempotency-Key`, because the record is first reopened (marked
//! unprocessed). That is the point of a replay: the receiver was down, or lost what it got.

use async_trait::async_trait;

use crate::store::{EventRecord, Job, PortError, WorkQueue};

/// What to replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Events received at or after this (unix ms).
    pub since_ms: i64,
    /// Only this kind (`inbound_message`, `message_status`...).
    pub kind: Option<String>,
    /// Only events of this Sid: a segment of the dedup key (`sms#SM...`, `callstatus#CA...#3`)
    /// or the value of a `...Sid` parameter (so a CallSid also finds its recordings).
    pub sid: Option<String>,
    /// Skip records already processed (by default they are reopened and processed again).
    pub unprocessed_only: bool,
}

impl ReplayFilter {
    /// Whether `event` is one to replay (its processed mark is the adapter's to check).
    pub fn matches(&self, event: &EventRecord) -> bool {
        event.received_at >= self.since_ms
            && self.kind.as_deref().is_none_or(|k| event.kind == k)
            && self.sid.as_deref().is_none_or(|sid| {
                event.key.split('#').any(|part| part == sid)
                    || event
                        .params
                        .iter()
                        .any(|(name, value)| name.ends_with("Sid") && value == sid)
            })
    }
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Events that matched the filter.
    pub matched: usize,
    /// Of those, already processed (reopened unless `unprocessed_only`).
    pub processed: usize,
    /// Enqueued again.
    pub enqueued: usize,
    /// Skipped: a worker holds the record right now (it is being processed), or it expired.
    pub skipped: usize,
    /// Failed to reopen or enqueue (the message says which); run the replay again.
    pub failed: usize,
}

/// A stored event a replay may enqueue again.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The stored event.
    pub event: EventRecord,
    /// Whether the worker already processed it.
    pub processed: bool,
}

/// A store that can list and reopen events for a replay (DynamoDB, SQLite, memory).
#[async_trait]
pub trait ReplaySource: Send + Sync {
    /// Live (not expired) events received at or after `filter.since_ms` that match `filter`,
    /// oldest first. `unreadable` counts records that could not be decoded.
    async fn candidates(
        &self,
        filter: &ReplayFilter,
        now_ms: i64,
    ) -> Result<(Vec<Candidate>, usize), PortError>;

    /// Make the record unprocessed again, with a fresh sweep count and its lock until
    /// `lock_until_ms` (the sweeper re-sends it after that if the replayed job is lost), unless
    /// it expired or a worker holds a live lease on it (an unprocessed record whose lease has
    /// not ended): `Ok(false)` then.
    async fn reopen(&self, key: &str, now_ms: i64, lock_until_ms: i64) -> Result<bool, PortError>;
}

/// How long a reopened record waits before the sweeper may re-send it: the replayed job
/// should be processed by then.
pub const REOPEN_LOCK_MS: i64 = 10 * 60 * 1000;

/// Enqueue again every event `filter` selects: reopen its record, then send its job (the body
/// the webhook function enqueued). Dry, only count. `progress` is called after each event
/// with (done, total). A failure of one event is counted and logged; the others go on.
pub async fn replay(
    source: &dyn ReplaySource,
    queue: &dyn WorkQueue,
    filter: &ReplayFilter,
    dry_run: bool,
    now_ms: i64,
    progress: &mut (dyn FnMut(usize, usize) + Send),
) -> Result<ReplayReport, PortError> {
    let (candidates, unreadable) = source.candidates(filter, now_ms).await?;
    let mut report = ReplayReport {
        failed: unreadable,
        ..Default::default()
    };
    let candidates: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| filter.matches(&c.event))
        .collect();
    let total = candidates.len();
    for (i, Candidate { event, processed }) in candidates.into_iter().enumerate() {
        report.matched += 1;
        report.processed += usize::from(processed);
        if processed && filter.unprocessed_only {
            progress(i + 1, total);
            continue;
        }
        if dry_run {
            report.enqueued += 1;
            progress(i + 1, total);
            continue;
        }
        let key = event.key.clone();
        match source.reopen(&key, now_ms, now_ms + REOPEN_LOCK_MS).await {
            Ok(true) => match queue.enqueue(&Job { event }).await {
                Ok(()) => report.enqueued += 1,
                Err(e) => {
                    // The record is reopened: the sweeper sends it after the lock.
                    tracing::error!(%key, error = %e, "replay: enqueue failed");
                    report.failed += 1;
                }
            },
            Ok(false) => report.skipped += 1,
            Err(e) => {
                tracing::error!(%key, error = %e, "replay: could not reopen the record");
                report.failed += 1;
            }
        }
        progress(i + 1, total);
    }
    Ok(report)
}

/// `--since` could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cannot read {0:?} as a time: give RFC 3339 (2026-05-01T12:00:00Z, 2026-05-01T14:00:00+02:00) or a duration ago (90s, 30m, 24h, 7d)"
)]
pub struct TimeError(String);

/// Unix ms of `--since`: an RFC 3339 time, or a duration before `now_ms` (`90s`, `30m`,
/// `24h`, `7d`, `2w`).
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, TimeError> {
    let t = text.trim();
    let err = || TimeError(text.to_owned());
    if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let digits = &t[..t.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = digits.parse().map_err(|_| err())?;
            let unit_ms: i64 = match unit {
                's' => 1_000,
                'm' => 60_000,
                'h' => 3_600_000,
                'd' => 86_400_000,
                'w' => 7 * 86_400_000,
                _ => return Err(err()),
            };
            return n.checked_mul(unit_ms).map(|d| now_ms - d).ok_or_else(err);
        }
    }
    parse_rfc3339(t).ok_or_else(err)
}

/// Unix ms of an RFC 3339 date-time (`T` or a space between date and time, fractions of a
/// second, `Z` or a `±hh:mm` offset).
pub fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = t.get(r)?;
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = 19;
    let mut millis = 0;
    if b[rest] == b'.' {
        let start = rest + 1;
        let end = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if end == start {
            return None;
        }
        let frac = &t[start..end.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10_i64.pow(3 - frac.len() as u32);
        rest = end;
    }
    let offset_min = match &t[rest..] {
        "Z" | "z" => 0,
        off if off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) => {
            if off.as_bytes()[3] != b':' {
                return None;
            }
            let m = num(rest + 1..rest + 3)? * 60 + num(rest + 4..rest + 6)?;
            if off.starts_with('-') { -m } else { m }
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// `2026-05-01T12:00:00.000Z` for unix ms.
pub fn format_rfc3339(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let s = in_day / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        in_day % 1000
    )
}

// Howard Hinnant's algorithms (proleptic Gregorian calendar, days since 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored inbound SMS (the test kit's `contract::sample_event`, which this crate's unit
    /// tests cannot use: it is built against this crate as a dependency).
    fn sample_event(tag: &str) -> EventRecord {
        EventRecord {
            key: format!("sms#SM0123456789abcdef0123456789abcdef{tag}"),
            kind: "inbound_message".into(),
            endpoint: twilio_webhook::payload::Endpoint::Sms,
            url: "https://example.com/sms".into(),
            params: twilio_webhook::FormParams::from_pairs([("MessageSid", "SM1")]),
            idempotency_token: None,
            received_at: NOW,
            reply: crate::Reply::text(200, "<Response/>"),
            state_update: None,
            consent: None,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_since("24h", NOW), Ok(NOW - 86_400_000));
        assert_eq!(parse_since(" 90s ", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_since("30m", NOW), Ok(NOW - 1_800_000));
        assert_eq!(parse_since("7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_since("2w", NOW), Ok(NOW - 14 * 86_400_000));
        for bad in ["", "h", "24", "24y", "-1h", "1.5h", "yesterday", "24 h"] {
            assert!(parse_since(bad, NOW).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_times_with_offsets_and_fractions() {
        // 2027-01-15T08:00:00Z = 1_800_000_000 s
        assert_eq!(parse_since("2027-01-15T08:00:00Z", 0), Ok(NOW));
        assert_eq!(parse_since("2027-01-15T10:00:00+02:00", 0), Ok(NOW));
        assert_eq!(parse_since("2027-01-15 03:00:00-05:00", 0), Ok(NOW));
        assert_eq!(parse_since("2027-01-15T08:00:00.25Z", 0), Ok(NOW + 250));
        assert_eq!(parse_since("2027-01-15T08:00:00.123456Z", 0), Ok(NOW + 123));
        assert_eq!(parse_since("1970-01-01T00:00:00Z", 5), Ok(0));
        assert_eq!(
            parse_since("2024-02-29T00:00:00Z", 0),
            Ok(1_709_164_800_000)
        );
        for bad in [
            "2027-01-15T08:00:00",
            "2027-01-15",
            "2027-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2027-01-15T24:00:00Z",
            "2027-01-15T08:00:00+0200",
            "2027-01-15T08:00:00.Z",
        ] {
            assert!(parse_since(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        assert_eq!(format_rfc3339(NOW + 7), "2027-01-15T08:00:00.007Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        for ms in [
            0,
            NOW,
            1_709_164_800_000,
            951_782_400_123,
            4_102_444_799_999,
        ] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn the_filter_takes_time_kind_and_sid() {
        let e = sample_event("x"); // received_at NOW, inbound_message, MessageSid=SM1
        let f = |since_ms, kind: Option<&str>, sid: Option<&str>| ReplayFilter {
            since_ms,
            kind: kind.map(str::to_owned),
            sid: sid.map(str::to_owned),
            unprocessed_only: false,
        };
        assert!(f(NOW, None, None).matches(&e));
        assert!(!f(NOW + 1, None, None).matches(&e));
        assert!(f(0, Some("inbound_message"), None).matches(&e));
        assert!(!f(0, Some("message_status"), None).matches(&e));
        // By a parameter...
        assert!(f(0, None, Some("SM1")).matches(&e));
        // ...or a segment of the key, never a part of one.
        let key_sid = e.key.split('#').nth(1).unwrap().to_owned();
        assert!(f(0, None, Some(&key_sid)).matches(&e));
        assert!(!f(0, None, Some(&key_sid[..10])).matches(&e));
        assert!(!f(0, None, Some("SM2")).matches(&e));
    }
}
