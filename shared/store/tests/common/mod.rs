//! Fixtures for the store tests: a PostgreSQL schema per test (dropped at the
//! end) and SQLite temp files.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use fleet_store::{Store, StoreOptions};

/// Options with short timeouts for tests.
pub fn opts() -> StoreOptions {
    StoreOptions {
        statement_timeout: Duration::from_secs(5),
        checkout_timeout: Duration::from_secs(5),
        pool_size: 4,
        ca_file: None,
    }
}

/// A unique PostgreSQL schema; `url` sets every session's search_path to it.
pub struct Schema {
    /// The schema name.
    pub name: String,
    /// A URL whose sessions use the schema.
    pub url: String,
    admin: Store,
}

impl Schema {
    /// Creates the schema; panics loudly when PostgreSQL is unreachable.
    pub async fn create(tag: &str) -> Schema {
        let base = fleet_test_support::postgres_url();
        let admin = Store::connect(Some(&base), std::path::Path::new("unused"), opts())
            .await
            .unwrap();
        if let Err(e) = admin.ping().await {
            panic!(
                "PostgreSQL at {base} is unreachable ({e}); start it (scripts/services.sh) or set FLEET_TEST_DATABASE_URL"
            );
        }
        let name = fleet_test_support::unique_prefix(tag).replace('-', "_");
        admin
            .execute(&format!("CREATE SCHEMA {name}"), &[])
            .await
            .unwrap();
        let url = fleet_store::pg_url_with_schema(&base, &name);
        Schema { name, url, admin }
    }

    /// A store whose sessions use this schema.
    pub async fn store(&self, opts: StoreOptions) -> Store {
        Store::connect(Some(&self.url), std::path::Path::new("unused"), opts)
            .await
            .unwrap()
    }

    /// Drops the schema and everything in it.
    pub async fn drop(self) {
        self.admin
            .execute(&format!("DROP SCHEMA {} CASCADE", self.name), &[])
            .await
            .unwrap();
    }
}

/// A fresh SQLite file path in a unique temp directory (removed by [`cleanup_sqlite`]).
pub fn sqlite_path(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .join(fleet_test_support::unique_prefix(tag))
        .join("fleet.sqlite")
}

/// Removes the temp directory of a [`sqlite_path`].
pub fn cleanup_sqlite(path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
