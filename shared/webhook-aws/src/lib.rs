//! AWS adapters and Lambda entry points: each function's `main` is one call into here.
//!
//! Everything slow (config, secrets, SDK clients, the HMAC key schedule) happens once at cold
//! start; a request then costs one conditional PutItem and one SendMessage.

#![warn(missing_docs)]

pub mod config;
pub mod dynamo;
pub mod eventbridge;
pub mod http;
pub mod logging;
pub mod sqs;

pub use logging::init_tracing;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_http::{Body, Error, Request, Response, service_fn};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::{error, info, warn};
pub use twilio_webhook::payload::Endpoint;
use twilio_webhook::signature::IDEMPOTENCY_HEADER;
use twilio_webhook::url::PublicBaseUrl;
use webhook_pipeline::config::{ConfigError, FORWARD_URL, QUEUE_FIRST, Secret, Settings, var};
use webhook_pipeline::metrics::Metrics;
use webhook_pipeline::pipeline::Outcome;
use webhook_pipeline::rotation::{SecretSource, SecretSourceError};
use webhook_pipeline::store::Job;
use webhook_pipeline::summary::{JobOutcome, JobSummary, RequestSummary};
use webhook_pipeline::worker::{JobReport, SlowWork, WorkerSettings};
use webhook_pipeline::{
    ClaimThenSend, ErrorKind, Pipeline, PipelineError, PortError, ReplyPolicy, Worker,
};

use crate::config::{EVENT_TABLE, TWILIO_AUTH_TOKEN_SECRET_ARN, WORK_QUEUE_URL, required};
use crate::dynamo::DynamoStore;
use crate::sqs::SqsQueue;

/// SDK config with limits that fit inside Twilio's 15 s: a refused connection fails in
/// about a second instead of going through long retries.
pub async fn aws_config() -> Result<SdkConfig, ConfigError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(1000))
                .operation_attempt_timeout(Duration::from_secs(2))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    if config::trust_store()? == config::TrustStore::Amazon {
        loader = loader.http_client(amazon_roots_client());
    }
    if !endpoint_url_is_blank() {
        return Ok(loader.load().await);
    }
    // AWS_ENDPOINT_URL="" (template.yaml declares it empty for SAM local) means unset. The SDK
    // would hand "" to every client as its endpoint, and warn at each cold start that it is
    // not a URL: the load runs without a subscriber, and `BlankIsUnset` drops the value.
    use tracing::instrument::WithSubscriber;
    let sdk = loader
        .load()
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
    Ok(sdk
        .clone()
        .into_builder()
        .service_config(BlankIsUnset(sdk))
        .build())
}

/// An AWS SDK failure as a [`PortError`], with its whole cause chain (the top-level message
/// alone is "service error") and its kind: a missing table or queue is
/// [`ErrorKind::NotFound`], a request AWS refuses as such (validation, size, access) is
/// [`ErrorKind::Permanent`], anything else (throttling, 5xx, timeouts, network) retryable.
pub fn sdk_error<E, R>(service: &str, e: aws_sdk_dynamodb::error::SdkError<E, R>) -> PortError
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    let kind = match &e {
        SdkError::ServiceError(se) => error_kind_of(se.err().code()),
        SdkError::ConstructionFailure(_) => ErrorKind::Permanent,
        _ => ErrorKind::Retryable,
    };
    PortError::new(
        kind,
        format!(
            "{service}: {}",
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        ),
    )
}

/// The [`ErrorKind`] of an AWS error code (DynamoDB's and SQS's).
pub fn error_kind_of(code: Option<&str>) -> ErrorKind {
    match code {
        Some(
            "ResourceNotFoundException"
            | "QueueDoesNotExist"
            | "AWS.SimpleQueueService.NonExistentQueue",
        ) => ErrorKind::NotFound,
        Some(
            "ValidationException"
            | "ItemCollectionSizeLimitExceededException"
            | "SerializationException"
            | "AccessDeniedException"
            | "AccessDenied"
            | "UnrecognizedClientException"
            | "InvalidParameterValue"
            | "InvalidMessageContents"
            | "MessageTooLong"
            | "InvalidAddress",
        ) => ErrorKind::Permanent,
        _ => ErrorKind::Retryable,
    }
}

fn endpoint_url_is_blank() -> bool {
    std::env::var_os(config::AWS_ENDPOINT_URL).is_some() && var(config::AWS_ENDPOINT_URL).is_none()
}

/// The SDK's per-service settings (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`...) with
/// blank values taken as unset.
#[derive(Debug)]
struct BlankIsUnset(SdkConfig);

impl aws_types::service_config::LoadServiceConfig for BlankIsUnset {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        self.0
            .service_config()?
            .load_config(key)
            .filter(|v| !v.trim().is_empty())
    }
}

