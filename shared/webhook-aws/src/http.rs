//! API Gateway / Function URL requests in, pipeline replies out.
//!
//! The URL Twilio signed is rebuilt here, per event shape:
//! - HTTP API (v2) and Function URLs: `Host` + `rawPath` (stage included when it is not
//!   `$default`) + `rawQueryString`, all exactly as received.
//! - REST API (v1): `Host` + `requestContext.path` (stage or custom-domain base path included).
//!   With `PUBLIC_BASE_URL`, the route joined to it is `requestContext.resourcePath` (which,
//!   unlike `path`, never has a custom domain's base path), or `path` for a `{proxy+}` resource.
//!   v1 only gives the query string as a map, decoded, its order lost. One key (repeated or
//!   not) whose names and values are unreserved characters is rebuilt; an empty value has two
//!   spellings (`?a` and `?a=`), so both are candidates and the signature decides which one
//!   Twilio signed. Anything else (several keys, reserved characters, GET webhooks, which put
//!   every parameter in the query) is refused with a clear error. A query that percent-encodes
//!   unreserved characters (`%41` for `A`) cannot be told from its decoded form: it fails the
//!   signature check. HTTP APIs and Function URLs keep the raw query and have none of these
//!   limits.
//! - With `PUBLIC_BASE_URL` (custom domains, proxies): that base + the route path + query.

use bytes::Bytes;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use twilio_webhook::url::{self, PublicBaseUrl, UrlError};
use webhook_pipeline::{IncomingRequest, Reply};

/// Turn a Lambda HTTP event into the pipeline's request.
pub fn incoming(req: Request, base: Option<&PublicBaseUrl>) -> Result<IncomingRequest, UrlError> {
    let mut urls = signed_urls(&req, base)?.into_iter();
    let signed_url = urls.next().expect("at least one candidate");
    let (parts, body) = req.into_parts();
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(t) => Bytes::from(t),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    Ok(IncomingRequest {
        method: parts.method,
        url: signed_url,
        other_urls: urls.collect(),
        headers: parts.headers,
        body,
    })
}

/// The URL Twilio signed, for every event shape (see the module docs); for a REST API event
/// with more than one possible spelling, the first.
pub fn signed_url(req: &Request, base: Option<&PublicBaseUrl>) -> Result<String, UrlError> {
    let mut urls = signed_urls(req, base)?;
    Ok(urls.swap_remove(0))
}

/// Every URL Twilio may have signed: one, except for REST API queries with an empty value.
pub fn signed_urls(req: &Request, base: Option<&PublicBaseUrl>) -> Result<Vec<String>, UrlError> {
    let (request_path, route_path, queries) = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => {
            let raw_path = req.raw_http_path().to_owned();
            let stage = ctx.stage.as_deref().filter(|s| *s != "$default");
            let route = ctx
                .route_key
                .as_deref()
                .and_then(|k| k.split_once(' ').map(|(_, p)| p))
                .filter(|p| !p.contains('{'))
                .map(str::to_owned)
                .unwrap_or_else(|| strip_stage(&raw_path, stage));
            (raw_path, route, vec![req.uri().query().map(str::to_owned)])
        }
        Some(RequestContext::ApiGatewayV1(ctx)) => {
            // `path` carries a custom domain's base path mapping (`/twilio/sms`); the resource
            // (`/sms`) does not, so it is the route to join to `PUBLIC_BASE_URL`.
            let route = ctx
                .resource_path
                .clone()
                .filter(|p| !p.contains('{'))
                .unwrap_or_else(|| req.raw_http_path().to_owned());
            let path = ctx
                .path
                .clone()
                .unwrap_or_else(|| req.uri().path().to_owned());
            (path, route, v1_query(req)?)
        }
        _ => {
            let path = req.uri().path().to_owned();
            (
                path.clone(),
                path,
                vec![req.uri().query().map(str::to_owned)],
            )
        }
    };
    if let Some(base) = base {
        return Ok(queries
            .iter()
            .map(|q| base.join(&route_path, q.as_deref()))
            .collect());
    }
    let host = header(req, "host").ok_or(UrlError::MissingHost)?;
    let scheme = header(req, "x-forwarded-proto").unwrap_or("https");
    Ok(queries
        .iter()
        .map(|q| url::from_parts(scheme, host, &request_path, q.as_deref()))
        .collect())
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn strip_stage(path: &str, stage: Option<&str>) -> String {
    match stage {
        Some(stage) => {
            let prefix = format!("/{stage}");
            match path.strip_prefix(&prefix) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
                _ => path.to_owned(),
            }
        }
        None => path.to_owned(),
    }
}

/// REST v1 keeps the query only as a decoded map: the spellings it may have had, when they are
/// few and certain (see the module docs). Never empty: `[None]` for no query.
fn v1_query(req: &Request) -> Result<Vec<Option<String>>, UrlError> {
    let params = req.query_string_parameters_ref();
    let Some(params) = params.filter(|p| !p.is_empty()) else {
        if req.method() == http::Method::GET {
            // GET webhooks carry every parameter in the query string: it cannot be empty.
            return Err(UrlError::QueryNotRecoverable("GET on a REST API"));
        }
        return Ok(vec![None]);
    };
    if req.method() == http::Method::GET {
        return Err(UrlError::QueryNotRecoverable("GET on a REST API"));
    }
    // `iter` yields a repeated key once per value.
    let key = params.iter().map(|(k, _)| k).next().unwrap_or_default();
    if params.iter().any(|(k, _)| k != key) {
        return Err(UrlError::QueryNotRecoverable(
            "REST API (v1) events lose the order of query parameters",
        ));
    }
    let values = params.all(key).unwrap_or_default();
    let unreserved = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    if key.is_empty() || !unreserved(key) || !values.iter().all(|v| unreserved(v)) {
        return Err(UrlError::QueryNotRecoverable(
            "REST API (v1) events decode the query string, losing how it was encoded",
        ));
    }
    let spell = |bare_empty: bool| {
        let pairs: Vec<String> = values
            .iter()
            .map(|v| match (v.is_empty(), bare_empty) {
                (true, true) => key.to_owned(),
                _ => format!("{key}={v}"),
            })
            .collect();
        Some(pairs.join("&"))
    };
    if values.iter().any(|v| v.is_empty()) {
        // `?a` and `?a=` both decode to a = "": the signature tells which was signed.
        Ok(vec![spell(true), spell(false)])
    } else {
        Ok(vec![spell(false)])
    }
}

/// A pipeline reply as a Lambda HTTP response.
pub fn response(reply: Reply) -> Response<Body> {
    let mut b = Response::builder().status(reply.status);
    if let Some(ct) = &reply.content_type {
        b = b.header(http::header::CONTENT_TYPE, ct.as_str());
    }
    if let Some(challenge) = &reply.www_authenticate {
        b = b.header(http::header::WWW_AUTHENTICATE, challenge.as_str());
    }
    let body = if reply.body.is_empty() {
        Body::Empty
    } else {
        Body::Text(reply.body)
    };
    b.body(body).expect("status and content type are valid")
}
