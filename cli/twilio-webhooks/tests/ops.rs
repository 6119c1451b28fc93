//! `replay` and `consent` of the real binary on a local data directory.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use webhook_local::{Database, SqliteQueue, SqliteStore};
use webhook_pipeline::ConsentStore;
use webhook_pipeline::store::ClaimTimes;
use webhook_testkit::contract::sample_event;

const BIN: &str = env!("CARGO_BIN_EXE_twilio-webhooks");

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A data directory holding one processed STOP from +15559990000 (received in 2027, so any
/// `--since` in the past selects it) and the job queue empty.
fn data_dir() -> TempDir {
    let dir = TempDir(std::env::temp_dir().join(format!("cli-ops-{}", uuid_like())));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Database::open_dir(&dir.0).unwrap();
        let q = SqliteQueue::new(db.clone()).with_records_as_jobs();
        let e = sample_event("cli");
        let t = ClaimTimes {
            now_ms: e.received_at,
            lock_until_ms: e.received_at + 30_000,
            expires_at_s: e.received_at / 1000 + 3600,
        };
        q.claim_and_enqueue(&e, "a", t).await.unwrap();
        let folded = q
            .fold_ready(64, Duration::from_secs(3600), Duration::from_secs(1), false)
            .await
            .unwrap();
        assert_eq!(folded.processed, 1);
        let store = SqliteStore::new(db);
        assert!(store.load_consent("+15559990000").await.unwrap().is_some());
    });
    dir
}

fn uuid_like() -> String {
    format!(
        "{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn pending_jobs(dir: &TempDir) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = Database::open_existing_dir(&dir.0).unwrap();
        SqliteQueue::new(db).counts().await.unwrap().pending
    })
}

#[test]
fn consent_prints_the_ledger_and_exits_1_without_a_record() {
    let dir = data_dir();
    let data = dir.0.to_str().unwrap();
    let out = run(&["consent", "+15559990000", "--data", data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["ours"], "+15550000001");
    assert_eq!(line["status"], "opted_out");
    assert_eq!(line["changed_at"], "2027-01-15T08:00:00.000Z");
    assert_eq!(line["source_message_sid"], "SM1");

    let out = run(&["consent", "+15559990000", "--from", "MG1", "--data", data]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no consent record for +15559990000 from MG1"));
    let out = run(&["consent", "+15550000000", "--data", data]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn replay_dry_run_counts_and_replay_enqueues() {
    let dir = data_dir();
    let data = dir.0.to_str().unwrap();
    let out = run(&["replay", "--since", "1h", "--data", data, "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("would replay 1 event(s)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(pending_jobs(&dir), 0);

    let out = run(&[
        "replay",
        "--since",
        "1h",
        "--kind",
        "call_status",
        "--data",
        data,
    ]);
    assert!(
        text(&out.stdout).starts_with("replayed 0 event(s)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(pending_jobs(&dir), 0);

    let out = run(&[
        "replay",
        "--since",
        "2026-01-01T00:00:00Z",
        "--sid",
        "SM1",
        "--data",
        data,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("replayed 1 event(s)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(pending_jobs(&dir), 1);

    let out = run(&["replay", "--since", "yesterday", "--data", data]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--since"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_data_directory_is_a_clear_error() {
    let out = run(&[
        "consent",
        "+15559990000",
        "--data",
        "/nonexistent/twilio-ops",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no local data"),
        "{}",
        text(&out.stderr)
    );
}
