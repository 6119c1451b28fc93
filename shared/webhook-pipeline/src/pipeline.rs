//! verify → parse → dedup key → record once → enqueue → reply.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use tracing::{debug, error, info, warn};
use twilio_webhook::Validator;
use twilio_webhook::basic::{BasicAuth, BasicAuthError};
use twilio_webhook::payload::{Endpoint, Webhook};
use twilio_webhook::signature::{
    IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, SignatureError, SignedRequest,
};

use crate::config::Settings;
use crate::consent::ConsentUpdate;
use crate::error::PipelineError;
use crate::metrics::{Metrics, Unit};
use crate::redact::url_for_log;
use crate::reply::{Reply, ReplyPolicy};
use crate::state::StateUpdate;
use crate::store::{Claim, ClaimTimes, EventRecord, EventStore, Job, Outbox, WorkQueue};

/// Unix milliseconds; injectable so tests can move time (lock and TTL expiry).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// `url` with `user:pass@` in its authority (percent-encoded as a URL holds them).
fn with_userinfo(url: &str, user: &str, pass: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}:{}@{rest}",
            utf8_percent_encode(user, USERINFO),
            utf8_percent_encode(pass, USERINFO)
        ),
        None => url.to_owned(),
    }
}

/// `url` without `user:pass@`: credentials are never stored or logged.
fn without_userinfo(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// A request as the runtime adapter hands it over: the signed URL already rebuilt.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub method: http::Method,
    /// The URL Twilio signed (see `twilio_webhook::url`).
    pub url: String,
    /// Other spellings Twilio may have signed when the adapter cannot know which (a REST API
    /// event's decoded query): tried in turn if `url` does not verify. Usually empty.
    pub other_urls: Vec<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The pipeline, built once at cold start and shared by every request.
pub struct Pipeline {
    validator: Validator,
    store: Arc<dyn EventStore>,
    queue: Arc<dyn WorkQueue>,
    /// When set, used instead of `store.claim` + `queue.enqueue`.
    outbox: Option<Arc<dyn Outbox>>,
    policy: ReplyPolicy,
    settings: Settings,
    clock: Clock,
    /// `LOG_PII`: log the query values of refused requests' URLs.
    log_pii: bool,
    /// HTTP Basic credentials every request must carry, when configured.
    basic_auth: Option<BasicAuth>,
    metrics: Metrics,
}

/// What became of one webhook: the metric it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new event, recorded and handed to the worker.
    Accepted,
    /// A copy of a recorded event: the stored reply, nothing else.
    Duplicate,
    /// No Basic credentials yet: Twilio's first try, answered with the challenge.
    Challenged,
    /// Wrong signature or credentials (401/403).
    Refused,
    /// Unreadable (400).
    Malformed,
    /// Our store or queue failed (5xx), or a fallback could not be recorded.
    Failed,
}

impl Outcome {
    /// The metric name (see [`crate::metrics`]).
    pub fn metric(self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::Duplicate => "Duplicate",
            Self::Challenged => "Challenged",
            Self::Refused => "Refused",
            Self::Malformed => "Malformed",
            Self::Failed => "Failed",
        }
    }
}

impl Pipeline {
    pub fn new(
        validator: Validator,
        store: Arc<dyn EventStore>,
        queue: Arc<dyn WorkQueue>,
        policy: ReplyPolicy,
        settings: Settings,
    ) -> Self {
        Self {
            validator,
            store,
            queue,
            outbox: None,
            policy,
            settings,
            clock: system_clock(),
            log_pii: false,
            basic_auth: None,
            metrics: Metrics::disabled(),
        }
    }

    /// Count every webhook's outcome and latency (EMF on stdout in Lambda).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Require HTTP Basic credentials (Twilio's `https://user:pass@host/...` URLs) before
    /// the signature check: without them, 401 with the challenge and nothing stored.
    pub fn with_basic_auth(mut self, basic_auth: Option<BasicAuth>) -> Self {
        self.basic_auth = basic_auth;
        self
    }

    /// Let personal data (the query values of a refused request's URL) into logs.
    pub fn with_log_pii(mut self, on: bool) -> Self {
        self.log_pii = on;
        self
    }

