//! The default slow work: POST each processed event's normalized JSON to `FORWARD_URL` (a CRM,
//! an API...). Its own crate so that only the worker and `serve` link an HTTP client.

#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use tracing::warn;
#[cfg(test)]
use webhook_pipeline::forward::FORWARD_WORST_CASE_SECS;
use webhook_pipeline::forward::{FORWARD_ATTEMPTS, FORWARD_TIMEOUT, normalized};
use webhook_pipeline::redact::redact_url;
use webhook_pipeline::store::EventRecord;
use webhook_pipeline::worker::{SlowWork, WorkError};

/// POSTs each event with a few quick retries; the queue's redelivery handles longer outages.
/// Sends `Idempotency-Key: <dedup key>` so the receiver can drop the rare repeat.
///
/// Redirects are never followed: on 301/302/303 an HTTP client turns the POST into a GET
/// without the body, and the event would count as delivered. A 3xx is a failed attempt whose
/// log names the `Location`. Error texts never carry the URL: its query string may hold a
/// secret (`?api_key=`), and reqwest puts the whole URL into its errors.
pub struct HttpForwarder {
    url: String,
    client: reqwest::Client,
    attempts: u32,
}

/// The pause before attempt `attempt` (from 1): 200 ms, 800 ms, ...
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * 4u64.pow(attempt - 1))
}

impl HttpForwarder {
    /// As the worker function takes it (`webhook_aws::Forwarder`).
    pub fn slow_work(url: String) -> std::sync::Arc<dyn SlowWork> {
        std::sync::Arc::new(Self::new(url))
    }

    /// A forwarder to `url`, with the timeout and attempts of `webhook_pipeline::forward`.
    pub fn new(url: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client with static settings");
        Self {
            url,
            client,
            attempts: FORWARD_ATTEMPTS,
        }
    }
}

#[async_trait]
impl SlowWork for HttpForwarder {
    fn name(&self) -> &'static str {
        "forward"
    }

    fn max_duration(&self) -> Duration {
        FORWARD_TIMEOUT * self.attempts + (1..self.attempts).map(backoff).sum::<Duration>()
    }

    async fn run(&self, event: &EventRecord) -> Result<(), WorkError> {
        let body = normalized(event).to_string();
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let res = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("idempotency-key", &event.key)
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status().is_redirection() => {
                    // The Location is the operator's own configuration to fix, shown without
                    // its query string like FORWARD_URL itself.
                    let location = r
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map_or_else(|| "(none)".to_owned(), redact_url);
                    return Err(WorkError(format!(
                        "FORWARD_URL answered {} redirecting to {location}: redirects are not followed (they would drop the POST body); set FORWARD_URL to the final URL",
                        r.status()
                    )));
                }
                // A 4xx other than 408/429 will not get better by retrying now.
                Ok(r)
                    if r.status().is_client_error()
                        && !matches!(r.status().as_u16(), 408 | 429) =>
                {
                    return Err(WorkError(format!("FORWARD_URL answered {}", r.status())));
                }
                Ok(r) => last = format!("FORWARD_URL answered {}", r.status()),
                Err(e) => last = format!("FORWARD_URL unreachable: {}", describe(&e, &self.url)),
            }
            warn!(key = %event.key, attempt, error = %last, "forward failed");
        }
        Err(WorkError(last))
    }
}

/// What went wrong, without the URL reqwest puts into every error's text.
fn describe(e: &reqwest::Error, url: &str) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    };
    // The source chain names the cause (refused, reset, DNS...).
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // Belt and braces: no cause may repeat the URL or its query.
    let redacted = redact_url(url);
    text = text.replace(url, &redacted);
    // (A query too short to be a secret would only mangle the text.)
    if let Some((_, query)) = url.split_once('?').filter(|(_, q)| q.len() >= 4) {
        text = text.replace(query, "<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constant the template check reads is the forwarder's real worst case.
    #[test]
    fn worst_case_constant_matches_the_retry_policy() {
        let f = HttpForwarder::new("http://127.0.0.1:9/".into());
        let worst = f.max_duration();
        assert!(worst <= Duration::from_secs(FORWARD_WORST_CASE_SECS));
        assert!(worst > Duration::from_secs(FORWARD_WORST_CASE_SECS - 1));
    }
}
