//! A console error: the API's status, message and hint, as an HTML page.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use crate::error::ApiError;

/// What went wrong and what to do, shown as a page with the matching status.
#[derive(Debug)]
pub struct UiError(pub ApiError);

impl UiError {
    /// An error with `status`, `message` and `hint`.
    pub fn new(status: StatusCode, message: impl Into<String>, hint: impl Into<String>) -> UiError {
        UiError(ApiError::new(status, message, hint))
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        UiError(e)
    }
}

impl From<fleet_store::StoreError> for UiError {
    fn from(e: fleet_store::StoreError) -> UiError {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = html! {
            section role="alert" class="error" {
                h2 { "Error " (e.status.as_u16()) }
                p { strong { "What is wrong: " } (e.message) }
                p { strong { "What to do: " } (e.hint) }
                p { a href="/ui/pipelines" { "Back to the pipelines" } }
            }
        };
        (e.status, super::layout::page("Error", None, body)).into_response()
    }
}
