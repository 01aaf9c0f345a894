//! Errors as HTTP answers: the OpenAI body `{"error": {"message", "type", "param", "code"}}` on every route.
//! The `type` is OpenAI's on the OpenAI and LM Studio routes and the modelhost exception class on the lifecycle
//! routes (docs/http-api.md), so each error carries both and the lifecycle router picks the class.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use modelhost_core::Error;
use serde_json::{json, Value};

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The modelhost exception class (the lifecycle routes' `type`).
    pub class: &'static str,
    /// Stable snake_case code.
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// The request field at fault.
    pub param: Option<String>,
}

/// Marks a response as an `ApiError`, so the lifecycle router can put the class in `type`.
#[derive(Debug, Clone)]
pub(crate) struct ErrorMarker(pub ApiError);

impl ApiError {
    /// An error with the given status, class, code and message.
    pub fn new(status: StatusCode, class: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, class, code, message: message.into(), param: None }
    }

    /// A malformed request: not JSON, a missing field, a wrong type.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "ValueError", "invalid_request", message)
    }

    /// A recognised field we do not implement, at a value that needs it.
    pub fn not_supported(param: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "NotSupportedError", "not_supported", message).with_param(param)
    }

    /// A bad value.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "InvalidConfigError", "invalid_config", message).with_param(param)
    }

    /// A model name that is not served (unknown, or forbidden over HTTP).
    pub fn model_not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "ModelNotFoundError", "model_not_found", message)
    }

    /// Something broke on our side (a panic, a lost task).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ModelHostError", "internal_error", message)
    }

    /// Name the request field at fault.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    /// Name the field unless one is named already.
    pub fn or_param(mut self, param: &str) -> Self {
        self.param.get_or_insert_with(|| param.to_string());
        self
    }

    /// OpenAI's error type for this status.
    pub fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            s if s >= 499 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body, with `type` as OpenAI names it or as the lifecycle routes name it (the class).
    pub fn body(&self, lifecycle: bool) -> Value {
        // 401 keeps `authentication_error` everywhere: clients test for it by that name.
        let kind = if lifecycle && self.status != StatusCode::UNAUTHORIZED { self.class } else { self.openai_type() };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }

    /// The response with the lifecycle body.
    pub(crate) fn lifecycle_response(&self) -> Response {
        self.response(true)
    }

    fn response(&self, lifecycle: bool) -> Response {
        let mut response = (self.status, axum::Json(self.body(lifecycle))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.response(false);
        response.extensions_mut().insert(ErrorMarker(self));
        response
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, class, code) = match &e {
            Error::ModelNotFound { .. } | Error::AmbiguousKey { .. } => {
                (S::NOT_FOUND, "ModelNotFoundError", "model_not_found")
            }
            Error::WrongKind { .. } => (S::NOT_FOUND, "ModelKindError", "wrong_model_kind"),
            Error::NoModelLoaded { .. } => (S::NOT_FOUND, "NoModelLoadedError", "no_model_loaded"),
            Error::InstanceExists { .. } => (S::CONFLICT, "InstanceExistsError", "instance_exists"),
            Error::ModelUnloaded { .. } => (S::GONE, "ModelUnloadedError", "model_unloaded"),
            Error::Closed => (S::GONE, "ClientClosedError", "client_closed"),
            Error::ModelLoad { .. } => (S::UNPROCESSABLE_ENTITY, "ModelLoadError", "model_load_error"),
            Error::InvalidConfig(_) => (S::BAD_REQUEST, "InvalidConfigError", "invalid_config"),
            Error::NotSupported(_) => (S::BAD_REQUEST, "NotSupportedError", "not_supported"),
            Error::InvalidInput(_) => (S::BAD_REQUEST, "InvalidInputError", "invalid_input"),
            Error::ContextLengthExceeded { .. } => {
                (S::BAD_REQUEST, "ContextLengthExceededError", "context_length_exceeded")
            }
            Error::InsufficientMemory { .. } | Error::TooManyLoaded { .. } => {
                (S::INSUFFICIENT_STORAGE, "InsufficientMemoryError", "insufficient_memory")
            }
            Error::Cancelled(_) => (client_closed_request(), "LoadCancelledError", "load_cancelled"),
            Error::Io { .. } => (S::INTERNAL_SERVER_ERROR, "OSError", "io_error"),
            Error::System { .. } => (S::INTERNAL_SERVER_ERROR, "OSError", "system_error"),
            Error::Candle(_) => (S::INTERNAL_SERVER_ERROR, "ModelHostError", "inference_failed"),
        };
        ApiError::new(status, class, code, message)
    }
}

/// 499, nginx's "client closed request": a load cancelled because its client went away.
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A task that carried a request's work panicked or was lost.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("the request's worker failed: {e}"))
    }
}

/// Route-level layer of the lifecycle router: re-render marked errors with the exception class as `type`.
pub(crate) async fn lifecycle_errors(mut response: Response) -> Response {
    match response.extensions_mut().remove::<ErrorMarker>() {
        Some(ErrorMarker(e)) => e.lifecycle_response(),
        None => response,
    }
}

/// The answer when a handler panics: a 500 in the same shape; the server keeps serving.
pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::internal(format!("internal error while handling the request: {what}")).into_response()
}
