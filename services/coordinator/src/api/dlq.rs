//! The dead-letter archive API: `GET /v1/dlq`, `GET /v1/dlq/{id}`,
//! `POST /v1/dlq/replay` (a new pipeline `replay_of` the old one, items from
//! their failed stage on) and `POST /v1/dlq/purge`.
//!
//! A selection is never empty by accident: an empty or blank filter value is a
//! 400 (it used to mean "no filter" and select the whole archive), and purging
//! everything takes an explicit `all: true`. Replay is idempotent: the new
//! pipeline's id is the request's `Idempotency-Key`, or else derived from the
//! dead letters it replays, so a repeated or concurrent request makes one pipeline.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use fleet_protocol::{RouteStep, decode_job};
use fleet_store::{Row, Value, params};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::plan::{NewItem, NewPipeline, StageLimits, canonical_hash, check_known_stages};
use crate::report::rfc3339;
use crate::submit::{Submitted, check_name, store_pipeline};

/// Largest page of `GET /v1/dlq`.
const MAX_PAGE: i64 = 1000;

/// Filters shared by list, replay and purge.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Dead letters by archive id.
    #[serde(default)]
    pub(crate) ids: Option<Vec<i64>>,
    /// Of one pipeline.
    pub(crate) pipeline_id: Option<String>,
    /// Of one stage.
    pub(crate) stage: Option<String>,
    /// With one reason.
    pub(crate) reason: Option<String>,
    /// Page size (list).
    pub(crate) limit: Option<i64>,
    /// Only ids below this (list paging).
    pub(crate) after: Option<i64>,
    /// Report what would happen without doing it.
    #[serde(default)]
    pub(crate) dry_run: bool,
    /// Select every dead letter (purge only; the only way to purge without a filter).
    #[serde(default)]
    pub(crate) all: bool,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.ids.as_ref().is_none_or(Vec::is_empty)
            && self.pipeline_id.is_none()
            && self.stage.is_none()
            && self.reason.is_none()
    }

    /// Refuses empty or blank values: they would silently widen the selection.
    fn check_values(&self) -> Result<(), ApiError> {
        if self.ids.as_ref().is_some_and(Vec::is_empty) {
            return Err(ApiError::bad_request(
                "`ids` is empty",
                "list archive ids, or leave `ids` out and filter by pipeline_id, stage or reason",
            ));
        }
        for (name, v) in [
            ("pipeline_id", &self.pipeline_id),
            ("stage", &self.stage),
            ("reason", &self.reason),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(ApiError::bad_request(
                    format!("the `{name}` filter is empty"),
                    format!(
                        "give `{name}` a value or leave it out (an empty filter selects nothing, never everything)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// ` AND …` conditions and their parameters.
    fn sql(&self, args: &mut Vec<Value>) -> String {
        let mut sql = String::new();
        if let Some(ids) = self.ids.as_ref().filter(|v| !v.is_empty()) {
            let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            sql.push_str(&format!(" AND id IN ({list})"));
        }
        for (col, v) in [
            ("pipeline_id", &self.pipeline_id),
            ("stage", &self.stage),
            ("reason", &self.reason),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                args.push(v.into());
                sql.push_str(&format!(" AND {col} = ${}", args.len()));
            }
        }
        if let Some(after) = self.after {
            args.push(after.into());
            sql.push_str(&format!(" AND id < ${}", args.len()));
        }
        sql
    }
}

const COLUMNS: &str = "id, job_id, pipeline_id, item_id, stage, reason, last_error_kind, last_error, \
                       attempts, worker_id, at, replayed_in";

fn summary(r: &Row) -> Result<serde_json::Value, ApiError> {
    Ok(json!({
        "id": r.get::<i64>("id")?,
        "job_id": r.get::<Option<String>>("job_id")?,
        "pipeline_id": r.get::<Option<String>>("pipeline_id")?,
        "item_id": r.get::<Option<String>>("item_id")?,
        "stage": r.get::<String>("stage")?,
        "reason": r.get::<String>("reason")?,
        "last_error_kind": r.get::<Option<String>>("last_error_kind")?,
        "last_error": r.get::<String>("last_error")?,
        "attempts": r.get::<i64>("attempts")?,
        "worker_id": r.get::<String>("worker_id")?,
        "at": rfc3339(r.get("at")?),
        "replayed_in": r.get::<Option<String>>("replayed_in")?,
    }))
}

/// `GET /v1/dlq?pipeline_id=&stage=&reason=&limit=&after=`: newest first.
pub async fn list(
    State(app): State<App>,
    Query(f): Query<Filter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    f.check_values()?;
    let limit = f.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let mut args = Vec::new();
    let cond = f.sql(&mut args);
    args.push((limit + 1).into());
    let sql = format!(
        "SELECT {COLUMNS} FROM coord_dead_letters WHERE 1 = 1{cond} ORDER BY id DESC LIMIT ${}",
        args.len()
    );
    let rows = app.store.query(&sql, &args).await?;
    let more = rows.len() as i64 > limit;
    let out = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(summary)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if more {
        out.last().and_then(|l| l["id"].as_i64())
    } else {
        None
    };
    Ok(Json(json!({"dead_letters": out, "next": next})))
}

/// `GET /v1/dlq/{id}`: the summary plus headers and body.
pub async fn show(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    // Parsed here, not by the extractor, so a bad id is a JSON 400 like every other error.
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            format!("`{id}` is not a dead-letter id"),
            "dead-letter ids are positive integers; list them with GET /v1/dlq",
        )
    })?;
    let row = app
        .store
        .query_opt(
            &format!("SELECT {COLUMNS}, body, body_encoding, headers FROM coord_dead_letters WHERE id = $1"),
            params![id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("dlq entrie", &id.to_string()))?;
    let mut out = summary(&row)?;
    let body: String = row.get("body")?;
    let encoding: String = row.get("body_encoding")?;
    out["body_encoding"] = encoding.clone().into();
    out["body"] = if encoding == "utf8" {
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body))
    } else {
        body.into()
    };
    out["headers"] = row.get::<serde_json::Value>("headers")?;
    Ok(Json(out))
}

