//! The Lambda HTTP adapter driven by real event files (`events/`, loaded with lambda_http like
//! API Gateway hands them over) and by variants of them: named stages, Function URLs, raw query
//! strings, custom domains, REST v1 limits, missing Host, tampered bodies, plain bodies and
//! mixed-case headers.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lambda_http::{Body, Request};
use serde_json::{Value, json};
use twilio_webhook::url::{PublicBaseUrl, UrlError};
use twilio_webhook::{AuthToken, FormParams, Validator, sign};
use webhook_aws::{Endpoint, WebhookApp, http};
use webhook_pipeline::{Pipeline, ReplyPolicy, Settings};
use webhook_testkit::events;
use webhook_testkit::memory::{MemoryQueue, MemoryStore};
use webhook_testkit::samples::{self, TEST_AUTH_TOKEN};

const HTTP_API: &str = "https://abc123.execute-api.us-east-1.amazonaws.com";
const REST_API: &str = "https://def456.execute-api.us-east-1.amazonaws.com/prod";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

/// An event file of `events/`, as JSON to edit.
fn load(name: &str) -> Value {
    let path = events_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The event as the Lambda runtime hands it to the function.
fn request(event: &Value) -> Request {
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway event")
}

/// `sms.http-api.json` → the endpoint of the `sms` sample.
fn endpoint_of(file: &str) -> Endpoint {
    let name = file.split('.').next().unwrap_or_default();
    samples::all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{file}: no sample named {name:?}"))
        .endpoint
}

fn is_rest(event: &Value) -> bool {
    event.get("httpMethod").is_some()
}

/// The form parameters of the event's body (base64 or plain).
fn body_params(event: &Value) -> FormParams {
    let body = event["body"].as_str().expect("a body");
    let bytes = if event["isBase64Encoded"] == json!(true) {
        BASE64.decode(body).expect("base64 body")
    } else {
        body.as_bytes().to_vec()
    };
    FormParams::parse(&bytes).expect("a form body")
}

/// Replace the body, keeping the event's encoding (base64 or plain).
fn set_body(event: &mut Value, params: &FormParams) {
    let form = params.encode();
    event["body"] = if event["isBase64Encoded"] == json!(true) {
        json!(BASE64.encode(form))
    } else {
        json!(form)
    };
}

/// Set a header in `headers` and, when present, `multiValueHeaders`, keeping the spelling of an
/// existing key (REST v1 keeps `X-Twilio-Signature`, HTTP APIs lower-case everything).
fn set_header(event: &mut Value, name: &str, value: &str) {
    for (field, v) in [
        ("headers", json!(value)),
        ("multiValueHeaders", json!([value])),
    ] {
        if let Some(map) = event.get_mut(field).and_then(Value::as_object_mut) {
            let key = map
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .cloned()
                .unwrap_or_else(|| name.to_owned());
            map.insert(key, v);
        }
    }
}

fn remove_header(event: &mut Value, name: &str) {
    for field in ["headers", "multiValueHeaders"] {
        if let Some(map) = event.get_mut(field).and_then(Value::as_object_mut) {
            map.retain(|k, _| !k.eq_ignore_ascii_case(name));
        }
    }
}

/// Sign the event's body for `url`, as Twilio would have if it had called that URL.
fn resign(event: &mut Value, url: &str) {
    let signature = sign(
        &AuthToken::new(TEST_AUTH_TOKEN).unwrap(),
        url,
        &body_params(event),
    );
    set_header(event, "x-twilio-signature", &signature);
}

/// REST v1 query string parameters, single- and multi-valued as API Gateway sends them.
fn set_v1_query(event: &mut Value, pairs: &[(&str, &str)]) {
    let single: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let multi: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!([v])))
        .collect();
    event["queryStringParameters"] = Value::Object(single);
    event["multiValueQueryStringParameters"] = Value::Object(multi);
}

struct Harness {
    pipeline: Pipeline,
    queue: Arc<MemoryQueue>,
}

fn harness() -> Harness {
    let queue = Arc::new(MemoryQueue::default());
    let pipeline =
        webhook_testkit::samples::test_pipeline(Arc::new(MemoryStore::default()), queue.clone());
    Harness { pipeline, queue }
}