/// The SDK's default HTTPS client (rustls + aws-lc), trusting only the Amazon roots built in.
pub fn amazon_roots_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let roots = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(config::AMAZON_ROOTS_PEM);
    let context = TlsContext::builder()
        .with_trust_store(roots)
        .build()
        .expect("a trust store of PEM certificates always builds");
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https()
}

/// The auth token(s) and optional Basic credentials: from Secrets Manager when
/// `TWILIO_AUTH_TOKEN_SECRET_ARN` is set, else from `TWILIO_AUTH_TOKEN` (local development).
pub async fn secret(sdk: &SdkConfig) -> Result<Secret, Error> {
    if let Some(arn) = var(TWILIO_AUTH_TOKEN_SECRET_ARN) {
        return secret_from_arn(sdk, &arn).await;
    }
    let validator = config::validator_from_env()?.ok_or_else(|| ConfigError {
        name: TWILIO_AUTH_TOKEN_SECRET_ARN,
        reason: format!(
            "is required (or {} for local runs)",
            config::TWILIO_AUTH_TOKEN
        ),
    })?;
    Ok(Secret {
        validator,
        basic_auth: None,
        keys: Vec::new(),
        account_tokens: Default::default(),
        default_token: None,
    })
}

/// A Secrets Manager secret. One that is read but unusable (blank, bad JSON) is a
/// [`ConfigError`]; a failed read is another error (it may pass on a retry).
pub async fn secret_from_arn(sdk: &SdkConfig, arn: &str) -> Result<Secret, Error> {
    match SecretsManagerSource::new(sdk, arn).read().await {
        Ok(secret) => Ok(secret),
        Err(SecretSourceError::Invalid(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

/// The secret in Secrets Manager, read at cold start and again when a request is refused
/// (token rotation, a new account): see [`webhook_pipeline::rotation`].
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    arn: String,
}

impl SecretsManagerSource {
    /// Reads the secret `arn` with the SDK settings `sdk`.
    pub fn new(sdk: &SdkConfig, arn: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(sdk),
            arn: arn.into(),
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for SecretsManagerSource {
    async fn read(&self) -> Result<Secret, SecretSourceError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.arn)
            .send()
            .await
            .map_err(|e| {
                SecretSourceError::Read(format!(
                    "reading {TWILIO_AUTH_TOKEN_SECRET_ARN}: {}",
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e)
                ))
            })?;
        let secret = out.secret_string().ok_or_else(|| ConfigError {
            name: TWILIO_AUTH_TOKEN_SECRET_ARN,
            reason: "the secret has no SecretString".into(),
        })?;
        let secret = Secret::parse(secret, TWILIO_AUTH_TOKEN_SECRET_ARN)?;
        // A deployed function is reachable by anyone: the published test token must not sign,
        // whether it is the default token or an account's.
        if secret
            .keys
            .iter()
            .any(|k| k.expose() == webhook_pipeline::config::TEST_AUTH_TOKEN)
        {
            return Err(ConfigError {
                name: TWILIO_AUTH_TOKEN_SECRET_ARN,
                reason: "the secret holds the public test token, which anyone can sign with".into(),
            }
            .into());
        }
        Ok(secret)
    }
}

/// Everything a webhook function needs, built once.
pub struct WebhookApp {
    /// The pipeline, with its store, queue, credentials and reply policy.
    pub pipeline: Pipeline,
    /// `PUBLIC_BASE_URL`, when set: what the signed URL is rebuilt from instead of the request's
    /// host and stage.
    pub base: Option<PublicBaseUrl>,
}

impl WebhookApp {
    /// Everything from the environment and, when its ARN is set, the secret (cold start).
    pub async fn from_env(sdk: &SdkConfig) -> Result<Self, Error> {
        let queue_first = webhook_pipeline::config::queue_first()?;
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), required(EVENT_TABLE)?)
            .queue_first(queue_first);
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(sdk), required(WORK_QUEUE_URL)?);
        let refresh = config::secret_refresh_interval()?;
        let Secret {
            validator,
            basic_auth,
            ..
        } = secret(sdk).await?;
        info!(
            accounts = validator.account_count(),
            default = validator.has_default(),
            "auth secret read"
        );
        let intake = ClaimThenSend::new(Arc::new(store), Arc::new(queue)).queue_first(queue_first);
        let mut pipeline = Pipeline::new(
            validator,
            Arc::new(intake),
            ReplyPolicy::from_env(),
            Settings::from_env()?,
        )
        .with_log_pii(webhook_pipeline::config::log_pii())
        .with_basic_auth(basic_auth)
        .with_metrics(Metrics::stdout_from_env());
        if let Some(arn) = var(TWILIO_AUTH_TOKEN_SECRET_ARN) {
            pipeline =
                pipeline.with_secret_source(Arc::new(SecretsManagerSource::new(sdk, arn)), refresh);
        }
        Ok(Self {
            pipeline,
            base: config::public_base_url()?,
        })
    }

    /// Answer one request to `endpoint`.
    pub async fn handle(&self, endpoint: Endpoint, req: Request) -> Response<Body> {
        let started = std::time::Instant::now();
        // Read before `incoming` takes the request: its summary line needs it either way.
        let token = req
            .headers()
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let reply = match http::incoming(req, self.base.as_ref()) {
            Ok(incoming) => self.pipeline.handle(endpoint, &incoming).await,
            // The pipeline never saw it: the summary line is logged here.
            Err(e) => {
                let e = PipelineError::from(e);
                let reply = e.to_reply();
                RequestSummary {
                    endpoint,
                    outcome: Outcome::of_error(&e),
                    status: reply.status,
                    duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                    facts: None,
                    idempotency_token: token.as_deref(),
                    error: Some(&e),
                    url: None,
                }
                .log();
                reply
            }
        };
        http::response(reply)
    }
}

