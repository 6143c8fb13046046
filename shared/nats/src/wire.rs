//! Subjects, header conversion and bounded waits shared by the other modules.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use fleet_core::{BrokerError, Destination, Headers};
use fleet_protocol::Names;

/// Awaits `fut` for at most `limit`; expiry becomes [`BrokerError::Timeout`].
pub(crate) async fn bounded<F: Future>(limit: Duration, fut: F) -> Result<F::Output, BrokerError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| BrokerError::Timeout(limit))
}

/// Checks that `token` can be one subject token and one consumer-name part.
pub(crate) fn check_token(what: &str, token: &str) -> Result<(), BrokerError> {
    let bad = token.is_empty()
        || token.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        });
    if bad {
        return Err(BrokerError::Rejected(format!(
            "invalid {what} {token:?} for NATS: it must be a non-empty subject token without \
             whitespace, '.', '*', '>', '/' or '\\'"
        )));
    }
    Ok(())
}

/// The subject a destination publishes to.
pub(crate) fn subject_for(names: &Names, dest: &Destination) -> Result<String, BrokerError> {
    Ok(match dest {
        Destination::Job { stage } => {
            check_token("stage", stage)?;
            names.jobs(stage)
        }
        Destination::Events { stage } => {
            check_token("stage", stage)?;
            names.events(stage)
        }
        Destination::DeadLetter { stage } => {
            check_token("stage", stage)?;
            names.dlq(stage)
        }
        Destination::Submit => names.submit(),
        Destination::Pipeline { state } => {
            check_token("pipeline state", state)?;
            names.pipelines(state)
        }
        Destination::Control { pipeline_id } => {
            check_token("pipeline id", pipeline_id)?;
            names.control(pipeline_id)
        }
    })
}

/// NATS header values cannot carry CR or LF (a multi-line error text would otherwise panic the
/// client or be refused): they become spaces.
pub(crate) fn header_value(value: &str) -> HeaderValue {
    let clean: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    // CR and LF are all a value is checked for, so this cannot panic; moving `clean` in saves
    // the copy `from_str` makes.
    HeaderValue::from(clean)
}

/// A header name, refused (not panicked on) when NATS cannot carry it.
pub(crate) fn header_name(name: &str) -> Result<HeaderName, BrokerError> {
    HeaderName::from_str(name)
        .map_err(|e| BrokerError::Rejected(format!("invalid NATS header name {name:?}: {e}")))
}

/// Appends fleet headers to a NATS header map.
pub(crate) fn append_headers(map: &mut HeaderMap, headers: &Headers) -> Result<(), BrokerError> {
    for (name, value) in headers {
        map.append(header_name(name)?, header_value(value));
    }
    Ok(())
}

/// Sets fleet headers on a NATS header map, replacing earlier values of the same names.
pub(crate) fn insert_headers(map: &mut HeaderMap, headers: &Headers) -> Result<(), BrokerError> {
    for (name, value) in headers {
        map.insert(header_name(name)?, header_value(value));
    }
    Ok(())
}

/// A NATS header map as fleet headers (every value of a repeated name, in order).
pub(crate) fn from_header_map(map: Option<&HeaderMap>) -> Headers {
    let Some(map) = map else { return Vec::new() };
    let mut out = Vec::with_capacity(map.len());
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        for value in values {
            out.push((name.to_owned(), value.as_str().to_owned()));
        }
    }
    out
}

/// What async-nats answers when a message without a reply subject is settled (kept for the
/// settlements that now publish on the client directly).
pub(crate) const NO_REPLY: &str = "No reply subject, not a JetStream message";

/// Original headers a dead-letter copy must not carry (publish expectations of the original).
pub(crate) fn keep_header(name: &str) -> bool {
    !name.to_ascii_lowercase().starts_with("nats-expected-")
}

/// The original headers a copy keeps: without publish expectations, and without the
/// de-duplication id (a copy of a job put back within the window would be dropped as a
/// duplicate of the original, i.e. lost).
pub(crate) fn plain_copy_headers(original: Option<&HeaderMap>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(original) = original {
        for (name, values) in original.iter() {
            let name_str: &str = name.as_ref();
            if keep_header(name_str)
                && !name_str.eq_ignore_ascii_case(async_nats::header::NATS_MESSAGE_ID.as_ref())
            {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_names_and_refuse_bad_tokens() {
        let n = Names::new("t1");
        let s = |d| subject_for(&n, &d).expect("valid destination");
        assert_eq!(s(Destination::Job { stage: "a".into() }), "t1.jobs.a");
        assert_eq!(s(Destination::Events { stage: "a".into() }), "t1.events.a");
        assert_eq!(s(Destination::DeadLetter { stage: "a".into() }), "t1.dlq.a");
        assert_eq!(s(Destination::Submit), "t1.submit");
        assert_eq!(
            s(Destination::Pipeline {
                state: "completed".into()
            }),
            "t1.pipelines.completed"
        );
        assert_eq!(
            s(Destination::Control {
                pipeline_id: "p1".into()
            }),
            "t1.control.p1"
        );
        for bad in ["", "a.b", "a*", ">", "a b", "a/b"] {
            assert!(
                subject_for(&n, &Destination::Job { stage: bad.into() }).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn headers_round_trip_and_lose_line_breaks() {
        let mut map = HeaderMap::new();
        append_headers(
            &mut map,
            &vec![("a".into(), "x\ny".into()), ("a".into(), "z".into())],
        )
        .expect("valid names");
        let back = from_header_map(Some(&map));
        assert_eq!(
            back,
            vec![
                ("a".to_owned(), "x y".to_owned()),
                ("a".to_owned(), "z".to_owned())
            ]
        );
        insert_headers(&mut map, &vec![("a".into(), "w".into())]).expect("valid names");
        assert_eq!(
            from_header_map(Some(&map)),
            vec![("a".to_owned(), "w".to_owned())]
        );
        assert!(append_headers(&mut map, &vec![("bad:name".into(), "v".into())]).is_err());
    }
}
