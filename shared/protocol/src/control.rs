//! Control messages: cancellations, and the sync marker that ends a RabbitMQ re-broadcast.
//!
//! A cancellation is `{"v":1,"pipeline_id":"…"}` (the bare pipeline id is accepted too). On
//! RabbitMQ nothing is kept for late subscribers, so the coordinator re-broadcasts the active
//! cancellations every tick and then sends the sync marker `{"v":1,"sync":true}`: a worker that
//! has seen one marker has seen every cancellation active when it subscribed.

use serde::Deserialize;

/// The body of a cancellation of `pipeline_id`.
pub fn cancellation(pipeline_id: &str) -> Vec<u8> {
    serde_json::json!({"v": crate::PROTOCOL_VERSION, "pipeline_id": pipeline_id})
        .to_string()
        .into_bytes()
}

/// The body of the sync marker that follows each re-broadcast round.
pub fn sync_marker() -> Vec<u8> {
    serde_json::json!({"v": crate::PROTOCOL_VERSION, "sync": true})
        .to_string()
        .into_bytes()
}

/// The pipeline id in a control message: `{"pipeline_id": …}` or the raw text.
pub fn cancelled_pipeline(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Msg {
        pipeline_id: String,
    }
    if let Ok(m) = serde_json::from_slice::<Msg>(body) {
        return Some(m.pipeline_id);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    (!text.is_empty() && !text.starts_with('{')).then(|| text.to_owned())
}

/// True for the sync marker.
pub fn is_sync_marker(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Msg {
        #[serde(default)]
        sync: bool,
    }
    serde_json::from_slice::<Msg>(body).is_ok_and(|m| m.sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        assert_eq!(
            cancelled_pipeline(&cancellation("p1")).as_deref(),
            Some("p1")
        );
        assert_eq!(
            cancelled_pipeline(br#"{"pipeline_id":"p1","v":1}"#).as_deref(),
            Some("p1")
        );
        assert_eq!(cancelled_pipeline(b"p2").as_deref(), Some("p2"));
        assert_eq!(cancelled_pipeline(b"{bad"), None);
        assert_eq!(cancelled_pipeline(&sync_marker()), None);
        assert!(is_sync_marker(&sync_marker()));
        assert!(!is_sync_marker(&cancellation("p1")));
        assert!(!is_sync_marker(b"p3"));
    }
}
