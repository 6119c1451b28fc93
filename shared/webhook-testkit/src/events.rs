//! Signed sample API Gateway events: the `events/` files (`sam local invoke -e`, the Lambda
//! console's test events, the handler tests).
//!
//! Every sample of [`crate::samples::all`] becomes two files:
//! - `<name>.http-api.json`: API Gateway HTTP API payload 2.0 (the shape Function URLs use too),
//!   `$default` stage, lower-case headers, base64 body;
//! - `<name>.rest-api.json`: REST API (v1) proxy event, stage `prod`, Mixed-Case headers as REST
//!   APIs keep them, plain body.
//!
//! Plus `sms.function-url.json`: the sms sample as a Lambda Function URL delivers it (FrontDoor
//! FunctionUrl): payload 2.0, `routeKey` `$default`, the URL's root path, the URL's own host.
//!
//! Each is signed with [`TEST_AUTH_TOKEN`] over the URL the function rebuilds from it (see
//! `webhook_aws::http::signed_url`). The output is deterministic (fixed ids and times, sorted keys),
//! so CI can check that the committed files are up to date ([`check_all`]).

use std::path::{Path, PathBuf};

use crate::samples::{self, Sample, TEST_AUTH_TOKEN};
use serde_json::{Map, Value, json};
use twilio_webhook::payload::Endpoint;
use twilio_webhook::{AuthToken, FormParams, sign};

/// The AWS account id in the events' request contexts.
pub const ACCOUNT_ID: &str = "123456789012";
/// The HTTP API's id.
pub const HTTP_API_ID: &str = "abc123";
/// The HTTP API's default host, which the HTTP API events are signed for.
pub const HTTP_API_HOST: &str = "abc123.execute-api.us-east-1.amazonaws.com";
/// The REST API's id.
pub const REST_API_ID: &str = "def456";
/// The REST API's default host, which the REST API events are signed for.
pub const REST_API_HOST: &str = "def456.execute-api.us-east-1.amazonaws.com";
/// The REST API's stage (part of the signed path).
pub const REST_API_STAGE: &str = "prod";
/// A Function URL's id is 32 lower-case letters and digits.
pub const FUNCTION_URL_ID: &str = "ghi789ghi789ghi789ghi789ghi789gh";
/// The Function URL's host.
pub const FUNCTION_URL_HOST: &str = "ghi789ghi789ghi789ghi789ghi789gh.lambda-url.us-east-1.on.aws";
/// What Twilio is given for a Function URL (the stack's output): its root.
pub const FUNCTION_URL: &str =
    "https://ghi789ghi789ghi789ghi789ghi789gh.lambda-url.us-east-1.on.aws/";

const USER_AGENT: &str = "TwilioProxy/1.1";
/// An address in Twilio's webhook range.
const SOURCE_IP: &str = "54.172.60.1";
const TIME: &str = "27/Nov/2026:14:00:00 +0000";
const TIME_EPOCH_MS: i64 = 1_795_788_000_000;
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The function's own path: `/sms`, `/voice`, `/status`, `/fallback`.
pub fn route(endpoint: Endpoint) -> String {
    format!("/{}", endpoint.as_str())
}

/// The URL Twilio signs for the HTTP API events (`$default` stage: no stage in the path).
pub fn http_api_url(endpoint: Endpoint) -> String {
    format!("https://{HTTP_API_HOST}{}", route(endpoint))
}

/// The URL Twilio signs for the REST API events (the stage is part of the path).
pub fn rest_api_url(endpoint: Endpoint) -> String {
    format!(
        "https://{REST_API_HOST}/{REST_API_STAGE}{}",
        route(endpoint)
    )
}

/// Every sample event: `(file name, event)`, in a fixed order.
pub fn all_events() -> Vec<(String, Value)> {
    let mut events: Vec<(String, Value)> = samples::all()
        .iter()
        .enumerate()
        .flat_map(|(n, sample)| {
            [
                (
                    format!("{}.http-api.json", sample.name),
                    http_api_event(sample, n),
                ),
                (
                    format!("{}.rest-api.json", sample.name),
                    rest_api_event(sample, n),
                ),
            ]
        })
        .collect();
    let (n, sms) = samples::all()
        .into_iter()
        .enumerate()
        .find(|(_, s)| s.name == "sms")
        .expect("sms sample");
    events.push(("sms.function-url.json".into(), function_url_event(&sms, n)));
    events.push(("event-worker.sqs.json".into(), worker_sqs_event()));
    events.push((
        "event-worker.schedule.json".into(),
        sorted(schedule_event()),
    ));
    events
}

