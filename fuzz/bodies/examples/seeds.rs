//! Write the seed corpora (`fuzz/seeds/<target>/`) from the repository's own test data:
//! `events/*.json`, `testdata/twilio-signature-vectors.json`, the sample webhooks of
//! `webhook_testkit::samples` (as the pipeline stores them), and inputs of the unit tests.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml -p fuzz-bodies --example seeds`
//!
//! Each seed file is named by the SHA-256 of its content (like libFuzzer's corpus files), so
//! re-running only adds what is new. Seeds that do not decode to anything useful are harmless.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fuzz_bodies::lambda_fields::EventFields;
use fuzz_bodies::signature::Input;
use fuzz_bodies::{join_fields, payload, sqlite_rows};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use twilio_webhook::payload::Endpoint;
use twilio_webhook::signature::{Algorithm, sign_with};
use twilio_webhook::{AuthToken, FormParams, Validator, sign};
use webhook_pipeline::state::StateRecord;
use webhook_pipeline::{Pipeline, ReplyPolicy, Settings};
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{self, TEST_AUTH_TOKEN};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Seeds(BTreeMap<&'static str, Vec<Vec<u8>>>);

impl Seeds {
    fn add(&mut self, target: &'static str, data: impl Into<Vec<u8>>) {
        let v = self.0.entry(target).or_default();
        let data = data.into();
        if !v.contains(&data) {
            v.push(data);
        }
    }

    fn write(&self, dir: &Path) -> std::io::Result<()> {
        for (target, seeds) in &self.0 {
            let d = dir.join(target);
            std::fs::create_dir_all(&d)?;
            for s in seeds {
                let name = hex::encode(Sha256::digest(s));
                std::fs::write(d.join(&name[..40]), s)?;
            }
            println!("{target}: {} seeds", seeds.len());
        }
        Ok(())
    }
}

/// The event files (HTTP API and REST API events of every sample).
fn events() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(repo().join("events"))
        .expect("events/")
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.contains("-api.") {
            continue; // the worker's SQS and schedule events are not HTTP requests
        }
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((name, serde_json::from_str(&text).unwrap()));
    }
    out
}

fn body_of(event: &Value) -> Vec<u8> {
    let body = event["body"].as_str().unwrap_or("");
    if event["isBase64Encoded"] == json!(true) {
        BASE64.decode(body).unwrap()
    } else {
        body.as_bytes().to_vec()
    }
}

