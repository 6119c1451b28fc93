//! Configuration read once at cold start. Every environment variable the Lambda functions read
//! is named here or in `webhook_pipeline::config` (the template check relies on it).

use twilio_webhook::url::PublicBaseUrl;
use twilio_webhook::{AuthToken, Validator};
use webhook_pipeline::config::{ConfigError, Secret, var};

/// The DynamoDB table of event, state and consent records.
pub const EVENT_TABLE: &str = "EVENT_TABLE";
/// The SQS work queue (the webhook functions and the sweeper send to it).
pub const WORK_QUEUE_URL: &str = "WORK_QUEUE_URL";
/// The public base URL when Twilio calls a custom domain or proxy: the signed URL is this +
/// the route path + the raw query string.
pub const PUBLIC_BASE_URL: &str = "PUBLIC_BASE_URL";
/// Secrets Manager secret: the bare auth token, or
/// `{"auth_token": ..., "secondary_auth_token": ..., "accounts": {"AC...": {"auth_token": ...,
/// "secondary_auth_token": ...}}, "shared_keys": {"<key id>": "<secret>"},
/// "basic_auth": {"username": ..., "password": ...}}` (see `webhook_pipeline::config::Secret`).
pub const TWILIO_AUTH_TOKEN_SECRET_ARN: &str = "TWILIO_AUTH_TOKEN_SECRET_ARN";
/// On a refused request, read the secret again at most once per this many seconds (default
/// 30; 0: never, the secret is read at cold start only).
pub const SECRET_REFRESH_SECONDS: &str = "SECRET_REFRESH_SECONDS";
/// Longest `SECRET_REFRESH_SECONDS`: a day.
pub const MAX_SECRET_REFRESH_SECONDS: u64 = 24 * 3600;
/// For local runs (`cargo lambda watch`) only; production reads the secret.
pub const TWILIO_AUTH_TOKEN: &str = "TWILIO_AUTH_TOKEN";
/// The secondary token during a rotation, beside `TWILIO_AUTH_TOKEN` (local runs only).
pub const TWILIO_SECONDARY_AUTH_TOKEN: &str = "TWILIO_SECONDARY_AUTH_TOKEN";
/// EventBridge bus the worker sends each processed event to (unset = off); see `eventbridge`.
pub const EVENT_BUS_NAME: &str = "EVENT_BUS_NAME";
/// The SDK's endpoint override (moto locally). Empty counts as unset, as for every variable
/// here: the template declares it empty so that `sam local --env-vars` may set it.
pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
/// `json` or `text`; wins over `AWS_LAMBDA_LOG_FORMAT` (see `crate::logging`).
pub const LOG_FORMAT: &str = "LOG_FORMAT";
/// Set by Lambda from the function's `LoggingConfig.LogFormat`: `JSON` or `Text`.
pub const AWS_LAMBDA_LOG_FORMAT: &str = "AWS_LAMBDA_LOG_FORMAT";
/// Set by Lambda from `LoggingConfig.ApplicationLogLevel` (JSON format): TRACE to FATAL.
pub use webhook_pipeline::metrics::AWS_LAMBDA_LOG_LEVEL;
/// A `tracing` filter (`info`, `warn,webhook_pipeline=debug`); wins over `AWS_LAMBDA_LOG_LEVEL`.
pub const RUST_LOG: &str = "RUST_LOG";
/// Roots the AWS SDK trusts: `system` (default, the OS bundle) or `amazon` (the five Amazon
/// Trust Services roots built into the binary, which every AWS endpoint chains to: about 4 ms
/// less cold start than parsing the OS bundle). template.yaml sets `amazon`; keep `system` for
/// an HTTPS proxy that re-signs traffic or a custom `AWS_ENDPOINT_URL` over HTTPS.
pub const TLS_TRUST_STORE: &str = "TLS_TRUST_STORE";

/// The Amazon Trust Services roots, PEM.
pub const AMAZON_ROOTS_PEM: &[u8] = include_bytes!("../certs/amazon-trust-services.pem");

/// Which roots the SDK's HTTPS client trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustStore {
    /// The OS bundle (`system`, the default).
    System,
    /// The Amazon Trust Services roots built in ([`AMAZON_ROOTS_PEM`]; `amazon`).
    Amazon,
}

