//! JSON Schemas of the wire types, generated from the Rust types.
//!
//! The checked-in copies live in `shared/protocol/schema/`; a test fails when
//! they are stale. Regenerate with `FLEET_BLESS=1 cargo test -p fleet-protocol`.

use crate::{DeadLetterInfo, EventBatch, ItemBatch, JobEnvelope, Submission};

/// `(file name, pretty JSON schema)` for every published wire type.
pub fn all() -> Vec<(&'static str, String)> {
    fn pretty(s: schemars::Schema) -> String {
        serde_json::to_string_pretty(&s).unwrap_or_default() + "\n"
    }
    vec![
        (
            "job-envelope.schema.json",
            pretty(schemars::schema_for!(JobEnvelope)),
        ),
        (
            "submission.schema.json",
            pretty(schemars::schema_for!(Submission)),
        ),
        (
            "item-batch.schema.json",
            pretty(schemars::schema_for!(ItemBatch)),
        ),
        (
            "event-batch.schema.json",
            pretty(schemars::schema_for!(EventBatch)),
        ),
        (
            "dead-letter.schema.json",
            pretty(schemars::schema_for!(DeadLetterInfo)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_schemas_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema");
        let bless = std::env::var_os("FLEET_BLESS").is_some();
        for (name, text) in super::all() {
            let path = dir.join(name);
            if bless {
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} is stale: run `FLEET_BLESS=1 cargo test -p fleet-protocol` and commit it",
                path.display()
            );
        }
    }
}
