//! `twilio-webhooks configure`: point a Twilio phone number at the deployed webhooks.
//!
//! Sets the number's SmsUrl, SmsFallbackUrl, VoiceUrl, VoiceFallbackUrl and StatusCallback (all
//! with method POST) through the Twilio REST API (`IncomingPhoneNumbers`). The URLs come either
//! from `--base-url` or from the CloudFormation outputs of a deployed stack (`--stack`, read with
//! the `aws` CLI, so the usual `AWS_PROFILE` / `AWS_REGION` apply).
//!
//! Credentials come from the environment only (never flags, so they stay out of shell history
//! and `ps`): `TWILIO_ACCOUNT_SID` plus either `TWILIO_AUTH_TOKEN` or
//! `TWILIO_API_KEY` + `TWILIO_API_SECRET`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// Help text listing the environment the command reads.
const AFTER_HELP: &str = "\
Credentials (environment only):
  TWILIO_ACCOUNT_SID                        account SID (AC...), always required
  TWILIO_AUTH_TOKEN                         the account's auth token, or
  TWILIO_API_KEY + TWILIO_API_SECRET        an API key (SK...) and its secret

--stack runs `aws cloudformation describe-stacks`, so AWS_PROFILE / AWS_REGION apply.";

/// Point a Twilio phone number's SMS, voice, fallback and status-callback URLs at this deployment.
#[derive(clap::Args, Debug, Clone)]
#[command(
    group(clap::ArgGroup::new("target").required(true).args(["stack", "base_url"])),
    after_help = AFTER_HELP
)]
pub struct ConfigureArgs {
    /// The Twilio phone number to configure, in E.164 form (e.g. +15551234567).
    #[arg(long, value_name = "E164")]
    pub number: String,

    /// Read the webhook URLs from this CloudFormation stack's outputs (needs the aws CLI).
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,

    /// Use URL/sms, URL/voice, URL/status and URL/fallback (e.g. the API's custom domain).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// Show what would change without changing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Twilio REST API base URL (tests point this at a fake server).
    #[arg(
        long,
        hide = true,
        env = "TWILIO_API_BASE",
        default_value = "https://api.twilio.com",
        value_name = "URL"
    )]
    pub api_base: String,
}

/// Runs `configure`; `Ok` is what to print, `Err` a one-line error message.
pub async fn run(args: &ConfigureArgs) -> Result<String, String> {
    run_with_env(args, &EnvVars::from_process()).await
}

/// `run` for a synchronous `main`: on its own current-thread runtime, printing the result.
pub fn run_blocking(args: &ConfigureArgs) -> Result<std::process::ExitCode, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let out = runtime.block_on(run(args))?;
    println!("{out}");
    Ok(std::process::ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Environment

/// The environment variables `configure` reads, captured once so tests can inject them without
/// touching the process environment.
#[derive(Default, Clone)]
struct EnvVars {
    account_sid: Option<String>,
    auth_token: Option<String>,
    api_key: Option<String>,
    api_secret: Option<String>,
    /// `PATH` for finding the `aws` CLI (set explicitly on the child, so lookup uses it).
    path: Option<OsString>,
}

impl EnvVars {
    fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        EnvVars {
            account_sid: var("TWILIO_ACCOUNT_SID"),
            auth_token: var("TWILIO_AUTH_TOKEN"),
            api_key: var("TWILIO_API_KEY"),
            api_secret: var("TWILIO_API_SECRET"),
            path: std::env::var_os("PATH"),
        }
    }
}

/// Twilio credentials. No `Debug`: it holds secrets.
struct Credentials {
    account_sid: String,
    /// Basic-auth user: the account SID (auth token) or the API key SID.
    user: String,
    /// Basic-auth password: the auth token or the API key secret.
    password: String,
}

fn credentials(env: &EnvVars) -> Result<Credentials, String> {
    const HOW: &str =
        "set TWILIO_ACCOUNT_SID and either TWILIO_AUTH_TOKEN or TWILIO_API_KEY + TWILIO_API_SECRET";
    let account_sid = env
        .account_sid
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| format!("TWILIO_ACCOUNT_SID is not set: {HOW}"))?;
    if !(account_sid.starts_with("AC") && is_sid_chars(account_sid)) {
        return Err(format!(
            "TWILIO_ACCOUNT_SID must be an account SID (AC followed by letters/digits), got {account_sid:?}"
        ));
    }
    let (user, password) = match (&env.auth_token, &env.api_key, &env.api_secret) {
        (Some(token), _, _) => (account_sid.to_string(), token.trim().to_string()),
        (None, Some(key), Some(secret)) => (key.trim().to_string(), secret.trim().to_string()),
        (None, Some(_), None) => {
            return Err(format!(
                "TWILIO_API_KEY is set but TWILIO_API_SECRET is not: {HOW}"
            ));
        }
        (None, None, Some(_)) => {
            return Err(format!(
                "TWILIO_API_SECRET is set but TWILIO_API_KEY is not: {HOW}"
            ));
        }
        (None, None, None) => return Err(format!("no Twilio credentials: {HOW}")),
    };
    Ok(Credentials {
        account_sid: account_sid.to_string(),
        user,
        password,
    })
}

fn is_sid_chars(s: &str) -> bool {
    s.len() > 2 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Validation and target URLs

/// `+` then 8 to 15 digits, the first not 0 (E.164).
fn validate_e164(number: &str) -> Result<(), String> {
    let ok = number.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--number {number:?} is not an E.164 number (+ then 8 to 15 digits, e.g. +15551234567)"
        ))
    }
}

