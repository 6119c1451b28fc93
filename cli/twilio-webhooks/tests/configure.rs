//! `twilio-webhooks configure`, the real binary against a fake Twilio API: the exact requests
//! (method, path, auth, form fields), the report (text and JSON), exit codes, and errors.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::fake_twilio::{self, ACCOUNT, FakeTwilio, State, TOKEN, basic};

const BIN: &str = env!("CARGO_BIN_EXE_twilio-webhooks");
const PN: &str = "PN0123456789abcdef0123456789abcdef";
const NUMBER: &str = "+15551234567";
const MG: &str = "MG0123456789abcdef0123456789abcdef";
const HOOKS: &str = "https://hooks.example.com";

/// The binary with a clean environment (the developer's real credentials never leak in), run
/// in `dir` (no samconfig.toml unless the test writes one).
fn configure(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("configure").current_dir(dir);
    for var in [
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_API_KEY",
        "TWILIO_API_SECRET",
        "TWILIO_API_BASE",
        "TWILIO_MESSAGING_API_BASE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("configure-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `configure` against `fake` with the auth-token credentials.
fn run_against(fake: &FakeTwilio, dir: &Path, args: &[&str]) -> Output {
    configure(dir)
        .args(args)
        .env("TWILIO_API_BASE", &fake.base)
        .env("TWILIO_MESSAGING_API_BASE", &fake.base)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_number(url_base: Option<&str>) -> State {
    let mut state = State::default();
    state
        .numbers
        .insert(NUMBER.into(), fake_twilio::number(PN, NUMBER, url_base));
    state
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn help_lists_flags_credentials_and_exit_codes() {
    let dir = TempDir::new("help");
    let out = configure(&dir.0).arg("--help").output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{out:?}");
    for expected in [
        "--number",
        "--messaging-service",
        "--stack",
        "--public-base-url",
        "--dry-run",
        "--check",
        "--json",
        "samconfig.toml",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_API_KEY",
        "Exit codes:",
        "3  --check",
    ] {
        assert!(
            text.contains(expected),
            "help should mention {expected}:\n{text}"
        );
    }
    assert!(!text.contains("--api-base"), "a hidden test flag:\n{text}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new("usage");
    for args in [
        &[
            "--number",
            NUMBER,
            "--stack",
            "s",
            "--public-base-url",
            HOOKS,
        ][..],
        &["--public-base-url", HOOKS],
    ] {
        let out = configure(&dir.0).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn number_apply_sends_exactly_the_changed_fields_once() {
    let dir = TempDir::new("apply");
    let mut state = with_number(None);
    state.numbers.get_mut(NUMBER).unwrap()["voice_url"] = "https://old.example.com/voice".into();
    let fake = FakeTwilio::start(state, None);
    let out = run_against(&fake, &dir.0, &["--number", NUMBER, "--base-url", HOOKS]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{NUMBER} ({PN}) in account {ACCOUNT}:")),
        "{text}"
    );
    assert!(
        text.contains("https://old.example.com/voice → https://hooks.example.com/voice"),
        "{text}"
    );
    assert!(
        text.contains("SmsMethod             POST (unchanged)"),
        "{text}"
    );
    assert!(text.contains("updated: 5 of 10 fields changed"), "{text}");
    assert!(
        text.contains("incoming messages go to: https://hooks.example.com/sms\n"),
        "{text}"
    );

    let requests = fake.requests();
    let list = &requests[0];
    assert_eq!(list.method, "GET");
    assert_eq!(
        list.target,
        format!(
            "/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers.json?PhoneNumber=%2B15551234567"
        )
    );
    assert_eq!(list.authorization, basic(ACCOUNT, TOKEN));
    let posts = fake.posts();
    assert_eq!(posts.len(), 1, "{requests:#?}");
    assert_eq!(
        posts[0].target,
        format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers/{PN}.json")
    );
    assert_eq!(
        posts[0].form,
        pairs(&[
            ("SmsUrl", "https://hooks.example.com/sms"),
            ("SmsFallbackUrl", "https://hooks.example.com/fallback"),
            ("VoiceUrl", "https://hooks.example.com/voice"),
            ("VoiceFallbackUrl", "https://hooks.example.com/fallback"),
            ("StatusCallback", "https://hooks.example.com/status"),
        ])
    );
    assert!(!text.contains(TOKEN) && !stderr(&out).contains(TOKEN));

    // Run again: nothing to do, no POST.
    let again = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS],
    );
    assert!(
        stdout(&again).contains("already configured: nothing changed"),
        "{}",
        stdout(&again)
    );
    assert_eq!(fake.posts().len(), 1);
}

#[test]
fn dry_run_and_check_change_nothing_and_check_exits_3_on_drift() {
    let dir = TempDir::new("check");
    let fake = FakeTwilio::start(with_number(Some("https://old.example.com")), None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS, "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("dry run: nothing changed"),
        "{}",
        stdout(&out)
    );

    let out = run_against(
        &fake,
        &dir.0,
        &[
            "--number",
            NUMBER,
            "--public-base-url",
            HOOKS,
            "--check",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["account_sid"], ACCOUNT);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["changes"], 5);
    let r = &report["resources"][0];
    assert_eq!(
        (r["type"].as_str(), r["sid"].as_str(), r["name"].as_str()),
        (Some("phone_number"), Some(PN), Some(NUMBER))
    );
    assert_eq!(r["applied"], false);
    let sms = r["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "SmsUrl")
        .unwrap();
    assert_eq!(sms["current"], "https://old.example.com/sms");
    assert_eq!(sms["desired"], "https://hooks.example.com/sms");
    assert_eq!(sms["changed"], true);
    assert_eq!(
        r["incoming_messages_url"], "https://old.example.com/sms",
        "a dry run changes nothing"
    );
    assert!(fake.posts().is_empty());

    // Configured: --check passes.
    let fake = FakeTwilio::start(with_number(Some(HOOKS)), None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS, "--check"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("check: up to date"));
}

#[test]
fn api_key_credentials_authenticate_with_the_key() {
    let dir = TempDir::new("apikey");
    let fake = FakeTwilio::start(
        with_number(None),
        Some(basic("SK00000000000000000000000000000001", "key-secret")),
    );
    let out = configure(&dir.0)
        .args(["--number", NUMBER, "--public-base-url", HOOKS])
        .env("TWILIO_API_BASE", &fake.base)
        .env("TWILIO_MESSAGING_API_BASE", &fake.base)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_API_KEY", "SK00000000000000000000000000000001")
        .env("TWILIO_API_SECRET", "key-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fake.posts().len(), 1);
    assert!(
        fake.posts()[0].target.contains(ACCOUNT),
        "the account is in the path"
    );
}

#[test]
fn messaging_service_gets_its_inbound_fallback_and_status_urls() {
    let dir = TempDir::new("service");
    let mut state = State::default();
    state.services.insert(
        MG.into(),
        (fake_twilio::service(MG, "Alerts", "", false), vec![]),
    );
    let fake = FakeTwilio::start(state, None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--messaging-service", MG, "--public-base-url", HOOKS],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "Messaging Service {MG} (\"Alerts\") in account {ACCOUNT}:"
        )),
        "{text}"
    );
    assert!(
        text.contains("InboundRequestUrl  (none) → https://hooks.example.com/sms"),
        "{text}"
    );
    assert!(text.contains("updated: 3 of 5 fields changed"), "{text}");
    let posts = fake.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].target, format!("/v1/Services/{MG}"));
    assert_eq!(posts[0].authorization, basic(ACCOUNT, TOKEN));
    assert_eq!(
        posts[0].form,
        pairs(&[
            ("InboundRequestUrl", "https://hooks.example.com/sms"),
            ("FallbackUrl", "https://hooks.example.com/fallback"),
            ("StatusCallback", "https://hooks.example.com/status"),
        ])
    );

    // A service that defers to its numbers' URLs is configured, with a warning.
    let mut state = State::default();
    state.services.insert(
        MG.into(),
        (fake_twilio::service(MG, "Alerts", "", true), vec![]),
    );
    let fake = FakeTwilio::start(state, None);
    let out = run_against(
        &fake,
        &dir.0,
        &[
            "--messaging-service",
            MG,
            "--public-base-url",
            HOOKS,
            "--dry-run",
        ],
    );
    assert!(
        stdout(&out).contains("warning: UseInboundWebhookOnNumber is on"),
        "{}",
        stdout(&out)
    );

    // Unknown service: Twilio's 404 on one line, exit 1.
    let fake = FakeTwilio::start(State::default(), None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--messaging-service", MG, "--public-base-url", HOOKS],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("HTTP 404") && stderr(&out).contains("code 20404"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_number_in_a_messaging_service_says_which_url_twilio_calls() {
    let dir = TempDir::new("innservice");
    let mut state = with_number(None);
    // The number sits in the third service, on the second page of the list.
    state.services_page_size = 2;
    for (i, mg) in [
        "MG00000000000000000000000000000001",
        "MG00000000000000000000000000000002",
    ]
    .iter()
    .enumerate()
    {
        state.services.insert(
            (*mg).into(),
            (
                fake_twilio::service(mg, &format!("s{i}"), "", false),
                vec!["PN9".into()],
            ),
        );
    }
    state.services.insert(
        MG.into(),
        (
            fake_twilio::service(MG, "10DLC", "https://elsewhere.example.com/in", false),
            vec![PN.into()],
        ),
    );
    let fake = FakeTwilio::start(state, None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS, "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let r = &report["resources"][0];
    assert_eq!(r["messaging_service_sid"], MG);
    assert_eq!(
        r["incoming_messages_url"],
        "https://elsewhere.example.com/in"
    );
    let warnings = r["warnings"].to_string();
    assert!(
        warnings.contains(&format!("configure --messaging-service {MG}")),
        "{warnings}"
    );

    // Both at once: the service then points at the deployment too, and the number says so.
    let out = run_against(
        &fake,
        &dir.0,
        &[
            "--number",
            NUMBER,
            "--messaging-service",
            MG,
            "--public-base-url",
            HOOKS,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS],
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("incoming messages go to: https://hooks.example.com/sms (through Messaging Service {MG})")),
        "{text}"
    );
    assert!(!text.contains("warning:"), "{text}");

    // UseInboundWebhookOnNumber: the number's own SmsUrl is what Twilio calls.
    fake.state.lock().unwrap().services.get_mut(MG).unwrap().0["use_inbound_webhook_on_number"] =
        true.into();
    fake.state.lock().unwrap().numbers.get_mut(NUMBER).unwrap()["sms_url"] =
        "https://mine.example.com/sms".into();
    let out = run_against(
        &fake,
        &dir.0,
        &[
            "--number",
            NUMBER,
            "--public-base-url",
            HOOKS,
            "--dry-run",
            "--json",
        ],
    );
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        report["resources"][0]["incoming_messages_url"],
        "https://mine.example.com/sms"
    );
}

#[test]
fn twilio_errors_are_one_line_and_nothing_else_happens() {
    let dir = TempDir::new("errors");
    // Wrong credentials: Twilio's 401 message and code.
    let fake = FakeTwilio::start(with_number(None), Some(basic(ACCOUNT, "another")));
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(
            "listing incoming phone numbers: Twilio API error HTTP 401: Authenticate (code 20003)"
        ),
        "{err}"
    );

    // A non-JSON error body is shortened to one line.
    let mut state = with_number(None);
    state.fail_posts = Some((
        502,
        format!("<html>\n{}\n</html>", "bad gateway ".repeat(50)),
    ));
    let fake = FakeTwilio::start(state, None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("HTTP 502: <html> bad gateway") && err.contains('…'),
        "{err}"
    );

    // Unknown number.
    let fake = FakeTwilio::start(State::default(), None);
    let out = run_against(
        &fake,
        &dir.0,
        &["--number", NUMBER, "--public-base-url", HOOKS],
    );
    assert!(
        stderr(&out).contains(&format!("number {NUMBER} is not in account {ACCOUNT}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_is_refused_before_any_request() {
    let dir = TempDir::new("input");
    let fake = FakeTwilio::start(with_number(None), None);
    for (args, says) in [
        (
            &["--number", "5551234567", "--public-base-url", HOOKS][..],
            "E.164",
        ),
        (
            &["--messaging-service", "MG123", "--public-base-url", HOOKS],
            "Messaging Service SID",
        ),
        (
            &["--number", NUMBER, "--public-base-url", "hooks.example.com"],
            "--public-base-url",
        ),
        (
            &[
                "--number",
                NUMBER,
                "--public-base-url",
                "https://h.example.com/?x=1",
            ],
            "query",
        ),
        (
            &["--number", NUMBER],
            "no --stack or --public-base-url, and no stack_name in samconfig.toml",
        ),
    ] {
        let out = run_against(&fake, &dir.0, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // No credentials: one line naming the variables.
    let out = configure(&dir.0)
        .args(["--number", NUMBER, "--public-base-url", HOOKS])
        .env("TWILIO_API_BASE", &fake.base)
        .output()
        .unwrap();
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
    assert!(
        stderr(&out).contains("TWILIO_ACCOUNT_SID"),
        "{}",
        stderr(&out)
    );
    assert!(fake.requests().is_empty(), "{:#?}", fake.requests());
}

/// A fake `aws` first on PATH: records its arguments, prints `stdout`, exits with `code`.
fn fake_aws(dir: &Path, stdout: &str, code: i32) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("stdout.json"), stdout).unwrap();
    let script = format!(
        "#!/bin/sh\necho \"$@\" > '{0}/args'\ncat '{0}/stdout.json'\n[ {code} -eq 0 ] || echo 'An error occurred (ValidationError): Stack does not exist' >&2\nexit {code}\n",
        bin.display()
    );
    std::fs::write(bin.join("aws"), script).unwrap();
    std::fs::set_permissions(bin.join("aws"), std::fs::Permissions::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn stack_json(base: &str) -> String {
    let outputs: Vec<Value> = [
        ("SmsWebhookUrl", "sms"),
        ("SmsFallbackUrl", "fallback"),
        ("VoiceWebhookUrl", "voice"),
        ("VoiceFallbackUrl", "fallback"),
        ("StatusCallbackUrl", "status"),
    ]
    .iter()
    .map(|(k, p)| serde_json::json!({"OutputKey": k, "OutputValue": format!("{base}/{p}")}))
    .collect();
    serde_json::json!({"Stacks": [{"StackName": "x", "StackStatus": "UPDATE_COMPLETE", "Outputs": outputs}]}).to_string()
}

#[test]
fn the_stack_defaults_to_samconfig_and_its_errors_are_one_line() {
    let dir = TempDir::new("stack");
    let api = "https://abc.execute-api.us-east-1.amazonaws.com";
    let path = fake_aws(&dir.0, &stack_json(api), 0);
    std::fs::write(
        dir.0.join("samconfig.toml"),
        "version = 0.1\n[default.global.parameters]\nstack_name = \"my-hooks\"\n",
    )
    .unwrap();
    let fake = FakeTwilio::start(with_number(None), None);
    let mut cmd = configure(&dir.0);
    let out = cmd
        .args(["--number", NUMBER, "--dry-run"])
        .env("PATH", &path)
        .env("TWILIO_API_BASE", &fake.base)
        .env("TWILIO_MESSAGING_API_BASE", &fake.base)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let args = std::fs::read_to_string(dir.0.join("bin/args")).unwrap();
    assert!(
        args.contains("describe-stacks --stack-name my-hooks"),
        "{args}"
    );
    assert!(
        stdout(&out).contains(&format!("(none) → {api}/voice")),
        "{}",
        stdout(&out)
    );

    // --stack wins over samconfig.toml; a failing aws CLI is one line with its message.
    let path = fake_aws(&dir.0, "", 254);
    let out = configure(&dir.0)
        .args(["--number", NUMBER, "--stack", "other", "--dry-run"])
        .env("PATH", &path)
        .env("TWILIO_API_BASE", &fake.base)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT)
        .env("TWILIO_AUTH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--stack-name other failed") && err.contains("Stack does not exist"),
        "{err}"
    );
}
