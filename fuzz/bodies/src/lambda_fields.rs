//! The same checks as [`crate::lambda_event`], on events built from fields instead of raw
//! JSON: every input is a well-formed REST v1 or HTTP API v2 / Function URL event, so the
//! fuzzer spends its time on what `webhook_aws::http` reads (paths, stage, route key, resource
//! path, Host, `X-Forwarded-Proto`, query strings) rather than on JSON syntax.
//!
//! Input: a flags byte (bit 0: REST v1, else v2; bit 1: no Host header; bit 2: body is
//! base64; bit 3: no `X-Forwarded-Proto`; bit 4: no stage; bit 5: no route key / resource
//! path), then `\n`-separated fields: method, path (v1 `path`, v2 `rawPath`), request context
//! path (v1 `requestContext.path`, v2 `requestContext.http.path`), stage, route key (v2) or
//! resource path (v1), Host, `X-Forwarded-Proto`, query (v2 `rawQueryString`; v1: decoded
//! into `queryStringParameters`), `X-Twilio-Signature`, body (the rest).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use crate::{Fields, bit};

/// One event's fields.
#[derive(Debug, Clone, Default)]
pub struct EventFields {
    pub rest_v1: bool,
    pub method: String,
    pub path: String,
    pub context_path: String,
    pub stage: Option<String>,
    pub route: Option<String>,
    pub host: Option<String>,
    pub proto: Option<String>,
    pub query: String,
    pub signature: String,
    pub base64: bool,
    pub body: Vec<u8>,
}

impl EventFields {
    pub fn decode(data: &[u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let mut f = Fields::new(data.get(1..).unwrap_or(b""), b'\n');
        let method = f.next_str();
        let path = f.next_str();
        let context_path = f.next_str();
        let stage = f.next_str();
        let route = f.next_str();
        let host = f.next_str();
        let proto = f.next_str();
        let query = f.next_str();
        let signature = f.next_str();
        let body = f.rest().to_vec();
        Self {
            rest_v1: bit(flags, 0),
            method,
            path,
            context_path,
            stage: (!bit(flags, 4)).then_some(stage),
            route: (!bit(flags, 5)).then_some(route),
            host: (!bit(flags, 1)).then_some(host),
            proto: (!bit(flags, 3)).then_some(proto),
            query,
            signature,
            base64: bit(flags, 2),
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let flags = u8::from(self.rest_v1)
            | u8::from(self.host.is_none()) << 1
            | u8::from(self.base64) << 2
            | u8::from(self.proto.is_none()) << 3
            | u8::from(self.stage.is_none()) << 4
            | u8::from(self.route.is_none()) << 5;
        let mut out = vec![flags];
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        out.extend(crate::join_fields(
            [
                self.method.as_bytes(),
                self.path.as_bytes(),
                self.context_path.as_bytes(),
                s(&self.stage).as_bytes(),
                s(&self.route).as_bytes(),
                s(&self.host).as_bytes(),
                s(&self.proto).as_bytes(),
                self.query.as_bytes(),
                self.signature.as_bytes(),
                &self.body,
            ],
            b'\n',
        ));
        out
    }

    /// The event JSON API Gateway (or a Function URL) would send.
    pub fn to_event(&self) -> Value {
        let mut headers = Map::new();
        let mut add = |k: &str, v: &str| {
            headers.insert(k.to_owned(), json!(v));
        };
        add("content-type", "application/x-www-form-urlencoded");
        add("x-twilio-signature", &self.signature);
        if let Some(h) = &self.host {
            add("host", h);
        }
        if let Some(p) = &self.proto {
            add("x-forwarded-proto", p);
        }
        let body = if self.base64 {
            json!(BASE64.encode(&self.body))
        } else {
            json!(String::from_utf8_lossy(&self.body))
        };
        if self.rest_v1 {
            let multi_headers: Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.clone(), json!([v])))
                .collect();
            let mut single = Map::new();
            let mut multi: Map<String, Value> = Map::new();
            for (k, v) in form_urlencoded::parse(self.query.as_bytes()) {
                single.insert(k.to_string(), json!(v));
                match multi.get_mut(k.as_ref()).and_then(Value::as_array_mut) {
                    Some(a) => a.push(json!(v)),
                    None => {
                        multi.insert(k.to_string(), json!([v]));
                    }
                }
            }
            let (q, mq) = if self.query.is_empty() {
                (Value::Null, Value::Null)
            } else {
                (Value::Object(single), Value::Object(multi))
            };
            json!({
                "resource": self.route.clone().unwrap_or_else(|| "/{proxy+}".into()),
                "path": self.path,
                "httpMethod": self.method,
                "headers": headers,
                "multiValueHeaders": multi_headers,
                "queryStringParameters": q,
                "multiValueQueryStringParameters": mq,
                "pathParameters": null,
                "stageVariables": null,
                "requestContext": {
                    "accountId": "123456789012",
                    "apiId": "def456",
                    "httpMethod": self.method,
                    "path": self.context_path,
                    "resourcePath": self.route,
                    "stage": self.stage,
                    "requestId": "c0ffee00-0000-4000-8000-000000000001",
                    "identity": { "sourceIp": "54.172.60.1" },
                },
                "body": body,
                "isBase64Encoded": self.base64,
            })
        } else {
            let route_key = self.route.clone().unwrap_or_else(|| "$default".into());
            json!({
                "version": "2.0",
                "routeKey": route_key,
                "rawPath": self.path,
                "rawQueryString": self.query,
                "headers": headers,
                "requestContext": {
                    "accountId": "123456789012",
                    "apiId": "abc123",
                    "domainName": self.host,
                    "http": {
                        "method": self.method,
                        "path": self.context_path,
                        "protocol": "HTTP/1.1",
                        "sourceIp": "54.172.60.1",
                        "userAgent": "TwilioProxy/1.1",
                    },
                    "requestId": "c0ffee00-0000-4000-8000-000000000001",
                    "routeKey": route_key,
                    "stage": self.stage,
                    "time": "27/Nov/2026:14:00:00 +0000",
                    "timeEpoch": 1_795_788_000_000_i64,
                },
                "body": body,
                "isBase64Encoded": self.base64,
            })
        }
    }
}

pub fn run(data: &[u8]) {
    let event = EventFields::decode(data).to_event();
    crate::lambda_event::check_event(&event.to_string());
}