fn validate_http_url(what: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!("{what} {url:?} is not an http(s) URL")),
    }
}

/// The URLs the number should point at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Targets {
    sms: String,
    sms_fallback: String,
    voice: String,
    voice_fallback: String,
    status: String,
}

impl Targets {
    fn from_base_url(base: &str) -> Result<Self, String> {
        let base = base.trim().trim_end_matches('/');
        validate_http_url("--base-url", base)?;
        if base.contains(['?', '#']) {
            return Err(format!(
                "--base-url {base:?} must not have a query or fragment"
            ));
        }
        Ok(Targets {
            sms: format!("{base}/sms"),
            sms_fallback: format!("{base}/fallback"),
            voice: format!("{base}/voice"),
            voice_fallback: format!("{base}/fallback"),
            status: format!("{base}/status"),
        })
    }
}

/// The stack outputs (template.yaml `Outputs`) holding the five URLs.
const STACK_OUTPUTS: [&str; 5] = [
    "SmsWebhookUrl",
    "SmsFallbackUrl",
    "VoiceWebhookUrl",
    "VoiceFallbackUrl",
    "StatusCallbackUrl",
];

async fn targets_from_stack(stack: &str, path: Option<OsString>) -> Result<Targets, String> {
    let stack = stack.trim();
    let stdout = describe_stack(stack, path, "--base-url").await?;
    parse_stack_outputs(stack, &stdout)
}

/// `aws cloudformation describe-stacks --stack-name STACK --output json`'s output; errors
/// name `alternative`, the option to use instead of `--stack`.
pub(crate) async fn describe_stack(
    stack: &str,
    path: Option<OsString>,
    alternative: &str,
) -> Result<Vec<u8>, String> {
    let stack = stack.trim();
    if stack.is_empty() {
        return Err("--stack needs a stack name".into());
    }
    let name = stack.to_string();
    let output = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("aws");
        cmd.args([
            "cloudformation",
            "describe-stacks",
            "--stack-name",
            &name,
            "--output",
            "json",
        ])
        .stdin(std::process::Stdio::null());
        if let Some(path) = path {
            // Setting PATH on the child makes the program lookup use it.
            cmd.env("PATH", path);
        }
        cmd.output()
    })
    .await
    .map_err(|e| format!("running the aws CLI: {e}"))?
    .map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the aws CLI was not found on PATH (needed for --stack; install it, or use {alternative})"
            )
        } else {
            format!("could not run the aws CLI: {e}")
        }
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = one_line(&stderr);
        return Err(format!(
            "aws cloudformation describe-stacks --stack-name {stack} failed ({}): {}",
            output.status,
            if detail.is_empty() {
                "no error output"
            } else {
                &detail
            }
        ));
    }
    Ok(output.stdout)
}

fn parse_stack_outputs(stack: &str, stdout: &[u8]) -> Result<Targets, String> {
    let json: Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("aws cloudformation describe-stacks printed invalid JSON: {e}"))?;
    let stack_json = json
        .get("Stacks")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .ok_or_else(|| {
            format!("aws cloudformation describe-stacks returned no stack named {stack}")
        })?;
    let status = stack_json
        .get("StackStatus")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    let outputs = stack_json.get("Outputs").and_then(Value::as_array);
    let find = |key: &str| -> Option<String> {
        outputs?
            .iter()
            .find(|o| o.get("OutputKey").and_then(Value::as_str) == Some(key))
            .and_then(|o| o.get("OutputValue").and_then(Value::as_str))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let values: Vec<Option<String>> = STACK_OUTPUTS.iter().map(|k| find(k)).collect();
    let missing: Vec<&str> = STACK_OUTPUTS
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| *k)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "stack {stack} (status {status}) has no output {}; is it deployed from this template.yaml? (or use --base-url)",
            missing.join(", ")
        ));
    }
    let mut values = values.into_iter().map(Option::unwrap);
    let mut next = |key: &str| -> Result<String, String> {
        let v = values.next().expect("five outputs");
        validate_http_url(&format!("stack {stack} output {key}"), &v)?;
        Ok(v)
    };
    Ok(Targets {
        sms: next(STACK_OUTPUTS[0])?,
        sms_fallback: next(STACK_OUTPUTS[1])?,
        voice: next(STACK_OUTPUTS[2])?,
        voice_fallback: next(STACK_OUTPUTS[3])?,
        status: next(STACK_OUTPUTS[4])?,
    })
}

// ---------------------------------------------------------------------------------------------
// The flow

/// One settable field: Twilio's form parameter name and its JSON property name.
const FIELDS: [(&str, &str); 10] = [
    ("SmsUrl", "sms_url"),
    ("SmsMethod", "sms_method"),
    ("SmsFallbackUrl", "sms_fallback_url"),
    ("SmsFallbackMethod", "sms_fallback_method"),
    ("VoiceUrl", "voice_url"),
    ("VoiceMethod", "voice_method"),
    ("VoiceFallbackUrl", "voice_fallback_url"),
    ("VoiceFallbackMethod", "voice_fallback_method"),
    ("StatusCallback", "status_callback"),
    ("StatusCallbackMethod", "status_callback_method"),
];

fn desired_values(t: &Targets) -> [String; 10] {
    let post = || "POST".to_string();
    [
        t.sms.clone(),
        post(),
        t.sms_fallback.clone(),
        post(),
        t.voice.clone(),
        post(),
        t.voice_fallback.clone(),
        post(),
        t.status.clone(),
        post(),
    ]
}

