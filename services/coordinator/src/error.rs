//! The API's error: an HTTP status, what is wrong and what to do about it,
//! rendered as `{"error": "...", "hint": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error a client can act on (4xx) or a server fault (5xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: String,
}

impl ApiError {
    /// An error with `status`, `message` and `hint`.
    pub fn new(
        status: StatusCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// 400: the request is invalid.
    pub fn bad_request(message: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message, hint)
    }

    /// 404: no such thing.
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {what} with id `{id}`"),
            format!("check the id; list them with GET /v1/{what}s"),
        )
    }

    /// 413: too large.
    pub fn too_large(message: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message, hint)
    }

    /// 503 from a store or broker failure (transient: retry).
    pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the coordinator cannot serve this now: {e}"),
            "retry shortly; if it persists, check the coordinator's database and broker",
        )
    }

    /// 500 for a bug or unexpected data.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
            "this is a coordinator bug or corrupt data; see the coordinator's logs",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.hint)
    }
}

impl std::error::Error for ApiError {}

impl From<fleet_store::StoreError> for ApiError {
    fn from(e: fleet_store::StoreError) -> ApiError {
        if e.is_transient() {
            ApiError::unavailable(e)
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        match e.downcast::<ApiError>() {
            Ok(api) => api,
            Err(e) => match e.downcast::<fleet_store::StoreError>() {
                Ok(s) => s.into(),
                Err(e) => ApiError::internal(format!("{e:#}")),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "hint": self.hint});
        (self.status, axum::Json(body)).into_response()
    }
}
