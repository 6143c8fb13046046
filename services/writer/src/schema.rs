//! The `fleet_results` table: its migrations and how a `write` job becomes a row.
//!
//! Timestamps are `BIGINT` unix milliseconds (fleet-store's portable choice).

use chrono::{DateTime, Utc};
use fleet_runtime::JobEnvelope;
use fleet_store::{Migration, Value};
use serde_json::{Map, Value as Json};

/// The component name under which the writer's migrations are recorded.
pub const COMPONENT: &str = "writer";

/// The writer's migrations, in order; never edit an applied one.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "create fleet_results",
    sql: "CREATE TABLE fleet_results (
            job_id TEXT PRIMARY KEY,
            pipeline_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            outcome TEXT NOT NULL,
            analysis JSONB,
            failed_analyzers JSONB NOT NULL,
            summary TEXT,
            summary_provider TEXT,
            summary_fallback BOOLEAN,
            summary_fallback_reason TEXT,
            summary_meta JSONB,
            skipped_stages JSONB NOT NULL,
            attempts BIGINT NOT NULL,
            payload JSONB NOT NULL,
            worker_id TEXT NOT NULL,
            job_created_at BIGINT NOT NULL,
            deadline_at BIGINT,
            written_at BIGINT NOT NULL
        );
        CREATE INDEX fleet_results_pipeline_item ON fleet_results (pipeline_id, item_id);
        CREATE INDEX fleet_results_written_at ON fleet_results (written_at)",
}];

/// Column order of [`ResultRow::values`] and the INSERT.
pub const COLUMNS: &[&str] = &[
    "job_id",
    "pipeline_id",
    "item_id",
    "stage",
    "outcome",
    "analysis",
    "failed_analyzers",
    "summary",
    "summary_provider",
    "summary_fallback",
    "summary_fallback_reason",
    "summary_meta",
    "skipped_stages",
    "attempts",
    "payload",
    "worker_id",
    "job_created_at",
    "deadline_at",
    "written_at",
];

/// `complete`: analysed and summarized, nothing skipped; `partial`: a stage was skipped,
/// an analyzer failed, or the analysis or summary is missing.
pub const OUTCOMES: [&str; 2] = ["complete", "partial"];

/// One `fleet_results` row built from a `write` job.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// The write job's id (primary key: first write wins).
    pub job_id: String,
    /// Values in [`COLUMNS`] order.
    pub values: Vec<Value>,
}

/// Replaces NUL characters (PostgreSQL text and JSONB reject them) in every string.
fn sanitize(v: &mut Json) {
    match v {
        Json::String(s) if s.contains('\0') => *s = s.replace('\0', "\u{FFFD}"),
        Json::Array(a) => a.iter_mut().for_each(sanitize),
        Json::Object(m) => m.values_mut().for_each(sanitize),
        _ => {}
    }
}

