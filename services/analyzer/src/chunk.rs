//! Chunking an item into bounded pieces for the summarizer: whole paragraphs
//! where they fit, else sentences, else a hard cut at whitespace.

use serde::{Deserialize, Serialize};

use crate::text::sentence_spans;

/// Default chunk bound in characters: fits comfortably in a small model's context.
pub const DEFAULT_CHUNK_CHARS: usize = 4000;

/// One chunk: byte offsets into the item text and the text itself.
///
/// Only the offsets go on the wire: a copy of every chunk would double the
/// payload, so an item near the message limit could not reach the next stage.
/// Readers slice `payload.text[start..end]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position in the item, from 0.
    pub index: usize,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// `text[start..end]` (not serialized: see above).
    #[serde(skip_serializing, default)]
    pub text: String,
}

/// Splits `text` into chunks of at most `max_chars` characters (at least 1) each.
pub fn chunk_text(text: &str, max_chars: usize) -> Vec<Chunk> {
    let max = max_chars.max(1);
    let mut units = Vec::new();
    for (ps, pe) in paragraph_spans(text) {
        if chars(&text[ps..pe]) <= max {
            units.push((ps, pe));
            continue;
        }
        for (ss, se) in sentence_spans(&text[ps..pe]) {
            hard_split(text, ps + ss, ps + se, max, &mut units);
        }
    }
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (us, ue) in units {
        match spans.last_mut() {
            Some((cs, ce)) if chars(&text[*cs..ue]) <= max => *ce = ue,
            _ => spans.push((us, ue)),
        }
    }
    spans
        .into_iter()
        .enumerate()
        .map(|(index, (start, end))| Chunk {
            index,
            start,
            end,
            text: text[start..end].to_owned(),
        })
        .collect()
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Byte spans of the paragraphs (separated by blank lines), trimmed.
fn paragraph_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut last_content_end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if let Some(s) = start.take() {
                out.push((s, last_content_end));
            }
        } else {
            let lead = line.len() - line.trim_start().len();
            start.get_or_insert(offset + lead);
            last_content_end = offset + line.trim_end().len();
        }
        offset += line.len();
    }
    if let Some(s) = start {
        out.push((s, last_content_end));
    }
    out
}

/// Pushes `[start, end)` as units of at most `max` chars, cutting at the last whitespace.
fn hard_split(text: &str, start: usize, end: usize, max: usize, out: &mut Vec<(usize, usize)>) {
    let mut s = start;
    while s < end {
        let rest = &text[s..end];
        if chars(rest) <= max {
            out.push((s, end));
            return;
        }
        let limit = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let cut = rest[..limit]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        out.push((s, s + rest[..cut].trim_end().len()));
        s += cut;
        s += text[s..end].len() - text[s..end].trim_start().len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max: usize) -> Vec<Chunk> {
        let chunks = chunk_text(text, max);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.index, i);
            assert_eq!(&text[c.start..c.end], c.text);
            assert!(
                c.text.chars().count() <= max,
                "chunk {i} too long: {:?}",
                c.text
            );
            assert!(!c.text.trim().is_empty());
        }
        chunks
    }

    #[test]
    fn packs_paragraphs_then_sentences_then_words() {
        let text = "First para one. Still first.\n\nSecond para here.\n\n\
                    A very long third paragraph sentence number one. And sentence two is here.";
        let all = check(text, 4000);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].text, text);
        let small = check(text, 50);
        assert_eq!(
            small[0].text,
            "First para one. Still first.\n\nSecond para here."
        );
        assert_eq!(
            small[1].text,
            "A very long third paragraph sentence number one."
        );
        assert_eq!(small[2].text, "And sentence two is here.");
        let tiny = check("averyveryverylongword and more words here", 10);
        assert!(tiny.len() >= 4);
        assert!(chunk_text("", 10).is_empty());
        assert!(chunk_text(" \n\n  ", 10).is_empty());
        check("ünïcödé ünïcödé ünïcödé ünïcödé", 7);
    }

    #[test]
    fn covers_every_word_in_order() {
        let text = "Alpha beta gamma. Delta epsilon zeta eta theta.\n\niota kappa lambda mu nu xi omicron pi rho sigma tau";
        let chunks = check(text, 12);
        let joined: Vec<String> = chunks
            .iter()
            .flat_map(|c| crate::text::words(&c.text))
            .collect();
        assert_eq!(joined, crate::text::words(text));
    }
}
