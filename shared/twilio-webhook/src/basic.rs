//! HTTP Basic authentication, Twilio's optional second factor. With a webhook URL of the form
//! `https://user:pass@host/path`, Twilio first sends the request without `Authorization`,
//! expects `401` with a `WWW-Authenticate: Basic` challenge, then sends it again with the
//! credentials. The credentials are not part of what Twilio signs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The challenge sent with a 401.
pub const CHALLENGE: &str = "Basic realm=\"twilio-webhooks\", charset=\"UTF-8\"";

/// Expected Basic credentials. `Debug` never prints the password.
#[derive(Clone)]
pub struct BasicAuth {
    username: String,
    /// SHA-256 of `username:password`: compared in constant time, whatever the lengths.
    expected: [u8; 32],
    password: Box<str>,
}

/// Why Basic credentials are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicAuthError {
    /// No `Authorization: Basic` header: Twilio's first try, answered with the challenge.
    #[error("no Basic credentials (Twilio sends them after a 401 challenge)")]
    Missing,
    /// Credentials present but not the configured ones (or not decodable).
    #[error("wrong Basic credentials")]
    Wrong,
}

/// A username or password that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCredentials {
    /// The username is empty or only whitespace.
    #[error("the Basic auth username is empty or blank")]
    BlankUsername,
    /// The password is empty or only whitespace.
    #[error("the Basic auth password is empty or blank")]
    BlankPassword,
    /// A colon in the username would split `user:pass` in the wrong place.
    #[error("the Basic auth username cannot contain ':'")]
    ColonInUsername,
}

impl BasicAuth {
    /// Credentials compared exactly as given; blank ones and a username with `:` are refused.
    pub fn new(username: &str, password: &str) -> Result<Self, BadCredentials> {
        // Compared exactly as configured (a space may be part of a password); blank ones
        // are refused.
        if username.trim().is_empty() {
            return Err(BadCredentials::BlankUsername);
        }
        if password.trim().is_empty() {
            return Err(BadCredentials::BlankPassword);
        }
        if username.contains(':') {
            return Err(BadCredentials::ColonInUsername);
        }
        Ok(Self {
            username: username.to_owned(),
            expected: Sha256::digest(format!("{username}:{password}")).into(),
            password: password.into(),
        })
    }

    /// `USER:PASS`, split at the first colon.
    pub fn parse(pair: &str) -> Result<Self, BadCredentials> {
        let (user, pass) = pair.split_once(':').unwrap_or((pair, ""));
        Self::new(user, pass)
    }

    /// The configured username.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password, for putting into the URL given to Twilio.
    pub fn expose_password(&self) -> &str {
        &self.password
    }

    /// Check an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), BasicAuthError> {
        let Some(value) = authorization else {
            return Err(BasicAuthError::Missing);
        };
        let value = value.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(BasicAuthError::Missing);
        }
        let Ok(decoded) = BASE64.decode(token.trim()) else {
            return Err(BasicAuthError::Wrong);
        };
        let given: [u8; 32] = Sha256::digest(&decoded).into();
        if bool::from(given.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(BasicAuthError::Wrong)
        }
    }

    /// The `Authorization` header value for these credentials (tests, clients).
    pub fn header_value(&self) -> String {
        format!(
            "Basic {}",
            BASE64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_credentials() {
        let auth = BasicAuth::new("twilio", "s3cret:with:colons").unwrap();
        assert_eq!(auth.check(Some(&auth.header_value())), Ok(()));
        assert_eq!(auth.check(None), Err(BasicAuthError::Missing));
        assert_eq!(auth.check(Some("Bearer abc")), Err(BasicAuthError::Missing));
        for wrong in [
            "twilio:s3cret",
            "twilio:s3cret:with:colons ",
            "Twilio:s3cret:with:colons",
            "",
        ] {
            let header = format!("Basic {}", BASE64.encode(wrong));
            assert_eq!(
                auth.check(Some(&header)),
                Err(BasicAuthError::Wrong),
                "{wrong:?}"
            );
        }
        assert_eq!(auth.check(Some("Basic !!!")), Err(BasicAuthError::Wrong));
        // Case of the scheme does not matter (RFC 7617).
        let lower = auth.header_value().replacen("Basic", "basic", 1);
        assert_eq!(auth.check(Some(&lower)), Ok(()));
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert_eq!(BasicAuth::parse("u:p:q").unwrap().expose_password(), "p:q");
    }

    #[test]
    fn refuses_credentials_that_cannot_work() {
        assert_eq!(
            BasicAuth::new(" ", "p").unwrap_err(),
            BadCredentials::BlankUsername
        );
        assert_eq!(
            BasicAuth::new("u", "").unwrap_err(),
            BadCredentials::BlankPassword
        );
        assert_eq!(
            BasicAuth::new("a:b", "p").unwrap_err(),
            BadCredentials::ColonInUsername
        );
        assert_eq!(
            BasicAuth::parse("user").unwrap_err(),
            BadCredentials::BlankPassword
        );
    }
}
