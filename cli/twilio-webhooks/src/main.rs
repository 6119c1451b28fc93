//! `twilio-webhooks`: run the whole webhook flow locally, sign requests, inspect local data,
//! regenerate the sample API Gateway events, and the on-call commands (redrive, replay, consent).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `serve` allocates per request (body, JSON, records) on several threads: mimalloc's
/// thread-local heaps cost a fraction of glibc malloc's (BENCHMARKS.md, local server load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod configure;
mod events;
mod inspect;
mod ops;
mod serve;
mod sign;
mod util;

#[derive(Parser)]
#[command(
    name = "twilio-webhooks",
    version,
    about = "Twilio webhooks, locally: serve the four endpoints with an embedded store, sign test requests, inspect what was stored.",
    after_help = "Start here: `twilio-webhooks serve`, then run the curl command it prints.\n\n\
Exit codes: 0 success, 1 error (one line on stderr), 2 usage error; `configure --check` exits 3\n\
when the Twilio configuration differs from the deployment. Each command's --help has details."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand (a new one, e.g. `configure`, is one more variant + module).
#[derive(Subcommand)]
enum Command {
    /// Run the whole product locally: the sms, voice, status and fallback endpoints, the
    /// worker and the sweeper, on an embedded SQLite store (no AWS, no Docker).
    Serve(serve::ServeArgs),
    /// Compute the X-Twilio-Signature Twilio would send for a request (and a curl command).
    Sign(sign::SignArgs),
    /// Show what a local data directory holds: events (time, kind, outcome, processed), state
    /// records and jobs; `--json` for every record as JSON lines.
    Inspect(inspect::InspectArgs),
    /// Regenerate the signed sample API Gateway events in events/ (or check them with --check).
    Events(events::EventsArgs),
    /// Point a Twilio number and/or Messaging Service at this deployment, showing the diff
    /// (Twilio REST API; credentials from the TWILIO_* environment variables).
    Configure(configure::ConfigureArgs),
    /// Move dead-lettered jobs back to the work queue (by --stack, or --dlq and --queue).
    Redrive(ops::RedriveArgs),
    /// Enqueue stored events received since a time again, locally (--data) or on AWS
    /// (--stack, or --table and --queue).
    Replay(ops::ReplayArgs),
    /// Show a subscriber's opt-out ledger (STOP / START / HELP, error 21610), locally or on AWS.
    Consent(ops::ConsentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Events(args) => events::run(args),
        Command::Configure(args) => configure::run_blocking(&args),
        Command::Redrive(args) => ops::run_redrive(args),
        Command::Replay(args) => ops::run_replay(args),
        Command::Consent(args) => ops::run_consent(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
