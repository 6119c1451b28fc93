//! API Gateway / Function URL requests in, pipeline replies out.
//!
//! The URL Twilio signed is rebuilt here, per event shape:
//! - HTTP API (v2) and Function URLs: `Host` + `rawPath` (stage included when it is not
//!   `$default`) + `rawQueryString`, all exactly as received.
//! - REST API (v1): `Host` + `requestContext.path` (stage or custom-domain base path included).
//!   With `PUBLIC_BASE_URL`, the route joined to it is `requestContext.resourcePath` (which,
//!   unlike `path`, never has a custom domain's base path), or `path` for a `{proxy+}` resource.
//!   v1 only gives the query string as a map, order and encoding lost: a request with a query
//!   string is refused with a clear error (a lone `key=value` of unreserved characters, which
//!   has only one spelling, is the exception). GET webhooks on v1 are refused for the same reason.
//! - With `PUBLIC_BASE_URL` (custom domains, proxies): that base + the route path + query.

use bytes::Bytes;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use twilio_webhook::url::{self, PublicBaseUrl, UrlError};
use webhook_pipeline::{IncomingRequest, Reply};

/// Turn a Lambda HTTP event into the pipeline's request.
pub fn incoming(req: Request, base: Option<&PublicBaseUrl>) -> Result<IncomingRequest, UrlError> {
    let signed_url = signed_url(&req, base)?;
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
        headers: parts.headers,
        body,
    })
}

/// The URL Twilio signed, for every event shape (see the module docs).
pub fn signed_url(req: &Request, base: Option<&PublicBaseUrl>) -> Result<String, UrlError> {
    let (request_path, route_path, query) = match req.request_context_ref() {
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
            (raw_path, route, req.uri().query().map(str::to_owned))
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
            (path.clone(), path, req.uri().query().map(str::to_owned))
        }
    };
    if let Some(base) = base {
        return Ok(base.join(&route_path, query.as_deref()));
    }
    let host = header(req, "host").ok_or(UrlError::MissingHost)?;
    let scheme = header(req, "x-forwarded-proto").unwrap_or("https");
    Ok(url::from_parts(
        scheme,
        host,
        &request_path,
        query.as_deref(),
    ))
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

/// REST v1 keeps the query only as a map. Accept the one case with a single spelling.
fn v1_query(req: &Request) -> Result<Option<String>, UrlError> {
    let params = req.query_string_parameters_ref();
    let Some(params) = params.filter(|p| !p.is_empty()) else {
        if req.method() == http::Method::GET {
            // GET webhooks carry every parameter in the query string: it cannot be empty.
            return Err(UrlError::QueryNotRecoverable("GET on a REST API"));
        }
        return Ok(None);
    };
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .flat_map(|(k, _)| {
            params
                .all(k)
                .unwrap_or_default()
                .into_iter()
                .map(move |v| (k, v))
        })
        .collect();
    let unreserved = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    };
    match pairs.as_slice() {
        [(k, v)] if unreserved(k) && unreserved(v) && req.method() != http::Method::GET => {
            Ok(Some(format!("{k}={v}")))
        }
        _ => Err(UrlError::QueryNotRecoverable(
            "REST API (v1) events lose the order and encoding of query strings",
        )),
    }
}

/// A pipeline reply as a Lambda HTTP response.
pub fn response(reply: Reply) -> Response<Body> {
    let mut b = Response::builder().status(reply.status);
    if let Some(ct) = &reply.content_type {
        b = b.header(http::header::CONTENT_TYPE, ct.as_str());
    }
    let body = if reply.body.is_empty() {
        Body::Empty
    } else {
        Body::Text(reply.body)
    };
    b.body(body).expect("status and content type are valid")
}
