//! Refuses NUL characters in any request, before any handler runs: PostgreSQL
//! cannot store NUL in text, so a NUL that reached a query made a 500 (and on
//! SQLite a value other clients cannot read back). Checked once for every
//! endpoint: the path and query (`%00`) and every JSON string (`\u0000`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::error::ApiError;

/// True when the JSON text `b` holds a NUL in a string (`\u0000`) or a raw NUL byte.
pub(crate) fn json_has_nul(b: &[u8]) -> bool {
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            0 => return true,
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(&b"0000"[..]) {
                    return true;
                }
                i += 1; // The escaped character cannot end the string.
            }
            _ => {}
        }
        i += 1;
    }
    false
}

fn nul_error(where_: &str) -> ApiError {
    ApiError::bad_request(
        format!("the request {where_} contains a NUL character (\\u0000)"),
        "remove NUL characters from every text field: fleet stores text in PostgreSQL, which cannot hold them",
    )
}

/// Middleware: 400 for a NUL in the URL or the body; otherwise the request goes on unchanged.
pub(crate) async fn refuse_nul(State(app): State<App>, req: Request, next: Next) -> Response {
    if req.uri().path().contains("%00") || req.uri().query().is_some_and(|q| q.contains("%00")) {
        return nul_error("URL").into_response();
    }
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE) {
        return next.run(req).await;
    }
    let limit = app.config.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        // The handler's own body limit answers 413 with its message.
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let mut chain = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            return if chain.contains("length limit") {
                ApiError::too_large(
                    format!("the request body exceeds the limit of {limit} bytes"),
                    "split the request, or raise FLEET_MAX_BODY_BYTES",
                )
            } else {
                ApiError::bad_request(
                    format!("cannot read the request body: {chain}"),
                    "resend the request",
                )
            }
            .into_response();
        }
    };
    if json_has_nul(&bytes) {
        return nul_error("body").into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::json_has_nul;

    #[test]
    fn finds_nul_escapes_in_strings_only() {
        assert!(json_has_nul(br#"{"stage": "\u0000"}"#));
        assert!(json_has_nul(br#"{"a\u0000b": 1}"#));
        assert!(json_has_nul(br#"["x", "y\\\u0000"]"#));
        assert!(json_has_nul(b"{\"a\": \"\0\"}"));
        // An escaped backslash followed by the text `u0000` is not a NUL.
        assert!(!json_has_nul(br#"{"a": "\\u0000"}"#));
        assert!(!json_has_nul(br#"{"a": "\"\u0001", "b": 0}"#));
        assert!(!json_has_nul(br#"{"v": 1, "items": []}"#));
    }
}