/// What a webhook function whose configuration cannot check requests answers to each: 500,
/// with the request's summary line (the reason was logged once, at cold start).
pub fn misconfigured_response(endpoint: Endpoint, req: &Request) -> Response<Body> {
    let e = PipelineError::Misconfigured;
    let reply = e.to_reply();
    RequestSummary {
        endpoint,
        outcome: Outcome::of_error(&e),
        status: reply.status,
        duration_ms: 0.0,
        facts: None,
        idempotency_token: req
            .headers()
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok()),
        error: Some(&e),
        url: None,
    }
    .log();
    http::response(reply)
}

/// `main` of the four webhook functions.
pub async fn run_webhook(endpoint: Endpoint) -> Result<(), Error> {
    init_tracing();
    let sdk = aws_config().await?;
    let app = match WebhookApp::from_env(&sdk).await {
        Ok(app) => Arc::new(app),
        // A configuration that cannot check signatures (a blank token, a missing table...)
        // will not fix itself: log it once, then answer 500 to every request (fail closed)
        // instead of failing init, which Lambda would retry and log on every request.
        // Anything else (Secrets Manager unreachable) fails init, so the next one retries.
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            error!(endpoint = endpoint.as_str(), error = %e, "misconfigured: every request gets 500");
            return lambda_http::run(service_fn(move |req: Request| async move {
                Ok::<_, Error>(misconfigured_response(endpoint, &req))
            }))
            .await;
        }
        Err(e) => return Err(e),
    };
    info!(endpoint = endpoint.as_str(), "cold start complete");
    lambda_http::run(service_fn(move |req: Request| {
        let app = app.clone();
        async move { Ok::<_, Error>(app.handle(endpoint, req).await) }
    }))
    .await
}

/// Builds the `FORWARD_URL` slow work from the URL. The event-worker function passes
/// `webhook_forward::HttpForwarder::slow_work`: the HTTP client is linked into it alone.
pub type Forwarder = fn(String) -> Arc<dyn SlowWork>;

/// The worker function: SQS batches and the scheduled sweep.
pub struct WorkerApp {
    /// The worker, with its store, queue and slow work.
    pub worker: Worker,
}

