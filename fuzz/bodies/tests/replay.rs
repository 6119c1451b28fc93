//! Every committed seed (`fuzz/seeds/<target>/`) and every crash input that became a
//! regression (`fuzz/regressions/<target>/`) through its target's body: the fuzz targets'
//! properties, checked on the stable toolchain in the normal test suite (scripts/test).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("a directory entry").path();
            if path.is_file() && path.extension().is_none_or(|x| x != "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no seeds for {target}");
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).expect("read an input");
        if catch_unwind(AssertUnwindSafe(|| fuzz_bodies::run(target, &data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail (messages above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_a_test_here() {
    let tests = include_str!("replay.rs");
    for t in fuzz_bodies::TARGETS {
        assert!(
            tests.contains(&format!("fn {t}() {{")),
            "no replay test for {t}"
        );
    }
}

#[test]
fn form() {
    replay("form");
}

#[test]
fn signature() {
    replay("signature");
}

#[test]
fn lambda_event() {
    replay("lambda_event");
}

#[test]
fn lambda_fields() {
    replay("lambda_fields");
}

#[test]
fn payload() {
    replay("payload");
}

#[test]
fn twiml() {
    replay("twiml");
}

#[test]
fn stored_json() {
    replay("stored_json");
}

#[test]
fn sqlite_rows() {
    replay("sqlite_rows");
}
