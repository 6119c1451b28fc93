//! `twilio-webhooks configure`: point a Twilio phone number, a Messaging Service, or both, at
//! the deployed webhooks, showing the change as a diff first.
//!
//! - A number: SmsUrl, SmsFallbackUrl, VoiceUrl, VoiceFallbackUrl and StatusCallback, each with
//!   method POST (`IncomingPhoneNumbers`, REST API 2010-04-01). If the number belongs to a
//!   Messaging Service, the report says which URL Twilio will call for its incoming messages.
//! - A Messaging Service: InboundRequestUrl, FallbackUrl and StatusCallback, with method POST
//!   (Messaging v1 `Services`).
//!
//! The URLs come from `--public-base-url` or a deployed stack's outputs (`--stack`, default:
//! samconfig.toml's stack name). Credentials come from the environment only, never flags, so
//! they stay out of shell history and `ps`.

mod targets;
mod twilio;

pub use targets::describe_stack;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use crate::util::CliResult;
use targets::Targets;
use twilio::{ApiError, Credentials, Env, Twilio, is_sid};

const AFTER_HELP: &str = "\
Credentials (environment only):
  TWILIO_ACCOUNT_SID                        account SID (AC...), always required
  TWILIO_AUTH_TOKEN                         the account's auth token, or
  TWILIO_API_KEY + TWILIO_API_SECRET        an API key (SK...) and its secret

Where the URLs come from: --public-base-url, or --stack (default: stack_name in
samconfig.toml), which runs `aws cloudformation describe-stacks`, so AWS_PROFILE / AWS_REGION
apply.

Exit codes:
  0  done (a dry run, or with --check: nothing differs)
  1  error (credentials, Twilio API, stack, unknown number or service)
  2  usage error
  3  --check: some fields differ from the deployment (nothing was changed)";

/// Point a Twilio number and/or Messaging Service at this deployment.
#[derive(clap::Args, Debug, Clone)]
#[command(
    group(clap::ArgGroup::new("resource").required(true).multiple(true).args(["number", "messaging_service"])),
    after_help = AFTER_HELP
)]
pub struct ConfigureArgs {
    /// A Twilio phone number of the account, in E.164 form (e.g. +15551234567).
    #[arg(long, value_name = "E164")]
    pub number: Option<String>,

    /// A Messaging Service (MG...): sets its inbound request URL, fallback URL and status
    /// callback. A number in a Messaging Service uses these unless the service has
    /// UseInboundWebhookOnNumber on.
    #[arg(long, value_name = "MG_SID")]
    pub messaging_service: Option<String>,

    /// Read the webhook URLs from this CloudFormation stack's outputs (needs the aws CLI).
    /// Default: stack_name in samconfig.toml, when there is one.
    #[arg(long, value_name = "NAME", conflicts_with = "public_base_url")]
    pub stack: Option<String>,

    /// The public base URL of the webhooks (the same as PUBLIC_BASE_URL in Lambda and
    /// `serve --public-base-url`): URL/sms, URL/voice, URL/status and URL/fallback.
    #[arg(long, alias = "base-url", value_name = "URL")]
    pub public_base_url: Option<String>,

    /// Show what would change without changing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// Like --dry-run, and exit with status 3 if any field differs (a drift check for CI).
    #[arg(long)]
    pub check: bool,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// The SAM configuration to read the default --stack from.
    #[arg(long, value_name = "FILE", default_value = "samconfig.toml")]
    pub samconfig: PathBuf,

    /// Twilio REST API base URL (tests point this at a fake server).
    #[arg(
        long,
        hide = true,
        env = "TWILIO_API_BASE",
        default_value = "https://api.twilio.com"
    )]
    pub api_base: String,

    /// Twilio Messaging API base URL (tests point this at a fake server).
    #[arg(
        long,
        hide = true,
        env = "TWILIO_MESSAGING_API_BASE",
        default_value = "https://messaging.twilio.com"
    )]
    pub messaging_api_base: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    /// Bad input or environment, found before any change: the message says what to do.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("number {number} is not in account {account}")]
    UnknownNumber { number: String, account: String },
}

impl From<String> for ConfigureError {
    fn from(message: String) -> Self {
        ConfigureError::Invalid(message)
    }
}

/// One field `configure` sets: Twilio's form parameter, its JSON property, its value.
struct Field {
    param: &'static str,
    prop: &'static str,
    value: fn(&Targets) -> String,
}

const fn field(param: &'static str, prop: &'static str, value: fn(&Targets) -> String) -> Field {
    Field { param, prop, value }
}