fn header(event: &Value, name: &str) -> Option<String> {
    event["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
}

fn endpoint_of(file: &str) -> Endpoint {
    let name = file.split('.').next().unwrap();
    samples::all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
        .endpoint
}

fn is_rest(event: &Value) -> bool {
    event.get("httpMethod").is_some()
}

fn token() -> AuthToken {
    AuthToken::new(TEST_AUTH_TOKEN).unwrap()
}

/// The URL the event was signed for.
fn signed_url(file: &str, event: &Value) -> String {
    let endpoint = endpoint_of(file);
    if is_rest(event) {
        webhook_testkit::events::rest_api_url(endpoint)
    } else {
        webhook_testkit::events::http_api_url(endpoint)
    }
}

/// Form bodies from the unit tests of form.rs and the signature tests.
const TEST_BODIES: &[&[u8]] = &[
    b"",
    b"b=2&a=1&b=&c&a=1",
    b"&&a=1&",
    b"From=%2B14155550100&Body=Hello+world%21+%F0%9F%91%8B&k%3D=v%26",
    b"a=%2",
    b"a=1&b=%G1",
    b"a=%FF%FE",
    b"a=\xff",
    b"%C3=%A9",
    b"a=%C3&%A9=b",
    b"%E2%82=%AC",
    b"a=%zz",
    b"==&=&a==b=c&%3D=%26",
    b"0123456789abcdef0123=456789abcdef&x+y=z%20w",
];

fn form_and_signature(s: &mut Seeds) {
    for b in TEST_BODIES {
        s.add("form", *b);
    }
    for (_, e) in events() {
        s.add("form", body_of(&e));
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        auth_token: String,
        url: String,
        params: Option<Vec<(String, String)>>,
        body: Option<String>,
        signature: Option<String>,
    }
    let vectors: Vec<Vector> = serde_json::from_slice(
        &std::fs::read(repo().join("testdata/twilio-signature-vectors.json")).unwrap(),
    )
    .unwrap();
    for v in &vectors {
        let (content_type, body) = match &v.body {
            Some(b) if b.trim_start().starts_with(['{', '[']) => ("application/json", b.clone()),
            Some(b) => ("application/x-www-form-urlencoded", b.clone()),
            None => (
                "application/x-www-form-urlencoded",
                FormParams::from_pairs(v.params.clone().unwrap_or_default()).encode(),
            ),
        };
        s.add("form", body.as_bytes());
        s.add(
            "signature",
            Input {
                token: v.auth_token.clone(),
                method: "POST".into(),
                url: v.url.clone(),
                content_type: Some(content_type.into()),
                signature: v.signature.clone(),
                settings: None,
                body: body.into_bytes(),
                secondary: false,
                shared_key: false,
            }
            .encode(),
        );
    }

    // The events' requests, as the pipeline sees them, and SharedKey / GET / HEAD variants.
    for (file, e) in events() {
        let url = signed_url(&file, &e);
        let body = body_of(&e);
        let input = Input {
            token: TEST_AUTH_TOKEN.into(),
            method: "POST".into(),
            url: url.clone(),
            content_type: header(&e, "content-type"),
            signature: header(&e, "x-twilio-signature"),
            settings: None,
            body: body.clone(),
            secondary: file.starts_with("sms"),
            shared_key: file.starts_with("voice"),
        };
        s.add("signature", input.encode());
        if file.starts_with("status-call") {
            let params = FormParams::parse(&body).unwrap();
            let sig = sign_with(Algorithm::HmacSha256, &token(), &url, &params);
            s.add(
                "signature",
                Input {
                    signature: Some(sig),
                    settings: Some("key=wk_1,algorithm=HMAC_SHA256".into()),
                    shared_key: true,
                    ..input
                }
                .encode(),
            );
        }
    }
    let get_url = "https://example.com/sms?MessageSid=SM1&Body=hi+there#rc=2&rp=all";
    for (method, settings) in [("GET", None), ("HEAD", Some("key=wk_1")), ("PUT", None)] {
        s.add(
            "signature",
            Input {
                token: "12345".into(),
                method: method.into(),
                url: get_url.into(),
                content_type: None,
                signature: Some(sign(
                    &AuthToken::new("12345").unwrap(),
                    get_url,
                    &FormParams::default(),
                )),
                settings: settings.map(Into::into),
                body: Vec::new(),
                secondary: true,
                shared_key: settings.is_some(),
            }
            .encode(),
        );
    }
    s.add(
        "signature",
        Input {
            token: " \t".into(),
            method: "post".into(),
            url: "http://u:p@[::1]:8080/x?bodySHA256=abc".into(),
            content_type: Some("Application/JSON; charset=utf-8".into()),
            signature: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            settings: Some("key=,algorithm=HMAC_MD5".into()),
            body: b"{\"a\": 1}".to_vec(),
            secondary: false,
            shared_key: true,
        }
        .encode(),
    );
}

fn set(event: &mut Value, path: &[&str], v: Value) {
    let mut cur = event;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = v;
}

fn set_header(event: &mut Value, name: &str, value: Option<&str>) {
    for field in ["headers", "multiValueHeaders"] {
        if let Some(map) = event.get_mut(field).and_then(Value::as_object_mut) {
            let key = map
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            match value {
                None => {
                    map.remove(&key);
                }
                Some(v) if field == "headers" => {
                    map.insert(key, json!(v));
                }
                Some(v) => {
                    map.insert(key, json!([v]));
                }
            }
        }
    }
}

/// Re-sign an event's body for `url`.
fn resign(event: &mut Value, url: &str) {
    let params = FormParams::parse(&body_of(event)).unwrap();
    let sig = sign(&token(), url, &params);
    set_header(event, "x-twilio-signature", Some(&sig));
}

fn lambda(s: &mut Seeds) {
    let render = |v: &Value| serde_json::to_vec_pretty(v).unwrap();
    for (_, e) in events() {
        s.add("lambda_event", render(&e));
    }
    let load = |name: &str| events().into_iter().find(|(n, _)| n == name).unwrap().1;
    // Variants from the handler tests (shared/webhook-aws/tests/handler.rs).
    let host = "xyz.lambda-url.us-east-1.on.aws";
    let mut furl = load("voice.http-api.json");
    set(&mut furl, &["routeKey"], json!("$default"));
    set(
        &mut furl,
        &["requestContext", "routeKey"],
        json!("$default"),
    );
    set(&mut furl, &["requestContext", "domainName"], json!(host));
    set(&mut furl, &["requestContext", "apiId"], json!("xyz"));
    set_header(&mut furl, "host", Some(host));
    resign(&mut furl, &format!("https://{host}/voice"));
    s.add("lambda_event", render(&furl));

    let mut stage = load("status-call.http-api.json");
    set(&mut stage, &["routeKey"], json!("$default"));
    set(
        &mut stage,
        &["requestContext", "routeKey"],
        json!("$default"),
    );
    set(&mut stage, &["requestContext", "stage"], json!("prod"));
    set(&mut stage, &["rawPath"], json!("/prod/status"));
    set(
        &mut stage,
        &["requestContext", "http", "path"],
        json!("/prod/status"),
    );
    resign(
        &mut stage,
        "https://abc123.execute-api.us-east-1.amazonaws.com/prod/status",
    );
    s.add("lambda_event", render(&stage));

    let mut query = load("sms.http-api.json");
    set(&mut query, &["rawQueryString"], json!("b=2&a=%20x"));
    set(
        &mut query,
        &["queryStringParameters"],
        json!({ "a": " x", "b": "2" }),
    );
    resign(
        &mut query,
        "https://abc123.execute-api.us-east-1.amazonaws.com/sms?b=2&a=%20x",
    );
    s.add("lambda_event", render(&query));

    let mut plain = load("sms.http-api.json");
    let body = String::from_utf8(body_of(&plain)).unwrap();
    set(&mut plain, &["isBase64Encoded"], json!(false));
    set(&mut plain, &["body"], json!(body));
    set_header(&mut plain, "host", None);
    s.add("lambda_event", render(&plain));

    let mut v1q = load("sms.rest-api.json");
    set(
        &mut v1q,
        &["queryStringParameters"],
        json!({ "tenant": "a-1" }),
    );
    set(
        &mut v1q,
        &["multiValueQueryStringParameters"],
        json!({ "tenant": ["a-1"] }),
    );
    resign(
        &mut v1q,
        "https://def456.execute-api.us-east-1.amazonaws.com/prod/sms?tenant=a-1",
    );
    s.add("lambda_event", render(&v1q));

    let mut v1get = load("voice.rest-api.json");
    set(&mut v1get, &["httpMethod"], json!("GET"));
    set(&mut v1get, &["requestContext", "httpMethod"], json!("GET"));
    set(
        &mut v1get,
        &["queryStringParameters"],
        json!({ "a": "1", "b": "x y" }),
    );
    set(
        &mut v1get,
        &["multiValueQueryStringParameters"],
        json!({ "a": ["1", "2"], "b": ["x y"] }),
    );
    set(
        &mut v1get,
        &["requestContext", "resourcePath"],
        json!("/{proxy+}"),
    );
    s.add("lambda_event", render(&v1get));

    // The same events as fields.
    for (file, e) in events() {
        let rest = is_rest(&e);
        let ctx = &e["requestContext"];
        let fields = EventFields {
            rest_v1: rest,
            method: if rest {
                e["httpMethod"].as_str().unwrap().into()
            } else {
                ctx["http"]["method"].as_str().unwrap().into()
            },
            path: if rest {
                e["path"].as_str().unwrap().into()
            } else {
                e["rawPath"].as_str().unwrap().into()
            },
            context_path: if rest {
                ctx["path"].as_str().unwrap().into()
            } else {
                ctx["http"]["path"].as_str().unwrap().into()
            },
            stage: ctx["stage"].as_str().map(Into::into),
            route: if rest {
                ctx["resourcePath"].as_str().map(Into::into)
            } else {
                ctx["routeKey"].as_str().map(Into::into)
            },
            host: header(&e, "host"),
            proto: header(&e, "x-forwarded-proto"),
            query: e["rawQueryString"].as_str().unwrap_or("").into(),
            signature: header(&e, "x-twilio-signature").unwrap(),
            base64: e["isBase64Encoded"] == json!(true),
            body: body_of(&e),
        };
        s.add("lambda_fields", fields.encode());
        if file.starts_with("status-recording") {
            let mut f = fields.clone();
            f.stage = Some("prod".into());
            f.path = format!("/prod{}", f.path);
            f.query = "b=2&a=%20x".into();
            f.route = Some("$default".into());
            s.add("lambda_fields", f.encode());
            let mut f = fields;
            f.host = None;
            f.proto = Some("http".into());
            f.query = "x=1".into();
            s.add("lambda_fields", f.encode());
        }
    }
}

fn payloads(s: &mut Seeds) {
    for (file, e) in events() {
        let url = signed_url(&file, &e);
        let endpoint = endpoint_of(&file);
        s.add(
            "payload",
            payload::encode(endpoint, file.contains("rest"), &url, &body_of(&e)),
        );
    }
    // The payload unit tests' parameters (shared/twilio-webhook/src/payload.rs).
    let sm = "SM0123456789abcdef0123456789abcdef";
    let ca = "CA0123456789abcdef0123456789abcdef";
    let ac = "AC0123456789abcdef0123456789abcdef";
    let url = "https://example.com/twilio/voice?x=1";
    let cases: Vec<(Endpoint, Vec<(&str, &str)>)> = vec![
        (
            Endpoint::Sms,
            vec![
                ("MessageSid", sm),
                ("AccountSid", ac),
                ("From", "whatsapp:+14155550100"),
                ("To", "whatsapp:+14155550199"),
                ("Body", "see pic"),
                ("NumMedia", "2"),
                ("MediaUrl0", "https://api.twilio.com/m0"),
                ("MediaContentType0", "image/jpeg"),
                ("MediaUrl1", "https://api.twilio.com/m1"),
                ("ProfileName", "Ana"),
                ("WaId", "14155550100"),
                ("OptOutType", "STOP"),
                ("Brand-New-Param", "kept"),
            ],
        ),
        (
            Endpoint::Sms,
            vec![
                ("SmsSid", sm),
                ("AccountSid", ac),
                ("From", "+1"),
                ("To", "+2"),
            ],
        ),
        (
            Endpoint::Status,
            vec![
                ("SmsSid", sm),
                ("SmsStatus", "sent"),
                ("ErrorCode", "30007"),
            ],
        ),
        (
            Endpoint::Status,
            vec![
                ("CallSid", ca),
                ("CallStatus", "no-answer"),
                ("SipResponseCode", "487"),
            ],
        ),
        (
            Endpoint::Status,
            vec![
                ("CallSid", ca),
                ("CallStatus", "in-progress"),
                ("RecordingSid", "RE1"),
                ("RecordingStatus", "absent"),
            ],
        ),
        (
            Endpoint::Status,
            vec![
                ("ConferenceSid", "CF1"),
                ("StatusCallbackEvent", "conference-end"),
                ("SequenceNumber", "9"),
            ],
        ),
        (
            Endpoint::Voice,
            vec![
                ("CallSid", ca),
                ("AccountSid", ac),
                ("Direction", "outbound-dial"),
                ("ParentCallSid", ca),
                ("ForwardedFrom", "+15551234567"),
            ],
        ),
        (
            Endpoint::Fallback,
            vec![
                ("CallSid", ca),
                ("AccountSid", ac),
                ("ErrorCode", "11205"),
                ("ErrorUrl", url),
            ],
        ),
        (Endpoint::Status, vec![("Foo", "bar")]),
    ];
    for (i, (endpoint, pairs)) in cases.into_iter().enumerate() {
        let body = FormParams::from_pairs(pairs).encode();
        s.add(
            "payload",
            payload::encode(endpoint, i % 2 == 0, url, body.as_bytes()),
        );
    }
}

fn twiml(s: &mut Seeds) {
    let strings: &[&str] = &[
        "Thanks & bye",
        "https://example.com/b.png?x=1&y=2",
        "<tag attr=\"v\">'single'</tag>",
        "]]> and &amp; and &#10;",
        "tab\there\nnew line\r\ncarriage\rreturn",
        "ctrl \u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}\u{85} chars",
        "noncharacters \u{fffe}\u{ffff}\u{fdd0} and astral 😀\u{10ffff}",
        "  leading and trailing spaces  ",
        "",
        "+15551234567",
        "42",
        "Polly.Joanna",
    ];
    let pool = join_fields(strings, 0);
    let prog = |ops: &[u8]| {
        let mut out = vec![ops.len() as u8];
        out.extend_from_slice(ops);
        out.extend_from_slice(&pool);
        out
    };
    // Messaging: Message (no media / with 2 media, all attributes), Redirect.
    s.add(
        "twiml",
        prog(&[0, 0, 0, 0, 0, 0x1f, 0x40, 1, 0xff, 0xff, 0, 0xff, 0x20]),
    );
    // Voice: every verb with every attribute, Gather with 3 prompts, Dial with numbers.
    s.add(
        "twiml",
        prog(&[
            1,
            0,
            0xff,
            0xff,
            1,
            0xff,
            0xff,
            2,
            0xff,
            0xff,
            3 + 9 * 3,
            0xff,
            0xff,
            0,
            7,
            0,
            1,
            1,
            0,
            2,
            1,
            0,
            4,
            0xff,
            0xff,
            5,
            0xff,
            0xff,
            5 + 9 * 2,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
            5 + 9 * 2 + 128,
            0,
            0,
            7,
            0,
            0,
            6,
            0,
            0,
            7,
            0xff,
            0xff,
            8,
            0xff,
            0xff,
        ]),
    );
    s.add("twiml", prog(&[1, 6, 0, 0]));
    s.add("twiml", prog(&[0]));
}

/// Event records as the pipeline stores them, for every sample.
fn records() -> Vec<(webhook_pipeline::EventRecord, StateRecord)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for sample in samples::all() {
        let queue = Arc::new(MemoryQueue::default());
        let pipeline = Pipeline::new(
            Validator::new(token()), std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(Arc::new(MemoryStore::default()), queue.clone())),
            ReplyPolicy {
                sms_auto_reply: Some("Thanks!".into()),
                ..ReplyPolicy::default()
            },
            Settings::default());
        let url = webhook_testkit::events::http_api_url(sample.endpoint);
        let req = samples::signed_request(TEST_AUTH_TOKEN, &url, &sample.params);
        let reply = rt.block_on(pipeline.handle(sample.endpoint, &req));
        assert_eq!(reply.status, 200, "{}", sample.name);
        let job = queue.pop().expect("a job");
        let mut state = StateRecord::default();
        if let Some(u) = &job.event.state_update {
            state.apply(u, &job.event.key, job.event.received_at);
        }
        out.push((job.event, state));
    }
    out
}

