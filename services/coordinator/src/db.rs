//! Small store helpers shared by the coordinator's parts: multi-row inserts,
//! the SSE event log, and backend-specific row-lock suffixes.

use fleet_store::{StoreError, StoreKind, Tx, Value, params};

use crate::model::Millis;

/// Rows per multi-row `INSERT` (well below both backends' parameter limits).
const ROWS_PER_INSERT: usize = 100;

/// Inserts `rows` into `head` (`"coord_items (a, b, c)"`), `tail` appended (e.g. `ON CONFLICT DO NOTHING`).
/// Returns the number of rows inserted.
pub async fn insert_rows(
    tx: &mut Tx,
    head: &str,
    tail: &str,
    rows: &[Vec<Value>],
) -> Result<u64, StoreError> {
    let mut n = 0;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = format!("INSERT INTO {head} VALUES ");
        let mut params = Vec::new();
        for (r, row) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            for (c, v) in row.iter().enumerate() {
                if c > 0 {
                    sql.push(',');
                }
                params.push(v.clone());
                sql.push_str(&format!("${}", params.len()));
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        n += tx.execute(&sql, &params).await?;
    }
    Ok(n)
}

/// Appends an entry to a pipeline's event log (what SSE streams serve).
pub async fn log_event(
    tx: &mut Tx,
    pipeline_id: &str,
    at: Millis,
    body: &serde_json::Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO coord_events (pipeline_id, at, body) VALUES ($1, $2, $3)",
        params![pipeline_id, at, body.to_string()],
    )
    .await
    .map(drop)
}

/// ` FOR UPDATE` on PostgreSQL, nothing on SQLite (whose writers are serialized).
pub fn for_update(tx: &Tx) -> &'static str {
    match tx.kind() {
        StoreKind::Postgres => " FOR UPDATE",
        StoreKind::Sqlite => "",
    }
}

/// ` FOR SHARE` on PostgreSQL, nothing on SQLite.
pub fn for_share(tx: &Tx) -> &'static str {
    match tx.kind() {
        StoreKind::Postgres => " FOR SHARE",
        StoreKind::Sqlite => "",
    }
}

/// Either a store (autocommit reads) or an open transaction, for code that reads in both.
pub enum Db<'a> {
    /// Autocommit statements on the store.
    Store(&'a fleet_store::Store),
    /// Statements inside a transaction.
    Tx(&'a mut Tx),
}

impl Db<'_> {
    /// Runs a query; returns all rows.
    pub async fn query(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<fleet_store::Row>, StoreError> {
        match self {
            Db::Store(s) => s.query(sql, params).await,
            Db::Tx(t) => t.query(sql, params).await,
        }
    }

    /// Runs a query; returns its first row.
    pub async fn query_opt(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<fleet_store::Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
}
