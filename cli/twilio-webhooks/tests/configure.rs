//! The real `twilio-webhooks configure` binary, end to end.
//!
//! NOTE: these tests need the `configure` subcommand wired into src/main.rs
//! (`mod configure;`, a `Configure(configure::ConfigureArgs)` variant and its match arm). Until
//! then they fail: the binary does not know the subcommand. The detailed behaviour (apply,
//! API-key auth, errors, --stack) is covered by the unit tests in src/configure.rs; this file
//! only checks the wiring: help text, argument parsing, env credentials, exit status, output.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

const BIN: &str = env!("CARGO_BIN_EXE_twilio-webhooks");
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "auth-token-1234";
const PN: &str = "PN0123456789abcdef0123456789abcdef";
const NUMBER: &str = "+15551234567";

/// The binary with a clean Twilio environment (the developer's real credentials never leak in).
fn configure() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("configure");
    for var in [
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_API_KEY",
        "TWILIO_API_SECRET",
        "TWILIO_API_BASE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn help_lists_the_flags_and_credentials() {
    let out = configure().arg("--help").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for expected in [
        "--number",
        "--stack",
        "--base-url",
        "--dry-run",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_API_KEY",
    ] {
        assert!(
            stdout.contains(expected),
            "help should mention {expected}:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("--api-base"),
        "--api-base is a hidden test flag:\n{stdout}"
    );
}

#[test]
fn stack_and_base_url_conflict() {
    let out = configure()
        .args([
            "--number",
            NUMBER,
            "--stack",
            "s",
            "--base-url",
            "https://x.example.com",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error: {out:?}");
}

/// Minimal fake Twilio: records request lines + Authorization, answers the number list.
fn fake_twilio() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                continue;
            }
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
            let len: usize = headers
                .get("content-length")
                .map_or(0, |l| l.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let request_line = request_line.trim_end().to_string();
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            record
                .lock()
                .unwrap()
                .push(format!("{request_line} | {auth}"));

            let expected = format!(
                "GET /2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json?PhoneNumber=%2B15551234567 HTTP/1.1"
            );
            // base64("AC0123456789abcdef0123456789abcdef:auth-token-1234")
            let expected_auth =
                "Basic QUMwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjphdXRoLXRva2VuLTEyMzQ=";
            let (status, body) = if request_line == expected && auth == expected_auth {
                let number = format!(
                    r#"{{"sid":"{PN}","phone_number":"{NUMBER}","sms_url":"","sms_method":"POST","sms_fallback_url":"","sms_fallback_method":"POST","voice_url":"https://old.example.com/voice","voice_method":"POST","voice_fallback_url":"","voice_fallback_method":"POST","status_callback":"","status_callback_method":"POST","sms_application_sid":"","voice_application_sid":"","trunk_sid":null}}"#
                );
                (
                    200,
                    format!(r#"{{"incoming_phone_numbers":[{number}],"next_page_uri":null}}"#),
                )
            } else {
                (
                    400,
                    r#"{"code":99999,"message":"fake: unexpected request","status":400}"#
                        .to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, seen)
}

#[test]
fn dry_run_against_fake_twilio() {
    let (base, seen) = fake_twilio();
    let out = configure()
        .args([
            "--number",
            NUMBER,
            "--base-url",
            "https://hooks.example.com",
            "--dry-run",
        ])
        .env("TWILIO_API_BASE", &base)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("{NUMBER} ({PN}) in account {ACCOUNT}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("https://old.example.com/voice → https://hooks.example.com/voice"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(none) → https://hooks.example.com/status"),
        "{stdout}"
    );
    assert!(stdout.contains("dry run: nothing changed"), "{stdout}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one GET, no POST: {seen:#?}");
    assert!(seen[0].starts_with("GET "), "{seen:#?}");
}

#[test]
fn missing_credentials_fail_with_one_line() {
    let out = configure()
        .args([
            "--number",
            NUMBER,
            "--base-url",
            "https://hooks.example.com",
            "--dry-run",
        ])
        .env("TWILIO_API_BASE", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TWILIO_ACCOUNT_SID"), "{stderr}");
}