fn clean(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

impl ResultRow {
    /// Builds the row: `analysis` and `summary` get their own columns (chunk texts are
    /// dropped from the stored analysis: offsets remain and the text is in `payload.text`);
    /// `payload` keeps everything else (text, metadata, `skipped_stages`, unknown fields).
    pub fn from_job(
        job: &JobEnvelope,
        attempt: u32,
        worker_id: &str,
        now: DateTime<Utc>,
    ) -> ResultRow {
        let mut payload = match &job.payload {
            Json::Object(m) => m.clone(),
            other => {
                let mut m = Map::new();
                m.insert("input".into(), other.clone());
                m
            }
        };
        sanitize_map(&mut payload);
        let mut analysis = payload.remove("analysis").filter(|a| !a.is_null());
        if let Some(chunks) = analysis
            .as_mut()
            .and_then(|a| a.get_mut("chunks"))
            .and_then(Json::as_array_mut)
        {
            for c in chunks.iter_mut().filter_map(Json::as_object_mut) {
                c.remove("text");
            }
        }
        let failed_analyzers = analysis
            .as_ref()
            .and_then(|a| a.get("failed_analyzers"))
            .filter(|f| f.is_array())
            .cloned()
            .unwrap_or_else(|| Json::Array(Vec::new()));
        let summary = payload.remove("summary").filter(|s| !s.is_null());
        let (text, provider, fallback, reason, meta) = match summary {
            Some(Json::String(s)) => (Some(s), None, None, None, None),
            Some(Json::Object(mut m)) => {
                let text = m.remove("text").and_then(|t| t.as_str().map(str::to_owned));
                let provider = m.get("provider").and_then(Json::as_str).map(str::to_owned);
                let fallback = m.get("fallback").and_then(Json::as_bool);
                let reason = m
                    .get("fallback_reason")
                    .and_then(Json::as_str)
                    .map(str::to_owned);
                (text, provider, fallback, reason, Some(Json::Object(m)))
            }
            Some(other) => (None, None, None, None, Some(other)),
            None => (None, None, None, None, None),
        };
        let skipped = payload
            .get("skipped_stages")
            .filter(|s| s.is_array())
            .cloned()
            .unwrap_or_else(|| Json::Array(Vec::new()));
        let is_empty = |j: &Json| j.as_array().is_none_or(Vec::is_empty);
        let complete = is_empty(&skipped)
            && is_empty(&failed_analyzers)
            && analysis.is_some()
            && text.is_some();
        let outcome = OUTCOMES[usize::from(!complete)];
        let values = vec![
            Value::Text(clean(&job.job_id)),
            Value::Text(clean(&job.pipeline_id)),
            Value::Text(clean(&job.item_id)),
            Value::Text(clean(&job.stage)),
            Value::Text(outcome.into()),
            analysis.map_or(Value::Null, Value::Json),
            Value::Json(failed_analyzers),
            text.into(),
            provider.into(),
            fallback.into(),
            reason.into(),
            meta.map_or(Value::Null, Value::Json),
            Value::Json(skipped),
            Value::Int(i64::from(attempt)),
            Value::Json(Json::Object(payload)),
            Value::Text(worker_id.to_owned()),
            Value::Time(job.created_at),
            job.deadline_at.into(),
            Value::Time(now),
        ];
        ResultRow {
            job_id: clean(&job.job_id),
            values,
        }
    }
}

fn sanitize_map(m: &mut Map<String, Json>) {
    m.values_mut().for_each(sanitize);
}

/// The multi-row, first-write-wins INSERT for `rows` rows, returning the inserted ids.
pub fn insert_sql(rows: usize) -> String {
    let n = COLUMNS.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let ps: Vec<String> = (1..=n).map(|c| format!("${}", r * n + c)).collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO fleet_results ({}) VALUES {} ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
        COLUMNS.join(", "),
        tuples.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_item_is_complete_and_a_skipped_one_partial() {
        let mut job = JobEnvelope::new(
            "p",
            "i",
            "write",
            json!({
                "text": "a\u{0}b",
                "analysis": {"words": 2, "chunks": [{"index": 0, "start": 0, "end": 3, "text": "a b"}],
                             "failed_analyzers": []},
                "summary": {"text": "s", "provider": "extractive", "fallback": false,
                            "fallback_reason": null, "chunks": 1, "duration_ms": 3}
            }),
        );
        let row = ResultRow::from_job(&job, 2, "w1", Utc::now());
        assert_eq!(row.values.len(), COLUMNS.len());
        let col = |name: &str| &row.values[COLUMNS.iter().position(|c| *c == name).unwrap_or(0)];
        assert_eq!(col("outcome"), &Value::Text("complete".into()));
        assert_eq!(col("summary"), &Value::Text("s".into()));
        assert_eq!(col("summary_provider"), &Value::Text("extractive".into()));
        assert_eq!(col("summary_fallback"), &Value::Bool(false));
        assert_eq!(col("attempts"), &Value::Int(2));
        assert_eq!(
            col("analysis"),
            &Value::Json(
                json!({"words": 2, "chunks": [{"index": 0, "start": 0, "end": 3}], "failed_analyzers": []})
            )
        );
        assert_eq!(col("payload"), &Value::Json(json!({"text": "a\u{FFFD}b"})));

        job.payload = json!({"text": "t", "skipped_stages": [{"stage": "summarize", "reason": "attempts_exhausted"}]});
        let row = ResultRow::from_job(&job, 1, "w1", Utc::now());
        assert_eq!(row.values[4], Value::Text("partial".into()));
        assert_eq!(row.values[7], Value::Null);
    }

    #[test]
    fn insert_numbers_placeholders_per_row() {
        let sql = insert_sql(2);
        assert!(sql.contains("($1, $2,"));
        assert!(sql.contains(&format!("${})", 2 * COLUMNS.len())));
        assert!(sql.ends_with("ON CONFLICT (job_id) DO NOTHING RETURNING job_id"));
    }
}
