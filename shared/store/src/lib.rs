//! fleet storage: one API over PostgreSQL (production) and an embedded SQLite
//! file (the default when no database URL is given), with portable, versioned
//! migrations. Used by the writer and the coordinator.
//!
//! # API at a glance
//!
//! ```no_run
//! # async fn demo() -> Result<(), fleet_store::StoreError> {
//! use fleet_store::{Migration, Store, StoreOptions, params};
//! use std::path::Path;
//!
//! // `postgres://…`, `sqlite:///path/file.sqlite`, or None → SQLite at `sqlite_path`.
//! let store = Store::connect(None, Path::new("fleet.sqlite"), StoreOptions::default()).await?;
//! const MIGRATIONS: &[Migration] = &[Migration {
//!     version: 1,
//!     name: "create notes",
//!     sql: "CREATE TABLE notes (id TEXT PRIMARY KEY, n BIGINT NOT NULL, at_ms BIGINT NOT NULL)",
//! }];
//! store.migrate("example", MIGRATIONS).await?;
//!
//! let mut tx = store.begin().await?;
//! let inserted = tx
//!     .execute(
//!         "INSERT INTO notes (id, n, at_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
//!         params!["a", 1, chrono::Utc::now()],
//!     )
//!     .await?;
//! let row = tx.query_one("SELECT n FROM notes WHERE id = $1", params!["a"]).await?;
//! let n: i64 = row.get("n")?;
//! tx.commit().await?; // dropping `tx` instead rolls back
//! # let _ = (inserted, n);
//! # Ok(()) }
//! ```
//!
//! * [`Store::connect`], [`Store::kind`], [`Store::ping`] (for `/readyz`).
//! * [`Store::migrate`]: versioned migrations per component, recorded in
//!   `fleet_schema_migrations(component, version, name, applied_at)`, each in its
//!   own transaction, serialized across concurrent starters by
//!   `pg_advisory_xact_lock` on PostgreSQL (`BEGIN IMMEDIATE` on SQLite).
//! * [`Store::begin`] → [`Tx`] (`execute`, `query`, `query_opt`, `query_one`,
//!   `batch_execute`, `commit`, `rollback`), or [`Store::transaction`] with a
//!   closure; [`Store::execute`] / [`Store::query`]… for single autocommit
//!   statements.
//! * [`Store::try_advisory_xact_lock`] (PostgreSQL `pg_try_advisory_xact_lock`;
//!   always `true` on SQLite, a single replica) and [`Store::skip_locked`]
//!   (` FOR UPDATE SKIP LOCKED` on PostgreSQL, empty on SQLite).
//!
//! # Portable SQL (one set of migrations for both backends)
//!
//! * Placeholders are `$1, $2…` (rewritten to SQLite's `?1, ?2…`); a number may
//!   repeat. Do not use `::` casts; `CAST(x AS BIGINT)` works on both.
//! * Column types: `TEXT`, `BIGINT` (all integers), `DOUBLE PRECISION`,
//!   `BOOLEAN` (0/1 on SQLite), `JSONB` (JSON text on SQLite; read it with
//!   `row.get::<serde_json::Value>`; JSON operators are not portable).
//! * **Timestamps are `BIGINT` unix milliseconds everywhere** (columns named
//!   `*_at`); bind `Value::Time(DateTime<Utc>)` (stored as millis) or an `i64`
//!   and read back with `row.get::<DateTime<Utc>>`. There is no portable `now()`:
//!   pass the time as a parameter. Readers on PostgreSQL can use
//!   `to_timestamp(col / 1000.0)` for display.
//! * No auto-increment column type is portable: use application ids (e.g. UUID
//!   text), or `INTEGER PRIMARY KEY` only in SQL chosen by [`Store::kind`].
//! * `INSERT … ON CONFLICT … DO NOTHING/UPDATE` and `RETURNING` work on both.
//! * A failed statement poisons its transaction on both backends (PostgreSQL
//!   semantics): `commit` then fails and nothing is written.
//!
//! # Timeouts
//!
//! Every pool checkout waits at most [`StoreOptions::checkout_timeout`] (and a
//! new PostgreSQL connection must be made within it); every statement runs
//! under [`StoreOptions::statement_timeout`]: server-side on PostgreSQL (the
//! session's `statement_timeout`, plus a client-side bound 2 s later after which
//! the connection is discarded), a progress handler plus `busy_timeout` on
//! SQLite. Both surface as [`StoreError::Timeout`]; [`StoreError::is_transient`]
//! says whether a retry may help.