/// `TLS_TRUST_STORE`: `system` when unset, anything but `system`/`amazon` an error.
pub fn trust_store() -> Result<TrustStore, ConfigError> {
    match var(TLS_TRUST_STORE).as_deref() {
        None | Some("system") => Ok(TrustStore::System),
        Some("amazon") => Ok(TrustStore::Amazon),
        Some(other) => Err(ConfigError {
            name: TLS_TRUST_STORE,
            reason: format!("is {other:?}; expected \"system\" or \"amazon\""),
        }),
    }
}

/// The value of `name`; unset or blank is an error.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError {
        name,
        reason: "is required".into(),
    })
}

/// `PUBLIC_BASE_URL`, parsed; `None` when unset.
pub fn public_base_url() -> Result<Option<PublicBaseUrl>, ConfigError> {
    var(PUBLIC_BASE_URL)
        .map(|v| {
            v.parse().map_err(|e| ConfigError {
                name: PUBLIC_BASE_URL,
                reason: format!("{e}"),
            })
        })
        .transpose()
}

/// How often, at most, a refused request may cause the secret to be read again
/// (`SECRET_REFRESH_SECONDS`; zero: never).
pub fn secret_refresh_interval() -> Result<std::time::Duration, ConfigError> {
    webhook_pipeline::config::secs(
        SECRET_REFRESH_SECONDS,
        webhook_pipeline::rotation::DEFAULT_REFRESH_INTERVAL,
        0..=MAX_SECRET_REFRESH_SECONDS,
    )
}

/// The validator of a secret string (see [`webhook_pipeline::config::Secret::parse`]).
pub fn validator_from_secret(secret: &str) -> Result<Validator, ConfigError> {
    Ok(Secret::parse(secret, TWILIO_AUTH_TOKEN_SECRET_ARN)?.validator)
}

