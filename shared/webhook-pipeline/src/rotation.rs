//! Token rotation without downtime.
//!
//! The secret is read once at cold start. After "Promote" in the Twilio console, Twilio signs
//! with a token a warm instance does not hold yet: on a refused signature, the pipeline asks
//! [`Rotating::refreshed`] for newer credentials and checks the request once more. A read
//! happens at most once per interval per instance, and concurrent requests share it (they wait
//! on one lock, held during the read), so a flood of forged requests costs at most one read
//! per interval. A read that fails, or gives an invalid secret, keeps the old credentials.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{info, warn};
use twilio_webhook::Validator;
use twilio_webhook::basic::BasicAuth;

use crate::config::{ConfigError, Secret};

/// Default interval between two reads of the secret (`SECRET_REFRESH_SECONDS`).
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What checks a request: the signature validator and the Basic credentials, replaced together.
#[derive(Clone)]
pub struct Credentials {
    /// Verifies `X-Twilio-Signature`.
    pub validator: Validator,
    /// The HTTP Basic credentials Twilio must send, if configured.
    pub basic_auth: Option<BasicAuth>,
}

impl From<Secret> for Credentials {
    fn from(secret: Secret) -> Self {
        Self {
            validator: secret.validator,
            basic_auth: secret.basic_auth,
        }
    }
}

/// Why the secret could not be read again.
#[derive(Debug, thiserror::Error)]
pub enum SecretSourceError {
    /// The read itself failed (network, permissions, throttling).
    #[error("reading the secret failed: {0}")]
    Read(String),
    /// The secret was read, but is unusable (blank, bad JSON, the public test token...).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Where the secret comes from (Secrets Manager in Lambda): read again on a refused signature.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// Read the secret now.
    async fn read(&self) -> Result<Secret, SecretSourceError>;
}

/// The current credentials, shared by every request, and how to read newer ones.
pub struct Rotating {
    current: ArcSwap<Credentials>,
    refresh: Option<Refresh>,
}

struct Refresh {
    source: Arc<dyn SecretSource>,
    interval: Duration,
    /// When the last read started. Held during a read: concurrent requests wait for it
    /// instead of starting their own.
    last_read: Mutex<Option<Instant>>,
}

impl Rotating {
    /// Fixed credentials, never read again (until [`Rotating::with_source`]).
    pub fn new(credentials: Credentials) -> Self {
        Self {
            current: ArcSwap::from_pointee(credentials),
            refresh: None,
        }
    }

    /// Read newer credentials from `source` on a refused request, at most once per `interval`
    /// (`Duration::ZERO`: never).
    pub fn with_source(mut self, source: Arc<dyn SecretSource>, interval: Duration) -> Self {
        self.refresh = (!interval.is_zero()).then(|| Refresh {
            source,
            interval,
            last_read: Mutex::new(None),
        });
        self
    }

    /// Change the credentials while the owner is being built (nothing shares them yet).
    pub fn map(self, f: impl FnOnce(Credentials) -> Credentials) -> Self {
        let current = Arc::unwrap_or_clone(self.current.into_inner());
        Self {
            current: ArcSwap::from_pointee(f(current)),
            refresh: self.refresh,
        }
    }

    /// The current credentials: the per-request path (no lock, no copy).
    pub fn load(&self) -> Guard<Arc<Credentials>> {
        self.current.load()
    }

    /// Whether a refused request may be checked again with newer credentials.
    pub fn refreshes(&self) -> bool {
        self.refresh.is_some()
    }

