//! `twilio-webhooks sign`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use twilio_webhook::signature::sign_json;
use twilio_webhook::{FormParams, sign};

use crate::util::{CliResult, shell_quote, token_or_test, warn_test_token};

#[derive(Args)]
#[command(after_help = "\
Examples:
  twilio-webhooks sign --url http://127.0.0.1:3000/sms -d MessageSid=SM123 -d From=+14155550100 -d Body=hi --curl
  twilio-webhooks sign --url https://example.com/hook --json-body event.json

Exit codes:
  0  signed
  1  error (blank token, unreadable --json-body, a -d without =)
  2  usage error")]
pub struct SignArgs {
    /// The full URL Twilio calls (scheme, host, path and query string, exactly).
    #[arg(long)]
    url: String,
    /// Auth token to sign with; the public test token when unset.
    #[arg(
        long,
        alias = "token",
        value_name = "T",
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    auth_token: Option<String>,
    /// A form parameter (repeatable, order kept). Values are taken literally, not URL-decoded.
    #[arg(
        short = 'd',
        long = "data",
        value_name = "KEY=VALUE",
        conflicts_with = "json_body"
    )]
    data: Vec<String>,
    /// Sign a JSON webhook: the body's SHA-256 goes into the URL as `bodySHA256`; prints the
    /// URL to call on one line, then the signature.
    #[arg(long, value_name = "FILE")]
    json_body: Option<PathBuf>,
    /// Print a complete curl command instead.
    #[arg(long)]
    curl: bool,
}

pub fn run(args: SignArgs) -> CliResult {
    let (token, is_test) = token_or_test(args.auth_token)?;
    if is_test {
        warn_test_token(false);
    }
    if let Some(path) = &args.json_body {
        let body = std::fs::read(path)
            .map_err(|e| format!("cannot read --json-body {}: {e}", path.display()))?;
        let (url, signature) = sign_json(&token, &args.url, &body);
        if args.curl {
            println!(
                "curl -i -X POST {} -H {} -H 'Content-Type: application/json' --data-binary {}",
                shell_quote(&url),
                shell_quote(&format!("X-Twilio-Signature: {signature}")),
                shell_quote(&format!("@{}", path.display())),
            );
        } else {
            println!("{url}");
            println!("{signature}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut pairs = Vec::with_capacity(args.data.len());
    for kv in &args.data {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("-d {kv:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            return Err(format!("-d {kv:?}: empty KEY"));
        }
        pairs.push((k.to_owned(), v.to_owned()));
    }
    let form = FormParams::from_pairs(pairs);
    let signature = sign(&token, &args.url, &form);
    if args.curl {
        println!("{}", curl_form(&args.url, &signature, &form));
    } else {
        println!("{signature}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A curl command POSTing `form` (exact encoded bytes) with its signature.
pub fn curl_form(url: &str, signature: &str, form: &FormParams) -> String {
    format!(
        "curl -i -X POST {} -H {} --data-raw {}",
        shell_quote(url),
        shell_quote(&format!("X-Twilio-Signature: {signature}")),
        shell_quote(&form.encode()),
    )
}