async fn run_with_env(args: &ConfigureArgs, env: &EnvVars) -> Result<String, String> {
    let number = args.number.trim();
    validate_e164(number)?;
    let creds = credentials(env)?;
    let api_base = args.api_base.trim().trim_end_matches('/');
    validate_http_url("--api-base", api_base)?;

    let targets = match (&args.stack, &args.base_url) {
        (Some(_), Some(_)) => return Err("use either --stack or --base-url, not both".into()),
        (Some(stack), None) => targets_from_stack(stack, env.path.clone()).await?,
        (None, Some(base)) => Targets::from_base_url(base)?,
        (None, None) => return Err("one of --stack or --base-url is required".into()),
    };
    let desired = desired_values(&targets);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("twilio-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("could not build the HTTP client: {}", error_chain(&e)))?;
    let account_url = format!("{api_base}/2010-04-01/Accounts/{}", creds.account_sid);

    // 1. Find the number.
    let list_url = format!(
        "{account_url}/IncomingPhoneNumbers.json?PhoneNumber={}",
        form_encode(number)
    );
    let list = send(
        client
            .get(&list_url)
            .basic_auth(&creds.user, Some(&creds.password)),
        "listing incoming phone numbers",
    )
    .await?;
    let found = list
        .get("incoming_phone_numbers")
        .and_then(Value::as_array)
        .ok_or("listing incoming phone numbers: response has no incoming_phone_numbers array")?
        .iter()
        .find(|n| n.get("phone_number").and_then(Value::as_str) == Some(number))
        .ok_or_else(|| format!("number {number} is not in account {}", creds.account_sid))?
        .clone();
    let pn_sid = found
        .get("sid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !(pn_sid.starts_with("PN") && is_sid_chars(&pn_sid)) {
        return Err(format!(
            "listing incoming phone numbers: unexpected sid {pn_sid:?} for {number}"
        ));
    }
    let current: Vec<String> = FIELDS
        .iter()
        .map(|(_, prop)| {
            found
                .get(*prop)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
        .collect();

    // 2. Show the change.
    let mut out = String::new();
    let _ = writeln!(out, "{number} ({pn_sid}) in account {}:", creds.account_sid);
    let width = FIELDS.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut changed = 0;
    for (((name, _), cur), new) in FIELDS.iter().zip(&current).zip(&desired) {
        if cur == new {
            let _ = writeln!(out, "  {name:<width$}  {} (unchanged)", show(cur));
        } else {
            changed += 1;
            let _ = writeln!(out, "  {name:<width$}  {} → {new}", show(cur));
        }
    }
    for warning in overriding_settings(&found) {
        let _ = writeln!(out, "warning: {warning}");
    }

    // 3. Apply.
    if args.dry_run {
        out.push_str("dry run: nothing changed");
        return Ok(out);
    }
    if changed == 0 {
        out.push_str("already configured: nothing changed");
        return Ok(out);
    }
    let body = FIELDS
        .iter()
        .zip(&desired)
        .map(|((name, _), value)| format!("{}={}", form_encode(name), form_encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let updated = send(
        client
            .post(format!("{account_url}/IncomingPhoneNumbers/{pn_sid}.json"))
            .basic_auth(&creds.user, Some(&creds.password))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
        &format!("updating {number} ({pn_sid})"),
    )
    .await?;
    // Twilio echoes the updated resource; report any field it did not take.
    let mismatched: Vec<&str> = FIELDS
        .iter()
        .zip(&desired)
        .filter(|((_, prop), want)| {
            updated
                .get(*prop)
                .and_then(Value::as_str)
                .is_some_and(|got| got != want.as_str())
        })
        .map(|((name, _), _)| *name)
        .collect();
    if !mismatched.is_empty() {
        let _ = writeln!(
            out,
            "warning: Twilio's response still shows different values for {}",
            mismatched.join(", ")
        );
    }
    let _ = write!(out, "updated: {changed} of {} fields changed", FIELDS.len());
    Ok(out)
}

/// Settings on the number that make Twilio ignore the URLs being set.
fn overriding_settings(number: &Value) -> Vec<String> {
    let non_empty = |prop: &str| {
        number
            .get(prop)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut warnings = Vec::new();
    if let Some(sid) = non_empty("sms_application_sid") {
        warnings.push(format!(
            "SmsApplicationSid is {sid} (a TwiML app or Messaging Service): Twilio uses its settings, not SmsUrl, for incoming messages"
        ));
    }
    if let Some(sid) = non_empty("voice_application_sid") {
        warnings.push(format!(
            "VoiceApplicationSid is {sid}: Twilio uses that TwiML app's settings, not VoiceUrl, for incoming calls"
        ));
    }
    if let Some(sid) = non_empty("trunk_sid") {
        warnings.push(format!(
            "TrunkSid is {sid}: calls go to that SIP trunk, not VoiceUrl"
        ));
    }
    warnings
}

fn show(value: &str) -> &str {
    if value.is_empty() { "(none)" } else { value }
}

/// Sends a request; a non-2xx status becomes one line with Twilio's `message` and `code`.
async fn send(request: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("{what}: reading the response: {}", error_chain(&e)))?;
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        let message = json
            .as_ref()
            .and_then(|j| j.get("message"))
            .and_then(Value::as_str);
        let code = json.as_ref().and_then(|j| j.get("code")).and_then(|c| {
            c.as_i64()
                .map(|n| n.to_string())
                .or_else(|| c.as_str().map(str::to_string))
        });
        let more_info = json
            .as_ref()
            .and_then(|j| j.get("more_info"))
            .and_then(Value::as_str);
        let mut line = format!("{what}: Twilio API error HTTP {}", status.as_u16());
        match (message, code) {
            (Some(m), Some(c)) => {
                let _ = write!(line, ": {} (code {c})", one_line(m));
            }
            (Some(m), None) => {
                let _ = write!(line, ": {}", one_line(m));
            }
            (None, Some(c)) => {
                let _ = write!(line, " (code {c})");
            }
            (None, None) => {
                let body = one_line(&String::from_utf8_lossy(&bytes));
                if !body.is_empty() {
                    let _ = write!(line, ": {}", truncate(&body, 200));
                }
            }
        }
        if let Some(url) = more_info {
            let _ = write!(line, " see {url}");
        }
        return Err(line);
    }
    json.ok_or_else(|| {
        format!(
            "{what}: HTTP {} but the response is not JSON",
            status.as_u16()
        )
    })
}

/// `error` and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !line.contains(&s) {
            let _ = write!(line, ": {s}");
        }
        source = e.source();
    }
    line
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `application/x-www-form-urlencoded` encoding of one name or value (also used for the query).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use clap::Parser as _;
    use std::collections::BTreeMap;
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "auth-token-1234";
    const API_KEY: &str = "SK0123456789abcdef0123456789abcdef";
    const API_SECRET: &str = "api-secret-5678";
    const PN: &str = "PN0123456789abcdef0123456789abcdef";
    const NUMBER: &str = "+15551234567";

    /// Serializes every test that reads or writes the process environment (env vars, PATH,
    /// clap's `env =` lookup, child processes). Edition 2024 makes `set_var` unsafe because
    /// another thread reading the environment at the same time is undefined behaviour.
    /// (A tokio mutex: async tests hold it across `.await`; sync tests use `blocking_lock`.)
    static ENV_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    // ---- fake Twilio API -------------------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        /// Path without the query.
        path: String,
        query: Vec<(String, String)>,
        authorization: Option<String>,
        content_type: Option<String>,
        form: Vec<(String, String)>,
    }

    struct FakeTwilio {
        base: String,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl FakeTwilio {
        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    #[derive(Clone)]
    struct FakeConfig {
        /// Expected `Authorization` header value.
        authorization: String,
        /// The account's numbers (Twilio JSON resources).
        numbers: Vec<Value>,
        /// If set, every request gets this status and body.
        fail_with: Option<(u16, String)>,
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    fn number_resource(sid: &str, phone: &str, url_base: Option<&str>) -> Value {
        let url = |p: &str| url_base.map(|b| format!("{b}/{p}")).unwrap_or_default();
        serde_json::json!({
            "sid": sid,
            "account_sid": ACCOUNT,
            "phone_number": phone,
            "friendly_name": "test number",
            "sms_url": url("sms"),
            "sms_method": "POST",
            "sms_fallback_url": url("fallback"),
            "sms_fallback_method": if url_base.is_some() { "POST" } else { "GET" },
            "voice_url": url("voice"),
            "voice_method": "POST",
            "voice_fallback_url": url("fallback"),
            "voice_fallback_method": "POST",
            "status_callback": url("status"),
            "status_callback_method": "POST",
            "sms_application_sid": "",
            "voice_application_sid": "",
            "trunk_sid": null,
        })
    }

    fn decode_component(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).expect("bad percent escape"));
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    fn decode_pairs(s: &str) -> Vec<(String, String)> {
        s.split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode_component(k), decode_component(v))
            })
            .collect()
    }

    fn twilio_error(status: u16, code: u32, message: &str) -> (u16, String) {
        let body = serde_json::json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        });
        (status, body.to_string())
    }

    /// A one-request-per-connection HTTP/1.1 server on 127.0.0.1:0 (std threads only, so it
    /// needs no extra dependencies). It records every request, checks it exactly and answers
    /// 400 with a Twilio-style error body naming whatever was wrong.
    fn fake_twilio(config: FakeConfig) -> FakeTwilio {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                let mut headers = BTreeMap::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                }
                let length: usize = headers
                    .get("content-length")
                    .map(|l| l.parse().unwrap())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let body = String::from_utf8(body).unwrap();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let request = Recorded {
                    method,
                    path: path.to_string(),
                    query: decode_pairs(query),
                    authorization: headers.get("authorization").cloned(),
                    content_type: headers.get("content-type").cloned(),
                    form: decode_pairs(&body),
                };
                recorded.lock().unwrap().push(request.clone());
                let (status, body) = respond(&config, &request);
                let reason = if status < 300 { "OK" } else { "Error" };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.flush();
            }
        });
        FakeTwilio { base, requests }
    }

    fn respond(config: &FakeConfig, r: &Recorded) -> (u16, String) {
        if let Some(fail) = &config.fail_with {
            return fail.clone();
        }
        let bad = |what: String| twilio_error(400, 99999, &format!("fake: {what}"));
        if r.authorization.as_deref() != Some(config.authorization.as_str()) {
            return bad(format!("authorization {:?}", r.authorization));
        }
        let list_path = format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json");
        let numbers_prefix = format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/");
        if r.method == "GET" && r.path == list_path {
            let [(key, wanted)] = r.query.as_slice() else {
                return bad(format!("query {:?}", r.query));
            };
            if key != "PhoneNumber" {
                return bad(format!("query {:?}", r.query));
            }
            if !r.form.is_empty() {
                return bad("GET with a body".into());
            }
            let matching: Vec<Value> = config
                .numbers
                .iter()
                .filter(|n| n["phone_number"].as_str() == Some(wanted.as_str()))
                .cloned()
                .collect();
            let body = serde_json::json!({
                "incoming_phone_numbers": matching,
                "page": 0, "page_size": 50, "next_page_uri": null,
            });
            return (200, body.to_string());
        }
        let update_sid = r
            .path
            .strip_prefix(&numbers_prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
            .filter(|_| r.method == "POST");
        if let Some(sid) = update_sid {
            let Some(number) = config
                .numbers
                .iter()
                .find(|n| n["sid"].as_str() == Some(sid))
            else {
                return twilio_error(404, 20404, "The requested resource was not found");
            };
            if r.content_type.as_deref() != Some("application/x-www-form-urlencoded") {
                return bad(format!("content-type {:?}", r.content_type));
            }
            if !r.query.is_empty() {
                return bad(format!("query {:?}", r.query));
            }
            let mut names: Vec<&str> = r.form.iter().map(|(k, _)| k.as_str()).collect();
            names.sort_unstable();
            let mut expected: Vec<&str> = FIELDS.iter().map(|(k, _)| *k).collect();
            expected.sort_unstable();
            if names != expected {
                return bad(format!("form fields {names:?}"));
            }
            let mut updated = number.clone();
            for (name, value) in &r.form {
                let prop = FIELDS.iter().find(|(n, _)| n == name).unwrap().1;
                updated[prop] = Value::String(value.clone());
            }
            return (200, updated.to_string());
        }
        twilio_error(404, 20404, "The requested resource was not found")
    }

    // ---- helpers ---------------------------------------------------------------------------

    fn token_env() -> EnvVars {
        EnvVars {
            account_sid: Some(ACCOUNT.into()),
            auth_token: Some(TOKEN.into()),
            ..EnvVars::default()
        }
    }

    fn args(api_base: &str) -> ConfigureArgs {
        ConfigureArgs {
            number: NUMBER.into(),
            stack: None,
            base_url: Some("https://hooks.example.com/".into()),
            dry_run: false,
            api_base: api_base.into(),
        }
    }

    fn expected_form(base: &str) -> Vec<(String, String)> {
        [
            ("SmsUrl", format!("{base}/sms")),
            ("SmsMethod", "POST".into()),
            ("SmsFallbackUrl", format!("{base}/fallback")),
            ("SmsFallbackMethod", "POST".into()),
            ("VoiceUrl", format!("{base}/voice")),
            ("VoiceMethod", "POST".into()),
            ("VoiceFallbackUrl", format!("{base}/fallback")),
            ("VoiceFallbackMethod", "POST".into()),
            ("StatusCallback", format!("{base}/status")),
            ("StatusCallbackMethod", "POST".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
        v.sort();
        v
    }

    fn assert_list_request(r: &Recorded, authorization: &str) {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.path,
            format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json")
        );
        assert_eq!(
            r.query,
            vec![("PhoneNumber".to_string(), NUMBER.to_string())]
        );
        assert_eq!(r.authorization.as_deref(), Some(authorization));
        assert!(r.form.is_empty());
    }

    fn assert_update_request(r: &Recorded, authorization: &str, base: &str) {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path,
            format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/{PN}.json")
        );
        assert!(r.query.is_empty());
        assert_eq!(r.authorization.as_deref(), Some(authorization));
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            r.form.len(),
            10,
            "exactly ten fields, no duplicates: {:?}",
            r.form
        );
        assert_eq!(sorted(r.form.clone()), sorted(expected_form(base)));
    }

    fn fake_with_number(authorization: String) -> FakeTwilio {
        fake_twilio(FakeConfig {
            authorization,
            numbers: vec![
                number_resource(PN, NUMBER, None),
                number_resource("PNffffffffffffffffffffffffffffffff", "+15550000000", None),
            ],
            fail_with: None,
        })
    }

    // ---- flow tests ------------------------------------------------------------------------

    #[tokio::test]
    async fn base_url_apply_sets_all_ten_fields() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_with_number(basic(ACCOUNT, TOKEN));
        let out = run_with_env(&args(&fake.base), &token_env())
            .await
            .expect("configure succeeds");

        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "{requests:#?}");
        assert_list_request(&requests[0], &basic(ACCOUNT, TOKEN));
        assert_update_request(
            &requests[1],
            &basic(ACCOUNT, TOKEN),
            "https://hooks.example.com",
        );

        assert!(
            out.starts_with(&format!("{NUMBER} ({PN}) in account {ACCOUNT}:")),
            "{out}"
        );
        assert!(out.contains("SmsUrl"), "{out}");
        assert!(
            out.contains("(none) → https://hooks.example.com/sms"),
            "{out}"
        );
        assert!(out.contains("GET → POST"), "{out}");
        assert!(out.contains("POST (unchanged)"), "{out}");
        assert!(out.ends_with("updated: 6 of 10 fields changed"), "{out}");
        assert!(!out.contains("warning"), "{out}");
        assert!(!out.contains(TOKEN));
    }

    #[tokio::test]
    async fn dry_run_makes_no_post() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_with_number(basic(ACCOUNT, TOKEN));
        let mut a = args(&fake.base);
        a.dry_run = true;
        let out = run_with_env(&a, &token_env())
            .await
            .expect("dry run succeeds");

        let requests = fake.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        assert_list_request(&requests[0], &basic(ACCOUNT, TOKEN));
        assert!(
            out.contains("(none) → https://hooks.example.com/voice"),
            "{out}"
        );
        assert!(out.ends_with("dry run: nothing changed"), "{out}");
    }

    #[tokio::test]
    async fn api_key_auth_uses_key_and_secret_with_account_in_path() {
        let _env = ENV_LOCK.lock().await;
        let auth = basic(API_KEY, API_SECRET);
        let fake = fake_with_number(auth.clone());
        let env = EnvVars {
            account_sid: Some(ACCOUNT.into()),
            api_key: Some(API_KEY.into()),
            api_secret: Some(API_SECRET.into()),
            ..EnvVars::default()
        };
        run_with_env(&args(&fake.base), &env)
            .await
            .expect("configure succeeds");

        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "{requests:#?}");
        assert_list_request(&requests[0], &auth);
        assert_update_request(&requests[1], &auth, "https://hooks.example.com");
    }

    #[tokio::test]
    async fn already_configured_number_is_not_posted() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_twilio(FakeConfig {
            authorization: basic(ACCOUNT, TOKEN),
            numbers: vec![number_resource(
                PN,
                NUMBER,
                Some("https://hooks.example.com"),
            )],
            fail_with: None,
        });
        let out = run_with_env(&args(&fake.base), &token_env())
            .await
            .expect("succeeds");
        assert_eq!(fake.requests().len(), 1);
        assert_eq!(out.matches("(unchanged)").count(), 10, "{out}");
        assert!(
            out.ends_with("already configured: nothing changed"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn unknown_number_is_an_error() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_twilio(FakeConfig {
            authorization: basic(ACCOUNT, TOKEN),
            // Twilio's PhoneNumber filter is a pattern; only an exact match counts.
            numbers: vec![number_resource(PN, "+15551234567", None)],
            fail_with: None,
        });
        let mut a = args(&fake.base);
        a.number = "+15557654321".into();
        let err = run_with_env(&a, &token_env()).await.unwrap_err();
        assert_eq!(
            err,
            format!("number +15557654321 is not in account {ACCOUNT}")
        );
        assert_eq!(fake.requests().len(), 1, "no POST");
    }

    #[tokio::test]
    async fn twilio_401_error_body_is_surfaced_on_one_line() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_twilio(FakeConfig {
            authorization: basic(ACCOUNT, TOKEN),
            numbers: vec![],
            fail_with: Some(twilio_error(401, 20003, "Authenticate")),
        });
        let err = run_with_env(&args(&fake.base), &token_env())
            .await
            .unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("HTTP 401"), "{err}");
        assert!(err.contains("Authenticate (code 20003)"), "{err}");
        assert!(
            err.contains("https://www.twilio.com/docs/errors/20003"),
            "{err}"
        );
        assert!(!err.contains(TOKEN));
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn non_json_error_body_is_shortened_to_one_line() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_twilio(FakeConfig {
            authorization: String::new(),
            numbers: vec![],
            fail_with: Some((502, "<html>\n<body>Bad gateway</body>\n</html>".into())),
        });
        let err = run_with_env(&args(&fake.base), &token_env())
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "listing incoming phone numbers: Twilio API error HTTP 502: <html> <body>Bad gateway</body> </html>"
        );
    }

    #[tokio::test]
    async fn overriding_application_is_warned_about() {
        let _env = ENV_LOCK.lock().await;
        let mut number = number_resource(PN, NUMBER, None);
        number["sms_application_sid"] = "MG0123456789abcdef0123456789abcdef".into();
        let fake = fake_twilio(FakeConfig {
            authorization: basic(ACCOUNT, TOKEN),
            numbers: vec![number],
            fail_with: None,
        });
        let mut a = args(&fake.base);
        a.dry_run = true;
        let out = run_with_env(&a, &token_env()).await.unwrap();
        assert!(
            out.contains("warning: SmsApplicationSid is MG0123456789abcdef0123456789abcdef"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn invalid_numbers_are_rejected_before_any_request() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_with_number(basic(ACCOUNT, TOKEN));
        for bad in [
            "15551234567",
            "+1555",
            "+1234567890123456",
            "+1 555 123 4567",
            "+0123456789",
            "",
        ] {
            let mut a = args(&fake.base);
            a.number = bad.into();
            let err = run_with_env(&a, &token_env()).await.unwrap_err();
            assert!(err.contains("is not an E.164 number"), "{bad:?}: {err}");
        }
        for good in ["+12345678", "+123456789012345", "+447700900123"] {
            assert!(validate_e164(good).is_ok(), "{good}");
        }
        assert!(fake.requests().is_empty());
    }

    #[tokio::test]
    async fn missing_credentials_name_the_variables() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_with_number(basic(ACCOUNT, TOKEN));
        let a = args(&fake.base);
        let cases = [
            (EnvVars::default(), "TWILIO_ACCOUNT_SID is not set"),
            (
                EnvVars {
                    account_sid: Some(ACCOUNT.into()),
                    ..EnvVars::default()
                },
                "no Twilio credentials",
            ),
            (
                EnvVars {
                    account_sid: Some(ACCOUNT.into()),
                    api_key: Some(API_KEY.into()),
                    ..EnvVars::default()
                },
                "TWILIO_API_SECRET is not",
            ),
            (
                EnvVars {
                    account_sid: Some("nope".into()),
                    auth_token: Some(TOKEN.into()),
                    ..EnvVars::default()
                },
                "must be an account SID",
            ),
        ];
        for (env, expected) in cases {
            let err = run_with_env(&a, &env).await.unwrap_err();
            assert!(err.contains(expected), "{err}");
            if !expected.contains("account SID") {
                for var in [
                    "TWILIO_ACCOUNT_SID",
                    "TWILIO_AUTH_TOKEN",
                    "TWILIO_API_KEY",
                    "TWILIO_API_SECRET",
                ] {
                    assert!(err.contains(var), "{err} should name {var}");
                }
            }
        }
        assert!(fake.requests().is_empty());
    }

    #[test]
    fn base_url_targets() {
        let t = Targets::from_base_url("https://x.example.com/prod//").unwrap();
        assert_eq!(t.sms, "https://x.example.com/prod/sms");
        assert_eq!(t.sms_fallback, "https://x.example.com/prod/fallback");
        assert_eq!(t.voice, "https://x.example.com/prod/voice");
        assert_eq!(t.voice_fallback, "https://x.example.com/prod/fallback");
        assert_eq!(t.status, "https://x.example.com/prod/status");
        for bad in [
            "x.example.com",
            "ftp://x",
            "https://",
            "https://x/?a=b",
            "https://a b",
        ] {
            assert!(Targets::from_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("+15551234567"), "%2B15551234567");
        assert_eq!(
            form_encode("https://a.b/c?d=e f"),
            "https%3A%2F%2Fa.b%2Fc%3Fd%3De+f"
        );
        assert_eq!(decode_component(&form_encode("é &=+/")), "é &=+/");
    }

    // ---- --stack ---------------------------------------------------------------------------

    const STACK_JSON: &str = r#"{
    "Stacks": [{
        "StackName": "twilio-webhooks",
        "StackStatus": "UPDATE_COMPLETE",
        "Outputs": [
            {"OutputKey": "SmsWebhookUrl", "OutputValue": "https://abc.execute-api.us-east-1.amazonaws.com/sms"},
            {"OutputKey": "SmsFallbackUrl", "OutputValue": "https://abc.execute-api.us-east-1.amazonaws.com/fallback"},
            {"OutputKey": "VoiceWebhookUrl", "OutputValue": "https://abc.execute-api.us-east-1.amazonaws.com/voice"},
            {"OutputKey": "VoiceFallbackUrl", "OutputValue": "https://abc.execute-api.us-east-1.amazonaws.com/fallback"},
            {"OutputKey": "StatusCallbackUrl", "OutputValue": "https://abc.execute-api.us-east-1.amazonaws.com/status"},
            {"OutputKey": "WorkQueueUrl", "OutputValue": "https://sqs.us-east-1.amazonaws.com/1/q"}
        ]
    }]
}"#;

    /// A temp dir with an executable `aws` script that checks its arguments, then prints
    /// `stdout` and exits with `code`.
    fn fake_aws(stdout: &str, stderr: &str, code: i32) -> TempDir {
        use std::os::unix::fs::PermissionsExt as _;
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "twilio-webhooks-configure-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stdout.json"), stdout).unwrap();
        std::fs::write(dir.join("stderr.txt"), stderr).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             if [ \"$*\" != \"cloudformation describe-stacks --stack-name my-stack --output json\" ]; then\n\
               echo \"fake aws: unexpected arguments: $*\" >&2; exit 99\n\
             fi\n\
             cat '{dir}/stdout.json'\n\
             cat '{dir}/stderr.txt' >&2\n\
             exit {code}\n",
            dir = dir.display()
        );
        let path = dir.join("aws");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    /// Removed on drop, also when the test fails.
    struct TempDir(std::path::PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn stack_args(api_base: &str) -> ConfigureArgs {
        ConfigureArgs {
            stack: Some("my-stack".into()),
            base_url: None,
            ..args(api_base)
        }
    }

    fn path_with_first(dir: &std::path::Path) -> OsString {
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(paths).unwrap()
    }

    /// Sets env vars for the duration of a test (caller holds `ENV_LOCK`) and restores them.
    struct EnvGuard(Vec<(&'static str, Option<OsString>)>);

    impl EnvGuard {
        fn set(vars: &[(&'static str, Option<OsString>)]) -> Self {
            let saved = vars
                .iter()
                .map(|(k, _)| (*k, std::env::var_os(k)))
                .collect();
            for (k, v) in vars {
                // SAFETY: every test that reads the environment (directly, through clap, reqwest
                // or by spawning a process) holds ENV_LOCK, so nothing reads it concurrently.
                unsafe {
                    match v {
                        Some(v) => std::env::set_var(k, v),
                        None => std::env::remove_var(k),
                    }
                }
            }
            EnvGuard(saved)
        }
    }

    impl Drop for EnvGuard {
        fn drop(&mut self) {
            for (k, v) in &self.0 {
                // SAFETY: as in `set`; the lock is still held while the guard drops.
                unsafe {
                    match v {
                        Some(v) => std::env::set_var(k, v),
                        None => std::env::remove_var(k),
                    }
                }
            }
        }
    }

    /// The whole public entry point: credentials from the real environment, `aws` found on the
    /// real PATH.
    #[tokio::test]
    async fn stack_outputs_via_aws_on_path_through_run() {
        let _env = ENV_LOCK.lock().await;
        let dir = fake_aws(STACK_JSON, "", 0);
        let fake = fake_with_number(basic(ACCOUNT, TOKEN));
        let _vars = EnvGuard::set(&[
            ("PATH", Some(path_with_first(&dir))),
            ("TWILIO_ACCOUNT_SID", Some(ACCOUNT.into())),
            ("TWILIO_AUTH_TOKEN", Some(TOKEN.into())),
            ("TWILIO_API_KEY", None),
            ("TWILIO_API_SECRET", None),
        ]);
        let out = run(&stack_args(&fake.base))
            .await
            .expect("configure --stack succeeds");

        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "{requests:#?}");
        assert_list_request(&requests[0], &basic(ACCOUNT, TOKEN));
        assert_update_request(
            &requests[1],
            &basic(ACCOUNT, TOKEN),
            "https://abc.execute-api.us-east-1.amazonaws.com",
        );
        assert!(out.ends_with("updated: 6 of 10 fields changed"), "{out}");
    }

    #[tokio::test]
    async fn stack_errors_are_one_line() {
        let _env = ENV_LOCK.lock().await;
        let fake = fake_with_number(basic(ACCOUNT, TOKEN));
        let env_with_path = |dir: &std::path::Path| EnvVars {
            path: Some(path_with_first(dir)),
            ..token_env()
        };

        // aws not installed.
        let empty = fake_aws("", "", 0);
        std::fs::remove_file(empty.join("aws")).unwrap();
        let env = EnvVars {
            path: Some(empty.as_os_str().to_owned()),
            ..token_env()
        };
        let err = run_with_env(&stack_args(&fake.base), &env)
            .await
            .unwrap_err();
        assert!(err.contains("aws CLI was not found on PATH"), "{err}");

        // aws fails (stack does not exist).
        let failing = fake_aws(
            "",
            "\nAn error occurred (ValidationError) when calling the DescribeStacks operation: Stack with id my-stack does not exist\n",
            254,
        );
        let err = run_with_env(&stack_args(&fake.base), &env_with_path(&failing))
            .await
            .unwrap_err();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.contains("describe-stacks --stack-name my-stack failed"),
            "{err}"
        );
        assert!(
            err.contains("Stack with id my-stack does not exist"),
            "{err}"
        );

        // Outputs missing.
        let partial = STACK_JSON
            .lines()
            .filter(|l| !l.contains("VoiceWebhookUrl") && !l.contains("StatusCallbackUrl"))
            .collect::<Vec<_>>()
            .join("\n");
        let missing = fake_aws(&partial, "", 0);
        let err = run_with_env(&stack_args(&fake.base), &env_with_path(&missing))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            "stack my-stack (status UPDATE_COMPLETE) has no output VoiceWebhookUrl, StatusCallbackUrl; \
             is it deployed from this template.yaml? (or use --base-url)"
        );

        // Not JSON.
        let garbage = fake_aws("Stacks: nope", "", 0);
        let err = run_with_env(&stack_args(&fake.base), &env_with_path(&garbage))
            .await
            .unwrap_err();
        assert!(
            err.starts_with("aws cloudformation describe-stacks printed invalid JSON"),
            "{err}"
        );

        assert!(
            fake.requests().is_empty(),
            "no Twilio request after a stack error"
        );
    }

    // ---- clap ------------------------------------------------------------------------------

    /// How main.rs is expected to wire the subcommand.
    #[derive(clap::Parser, Debug)]
    #[command(name = "twilio-webhooks")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Command {
        Configure(ConfigureArgs),
    }

    fn parse(argv: &[&str]) -> Result<ConfigureArgs, clap::Error> {
        let argv = ["twilio-webhooks", "configure"].iter().chain(argv);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Configure(a) => a,
        })
    }

    #[test]
    fn clap_requires_exactly_one_of_stack_and_base_url() {
        let _env = ENV_LOCK.blocking_lock();
        let _vars = EnvGuard::set(&[("TWILIO_API_BASE", None)]);

        let a = parse(&["--number", NUMBER, "--base-url", "https://x.example.com"]).unwrap();
        assert_eq!(a.base_url.as_deref(), Some("https://x.example.com"));
        assert_eq!(a.stack, None);
        assert!(!a.dry_run);
        assert_eq!(a.api_base, "https://api.twilio.com");

        let a = parse(&["--number", NUMBER, "--stack", "s", "--dry-run"]).unwrap();
        assert_eq!(a.stack.as_deref(), Some("s"));
        assert!(a.dry_run);

        let both = parse(&[
            "--number",
            NUMBER,
            "--stack",
            "s",
            "--base-url",
            "https://x",
        ])
        .unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let neither = parse(&["--number", NUMBER]).unwrap_err();
        assert_eq!(
            neither.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let no_number = parse(&["--stack", "s"]).unwrap_err();
        assert_eq!(
            no_number.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn clap_api_base_is_hidden_and_reads_env() {
        let _env = ENV_LOCK.blocking_lock();
        let _vars = EnvGuard::set(&[("TWILIO_API_BASE", Some("http://127.0.0.1:9".into()))]);
        let a = parse(&["--number", NUMBER, "--stack", "s"]).unwrap();
        assert_eq!(a.api_base, "http://127.0.0.1:9");
        let a = parse(&["--number", NUMBER, "--stack", "s", "--api-base", "http://x"]).unwrap();
        assert_eq!(a.api_base, "http://x");

        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = help.to_string();
        for expected in [
            "--number",
            "--stack",
            "--base-url",
            "--dry-run",
            "TWILIO_AUTH_TOKEN",
        ] {
            assert!(
                help.contains(expected),
                "help should mention {expected}:\n{help}"
            );
        }
        assert!(!help.contains("--api-base"), "{help}");
    }
}
