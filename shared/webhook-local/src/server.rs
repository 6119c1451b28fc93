//! The local HTTP server: the four webhook endpoints on axum, the SQLite store and queue, and
//! the worker loop, in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use twilio_webhook::AuthToken;
use twilio_webhook::payload::Endpoint;
use twilio_webhook::url::{PublicBaseUrl, UrlError, from_parts};
use webhook_pipeline::config::Secret;
use webhook_pipeline::config::TEST_AUTH_TOKEN;
use webhook_pipeline::worker::{SlowWork, WorkerSettings};
use webhook_pipeline::{
    IncomingRequest, Pipeline, PipelineError, Reply, ReplyPolicy, Settings, Worker,
};

use crate::db::{Database, DirLock, OpenError, now_ms};
use crate::queue::{QueueSettings, SqliteQueue};
use crate::store::SqliteStore;
use crate::worker::{LoopSettings, WorkerLoop};

/// Largest accepted request body: the form parser's limit.
pub const BODY_LIMIT: usize = twilio_webhook::form::MAX_BODY_BYTES;

/// Everything `serve` needs.
pub struct ServeConfig {
    /// Where to listen (`--addr`).
    pub addr: SocketAddr,
    /// The data directory (`--data`): the SQLite file and its lock.
    pub data_dir: PathBuf,
    /// The URL Twilio calls, when it is not `http://<Host header>` (a tunnel, a proxy).
    pub public_url: Option<PublicBaseUrl>,
    /// Tokens, shared keys and optional Basic credentials (the Lambda secret's JSON).
    pub secret: Secret,
    /// What each endpoint answers.
    pub policy: ReplyPolicy,
    /// Dedup timing (TTL, lock).
    pub settings: Settings,
    /// Lease and sweep settings of the worker.
    pub worker: WorkerSettings,
    /// Batching, concurrency and polling of the worker loop.
    pub worker_loop: LoopSettings,
    /// Redelivery and dead-letter settings of the queue.
    pub queue: QueueSettings,
    /// Accept the published test token on a listener reachable from outside (a non-loopback
    /// address or a public URL). Off by default: anyone can sign with that token.
    pub insecure_public_test_token: bool,
    /// `LOG_PII`: let personal data (query values of refused URLs) into logs.
    pub log_pii: bool,
    /// [`HEADER_READ_TIMEOUT`] unless a test shortens it.
    pub header_read_timeout: Duration,
    /// [`BODY_READ_TIMEOUT`] unless a test shortens it.
    pub body_read_timeout: Duration,
    /// Slow work run for each event after the state fold (e.g. the `FORWARD_URL` forwarder).
    /// With any, the worker processes one job at a time whatever `worker_loop.concurrency`
    /// says: a crash then repeats the slow work of at most one job. Without, all the worker
    /// does is idempotent database updates, and jobs are processed concurrently.
    pub slow_work: Vec<Arc<dyn SlowWork>>,
}

impl ServeConfig {
    /// Defaults everywhere, with one auth token.
    pub fn new(addr: SocketAddr, data_dir: PathBuf, auth_token: AuthToken) -> Self {
        Self {
            addr,
            data_dir,
            public_url: None,
            secret: Secret::from_token(auth_token),
            policy: ReplyPolicy::default(),
            settings: Settings::default(),
            worker: WorkerSettings::default(),
            worker_loop: LoopSettings::default(),
            queue: QueueSettings::default(),
            insecure_public_test_token: false,
            log_pii: false,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            slow_work: Vec::new(),
        }
    }

    /// Whether someone other than this machine can reach the server.
    pub fn is_exposed(&self) -> bool {
        !self.addr.ip().is_loopback() || self.public_url.is_some()
    }
}

/// Why `serve` could not start or stopped; each message is one line naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory cannot be opened or is in use.
    #[error(transparent)]
    Data(#[from] OpenError),
    /// Putting back what an earlier run left in flight failed ([`crate::Database::recover`]).
    #[error("cannot recover the local data: {0}")]
    Recover(String),
    /// The address is taken.
    #[error(
        "cannot listen on {addr}: address already in use (another server running? pick another port with --addr)"
    )]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Listening failed for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The published test token on a listener reachable from outside, without
    /// `insecure_public_test_token`.
    #[error(
        "refusing to serve {addr} with the public test token: anyone can sign requests with it. \
         Give your auth token (--auth-token or TWILIO_AUTH_TOKEN), listen on 127.0.0.1 without \
         --public-base-url, or pass --insecure-public-test-token"
    )]
    PublicTestToken {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

struct App {
    pipeline: Pipeline,
    public_url: Option<PublicBaseUrl>,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    /// The public test token is in use: only requests made on this machine are served.
    local_only: bool,
}

/// A server that owns its data directory and listens; [`Server::run`] serves.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    worker: WorkerLoop,
    db: Database,
    _lock: DirLock,
}

