//! Console sessions: the login form takes an API token, a cookie signed with HMAC-SHA256
//! remembers whether it was the full or the read-only token, and every action needs the
//! session's CSRF token and a same-origin `Origin`. Nothing is stored server-side, so any
//! coordinator replica with the same tokens accepts the cookie.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::error::UiError;
pub use super::viewer::Viewer;
use crate::api::auth::{Access, Tokens};
use crate::config::Config;
use crate::model::now_ms;

/// The session cookie's name.
pub const COOKIE: &str = "fleet_console";
/// How long a login lasts (a working day).
const LIFETIME_MS: i64 = 12 * 3600 * 1000;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks session cookies.
#[derive(Clone)]
pub struct Sessions {
    key: [u8; 32],
    tokens: Tokens,
}

impl Sessions {
    /// Sessions for the tokens of `config`.
    pub fn new(config: &Config) -> Sessions {
        let tokens = Tokens::new(config);
        let key = if tokens.open() {
            // No secret to derive from: a per-process key still keeps CSRF tokens unguessable.
            rand::random()
        } else {
            // Derived from the tokens: every replica agrees, and rotating a token ends the sessions.
            let mut h = Sha256::new();
            h.update(b"fleet-console-session-v1\0");
            for t in [&config.api_token, &config.api_read_token] {
                h.update(t.as_deref().map(str::trim).unwrap_or("").as_bytes());
                h.update(b"\0");
            }
            h.finalize().into()
        };
        Sessions { key, tokens }
    }

    /// True when the API (and so the console) needs no token.
    pub fn open(&self) -> bool {
        self.tokens.open()
    }

    fn mac(&self, msg: &str) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(msg.as_bytes());
        m
    }

    fn csrf(&self, nonce: &str) -> String {
        let tag = self.mac(&format!("csrf.{nonce}")).finalize().into_bytes();
        hex::encode(&tag[..16])
    }

    /// What `token` may do, as a cookie value; `None` for a wrong token.
    pub fn login(&self, token: &str) -> Option<String> {
        let role = match self.tokens.access(token) {
            Access::All => "all",
            Access::ReadOnly => "read",
            Access::Denied => return None,
        };
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let body = format!("{role}.{}.{nonce}", now_ms() + LIFETIME_MS);
        let sig = hex::encode(self.mac(&body).finalize().into_bytes());
        Some(format!("{body}.{sig}"))
    }

    /// The viewer a cookie value stands for, if it is genuine and current.
    fn verify(&self, value: &str) -> Option<Viewer> {
        let (body, sig) = value.rsplit_once('.')?;
        self.mac(body).verify_slice(&hex::decode(sig).ok()?).ok()?;
        let mut parts = body.split('.');
        let (role, expires, nonce) = (parts.next()?, parts.next()?, parts.next()?);
        if expires.parse::<i64>().ok()? < now_ms() {
            return None;
        }
        Some(Viewer {
            can_act: role == "all",
            csrf: self.csrf(nonce),
            open: false,
        })
    }

    /// The viewer of a request: everyone when open, else the one its cookie names.
    pub fn viewer(&self, headers: &HeaderMap) -> Option<Viewer> {
        if self.open() {
            return Some(Viewer {
                can_act: true,
                csrf: self.csrf("open"),
                open: true,
            });
        }
        self.verify(&cookie(headers)?)
    }
}

/// The session cookie's value in `headers`.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// True when the request came over HTTPS (directly or through a proxy that says so).
pub fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value for `value` (empty: delete the cookie).
pub fn set_cookie(value: &str, headers: &HeaderMap) -> String {
    let age = if value.is_empty() {
        0
    } else {
        LIFETIME_MS / 1000
    };
    let secure = if https(headers) { "; Secure" } else { "" };
    format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={age}{secure}")
}

/// Refuses a cross-site POST: its `Origin` (when the browser sends one) must name this host.
pub fn same_origin(headers: &HeaderMap) -> Result<(), UiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        // Clients without an Origin (curl, old browsers) still need the CSRF token.
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
    });
    if host.is_some() && origin_host == host {
        Ok(())
    } else {
        Err(UiError::new(
            StatusCode::FORBIDDEN,
            "this form was sent from another site",
            "open the console at the coordinator's own address and submit the form there",
        ))
    }
}

/// Refuses an action whose form lacks `viewer`'s session CSRF token.
pub fn check_csrf(viewer: &Viewer, given: &str) -> Result<(), UiError> {
    use subtle::ConstantTimeEq;
    if bool::from(viewer.csrf.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(UiError::new(
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or stale",
            "reload the page and submit the form again",
        ))
    }
}

/// The middleware in front of every console page but login: a page without a session
/// redirects to the login form; a POST needs the full token and a same-origin `Origin`.
pub async fn guard(State(s): State<Sessions>, mut req: Request, next: Next) -> Response {
    let Some(viewer) = s.viewer(req.headers()) else {
        if req.method() == Method::GET {
            let next_path = req.uri().path_and_query().map_or("/ui", |p| p.as_str());
            let to = format!("/ui/login?next={}", urlencode(next_path));
            return Redirect::to(&to).into_response();
        }
        return UiError::new(
            StatusCode::UNAUTHORIZED,
            "log in first",
            "open /ui/login and enter the coordinator's API token",
        )
        .into_response();
    };
    if req.method() == Method::POST {
        if !viewer.can_act {
            return UiError::new(
                StatusCode::FORBIDDEN,
                "the read-only token cannot cancel, replay or purge",
                "log out and log in with the coordinator's FLEET_API_TOKEN",
            )
            .into_response();
        }
        if let Err(e) = same_origin(req.headers()) {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(viewer);
    next.run(req).await
}

/// Percent-encodes `s` for a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        let c = Config::parse_args(["x", "--api-token=w", "--api-read-token=r"]).unwrap();
        Sessions::new(&c)
    }

    #[test]
    fn cookies_carry_the_role_and_cannot_be_forged() {
        let s = sessions();
        assert!(s.login("nope").is_none());
        let all = s.login("w").unwrap();
        let read = s.login("r").unwrap();
        assert!(s.verify(&all).unwrap().can_act);
        assert!(!s.verify(&read).unwrap().can_act);
        let forged = read.replacen("read", "all", 1);
        assert!(s.verify(&forged).is_none());
        assert!(s.verify("all.99999999999999.00.00").is_none());
    }
}
