//! `sign`, `inspect` and `--help` of the real binary.

use std::process::{Command, Output};

use twilio_webhook::signature::sign_json;
use twilio_webhook::{AuthToken, FormParams, sign};
use webhook_testkit::samples::TEST_AUTH_TOKEN;

const BIN: &str = env!("CARGO_BIN_EXE_twilio-webhooks");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TWILIO_AUTH_TOKEN")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &[][..],
        &["serve"],
        &["sign"],
        &["inspect"],
        &["events"],
        &["configure"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = run(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout(&out).contains("Usage: twilio-webhooks"), "{args:?}");
        assert!(
            stdout(&out).contains("Exit codes"),
            "{args:?}: exit codes documented"
        );
    }
}

#[test]
fn a_bad_flag_is_refused_by_clap() {
    let out = run(&["serve", "--addr", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--addr"));
    let out = run(&["serve", "--public-url", "ftp://x"]);
    assert!(!out.status.success());
}

#[test]
fn sign_matches_the_library_and_prints_curl() {
    let url = "http://127.0.0.1:3000/sms?x=1";
    let out = run(&[
        "sign",
        "--url",
        url,
        "-d",
        "MessageSid=SM1",
        "-d",
        "Body=it's a b&c",
        "-d",
        "Body=",
    ]);
    assert!(out.status.success());
    let form =
        FormParams::from_pairs([("MessageSid", "SM1"), ("Body", "it's a b&c"), ("Body", "")]);
    let want = sign(&AuthToken::new(TEST_AUTH_TOKEN).unwrap(), url, &form);
    assert_eq!(stdout(&out).trim(), want);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("test token"),
        "warns about the test token"
    );

    let token = Command::new(BIN)
        .args(["sign", "--url", url, "-d", "MessageSid=SM1"])
        .env("TWILIO_AUTH_TOKEN", "my-token")
        .output()
        .unwrap();
    let mine = sign(
        &AuthToken::new("my-token").unwrap(),
        url,
        &FormParams::from_pairs([("MessageSid", "SM1")]),
    );
    assert_eq!(stdout(&token).trim(), mine);
    assert!(token.stderr.is_empty());

    let curl = run(&["sign", "--url", url, "-d", "MessageSid=SM1", "--curl"]);
    let line = stdout(&curl);
    assert!(line.starts_with("curl "), "{line}");
    assert!(line.contains(&format!(
        "'X-Twilio-Signature: {}'",
        sign(
            &AuthToken::new(TEST_AUTH_TOKEN).unwrap(),
            url,
            &FormParams::from_pairs([("MessageSid", "SM1")])
        )
    )));
    assert!(line.contains("--data-raw MessageSid=SM1"), "{line}");

    let bad = run(&["sign", "--url", url, "-d", "novalue"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("KEY=VALUE"));
}

#[test]
fn sign_json_puts_the_body_hash_in_the_url() {
    let file =
        std::env::temp_dir().join(format!("twilio-webhooks-sign-{}.json", std::process::id()));
    std::fs::write(&file, br#"{"hello":"world"}"#).unwrap();
    let out = run(&[
        "sign",
        "--url",
        "https://example.com/hook?a=1",
        "--json-body",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success());
    let (url, sig) = sign_json(
        &AuthToken::new(TEST_AUTH_TOKEN).unwrap(),
        "https://example.com/hook?a=1",
        br#"{"hello":"world"}"#,
    );
    assert_eq!(stdout(&out), format!("{url}\n{sig}\n"));
}

#[test]
fn inspect_without_data_is_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("twilio-webhooks-none-{}", std::process::id()));
    let out = run(&["inspect", "--data", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no local data"), "{stderr}");
}

#[test]
fn events_are_written_then_checked() {
    let dir = std::env::temp_dir().join(format!("twilio-webhooks-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();

    let missing = run(&["events", "--dir", d, "--check"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing"));

    let wrote = run(&["events", "--dir", d]);
    assert!(wrote.status.success());
    let files = stdout(&wrote);
    assert_eq!(
        files.lines().count(),
        webhook_testkit::events::all_events().len()
    );
    let ok = run(&["events", "--dir", d, "--check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let stale = dir.join("sms.http-api.json");
    std::fs::write(&stale, "{}\n").unwrap();
    let out = run(&["events", "--dir", d, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sms.http-api.json"), "{stderr}");
    assert!(
        !stderr.contains("sms.rest-api.json"),
        "only the stale file: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve` on an address others can reach, with a token anyone knows, must not start.
#[test]
fn serve_refuses_the_public_test_token_where_others_can_reach_it() {
    let dir = std::env::temp_dir().join(format!("twilio-webhooks-public-{}", std::process::id()));
    let data = dir.to_str().unwrap();
    let refused = [
        // No token on a wildcard address, or behind a public URL.
        vec!["serve", "--addr", "0.0.0.0:0", "--data", data],
        vec![
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--public-url",
            "https://abc.ngrok.app",
            "--data",
            data,
        ],
        // The test token given explicitly is still the test token.
        vec![
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--auth-token",
            TEST_AUTH_TOKEN,
            "--data",
            data,
        ],
    ];
    for args in refused {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("refusing to serve") && stderr.contains("--insecure-public-test-token"),
            "{args:?}: {stderr}"
        );
        assert!(!dir.exists(), "{args:?} touched the data directory");
    }
}

/// A blank token is an error, never a silent fallback to some other key.
#[test]
fn a_blank_auth_token_is_refused_by_serve_and_sign() {
    for args in [
        &["serve", "--auth-token", "  ", "--addr", "127.0.0.1:0"][..],
        &["sign", "--token", "", "--url", "http://localhost/sms"],
        &["sign", "--token", " \n", "--url", "http://localhost/sms"],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("blank"), "{args:?}: {stderr}");
        assert!(stdout(&out).is_empty(), "{args:?} printed a signature");
    }
}

/// The loudly named flag lets a demo run on a public address with the test token.
#[test]
fn serve_starts_publicly_with_the_insecure_flag() {
    let dir = std::env::temp_dir().join(format!("twilio-webhooks-insecure-{}", std::process::id()));
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--addr",
            "0.0.0.0:0",
            "--insecure-public-test-token",
            "--data",
        ])
        .arg(&dir)
        .env_remove("TWILIO_AUTH_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(line.contains("listening on"), "{line:?}");
}
