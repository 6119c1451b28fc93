//! URLs as logs may show them. Webhook URLs carry personal data in their query (GET webhooks
//! put From, To and Body there) and operator URLs may carry secrets (`?api_key=`, userinfo).

use std::borrow::Cow;

/// Scheme, host and path only: no userinfo, query or fragment. For URLs the operator set
/// (`FORWARD_URL`), whose query may be a credential.
pub fn redact_url(url: &str) -> String {
    let url = &url[..url.find(['?', '#']).unwrap_or(url.len())];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
            format!("{scheme}://{}", &rest[host_start..])
        }
        None => url.to_owned(),
    }
}

/// A webhook URL for a log line: scheme, host, path and the query's parameter names, each
/// value replaced by `***` (what a signature mismatch is debugged with), unless `pii` is on
/// (`LOG_PII`). Userinfo is always dropped.
pub fn url_for_log(url: &str, pii: bool) -> Cow<'_, str> {
    if pii {
        return match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => Cow::Owned(format!("{scheme}://{}", &rest[at + 1..])),
                    None => Cow::Borrowed(url),
                }
            }
            None => Cow::Borrowed(url),
        };
    }
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = redact_url(base);
    if let Some(query) = query {
        let query = query.split('#').next().unwrap_or_default();
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                None => out.push_str(pair),
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_urls_keep_scheme_host_and_path() {
        assert_eq!(
            redact_url("https://u:p@h.example.com:8443/a/b?k=v#f"),
            "https://h.example.com:8443/a/b"
        );
        assert_eq!(
            redact_url("https://h.example.com/a?k=v"),
            "https://h.example.com/a"
        );
        assert_eq!(redact_url("https://h.example.com"), "https://h.example.com");
        assert_eq!(
            redact_url("https://h.example.com/p@th?x"),
            "https://h.example.com/p@th"
        );
    }

    #[test]
    fn webhook_urls_keep_parameter_names_only() {
        let url = "https://h.example.com/prod/sms?From=%2B14155550100&Body=hello+there&flag&To=";
        assert_eq!(
            url_for_log(url, false),
            "https://h.example.com/prod/sms?From=***&Body=***&flag&To=***"
        );
        assert_eq!(url_for_log(url, true), url);
        assert_eq!(
            url_for_log("https://u:pw@h.example.com/sms?a=1", true),
            "https://h.example.com/sms?a=1"
        );
        assert_eq!(
            url_for_log("https://h.example.com/sms", false),
            "https://h.example.com/sms"
        );
        assert_eq!(
            url_for_log("https://user:pw@h.example.com/sms?a=1#frag", false),
            "https://h.example.com/sms?a=***"
        );
    }
}
