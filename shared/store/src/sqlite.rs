//! Embedded SQLite backend: one connection per `Store` (a single replica), WAL
//! mode, `busy_timeout`, every call on the blocking pool, statements cut at
//! their timeout by a progress handler, and `$n` placeholders rewritten to `?n`.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::StoreOptions;
use crate::error::StoreError;
use crate::value::{Row, Value};

/// The shared connection; its guard rolls back a transaction left open.
pub(crate) type Shared = Arc<Mutex<SqliteConn>>;

/// A connection that never outlives an abandoned transaction: dropping the last
/// holder of a checkout while a transaction is open rolls it back (see [`Guard`]).
pub(crate) struct SqliteConn(rusqlite::Connection);

/// A checked-out connection. Dropping it rolls back any open transaction, so a
/// cancelled caller never leaves the write lock held.
pub(crate) struct Guard(OwnedMutexGuard<SqliteConn>);

impl Deref for Guard {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.0.0
    }
}

impl DerefMut for Guard {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.0.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.0.0.is_autocommit()
            && let Err(e) = self.0.0.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rolling back an abandoned SQLite transaction failed");
        }
    }
}

/// Opens (creating) the database file with WAL and a busy timeout.
pub(crate) async fn open(path: &Path, opts: &StoreOptions) -> Result<Shared, StoreError> {
    let path = path.to_owned();
    let busy = opts.statement_timeout.max(Duration::from_millis(100));
    let conn = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = rusqlite::Connection::open(&path).map_err(|e| {
            StoreError::Config(format!("cannot open SQLite file {}: {e}", path.display()))
        })?;
        conn.busy_timeout(busy)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            tracing::warn!(%mode, "SQLite did not switch to WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(conn)
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("SQLite open task failed: {e}")))??;
    Ok(Arc::new(Mutex::new(SqliteConn(conn))))
}

/// Takes the connection within `timeout` (a transaction abandoned by a cancelled
/// caller was already rolled back when its [`Guard`] dropped).
pub(crate) async fn checkout(shared: &Shared, timeout: Duration) -> Result<Guard, StoreError> {
    match tokio::time::timeout(timeout, shared.clone().lock_owned()).await {
        Ok(g) => Ok(Guard(g)),
        Err(_) => Err(StoreError::Timeout {
            what: "checkout",
            after: timeout,
        }),
    }
}

/// Runs blocking `f` with the connection on the blocking pool, giving the guard back.
pub(crate) async fn with_conn<T: Send + 'static>(
    guard: Guard,
    f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
) -> (Option<Guard>, Result<T, StoreError>) {
    let r = tokio::task::spawn_blocking(move || {
        let mut guard = guard;
        let out = f(&mut guard);
        (guard, out)
    })
    .await;
    match r {
        Ok((g, out)) => (Some(g), out),
        Err(e) => (
            None,
            Err(StoreError::Unavailable(format!("SQLite task failed: {e}"))),
        ),
    }
}

/// Rewrites PostgreSQL `$n` placeholders to SQLite's numbered `?n` outside quotes.
pub(crate) fn rewrite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
                out.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => out.push('?'),
            None => out.push(c),
        }
    }
    out
}

struct Bind<'a>(&'a Value);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Owned(V::Null),
            Value::Int(i) => ToSqlOutput::Owned(V::Integer(*i)),
            Value::Float(f) => ToSqlOutput::Owned(V::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bool(b) => ToSqlOutput::Owned(V::Integer(i64::from(*b))),
            Value::Json(j) => ToSqlOutput::Owned(V::Text(j.to_string())),
            Value::Time(t) => ToSqlOutput::Owned(V::Integer(t.timestamp_millis())),
        })
    }
}

fn read(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::Text(String::from_utf8_lossy(t).into_owned())
        }
    }
}

/// Runs one statement under a progress-handler deadline.
pub(crate) fn run(
    conn: &mut rusqlite::Connection,
    sql: &str,
    params: &[Value],
    want_rows: bool,
    timeout: Duration,
) -> Result<(u64, Vec<Row>), StoreError> {
    let deadline = Instant::now() + timeout;
    conn.progress_handler(1000, Some(move || Instant::now() > deadline))?;
    let out = run_inner(conn, &rewrite(sql), params, want_rows);
    conn.progress_handler(0, None::<fn() -> bool>)?;
    out.map_err(|e| match e {
        StoreError::Timeout { what, .. } => StoreError::Timeout {
            what,
            after: timeout,
        },
        e => e,
    })
}

fn run_inner(
    conn: &rusqlite::Connection,
    sql: &str,
    params: &[Value],
    want_rows: bool,
) -> Result<(u64, Vec<Row>), StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    if stmt.parameter_count() != params.len() {
        return Err(StoreError::Database {
            code: Some("08P01".into()),
            message: format!(
                "statement has {} parameters but {} were given",
                stmt.parameter_count(),
                params.len()
            ),
            transient: false,
        });
    }
    for (i, p) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, Bind(p))?;
    }
    let readonly = stmt.readonly();
    let columns: Arc<[String]> = stmt.column_names().map(String::from).collect();
    let n = columns.len();
    let mut out = Vec::new();
    let mut count = 0u64;
    let mut rows = stmt.raw_query();
    while let Some(r) = rows.next()? {
        count += 1;
        if want_rows {
            let values = (0..n)
                .map(|i| r.get_ref(i).map(read))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(Row::new(columns.clone(), values));
        }
    }
    drop(rows);
    let affected = if readonly { count } else { conn.changes() };
    Ok((affected, out))
}

/// Runs several `;`-separated statements without parameters.
pub(crate) fn batch(
    conn: &mut rusqlite::Connection,
    sql: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    let deadline = Instant::now() + timeout;
    conn.progress_handler(1000, Some(move || Instant::now() > deadline))?;
    let out = conn.execute_batch(sql).map_err(StoreError::from);
    conn.progress_handler(0, None::<fn() -> bool>)?;
    out.map_err(|e| match e {
        StoreError::Timeout { what, .. } => StoreError::Timeout {
            what,
            after: timeout,
        },
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::rewrite;

    #[test]
    fn placeholders_are_rewritten_outside_quotes() {
        assert_eq!(
            rewrite("SELECT $1, '$2', \"a$3\", $10 WHERE x = $2"),
            "SELECT ?1, '$2', \"a$3\", ?10 WHERE x = ?2"
        );
    }
}