fn stored(s: &mut Seeds) {
    use sqlite_rows::op;
    let recs = records();
    for (i, (rec, state)) in recs.iter().enumerate() {
        let event = serde_json::to_string(rec).unwrap();
        let job = serde_json::to_string(&webhook_pipeline::Job { event: rec.clone() }).unwrap();
        let reply = serde_json::to_string(&rec.reply).unwrap();
        let state = serde_json::to_string(state).unwrap();
        let shape = (i % 6) as u8;
        for text in [&event, &job, &reply, &state] {
            let mut d = vec![shape];
            d.extend_from_slice(text.as_bytes());
            s.add("stored_json", d);
        }
    }
    // SQLite rows, one operation each: every operation on a record as stored, each record
    // with odd column types, a row whose event names another key, and corrupt JSON everywhere
    // for every operation. No control byte is 0 (it would end the field): STALE_PENDING is
    // written 0x08 (bits 3 to 6 of byte 0 are ignored), and the types' bytes are 1 to 11.
    // The claimed record is processed (byte 6: 0x80), so that the claim is a duplicate.
    let ops: [&[u8]; 9] = [
        &[op::STALE_PENDING | 0x08],
        &[op::RECEIVE],
        &[op::RECOVER],
        &[op::RECOVER | op::RECORDS_ARE_JOBS],
        &[op::FOLD_READY],
        &[op::SET_ASIDE],
        &[op::LOAD_STATE],
        &[op::CLAIM, 1, 1, 1, 1, 1, 0x80],
        &[op::INSPECT],
    ];
    let row = |ctl: &[u8], rec: &webhook_pipeline::EventRecord, state: &StateRecord| {
        let event = serde_json::to_string(rec).unwrap();
        let job = serde_json::to_string(&webhook_pipeline::Job { event: rec.clone() }).unwrap();
        let reply = serde_json::to_string(&rec.reply).unwrap();
        let state = serde_json::to_string(state).unwrap();
        join_fields(
            [
                ctl,
                rec.key.as_bytes(),
                event.as_bytes(),
                reply.as_bytes(),
                job.as_bytes(),
                state.as_bytes(),
            ],
            0,
        )
    };
    for (i, ctl) in ops.iter().enumerate() {
        let (rec, state) = &recs[i % recs.len()];
        s.add("sqlite_rows", row(ctl, rec, state));
    }
    for (i, (rec, state)) in recs.iter().enumerate().skip(1) {
        let mut ctl = vec![ops[i % ops.len()][0]];
        ctl.extend((0..16).map(|j| ((i * 7 + j * 3) % 11 + 1) as u8));
        s.add("sqlite_rows", row(&ctl, rec, state));
    }
    let (rec, _) = &recs[0];
    let event = serde_json::to_string(rec).unwrap();
    s.add(
        "sqlite_rows",
        join_fields(
            [
                &[op::FOLD_READY][..],
                b"other#key",
                event.as_bytes(),
                b"{}",
                b"",
                b"{}",
            ],
            0,
        ),
    );
    for ctl in ops {
        s.add(
            "sqlite_rows",
            join_fields(
                [ctl, b"k", b"{\"key\":", b"null", b"[1,2", b"{\"id\":1}"],
                0,
            ),
        );
    }
}

fn main() {
    let mut s = Seeds(BTreeMap::new());
    form_and_signature(&mut s);
    lambda(&mut s);
    payloads(&mut s);
    twiml(&mut s);
    stored(&mut s);
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| repo().join("fuzz/seeds"), PathBuf::from);
    s.write(&dir).unwrap();
}