impl WorkerApp {
    /// Everything from the environment; `forwarder` builds the `FORWARD_URL` slow work.
    pub async fn from_env(sdk: &SdkConfig, forwarder: Forwarder) -> Result<Self, Error> {
        let queue_first = webhook_pipeline::config::queue_first()?;
        for slow in [FORWARD_URL, config::EVENT_BUS_NAME] {
            if queue_first && var(slow).is_some() {
                // Slow work runs once between a lease and a processed mark, which queue-first
                // records do not have: refused rather than doing it twice or never.
                return Err(ConfigError {
                    name: QUEUE_FIRST,
                    reason: format!("must be false when {slow} is set"),
                }
                .into());
            }
        }
        let store = Arc::new(
            DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), required(EVENT_TABLE)?)
                .queue_first(queue_first),
        );
        let queue = Arc::new(SqsQueue::new(
            aws_sdk_sqs::Client::new(sdk),
            required(WORK_QUEUE_URL)?,
        ));
        let settings = WorkerSettings::from_env(Settings::from_env()?.event_ttl)?;
        let mut worker = Worker::new(store, queue, settings)
            .with_metrics(Metrics::stdout_from_env())
            .with_queue_first(queue_first);
        if let Some(url) = var(FORWARD_URL) {
            worker = worker.with_work(forwarder(url));
        }
        if let Some(bus) = var(config::EVENT_BUS_NAME) {
            worker = worker.with_work(Arc::new(eventbridge::EventBridge::new(sdk, bus)));
        }
        Ok(Self { worker })
    }

    /// Handle one Lambda event: an SQS batch (partial failures reported) or a schedule tick.
    /// `deadline`: when the invocation times out (the runtime's `Lambda-Runtime-Deadline-Ms`).
    pub async fn handle(&self, event: Value, deadline: Option<SystemTime>) -> Result<Value, Error> {
        if event.get("Records").is_some() {
            let batch: SqsEvent = serde_json::from_value(event)?;
            return Ok(serde_json::to_value(
                self.handle_batch(batch, deadline).await,
            )?);
        }
        let report = self
            .worker
            .sweep()
            .await
            .map_err(|e| format!("sweep: {e}"))?;
        info!(
            resent = report.resent,
            parked = report.parked,
            failed = report.failed,
            "sweep complete"
        );
        if report.failed > 0 {
            // Every other record was handled; the invocation still fails so that the
            // function's Errors metric (and its alarm) shows it.
            return Err(format!(
                "sweep: {} record(s) failed (resent {}, parked {}); the next sweep retries them",
                report.failed, report.resent, report.parked
            )
            .into());
        }
        Ok(serde_json::to_value(report)?)
    }

    /// Process a batch one record at a time. A record starts only if the worst case of one
    /// record ([`Worker::record_budget`]) still fits before `deadline`; the rest are reported
    /// as failures at once, so the partial-batch response is always sent and SQS redelivers
    /// them (a timed-out invocation would burn a receive of every message in the batch).
    pub async fn handle_batch(
        &self,
        batch: SqsEvent,
        deadline: Option<SystemTime>,
    ) -> SqsBatchResponse {
        let budget = self.worker.record_budget();
        let mut failures = Vec::new();
        let mut deferred = 0usize;
        for record in batch.records {
            let id = record.message_id.clone().unwrap_or_default();
            let attempts = record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse::<u32>().ok());
            let mut summary = JobSummary {
                outcome: JobOutcome::Deferred,
                key: None,
                kind: None,
                attempts,
                forward_ms: None,
                message_id: Some(&id),
                error: None,
            };
            let left = deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
            if deferred > 0 || left.is_some_and(|left| left < budget) {
                deferred += 1;
                summary.log();
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                failures.push(f);
                continue;
            }
            let job = serde_json::from_str::<Job>(record.body.as_deref().unwrap_or(""));
            let result = match &job {
                // The budget is a worst case the code controls; the store calls' own timeouts
                // are not, so the record is also cut off a second before the deadline: the
                // partial-batch response must go out. A record cut off mid-way keeps its
                // lease, and its redelivery finds it again (the fold is idempotent).
                Ok(job) => {
                    summary.key = Some(&job.event.key);
                    summary.kind = Some(&job.event.kind);
                    let work = self.worker.process_reported(job);
                    let (outcome, report) = match left {
                        Some(left) => {
                            tokio::time::timeout(left.saturating_sub(CUTOFF_MARGIN), work)
                                .await
                                .unwrap_or_else(|_| {
                                    let cut = webhook_pipeline::worker::WorkerError::Busy(format!(
                                        "{}: cut off before the invocation's deadline",
                                        job.event.key
                                    ));
                                    (Err(cut), JobReport::default())
                                })
                        }
                        None => work.await,
                    };
                    summary.outcome = JobOutcome::of(&outcome);
                    summary.forward_ms = report.slow_work_ms;
                    outcome.map(|_| ()).map_err(|e| e.to_string())
                }
                // Unreadable: fail it so it ends in the DLQ for a human, never silently dropped.
                // (Not `{e}`: serde may quote the body, which holds personal data.)
                Err(e) => {
                    summary.outcome = JobOutcome::Unreadable;
                    Err(format!(
                        "unreadable job ({:?} error at column {})",
                        e.classify(),
                        e.column()
                    ))
                }
            };
            summary.error = result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
            summary.log();
            if result.is_err() {
                let mut f = BatchItemFailure::default();
                f.item_identifier = id;
                failures.push(f);
            }
        }
        if deferred > 0 {
            warn!(
                deferred,
                budget_ms = budget.as_millis() as u64,
                "not enough time left before the deadline: records left for redelivery"
            );
        }
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures;
        response
    }
}

/// Time kept back before the deadline to send the partial-batch response.
const CUTOFF_MARGIN: Duration = Duration::from_secs(1);

/// `main` of the event-worker function.
pub async fn run_worker(forwarder: Forwarder) -> Result<(), Error> {
    init_tracing();
    let sdk = aws_config().await?;
    let app = Arc::new(WorkerApp::from_env(&sdk, forwarder).await?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| {
            let app = app.clone();
            async move {
                let deadline = event.context.deadline();
                app.handle(event.payload, Some(deadline)).await
            }
        },
    ))
    .await
}
