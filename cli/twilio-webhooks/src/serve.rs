//! `twilio-webhooks serve`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use twilio_webhook::basic::BasicAuth;
use twilio_webhook::url::PublicBaseUrl;
use twilio_webhook::{AuthToken, FormParams, sign};
use webhook_forward::HttpForwarder;
use webhook_local::{ServeConfig, Server, shutdown_signal, termination_signal};
use webhook_pipeline::config::{FORWARD_URL, Secret, var};
use webhook_pipeline::{ReplyPolicy, Settings};
use webhook_testkit::samples::{ACCOUNT_SID, MESSAGE_SID, inbound_sms};

use crate::sign::curl_form;
use crate::util::{CliResult, token_or_test, warn_test_token};

#[derive(Args)]
#[command(after_help = "\
Environment:
  TWILIO_AUTH_TOKEN       auth token (same as --auth-token)
  PUBLIC_BASE_URL         public base URL (same as --public-base-url)
  SMS_AUTO_REPLY, VOICE_GREETING, VOICE_FORWARD_TO, STATUS_CALLBACK_URL, FALLBACK_VOICE_MESSAGE
                          the reply policy, as in the Lambda functions
  FORWARD_URL             POST every processed event (JSON) there
  EVENT_TTL_SECONDS, LOCK_SECONDS
                          dedup window and claim lock, as in the Lambda functions
  LOG_PII                 true: log the query values of refused URLs (phone numbers, bodies)
  RUST_LOG                log filter (default: info)

Exit codes:
  0  stopped by Ctrl-C or SIGTERM, after finishing the requests and jobs in flight
  1  error (address in use, unusable data directory, bad secret, test token on a public address)
  2  usage error")]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Directory of the embedded database (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".local-data")]
    data: PathBuf,
    /// The public base URL Twilio calls when it is not http://<Host header> (a tunnel such as
    /// https://abc.ngrok.app, a reverse proxy): signatures are checked against
    /// <public-base-url><path>?<query>. The same setting as PUBLIC_BASE_URL in Lambda.
    #[arg(
        long,
        alias = "public-url",
        value_name = "URL",
        env = "PUBLIC_BASE_URL"
    )]
    public_base_url: Option<PublicBaseUrl>,
    /// Twilio auth token used to check X-Twilio-Signature; the public test token when unset.
    #[arg(
        long,
        value_name = "T",
        env = "TWILIO_AUTH_TOKEN",
        hide_env_values = true
    )]
    auth_token: Option<String>,
    /// The Lambda secret's JSON (or a bare token) from a file: `auth_token`,
    /// `secondary_auth_token`, `accounts` (tokens by AccountSid), `shared_keys`, `basic_auth`.
    /// Replaces --auth-token. Read once, at start.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "auth_token",
        alias = "secret-file"
    )]
    secrets: Option<PathBuf>,
    /// Require HTTP Basic credentials (Twilio sends them for https://USER:PASS@host/... URLs):
    /// 401 with a challenge without them.
    #[arg(long, value_name = "USER:PASS")]
    basic_auth: Option<String>,
    /// Accept the public test token even though this server is reachable from outside
    /// (a non-loopback --addr or a --public-base-url): anyone can then sign requests. For demos only.
    #[arg(long)]
    insecure_public_test_token: bool,
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

