//! Dead-letter reasons and the headers a dead-lettered message gains.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why processing of a job stopped for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Every allowed attempt failed.
    AttemptsExhausted,
    /// The handler said the job can never succeed.
    PermanentError,
    /// The body is not a valid envelope.
    DecodeError,
    /// The envelope's major version is unknown.
    UnsupportedVersion,
    /// Oversize, or the last delivery never reported an outcome (it killed its worker).
    Poison,
}

impl DeadLetterReason {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::AttemptsExhausted => "attempts_exhausted",
            DeadLetterReason::PermanentError => "permanent_error",
            DeadLetterReason::DecodeError => "decode_error",
            DeadLetterReason::UnsupportedVersion => "unsupported_version",
            DeadLetterReason::Poison => "poison",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<DeadLetterReason> {
        [
            DeadLetterReason::AttemptsExhausted,
            DeadLetterReason::PermanentError,
            DeadLetterReason::DecodeError,
            DeadLetterReason::UnsupportedVersion,
            DeadLetterReason::Poison,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// How the last attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The attempt ran past its deadline.
    Timeout,
    /// The handler returned an error.
    HandlerError,
    /// The handler panicked.
    Panic,
    /// The delivery's lease or channel was lost (or its worker died).
    Lost,
}

impl ErrorKind {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::HandlerError => "handler_error",
            ErrorKind::Panic => "panic",
            ErrorKind::Lost => "lost",
        }
    }
}

/// Header names a dead letter carries (also on NATS, as message headers).
pub mod headers {
    /// Why processing stopped (a [`super::DeadLetterReason`] wire name).
    pub const REASON: &str = "fleet-reason";
    /// How the last attempt failed (an [`super::ErrorKind`] wire name).
    pub const LAST_ERROR_KIND: &str = "fleet-last-error-kind";
    /// Last error text, at most [`super::MAX_ERROR_TEXT`] bytes.
    pub const LAST_ERROR: &str = "fleet-last-error";
    /// Attempts made.
    pub const ATTEMPTS: &str = "fleet-attempts";
    /// Stage that gave up.
    pub const STAGE: &str = "fleet-stage";
    /// Worker that gave up.
    pub const WORKER_ID: &str = "fleet-worker-id";
    /// RFC 3339 time of dead-lettering.
    pub const AT: &str = "fleet-dead-lettered-at";
    /// Job id, when the body could be decoded.
    pub const JOB_ID: &str = "fleet-job-id";
    /// Attempts already made before this copy was published (RabbitMQ retries; on both brokers
    /// a copy released at a drain, so that the release costs no attempt).
    pub const ATTEMPT: &str = "fleet-attempt";
    /// Parked control messages: the queue (RabbitMQ) or subject (NATS) it came from; replay
    /// sends it back there.
    pub const PARKED_FROM: &str = "fleet-parked-from";
    /// Parked control messages: why (`attempts_exhausted`, `unsupported_version`, `decode_error`).
    pub const PARKED_REASON: &str = "fleet-parked-reason";
    /// Parked control messages: the last error text (bounded).
    pub const PARKED_ERROR: &str = "fleet-parked-error";
    /// Parked control messages: deliveries made before parking.
    pub const PARKED_ATTEMPTS: &str = "fleet-parked-attempts";
    /// Parked control messages: RFC 3339 time of parking.
    pub const PARKED_AT: &str = "fleet-parked-at";
}

/// Longest error text kept in headers and events.
pub const MAX_ERROR_TEXT: usize = 1024;

/// Cuts `text` to at most [`MAX_ERROR_TEXT`] bytes on a char boundary.
pub fn bound_error(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Everything recorded about a dead letter besides its (unchanged) body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetterInfo {
    /// Why processing stopped.
    pub reason: DeadLetterReason,
    /// How the last attempt failed, if one ran.
    pub last_error_kind: Option<ErrorKind>,
    /// Last error text (bounded).
    pub last_error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Stage that gave up.
    pub stage: String,
    /// Worker that gave up.
    pub worker_id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The job id, when the body decoded.
    pub job_id: Option<String>,
}

impl DeadLetterInfo {
    /// The headers to attach to the dead-lettered copy.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![
            (headers::REASON.into(), self.reason.as_str().into()),
            (headers::LAST_ERROR.into(), bound_error(&self.last_error)),
            (headers::ATTEMPTS.into(), self.attempts.to_string()),
            (headers::STAGE.into(), self.stage.clone()),
            (headers::WORKER_ID.into(), self.worker_id.clone()),
            (headers::AT.into(), self.at.to_rfc3339()),
        ];
        if let Some(kind) = self.last_error_kind {
            h.push((headers::LAST_ERROR_KIND.into(), kind.as_str().into()));
        }
        if let Some(id) = &self.job_id {
            h.push((headers::JOB_ID.into(), id.clone()));
        }
        h
    }

    /// Reads the headers back (the coordinator's archive uses this).
    pub fn from_headers<'a>(
        mut get: impl FnMut(&str) -> Option<&'a str>,
    ) -> Option<DeadLetterInfo> {
        let reason = DeadLetterReason::parse(get(headers::REASON)?)?;
        let last_error_kind = match get(headers::LAST_ERROR_KIND) {
            Some("timeout") => Some(ErrorKind::Timeout),
            Some("handler_error") => Some(ErrorKind::HandlerError),
            Some("panic") => Some(ErrorKind::Panic),
            Some("lost") => Some(ErrorKind::Lost),
            _ => None,
        };
        Some(DeadLetterInfo {
            reason,
            last_error_kind,
            last_error: get(headers::LAST_ERROR).unwrap_or_default().to_owned(),
            attempts: get(headers::ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            stage: get(headers::STAGE).unwrap_or_default().to_owned(),
            worker_id: get(headers::WORKER_ID).unwrap_or_default().to_owned(),
            at: get(headers::AT)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(Utc::now, |t| t.with_timezone(&Utc)),
            job_id: get(headers::JOB_ID).map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bounded() {
        let info = DeadLetterInfo {
            reason: DeadLetterReason::AttemptsExhausted,
            last_error_kind: Some(ErrorKind::Timeout),
            last_error: "x".repeat(5000),
            attempts: 3,
            stage: "analyze".into(),
            worker_id: "w1".into(),
            at: Utc::now(),
            job_id: Some("p/i/analyze".into()),
        };
        let h = info.to_headers();
        let back = DeadLetterInfo::from_headers(|k| {
            h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!(back.reason, info.reason);
        assert_eq!(back.last_error_kind, Some(ErrorKind::Timeout));
        assert!(back.last_error.len() <= MAX_ERROR_TEXT + 3);
        assert_eq!(back.attempts, 3);
        for r in [
            "attempts_exhausted",
            "permanent_error",
            "decode_error",
            "unsupported_version",
            "poison",
        ] {
            assert_eq!(DeadLetterReason::parse(r).unwrap().as_str(), r);
        }
    }
}