/// An SQS batch with the job the sms sample becomes, as the event source mapping delivers it.
fn worker_sqs_event() -> Value {
    use std::sync::Arc;
    let sample = samples::all()
        .into_iter()
        .find(|s| s.name == "sms")
        .expect("sms sample");
    let url = http_api_url(sample.endpoint);
    let req = samples::signed_request(TEST_AUTH_TOKEN, &url, &sample.params);
    let pipeline = crate::samples::test_pipeline(
        Arc::new(crate::memory::MemoryStore::default()),
        Arc::new(crate::memory::MemoryQueue::default()),
    )
    .with_clock(Arc::new(|| TIME_EPOCH_MS));
    let (_, event) = pipeline
        .accept(sample.endpoint, &req)
        .expect("the sample is valid");
    let body =
        serde_json::to_string(&webhook_pipeline::store::Job { event }).expect("a job serializes");
    sorted(json!({
        "Records": [{
            "messageId": "6f1a5a4e-0000-4000-8000-000000000001",
            "receiptHandle": "AQEBsample-receipt-handle",
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": TIME_EPOCH_MS.to_string(),
                "SenderId": "AROAEXAMPLE:sms-webhook",
                "ApproximateFirstReceiveTimestamp": TIME_EPOCH_MS.to_string()
            },
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": format!("arn:aws:sqs:us-east-1:{ACCOUNT_ID}:twilio-work"),
            "awsRegion": "us-east-1"
        }]
    }))
}

/// The EventBridge tick that runs the sweeper.
fn schedule_event() -> Value {
    json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": "2026-11-27T14:00:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:{ACCOUNT_ID}:rule/twilio-webhooks-sweep")],
        "detail": {}
    })
}

/// Write every event to `dir` (created if needed); returns the paths written.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    all_events()
        .into_iter()
        .map(|(name, event)| {
            let path = dir.join(name);
            std::fs::write(&path, render(&event))?;
            Ok(path)
        })
        .collect()
}

/// `Ok` when every event file in `dir` exists with exactly the generated bytes; otherwise the
/// list of files that are missing or differ.
pub fn check_all(dir: &Path) -> Result<(), String> {
    let problems: Vec<String> = all_events()
        .into_iter()
        .filter_map(|(name, event)| {
            let path = dir.join(&name);
            match std::fs::read_to_string(&path) {
                Ok(text) if text == render(&event) => None,
                Ok(_) => Some(format!("differs: {}", path.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Some(format!("missing: {}", path.display()))
                }
                Err(e) => Some(format!("unreadable: {}: {e}", path.display())),
            }
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the sample events in {} are out of date:\n  {}\nregenerate them with \
         `UPDATE_EVENTS=1 cargo test -p webhook-aws --test handler events_dir_is_up_to_date`",
        dir.display(),
        problems.join("\n  ")
    ))
}

/// Pretty JSON and a trailing newline: the bytes of an event file.
pub fn render(event: &Value) -> String {
    let mut text = serde_json::to_string_pretty(event).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// The signed body of a sample: `(form body, X-Twilio-Signature)`.
fn signed_form(sample: &Sample, url: &str) -> (String, String) {
    let form = FormParams::from_pairs(sample.params.iter().map(|(k, v)| (*k, v.as_str())));
    let signature = sign(&AuthToken::new(TEST_AUTH_TOKEN).unwrap(), url, &form);
    (form.encode(), signature)
}

fn idempotency_token(n: usize) -> String {
    format!("00000000-0000-4000-8000-{:012}", n + 1)
}

fn request_id(n: usize) -> String {
    format!("c0ffee00-0000-4000-8000-{:012}", n + 1)
}

/// HTTP API payload 2.0 (also what a Function URL sends, with `routeKey` `$default`).
fn http_api_event(sample: &Sample, n: usize) -> Value {
    let route = route(sample.endpoint);
    let route_key = format!("POST {route}");
    let (body, signature) = signed_form(sample, &http_api_url(sample.endpoint));
    sorted(json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": route,
        "rawQueryString": "",
        "headers": {
            "host": HTTP_API_HOST,
            "content-type": CONTENT_TYPE,
            "x-twilio-signature": signature,
            "i-twilio-idempotency-token": idempotency_token(n),
            "user-agent": USER_AGENT,
            "x-forwarded-for": SOURCE_IP,
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
        },
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": HTTP_API_ID,
            "domainName": HTTP_API_HOST,
            "domainPrefix": HTTP_API_ID,
            "http": {
                "method": "POST",
                "path": route,
                "protocol": "HTTP/1.1",
                "sourceIp": SOURCE_IP,
                "userAgent": USER_AGENT,
            },
            "requestId": request_id(n),
            "routeKey": route_key,
            "stage": "$default",
            "time": TIME,
            "timeEpoch": TIME_EPOCH_MS,
        },
        "body": base64(body.as_bytes()),
        "isBase64Encoded": true,
    }))
}

