//! `twilio-webhooks inspect`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::util::CliResult;

#[derive(Args)]
pub struct InspectArgs {
    /// Data directory of `twilio-webhooks serve`.
    #[arg(long, value_name = "DIR", default_value = ".local-data")]
    data: PathBuf,
}

/// One JSON value per line: `{"type":"event",...}`, `{"type":"state",...}`,
/// `{"type":"job","status":"queued|dead",...}`. Safe while `serve` runs.
pub fn run(args: InspectArgs) -> CliResult {
    let lines = webhook_local::inspect(&args.data).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    for line in lines {
        match writeln!(out, "{line}") {
            Ok(()) => {}
            // `inspect | head`: the reader left, which is fine.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(format!("cannot write to stdout: {e}")),
        }
    }
    out.flush().or_else(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(()),
        _ => Err(format!("cannot write to stdout: {e}")),
    })?;
    Ok(ExitCode::SUCCESS)
}
