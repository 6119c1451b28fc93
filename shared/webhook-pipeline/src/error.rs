//! The one place where failures become HTTP statuses.
//!
//! - missing / wrong Basic credentials (when configured) → 401 with the challenge;
//! - missing / wrong signature → 403 (Twilio's own middleware says 400 for a missing header;
//!   we answer 403 for both so a prober learns nothing);
//! - unreadable request → 400 (a retry would fail the same way);
//! - our store or queue failed → 503, so Twilio retries (with `#rp=5xx`) or calls the fallback URL;
//! - our own configuration cannot check the request → 500.

use twilio_webhook::basic::BasicAuthError;
use twilio_webhook::payload::PayloadError;
use twilio_webhook::signature::SignatureError;
use twilio_webhook::url::UrlError;

use crate::intake::IntakeError;
use crate::reply::Reply;
use crate::store::PortError;

/// Why the pipeline refused or failed a request; [`PipelineError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The `X-Twilio-Signature` check failed: 403 (400 for an unreadable request, 500 when our
    /// configuration cannot check it).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// HTTP Basic credentials missing or wrong (when configured): 401 with the challenge.
    #[error(transparent)]
    Unauthorized(#[from] BasicAuthError),
    /// The URL Twilio signed cannot be rebuilt: 403 (400 without a host).
    #[error("cannot rebuild the signed URL: {0}")]
    Url(#[from] UrlError),
    /// The verified parameters are not a valid payload of the endpoint: 400.
    #[error("bad payload: {0}")]
    Payload(#[from] PayloadError),
    /// The request body cannot be read: 400.
    #[error("request body is not valid: {0}")]
    BadRequest(String),
    /// The event store failed: 503, so Twilio retries or calls the fallback.
    #[error("event store failed: {0}")]
    Store(PortError),
    /// The work queue failed: 503, so Twilio retries or calls the fallback.
    #[error("work queue failed: {0}")]
    Queue(PortError),
    /// The function's configuration cannot check requests (logged once at cold start).
    #[error("misconfigured: see the cold start log")]
    Misconfigured,
}

impl From<IntakeError> for PipelineError {
    fn from(e: IntakeError) -> Self {
        match e {
            IntakeError::Store(e) => Self::Store(e),
            IntakeError::Queue(e) => Self::Queue(e),
        }
    }
}

impl PipelineError {
    /// The HTTP status of the answer (see the module docs).
    pub fn status(&self) -> u16 {
        match self {
            Self::Signature(e) if e.is_server_error() => 500,
            Self::Signature(e) if e.is_malformed() => 400,
            Self::Signature(_) => 403,
            Self::Unauthorized(_) => 401,
            // The URL Twilio signed cannot be known: refusing is the only safe answer.
            Self::Url(UrlError::MissingHost) => 400,
            Self::Url(_) => 403,
            Self::Payload(_) | Self::BadRequest(_) => 400,
            Self::Store(_) | Self::Queue(_) => 503,
            Self::Misconfigured => 500,
        }
    }

    /// A short plain-text reply; details go to the log, not to the caller.
    pub fn to_reply(&self) -> Reply {
        let text = match self.status() {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let mut reply = Reply::text(self.status(), text);
        if let Self::Unauthorized(_) = self {
            reply.www_authenticate = Some(twilio_webhook::basic::CHALLENGE.to_owned());
        }
        reply
    }
}
