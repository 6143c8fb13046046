//! The one error type of the storage layer, carrying whether a retry may help.

use std::time::Duration;

/// SQLSTATE of a unique violation; SQLite's UNIQUE / PRIMARY KEY failures are mapped to it too.
pub const UNIQUE_VIOLATION: &str = "23505";

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL, path or options are unusable (not transient).
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The database cannot be reached or the connection broke (transient).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A pool checkout or a statement ran out of time (transient).
    #[error("{what} timed out after {}", humantime_ms(*.after))]
    Timeout {
        /// What timed out: `checkout`, `statement`, `commit`…
        what: &'static str,
        /// The limit that was hit.
        after: Duration,
    },
    /// The database refused a statement.
    #[error("database error{}: {message}", .code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default())]
    Database {
        /// SQLSTATE on PostgreSQL (SQLite constraint failures are mapped to SQLSTATEs).
        code: Option<String>,
        /// The database's message.
        message: String,
        /// Whether a retry may succeed (serialization failure, deadlock, SQLITE_BUSY…).
        transient: bool,
    },
    /// A column value could not be converted to the requested type.
    #[error("cannot decode column `{column}`: {message}")]
    Decode {
        /// Column name or index.
        column: String,
        /// Why.
        message: String,
    },
    /// A migration set is invalid or conflicts with what the database recorded.
    #[error("migration failed: {0}")]
    Migration(String),
}

fn humantime_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl StoreError {
    /// True when retrying later may succeed (outage, timeout, lock conflict).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Timeout { .. } => true,
            StoreError::Database { transient, .. } => *transient,
            StoreError::Config(_) | StoreError::Decode { .. } | StoreError::Migration(_) => false,
        }
    }

    /// The SQLSTATE (or mapped SQLite code) of a database error.
    pub fn code(&self) -> Option<&str> {
        match self {
            StoreError::Database { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True for a unique / primary-key violation on either backend.
    pub fn is_unique_violation(&self) -> bool {
        self.code() == Some(UNIQUE_VIOLATION)
    }

    pub(crate) fn decode(column: impl Into<String>, message: impl Into<String>) -> StoreError {
        StoreError::Decode {
            column: column.into(),
            message: message.into(),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        let Some(code) = e.code() else {
            if let Some(msg) = tls_refusal(&e) {
                return StoreError::Config(msg);
            }
            // No SQLSTATE: I/O, closed connection, protocol; all mean "not reachable now".
            let msg = match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            };
            return StoreError::Unavailable(msg);
        };
        let code = code.code().to_owned();
        let message = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_owned());
        if code == "57014" {
            // query_canceled: the server-side statement_timeout fired.
            return StoreError::Timeout {
                what: "statement",
                after: Duration::ZERO,
            };
        }
        let transient = code.starts_with("08")
            || code.starts_with("53")
            || matches!(
                code.as_str(),
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03"
            );
        StoreError::Database {
            code: Some(code),
            message,
            transient,
        }
    }
}

/// A TLS failure that retrying cannot fix (certificate rejected, TLS required but not
/// offered), as a message naming the fix; `None` for anything else.
fn tls_refusal(e: &tokio_postgres::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        let rustls_err = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match rustls_err {
            Some(
                err @ rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                ),
            ) => {
                return Some(format!(
                    "the PostgreSQL server's TLS certificate does not name the host in the database URL ({err}): connect with a host name the certificate carries, or use sslmode=verify-ca to check the CA only"
                ));
            }
            Some(err @ rustls::Error::InvalidCertificate(_)) => {
                return Some(format!(
                    "the PostgreSQL server's TLS certificate was rejected ({err}): set FLEET_DATABASE_CA_FILE (or sslrootcert= in the URL) to the PEM file of the CA that signed it, or use sslmode=require to encrypt without verifying"
                ));
            }
            Some(other) => {
                return Some(format!(
                    "TLS handshake with the PostgreSQL server failed ({other}): check the server's ssl settings and the database URL's sslmode"
                ));
            }
            None => {}
        }
        if err.to_string() == "server does not support TLS" {
            return Some(
                "the PostgreSQL server does not offer TLS but the URL's sslmode requires it: enable ssl on the server, or use sslmode=prefer (unencrypted when TLS is missing)"
                    .into(),
            );
        }
        cur = err.source();
    }
    None
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode;
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                let message = msg.clone().unwrap_or_else(|| f.to_string());
                let (code, transient) = match f.code {
                    ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                        (Some("sqlite_busy".to_owned()), true)
                    }
                    ErrorCode::OperationInterrupted => {
                        return StoreError::Timeout {
                            what: "statement",
                            after: Duration::ZERO,
                        };
                    }
                    // SQLITE_CONSTRAINT_UNIQUE (2067) and SQLITE_CONSTRAINT_PRIMARYKEY (1555).
                    ErrorCode::ConstraintViolation if matches!(f.extended_code, 2067 | 1555) => {
                        (Some(UNIQUE_VIOLATION.to_owned()), false)
                    }
                    ErrorCode::CannotOpen | ErrorCode::SystemIoFailure | ErrorCode::DiskFull => {
                        return StoreError::Unavailable(message);
                    }
                    _ => (Some(format!("sqlite_{}", f.extended_code)), false),
                };
                StoreError::Database {
                    code,
                    message,
                    transient,
                }
            }
            _ => StoreError::Database {
                code: None,
                message: e.to_string(),
                transient: false,
            },
        }
    }
}