pub fn run(args: ServeArgs) -> CliResult {
    init_logs(args.log_format);
    let (token, is_test) = token_or_test(args.auth_token.clone())?;
    let mut config = ServeConfig::new(args.addr, args.data.clone(), token.clone());
    let mut banner_token = Some(token);
    if let Some(path) = &args.secrets {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --secrets {}: {e}", path.display()))?;
        config.secret = Secret::parse(&text, "--secrets").map_err(|e| e.to_string())?;
        // The banner's curl claims the sample's account: signed with the token checking it.
        banner_token = config.secret.token_for(ACCOUNT_SID).cloned();
    }
    if let Some(pair) = &args.basic_auth {
        config.secret.basic_auth =
            Some(BasicAuth::parse(pair).map_err(|e| format!("--basic-auth: {e}"))?);
    }
    let is_test = is_test && args.secrets.is_none();
    let basic = config.secret.basic_auth.clone();
    config.public_url = args.public_base_url.clone();
    config.insecure_public_test_token = args.insecure_public_test_token;
    config.policy = ReplyPolicy::from_env();
    config.settings = Settings::from_env().map_err(|e| e.to_string())?;
    config.log_pii = webhook_pipeline::config::log_pii();
    let forward_url = var(FORWARD_URL);
    if let Some(url) = &forward_url {
        config
            .slow_work
            .push(Arc::new(HttpForwarder::new(url.clone())));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let server = Server::bind(config).await.map_err(|e| e.to_string())?;
        let addr = server
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        if is_test {
            warn_test_token(true);
        }
        tracing::info!(%addr, data = %args.data.display(), "listening");
        if let Some(url) = &forward_url {
            // Without the query string or userinfo, which may carry a secret.
            let shown = webhook_pipeline::redact::redact_url(url);
            tracing::info!(url = %shown, "forwarding every processed event (FORWARD_URL)");
        }
        print_banner(
            addr,
            &args.data,
            args.public_base_url.as_ref(),
            banner_token.as_ref(),
            basic.as_ref(),
        );
        // A second Ctrl-C / SIGTERM while draining: stop waiting.
        tokio::spawn(async {
            termination_signal().await;
            termination_signal().await;
            eprintln!("second signal: exiting without waiting for the worker");
            std::process::exit(130);
        });
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// What to paste where in the Twilio console, and a request to try right now.
fn print_banner(
    addr: SocketAddr,
    data: &std::path::Path,
    public: Option<&PublicBaseUrl>,
    token: Option<&AuthToken>,
    basic: Option<&BasicAuth>,
) {
    // A wildcard address is reachable (and signed) as localhost.
    let local = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let base = match public {
        Some(p) => p.as_str().to_owned(),
        None => format!("http://{local}"),
    };
    let sms_url = format!("{base}/sms");
    // What to paste into Twilio: with Basic auth, the credentials go into the URL.
    let console_base = match basic {
        Some(b) => match base.split_once("://") {
            Some((scheme, rest)) => {
                format!("{scheme}://{}:{}@{rest}", b.username(), b.expose_password())
            }
            None => base.clone(),
        },
        None => base.clone(),
    };
    let url = |path: &str| format!("{console_base}{path}");
    let params = inbound_sms(MESSAGE_SID, "Hello from curl");
    let form = FormParams::from_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));

    println!(
        "twilio-webhooks serve: listening on http://{addr} (data: {})",
        data.display()
    );
    println!();
    println!("Webhook URLs for the Twilio console (Phone Numbers > your number), all HTTP POST:");
    println!("  Messaging  \"A message comes in\"      {}", url("/sms"));
    println!(
        "  Messaging  \"Primary handler fails\"   {}",
        url("/fallback")
    );
    println!("  Voice      \"A call comes in\"         {}", url("/voice"));
    println!(
        "  Voice      \"Primary handler fails\"   {}",
        url("/fallback")
    );
    println!(
        "  Voice      \"Call status changes\"     {}",
        url("/status")
    );
    println!("  StatusCallback of messages you send  {}", url("/status"));
    if public.is_none() {
        println!();
        println!(
            "Twilio cannot reach this machine directly: start a tunnel to port {} and",
            addr.port()
        );
        println!(
            "restart with --public-base-url https://<your-tunnel-host> (signatures cover the URL)."
        );
    }
    println!();
    if token.is_none() {
        println!(
            "No signed curl: the secret has no default token and no entry for the sample's account {ACCOUNT_SID}."
        );
    }
    if let Some(token) = token {
        let signature = sign(token, &sms_url, &form);
        let mut curl = curl_form(&sms_url, &signature, &form);
        if let Some(b) = basic {
            curl.push_str(" -u ");
            curl.push_str(&crate::util::shell_quote(&format!(
                "{}:{}",
                b.username(),
                b.expose_password()
            )));
        }
        println!("Try it: a signed inbound SMS (run it twice: the duplicate gets the same reply):");
        println!("  {curl}");
    }
    println!();
    println!(
        "See what was stored: twilio-webhooks inspect --data {}",
        crate::util::shell_quote(&data.display().to_string())
    );
    println!("Stop with Ctrl-C (the job in progress is finished first).");
    println!();
}
