//! The "done when" test of `twilio-webhooks serve`: a real process, real HTTP, a SIGKILL in the
//! middle, a restart on the same data, and `twilio-webhooks inspect` as the judge.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use twilio_webhook::{AuthToken, FormParams, sign};
use webhook_testkit::samples::{self, TEST_AUTH_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_twilio-webhooks");

/// Environment variables that would change replies or behaviour, removed from the child.
const POLICY_VARS: &[&str] = &[
    "TWILIO_AUTH_TOKEN",
    "SMS_AUTO_REPLY",
    "VOICE_GREETING",
    "VOICE_FORWARD_TO",
    "STATUS_CALLBACK_URL",
    "FALLBACK_VOICE_MESSAGE",
    "FORWARD_URL",
    "RUST_LOG",
];

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "twilio-webhooks-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `serve`, its output in files next to the data (shown when something fails).
struct Serve {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    port: u16,
}

impl Serve {
    fn start(work: &Path, port: u16, run: usize, forward_url: Option<&str>) -> Self {
        Self::start_with(work, port, run, forward_url, &[])
    }

    fn start_with(
        work: &Path,
        port: u16,
        run: usize,
        forward_url: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let args = [&["--auth-token", TEST_AUTH_TOKEN], extra].concat();
        Self::start_args(work, port, run, forward_url, &args)
    }

    /// `serve` with these arguments only (besides the address and data directory).
    fn start_args(
        work: &Path,
        port: u16,
        run: usize,
        forward_url: Option<&str>,
        args: &[&str],
    ) -> Self {
        let stdout = work.join(format!("serve-{run}.out"));
        let stderr = work.join(format!("serve-{run}.err"));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--data"])
            .arg(work.join("data"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        for var in POLICY_VARS {
            cmd.env_remove(var);
        }
        if let Some(url) = forward_url {
            cmd.env("FORWARD_URL", url);
        }
        let child = cmd.spawn().expect("spawn twilio-webhooks serve");
        let mut serve = Self {
            child,
            stdout,
            stderr,
            port,
        };
        serve.wait_ready();
        serve
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited early ({status}):\n{}", self.output());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.0 200") && buf.ends_with("ok") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve not ready:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "exit after SIGTERM: {status}\n{}",
                    self.output()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no cleanup at all.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn inspect(data: &Path) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["inspect", "--json", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn of_type<'a>(lines: &'a [Value], t: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == t).collect()
}

/// One webhook Twilio would send; `id` names the logical event (a fallback for a message
/// already accepted is the same event).
#[derive(Clone)]
struct Hook {
    id: String,
    path: &'static str,
    params: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

fn hooks() -> Vec<Hook> {
    let mut v = Vec::new();
    for i in 0..4 {
        let sm = format!("SM{i:032}");
        let ca = format!("CA{i:032}");
        let fb = format!("SMf{i:031}");
        v.push(Hook {
            id: format!("sms{i}"),
            path: "/sms",
            params: samples::inbound_sms(&sm, &format!("héllo {i} & <ü> 🎉")),
        });
        v.push(Hook {
            id: format!("voice{i}"),
            path: "/voice",
            params: samples::inbound_call(&ca),
        });
        v.push(Hook {
            id: format!("msgstatus{i}"),
            path: "/status",
            params: samples::message_status(&sm, "delivered", None),
        });
        v.push(Hook {
            id: format!("callstatus{i}"),
            path: "/status",
            params: samples::call_status(&ca, "completed", 3),
        });
        let mut fallback = samples::inbound_sms(&fb, "primary was down");
        fallback.push(("ErrorCode", "11200".into()));
        fallback.push(("ErrorUrl", "https://example.com/sms".into()));
        v.push(Hook {
            id: format!("fallback{i}"),
            path: "/fallback",
            params: fallback,
        });
    }
    // The canned samples: recording and conference callbacks, and fallbacks that duplicate
    // the sample SMS and call.
    for s in samples::all() {
        let (id, path) = match s.name {
            "fallback-sms" => ("sample-sms".to_owned(), "/fallback"),
            "fallback-voice" => ("sample-voice".to_owned(), "/fallback"),
            name => (format!("sample-{name}"), endpoint_path(s.endpoint)),
        };
        v.push(Hook {
            id,
            path,
            params: s.params,
        });
    }
    v
}

fn endpoint_path(e: twilio_webhook::payload::Endpoint) -> &'static str {
    use twilio_webhook::payload::Endpoint::*;
    match e {
        Sms => "/sms",
        Voice => "/voice",
        Status => "/status",
        Fallback => "/fallback",
    }
}

async fn send(client: &reqwest::Client, base: &str, hook: &Hook, token: &str) -> Answer {
    let url = format!("{base}{}", hook.path);
    let form = FormParams::from_pairs(hook.params.iter().map(|(k, v)| (*k, v.as_str())));
    let signature = sign(&AuthToken::new(token).unwrap(), &url, &form);
    let res = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .header(
            "i-twilio-idempotency-token",
            format!("{}-{}", hook.id, std::process::id()),
        )
        .body(form.encode())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {url}: {e}", hook.id));
    Answer {
        status: res.status().as_u16(),
        content_type: res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: res.text().await.unwrap(),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A FORWARD_URL receiver that counts deliveries per `Idempotency-Key` and is slow on purpose
/// (100 ms each), so the worker has a backlog when the server is killed.
async fn forward_receiver() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    use axum::http::HeaderMap;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                let json: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["key"], key.as_str());
                *s.lock().unwrap().entry(key).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/events"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_stored_and_processed_once_across_a_crash() {
    let work = TempDir::new("crash");
    let data = work.0.join("data");
    let port = free_port();
    let (forward_url, forwarded) = forward_receiver().await;
    let hooks = hooks();
    let (before, after) = hooks.split_at(14);
    let mut first: HashMap<String, Answer> = HashMap::new();
    let mut check = |hook: &Hook, answer: Answer, phase: &str| {
        assert_eq!(answer.status, 200, "{phase} {}: {answer:?}", hook.id);
        match first.get(&hook.id) {
            None => {
                first.insert(hook.id.clone(), answer);
            }
            Some(original) => assert_eq!(
                &answer, original,
                "{phase}: a duplicate of {} must get the first reply",
                hook.id
            ),
        }
    };

    // Run 1: half the events, some twice, then SIGKILL with the worker behind.
    let serve = Serve::start(&work.0, port, 1, Some(&forward_url));
    let c = client();
    for hook in before {
        check(
            hook,
            send(&c, &serve.base(), hook, TEST_AUTH_TOKEN).await,
            "run 1",
        );
    }
    for hook in &before[..5] {
        check(
            hook,
            send(&c, &serve.base(), hook, TEST_AUTH_TOKEN).await,
            "run 1 dup",
        );
    }
    let lines = inspect(&data);
    let pending = of_type(&lines, "event")
        .iter()
        .filter(|e| e["processed"] == false)
        .count();
    assert!(pending > 0, "the kill should leave work behind: {lines:?}");
    serve.kill();
    drop(c);

    // Run 2: same data, same port: the rest, and every earlier event again.
    let serve = Serve::start(&work.0, port, 2, Some(&forward_url));
    let c = client();
    for hook in after {
        check(
            hook,
            send(&c, &serve.base(), hook, TEST_AUTH_TOKEN).await,
            "run 2",
        );
    }
    for hook in before.iter().chain(after) {
        check(
            hook,
            send(&c, &serve.base(), hook, TEST_AUTH_TOKEN).await,
            "run 2 dup",
        );
    }
    let distinct: HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();

    // Wait for the worker to drain, then stop it the polite way.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = inspect(&data);
        let events = of_type(&lines, "event");
        let done = events.iter().filter(|e| e["processed"] == true).count();
        if events.len() == distinct.len()
            && done == events.len()
            && of_type(&lines, "job").is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not drain: {done}/{} processed, jobs {:?}\n{}",
            events.len(),
            of_type(&lines, "job"),
            serve.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serve.terminate();

    let lines = inspect(&data);
    let events = of_type(&lines, "event");
    let keys: HashSet<&str> = events.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(
        events.len(),
        distinct.len(),
        "one record per event: {events:?}"
    );
    assert_eq!(keys.len(), events.len(), "no key stored twice");
    for e in &events {
        assert_eq!(e["processed"], true, "{e}");
        assert_eq!(e["reply"]["status"], 200, "{e}");
    }
    assert!(of_type(&lines, "job").is_empty(), "no queued or dead job");
    // The default (human) view says the same.
    let out = Command::new(BIN)
        .args(["inspect", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.starts_with(&format!("Events ({})\n", events.len())),
        "{summary}"
    );
    assert_eq!(
        summary.matches(" processed ").count(),
        events.len(),
        "{summary}"
    );
    assert!(
        summary.contains("Jobs: 0 queued, 0 dead-lettered"),
        "{summary}"
    );
    let states = of_type(&lines, "state");
    assert!(
        states.iter().any(|s| s["latest_status"] == "delivered"),
        "message statuses were folded: {states:?}"
    );

    // Slow work: every event forwarded; at most the one job in flight at the SIGKILL twice
    // (at-least-once; the receiver dedups on Idempotency-Key).
    let forwarded = forwarded.lock().unwrap().clone();
    let forwarded_keys: HashSet<&str> = forwarded.keys().map(String::as_str).collect();
    assert_eq!(forwarded_keys, keys, "every event forwarded");
    let extra: usize = forwarded.values().map(|n| n - 1).sum();
    assert!(extra <= 1, "forwarded more than once: {forwarded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_gets_403_and_is_not_stored() {
    let work = TempDir::new("forged");
    let data = work.0.join("data");
    let serve = Serve::start(&work.0, free_port(), 1, None);
    let c = client();
    let hook = Hook {
        id: "forged".into(),
        path: "/sms",
        params: samples::inbound_sms("SM99999999999999999999999999999999", "pay me"),
    };
    let forged = send(&c, &serve.base(), &hook, "another-token-another-token-0000").await;
    assert_eq!(forged.status, 403, "{forged:?}");
    let unsigned = c
        .post(format!("{}/voice", serve.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=CA1")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
    // Signed for another URL (the path is part of what Twilio signs).
    let url = format!("{}/voice", serve.base());
    let form = FormParams::from_pairs(hook.params.iter().map(|(k, v)| (*k, v.as_str())));
    let wrong_url = c
        .post(format!("{}/sms", serve.base()))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "x-twilio-signature",
            sign(&AuthToken::new(TEST_AUTH_TOKEN).unwrap(), &url, &form),
        )
        .body(form.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_url.status(), 403);
    // HTTP/1.0 without a Host header: the signed URL cannot be rebuilt, 400 as in Lambda.
    use std::io::{Read as _, Write as _};
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    let body = form.encode();
    write!(
        raw,
        "POST /sms HTTP/1.0\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    let genuine = Hook {
        id: "genuine".into(),
        ..hook.clone()
    };
    assert_eq!(
        send(&c, &serve.base(), &genuine, TEST_AUTH_TOKEN)
            .await
            .status,
        200
    );
    serve.terminate();
    let lines = inspect(&data);
    let events = of_type(&lines, "event");
    assert_eq!(
        events.len(),
        1,
        "only the genuine request is stored: {events:?}"
    );
}

#[test]
fn serve_on_a_port_in_use_exits_with_one_line() {
    let work = TempDir::new("inuse");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", &addr.to_string(), "--data"])
        .arg(work.0.join("data"))
        .args(["--auth-token", TEST_AUTH_TOKEN])
        .stdin(Stdio::null());
    for var in POLICY_VARS {
        cmd.env_remove(var);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].contains("address already in use"), "{stderr}");
    assert!(lines[0].contains(&addr.to_string()), "{stderr}");
    drop(taken);
}

#[test]
fn serve_on_an_unusable_data_directory_exits_with_one_line() {
    let work = TempDir::new("baddata");
    let file = work.0.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--data"])
        .arg(file.join("data"))
        .args(["--auth-token", TEST_AUTH_TOKEN])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].contains("data directory"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_is_what_signatures_cover_and_logs_can_be_json() {
    let work = TempDir::new("public");
    let public = "https://hooks.example.com/twilio";
    let serve = Serve::start_with(
        &work.0,
        free_port(),
        1,
        None,
        &[
            "--public-url",
            public,
            "--log-format",
            "json",
            "--insecure-public-test-token",
        ],
    );
    let banner = std::fs::read_to_string(&serve.stdout).unwrap();
    assert!(
        banner.contains("https://hooks.example.com/twilio/sms"),
        "{banner}"
    );
    assert!(banner.contains("curl "), "{banner}");

    let c = client();
    let hook = Hook {
        id: "tunnelled".into(),
        path: "/sms",
        params: samples::inbound_sms("SM77777777777777777777777777777777", "via a tunnel"),
    };
    let form = FormParams::from_pairs(hook.params.iter().map(|(k, v)| (*k, v.as_str())));
    let post = |signed_for: String| {
        c.post(format!("{}/sms?tenant=a%20b", serve.base()))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "x-twilio-signature",
                sign(
                    &AuthToken::new(TEST_AUTH_TOKEN).unwrap(),
                    &signed_for,
                    &form,
                ),
            )
            .body(form.encode())
            .send()
    };
    let local = post(format!("{}/sms?tenant=a%20b", serve.base()))
        .await
        .unwrap();
    assert_eq!(
        local.status(),
        403,
        "the local URL is not what Twilio signed"
    );
    let tunnelled = post(format!("{public}/sms?tenant=a%20b")).await.unwrap();
    assert_eq!(tunnelled.status(), 200);
    // A refused request whose query carries personal data (as GET webhooks do).
    let refused = c
        .post(format!(
            "{}/sms?From=%2B14155550100&Body=secret-body",
            serve.base()
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "forged")
        .body(form.encode())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    serve.terminate();

    let stderr = std::fs::read_to_string(work.0.join("serve-1.err")).unwrap();
    let logs: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "webhook accepted"),
        "{stderr}"
    );
    // Without LOG_PII the refused URL keeps its parameter names, not their values.
    let refused_line = logs
        .iter()
        .find(|l| {
            l["fields"]["message"] == "webhook refused"
                && l["fields"]["url"]
                    .as_str()
                    .is_some_and(|u| u.contains("From="))
        })
        .unwrap_or_else(|| panic!("no refused line: {stderr}"));
    assert_eq!(
        refused_line["fields"]["url"],
        format!("{public}/sms?From=***&Body=***")
    );
    for secret in ["14155550100", "secret-body", "via a tunnel"] {
        assert!(
            !stderr.contains(secret),
            "{secret} reached the logs: {stderr}"
        );
    }
    let events = of_type(&inspect(&work.0.join("data")), "event")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["url"], format!("{public}/sms?tenant=a%20b"));
}

/// HTTP Basic auth through `serve`: the challenge, a wrong password, the right one; the
/// banner gives the URL with the credentials, as it goes into the Twilio console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_through_serve() {
    let work = TempDir::new("basic");
    let serve = Serve::start_with(
        &work.0,
        free_port(),
        1,
        None,
        &["--basic-auth", "twilio:s3cret"],
    );
    let banner = std::fs::read_to_string(&serve.stdout).unwrap();
    assert!(
        banner.contains(&format!(
            "http://twilio:s3cret@127.0.0.1:{}/sms",
            serve.port
        )),
        "{banner}"
    );
    let c = client();
    let url = format!("{}/sms", serve.base());
    let params = samples::inbound_sms("SM88888888888888888888888888888888", "basic");
    let form = FormParams::from_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
    let signature = sign(&AuthToken::new(TEST_AUTH_TOKEN).unwrap(), &url, &form);
    let post = |auth: Option<(&'static str, &'static str)>| {
        let mut r = c
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature)
            .body(form.encode());
        if let Some((u, p)) = auth {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    let first = post(None).await.unwrap();
    assert_eq!(first.status(), 401);
    assert!(
        first.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    assert_eq!(post(Some(("twilio", "wrong"))).await.unwrap().status(), 401);
    assert_eq!(
        post(Some(("twilio", "s3cret"))).await.unwrap().status(),
        200
    );
    serve.terminate();
    let events = of_type(&inspect(&work.0.join("data")), "event")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(events.len(), 1, "only the authenticated request was stored");
}

/// Many accounts: `serve --secrets FILE` takes the Lambda secret's JSON, and checks each
/// request with the token of the account it claims (`--secret-file` is the same option).
#[tokio::test]
async fn serve_with_a_secrets_file_checks_each_account_with_its_own_token() {
    const AC_B: &str = "ACbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const AC_C: &str = "ACcccccccccccccccccccccccccccccccc";
    const TA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
    const TB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1";
    let work = TempDir::new("accounts");
    let file = work.0.join("secrets.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"accounts": {{"{}": {{"auth_token": "{TA}"}}, "{AC_B}": {{"auth_token": "{TB}"}}}}}}"#,
            samples::ACCOUNT_SID
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let serve = Serve::start_args(&work.0, free_port(), 1, None, &["--secrets", file]);
    // The banner's curl claims the sample's account, so it is signed with that account's token.
    let banner = std::fs::read_to_string(&serve.stdout).unwrap();
    assert!(banner.contains("Try it"), "{banner}");
    let c = client();
    let hook = |n: u32, account: Option<&str>| Hook {
        id: format!("acct{n}"),
        path: "/sms",
        params: samples::inbound_sms(&format!("SM{n:032}"), "hi")
            .into_iter()
            .filter_map(|(k, v)| match k {
                "AccountSid" => account.map(|a| (k, a.to_owned())),
                _ => Some((k, v)),
            })
            .collect(),
    };
    let status = |base: String, n, account, token| {
        let c = &c;
        async move { send(c, &base, &hook(n, account), token).await.status }
    };
    let base = serve.base();
    let status = |n, account, token| status(base.clone(), n, account, token);
    assert_eq!(status(1, Some(samples::ACCOUNT_SID), TA).await, 200);
    assert_eq!(status(2, Some(AC_B), TB).await, 200);
    // A's token claiming B; an account not in the file; no AccountSid (and no default).
    assert_eq!(status(3, Some(AC_B), TA).await, 403);
    assert_eq!(status(4, Some(AC_C), TA).await, 403);
    assert_eq!(status(5, None, TA).await, 403);
    serve.terminate();
    let events = of_type(&inspect(&work.0.join("data")), "event").len();
    assert_eq!(events, 2, "only the two genuine requests are stored");

    // The former name of the option still works.
    let port = free_port();
    let serve = Serve::start_args(&work.0, port, 2, None, &["--secret-file", file]);
    let other = send(&c, &serve.base(), &hook(6, Some(AC_B)), TB).await;
    assert_eq!(other.status, 200);
    serve.terminate();
}