fn app(base: Option<&str>) -> (WebhookApp, Arc<MemoryQueue>) {
    let Harness { pipeline, queue } = harness();
    let base = base.map(|b| b.parse::<PublicBaseUrl>().expect("a valid base URL"));
    (WebhookApp { pipeline, base }, queue)
}

/// The adapter rebuilds exactly `expected_url`, and the pipeline accepts the request: 200 TwiML
/// and one job (for that URL) on the queue.
async fn assert_accepted(
    event: &Value,
    endpoint: Endpoint,
    base: Option<&str>,
    expected_url: &str,
) {
    let base = base.map(|b| b.parse::<PublicBaseUrl>().expect("a valid base URL"));
    let incoming = http::incoming(request(event), base.as_ref()).expect("the signed URL rebuilds");
    assert_eq!(incoming.url, expected_url);

    let h = harness();
    let reply = h.pipeline.handle(endpoint, &incoming).await;
    assert_eq!(reply.status, 200, "{expected_url}: {}", reply.body);
    assert_eq!(reply.content_type.as_deref(), Some("text/xml"));
    assert!(reply.body.contains("<Response"), "{}", reply.body);
    assert_eq!(h.queue.len(), 1, "{expected_url}: one job enqueued");
    let job = h.queue.pop().expect("a job");
    assert_eq!(job.event.url, expected_url);
    assert_eq!(job.event.endpoint, endpoint);
}

