//! On-call commands: `redrive` (DLQ back to the work queue), `replay` (stored events enqueued
//! again) and `consent` (the opt-out ledger), against a deployed stack or `serve`'s data
//! directory.
//!
//! AWS targets: `--stack NAME` reads the table and queue names from the stack's outputs
//! (`EventTableName`, `WorkQueueUrl`, `DeadLetterQueueUrl`, with the `aws` CLI as `configure`
//! does), or they are given directly. The SDK takes its credentials, region and
//! `AWS_ENDPOINT_URL` from the environment as usual; `--endpoint-url` overrides the endpoint.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use clap::Args;
use serde_json::{Value, json};
use webhook_aws::dynamo::DynamoStore;
use webhook_aws::sqs::SqsQueue;
use webhook_local::{Database, SqliteQueue, SqliteStore};
use webhook_ops::{DynamoReplay, redrive};
use webhook_pipeline::Store;
use webhook_pipeline::consent::ConsentLedger;
use webhook_pipeline::replay::{self, ReplayFilter, ReplayReport, ReplaySource, format_rfc3339};
use webhook_pipeline::store::WorkQueue;

use crate::util::CliResult;

/// The stack outputs these commands read (template.yaml `Outputs`).
const TABLE_OUTPUT: &str = "EventTableName";
const QUEUE_OUTPUT: &str = "WorkQueueUrl";
const DLQ_OUTPUT: &str = "DeadLetterQueueUrl";

/// Where `serve` keeps its data unless told otherwise.
const DEFAULT_DATA: &str = ".local-data";

#[derive(Args, Debug, Clone)]
pub struct AwsTarget {
    /// A stack deployed from template.yaml: its outputs name the table and queues (runs
    /// `aws cloudformation describe-stacks`, so AWS_PROFILE / AWS_REGION apply).
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,

    /// AWS endpoint for DynamoDB and SQS (moto, LocalStack); default: AWS_ENDPOINT_URL, else
    /// AWS itself.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

/// Move dead-lettered jobs back to the work queue.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["stack", "dlq"])))]
pub struct RedriveArgs {
    #[command(flatten)]
    pub aws: AwsTarget,

    /// The dead-letter queue's URL.
    #[arg(long, value_name = "URL", requires = "queue", conflicts_with = "stack")]
    pub dlq: Option<String>,

    /// The work queue's URL.
    #[arg(long, value_name = "URL", requires = "dlq", conflicts_with = "stack")]
    pub queue: Option<String>,

    /// Print how many jobs would move (SQS's approximate count); move nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Move at most this many.
    #[arg(long, value_name = "N")]
    pub max: Option<usize>,
}

/// Enqueue stored events again (the receiver behind FORWARD_URL was down, or lost them).
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("target").args(["stack", "table", "data"])))]
pub struct ReplayArgs {
    /// Events received since: RFC 3339 (2026-05-01T12:00:00Z) or a duration ago (30m, 24h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: String,

    /// Only this kind (inbound_message, message_status, inbound_call, call_status,
    /// recording_status, conference_status, fallback).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Only the events of this MessageSid, CallSid, RecordingSid or ConferenceSid.
    #[arg(long, value_name = "SID")]
    pub sid: Option<String>,

    /// Skip events already processed (by default they are processed again: FORWARD_URL gets
    /// them again, with the same Idempotency-Key).
    #[arg(long)]
    pub unprocessed: bool,

    /// Print how many events would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub aws: AwsTarget,

    /// The DynamoDB event table (with --queue).
    #[arg(long, value_name = "NAME", requires = "queue")]
    pub table: Option<String>,

    /// The SQS work queue's URL (with --table).
    #[arg(long, value_name = "URL", requires = "table", conflicts_with = "stack")]
    pub queue: Option<String>,

    /// `serve`'s data directory (the default target: .local-data).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

/// Show the opt-out ledger of a subscriber: one JSON line per sender (our number or
/// Messaging Service). Exit status 1 when there is no record.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("target").args(["stack", "table", "data"])))]
pub struct ConsentArgs {
    /// The subscriber's number (E.164, e.g. +15551234567).
    #[arg(value_name = "NUMBER")]
    pub subscriber: String,

    /// Only this sender: our number or Messaging Service Sid (MG...).
    #[arg(long, value_name = "OURS")]
    pub from: Option<String>,

    #[command(flatten)]
    pub aws: AwsTarget,

    /// The DynamoDB event table.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,

