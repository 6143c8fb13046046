//! Versioned, portable migrations per component, recorded in
//! [`MIGRATIONS_TABLE`]; each runs in its own transaction, and concurrent
//! starters on PostgreSQL are serialized by a transaction-scoped advisory lock.

use std::time::Duration;

use chrono::Utc;

use crate::error::StoreError;
use crate::value::Value;
use crate::{Store, StoreKind};

/// The table recording applied migrations: `(component, version, name, applied_at)`.
pub const MIGRATIONS_TABLE: &str = "fleet_schema_migrations";

/// Advisory lock key held while migrating ("fleetmig" as bytes).
const MIGRATION_LOCK_KEY: i64 = 0x666c_6565_746d_6967;
/// A migration may rebuild an index or wait for another starter: it gets longer than a statement.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

/// One schema change: applied once per database, in version order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Strictly increasing within a component; never reuse or renumber.
    pub version: u32,
    /// A short description; must stay the same once applied.
    pub name: &'static str,
    /// Portable SQL, possibly several `;`-separated statements, no parameters.
    pub sql: &'static str,
}

impl Store {
    /// Applies the migrations of `component` not yet recorded; returns the versions
    /// applied now (empty when up to date). A recorded version whose name differs
    /// is an error (someone edited an applied migration).
    pub async fn migrate(
        &self,
        component: &str,
        migrations: &[Migration],
    ) -> Result<Vec<u32>, StoreError> {
        if let Some(w) = migrations.windows(2).find(|w| w[0].version >= w[1].version) {
            return Err(StoreError::Migration(format!(
                "{component}: versions must strictly increase ({} then {})",
                w[0].version, w[1].version
            )));
        }
        let bootstrap = format!(
            "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                component TEXT NOT NULL,
                version BIGINT NOT NULL,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL,
                PRIMARY KEY (component, version)
            )"
        );
        let mut tx = self.begin_migration().await?;
        tx.batch_execute(&bootstrap).await?;
        tx.commit().await?;

        let mut applied = Vec::new();
        for m in migrations {
            let mut tx = self.begin_migration().await?;
            let row = tx
                .query_opt(
                    &format!(
                        "SELECT name FROM {MIGRATIONS_TABLE} WHERE component = $1 AND version = $2"
                    ),
                    &[component.into(), m.version.into()],
                )
                .await?;
            if let Some(row) = row {
                let name: String = row.get(0)?;
                if name != m.name {
                    return Err(StoreError::Migration(format!(
                        "{component} v{} was applied as `{name}` but is now `{}`: never edit an applied migration, add a new one",
                        m.version, m.name
                    )));
                }
                continue;
            }
            tx.batch_execute(m.sql).await.map_err(|e| {
                StoreError::Migration(format!("{component} v{} `{}`: {e}", m.version, m.name))
            })?;
            tx.execute(
                &format!(
                    "INSERT INTO {MIGRATIONS_TABLE} (component, version, name, applied_at) VALUES ($1, $2, $3, $4)"
                ),
                &[
                    component.into(),
                    m.version.into(),
                    m.name.into(),
                    Value::Time(Utc::now()),
                ],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(
                component,
                version = m.version,
                name = m.name,
                "migration applied"
            );
            applied.push(m.version);
        }
        Ok(applied)
    }

    /// A transaction with the migration timeout, holding the migration lock.
    async fn begin_migration(&self) -> Result<crate::Tx, StoreError> {
        let mut tx = self.begin().await?;
        tx.set_statement_timeout(MIGRATION_TIMEOUT).await?;
        if self.kind() == StoreKind::Postgres {
            tx.advisory_xact_lock(MIGRATION_LOCK_KEY).await?;
        }
        Ok(tx)
    }
}