impl Server {
    /// Lock and open the data directory, recover from a previous crash, bind the address.
    pub async fn bind(config: ServeConfig) -> Result<Self, ServeError> {
        // Fail closed before touching anything: a forged request must never be accepted.
        let uses_test_token = config
            .secret
            .keys
            .iter()
            .any(|k| k.expose() == TEST_AUTH_TOKEN);
        if uses_test_token && config.is_exposed() && !config.insecure_public_test_token {
            return Err(ServeError::PublicTestToken { addr: config.addr });
        }
        let lock = DirLock::acquire(&config.data_dir)?;
        let db = Database::open_dir(&config.data_dir)?;
        let has_slow_work = !config.slow_work.is_empty();
        let recovered = db
            .recover(now_ms(), !has_slow_work)
            .await
            .map_err(|e| ServeError::Recover(e.to_string()))?;
        if !recovered.is_empty() {
            warn!(
                jobs_made_visible = recovered.jobs_made_visible,
                leases_dropped = recovered.leases_dropped,
                orphans_enqueued = recovered.orphans_enqueued,
                "recovered work left by a previous run that did not stop cleanly"
            );
        }
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| match source.kind() {
                    std::io::ErrorKind::AddrInUse => ServeError::AddrInUse { addr: config.addr },
                    _ => ServeError::Bind {
                        addr: config.addr,
                        source,
                    },
                })?;

        let store = Arc::new(SqliteStore::new(db.clone()));
        let mut queue = SqliteQueue::new(db.clone()).with_settings(config.queue);
        if !has_slow_work {
            // The worker folds in the database (below): a record can be its own job.
            queue = queue.with_records_as_jobs();
        }
        let queue = Arc::new(queue);
        // The queue records an event and its job in one transaction (its `Intake`).
        let pipeline = Pipeline::new(
            config.secret.validator,
            queue.clone(),
            config.policy,
            config.settings,
        )
        .with_log_pii(config.log_pii)
        .with_basic_auth(config.secret.basic_auth);
        let worker = config.slow_work.into_iter().fold(
            Worker::new(store.clone(), queue.clone(), config.worker),
            |w, work| w.with_work(work),
        );
        let mut loop_settings = config.worker_loop;
        if has_slow_work {
            loop_settings.concurrency = 1;
        }
        let worker = WorkerLoop::new(Arc::new(worker), queue)
            .with_store(store)
            .with_settings(loop_settings)
            .folding_in_database();
        Ok(Self {
            listener,
            app: Arc::new(App {
                pipeline,
                public_url: config.public_url,
                header_read_timeout: config.header_read_timeout,
                body_read_timeout: config.body_read_timeout,
                local_only: uses_test_token && !config.insecure_public_test_token,
            }),
            worker,
            db,
            _lock: lock,
        })
    }

    /// The address actually bound (port 0 picks a free one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The database it serves from.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests and the in-flight job.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (stop_worker, stop_rx) = watch::channel(false);
        let worker = tokio::spawn(self.worker.run(stop_rx));
        let header_timeout = self.app.header_read_timeout;
        let served = serve_http(self.listener, router(self.app), header_timeout, shutdown).await;
        info!("HTTP server stopped; letting the worker finish its current job");
        let _ = stop_worker.send(true);
        if let Err(e) = worker.await {
            warn!(error = %e, "worker task ended abnormally");
        }
        served.map_err(ServeError::Io)
    }
}

/// How long a client may take to send a request's headers, from its first byte (or, on a
/// kept-alive connection, from the end of the previous response). Twilio sends them at once;
/// a client that trickles them would otherwise hold a connection forever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body once its headers are in.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The accept loop: HTTP/1.1 connections with a header read timeout (which `axum::serve`
/// cannot set), served until `shutdown`, then drained.
async fn serve_http(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                // Out of file descriptors and the like: wait instead of spinning.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small replies, sent at once: Nagle's algorithm would only hold them back.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        let conn =
            http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    Ok(())
}