    /// Whether personal data may be logged (`LOG_PII`).
    pub fn log_pii(&self) -> bool {
        self.log_pii
    }

    /// Record and enqueue new events with one [`Outbox`] call (the store and queue must be the
    /// outbox's own: the worker and the sweeper still use them).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Handle one webhook; never fails: errors become their HTTP reply here. Counts the
    /// outcome in the metrics.
    pub async fn handle(&self, endpoint: Endpoint, req: &IncomingRequest) -> Reply {
        let started = std::time::Instant::now();
        let (result, kind) = self.run(endpoint, req).await;
        let (reply, outcome) = match result {
            Ok(done) => done,
            Err(e) => {
                let status = e.status();
                if let PipelineError::Unauthorized(BasicAuthError::Missing) = e {
                    // Twilio's first try of every webhook: expected, not a refusal to log.
                    debug!(endpoint = endpoint.as_str(), "Basic auth challenge sent");
                } else if status >= 500 {
                    error!(endpoint = endpoint.as_str(), status, error = %e, "webhook failed");
                } else {
                    // The URL checked is the first thing to compare with the Twilio console
                    // when signatures fail (proxy, custom domain, stage); a GET webhook's
                    // query holds From, To and Body, so its values stay out unless LOG_PII.
                    let url = url_for_log(&req.url, self.log_pii);
                    warn!(endpoint = endpoint.as_str(), status, error = %e, %url, "webhook refused");
                }
                let outcome = match (status, &e) {
                    // The challenge is Twilio's first try, not a refusal worth an alarm.
                    (_, PipelineError::Unauthorized(BasicAuthError::Missing)) => {
                        Outcome::Challenged
                    }
                    (400, _) => Outcome::Malformed,
                    (s, _) if s >= 500 => Outcome::Failed,
                    _ => Outcome::Refused,
                };
                (e.to_reply(), outcome)
            }
        };
        let mut values = vec![
            (outcome.metric(), Unit::Count, 1.0),
            (
                "Latency",
                Unit::Milliseconds,
                started.elapsed().as_secs_f64() * 1000.0,
            ),
        ];
        if endpoint == Endpoint::Fallback
            && matches!(
                outcome,
                Outcome::Accepted | Outcome::Duplicate | Outcome::Failed
            )
        {
            values.push(("FallbackUsed", Unit::Count, 1.0));
        }
        self.metrics.emit(
            &[
                ("Endpoint", endpoint.as_str()),
                ("Kind", kind.unwrap_or("unknown")),
            ],
            &values,
        );
        reply
    }