fn post(_: &Targets) -> String {
    "POST".to_owned()
}

const NUMBER_FIELDS: [Field; 10] = [
    field("SmsUrl", "sms_url", |t| t.sms.clone()),
    field("SmsMethod", "sms_method", post),
    field("SmsFallbackUrl", "sms_fallback_url", |t| {
        t.sms_fallback.clone()
    }),
    field("SmsFallbackMethod", "sms_fallback_method", post),
    field("VoiceUrl", "voice_url", |t| t.voice.clone()),
    field("VoiceMethod", "voice_method", post),
    field("VoiceFallbackUrl", "voice_fallback_url", |t| {
        t.voice_fallback.clone()
    }),
    field("VoiceFallbackMethod", "voice_fallback_method", post),
    field("StatusCallback", "status_callback", |t| t.status.clone()),
    field("StatusCallbackMethod", "status_callback_method", post),
];

const SERVICE_FIELDS: [Field; 5] = [
    field("InboundRequestUrl", "inbound_request_url", |t| {
        t.sms.clone()
    }),
    field("InboundMethod", "inbound_method", post),
    field("FallbackUrl", "fallback_url", |t| t.sms_fallback.clone()),
    field("FallbackMethod", "fallback_method", post),
    field("StatusCallback", "status_callback", |t| t.status.clone()),
];

/// What `configure` found and did; `--json` prints it as is.
#[derive(Serialize, Debug)]
pub struct Report {
    pub account_sid: String,
    pub dry_run: bool,
    /// Fields that differ(ed) from the deployment, over every resource.
    pub changes: usize,
    pub resources: Vec<Resource>,
}

#[derive(Serialize, Debug)]
pub struct Resource {
    /// `phone_number` or `messaging_service`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sid: String,
    /// The E.164 number, or the service's friendly name.
    pub name: String,
    pub fields: Vec<FieldDiff>,
    pub changes: usize,
    pub applied: bool,
    pub warnings: Vec<String>,
    /// Number: the Messaging Service it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messaging_service_sid: Option<String>,
    /// Number: the URL Twilio calls for its incoming messages once this run is done (the
    /// service's inbound URL when a Messaging Service handles them; "" for none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incoming_messages_url: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct FieldDiff {
    pub name: &'static str,
    pub current: String,
    pub desired: String,
    pub changed: bool,
}

pub fn run_blocking(args: &ConfigureArgs) -> CliResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let report = runtime
        .block_on(run(args, &Env::from_process()))
        .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        print!("{}", render(&report, args.check));
    }
    Ok(if args.check && report.changes > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn run(args: &ConfigureArgs, env: &Env) -> Result<Report, ConfigureError> {
    let number = args.number.as_deref().map(str::trim);
    if let Some(number) = number {
        validate_e164(number)?;
    }
    let service = args.messaging_service.as_deref().map(str::trim);
    if let Some(mg) = service
        && !(is_sid(mg, "MG") && mg.len() == 34)
    {
        return Err(format!(
            "--messaging-service {mg:?} is not a Messaging Service SID (MG followed by 32 hex digits)"
        )
        .into());
    }
    let creds = Credentials::from_env(env)?;
    for (flag, url) in [
        ("--api-base", &args.api_base),
        ("--messaging-api-base", &args.messaging_api_base),
    ] {
        targets::validate_http_url(flag, url.trim())?;
    }
    let targets = resolve_targets(args).await?;
    let api = Twilio::new(creds, args.api_base.trim(), args.messaging_api_base.trim())?;
    let dry_run = args.dry_run || args.check;

    let mut resources = Vec::new();
    if let Some(number) = number {
        resources.push(configure_number(&api, number, &targets, dry_run).await?);
    }
    if let Some(mg) = service {
        resources.push(configure_service(&api, mg, &targets, dry_run).await?);
    }
    Ok(Report {
        account_sid: api.account_sid().to_owned(),
        dry_run,
        changes: resources.iter().map(|r| r.changes).sum(),
        resources,
    })
}

async fn resolve_targets(args: &ConfigureArgs) -> Result<Targets, ConfigureError> {
    if let Some(base) = &args.public_base_url {
        return Ok(Targets::from_public_base_url(base)?);
    }
    let stack = match &args.stack {
        Some(stack) => stack.clone(),
        None => targets::samconfig_stack(&args.samconfig)?.ok_or_else(|| {
            format!(
                "no --stack or --public-base-url, and no stack_name in {}",
                args.samconfig.display()
            )
        })?,
    };
    Ok(targets::from_stack(&stack).await?)
}

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

fn text<'a>(resource: &'a Value, prop: &str) -> &'a str {
    resource
        .get(prop)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn diff(fields: &[Field], current: &Value, targets: &Targets) -> Vec<FieldDiff> {
    fields
        .iter()
        .map(|f| {
            let current = text(current, f.prop).to_owned();
            let desired = (f.value)(targets);
            FieldDiff {
                name: f.param,
                changed: current != desired,
                current,
                desired,
            }
        })
        .collect()
}

