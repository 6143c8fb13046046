//! Chunking a document's prose into pieces an LLM can take: whole paragraphs
//! where they fit, else whole sentences, else (a single sentence too long for a
//! chunk) a cut at whitespace. A chunk never starts mid-sentence otherwise, and
//! a heading's section starts a new chunk where the chunk before is at least a
//! quarter full. Sizes are in tokens of the configured model's encoding
//! (`tiktoken-rs`) or, the fallback, in characters.

use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

use crate::text::{paragraph_spans, sentence_spans};

/// Default chunk bound in characters: fits comfortably in a small model's context.
pub const DEFAULT_CHUNK_CHARS: usize = 4000;
/// Default model whose encoding counts tokens when chunks are sized in tokens.
pub const DEFAULT_CHUNK_MODEL: &str = "gpt-4o";
/// A section starts a new chunk only when the current one holds at least
/// `max / SECTION_MIN_FILL_DIV`: a chunk per tiny section would be an LLM call each.
const SECTION_MIN_FILL_DIV: usize = 4;

/// One chunk: byte offsets into the chunked text and the text itself.
///
/// Only the offsets go on the wire: a copy of every chunk would double the
/// payload, so an item near the message limit could not reach the next stage.
/// Readers slice the prose (`analysis.chunk_basis`) by `start..end`.
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

/// How chunk sizes are measured.
#[derive(Clone)]
pub enum Measure {
    /// Unicode scalar values.
    Chars,
    /// Tokens of a BPE encoding (the model's).
    Tokens(&'static CoreBPE),
}

impl std::fmt::Debug for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Measure::Chars => f.write_str("Chars"),
            Measure::Tokens(_) => f.write_str("Tokens"),
        }
    }
}

/// The bound of a chunk.
#[derive(Debug, Clone)]
pub struct ChunkSize {
    /// Largest chunk, in units of `measure` (at least 1).
    pub max: usize,
    /// What `max` counts.
    pub measure: Measure,
}

impl Default for ChunkSize {
    fn default() -> Self {
        ChunkSize::chars(DEFAULT_CHUNK_CHARS)
    }
}

impl ChunkSize {
    /// Chunks of at most `max` characters.
    pub fn chars(max: usize) -> ChunkSize {
        ChunkSize {
            max: max.max(1),
            measure: Measure::Chars,
        }
    }

    /// Chunks of at most `max` tokens of `model`'s encoding (e.g. `gpt-4o`, `gpt-4`).
    pub fn tokens(max: usize, model: &str) -> Result<ChunkSize, String> {
        let bpe = tiktoken_rs::bpe_for_model(model).map_err(|_| {
            format!(
                "FLEET_CHUNK_MODEL `{model}` has no known tokenizer: name an OpenAI model \
                 (e.g. gpt-4o, gpt-4, gpt-3.5-turbo) whose encoding approximates yours, or unset \
                 FLEET_CHUNK_TOKENS to size chunks in characters (FLEET_CHUNK_CHARS)"
            )
        })?;
        Ok(ChunkSize {
            max: max.max(1),
            measure: Measure::Tokens(bpe),
        })
    }

    /// Tokens when `tokens` is set, else `chars` characters.
    pub fn from_settings(
        chars: usize,
        tokens: Option<usize>,
        model: &str,
    ) -> Result<ChunkSize, String> {
        match tokens {
            Some(t) => ChunkSize::tokens(t, model),
            None => Ok(ChunkSize::chars(chars)),
        }
    }

    /// The size of `s` in this measure.
    pub fn len(&self, s: &str) -> usize {
        match &self.measure {
            Measure::Chars => s.chars().count(),
            Measure::Tokens(bpe) => bpe.encode_ordinary(s).len(),
        }
    }
}

/// Splits `text` into chunks of at most `max_chars` characters (at least 1) each.
pub fn chunk_text(text: &str, max_chars: usize) -> Vec<Chunk> {
    chunk_prose(text, &[], &ChunkSize::chars(max_chars))
}

/// Splits `prose` into chunks within `size`; `sections` are offsets where a heading's
/// section begins (see the module doc).
pub fn chunk_prose(prose: &str, sections: &[usize], size: &ChunkSize) -> Vec<Chunk> {
    let max = size.max;
    // Units with their sizes, measured once each (a token count is not cheap).
    let mut units: Vec<(usize, usize, usize)> = Vec::new();
    for (ps, pe) in paragraph_spans(prose) {
        let n = size.len(&prose[ps..pe]);
        if n <= max {
            units.push((ps, pe, n));
            continue;
        }
        for (ss, se) in sentence_spans(&prose[ps..pe]) {
            hard_split(prose, ps + ss, ps + se, size, &mut units);
        }
    }
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for (us, ue, n) in units {
        let section = sections.binary_search(&us).is_ok();
        match spans.last_mut() {
            Some((_, ce, cn))
                if !(section && *cn >= max / SECTION_MIN_FILL_DIV)
                    // The sum of the parts bounds the whole: a merged token at the seam
                    // only makes the real count smaller.
                    && *cn + size.len(&prose[*ce..us]) + n <= max =>
            {
                *cn += size.len(&prose[*ce..us]) + n;
                *ce = ue;
            }
            _ => spans.push((us, ue, n)),
        }
    }
    spans
        .into_iter()
        .enumerate()
        .map(|(index, (start, end, _))| Chunk {
            index,
            start,
            end,
            text: prose[start..end].to_owned(),
        })
        .collect()
}

/// Pushes `[start, end)` as units within `size`, cutting at the last whitespace that fits.
fn hard_split(
    text: &str,
    start: usize,
    end: usize,
    size: &ChunkSize,
    out: &mut Vec<(usize, usize, usize)>,
) {
    let mut s = start;
    while s < end {
        let rest = &text[s..end];
        let n = size.len(rest);
        if n <= size.max {
            out.push((s, end, n));
            return;
        }
        // The longest prefix within the bound, found by bisection over char boundaries.
        let bounds: Vec<usize> = rest
            .char_indices()
            .map(|(i, _)| i)
            .skip(1)
            .chain([rest.len()])
            .collect();
        let (mut lo, mut hi) = (0usize, bounds.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if size.len(&rest[..bounds[mid]]) <= size.max {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let limit = bounds[lo];
        let cut = rest[..limit]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        let piece = rest[..cut].trim_end();
        out.push((s, s + piece.len(), size.len(piece)));
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

    #[test]
    fn tokens_sections_and_markdown_prose() {
        use crate::document::{MediaType, parse};
        let md = "# One\n\nThe first section has a sentence. And another one here.\n\n\
                  ```\nlet code = 1;\n```\n\n# Two\n\nThe second section starts a chunk.\n";
        let doc = parse(md, MediaType::Markdown);
        let size = ChunkSize::tokens(14, "gpt-4o").expect("gpt-4o is known");
        let chunks = chunk_prose(&doc.prose, &doc.sections, &size);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "The first section has a sentence. And another one here.",
                "The second section starts a chunk."
            ]
        );
        for c in &chunks {
            assert!(size.len(&c.text) <= 14, "{c:?}");
            assert!(!c.text.contains("```") && !c.text.contains('#'));
        }
        assert!(ChunkSize::tokens(10, "no-such-model").is_err());
    }
}