/// A Function URL event: the HTTP API shape with `routeKey` `$default`, the `$default` stage
/// and the root path of the URL Twilio was given ([`FUNCTION_URL`]).
fn function_url_event(sample: &Sample, n: usize) -> Value {
    let mut event = http_api_event(sample, n);
    let (body, signature) = signed_form(sample, FUNCTION_URL);
    event["routeKey"] = json!("$default");
    event["rawPath"] = json!("/");
    event["headers"]["host"] = json!(FUNCTION_URL_HOST);
    event["headers"]["x-twilio-signature"] = json!(signature);
    let ctx = &mut event["requestContext"];
    ctx["routeKey"] = json!("$default");
    ctx["http"]["path"] = json!("/");
    ctx["apiId"] = json!(FUNCTION_URL_ID);
    ctx["domainName"] = json!(FUNCTION_URL_HOST);
    ctx["domainPrefix"] = json!(FUNCTION_URL_ID);
    event["body"] = json!(base64(body.as_bytes()));
    sorted(event)
}

/// REST API (v1) proxy event, stage `prod`.
fn rest_api_event(sample: &Sample, n: usize) -> Value {
    let route = route(sample.endpoint);
    let (body, signature) = signed_form(sample, &rest_api_url(sample.endpoint));
    let headers = [
        ("Host", REST_API_HOST.to_owned()),
        ("Content-Type", CONTENT_TYPE.to_owned()),
        ("X-Twilio-Signature", signature),
        ("I-Twilio-Idempotency-Token", idempotency_token(n)),
        ("User-Agent", USER_AGENT.to_owned()),
        ("X-Forwarded-For", SOURCE_IP.to_owned()),
        ("X-Forwarded-Proto", "https".to_owned()),
        ("X-Forwarded-Port", "443".to_owned()),
    ];
    let single: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let multi: Map<String, Value> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!([v])))
        .collect();
    sorted(json!({
        "resource": route,
        "path": route,
        "httpMethod": "POST",
        "headers": single,
        "multiValueHeaders": multi,
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": null,
        "stageVariables": null,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": REST_API_ID,
            "domainName": REST_API_HOST,
            "domainPrefix": REST_API_ID,
            "extendedRequestId": format!("Ext{:04}RequestId=", n + 1),
            "httpMethod": "POST",
            "identity": {
                "sourceIp": SOURCE_IP,
                "userAgent": USER_AGENT,
            },
            "path": format!("/{REST_API_STAGE}{route}"),
            "protocol": "HTTP/1.1",
            "requestId": request_id(n),
            "requestTime": TIME,
            "requestTimeEpoch": TIME_EPOCH_MS,
            "resourceId": "r35ou7",
            "resourcePath": route,
            "stage": REST_API_STAGE,
        },
        "body": body,
        "isBase64Encoded": false,
    }))
}

/// Keys in sorted order whatever serde_json's `preserve_order` feature says, so the bytes
/// never depend on which crates are in the build.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Standard base64 with padding (what API Gateway uses for `isBase64Encoded` bodies).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn two_files_per_sample_and_two_worker_events_with_unique_names() {
        let events = all_events();
        assert_eq!(events.len(), 2 * samples::all().len() + 1 + 2);
        let mut names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), events.len());
    }

    #[test]
    fn output_is_deterministic() {
        let a: Vec<String> = all_events().iter().map(|(_, e)| render(e)).collect();
        let b: Vec<String> = all_events().iter().map(|(_, e)| render(e)).collect();
        assert_eq!(a, b);
    }
}
