//! A fake Twilio REST API (IncomingPhoneNumbers and Messaging Services) over plain HTTP, with
//! state: updates change what later reads return. Records every request. One request per
//! connection (`connection: close`).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

pub const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
pub const TOKEN: &str = "auth-token-1234";

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub authorization: String,
    pub form: Vec<(String, String)>,
}

#[derive(Default)]
pub struct State {
    /// Phone number resources, by E.164 number.
    pub numbers: BTreeMap<String, Value>,
    /// Messaging Service resources, by MG sid, and the PN sids in each.
    pub services: BTreeMap<String, (Value, Vec<String>)>,
    /// Items per page of the services list (pagination tests).
    pub services_page_size: usize,
    /// Answer every POST with this status and body.
    pub fail_posts: Option<(u16, String)>,
    pub requests: Vec<Request>,
}

pub struct FakeTwilio {
    pub base: String,
    pub state: Arc<Mutex<State>>,
    authorization: String,
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

pub fn number(pn: &str, phone: &str, url_base: Option<&str>) -> Value {
    let url = |p: &str| url_base.map_or(String::new(), |b| format!("{b}/{p}"));
    json!({
        "sid": pn, "account_sid": ACCOUNT, "phone_number": phone,
        "sms_url": url("sms"), "sms_method": "POST",
        "sms_fallback_url": url("fallback"), "sms_fallback_method": "POST",
        "voice_url": url("voice"), "voice_method": "POST",
        "voice_fallback_url": url("fallback"), "voice_fallback_method": "POST",
        "status_callback": url("status"), "status_callback_method": "POST",
        "sms_application_sid": "", "voice_application_sid": "", "trunk_sid": null,
    })
}

pub fn service(mg: &str, name: &str, inbound: &str, by_number: bool) -> Value {
    json!({
        "sid": mg, "account_sid": ACCOUNT, "friendly_name": name,
        "inbound_request_url": inbound, "inbound_method": "POST",
        "fallback_url": null, "fallback_method": "POST",
        "status_callback": null, "use_inbound_webhook_on_number": by_number,
    })
}

/// `SmsUrl` → `sms_url`, as Twilio's JSON names its form parameters.
fn snake(param: &str) -> String {
    let mut out = String::new();
    for (i, c) in param.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn error(status: u16, code: u32, message: &str) -> (u16, String) {
    (status, json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status}).to_string())
}

impl FakeTwilio {
    /// A fake that accepts `ACCOUNT:TOKEN` (or `authorization`, e.g. an API key's).
    pub fn start(state: State, authorization: Option<String>) -> FakeTwilio {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeTwilio {
            base: base.clone(),
            state: Arc::new(Mutex::new(State {
                services_page_size: state.services_page_size.max(1),
                ..state
            })),
            authorization: authorization.unwrap_or_else(|| basic(ACCOUNT, TOKEN)),
        };
        let shared = fake.state.clone();
        let auth = fake.authorization.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else {
                    continue;
                };
                let (status, body) = {
                    let mut state = shared.lock().unwrap();
                    state.requests.push(request.clone());
                    respond(&mut state, &request, &auth, &base)
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        fake
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn posts(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(0, |l| l.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        authorization: headers.get("authorization").cloned().unwrap_or_default(),
        form: form_urlencoded::parse(&body).into_owned().collect(),
    })
}

fn respond(state: &mut State, r: &Request, auth: &str, base: &str) -> (u16, String) {
    if r.authorization != auth {
        return error(401, 20003, "Authenticate");
    }
    if r.method == "POST" {
        if let Some((status, body)) = &state.fail_posts {
            return (*status, body.clone());
        }
        let ok = r.form.iter().all(|(k, _)| !k.is_empty());
        if !ok || r.form.is_empty() {
            return error(400, 21999, "fake: empty or bad form");
        }
    }
    let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
    let query: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let numbers_prefix = format!("/2010-04-01/Accounts/{ACCOUNT}/IncomingPhoneNumbers");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (r.method.as_str(), path) {
        ("GET", p) if p == format!("{numbers_prefix}.json") => {
            let want = query.get("PhoneNumber").cloned().unwrap_or_default();
            let list: Vec<Value> = state
                .numbers
                .values()
                .filter(|n| n["phone_number"] == want.as_str())
                .cloned()
                .collect();
            (
                200,
                json!({"incoming_phone_numbers": list, "next_page_uri": null}).to_string(),
            )
        }
        ("POST", p) if p.starts_with(&format!("{numbers_prefix}/")) && p.ends_with(".json") => {
            let pn = &p[numbers_prefix.len() + 1..p.len() - 5];
            let Some(n) = state.numbers.values_mut().find(|n| n["sid"] == pn) else {
                return error(404, 20404, "not found");
            };
            for (k, v) in &r.form {
                n[snake(k)] = Value::String(v.clone());
            }
            (200, n.to_string())
        }
        ("GET", "/v1/Services") => {
            let size = state.services_page_size;
            let page: usize = query.get("Page").map_or(0, |p| p.parse().unwrap());
            let all: Vec<Value> = state.services.values().map(|(s, _)| s.clone()).collect();
            let items: Vec<Value> = all.iter().skip(page * size).take(size).cloned().collect();
            let next = ((page + 1) * size < all.len())
                .then(|| format!("{base}/v1/Services?PageSize={size}&Page={}", page + 1));
            (
                200,
                json!({"services": items, "meta": {"next_page_url": next}}).to_string(),
            )
        }
        _ if segments.len() >= 3 && segments[..2] == ["v1", "Services"] => {
            let Some((service, pns)) = state.services.get_mut(segments[2]) else {
                return error(404, 20404, "The requested resource was not found");
            };
            match (r.method.as_str(), segments.get(3)) {
                ("GET", None) => (200, service.to_string()),
                ("POST", None) => {
                    for (k, v) in &r.form {
                        service[snake(k)] = Value::String(v.clone());
                    }
                    (200, service.to_string())
                }
                ("GET", Some(&"PhoneNumbers")) => {
                    let list: Vec<Value> = pns.iter().map(|pn| json!({"sid": pn})).collect();
                    (
                        200,
                        json!({"phone_numbers": list, "meta": {"next_page_url": null}}).to_string(),
                    )
                }
                _ => error(404, 20404, "fake: unexpected request"),
            }
        }
        _ => error(404, 20404, "fake: unexpected request"),
    }
}