/// Tokens from plain environment variables (local development). `Ok(None)` when
/// `TWILIO_AUTH_TOKEN` is unset; a set but blank variable counts as unset (SAM passes "").
pub fn validator_from_env() -> Result<Option<Validator>, ConfigError> {
    let Some(primary) = var(TWILIO_AUTH_TOKEN) else {
        return Ok(None);
    };
    let token = |name: &'static str, value: String| {
        AuthToken::new(value).map_err(|_| ConfigError {
            name,
            reason: "is blank".into(),
        })
    };
    let secondary = var(TWILIO_SECONDARY_AUTH_TOKEN)
        .map(|s| token(TWILIO_SECONDARY_AUTH_TOKEN, s))
        .transpose()?;
    Ok(Some(
        Validator::new(token(TWILIO_AUTH_TOKEN, primary)?).with_secondary(secondary),
    ))
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    /// `TLS_TRUST_STORE=amazon` must hold exactly the five Amazon Trust Services roots, each a
    /// parsable self-signed certificate (a broken file would fail every AWS call in production).
    #[test]
    fn amazon_trust_store_is_the_five_amazon_roots() {
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(AMAZON_ROOTS_PEM)
            .collect::<Result<_, _>>()
            .expect("valid PEM");
        let names = [
            "Amazon Root CA 1",
            "Amazon Root CA 2",
            "Amazon Root CA 3",
            "Amazon Root CA 4",
            "Starfield Services Root Certificate Authority - G2",
        ];
        assert_eq!(certs.len(), names.len());
        for (cert, name) in certs.iter().zip(names) {
            let der: &[u8] = cert.as_ref();
            // Issuer and subject both name it: the CN appears twice in a self-signed root.
            let count = der
                .windows(name.len())
                .filter(|w| *w == name.as_bytes())
                .count();
            assert_eq!(count, 2, "{name} is not a self-signed root here");
        }
        // Each one is usable as a trust anchor (webpki parses it, as the TLS client will).
        let mut roots = rustls::RootCertStore::empty();
        assert_eq!(roots.add_parsable_certificates(certs), (names.len(), 0));
        let _client = crate::amazon_roots_client();
    }

    use super::*;

    #[test]
    fn secret_formats() {
        assert!(validator_from_secret("0123456789abcdef0123456789abcdef").is_ok());
        assert!(validator_from_secret(r#"{"auth_token":"0123456789abcdef0123456789abcdef","secondary_auth_token":"fedcba9876543210fedcba9876543210"}"#).is_ok());
        assert!(validator_from_secret(r#"{"token":"a"}"#).is_err());
        // A SharedKey from the secret validates an HMAC-SHA256 webhook naming it.
        use twilio_webhook::signature::{Algorithm, SignedRequest, sign_with};
        let v = validator_from_secret(r#"{"auth_token":"0123456789abcdef0123456789abcdef","shared_keys":{"k1":"s1","k2":"s2"}}"#)
            .unwrap();
        let url = "https://h.example.com/sms";
        let sig = sign_with(
            Algorithm::HmacSha256,
            &AuthToken::new("s2").unwrap(),
            url,
            &Default::default(),
        );
        let req = SignedRequest {
            method: "POST",
            url,
            content_type: None,
            body: b"",
            signature: Some(&sig),
            signature_settings: Some("key=k2,algorithm=HMAC_SHA256"),
        };
        assert!(v.verify(&req).is_ok());
        let req = SignedRequest {
            signature_settings: Some("key=k1,algorithm=HMAC_SHA256"),
            ..req
        };
        assert!(v.verify(&req).is_err());
        assert!(validator_from_secret("  ").is_err());
    }

    /// An empty HMAC key is one anyone can sign with: every blank value, in every place a
    /// secret can hold one, must be refused (not skipped, not used).
    #[test]
    fn blank_secret_values_are_configuration_errors() {
        for secret in [
            "",
            " \n",
            r#"{"auth_token":""}"#,
            r#"{"auth_token":"  "}"#,
            r#"{"auth_token":"\n\t"}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","secondary_auth_token":""}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","secondary_auth_token":" "}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","shared_keys":{"k1":""}}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","shared_keys":{"k1":"s1","k2":"  "}}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","shared_keys":{" ":"s1"}}"#,
        ] {
            let err = validator_from_secret(secret).expect_err(secret);
            assert_eq!(err.name, TWILIO_AUTH_TOKEN_SECRET_ARN, "{secret}");
            assert!(err.reason.contains("blank"), "{secret}: {}", err.reason);
        }
    }

    /// A placeholder left in, or anything that is not an auth token's shape, is refused.
    #[test]
    fn auth_tokens_must_look_like_auth_tokens() {
        for secret in [
            "<your auth token>",
            "abc",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdefg",
            "0123456789abcdef0123456789abcdez",
            r#"{"auth_token":"<your auth token>"}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","secondary_auth_token":"x"}"#,
        ] {
            let err = validator_from_secret(secret).expect_err(secret);
            assert!(
                err.reason.contains("32 hexadecimal"),
                "{secret}: {}",
                err.reason
            );
        }
    }

    /// A malformed secret is reported without quoting any of its values.
    #[test]
    fn secret_errors_never_quote_the_secret() {
        for secret in [
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basic_auth":"twilio:s3cret-pw"}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","shared_keys":"s3cret-pw"}"#,
            r#"{"auth_token":"0123456789abcdef0123456789abcdef","basic_auth":{"username":"u","password":12345678}}"#,
            r#"{"auth_token":"s3cret-pw" "#,
        ] {
            let err = validator_from_secret(secret).expect_err(secret);
            for leak in ["s3cret-pw", "12345678", "0123456789abcdef"] {
                assert!(!err.reason.contains(leak), "{secret}: {}", err.reason);
            }
        }
        let err = validator_from_secret(r#"{"auth_token":"x","basicauth":{}}"#).unwrap_err();
        assert!(
            err.reason.contains("unknown field \"basicauth\""),
            "{}",
            err.reason
        );
    }

    /// JSON values are trimmed as the bare form is: a pasted newline does not change the key.
    #[test]
    fn json_values_are_trimmed_like_the_bare_secret() {
        use twilio_webhook::signature::SignedRequest;
        let url = "https://h.example.com/sms";
        let sig = twilio_webhook::sign(
            &AuthToken::new("0123456789abcdef0123456789abcdef").unwrap(),
            url,
            &Default::default(),
        );
        let req = SignedRequest {
            method: "POST",
            url,
            content_type: None,
            body: b"",
            signature: Some(&sig),
            signature_settings: None,
        };
        for secret in [
            "0123456789abcdef0123456789abcdef\n",
            r#"{"auth_token":" 0123456789abcdef0123456789abcdef\n"}"#,
            r#"{"auth_token":"fedcba9876543210fedcba9876543210","secondary_auth_token":"0123456789abcdef0123456789abcdef "}"#,
        ] {
            let v = validator_from_secret(secret).unwrap();
            assert!(v.verify(&req).is_ok(), "{secret}");
        }
    }
}
