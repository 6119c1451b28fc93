//! Small helpers shared by the subcommands.

use twilio_webhook::AuthToken;
use webhook_pipeline::config::TEST_AUTH_TOKEN;

/// A one-line error for the user.
pub type CliResult = Result<std::process::ExitCode, String>;

/// Quote for a POSIX shell: `'...'`, with embedded single quotes closed and escaped.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The auth token to use: the given one, or the documented test token when none is given
/// (`true`: say so with [`warn_test_token`]). A given but blank token is an error, never a
/// silent fallback: an empty HMAC key is one anyone can sign with.
pub fn token_or_test(token: Option<String>) -> Result<(AuthToken, bool), String> {
    match token {
        Some(t) => AuthToken::new(&t)
            .map(|t| (t, false))
            .map_err(|_| "the auth token (--auth-token / TWILIO_AUTH_TOKEN) is blank".to_owned()),
        None => Ok((
            AuthToken::new(TEST_AUTH_TOKEN).expect("the test token is not blank"),
            true,
        )),
    }
}

/// Tell the user the public test token is in use (`loud`: a box for `serve`).
pub fn warn_test_token(loud: bool) {
    if loud {
        eprintln!(
            "\n\
                     ************************************************************************\n\
                     * WARNING: no auth token (--auth-token or TWILIO_AUTH_TOKEN).          *\n\
                     * Using the PUBLIC TEST TOKEN {TEST_AUTH_TOKEN}.        *\n\
                     * Only requests signed with it (the printed curl command, or           *\n\
                     * `twilio-webhooks sign`) are accepted: real Twilio requests get 403.  *\n\
                     ************************************************************************\n"
        );
    } else {
        eprintln!(
            "warning: no --auth-token / TWILIO_AUTH_TOKEN; signing with the public test token"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("http://h/sms"), "http://h/sms");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("x&y"), "'x&y'");
    }
}
