//! The two Twilio REST APIs `configure` uses: IncomingPhoneNumbers (2010-04-01) and Messaging
//! Services (v1). HTTP Basic auth with the account's auth token or an API key; form-encoded
//! updates; one-line errors carrying Twilio's `message` and `code`.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

/// A failed call to the Twilio API. `what` names the step ("listing incoming phone numbers").
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what}: {detail}")]
    Transport { what: String, detail: String },
    #[error("{what}: Twilio API error HTTP {status}{detail}")]
    Status {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("{what}: {detail}")]
    Response { what: String, detail: String },
}

/// Where the credentials and API come from; captured once so tests can inject them.
#[derive(Default, Clone)]
pub struct Env {
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Env {
            account_sid: var("TWILIO_ACCOUNT_SID"),
            auth_token: var("TWILIO_AUTH_TOKEN"),
            api_key: var("TWILIO_API_KEY"),
            api_secret: var("TWILIO_API_SECRET"),
        }
    }
}

/// The account and how to authenticate. No `Debug`: it holds a secret.
pub struct Credentials {
    pub account_sid: String,
    /// Basic-auth user: the account SID (auth token) or the API key SID.
    user: String,
    /// Basic-auth password: the auth token or the API key secret.
    password: String,
}

impl Credentials {
    pub fn from_env(env: &Env) -> Result<Self, String> {
        const HOW: &str = "set TWILIO_ACCOUNT_SID and either TWILIO_AUTH_TOKEN or TWILIO_API_KEY + TWILIO_API_SECRET";
        let account_sid = env
            .account_sid
            .as_deref()
            .map(str::trim)
            .ok_or_else(|| format!("TWILIO_ACCOUNT_SID is not set: {HOW}"))?;
        if !is_sid(account_sid, "AC") {
            return Err(format!(
                "TWILIO_ACCOUNT_SID must be an account SID (AC followed by letters/digits), got {account_sid:?}"
            ));
        }
        let trim = |s: &String| s.trim().to_owned();
        let (user, password) = match (&env.auth_token, &env.api_key, &env.api_secret) {
            (Some(token), _, _) => (account_sid.to_owned(), trim(token)),
            (None, Some(key), Some(secret)) => (trim(key), trim(secret)),
            (None, Some(_), None) => {
                return Err(format!(
                    "TWILIO_API_KEY is set but TWILIO_API_SECRET is not: {HOW}"
                ));
            }
            (None, None, Some(_)) => {
                return Err(format!(
                    "TWILIO_API_SECRET is set but TWILIO_API_KEY is not: {HOW}"
                ));
            }
            (None, None, None) => return Err(format!("no Twilio credentials: {HOW}")),
        };
        Ok(Credentials {
            account_sid: account_sid.to_owned(),
            user,
            password,
        })
    }
}

/// `prefix` then letters and digits (Twilio SIDs: two letters and 32 hex digits).
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() > prefix.len() && s.starts_with(prefix) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// At most this many pages of any list: a runaway `next_page_url` cannot loop forever.
const MAX_PAGES: usize = 50;

pub struct Twilio {
    http: reqwest::Client,
    creds: Credentials,
    /// `https://api.twilio.com` (tests: a fake server).
    api_base: String,
    /// `https://messaging.twilio.com`.
    messaging_base: String,
}