/// The changed fields as form pairs (unchanged ones are not sent).
fn changed_form(diffs: &[FieldDiff]) -> Vec<(&str, &str)> {
    diffs
        .iter()
        .filter(|d| d.changed)
        .map(|d| (d.name, d.desired.as_str()))
        .collect()
}

/// Twilio echoes the updated resource: a warning for any field it did not take.
fn not_taken(fields: &[Field], diffs: &[FieldDiff], updated: &Value) -> Option<String> {
    let names: Vec<&str> = fields
        .iter()
        .zip(diffs)
        .filter(|(f, d)| {
            updated
                .get(f.prop)
                .and_then(Value::as_str)
                .is_some_and(|got| got != d.desired)
        })
        .map(|(f, _)| f.param)
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "Twilio's response still shows different values for {}",
            names.join(", ")
        )
    })
}

async fn configure_number(
    api: &Twilio,
    number: &str,
    targets: &Targets,
    dry_run: bool,
) -> Result<Resource, ConfigureError> {
    let found = api
        .find_number(number)
        .await?
        .ok_or_else(|| ConfigureError::UnknownNumber {
            number: number.to_owned(),
            account: api.account_sid().to_owned(),
        })?;
    let pn_sid = text(&found, "sid").to_owned();
    if !is_sid(&pn_sid, "PN") {
        return Err(format!(
            "listing incoming phone numbers: unexpected sid {pn_sid:?} for {number}"
        )
        .into());
    }
    let fields = diff(&NUMBER_FIELDS, &found, targets);
    let mut warnings = overriding_settings(&found);
    let changes = fields.iter().filter(|d| d.changed).count();
    let applied = !dry_run && changes > 0;
    if applied {
        let what = format!("updating {number} ({pn_sid})");
        let updated = api
            .update_number(&pn_sid, &changed_form(&fields), &what)
            .await?;
        warnings.extend(not_taken(&NUMBER_FIELDS, &fields, &updated));
    }
    // Which URL Twilio calls for the number's incoming messages once this run is done.
    let sms_url = if applied {
        targets.sms.clone()
    } else {
        text(&found, "sms_url").to_owned()
    };
    let service = api.service_of_number(&pn_sid).await?;
    let (messaging_service_sid, incoming_messages_url) = match &service {
        Some(service) => {
            let mg = text(service, "sid").to_owned();
            let by_number = service
                .get("use_inbound_webhook_on_number")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let url = if by_number {
                sms_url
            } else {
                text(service, "inbound_request_url").to_owned()
            };
            if !by_number && url != targets.sms {
                warnings.push(format!(
                    "{number} is in Messaging Service {mg} ({:?}): Twilio sends its incoming messages to the service's inbound request URL {}, not to SmsUrl; run `twilio-webhooks configure --messaging-service {mg}` (or turn on UseInboundWebhookOnNumber on the service)",
                    text(service, "friendly_name"),
                    show(&url),
                ));
            }
            (Some(mg), url)
        }
        None => (None, sms_url),
    };
    Ok(Resource {
        kind: "phone_number",
        sid: pn_sid,
        name: number.to_owned(),
        fields,
        changes,
        applied,
        warnings,
        messaging_service_sid,
        incoming_messages_url: Some(incoming_messages_url),
    })
}

async fn configure_service(
    api: &Twilio,
    mg: &str,
    targets: &Targets,
    dry_run: bool,
) -> Result<Resource, ConfigureError> {
    let found = api.service(mg).await?;
    let fields = diff(&SERVICE_FIELDS, &found, targets);
    let mut warnings = Vec::new();
    if found
        .get("use_inbound_webhook_on_number")
        .and_then(Value::as_bool)
        == Some(true)
    {
        warnings.push(
            "UseInboundWebhookOnNumber is on: Twilio sends incoming messages to each number's own SmsUrl, not to InboundRequestUrl (configure the numbers with --number)".to_owned(),
        );
    }
    let changes = fields.iter().filter(|d| d.changed).count();
    let applied = !dry_run && changes > 0;
    if applied {
        let what = format!("updating Messaging Service {mg}");
        let updated = api
            .update_service(mg, &changed_form(&fields), &what)
            .await?;
        warnings.extend(not_taken(&SERVICE_FIELDS, &fields, &updated));
    }
    Ok(Resource {
        kind: "messaging_service",
        sid: mg.to_owned(),
        name: text(&found, "friendly_name").to_owned(),
        fields,
        changes,
        applied,
        warnings,
        messaging_service_sid: None,
        incoming_messages_url: None,
    })
}

