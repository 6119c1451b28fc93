//! verify → parse → dedup key → record once → enqueue → reply.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::Guard;
use bytes::Bytes;
use http::HeaderMap;
use tracing::error;
use twilio_webhook::Validator;
use twilio_webhook::basic::{BasicAuth, BasicAuthError};
use twilio_webhook::payload::{Endpoint, Webhook};
use twilio_webhook::signature::{
    IDEMPOTENCY_HEADER, SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER, SignatureError, SignedRequest,
};

use crate::config::Settings;
use crate::consent::ConsentUpdate;
use crate::error::PipelineError;
use crate::intake::Intake;
use crate::metrics::{Metrics, Unit};
use crate::redact::url_for_log;
use crate::reply::{Reply, ReplyPolicy};
use crate::rotation::{Credentials, Rotating, SecretSource};
use crate::state::StateUpdate;
use crate::store::{Claim, ClaimTimes, EventRecord};
use crate::summary::{EventFacts, RequestSummary};

/// Unix milliseconds; injectable so tests can move time (lock and TTL expiry).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock in unix milliseconds (0 before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// [`now_ms`] as a [`Clock`]: the clock outside tests.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
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

/// Refusals that a newer secret could turn into an acceptance. Not a missing signature or
/// Basic header, nor a malformed request: no secret changes those.
fn newer_secret_may_help(e: &PipelineError) -> bool {
    matches!(
        e,
        PipelineError::Signature(
            SignatureError::InvalidSignature
                | SignatureError::UnknownAccount(_)
                | SignatureError::MissingAccountSid
                | SignatureError::UnknownSharedKey(_)
                | SignatureError::SharedKeysNotConfigured
        ) | PipelineError::Unauthorized(BasicAuthError::Wrong)
    )
}

/// A request as the runtime adapter hands it over: the signed URL already rebuilt.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    /// The HTTP method (Twilio sends POST, or GET when so configured).
    pub method: http::Method,
    /// The URL Twilio signed (see `twilio_webhook::url`).
    pub url: String,
    /// Other spellings Twilio may have signed when the adapter cannot know which (a REST API
    /// event's decoded query): tried in turn if `url` does not verify. Usually empty.
    pub other_urls: Vec<String>,
    /// The request headers (`X-Twilio-Signature`, `I-Twilio-Idempotency-Token`...).
    pub headers: HeaderMap,
    /// The raw body, as Twilio sent and signed it.
    pub body: Bytes,
}

/// The pipeline, built once at cold start and shared by every request.
pub struct Pipeline {
    /// The validator and Basic credentials, replaced when the secret is read again.
    credentials: Rotating,
    /// Where accepted events go.
    intake: Arc<dyn Intake>,
    policy: ReplyPolicy,
    settings: Settings,
    clock: Clock,
    /// `LOG_PII`: log the query values of refused requests' URLs.
    log_pii: bool,
    metrics: Metrics,
}

/// What became of one webhook: the metric it counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new event, recorded and handed to the worker.
    Accepted,
    /// A copy of a processed event: the stored reply, nothing else.
    Duplicate,
    /// A copy of an event recorded but not processed yet: the stored reply, nothing else.
    InProgress,
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
            Self::Duplicate | Self::InProgress => "Duplicate",
            Self::Challenged => "Challenged",
            Self::Refused => "Refused",
            Self::Malformed => "Malformed",
            Self::Failed => "Failed",
        }
    }

    /// The outcome of a request that ended in `e`.
    pub fn of_error(e: &PipelineError) -> Self {
        match (e.status(), e) {
            // The challenge is Twilio's first try, not a refusal worth an alarm.
            (_, PipelineError::Unauthorized(BasicAuthError::Missing)) => Self::Challenged,
            (400, _) => Self::Malformed,
            (s, _) if s >= 500 => Self::Failed,
            _ => Self::Refused,
        }
    }
}