impl Twilio {
    pub fn new(creds: Credentials, api_base: &str, messaging_base: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("twilio-webhooks/", env!("CARGO_PKG_VERSION")))
            // The credentials must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("could not build the HTTP client: {}", error_chain(&e)))?;
        Ok(Twilio {
            http,
            creds,
            api_base: api_base.trim_end_matches('/').to_owned(),
            messaging_base: messaging_base.trim_end_matches('/').to_owned(),
        })
    }

    pub fn account_sid(&self) -> &str {
        &self.creds.account_sid
    }

    fn numbers_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/IncomingPhoneNumbers",
            self.api_base, self.creds.account_sid
        )
    }

    /// The IncomingPhoneNumber resource of `number` (E.164), if the account has it.
    pub async fn find_number(&self, number: &str) -> Result<Option<Value>, ApiError> {
        let what = "listing incoming phone numbers";
        let query = form(&[("PhoneNumber", number)]);
        let list = self
            .get(&format!("{}.json?{query}", self.numbers_url()), what)
            .await?;
        let numbers = list
            .get("incoming_phone_numbers")
            .and_then(Value::as_array)
            .ok_or_else(|| response_error(what, "no incoming_phone_numbers array"))?;
        Ok(numbers
            .iter()
            .find(|n| n.get("phone_number").and_then(Value::as_str) == Some(number))
            .cloned())
    }

    pub async fn update_number(
        &self,
        pn_sid: &str,
        fields: &[(&str, &str)],
        what: &str,
    ) -> Result<Value, ApiError> {
        let url = format!("{}/{pn_sid}.json", self.numbers_url());
        self.post(&url, fields, what).await
    }

    fn service_url(&self, mg_sid: &str) -> String {
        format!("{}/v1/Services/{mg_sid}", self.messaging_base)
    }

    pub async fn service(&self, mg_sid: &str) -> Result<Value, ApiError> {
        self.get(
            &self.service_url(mg_sid),
            &format!("reading Messaging Service {mg_sid}"),
        )
        .await
    }

    pub async fn update_service(
        &self,
        mg_sid: &str,
        fields: &[(&str, &str)],
        what: &str,
    ) -> Result<Value, ApiError> {
        self.post(&self.service_url(mg_sid), fields, what).await
    }

    /// The Messaging Service holding the number `pn_sid`, if any. The number resource does not
    /// say, so this reads each service's sender pool.
    pub async fn service_of_number(&self, pn_sid: &str) -> Result<Option<Value>, ApiError> {
        let services = self
            .list(
                &format!("{}/v1/Services?PageSize=50", self.messaging_base),
                "services",
                "listing Messaging Services",
            )
            .await?;
        for service in services {
            let Some(mg) = service.get("sid").and_then(Value::as_str) else {
                continue;
            };
            let numbers = self
                .list(
                    &format!("{}/PhoneNumbers?PageSize=1000", self.service_url(mg)),
                    "phone_numbers",
                    &format!("listing the phone numbers of Messaging Service {mg}"),
                )
                .await?;
            if numbers
                .iter()
                .any(|n| n.get("sid").and_then(Value::as_str) == Some(pn_sid))
            {
                return Ok(Some(service));
            }
        }
        Ok(None)
    }

    /// Every item of a v1 list, following `meta.next_page_url` on the same host only.
    async fn list(&self, first: &str, key: &str, what: &str) -> Result<Vec<Value>, ApiError> {
        let mut items = Vec::new();
        let mut url = Some(first.to_owned());
        for _ in 0..MAX_PAGES {
            let Some(page_url) = url.take() else { break };
            let page = self.get(&page_url, what).await?;
            let page_items = page
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| response_error(what, &format!("no {key} array")))?;
            items.extend(page_items.iter().cloned());
            url = page
                .pointer("/meta/next_page_url")
                .and_then(Value::as_str)
                .filter(|next| next.starts_with(&format!("{}/", self.messaging_base)))
                .map(str::to_owned);
        }
        Ok(items)
    }

    async fn get(&self, url: &str, what: &str) -> Result<Value, ApiError> {
        send(self.http.get(url), &self.creds, what).await
    }

    async fn post(
        &self,
        url: &str,
        fields: &[(&str, &str)],
        what: &str,
    ) -> Result<Value, ApiError> {
        let request = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(fields));
        send(request, &self.creds, what).await
    }
}

/// `application/x-www-form-urlencoded`, as Twilio's API takes it.
pub fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

fn response_error(what: &str, detail: &str) -> ApiError {
    ApiError::Response {
        what: what.to_owned(),
        detail: format!("unexpected response: {detail}"),
    }
}

