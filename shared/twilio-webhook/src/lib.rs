//! Twilio webhook protocol, with no AWS, Lambda or async runtime dependency.
//!
//! - [`signature`]: `X-Twilio-Signature` (HMAC-SHA1 over URL + sorted params, and the HMAC-SHA256
//!   shared-key variant), constant-time, with token rotation.
//! - [`url`]: the URL Twilio signed, rebuilt from request parts.
//! - [`form`]: an `application/x-www-form-urlencoded` parser that keeps order, duplicates and blanks.
//! - [`payload`]: typed webhook payloads, reachable only from a [`VerifiedRequest`].
//! - [`twiml`]: TwiML builders for replies.
//! - [`basic`]: HTTP Basic authentication, Twilio's optional second factor.

#![warn(missing_docs)]

pub mod basic;
pub mod form;
pub mod payload;
pub mod signature;
pub mod twiml;
pub mod url;

pub use form::{FormError, FormParams};
pub use signature::{AuthToken, BlankSecret, SignatureError, Validator, VerifiedRequest, sign};
