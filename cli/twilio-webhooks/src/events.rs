//! `twilio-webhooks events`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use webhook_testkit::events::{all_events, check_all, write_all};

use crate::util::{CliResult, shell_quote};

#[derive(Args)]
#[command(after_help = "\
Exit codes:
  0  written, or (--check) up to date
  1  error, or (--check) files missing or out of date
  2  usage error")]
pub struct EventsArgs {
    /// Directory of the sample events.
    #[arg(long, value_name = "DIR", default_value = "events")]
    dir: PathBuf,
    /// Do not write: exit 1, listing the files that are missing or out of date (for CI).
    #[arg(long)]
    check: bool,
}

/// Regenerate (or check) the signed sample API Gateway events (`sam local invoke -e`, the
/// Lambda console's test events, the handler tests).
pub fn run(args: EventsArgs) -> CliResult {
    if args.check {
        return match check_all(&args.dir) {
            Ok(()) => {
                println!(
                    "{} sample events in {} are up to date",
                    all_events().len(),
                    args.dir.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                eprintln!("{problems}");
                eprintln!(
                    "or run: twilio-webhooks events --dir {}",
                    shell_quote(&args.dir.display().to_string())
                );
                Ok(ExitCode::FAILURE)
            }
        };
    }
    let written = write_all(&args.dir).map_err(|e| {
        format!(
            "cannot write the sample events to {}: {e}",
            args.dir.display()
        )
    })?;
    for path in &written {
        println!("{}", path.display());
    }
    eprintln!("wrote {} sample events", written.len());
    Ok(ExitCode::SUCCESS)
}