/// Checks that `f` selects something on purpose; `all: true` is allowed for purge only.
fn need_filter(f: &Filter, purge: bool) -> Result<(), ApiError> {
    f.check_values()?;
    match (f.all, f.is_empty()) {
        (true, _) if !purge => Err(ApiError::bad_request(
            "`all` applies to purge only",
            "select the dead letters to replay with `ids` or a `pipeline_id`",
        )),
        (true, false) => Err(ApiError::bad_request(
            "`all: true` and a filter were both given",
            "send `all: true` alone to purge the whole archive, or only the filter",
        )),
        (false, true) if purge => Err(ApiError::bad_request(
            "no dead letters selected",
            "give `ids` or a filter (`pipeline_id`, `stage`, `reason`); to purge the whole archive send `all: true`",
        )),
        (false, true) => Err(ApiError::bad_request(
            "no dead letters selected",
            "give `ids`, or a `pipeline_id` (optionally with `stage` and `reason`)",
        )),
        _ => Ok(()),
    }
}

/// The request's `Idempotency-Key`, checked like a pipeline id (it becomes one).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().map_err(|_| {
        ApiError::bad_request(
            "the Idempotency-Key header is not text",
            "use letters, digits, - and _",
        )
    })?;
    check_name("Idempotency-Key", key)?;
    Ok(Some(key.to_owned()))
}

/// The replay an earlier request with `key` made, as a replay answer.
async fn earlier_replay(app: &App, key: &str) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(row) = app
        .store
        .query_opt(
            "SELECT replay_of FROM coord_pipelines WHERE pipeline_id = $1",
            params![key],
        )
        .await?
    else {
        return Ok(None);
    };
    let Some(origin) = row.get::<Option<String>>("replay_of")? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Idempotency-Key `{key}` names a pipeline that is not a replay"),
            "use a new Idempotency-Key for this replay",
        ));
    };
    let items = app
        .store
        .query(
            "SELECT item_id FROM coord_items WHERE pipeline_id = $1 ORDER BY item_id",
            params![key],
        )
        .await?
        .iter()
        .map(|r| r.get::<String>("item_id"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(json!({
        "pipeline_id": key, "replay_of": origin, "items": items, "skipped": [],
        "dry_run": false, "created": false,
    })))
}