impl Pipeline {
    /// A pipeline checking requests with `validator`, recording accepted events in `intake`
    /// and answering by `policy`.
    pub fn new(
        validator: Validator,
        intake: Arc<dyn Intake>,
        policy: ReplyPolicy,
        settings: Settings,
    ) -> Self {
        Self {
            credentials: Rotating::new(Credentials {
                validator,
                basic_auth: None,
            }),
            intake,
            policy,
            settings,
            clock: system_clock(),
            log_pii: false,
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
        self.credentials = self.credentials.map(|c| Credentials { basic_auth, ..c });
        self
    }

    /// When a request is refused (signature, account, shared key or Basic password), read the
    /// secret again from `source`, at most once per `interval` (zero: never), and check the
    /// request once more with what it holds now: token rotation without a 403 storm.
    pub fn with_secret_source(mut self, source: Arc<dyn SecretSource>, interval: Duration) -> Self {
        self.credentials = self.credentials.with_source(source, interval);
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

    /// Read the time from `clock` (tests move it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Handle one webhook; never fails: errors become their HTTP reply here. Counts the
    /// outcome in the metrics and logs the request's summary line ([`RequestSummary`]).
    pub async fn handle(&self, endpoint: Endpoint, req: &IncomingRequest) -> Reply {
        let started = std::time::Instant::now();
        let (result, facts) = self.run(endpoint, req).await;
        let (reply, outcome, error) = match result {
            Ok((reply, outcome)) => (reply, outcome, None),
            Err(e) => {
                let outcome = Outcome::of_error(&e);
                (e.to_reply(), outcome, Some(e))
            }
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let kind = facts.as_ref().map(|f| f.kind);
        let mut values = vec![
            (outcome.metric(), Unit::Count, 1.0),
            ("Latency", Unit::Milliseconds, duration_ms),
        ];
        if endpoint == Endpoint::Fallback
            && matches!(
                outcome,
                Outcome::Accepted | Outcome::Duplicate | Outcome::InProgress | Outcome::Failed
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
        // The URL checked is the first thing to compare with the Twilio console when
        // signatures fail (proxy, custom domain, stage); a GET webhook's query holds From, To
        // and Body, so its values stay out unless LOG_PII.
        let url = matches!(outcome, Outcome::Refused | Outcome::Malformed)
            .then(|| url_for_log(&req.url, self.log_pii));
        RequestSummary {
            endpoint,
            outcome,
            status: reply.status,
            duration_ms,
            facts: facts.as_ref(),
            idempotency_token: req
                .headers
                .get(IDEMPOTENCY_HEADER)
                .and_then(|v| v.to_str().ok()),
            error: error.as_ref().map(|e| e as &dyn std::fmt::Display),
            url: url.as_deref(),
        }
        .log();
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

    /// The pipeline, with the outcome and what the summary line says of the event (once
    /// parsed).
    async fn run(
        &self,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> (Result<(Reply, Outcome), PipelineError>, Option<EventFacts>) {
        let (webhook, event) = match self.accept_rotating(endpoint, req).await {
            Ok(accepted) => accepted,
            Err(e) => return (Err(e), None),
        };
        let facts = Some(EventFacts::of(&webhook, &event.key));
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
        (result, facts)
    }

    /// [`Pipeline::accept`]; when refused and the secret may have changed (a token promoted
    /// in the Twilio console, an account added), once more with the secret read again.
    async fn accept_rotating(
        &self,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> Result<(Webhook, EventRecord), PipelineError> {
        let credentials = self.credentials.load();
        match self.accept_with(&credentials, endpoint, req) {
            Err(e) if self.credentials.refreshes() && newer_secret_may_help(&e) => {
                let seen = Guard::into_inner(credentials);
                match self.credentials.refreshed(&seen).await {
                    Some(fresh) => self.accept_with(&fresh, endpoint, req),
                    None => Err(e),
                }
            }
            accepted => accepted,
        }
    }

    /// Everything before I/O: verify, parse, key, reply. Public for benchmarks.
    pub fn accept(
        &self,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> Result<(Webhook, EventRecord), PipelineError> {
        self.accept_with(&self.credentials.load(), endpoint, req)
    }

    fn accept_with(
        &self,
        credentials: &Credentials,
        endpoint: Endpoint,
        req: &IncomingRequest,
    ) -> Result<(Webhook, EventRecord), PipelineError> {
        let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let verify = |url: &str| {
            credentials.validator.verify(&SignedRequest {
                method: req.method.as_str(),
                url,
                content_type: header(http::header::CONTENT_TYPE.as_str()),
                body: &req.body,
                signature: header(SIGNATURE_HEADER),
                signature_settings: header(SIGNATURE_SETTINGS_HEADER),
            })
        };
        if let Some(basic) = &credentials.basic_auth {
            basic.check(header(http::header::AUTHORIZATION.as_str()))?;
        }
        // Each candidate is a URL Twilio may have signed; an HMAC over one of them proves it.
        // With Basic auth, the URL with the credentials in it is one too: Twilio's docs say
        // they are not signed, and the validator tries the URL with and without them.
        let with_credentials = |url: &str| match &credentials.basic_auth {
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

    /// Record once and hand to the worker ([`Intake`]).
    async fn record(&self, event: &EventRecord) -> Result<(Reply, Outcome), PipelineError> {
        let now = (self.clock)();
        let attempt = uuid::Uuid::new_v4().to_string();
        let times = ClaimTimes {
            now_ms: now,
            lock_until_ms: now + self.settings.lock.as_millis() as i64,
            expires_at_s: now / 1000 + self.settings.event_ttl.as_secs() as i64,
        };
        match self.intake.record(event, &attempt, times).await? {
            Claim::New => Ok((event.reply.clone(), Outcome::Accepted)),
            Claim::Duplicate { reply, processed } => Ok((
                reply,
                if processed {
                    Outcome::Duplicate
                } else {
                    Outcome::InProgress
                },
            )),
        }
    }
}
