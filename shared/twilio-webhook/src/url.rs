//! The URL Twilio signed, rebuilt from the parts of the request that reached us.
//!
//! Runtime-specific adapters (API Gateway events, the local server) extract the parts; this
//! module only joins them, so the rule lives in one place: `scheme://host` (or a configured
//! public base URL) + the path Twilio requested + the raw query string, untouched.

use std::fmt;
use std::str::FromStr;

/// Why the signed URL cannot be rebuilt, or a base URL is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// The configured base URL is not `http(s)://host[/path]`.
    #[error("public base URL must start with http:// or https:// and have a host: {0:?}")]
    BadBaseUrl(String),
    /// The configured base URL has a `?` or `#`: the request's own query is appended to it.
    #[error("public base URL must not carry a query string or fragment: {0:?}")]
    BaseUrlWithQuery(String),
    /// No `Host` header and no configured base URL.
    #[error("request has no Host header, so the signed URL cannot be rebuilt")]
    MissingHost,
    /// The runtime's event lost the exact query string Twilio signed; the text says how.
    #[error(
        "the query string of this request cannot be recovered byte for byte ({0}); \
         use an HTTP API / Function URL, or a webhook URL without a query string"
    )]
    QueryNotRecoverable(&'static str),
}

/// The public base URL of the deployment, for custom domains and tunnels:
/// `https://hooks.example.com/twilio` replaces scheme, host and any API Gateway stage or base
/// path, and the request's own path and query string are appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicBaseUrl(String);

impl FromStr for PublicBaseUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or_else(|| UrlError::BadBaseUrl(s.to_owned()))?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(UrlError::BadBaseUrl(s.to_owned()));
        }
        if s.contains(['?', '#']) {
            return Err(UrlError::BaseUrlWithQuery(s.to_owned()));
        }
        Ok(Self(s.trim_end_matches('/').to_owned()))
    }
}

impl fmt::Display for PublicBaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PublicBaseUrl {
    /// The base URL, without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base + path + ?query` (path relative to the function, e.g. `/sms`).
    pub fn join(&self, path: &str, raw_query: Option<&str>) -> String {
        join(&self.0, path, raw_query)
    }
}

/// `scheme://host + path + ?query`, with the query string exactly as received.
pub fn from_parts(scheme: &str, host: &str, path: &str, raw_query: Option<&str>) -> String {
    join(&format!("{scheme}://{host}"), path, raw_query)
}

fn join(base: &str, path: &str, raw_query: Option<&str>) -> String {
    let mut url = String::with_capacity(base.len() + path.len() + 64);
    url.push_str(base);
    if !path.starts_with('/') && !path.is_empty() {
        url.push('/');
    }
    url.push_str(path);
    if let Some(q) = raw_query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_replaces_scheme_host_and_stage() {
        let base: PublicBaseUrl = "https://hooks.example.com/twilio/".parse().unwrap();
        assert_eq!(
            base.join("/sms", Some("b=2&a=1")),
            "https://hooks.example.com/twilio/sms?b=2&a=1"
        );
        assert_eq!(
            base.join("/sms", Some("")),
            "https://hooks.example.com/twilio/sms"
        );
        assert_eq!(
            base.join("/sms", None),
            "https://hooks.example.com/twilio/sms"
        );
    }

    #[test]
    fn base_url_rejects_what_cannot_be_a_base() {
        assert!(matches!(
            "ftp://x".parse::<PublicBaseUrl>(),
            Err(UrlError::BadBaseUrl(_))
        ));
        assert!(matches!(
            "https://".parse::<PublicBaseUrl>(),
            Err(UrlError::BadBaseUrl(_))
        ));
        assert!(matches!(
            "https://x.com/a?b=1".parse::<PublicBaseUrl>(),
            Err(UrlError::BaseUrlWithQuery(_))
        ));
    }

    #[test]
    fn parts_keep_query_bytes() {
        assert_eq!(
            from_parts(
                "https",
                "abc.execute-api.us-east-1.amazonaws.com",
                "/prod/sms",
                Some("z=%41&a=1+2")
            ),
            "https://abc.execute-api.us-east-1.amazonaws.com/prod/sms?z=%41&a=1+2"
        );
    }
}
