//! Request plumbing: the JSON body extractor (content type, size limit, errors naming the field) and the
//! middlewares that guard every route (Host header on loopback, bearer token).

use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body parsed into `T`. Rejections are 400 (413 over the size limit) with the OpenAI body.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::bad_request(
                "the request body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let bytes = read_limited(req.into_body(), state.config.max_body_bytes).await?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de).map(ApiJson).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    format!("the request body is not valid JSON: {inner}")
                }
                _ if path == "." => format!("invalid request body: {inner}"),
                _ => format!("invalid request field {path}: {inner}"),
            };
            let err = ApiError::bad_request(message);
            if path == "." {
                err
            } else {
                err.with_param(&path)
            }
        })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// The body, refusing it (413) once it passes `limit` bytes, whatever Content-Length claims.
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ValueError",
            "body_too_large",
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Whether the request's Host header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 without Host: not a browser, which always sends one.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1"
}

/// Refuses requests whose Host header is not loopback while the server is bound to loopback: a web page that
/// rebinds its own DNS name to 127.0.0.1 must not reach the models.
pub(crate) async fn check_host(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.loopback_only() && !loopback_host(req.headers()) {
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "PermissionError",
            "forbidden_host",
            "this server is bound to loopback and answers only requests addressed to localhost",
        );
        return respond_error(req.uri().path(), err);
    }
    next.run(req).await
}

/// Requires `Authorization: Bearer <token>` when the server has a token.
pub(crate) async fn check_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_token.as_deref() else { return next.run(req).await };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => next.run(req).await,
        _ => {
            let message = if given.is_some() {
                "the API token is not valid"
            } else {
                "this server requires an API token: send Authorization: Bearer <token>"
            };
            ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", message).into_response()
        }
    }
}

/// Compares without an early exit, so the time taken says nothing about how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// An error from a layer outside the routers, in the flavour its path calls for.
pub(crate) fn respond_error(path: &str, err: ApiError) -> Response {
    if path.starts_with(crate::lifecycle::PREFIX) {
        err.lifecycle_response()
    } else {
        err.into_response()
    }
}

/// The answer to a path no route has.
pub(crate) async fn unknown_route(req: Request) -> Response {
    let err = ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "unknown_route",
        format!("no route for {} {}", req.method(), req.uri().path()),
    );
    respond_error(req.uri().path(), err)
}

/// The answer to a known path with the wrong method.
pub(crate) async fn wrong_method(req: Request) -> Response {
    let err = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "ValueError",
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    );
    respond_error(req.uri().path(), err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn hosts_and_tokens() {
        let with_host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            m
        };
        for ok in ["127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:3000", "[::1]"] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1.evil.example", "[::2]:1", "localhost.evil"] {
            assert!(!loopback_host(&with_host(bad)), "{bad}");
        }
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