    /// Credentials newer than `seen` (which refused a request), or `None` if there are none
    /// to try: the secret was read less than an interval ago, the read failed, or reads are
    /// off. Concurrent callers share one read.
    pub async fn refreshed(&self, seen: &Arc<Credentials>) -> Option<Arc<Credentials>> {
        let refresh = self.refresh.as_ref()?;
        let newer = || {
            let current = self.current.load_full();
            (!Arc::ptr_eq(&current, seen)).then_some(current)
        };
        // Another request's read already replaced what refused this one.
        if let Some(current) = newer() {
            return Some(current);
        }
        let mut last_read = refresh.last_read.lock().await;
        // The read this request waited for.
        if let Some(current) = newer() {
            return Some(current);
        }
        let now = Instant::now();
        if last_read.is_some_and(|t| now.duration_since(t) < refresh.interval) {
            return None;
        }
        *last_read = Some(now);
        match refresh.source.read().await {
            Ok(secret) => {
                let accounts = secret.validator.account_count();
                let default = secret.validator.has_default();
                let fresh = Arc::new(Credentials::from(secret));
                self.current.store(fresh.clone());
                info!(
                    accounts,
                    default, "auth secret read again after a refused request"
                );
                Some(fresh)
            }
            Err(e) => {
                warn!(error = %e, "could not read the auth secret again; keeping the current one");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use twilio_webhook::AuthToken;

    use super::*;

    /// A source returning whatever `next` holds, counting reads.
    struct Fake {
        next: std::sync::Mutex<Result<String, String>>,
        reads: AtomicUsize,
        delay: Duration,
    }

    impl Fake {
        fn new(secret: &str) -> Arc<Self> {
            Arc::new(Self {
                next: std::sync::Mutex::new(Ok(secret.to_owned())),
                reads: AtomicUsize::new(0),
                delay: Duration::from_millis(50),
            })
        }
        fn set(&self, next: Result<&str, &str>) {
            *self.next.lock().unwrap() = next.map(str::to_owned).map_err(str::to_owned);
        }
        fn reads(&self) -> usize {
            self.reads.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl SecretSource for Fake {
        async fn read(&self) -> Result<Secret, SecretSourceError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let next = self.next.lock().unwrap().clone();
            Ok(Secret::parse(&next.map_err(SecretSourceError::Read)?, "S")?)
        }
    }

    const OLD: &str = "0123456789abcdef0123456789abcdef";
    const NEW: &str = "fedcba9876543210fedcba9876543210";

    fn signs(c: &Credentials, token: &str) -> bool {
        use twilio_webhook::signature::SignedRequest;
        let url = "https://h.example.com/sms";
        let sig = twilio_webhook::sign(&AuthToken::new(token).unwrap(), url, &Default::default());
        c.validator
            .verify(&SignedRequest {
                method: "POST",
                url,
                content_type: None,
                body: b"",
                signature: Some(&sig),
                signature_settings: None,
            })
            .is_ok()
    }

    fn rotating(source: Arc<Fake>, interval: Duration) -> Rotating {
        let old = Secret::parse(OLD, "S").unwrap();
        Rotating::new(old.into()).with_source(source, interval)
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_request_reads_the_secret_once_per_interval() {
        let source = Fake::new(NEW);
        let r = rotating(source.clone(), Duration::from_secs(30));
        let seen = r.load().clone();
        assert!(!signs(&seen, NEW));
        let fresh = r.refreshed(&seen).await.expect("new credentials");
        assert!(signs(&fresh, NEW) && signs(&r.load(), NEW));
        assert_eq!(source.reads(), 1);
        // A request refused by the fresh credentials (a forgery) within the window: no read.
        assert!(r.refreshed(&fresh).await.is_none());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(r.refreshed(&fresh).await.is_none());
        assert_eq!(source.reads(), 1);
        // A request that loaded the old credentials before the swap gets the new ones.
        assert!(Arc::ptr_eq(&r.refreshed(&seen).await.unwrap(), &fresh));
        assert_eq!(source.reads(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.refreshed(&fresh).await.is_some());
        assert_eq!(source.reads(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_refusals_share_one_read() {
        let source = Fake::new(NEW);
        let r = Arc::new(rotating(source.clone(), Duration::from_secs(30)));
        let seen = r.load().clone();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (r, seen) = (r.clone(), seen.clone());
                tokio::spawn(async move { r.refreshed(&seen).await })
            })
            .collect();
        for t in tasks {
            let fresh = t
                .await
                .unwrap()
                .expect("every waiter gets the new credentials");
            assert!(signs(&fresh, NEW));
        }
        assert_eq!(source.reads(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_invalid_read_keeps_the_old_credentials() {
        let source = Fake::new(NEW);
        let r = rotating(source.clone(), Duration::from_secs(30));
        let seen = r.load().clone();
        for (i, next) in [Err("network down"), Ok("  "), Ok(r#"{"auth_token":"x"}"#)]
            .into_iter()
            .enumerate()
        {
            source.set(next);
            assert!(r.refreshed(&seen).await.is_none(), "{next:?}");
            assert!(Arc::ptr_eq(&r.load(), &seen), "{next:?}");
            assert!(signs(&r.load(), OLD));
            assert_eq!(source.reads(), i + 1);
            // And the next read waits for the window.
            assert!(r.refreshed(&seen).await.is_none());
            assert_eq!(source.reads(), i + 1);
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        source.set(Ok(NEW));
        assert!(signs(&r.refreshed(&seen).await.unwrap(), NEW));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_of_zero_never_reads() {
        let source = Fake::new(NEW);
        let r = rotating(source.clone(), Duration::ZERO);
        assert!(!r.refreshes());
        let seen = r.load().clone();
        assert!(r.refreshed(&seen).await.is_none());
        assert_eq!(source.reads(), 0);
    }
}