mod error;
mod migrate;
mod pg;
mod pg_tls;
mod sqlite;
mod tx;
mod value;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use error::{StoreError, UNIQUE_VIOLATION};
pub use migrate::{MIGRATIONS_TABLE, Migration};
pub use pg_tls::SslMode;
pub use tx::Tx;
pub use value::{ColumnIndex, FromValue, Row, Value};

use tx::Conn;

/// Default statement timeout: generous for a batch insert, short enough that a
/// hung database pauses a worker within seconds.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default pool checkout timeout (also the connect timeout of a new connection).
pub const DEFAULT_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default PostgreSQL pool size: a worker rarely runs more than a few transactions at once.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// PostgreSQL through a deadpool-postgres pool (production; many replicas).
    Postgres,
    /// An embedded SQLite file (default; a single replica).
    Sqlite,
}

/// Timeouts and pool size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Longest a statement may run (0 disables the server-side limit on PostgreSQL).
    pub statement_timeout: Duration,
    /// Longest wait for a pooled connection, including making a new one.
    pub checkout_timeout: Duration,
    /// PostgreSQL pool size (SQLite uses one connection).
    pub pool_size: usize,
    /// PEM file of the CA that signed the PostgreSQL server's certificate
    /// (`FLEET_DATABASE_CA_FILE`; `sslrootcert=` in the URL wins), for `sslmode=verify-full`.
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            checkout_timeout: DEFAULT_CHECKOUT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            ca_file: None,
        }
    }
}

/// A boxed future borrowing a [`Tx`], as returned by [`Store::transaction`] closures.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = T> + Send + 't>>;

enum Backend {
    Pg(deadpool_postgres::Pool),
    Sqlite(sqlite::Shared),
}

struct Inner {
    backend: Backend,
    opts: StoreOptions,
    describe: String,
}

/// A handle on the database; cheap to clone, shareable across tasks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.inner.describe)
            .finish()
    }
}

