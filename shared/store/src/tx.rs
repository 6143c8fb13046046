//! [`Tx`]: one database transaction (or, from [`crate::Store::begin`], the only
//! way to run several statements atomically). Commit explicitly; dropping it
//! without [`Tx::commit`] rolls back.

use std::time::Duration;

use crate::error::StoreError;
use crate::value::{Row, Value};
use crate::{StoreKind, pg, sqlite};

/// A checked-out connection of either backend (the size difference is fine: one per call).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn {
    Pg(deadpool_postgres::Object),
    Sqlite(sqlite::Guard),
}

impl Conn {
    /// Runs one statement with `$n` placeholders.
    pub(crate) async fn run(
        slot: &mut Option<Conn>,
        sql: &str,
        params: &[Value],
        want_rows: bool,
        timeout: Duration,
    ) -> Result<(u64, Vec<Row>), StoreError> {
        match slot {
            Some(Conn::Pg(c)) => pg::run(c, sql, params, want_rows, timeout).await,
            Some(Conn::Sqlite(_)) => {
                let Some(Conn::Sqlite(g)) = slot.take() else {
                    unreachable!("checked above")
                };
                let (sql, params) = (sql.to_owned(), params.to_vec());
                let (g, out) = sqlite::with_conn(g, move |c| {
                    sqlite::run(c, &sql, &params, want_rows, timeout)
                })
                .await;
                *slot = g.map(Conn::Sqlite);
                out
            }
            None => Err(StoreError::Unavailable(
                "the connection was lost by an earlier cancelled call".into(),
            )),
        }
    }

    /// Runs several statements without parameters.
    pub(crate) async fn batch(
        slot: &mut Option<Conn>,
        sql: &str,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        match slot {
            Some(Conn::Pg(c)) => pg::batch(c, sql, timeout).await,
            Some(Conn::Sqlite(_)) => {
                let Some(Conn::Sqlite(g)) = slot.take() else {
                    unreachable!("checked above")
                };
                let sql = sql.to_owned();
                let (g, out) = sqlite::with_conn(g, move |c| sqlite::batch(c, &sql, timeout)).await;
                *slot = g.map(Conn::Sqlite);
                out
            }
            None => Err(StoreError::Unavailable(
                "the connection was lost by an earlier cancelled call".into(),
            )),
        }
    }
}

/// An open transaction. Statements use `$1, $2…` placeholders on both backends.
///
/// As on PostgreSQL, a failed statement poisons the transaction on both backends:
/// [`Tx::commit`] then returns an error and nothing is written.
///
/// Dropping a `Tx` without [`Tx::commit`] rolls it back (in the background); a
/// PostgreSQL connection whose statement timed out client-side is discarded,
/// never returned to the pool.
pub struct Tx {
    pub(crate) conn: Option<Conn>,
    pub(crate) kind: StoreKind,
    pub(crate) statement_timeout: Duration,
    /// Set by any failed statement: the transaction can only roll back (as on PostgreSQL).
    pub(crate) failed: bool,
    /// Set by a timeout or outage: the connection is closed instead of reused.
    pub(crate) discard: bool,
    pub(crate) done: bool,
}

impl Tx {
    /// The backend this transaction runs on.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    async fn run(
        &mut self,
        sql: &str,
        params: &[Value],
        want_rows: bool,
    ) -> Result<(u64, Vec<Row>), StoreError> {
        let out = Conn::run(
            &mut self.conn,
            sql,
            params,
            want_rows,
            self.statement_timeout,
        )
        .await;
        if let Err(e) = &out {
            self.note_error(e);
        }
        out
    }

    fn note_error(&mut self, e: &StoreError) {
        self.failed = true;
        if e.is_transient() {
            self.discard = true;
        }
    }

    /// Runs a statement; returns the number of rows it inserted, updated or deleted.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        Ok(self.run(sql, params, false).await?.0)
    }

    /// Runs a query; returns all its rows.
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        Ok(self.run(sql, params, true).await?.1)
    }

    /// Runs a query; returns its first row, if any.
    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs a query that must return a row.
    pub async fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| StoreError::Database {
                code: Some("P0002".into()),
                message: "query returned no rows".into(),
                transient: false,
            })
    }

    /// Runs several `;`-separated statements without parameters (DDL, scripts).
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), StoreError> {
        let out = Conn::batch(&mut self.conn, sql, self.statement_timeout).await;
        if let Err(e) = &out {
            self.note_error(e);
        }
        out
    }

    /// Changes the statement timeout for the rest of this transaction (e.g. a long migration).
    pub async fn set_statement_timeout(&mut self, timeout: Duration) -> Result<(), StoreError> {
        if self.kind == StoreKind::Postgres {
            self.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                timeout.as_millis()
            ))
            .await?;
        }
        self.statement_timeout = timeout;
        Ok(())
    }

    /// Takes a transaction-scoped advisory lock without waiting: `true` if this
    /// transaction holds it now (PostgreSQL `pg_try_advisory_xact_lock`); always
    /// `true` on SQLite, which runs as a single replica with `BEGIN IMMEDIATE`.
    pub async fn try_advisory_xact_lock(&mut self, key: i64) -> Result<bool, StoreError> {
        match self.kind {
            StoreKind::Sqlite => Ok(true),
            StoreKind::Postgres => self
                .query_one(
                    "SELECT pg_try_advisory_xact_lock(CAST($1 AS BIGINT))",
                    &[Value::Int(key)],
                )
                .await?
                .get(0),
        }
    }

    /// Takes a transaction-scoped advisory lock, waiting (under the statement timeout).
    pub async fn advisory_xact_lock(&mut self, key: i64) -> Result<(), StoreError> {
        if self.kind == StoreKind::Postgres {
            self.execute(
                "SELECT pg_advisory_xact_lock(CAST($1 AS BIGINT))",
                &[Value::Int(key)],
            )
            .await?;
        }
        Ok(())
    }

    /// Commits. On error the outcome is unknown only if the error is a timeout or
    /// an outage; either way the connection is not reused.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.discard {
            return Err(StoreError::Unavailable(
                "a statement of this transaction timed out or lost its connection; it was rolled back".into(),
            ));
        }
        if self.failed {
            return Err(StoreError::Database {
                code: Some("25P02".into()),
                message: "a statement of this transaction failed; it was rolled back".into(),
                transient: false,
            });
        }
        let out = self.batch_execute("COMMIT").await;
        if out.is_ok() {
            self.done = true;
        }
        out
    }

    /// Rolls back now (dropping the `Tx` does the same in the background).
    pub async fn rollback(mut self) -> Result<(), StoreError> {
        if self.discard {
            return Ok(());
        }
        let out = self.batch_execute("ROLLBACK").await;
        if out.is_ok() {
            self.done = true;
        }
        out
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("kind", &self.kind)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        let handle = tokio::runtime::Handle::try_current();
        match (conn, handle) {
            (Conn::Sqlite(g), Ok(h)) => {
                // The guard's own drop rolls back; keep that file I/O off the reactor.
                h.spawn_blocking(move || drop(g));
            }
            (Conn::Sqlite(g), Err(_)) => drop(g),
            (Conn::Pg(c), Ok(h)) if !self.discard => {
                let timeout = self.statement_timeout;
                h.spawn(async move {
                    if !matches!(pg::batch(&c, "ROLLBACK", timeout).await, Ok(())) {
                        drop(deadpool_postgres::Object::take(c));
                    }
                });
            }
            // Broken or no runtime: close the connection; the server rolls back.
            (Conn::Pg(c), _) => drop(deadpool_postgres::Object::take(c)),
        }
    }
}