    /// The whole pipeline for callers that want the error itself (tests, the local server's
    /// logs); [`Pipeline::handle`] is this plus the status mapping and the metrics.
    pub async fn try_handle(
        &self,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> Result<Reply, PipelineError> {
        self.run(endpoint, req).await.0.map(|(reply, _)| reply)
    }

    /// The pipeline, with the outcome and the payload kind (once known).
    async fn run(
        &self,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> (
        Result<(Reply, Outcome), PipelineError>,
        Option<&'static str>,
    ) {
        let (webhook, event) = match self.accept(endpoint, req) {
            Ok(accepted) => accepted,
            Err(e) => return (Err(e), None),
        };
        let kind = Some(webhook.kind());
        let result = match self.record(&event).await {
            Ok(done) => Ok(done),
            // The fallback URL is Twilio's last call: answer safe TwiML even when our backend
            // is down (Twilio would not call anything else), and say loudly that it was not kept.
            Err(e) if endpoint == Endpoint::Fallback => {
                error!(key = %event.key, kind = webhook.kind(), error = %e,
                    "fallback could not be recorded; answering safe TwiML anyway");
                Ok((event.reply, Outcome::Failed))
            }
            Err(e) => Err(e),
        };
        (result, kind)
    }

    /// Everything before I/O: verify, parse, key, reply. Public for benchmarks.
    pub fn accept(
        &self,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> Result<(Webhook, EventRecord), PipelineError> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let verify = |url: &str| {
            self.validator.verify(&SignedRequest {
                method: req.method.as_str(),
                url,
                content_type: header(http::header::CONTENT_TYPE.as_str()),
                body: &req.body,
                signature: header(SIGNATURE_HEADER),
                signature_settings: header(SIGNATURE_SETTINGS_HEADER),
            })
        };
        if let Some(basic) = &self.basic_auth {
            basic.check(header(http::header::AUTHORIZATION.as_str()))?;
        }
        // Each candidate is a URL Twilio may have signed; an HMAC over one of them proves it.
        // With Basic auth, the URL with the credentials in it is one too: Twilio's docs say
        // they are not signed, and the validator tries the URL with and without them.
        let with_credentials = |url: &str| match &self.basic_auth {
            Some(b) => with_userinfo(url, b.username(), b.expose_password()),
            None => url.to_owned(),
        };
        let mut verified = verify(&with_credentials(&req.url));
        for url in &req.other_urls {
            match verified {
                Err(SignatureError::InvalidSignature) => verified = verify(&with_credentials(url)),
                _ => break,
            }
        }
        let verified = verified?;
        let webhook = Webhook::parse(endpoint, &verified)?;
        let reply = self.policy.reply(&webhook, verified.url());
        let received_at = (self.clock)();
        let event = EventRecord {
            key: webhook.dedup_key(),
            kind: webhook.kind().to_owned(),
            endpoint,
            url: without_userinfo(verified.url()),
            params: webhook.raw().clone(),
            idempotency_token: header(IDEMPOTENCY_HEADER).map(str::to_owned),
            received_at,
            reply,
            state_update: StateUpdate::from_webhook(&webhook),
            consent: ConsentUpdate::from_webhook(&webhook, received_at),
        };
        Ok((webhook, event))
    }

    /// Record once and enqueue: 2 sequential round trips for a new event, 1 for a duplicate
    /// (1 and 1 with an [`Outbox`]).
    async fn record(&self, event: &EventRecord) -> Result<(Reply, Outcome), PipelineError> {
        let now = (self.clock)();
        let attempt = uuid::Uuid::new_v4().to_string();
        let times = ClaimTimes {
            now_ms: now,
            lock_until_ms: now + self.settings.lock.as_millis() as i64,
            expires_at_s: now / 1000 + self.settings.event_ttl.as_secs() as i64,
        };
        let claim = match &self.outbox {
            Some(outbox) => outbox.claim_and_enqueue(event, &attempt, times).await,
            None => self.store.claim(event, &attempt, times).await,
        };
        let claim = match claim {
            Ok(claim) => claim,
            Err(e) => {
                // The write may have landed with its answer lost. Free it (only if this
                // attempt wrote it), so that Twilio's retry claims it at once instead of
                // finding it locked and unsent until the sweeper comes by.
                let release = self.store.release(&event.key, &attempt);
                match tokio::time::timeout(std::time::Duration::from_secs(1), release).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(key = %event.key, error = %e, "could not release a failed claim")
                    }
                    Err(_) => debug!(key = %event.key, "releasing a failed claim timed out"),
                }
                return Err(PipelineError::Store(e));
            }
        };
        match claim {
            Claim::Duplicate { reply, processed } => {
                info!(key = %event.key, processed, "duplicate webhook: replaying the stored reply");
                Ok((reply, Outcome::Duplicate))
            }
            Claim::New if self.outbox.is_some() => {
                info!(key = %event.key, kind = %event.kind, "webhook accepted");
                Ok((event.reply.clone(), Outcome::Accepted))
            }
            Claim::New => {
                let job = Job {
                    event: event.clone(),
                };
                if let Err(e) = self.queue.enqueue(&job).await {
                    // Free the record so Twilio's retry (or the fallback, or the sweeper) redoes
                    // it now; if even that fails the lock simply expires.
                    if let Err(release) = self.store.release(&event.key, &attempt).await {
                        warn!(key = %event.key, error = %release, "could not release the claim");
                    }
                    return Err(PipelineError::Queue(e));
                }
                info!(key = %event.key, kind = %event.kind, "webhook accepted");
                Ok((event.reply.clone(), Outcome::Accepted))
            }
        }
    }
}