/// Bind and serve until Ctrl-C / SIGTERM.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    Server::bind(config).await?.run(shutdown_signal()).await
}

/// Resolves at Ctrl-C or (on Unix) SIGTERM, and logs which.
pub async fn shutdown_signal() {
    let name = termination_signal().await;
    info!(signal = name, "shutting down");
}

/// Resolves at Ctrl-C or (on Unix) SIGTERM with the signal's name; logs nothing.
pub async fn termination_signal() -> &'static str {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => "SIGINT",
        _ = term => "SIGTERM",
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/sms", webhook(Endpoint::Sms))
        .route("/voice", webhook(Endpoint::Voice))
        .route("/status", webhook(Endpoint::Status))
        .route("/fallback", webhook(Endpoint::Fallback))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app)
}

/// POST (and GET, which Twilio can be configured to use) on one endpoint.
fn webhook(endpoint: Endpoint) -> MethodRouter<Arc<App>> {
    let handler = move |State(app): State<Arc<App>>,
                        method: Method,
                        uri: Uri,
                        headers: HeaderMap,
                        body: Body| async move {
        let body = match tokio::time::timeout(
            app.body_read_timeout,
            axum::body::to_bytes(body, BODY_LIMIT),
        )
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                let limit = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return if limit {
                    (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response()
                } else {
                    (StatusCode::BAD_REQUEST, "could not read the request body\n").into_response()
                };
            }
            Err(_) => {
                warn!(
                    endpoint = endpoint.as_str(),
                    "request body not received in time"
                );
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time\n",
                )
                    .into_response();
            }
        };
        handle(&app, endpoint, method, uri, headers, body).await
    };
    post(handler).get(handler)
}

async fn handle(
    app: &App,
    endpoint: Endpoint,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if app.local_only && !is_local_request(&headers) {
        // A tunnel or proxy in front of a loopback address reaches it from outside, where
        // anyone can sign with the public test token.
        warn!(
            endpoint = endpoint.as_str(),
            "request from outside this machine refused: the public test token is in use \
             (give your auth token, or --insecure-public-test-token)"
        );
        return (
            StatusCode::FORBIDDEN,
            "Forbidden: this server uses the public test token and serves this machine only\n",
        )
            .into_response();
    }
    let url = match signed_url(app.public_url.as_ref(), &uri, &headers) {
        Some(url) => url,
        None => {
            let error = PipelineError::Url(UrlError::MissingHost);
            warn!(endpoint = endpoint.as_str(), %error, "request refused");
            return to_response(error.to_reply());
        }
    };
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let req = IncomingRequest {
        method,
        url,
        other_urls: Vec::new(),
        headers,
        body,
    };
    // The pipeline logs the request's summary line (status, duration, outcome).
    let reply = app.pipeline.handle(endpoint, &req).await;
    if reply.status == 403 && app.public_url.is_none() {
        if let Some(proto) = forwarded_proto {
            warn!(
                url = %webhook_pipeline::redact::url_for_log(&req.url, app.pipeline.log_pii()),
                x_forwarded_proto = %proto,
                "signature check failed on a request that came through a proxy or tunnel: \
                 pass --public-base-url with the URL Twilio calls"
            );
        }
    }
    to_response(reply)
}

/// A request made on this machine: a loopback `Host` and no proxy headers.
fn is_local_request(headers: &HeaderMap) -> bool {
    let proxied = [
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
    ]
    .iter()
    .any(|h| headers.contains_key(*h));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    // Strip the port: `127.0.0.1:3000`, `[::1]:3000`, `localhost:3000`.
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    // (No Host at all is refused further on: its URL cannot be rebuilt.)
    let loopback = name.is_empty()
        || name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback && !proxied
}

/// The URL Twilio signed: the public base URL when configured, else `http://<Host>`; then the
/// path and the raw query string, untouched.
fn signed_url(public: Option<&PublicBaseUrl>, uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let path = uri.path();
    let query = uri.query();
    match public {
        Some(base) => Some(base.join(path, query)),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty())?;
            Some(from_parts("http", host, path, query))
        }
    }
}

fn to_response(reply: Reply) -> Response {
    let mut res = Response::new(Body::from(reply.body));
    *res.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(ct) = reply
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
    {
        res.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    if let Some(challenge) = reply
        .www_authenticate
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    res
}