/// The whole Lambda handler: status and body of the response.
async fn respond(
    event: &Value,
    endpoint: Endpoint,
    base: Option<&str>,
) -> (u16, Option<String>, String, usize) {
    let (app, queue) = app(base);
    let response = app.handle(endpoint, request(event)).await;
    let content_type = response
        .headers()
        .get(lambda_http::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ASCII content type").to_owned());
    let body = match response.body() {
        Body::Text(t) => t.clone(),
        Body::Empty => String::new(),
        Body::Binary(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    (response.status().as_u16(), content_type, body, queue.len())
}

fn event_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(events_dir())
        .expect("the events/ directory")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        // Webhook events only; `event-worker.*.json` are the worker's SQS and schedule events.
        .filter(|n| n.ends_with(".json") && !n.starts_with("event-worker."))
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// The committed event files
// ---------------------------------------------------------------------------------------------

#[test]
fn events_dir_is_up_to_date() {
    let dir = events_dir();
    if std::env::var_os("UPDATE_EVENTS").is_some() {
        events::write_all(&dir).expect("events/ is writable");
    }
    if let Err(report) = events::check_all(&dir) {
        panic!("{report}");
    }
}

#[test]
fn event_files_have_the_documented_shapes() {
    let files = event_files();
    assert_eq!(
        files.len(),
        17,
        "two files for each of the 8 samples, and sms.function-url.json: {files:?}"
    );
    for file in &files {
        let event = load(file);
        let route = format!("/{}", endpoint_of(file).as_str());
        if file.ends_with(".function-url.json") {
            assert_eq!(event["version"], "2.0", "{file}");
            assert_eq!(event["routeKey"], "$default", "{file}");
            assert_eq!(event["rawPath"], "/", "{file}");
            assert_eq!(event["requestContext"]["stage"], "$default", "{file}");
            assert_eq!(
                event["headers"]["host"],
                events::FUNCTION_URL_HOST,
                "{file}"
            );
        } else if file.ends_with(".http-api.json") {
            assert_eq!(event["version"], "2.0", "{file}");
            assert_eq!(event["routeKey"], format!("POST {route}"), "{file}");
            assert_eq!(event["rawPath"], route, "{file}");
            assert_eq!(event["rawQueryString"], "", "{file}");
            assert_eq!(event["requestContext"]["stage"], "$default", "{file}");
            assert_eq!(event["isBase64Encoded"], true, "{file}");
            let headers = event["headers"].as_object().expect("headers");
            assert!(
                headers.keys().all(|k| *k == k.to_ascii_lowercase()),
                "{file}: lower-case headers"
            );
            assert_eq!(headers["user-agent"], "TwilioProxy/1.1", "{file}");
        } else {
            assert!(file.ends_with(".rest-api.json"), "{file}");
            assert_eq!(event["httpMethod"], "POST", "{file}");
            assert_eq!(event["resource"], route, "{file}");
            assert_eq!(event["path"], route, "{file}");
            assert_eq!(event["requestContext"]["stage"], "prod", "{file}");
            assert_eq!(
                event["requestContext"]["path"],
                format!("/prod{route}"),
                "{file}"
            );
            assert_eq!(event["queryStringParameters"], Value::Null, "{file}");
            assert_eq!(event["isBase64Encoded"], false, "{file}");
            let headers = event["headers"].as_object().expect("headers");
            let multi = event["multiValueHeaders"]
                .as_object()
                .expect("multiValueHeaders");
            for key in [
                "Host",
                "Content-Type",
                "X-Twilio-Signature",
                "I-Twilio-Idempotency-Token",
                "X-Forwarded-Proto",
            ] {
                assert!(headers.contains_key(key), "{file}: {key}");
            }
            assert_eq!(headers.len(), multi.len(), "{file}");
            for (k, v) in headers {
                assert_eq!(multi[k], json!([v]), "{file}: multiValueHeaders.{k}");
            }
        }
    }
}

#[tokio::test]
async fn every_event_file_rebuilds_its_signed_url_and_is_accepted() {
    for file in event_files() {
        let event = load(&file);
        let endpoint = endpoint_of(&file);
        let expected = if is_rest(&event) {
            format!("{REST_API}/{}", endpoint.as_str())
        } else if file.ends_with(".function-url.json") {
            events::FUNCTION_URL.to_owned()
        } else {
            format!("{HTTP_API}/{}", endpoint.as_str())
        };
        assert_accepted(&event, endpoint, None, &expected).await;
    }
}

#[tokio::test]
async fn every_event_file_gets_a_twiml_lambda_response() {
    for file in event_files() {
        let (status, content_type, body, jobs) =
            respond(&load(&file), endpoint_of(&file), None).await;
        assert_eq!(status, 200, "{file}: {body}");
        assert_eq!(content_type.as_deref(), Some("text/xml"), "{file}");
        assert!(
            body.starts_with("<?xml") && body.contains("<Response"),
            "{file}: {body}"
        );
        assert_eq!(jobs, 1, "{file}");
    }
}

// ---------------------------------------------------------------------------------------------
// URL reconstruction: HTTP API (v2) and Function URLs
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn http_api_named_stage_is_part_of_the_signed_url() {
    let mut event = load("sms.http-api.json");
    event["requestContext"]["stage"] = json!("prod");
    event["rawPath"] = json!("/prod/sms");
    event["requestContext"]["http"]["path"] = json!("/prod/sms");

    // Still signed for `/sms`: the stage is missing from what Twilio signed, so it must not verify.
    let (status, _, _, jobs) = respond(&event, Endpoint::Sms, None).await;
    assert_eq!((status, jobs), (403, 0));

    let url = format!("{HTTP_API}/prod/sms");
    resign(&mut event, &url);
    assert_accepted(&event, Endpoint::Sms, None, &url).await;
}

#[tokio::test]
async fn http_api_default_route_with_named_stage() {
    // A catch-all `$default` route: the route comes from rawPath minus the stage.
    let mut event = load("status-call.http-api.json");
    event["routeKey"] = json!("$default");
    event["requestContext"]["routeKey"] = json!("$default");
    event["requestContext"]["stage"] = json!("prod");
    event["rawPath"] = json!("/prod/status");
    event["requestContext"]["http"]["path"] = json!("/prod/status");

    let url = format!("{HTTP_API}/prod/status");
    resign(&mut event, &url);
    assert_accepted(&event, Endpoint::Status, None, &url).await;

    let public = "https://hooks.example.com/twilio/status";
    resign(&mut event, public);
    assert_accepted(
        &event,
        Endpoint::Status,
        Some("https://hooks.example.com/twilio"),
        public,
    )
    .await;
}

#[tokio::test]
async fn function_url_event_is_accepted() {
    let host = "xyz.lambda-url.us-east-1.on.aws";
    let mut event = load("voice.http-api.json");
    event["routeKey"] = json!("$default");
    let ctx = &mut event["requestContext"];
    ctx["routeKey"] = json!("$default");
    ctx["stage"] = json!("$default");
    ctx["apiId"] = json!("xyz");
    ctx["domainName"] = json!(host);
    ctx["domainPrefix"] = json!("xyz");
    set_header(&mut event, "host", host);

    let url = format!("https://{host}/voice");
    resign(&mut event, &url);
    assert_accepted(&event, Endpoint::Voice, None, &url).await;
}

#[tokio::test]
async fn raw_query_string_is_kept_byte_for_byte() {
    let mut event = load("sms.http-api.json");
    event["rawQueryString"] = json!("b=2&a=%20x");
    event["queryStringParameters"] = json!({ "a": " x", "b": "2" });

    let url = format!("{HTTP_API}/sms?b=2&a=%20x");
    resign(&mut event, &url);
    assert_accepted(&event, Endpoint::Sms, None, &url).await;

    // Signed over a re-encoded or re-ordered query, it would not verify.
    resign(&mut event, &format!("{HTTP_API}/sms?a=+x&b=2"));
    let (status, _, _, jobs) = respond(&event, Endpoint::Sms, None).await;
    assert_eq!((status, jobs), (403, 0));
}

#[tokio::test]
async fn plain_body_in_an_http_api_event_is_accepted() {
    let mut event = load("sms.http-api.json");
    let params = body_params(&event);
    event["isBase64Encoded"] = json!(false);
    set_body(&mut event, &params);
    assert!(
        event["body"]
            .as_str()
            .is_some_and(|b| b.contains("SmsMessageSid="))
    );

    // Same parameters, same URL: the original signature still holds.
    assert_accepted(&event, Endpoint::Sms, None, &format!("{HTTP_API}/sms")).await;
}

// ---------------------------------------------------------------------------------------------
// Custom domains
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn public_base_url_replaces_host_and_stage() {
    let base = "https://hooks.example.com/twilio";
    let url = "https://hooks.example.com/twilio/sms";

    let mut v2 = load("sms.http-api.json");
    resign(&mut v2, url);
    assert_accepted(&v2, Endpoint::Sms, Some(base), url).await;

    let mut v2_stage = v2.clone();
    v2_stage["requestContext"]["stage"] = json!("prod");
    v2_stage["rawPath"] = json!("/prod/sms");
    assert_accepted(&v2_stage, Endpoint::Sms, Some(base), url).await;

    let mut v1 = load("sms.rest-api.json");
    resign(&mut v1, url);
    assert_accepted(&v1, Endpoint::Sms, Some(base), url).await;

    // Without the base, the same events are checked against the execute-api URL: refused.
    let (status, _, _, _) = respond(&v2, Endpoint::Sms, None).await;
    assert_eq!(status, 403);
    let (status, _, body, jobs) = respond(&v1, Endpoint::Sms, Some(base)).await;
    assert_eq!((status, jobs), (200, 1), "{body}");
}

#[tokio::test]
async fn custom_domain_root_mapping_has_no_stage_in_the_url() {
    // `hooks.example.com/` mapped to stage `prod`: Twilio calls `https://hooks.example.com/sms`.
    // lambda_http puts `/prod` in front of `req.uri()`'s path; the signed URL must not have it.
    let url = "https://hooks.example.com/sms";

    let mut v2 = load("sms.http-api.json");
    set_header(&mut v2, "host", "hooks.example.com");
    v2["requestContext"]["domainName"] = json!("hooks.example.com");
    v2["requestContext"]["stage"] = json!("prod");
    resign(&mut v2, url);
    assert_eq!(request(&v2).uri().path(), "/prod/sms");
    assert_accepted(&v2, Endpoint::Sms, None, url).await;

    let mut v1 = load("sms.rest-api.json");
    set_header(&mut v1, "host", "hooks.example.com");
    v1["requestContext"]["domainName"] = json!("hooks.example.com");
    v1["requestContext"]["path"] = json!("/sms");
    resign(&mut v1, url);
    assert_eq!(request(&v1).uri().path(), "/prod/sms");
    assert_accepted(&v1, Endpoint::Sms, None, url).await;
}

/// A REST API behind a custom domain with a base path mapping (`twilio` → stage `prod`): API
/// Gateway puts the base path in both `path` and `requestContext.path`, and not the stage.
fn rest_api_on_custom_domain() -> Value {
    let mut event = load("sms.rest-api.json");
    set_header(&mut event, "host", "hooks.example.com");
    event["path"] = json!("/twilio/sms");
    event["requestContext"]["path"] = json!("/twilio/sms");
    event["requestContext"]["domainName"] = json!("hooks.example.com");
    event["requestContext"]["domainPrefix"] = json!("hooks");
    event
}

#[tokio::test]
async fn rest_api_custom_domain_with_base_path_mapping() {
    let url = "https://hooks.example.com/twilio/sms";
    let mut event = rest_api_on_custom_domain();
    resign(&mut event, url);
    // From Host + requestContext.path alone...
    assert_accepted(&event, Endpoint::Sms, None, url).await;
    // ...and with PUBLIC_BASE_URL set (the route is the resource, not the mapped path).
    assert_accepted(
        &event,
        Endpoint::Sms,
        Some("https://hooks.example.com/twilio"),
        url,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// REST API (v1) limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rest_api_single_unreserved_query_param_is_accepted() {
    let mut event = load("sms.rest-api.json");
    set_v1_query(&mut event, &[("token", "abc-1_2.3~")]);
    let url = format!("{REST_API}/sms?token=abc-1_2.3~");
    resign(&mut event, &url);
    assert_accepted(&event, Endpoint::Sms, None, &url).await;
}

/// Trust issue, item 11: `?a` was rebuilt as `a=`, and a valid signature failed. Both
/// spellings of an empty value are tried; the one Twilio signed is what is stored.
#[tokio::test]
async fn rest_api_empty_query_value_verifies_with_either_spelling() {
    for (pairs, signed) in [
        (&[("a", "")][..], "a"),
        (&[("a", "")][..], "a="),
        (&[("flag", "")][..], "flag"),
    ] {
        let mut event = load("sms.rest-api.json");
        set_v1_query(&mut event, pairs);
        let url = format!("{REST_API}/sms?{signed}");
        resign(&mut event, &url);
        let h = harness();
        let incoming = http::incoming(request(&event), None).expect("rebuilds");
        let reply = h.pipeline.handle(Endpoint::Sms, &incoming).await;
        assert_eq!(reply.status, 200, "{signed}: {}", reply.body);
        assert_eq!(h.queue.pop().expect("a job").event.url, url);
        // A third spelling is not invented: a signature over it fails.
        resign(&mut event, &format!("{REST_API}/sms?{signed}&"));
        let (status, _, _, jobs) = respond(&event, Endpoint::Sms, None).await;
        assert_eq!((status, jobs), (403, 0), "{signed}&");
    }
}

/// A repeated key keeps its values' order in `multiValueQueryStringParameters`.
#[tokio::test]
async fn rest_api_repeated_single_key_is_rebuilt_in_order() {
    let mut event = load("sms.rest-api.json");
    event["queryStringParameters"] = json!({ "t": "2" });
    event["multiValueQueryStringParameters"] = json!({ "t": ["1", "2"] });
    let url = format!("{REST_API}/sms?t=1&t=2");
    resign(&mut event, &url);
    assert_accepted(&event, Endpoint::Sms, None, &url).await;
}

/// What a REST API cannot give back (the raw encoding) fails closed; an HTTP API event
/// carries the raw query, and the same URL verifies there.
#[tokio::test]
async fn percent_encoded_unreserved_characters_need_the_raw_query() {
    let mut event = load("sms.rest-api.json");
    set_v1_query(&mut event, &[("x", "A")]);
    resign(&mut event, &format!("{REST_API}/sms?x=%41"));
    let (status, _, _, jobs) = respond(&event, Endpoint::Sms, None).await;
    assert_eq!((status, jobs), (403, 0));

    let mut event = load("sms.http-api.json");
    for raw in ["x=%41", "a", "a=&a", "b=2&a"] {
        event["rawQueryString"] = json!(raw);
        let url = format!("{HTTP_API}/sms?{raw}");
        resign(&mut event, &url);
        assert_accepted(&event, Endpoint::Sms, None, &url).await;
    }
}

#[tokio::test]
async fn rest_api_query_that_cannot_be_rebuilt_is_refused() {
    let cases: [(&[(&str, &str)], &str); 2] = [
        (&[("b", "2"), ("a", "1")], "b=2&a=1"),
        // One parameter, but `%20x` and `+x` are both spellings of " x".
        (&[("a", " x")], "a=%20x"),
    ];
    for (pairs, query) in cases {
        let mut event = load("sms.rest-api.json");
        set_v1_query(&mut event, pairs);
        resign(&mut event, &format!("{REST_API}/sms?{query}"));

        let err = http::incoming(request(&event), None).expect_err("the query cannot be rebuilt");
        assert!(
            matches!(err, UrlError::QueryNotRecoverable(_)),
            "{query}: {err:?}"
        );

        let (status, _, body, jobs) = respond(&event, Endpoint::Sms, None).await;
        assert_eq!(
            (status, body.as_str(), jobs),
            (403, "Forbidden", 0),
            "{query}"
        );
    }
}

#[tokio::test]
async fn rest_api_get_is_refused() {
    let template = load("voice.rest-api.json");
    let params = body_params(&template);
    let pairs: Vec<(&str, &str)> = params.iter().collect();

    for with_query in [true, false] {
        let mut event = template.clone();
        event["httpMethod"] = json!("GET");
        event["requestContext"]["httpMethod"] = json!("GET");
        event["body"] = Value::Null;
        remove_header(&mut event, "content-type");
        if with_query {
            set_v1_query(&mut event, &pairs);
        }

        let err = http::incoming(request(&event), None).expect_err("GET on REST v1");
        assert!(matches!(err, UrlError::QueryNotRecoverable(_)), "{err:?}");
        let (status, _, _, jobs) = respond(&event, Endpoint::Voice, None).await;
        assert_eq!((status, jobs), (403, 0), "with query: {with_query}");
    }
}

#[tokio::test]
async fn rest_api_mixed_case_signature_header_is_found() {
    let event = load("sms.rest-api.json");
    let headers = event["headers"].as_object().expect("headers");
    assert!(headers.contains_key("X-Twilio-Signature"));
    assert!(!headers.contains_key("x-twilio-signature"));
    let url = format!("{REST_API}/sms");

    // Only in `headers`...
    let mut single = event.clone();
    single
        .as_object_mut()
        .expect("an object")
        .remove("multiValueHeaders");
    assert_accepted(&single, Endpoint::Sms, None, &url).await;

    // ...or only in `multiValueHeaders`.
    let mut multi = event.clone();
    multi.as_object_mut().expect("an object").remove("headers");
    assert_accepted(&multi, Endpoint::Sms, None, &url).await;
}

// ---------------------------------------------------------------------------------------------
// Refusals common to every shape
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_host_is_a_bad_request() {
    for file in ["sms.http-api.json", "sms.rest-api.json"] {
        let mut event = load(file);
        remove_header(&mut event, "host");

        let err = http::incoming(request(&event), None).expect_err("no Host");
        assert_eq!(err, UrlError::MissingHost, "{file}");
        let (status, _, body, jobs) = respond(&event, Endpoint::Sms, None).await;
        assert_eq!(
            (status, body.as_str(), jobs),
            (400, "Bad Request", 0),
            "{file}"
        );
    }
}

#[tokio::test]
async fn tampered_body_is_forbidden() {
    for file in ["sms.http-api.json", "sms.rest-api.json"] {
        let mut event = load(file);
        let original = body_params(&event);
        let tampered = FormParams::from_pairs(original.iter().map(|(k, v)| {
            (
                k,
                if k == "Body" {
                    "Send me your password"
                } else {
                    v
                },
            )
        }));
        assert_ne!(tampered.encode(), original.encode());
        set_body(&mut event, &tampered);

        // The URL still rebuilds; the signature no longer matches the parameters.
        let incoming = http::incoming(request(&event), None).expect("the URL rebuilds");
        let h = harness();
        let reply = h.pipeline.handle(Endpoint::Sms, &incoming).await;
        assert_eq!(reply.status, 403, "{file}");
        assert!(h.queue.is_empty(), "{file}");

        let (status, _, body, jobs) = respond(&event, Endpoint::Sms, None).await;
        assert_eq!(
            (status, body.as_str(), jobs),
            (403, "Forbidden", 0),
            "{file}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The worker's batch against the invocation deadline
// ---------------------------------------------------------------------------------------------

/// Slow work that takes `delay` and says so.
struct Slow {
    delay: std::time::Duration,
    runs: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl webhook_pipeline::SlowWork for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    async fn run(
        &self,
        _event: &webhook_pipeline::EventRecord,
    ) -> Result<(), webhook_pipeline::worker::WorkError> {
        tokio::time::sleep(self.delay).await;
        self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    fn max_duration(&self) -> std::time::Duration {
        self.delay
    }
}

/// Trust issue, item 3: a batch of slow records outlived the Lambda timeout, so the partial
/// batch response was never sent and every message burned a receive. A record now starts
/// only if its worst case fits before the deadline; the rest are reported back at once.
#[tokio::test]
async fn a_batch_stops_starting_records_when_the_deadline_is_near() {
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    use std::time::{Duration, SystemTime};
    use webhook_pipeline::worker::WorkerSettings;

    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone());
    for i in 0..5 {
        let sid = format!("SM{i:032}");
        let req = samples::signed_request(
            TEST_AUTH_TOKEN,
            "https://h.example.com/sms",
            &samples::inbound_sms(&sid, "hi"),
        );
        assert_eq!(pipeline.handle(Endpoint::Sms, &req).await.status, 200);
    }
    let slow = Arc::new(Slow {
        delay: Duration::from_millis(400),
        runs: Default::default(),
    });
    let app = webhook_aws::WorkerApp {
        worker: webhook_pipeline::Worker::new(store, queue.clone(), WorkerSettings::default())
            .with_work(slow.clone()),
    };
    let budget = app.worker.record_budget();
    assert_eq!(
        budget,
        Duration::from_millis(400) + webhook_pipeline::worker::STORE_ALLOWANCE
    );
    let mut batch = SqsEvent::default();
    batch.records = (0..5)
        .map(|i| {
            let mut m = SqsMessage::default();
            m.message_id = Some(format!("m{i}"));
            m.body = Some(serde_json::to_string(&queue.pop().unwrap()).unwrap());
            m
        })
        .collect();

    // Time for one record and not two: the other four come back at once, in order.
    let started = std::time::Instant::now();
    let deadline = SystemTime::now() + budget + Duration::from_millis(350);
    let response = app.handle_batch(batch.clone(), Some(deadline)).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["m1", "m2", "m3", "m4"]);
    assert_eq!(slow.runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(started.elapsed() < budget + Duration::from_millis(350));

    // Already past the deadline: nothing starts. Without one (tests, local): everything runs.
    let response = app
        .handle_batch(batch.clone(), Some(SystemTime::now()))
        .await;
    assert_eq!(response.batch_item_failures.len(), 5);
    let response = app.handle_batch(batch, None).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(slow.runs.load(std::sync::atomic::Ordering::SeqCst), 5);
}

// ---------------------------------------------------------------------------------------------
// HTTP Basic authentication (Twilio's https://user:pass@host/... URLs)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn basic_auth_challenges_then_accepts_twilios_second_try() {
    use twilio_webhook::basic::BasicAuth;
    let secret = webhook_pipeline::config::Secret::parse(
        &format!(
            r#"{{"auth_token":"{TEST_AUTH_TOKEN}","basic_auth":{{"username":"twilio","password":"p@ss w0rd"}}}}"#
        ),
        "test",
    )
    .unwrap();
    let basic = secret.basic_auth.clone().expect("basic_auth in the secret");
    let app_with = || {
        let queue = Arc::new(MemoryQueue::default());
        let pipeline = Pipeline::new(
            secret_validator(),
            std::sync::Arc::new(webhook_pipeline::ClaimThenSend::new(
                Arc::new(MemoryStore::default()),
                queue.clone(),
            )),
            ReplyPolicy::default(),
            Settings::default(),
        )
        .with_basic_auth(Some(basic.clone()));
        (
            WebhookApp {
                pipeline,
                base: None,
            },
            queue,
        )
    };
    let mut event = load("sms.http-api.json");
    let (app, queue) = app_with();

    // Twilio's first try: no credentials. 401, the challenge, nothing stored.
    let response = app.handle(Endpoint::Sms, request(&event)).await;
    assert_eq!(response.status(), 401);
    let challenge = response
        .headers()
        .get(lambda_http::http::header::WWW_AUTHENTICATE)
        .expect("a challenge")
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    assert_eq!(queue.len(), 0);

    // Wrong credentials: 401, nothing stored.
    let wrong = BasicAuth::new("twilio", "guess").unwrap();
    set_header(&mut event, "authorization", &wrong.header_value());
    assert_eq!(
        app.handle(Endpoint::Sms, request(&event)).await.status(),
        401
    );
    assert_eq!(queue.len(), 0);

    // The second try with the right credentials and a valid signature: the normal reply.
    set_header(&mut event, "authorization", &basic.header_value());
    let response = app.handle(Endpoint::Sms, request(&event)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(queue.len(), 1);
    let job = queue.pop().unwrap();
    assert!(
        !job.event.url.contains("w0rd"),
        "credentials stored: {}",
        job.event.url
    );

    // Right credentials do not replace the signature.
    let mut forged = event.clone();
    set_header(
        &mut forged,
        "x-twilio-signature",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    assert_eq!(
        app.handle(Endpoint::Sms, request(&forged)).await.status(),
        403
    );

    // A signature over the URL with the credentials in it (as some libraries compute it)
    // verifies too.
    let (app, queue) = app_with();
    let url = format!("{HTTP_API}/sms");
    let with_creds = url.replacen("https://", "https://twilio:p%40ss%20w0rd@", 1);
    resign(&mut event, &with_creds);
    assert_eq!(
        app.handle(Endpoint::Sms, request(&event)).await.status(),
        200
    );
    assert_eq!(queue.pop().unwrap().event.url, url);
}

fn secret_validator() -> Validator {
    Validator::new(AuthToken::new(TEST_AUTH_TOKEN).unwrap())
}

/// A record whose store calls stall past its budget is cut off a second before the deadline:
/// the partial-batch response still goes out, with that record in it.
#[tokio::test]
async fn a_record_that_outlives_its_budget_is_cut_off_before_the_deadline() {
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
    use std::time::{Duration, SystemTime};
    use webhook_pipeline::worker::WorkerSettings;

    /// Says it takes no time, then takes 10 s (a store call stalling, say).
    struct Liar;
    #[async_trait::async_trait]
    impl webhook_pipeline::SlowWork for Liar {
        fn name(&self) -> &'static str {
            "liar"
        }
        async fn run(
            &self,
            _event: &webhook_pipeline::EventRecord,
        ) -> Result<(), webhook_pipeline::worker::WorkError> {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(())
        }
    }
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let pipeline = webhook_testkit::samples::test_pipeline(store.clone(), queue.clone());
    let req = samples::signed_request(
        TEST_AUTH_TOKEN,
        "https://h.example.com/sms",
        &samples::inbound_sms(samples::MESSAGE_SID, "hi"),
    );
    assert_eq!(pipeline.handle(Endpoint::Sms, &req).await.status, 200);
    let app = webhook_aws::WorkerApp {
        worker: webhook_pipeline::Worker::new(store, queue.clone(), WorkerSettings::default())
            .with_work(Arc::new(Liar)),
    };
    let mut batch = SqsEvent::default();
    let mut m = SqsMessage::default();
    m.message_id = Some("m0".into());
    m.body = Some(serde_json::to_string(&queue.pop().unwrap()).unwrap());
    batch.records = vec![m];
    let deadline = SystemTime::now() + app.worker.record_budget() + Duration::from_millis(500);
    let response = app.handle_batch(batch, Some(deadline)).await;
    assert!(SystemTime::now() < deadline, "answered after the deadline");
    assert_eq!(response.batch_item_failures.len(), 1);
}