    /// `serve`'s data directory (the default target: .local-data).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// SDK config for an operator's command: patient timeouts (a Scan page of a large table, a
/// long poll), a few retries, and `--endpoint-url` when given.
async fn sdk(endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(4));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// The stack's outputs, by key.
async fn stack_outputs(stack: &str, alternative: &str) -> Result<HashMap<String, String>, String> {
    let stdout =
        crate::configure::describe_stack(stack, std::env::var_os("PATH"), alternative).await?;
    parse_outputs(stack, &stdout)
}

fn parse_outputs(stack: &str, stdout: &[u8]) -> Result<HashMap<String, String>, String> {
    let json: Value = serde_json::from_slice(stdout)
        .map_err(|e| format!("aws cloudformation describe-stacks printed invalid JSON: {e}"))?;
    let outputs = json
        .pointer("/Stacks/0")
        .ok_or_else(|| {
            format!("aws cloudformation describe-stacks returned no stack named {stack}")
        })?
        .get("Outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(outputs
        .iter()
        .filter_map(|o| {
            Some((
                o.get("OutputKey")?.as_str()?.to_owned(),
                o.get("OutputValue")?.as_str()?.trim().to_owned(),
            ))
        })
        .filter(|(_, v)| !v.is_empty())
        .collect())
}

fn output(outputs: &HashMap<String, String>, stack: &str, key: &str) -> Result<String, String> {
    outputs.get(key).cloned().ok_or_else(|| {
        format!("stack {stack} has no output {key}; is it deployed from this template.yaml?")
    })
}

/// A progress line on stderr, only when stderr is a terminal (never in logs or pipes).
struct Progress {
    on: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            on: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, text: &str) {
        if self.on {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{text}\x1b[K");
            let _ = err.flush();
            self.shown = true;
        }
    }

    fn done(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// redrive

pub fn run_redrive(args: RedriveArgs) -> CliResult {
    runtime()?.block_on(redrive_async(args))
}

async fn redrive_async(args: RedriveArgs) -> CliResult {
    let (dlq, queue) = match (&args.aws.stack, args.dlq, args.queue) {
        (Some(stack), _, _) => {
            let outputs = stack_outputs(stack, "--dlq and --queue").await?;
            (
                output(&outputs, stack, DLQ_OUTPUT)?,
                output(&outputs, stack, QUEUE_OUTPUT)?,
            )
        }
        (None, Some(dlq), Some(queue)) => (dlq, queue),
        _ => return Err("give --stack, or both --dlq and --queue".into()),
    };
    let sqs = aws_sdk_sqs::Client::new(&sdk(args.aws.endpoint_url.as_deref()).await);
    let (visible, in_flight) = redrive::depth(&sqs, &dlq)
        .await
        .map_err(|e| e.to_string())?;
    if args.dry_run {
        let n = args.max.map_or(visible, |m| visible.min(m as u64));
        println!(
            "would move {n} job(s) from {dlq} to {queue} (SQS's approximate count; {in_flight} more received by someone right now)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let total = args.max.map_or(visible, |m| visible.min(m as u64));
    let mut progress = Progress::new();
    let mut show = |n: usize| progress.show(&format!("redrive: {n}/~{total}"));
    let report = redrive::redrive(&sqs, &dlq, &queue, args.max, &mut show)
        .await
        .map_err(|e| e.to_string());
    progress.done();
    let report = report?;
    println!("moved {} job(s) from {dlq} to {queue}", report.moved);
    if report.copied_not_deleted > 0 {
        println!(
            "{} job(s) were sent but could not be deleted from the DLQ: they are in both (the worker does each once)",
            report.copied_not_deleted
        );
    }
    if report.failed > 0 {
        return Err(format!(
            "{} job(s) could not be sent and stay in the DLQ (see the log above); run redrive again",
            report.failed
        ));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// replay

pub fn run_replay(args: ReplayArgs) -> CliResult {
    runtime()?.block_on(replay_async(args))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn replay_async(args: ReplayArgs) -> CliResult {
    let now = now_ms();
    let filter = ReplayFilter {
        since_ms: replay::parse_since(&args.since, now).map_err(|e| format!("--since: {e}"))?,
        kind: args.kind.clone(),
        sid: args.sid.clone(),
        unprocessed_only: args.unprocessed,
    };
    let (source, queue, _db): (Arc<dyn ReplaySource>, Arc<dyn WorkQueue>, Option<Database>) =
        match (&args.aws.stack, &args.table, &args.queue) {
            (Some(stack), _, _) => {
                let outputs = stack_outputs(stack, "--table and --queue").await?;
                let sdk = sdk(args.aws.endpoint_url.as_deref()).await;
                aws_pair(
                    &sdk,
                    output(&outputs, stack, TABLE_OUTPUT)?,
                    output(&outputs, stack, QUEUE_OUTPUT)?,
                )
            }
            (None, Some(table), Some(queue)) => {
                let sdk = sdk(args.aws.endpoint_url.as_deref()).await;
                aws_pair(&sdk, table.clone(), queue.clone())
            }
            _ => {
                let dir = args.data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
                let db = Database::open_existing_dir(&dir).map_err(|e| e.to_string())?;
                (
                    Arc::new(SqliteStore::new(db.clone())),
                    Arc::new(SqliteQueue::new(db.clone())),
                    Some(db),
                )
            }
        };
    let mut progress = Progress::new();
    let mut show = |done: usize, total: usize| progress.show(&format!("replay: {done}/{total}"));
    let report = replay::replay(&*source, &*queue, &filter, args.dry_run, now, &mut show).await;
    progress.done();
    let report = report.map_err(|e| e.to_string())?;
    println!("{}", replay_summary(&report, &filter, args.dry_run));
    if report.failed > 0 {
        return Err(format!(
            "{} event(s) could not be replayed (see the log above); run the replay again",
            report.failed
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn aws_pair(
    sdk: &SdkConfig,
    table: String,
    queue: String,
) -> (Arc<dyn ReplaySource>, Arc<dyn WorkQueue>, Option<Database>) {
    (
        Arc::new(DynamoReplay::new(aws_sdk_dynamodb::Client::new(sdk), table)),
        Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), queue)),
        None,
    )
}

fn replay_summary(r: &ReplayReport, filter: &ReplayFilter, dry_run: bool) -> String {
    let since = format_rfc3339(filter.since_ms);
    let already = if filter.unprocessed_only {
        format!("{} already processed, left alone", r.processed)
    } else {
        format!("{} of them already processed", r.processed)
    };
    if dry_run {
        format!(
            "would replay {} event(s) received since {since} ({already})",
            r.enqueued
        )
    } else {
        format!(
            "replayed {} event(s) received since {since} ({already}); {} skipped (being processed right now, or expired)",
            r.enqueued, r.skipped
        )
    }
}

// ---------------------------------------------------------------------------------------------
// consent

pub fn run_consent(args: ConsentArgs) -> CliResult {
    runtime()?.block_on(consent_async(args))
}

async fn consent_async(args: ConsentArgs) -> CliResult {
    let subscriber = args.subscriber.trim();
    if subscriber.is_empty() {
        return Err("give the subscriber's number".into());
    }
    let store: Arc<dyn Store> = match (&args.aws.stack, &args.table) {
        (Some(stack), _) => {
            let outputs = stack_outputs(stack, "--table").await?;
            let sdk = sdk(args.aws.endpoint_url.as_deref()).await;
            Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                output(&outputs, stack, TABLE_OUTPUT)?,
            ))
        }
        (None, Some(table)) => {
            let sdk = sdk(args.aws.endpoint_url.as_deref()).await;
            Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                table.clone(),
            ))
        }
        _ => {
            let dir = args.data.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
            let db = Database::open_existing_dir(&dir).map_err(|e| e.to_string())?;
            Arc::new(SqliteStore::new(db))
        }
    };
    let ledger = store
        .load_consent(subscriber)
        .await
        .map_err(|e| e.to_string())?
        .map(|(l, _)| l)
        .unwrap_or_default();
    let lines = consent_lines(subscriber, &ledger, args.from.as_deref().map(str::trim));
    if lines.is_empty() {
        eprintln!(
            "no consent record for {subscriber}{}",
            args.from
                .as_deref()
                .map_or(String::new(), |f| format!(" from {f}"))
        );
        return Ok(ExitCode::FAILURE);
    }
    for line in lines {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One JSON object per pair, times in RFC 3339.
fn consent_lines(subscriber: &str, ledger: &ConsentLedger, from: Option<&str>) -> Vec<Value> {
    let time = |ms: Option<i64>| ms.map(format_rfc3339);
    ledger
        .pairs
        .iter()
        .filter(|(ours, _)| from.is_none_or(|f| f == ours.as_str()))
        .map(|(ours, e)| {
            json!({
                "subscriber": subscriber,
                "ours": ours,
                "status": e.status,
                "changed_at": time(e.changed_at_ms),
                "source_message_sid": e.source_message_sid,
                "via": e.via,
                "last_help_at": time(e.last_help_at_ms),
                "last_help_message_sid": e.last_help_message_sid,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use webhook_pipeline::consent::{ConsentAction, ConsentUpdate, ConsentVia};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Redrive(RedriveArgs),
        Replay(ReplayArgs),
        Consent(ConsentArgs),
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.command)
    }

    #[test]
    fn redrive_takes_a_stack_or_both_queues() {
        assert!(parse(&["redrive"]).is_err());
        assert!(parse(&["redrive", "--dlq", "http://q/d"]).is_err());
        assert!(parse(&["redrive", "--stack", "s", "--dlq", "d", "--queue", "q"]).is_err());
        let Ok(Cmd::Redrive(a)) = parse(&["redrive", "--dlq", "d", "--queue", "q", "--dry-run"])
        else {
            panic!("parses")
        };
        assert!(a.dry_run);
        assert_eq!(
            (a.dlq.as_deref(), a.queue.as_deref()),
            (Some("d"), Some("q"))
        );
        assert!(matches!(
            parse(&[
                "redrive",
                "--stack",
                "s",
                "--endpoint-url",
                "http://127.0.0.1:5000"
            ]),
            Ok(Cmd::Redrive(RedriveArgs {
                aws: AwsTarget {
                    endpoint_url: Some(_),
                    ..
                },
                ..
            }))
        ));
    }

    #[test]
    fn replay_and_consent_take_one_target() {
        assert!(parse(&["replay"]).is_err(), "--since is required");
        assert!(
            parse(&["replay", "--since", "1h"]).is_ok(),
            "local by default"
        );
        assert!(parse(&["replay", "--since", "1h", "--table", "t"]).is_err());
        assert!(parse(&["replay", "--since", "1h", "--table", "t", "--queue", "q"]).is_ok());
        assert!(parse(&["replay", "--since", "1h", "--stack", "s", "--data", "d"]).is_err());
        assert!(parse(&["consent", "+15551230000", "--from", "+15559990000"]).is_ok());
        assert!(parse(&["consent"]).is_err());
        assert!(parse(&["consent", "+1555", "--table", "t", "--data", "d"]).is_err());
    }

    #[test]
    fn stack_outputs_are_read_by_key() {
        let stdout = br#"{"Stacks":[{"StackStatus":"UPDATE_COMPLETE","Outputs":[
            {"OutputKey":"EventTableName","OutputValue":"events-1"},
            {"OutputKey":"WorkQueueUrl","OutputValue":" https://sqs/q "},
            {"OutputKey":"Blank","OutputValue":""}]}]}"#;
        let o = parse_outputs("s", stdout).unwrap();
        assert_eq!(output(&o, "s", TABLE_OUTPUT).unwrap(), "events-1");
        assert_eq!(output(&o, "s", QUEUE_OUTPUT).unwrap(), "https://sqs/q");
        let missing = output(&o, "s", DLQ_OUTPUT).unwrap_err();
        assert!(
            missing.contains("no output DeadLetterQueueUrl"),
            "{missing}"
        );
        assert!(parse_outputs("s", br#"{"Stacks":[]}"#).is_err());
    }

    #[test]
    fn consent_lines_show_each_pair_with_rfc3339_times() {
        let mut ledger = ConsentLedger::default();
        for (ours, action, at) in [
            ("+15550000001", ConsentAction::OptOut, 1_800_000_000_000),
            ("MG1", ConsentAction::Help, 1_800_000_001_000),
        ] {
            ledger.apply(&ConsentUpdate {
                ours: ours.into(),
                subscriber: "+15559990000".into(),
                action,
                via: ConsentVia::Keyword,
                at_ms: at,
                message_sid: "SM1".into(),
            });
        }
        let all = consent_lines("+15559990000", &ledger, None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["status"], "opted_out");
        assert_eq!(all[0]["changed_at"], "2027-01-15T08:00:00.000Z");
        assert_eq!(all[0]["via"], "keyword");
        assert_eq!(all[1]["status"], Value::Null);
        assert_eq!(all[1]["last_help_at"], "2027-01-15T08:00:01.000Z");
        let one = consent_lines("+15559990000", &ledger, Some("MG1"));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0]["ours"], "MG1");
        assert!(consent_lines("+15559990000", &ledger, Some("MG2")).is_empty());
    }
}
