//! Bearer-token auth: a write token for everything, a read-only token for GET requests,
//! compared in constant time; no token configured (loopback or `FLEET_API_AUTH=none`) lets
//! every request through.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;

/// The configured tokens as SHA-256 digests: equal lengths, so the comparison leaks nothing.
#[derive(Clone, Debug)]
pub(crate) struct Tokens {
    write: Option<[u8; 32]>,
    read: Option<[u8; 32]>,
}

/// What a presented token may do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Access {
    All,
    ReadOnly,
    Denied,
}

fn digest(token: &str) -> [u8; 32] {
    // Trimmed on both sides: a secret file or `echo` often leaves a trailing newline.
    Sha256::digest(token.trim().as_bytes()).into()
}

fn configured(t: Option<&String>) -> Option<[u8; 32]> {
    t.map(|t| t.trim()).filter(|t| !t.is_empty()).map(digest)
}

impl Tokens {
    /// The tokens of `config` (none when `FLEET_API_AUTH=none`; `validate` refuses both set).
    pub(crate) fn new(config: &Config) -> Tokens {
        Tokens {
            write: configured(config.api_token.as_ref()),
            read: configured(config.api_read_token.as_ref()),
        }
    }

    /// True when the API requires no token at all.
    pub(crate) fn open(&self) -> bool {
        self.write.is_none() && self.read.is_none()
    }

    /// What `given` may do.
    pub(crate) fn access(&self, given: &str) -> Access {
        let d = digest(given);
        // Both compared every time, so timing does not tell which one matched.
        let w = self.write.map(|w| bool::from(w.ct_eq(&d))).unwrap_or(false);
        let r = self.read.map(|r| bool::from(r.ct_eq(&d))).unwrap_or(false);
        if w {
            Access::All
        } else if r {
            Access::ReadOnly
        } else {
            Access::Denied
        }
    }
}

const HINT: &str = "send `Authorization: Bearer <token>` with the coordinator's FLEET_API_TOKEN, or FLEET_API_READ_TOKEN for reads (fleetctl: --token or FLEET_API_TOKEN)";

/// The middleware: 401 without a valid token, 403 for a read-only token on anything but GET/HEAD.
pub(crate) async fn auth(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    if tokens.open() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this coordinator requires an API token",
            HINT,
        )
        .into_response();
    };
    match tokens.access(given) {
        Access::All => next.run(req).await,
        Access::ReadOnly if matches!(*req.method(), Method::GET | Method::HEAD) => {
            next.run(req).await
        }
        Access::ReadOnly => ApiError::new(
            StatusCode::FORBIDDEN,
            "the read-only API token cannot submit, append, seal, cancel, replay or purge",
            "use the coordinator's FLEET_API_TOKEN for changes",
        )
        .into_response(),
        Access::Denied => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the API token is wrong", HINT).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_wrong_tokens() {
        let mut c = Config::parse_args(["x", "--api-token=w\n", "--api-read-token=r"]).unwrap();
        let t = Tokens::new(&c);
        assert!(!t.open());
        assert_eq!(t.access("w"), Access::All);
        assert_eq!(t.access("r"), Access::ReadOnly);
        assert_eq!(t.access("x"), Access::Denied);
        assert_eq!(t.access(""), Access::Denied);
        c.api_token = None;
        c.api_read_token = None;
        assert!(Tokens::new(&c).open());
    }
}
