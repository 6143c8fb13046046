//! The largest item the API accepts, derived from what every stage can carry.
//!
//! An item is measured as the workers will see it: its text JSON-encoded
//! (escapes included) plus its metadata as JSON. Through the route its payload
//! only grows by bounded amounts, since the analyzer sends chunk offsets, not
//! chunk copies:
//!
//! * the job envelope and ids: under 4 KiB;
//! * the analysis: fixed fields and keywords (a few KiB), the document
//!   outline (headings, under 10 KiB: the analyzer's `MAX_OUTLINE_BYTES`) and
//!   `skipped` counts, plus one
//!   `{"index","start","end"}` entry (under [`CHUNK_ENTRY_BYTES`]) per chunk,
//!   and at most `2 * bytes / chunk_chars + 1` chunks (adjacent chunks are
//!   merged while they fit, so two neighbours always exceed `chunk_chars`);
//! * the summary (600 characters extractive; an LLM's answer is bounded by its
//!   max tokens).
//!
//! [`FIXED_RESERVE`] covers the fixed parts with room to spare; external command
//! analyzers (each capped at 64 KiB by default) need FLEET_MAX_MESSAGE_BYTES
//! raised by their caps, or a lower FLEET_MAX_ITEM_BYTES.

/// Bytes reserved for the envelope, the analysis' fixed part and the summary.
pub const FIXED_RESERVE: usize = 64 * 1024;
/// Upper bound of one serialized chunk entry (`{"index":…,"start":…,"end":…},`).
pub const CHUNK_ENTRY_BYTES: usize = 64;

/// The largest item (as [`item_size`] measures it) whose messages stay within
/// `max_message_bytes` at every stage, with chunks of `chunk_chars` characters.
pub fn derived_max_item_bytes(max_message_bytes: usize, chunk_chars: usize) -> usize {
    let room = max_message_bytes.saturating_sub(FIXED_RESERVE + CHUNK_ENTRY_BYTES);
    // item + CHUNK_ENTRY_BYTES * 2 * item / chunk_chars <= room
    let cc = chunk_chars.max(1) as u128;
    let per = 2 * CHUNK_ENTRY_BYTES as u128;
    usize::try_from(room as u128 * cc / (cc + per)).unwrap_or(usize::MAX)
}

/// An item's size as the limit counts it: the JSON-encoded text (escapes count)
/// plus the metadata's JSON (nothing when null).
pub fn item_size(text: &str, metadata: &serde_json::Value) -> usize {
    let text = serde_json::to_string(text).map_or(text.len(), |s| s.len().saturating_sub(2));
    let meta = if metadata.is_null() {
        0
    } else {
        metadata.to_string().len()
    };
    text + meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_limit_leaves_room_for_every_stage() {
        let l = derived_max_item_bytes(1024 * 1024, 4000);
        assert!(l > 900_000 && l < 1024 * 1024 - FIXED_RESERVE, "{l}");
        // Smaller chunks cost more entries.
        assert!(derived_max_item_bytes(1024 * 1024, 100) < l);
        assert_eq!(derived_max_item_bytes(1000, 4000), 0);
    }

    #[test]
    fn escapes_count() {
        assert_eq!(item_size("ab", &serde_json::Value::Null), 2);
        assert_eq!(item_size("a\n\"", &serde_json::Value::Null), 5);
        assert_eq!(item_size("\u{1}", &serde_json::json!({"k": 1})), 6 + 7);
    }
}