/// `POST /v1/dlq/replay` → `{pipeline_id, replay_of, items, skipped, dry_run, created}`.
pub async fn replay(
    State(app): State<App>,
    headers: HeaderMap,
    Json(f): Json<Filter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    need_filter(&f, false)?;
    let key = idempotency_key(&headers)?;
    if let Some(k) = key.as_deref()
        && !f.dry_run
        && let Some(found) = earlier_replay(&app, k).await?
    {
        return Ok(Json(found));
    }
    let mut args = Vec::new();
    let cond = f.sql(&mut args);
    let sql = format!(
        "SELECT id, pipeline_id, item_id, body, body_encoding FROM coord_dead_letters \
         WHERE replayed_in IS NULL{cond} ORDER BY id"
    );
    let rows = app.store.query(&sql, &args).await?;
    let mut origin: Option<String> = None;
    let mut items: BTreeMap<String, NewItem> = BTreeMap::new();
    let mut stages: BTreeMap<String, StageLimits> = BTreeMap::new();
    let mut used = Vec::new();
    let mut skipped = Vec::new();
    for r in &rows {
        let id: i64 = r.get("id")?;
        let body: String = r.get("body")?;
        let enc: String = r.get("body_encoding")?;
        let job = (enc == "utf8")
            .then(|| decode_job(body.as_bytes(), usize::MAX).ok())
            .flatten();
        let Some(job) = job else {
            skipped.push(json!({"id": id, "why": "the body is not a job envelope"}));
            continue;
        };
        match &origin {
            None => origin = Some(job.pipeline_id.clone()),
            Some(o) if *o != job.pipeline_id => {
                return Err(ApiError::bad_request(
                    "the selected dead letters come from more than one pipeline",
                    "replay one pipeline at a time: add `pipeline_id` to the request",
                ));
            }
            Some(_) => {}
        }
        let mut route = vec![RouteStep {
            stage: job.stage.clone(),
            required: job.required,
        }];
        route.extend(job.route.iter().cloned());
        if let Err(e) = check_known_stages(&route, &app.limits.default_route) {
            skipped.push(json!({"id": id, "why": e.message}));
            continue;
        }
        for s in &route {
            stages.entry(s.stage.clone()).or_insert(StageLimits {
                timeout_ms: job.timeout_ms,
                max_attempts: job.max_attempts,
            });
        }
        used.push(id);
        items.insert(
            job.item_id.clone(),
            NewItem {
                item_id: job.item_id.clone(),
                route,
                payload: job.payload.clone(),
            },
        );
    }
    let item_ids: Vec<&String> = items.keys().collect();
    let Some(origin) = origin else {
        return Ok(Json(
            json!({"pipeline_id": null, "items": item_ids, "skipped": skipped, "dry_run": f.dry_run}),
        ));
    };
    if f.dry_run {
        return Ok(Json(
            json!({"pipeline_id": null, "replay_of": origin, "items": item_ids, "skipped": skipped, "dry_run": true}),
        ));
    }
    app.replays.take().map_err(|wait| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many replays: at most {} a minute per coordinator",
                crate::replay_limit::REPLAYS_PER_MINUTE
            ),
            format!(
                "retry in {}s; a dry run is not limited",
                wait.as_secs().max(1)
            ),
        )
    })?;
    let body_hash = canonical_hash(&json!({"replay_of": origin, "dead_letters": used}));
    // Without a key the id comes from what is replayed: a retried or concurrent request
    // for the same dead letters finds the same pipeline instead of making a second one.
    let pipeline_id = key.unwrap_or_else(|| format!("replay-{}", &body_hash[..32]));
    let new = NewPipeline {
        body_hash,
        pipeline_id: pipeline_id.clone(),
        deadline_at: None,
        replay_of: Some(origin.clone()),
        stages,
        items: items.values().cloned().collect(),
    };
    let outcome = store_pipeline(&app.store, &new).await.map_err(|e| {
        if e.status == StatusCode::CONFLICT {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("Idempotency-Key `{pipeline_id}` was used for another replay or pipeline"),
                "use a new Idempotency-Key for a different selection",
            )
        } else {
            e
        }
    })?;
    app.relay.notify_one();
    let list = used
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    app.store
        .execute(
            &format!("UPDATE coord_dead_letters SET replayed_in = $1 WHERE id IN ({list})"),
            params![pipeline_id.as_str()],
        )
        .await?;
    Ok(Json(
        json!({"pipeline_id": pipeline_id, "replay_of": origin, "items": item_ids, "skipped": skipped,
               "dry_run": false, "created": outcome == Submitted::Created}),
    ))
}

/// `POST /v1/dlq/purge` → `{purged, dry_run}`.
pub async fn purge(
    State(app): State<App>,
    Json(f): Json<Filter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    need_filter(&f, true)?;
    let mut args = Vec::new();
    let cond = f.sql(&mut args);
    let n: i64 = if f.dry_run {
        app.store
            .query_one(
                &format!("SELECT COUNT(*) AS n FROM coord_dead_letters WHERE 1 = 1{cond}"),
                &args,
            )
            .await?
            .get("n")?
    } else {
        let n = app
            .store
            .execute(
                &format!("DELETE FROM coord_dead_letters WHERE 1 = 1{cond}"),
                &args,
            )
            .await?;
        i64::try_from(n).unwrap_or(i64::MAX)
    };
    Ok(Json(json!({"purged": n, "dry_run": f.dry_run})))
}
