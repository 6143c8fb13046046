//! The run's PostgreSQL schema: created empty before the writer starts (the writer migrates
//! its table into it through `search_path`), polled for written rows, checked at the end,
//! dropped on every path.

use std::time::Duration;

use anyhow::{Context as _, bail};
use fleet_store::{Store, StoreOptions};

/// Every statement of the benchmark's own connection is bounded by this.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A run-unique schema on the benchmark's database.
pub struct Schema {
    /// The schema name (`bench_mix_<8 hex>`).
    pub name: String,
    /// The database URL with `search_path` set to the schema (for the writer).
    pub url: String,
    admin: Store,
    scoped: Store,
}

fn opts() -> StoreOptions {
    StoreOptions {
        statement_timeout: STATEMENT_TIMEOUT,
        checkout_timeout: Duration::from_secs(10),
        pool_size: 2,
        ca_file: None,
    }
}

/// One written row, as the checks and latencies need it.
#[derive(Debug, Clone)]
pub struct Written {
    /// The item.
    pub item_id: String,
    /// The writer's clock when it built the row's batch (unix ms), just before INSERT+COMMIT.
    pub written_at_ms: i64,
    /// Characters in the stored summary (0 when absent).
    pub summary_chars: usize,
    /// `complete` or `partial`.
    pub outcome: String,
    /// Which provider summarized.
    pub provider: String,
}

impl Schema {
    /// Creates schema `name` on `base_url`.
    pub async fn create(base_url: &str, name: &str) -> anyhow::Result<Schema> {
        let admin = Store::connect(Some(base_url), "unused.sqlite".as_ref(), opts())
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {}",
                    fleet_store::redact(base_url)
                )
            })?;
        admin
            .execute(&format!("CREATE SCHEMA {name}"), &[])
            .await
            .with_context(|| format!("creating schema {name}"))?;
        let url = fleet_store::pg_url_with_schema(base_url, name);
        let scoped = Store::connect(Some(&url), "unused.sqlite".as_ref(), opts())
            .await
            .context("connecting to the run's schema")?;
        Ok(Schema {
            name: name.to_owned(),
            url,
            admin,
            scoped,
        })
    }

    /// Rows written so far (0 while the writer has not created its table yet).
    pub async fn count(&self) -> anyhow::Result<u64> {
        let exists = self
            .admin
            .query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'fleet_results'",
                &[self.name.clone().into()],
            )
            .await?;
        if exists.is_none() {
            return Ok(0);
        }
        let row = self
            .scoped
            .query_one("SELECT COUNT(*) FROM fleet_results", &[])
            .await?;
        Ok(u64::try_from(row.get::<i64>(0)?).unwrap_or(0))
    }

    /// When the row of `item` of `pipeline` was written (unix ms), if it is there.
    pub async fn written_at(&self, pipeline: &str, item: &str) -> anyhow::Result<Option<i64>> {
        let row = self
            .scoped
            .query_opt(
                "SELECT written_at FROM fleet_results WHERE pipeline_id = $1 AND item_id = $2",
                &[pipeline.into(), item.into()],
            )
            .await?;
        Ok(row.map(|r| r.get::<i64>(0)).transpose()?)
    }

    /// Every row of `pipeline`.
    pub async fn rows(&self, pipeline: &str) -> anyhow::Result<Vec<Written>> {
        let rows = self
            .scoped
            .query(
                "SELECT item_id, written_at, COALESCE(LENGTH(summary), 0)::BIGINT, outcome, \
                 COALESCE(summary_provider, '') FROM fleet_results WHERE pipeline_id = $1",
                &[pipeline.into()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Written {
                    item_id: r.get(0)?,
                    written_at_ms: r.get(1)?,
                    summary_chars: usize::try_from(r.get::<i64>(2)?).unwrap_or(0),
                    outcome: r.get(3)?,
                    provider: r.get(4)?,
                })
            })
            .collect::<Result<_, fleet_store::StoreError>>()
            .context("reading the written rows")
    }

    /// Drops the schema and everything in it.
    pub async fn drop_all(&self) -> anyhow::Result<()> {
        let n = self
            .admin
            .execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name), &[])
            .await;
        if let Err(e) = n {
            bail!("dropping schema {}: {e}", self.name);
        }
        Ok(())
    }
}