/// Settings on the number that make Twilio ignore the URLs being set.
fn overriding_settings(number: &Value) -> Vec<String> {
    let set = |prop: &str| Some(text(number, prop).trim()).filter(|s| !s.is_empty());
    let mut warnings = Vec::new();
    if let Some(sid) = set("sms_application_sid") {
        warnings.push(format!(
            "SmsApplicationSid is {sid} (a TwiML app): Twilio uses its settings, not SmsUrl, for incoming messages"
        ));
    }
    if let Some(sid) = set("voice_application_sid") {
        warnings.push(format!(
            "VoiceApplicationSid is {sid}: Twilio uses that TwiML app's settings, not VoiceUrl, for incoming calls"
        ));
    }
    if let Some(sid) = set("trunk_sid") {
        warnings.push(format!(
            "TrunkSid is {sid}: calls go to that SIP trunk, not VoiceUrl"
        ));
    }
    warnings
}

fn show(value: &str) -> &str {
    if value.is_empty() { "(none)" } else { value }
}

/// The human-readable report.
fn render(report: &Report, check: bool) -> String {
    let mut out = String::new();
    for r in &report.resources {
        match r.kind {
            "phone_number" => {
                let _ = writeln!(
                    out,
                    "{} ({}) in account {}:",
                    r.name, r.sid, report.account_sid
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "Messaging Service {} ({:?}) in account {}:",
                    r.sid, r.name, report.account_sid
                );
            }
        }
        let width = r.fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
        for f in &r.fields {
            let name = f.name;
            if f.changed {
                let _ = writeln!(
                    out,
                    "  {name:<width$}  {} → {}",
                    show(&f.current),
                    f.desired
                );
            } else {
                let _ = writeln!(out, "  {name:<width$}  {} (unchanged)", show(&f.current));
            }
        }
        if let Some(url) = &r.incoming_messages_url {
            let via = r
                .messaging_service_sid
                .as_deref()
                .map_or(String::new(), |mg| {
                    format!(" (through Messaging Service {mg})")
                });
            let _ = writeln!(out, "  incoming messages go to: {}{via}", show(url));
        }
        for warning in &r.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        let status = if check {
            if r.changes == 0 {
                "check: up to date".to_owned()
            } else {
                format!("check: {} of {} fields differ", r.changes, r.fields.len())
            }
        } else if report.dry_run {
            "dry run: nothing changed".to_owned()
        } else if r.applied {
            format!(
                "updated: {} of {} fields changed",
                r.changes,
                r.fields.len()
            )
        } else {
            "already configured: nothing changed".to_owned()
        };
        let _ = writeln!(out, "{status}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        for ok in ["+15551234567", "+4915112345678", "+12345678"] {
            assert!(validate_e164(ok).is_ok(), "{ok}");
        }
        for bad in [
            "15551234567",
            "+0555123456",
            "+1555",
            "+1 555 123 4567",
            "+1234567890123456",
            "",
        ] {
            assert!(validate_e164(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_changed_fields_are_sent() {
        let t = Targets::from_public_base_url("https://h.example.com").unwrap();
        let current = serde_json::json!({"inbound_request_url": "https://h.example.com/sms", "inbound_method": "GET"});
        let diffs = diff(&SERVICE_FIELDS, &current, &t);
        assert_eq!(
            changed_form(&diffs),
            [
                ("InboundMethod", "POST"),
                ("FallbackUrl", "https://h.example.com/fallback"),
                ("FallbackMethod", "POST"),
                ("StatusCallback", "https://h.example.com/status"),
            ]
        );
        let echoed = serde_json::json!({"inbound_method": "GET", "fallback_url": "https://h.example.com/fallback"});
        assert_eq!(
            not_taken(&SERVICE_FIELDS, &diffs, &echoed).as_deref(),
            Some("Twilio's response still shows different values for InboundMethod")
        );
    }
}