impl Store {
    /// Connects: `url` `postgres://…`/`postgresql://…` (the pool connects lazily, so
    /// PostgreSQL may still be down), `sqlite:///abs/path` or `sqlite:rel/path`, or
    /// `None`/empty → the SQLite file at `sqlite_path` (created with its directory).
    pub async fn connect(
        url: Option<&str>,
        sqlite_path: &Path,
        opts: StoreOptions,
    ) -> Result<Store, StoreError> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let (backend, describe) = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => (
                Backend::Pg(pg::pool(u, &opts)?),
                format!("postgres {}", redact(u)),
            ),
            Some(u) if u.starts_with("sqlite:") => {
                let path = PathBuf::from(
                    u.strip_prefix("sqlite://")
                        .or_else(|| u.strip_prefix("sqlite:"))
                        .unwrap_or_default(),
                );
                if path.as_os_str().is_empty() {
                    return Err(StoreError::Config(format!("`{u}` names no SQLite file")));
                }
                (
                    Backend::Sqlite(sqlite::open(&path, &opts).await?),
                    format!("sqlite {}", path.display()),
                )
            }
            Some(u) => {
                return Err(StoreError::Config(format!(
                    "database URL `{}` has no known scheme: use postgres://, postgresql:// or sqlite://",
                    redact(u)
                )));
            }
            None => (
                Backend::Sqlite(sqlite::open(sqlite_path, &opts).await?),
                format!("sqlite {}", sqlite_path.display()),
            ),
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                opts,
                describe,
            }),
        })
    }

    /// The backend.
    pub fn kind(&self) -> StoreKind {
        match self.inner.backend {
            Backend::Pg(_) => StoreKind::Postgres,
            Backend::Sqlite(_) => StoreKind::Sqlite,
        }
    }

    /// The options this store was opened with.
    pub fn options(&self) -> StoreOptions {
        self.inner.opts.clone()
    }

    /// A description for logs (`postgres postgres://…@host/db` or `sqlite path`), no password.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    async fn checkout(&self) -> Result<Conn, StoreError> {
        let t = self.inner.opts.checkout_timeout;
        match &self.inner.backend {
            Backend::Pg(p) => pg::checkout(p, t).await.map(Conn::Pg),
            Backend::Sqlite(s) => sqlite::checkout(s, t).await.map(Conn::Sqlite),
        }
    }

    /// Starts a transaction (`BEGIN` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let mut tx = Tx {
            conn: Some(self.checkout().await?),
            kind: self.kind(),
            statement_timeout: self.inner.opts.statement_timeout,
            failed: false,
            discard: false,
            done: false,
        };
        let begin = match self.kind() {
            StoreKind::Postgres => "BEGIN",
            StoreKind::Sqlite => "BEGIN IMMEDIATE",
        };
        if let Err(e) = tx.batch_execute(begin).await {
            // Not in a transaction: nothing to roll back, but do not reuse a doubtful connection.
            tx.discard = true;
            tx.done = !matches!(tx.conn, Some(Conn::Pg(_)));
            return Err(e);
        }
        Ok(tx)
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, rolls back on `Err`.
    ///
    /// ```no_run
    /// # async fn demo(store: fleet_store::Store) -> Result<u64, fleet_store::StoreError> {
    /// store
    ///     .transaction(|tx| {
    ///         Box::pin(async move { tx.execute("DELETE FROM notes", &[]).await })
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn transaction<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: for<'t> FnOnce(&'t mut Tx) -> TxFuture<'t, Result<T, E>>,
        E: From<StoreError>,
    {
        let mut tx = self.begin().await?;
        match f(&mut tx).await {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn autocommit(
        &self,
        sql: &str,
        params: &[Value],
        want_rows: bool,
    ) -> Result<(u64, Vec<Row>), StoreError> {
        let mut slot = Some(self.checkout().await?);
        let out = Conn::run(
            &mut slot,
            sql,
            params,
            want_rows,
            self.inner.opts.statement_timeout,
        )
        .await;
        if let (Err(e), Some(Conn::Pg(c))) = (&out, slot)
            && e.is_transient()
        {
            drop(deadpool_postgres::Object::take(c));
        }
        out
    }

    /// Runs one statement outside a transaction; returns the affected-row count.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        Ok(self.autocommit(sql, params, false).await?.0)
    }

    /// Runs one query outside a transaction; returns all rows.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        Ok(self.autocommit(sql, params, true).await?.1)
    }

    /// Runs one query outside a transaction; returns its first row, if any.
    pub async fn query_opt(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs one query outside a transaction that must return a row.
    pub async fn query_one(&self, sql: &str, params: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| StoreError::Database {
                code: Some("P0002".into()),
                message: "query returned no rows".into(),
                transient: false,
            })
    }

    /// Checks the database answers (`SELECT 1`) within the checkout and statement timeouts.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query_one("SELECT 1", &[]).await.map(drop)
    }

    /// See [`Tx::try_advisory_xact_lock`]: PostgreSQL `pg_try_advisory_xact_lock(key)`,
    /// released at the end of `tx`; always `true` on SQLite (single replica).
    pub async fn try_advisory_xact_lock(&self, tx: &mut Tx, key: i64) -> Result<bool, StoreError> {
        tx.try_advisory_xact_lock(key).await
    }

    /// The suffix that makes a `SELECT` claim rows other replicas skip:
    /// `" FOR UPDATE SKIP LOCKED"` on PostgreSQL, `""` on SQLite (whose
    /// `BEGIN IMMEDIATE` already serializes writers).
    pub fn skip_locked(&self) -> &'static str {
        match self.kind() {
            StoreKind::Postgres => " FOR UPDATE SKIP LOCKED",
            StoreKind::Sqlite => "",
        }
    }

    /// Pool statistics `(in use, idle, max)` for metrics; SQLite reports `(0|1, 0|1, 1)`.
    pub fn pool_status(&self) -> (usize, usize, usize) {
        match &self.inner.backend {
            Backend::Pg(p) => {
                let s = p.status();
                (s.size - s.available, s.available, s.max_size)
            }
            Backend::Sqlite(s) => match s.try_lock() {
                Ok(_) => (0, 1, 1),
                Err(_) => (1, 0, 1),
            },
        }
    }
}

/// The URL without its password, for logs and errors (the workspace's one redaction).
pub fn redact(url: &str) -> String {
    fleet_protocol::redact::redact_url(url)
}

/// `url` with every session's `search_path` set to `schema` (isolates tests).
pub fn pg_url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}
