//! Submitting a pipeline larger than one request body: the coordinator's
//! limits (`GET /v1/limits`), splitting the items into batches that fit, and
//! the open → append → seal sequence. Every step is idempotent on the server,
//! so re-running the same submit (or resuming one that broke off) is safe.

use fleet_protocol::{ItemBatch, Seal, Submission, SubmitItem};
use serde::Deserialize;

use crate::client::Client;

/// Body limit assumed when the coordinator does not publish its limits (older
/// versions): below its default 10 MiB, leaving room for headers and proxies.
pub const FALLBACK_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Share of the body limit a batch may use: JSON escaping is measured exactly,
/// but a proxy in between may count a little differently.
const BODY_SHARE_PERCENT: usize = 90;
/// Bytes of a batch body besides its items (`{"v":1,"items":[...]}`, with room to spare).
const BATCH_OVERHEAD: usize = 64;

/// What `GET /v1/limits` answers (fields this client needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    /// Largest request body the coordinator reads.
    pub max_body_bytes: usize,
}

/// The coordinator's limits, or the fallback when it predates `GET /v1/limits`.
pub async fn limits(client: &Client) -> anyhow::Result<Limits> {
    Ok(client
        .get_if_exists::<Limits>("/v1/limits")
        .await?
        .unwrap_or(Limits {
            max_body_bytes: FALLBACK_MAX_BODY_BYTES,
        }))
}

/// The request budget for a body limit of `max_body`.
pub fn budget(max_body: usize) -> usize {
    max_body / 100 * BODY_SHARE_PERCENT
}

/// Splits `items` into batches whose JSON body stays within `budget` bytes
/// (an item bigger than that alone goes alone: the server says why it is refused).
pub fn split(items: &[SubmitItem], budget: usize) -> Vec<&[SubmitItem]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, BATCH_OVERHEAD);
    for (i, it) in items.iter().enumerate() {
        let n = serde_json::to_vec(it).map_or(0, |v| v.len()) + 1;
        if i > start && size + n > budget {
            out.push(&items[start..i]);
            (start, size) = (i, BATCH_OVERHEAD);
        }
        size += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// The answer to opening a pipeline.
#[derive(Debug, Deserialize)]
struct Opened {
    pipeline_id: String,
    created: bool,
}

/// The answer to one batch.
#[derive(Debug, Deserialize)]
struct Added {
    accepted: usize,
}

/// The answer to a seal.
#[derive(Debug, Deserialize)]
struct SealedAnswer {
    state: String,
}

/// What a batched submission did.
#[derive(Debug, Clone)]
pub struct BatchedOutcome {
    /// The pipeline id.
    pub pipeline_id: String,
    /// Its state after the seal.
    pub state: String,
    /// True when this run created the pipeline.
    pub created: bool,
    /// Items this run added (0 when re-running a finished submission).
    pub added: usize,
    /// Requests the items took.
    pub batches: usize,
}

/// Submits `sub` as an open pipeline, its items in batches of at most `budget`
/// bytes, then seals it with the item count (so a lost batch cannot go unnoticed).
pub async fn submit(
    client: &Client,
    sub: &Submission,
    budget: usize,
) -> anyhow::Result<BatchedOutcome> {
    let mut head = sub.clone();
    head.items = Vec::new();
    head.open = true;
    let (_, opened): (_, Opened) = client.post("/v1/pipelines", &head, &[], None).await?;
    let id = crate::client::encode(&opened.pipeline_id);
    let batches = split(&sub.items, budget);
    let mut added = 0;
    for batch in &batches {
        let body = ItemBatch {
            v: fleet_protocol::PROTOCOL_VERSION,
            items: batch.to_vec(),
        };
        let (_, a): (_, Added) = client
            .post(&format!("/v1/pipelines/{id}/items"), &body, &[], None)
            .await?;
        added += a.accepted;
    }
    let seal = Seal {
        item_count: Some(sub.items.len() as u64),
    };
    let (_, sealed): (_, SealedAnswer) = client
        .post(&format!("/v1/pipelines/{id}/seal"), &seal, &[], None)
        .await?;
    Ok(BatchedOutcome {
        pipeline_id: opened.pipeline_id,
        state: sealed.state,
        created: opened.created,
        added,
        batches: batches.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, len: usize) -> SubmitItem {
        SubmitItem {
            item_id: id.into(),
            text: "x".repeat(len),
            metadata: serde_json::Value::Null,
        }
    }

    #[test]
    fn batches_fit_the_budget_and_keep_every_item_once() {
        let items: Vec<SubmitItem> = (0..100).map(|i| item(&format!("i{i}"), 1000)).collect();
        let batches = split(&items, 10_000);
        assert!(batches.len() > 10);
        for b in &batches {
            let body = serde_json::to_vec(&ItemBatch {
                v: 1,
                items: b.to_vec(),
            })
            .unwrap();
            assert!(body.len() <= 10_000, "{}", body.len());
        }
        let ids: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.iter().map(|i| i.item_id.as_str()))
            .collect();
        let want: Vec<String> = (0..100).map(|i| format!("i{i}")).collect();
        assert_eq!(ids, want);
        // An item bigger than the budget goes alone.
        let big = [item("a", 10), item("big", 50_000), item("b", 10)];
        assert_eq!(
            split(&big, 10_000)
                .iter()
                .map(|b| b.len())
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
        assert!(split(&[], 10).is_empty());
    }
}