/// Sends a request; a non-2xx status becomes one line with Twilio's `message` and `code`.
async fn send(
    request: reqwest::RequestBuilder,
    creds: &Credentials,
    what: &str,
) -> Result<Value, ApiError> {
    let transport = |detail: String| ApiError::Transport {
        what: what.to_owned(),
        detail,
    };
    let response = request
        .basic_auth(&creds.user, Some(&creds.password))
        .send()
        .await
        .map_err(|e| transport(error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport(format!("reading the response: {}", error_chain(&e))))?;
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if !status.is_success() {
        return Err(ApiError::Status {
            what: what.to_owned(),
            status: status.as_u16(),
            detail: error_detail(json.as_ref(), &bytes),
        });
    }
    json.ok_or_else(|| ApiError::Response {
        what: what.to_owned(),
        detail: format!("HTTP {} but the response is not JSON", status.as_u16()),
    })
}

/// `: message (code N) see URL`, from Twilio's error JSON, or the start of a non-JSON body.
fn error_detail(json: Option<&Value>, body: &[u8]) -> String {
    let field = |k: &str| json.and_then(|j| j.get(k));
    let message = field("message").and_then(Value::as_str);
    let code = field("code").and_then(|c| {
        c.as_i64()
            .map(|n| n.to_string())
            .or_else(|| c.as_str().map(str::to_owned))
    });
    let mut out = String::new();
    match (message, code) {
        (Some(m), Some(c)) => {
            let _ = write!(out, ": {} (code {c})", one_line(m));
        }
        (Some(m), None) => {
            let _ = write!(out, ": {}", one_line(m));
        }
        (None, Some(c)) => {
            let _ = write!(out, " (code {c})");
        }
        (None, None) => {
            let body = one_line(&String::from_utf8_lossy(body));
            if !body.is_empty() {
                let _ = write!(out, ": {}", truncate(&body, 200));
            }
        }
    }
    if let Some(url) = field("more_info").and_then(Value::as_str) {
        let _ = write!(out, " see {url}");
    }
    out
}

/// `error` and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !line.contains(&s) {
            let _ = write!(line, ": {s}");
        }
        source = e.source();
    }
    line
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_is_what_twilio_decodes() {
        assert_eq!(
            form(&[("SmsUrl", "https://h/sms?a=1&b=c d"), ("X", "+1555")]),
            "SmsUrl=https%3A%2F%2Fh%2Fsms%3Fa%3D1%26b%3Dc+d&X=%2B1555"
        );
    }

    #[test]
    fn error_details_are_one_line() {
        let json = serde_json::json!({"code": 20003, "message": "Authenticate\n now", "more_info": "https://www.twilio.com/docs/errors/20003"});
        assert_eq!(
            error_detail(Some(&json), b""),
            ": Authenticate now (code 20003) see https://www.twilio.com/docs/errors/20003"
        );
        let long = "x ".repeat(300);
        let d = error_detail(None, long.as_bytes());
        assert!(d.ends_with('…') && d.chars().count() < 210, "{d}");
        assert_eq!(error_detail(None, b""), "");
    }

    #[test]
    fn credentials_name_what_is_missing() {
        let err = |env: Env| Credentials::from_env(&env).err().unwrap();
        assert!(err(Env::default()).contains("TWILIO_ACCOUNT_SID is not set"));
        let acct = || Some("AC0123456789abcdef0123456789abcdef".to_owned());
        assert!(
            err(Env {
                account_sid: acct(),
                ..Env::default()
            })
            .contains("no Twilio credentials")
        );
        assert!(
            err(Env {
                account_sid: acct(),
                api_key: Some("SK1".into()),
                ..Env::default()
            })
            .contains("TWILIO_API_SECRET is not")
        );
        assert!(
            err(Env {
                account_sid: Some("MG123".into()),
                auth_token: Some("t".into()),
                ..Env::default()
            })
            .contains("must be an account SID")
        );
        let ok = Credentials::from_env(&Env {
            account_sid: acct(),
            api_key: Some(" SK1 ".into()),
            api_secret: Some("s".into()),
            ..Env::default()
        })
        .unwrap();
        assert_eq!((ok.user.as_str(), ok.password.as_str()), ("SK1", "s"));
    }
}
