//! The built-in text analysis: size, words, sentences, reading time, a
//! stop-word language guess, RAKE keywords and bounded chunks. Pure CPU work:
//! the handler runs it through `ctx.blocking`.

use std::collections::HashMap;

use serde::Serialize;

use crate::chunk::{Chunk, ChunkSize, chunk_prose};
use crate::document::{Heading, MediaType, Skipped, parse};
pub use crate::text::guess_language;
use crate::text::{sentence_spans, stemmer, stopwords, words};

/// Average silent reading speed used for `reading_time_s`.
pub const DEFAULT_WORDS_PER_MINUTE: u32 = 230;
/// Keywords reported per item: enough to tag an item, few enough to read.
pub const DEFAULT_KEYWORDS: usize = 10;
/// The `chunk_basis` of chunks whose offsets index the parsed prose.
pub const CHUNK_BASIS_PROSE: &str = "prose";
/// Longest keyword phrase RAKE may return (longer candidates are usually clauses).
const MAX_PHRASE_WORDS: usize = 4;

/// Knobs of the built-in analysis.
#[derive(Debug, Clone)]
pub struct AnalysisOptions {
    /// Reading speed for `reading_time_s`.
    pub words_per_minute: u32,
    /// How many keywords to report.
    pub keywords: usize,
    /// Upper bound of a chunk (tokens of the model, or characters).
    pub chunk: ChunkSize,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            words_per_minute: DEFAULT_WORDS_PER_MINUTE,
            keywords: DEFAULT_KEYWORDS,
            chunk: ChunkSize::default(),
        }
    }
}

/// The built-in part of an item's analysis (the `analysis` object minus command analyzers).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextAnalysis {
    /// UTF-8 size.
    pub bytes: usize,
    /// Word tokens.
    pub words: usize,
    /// Sentences.
    pub sentences: usize,
    /// Estimated reading time in seconds.
    pub reading_time_s: u64,
    /// ISO 639-1 code of the guessed language, or `unknown`.
    pub language: String,
    /// Top keyword phrases, best first.
    pub keywords: Vec<String>,
    /// Bounded chunks of the prose on paragraph/sentence boundaries.
    pub chunks: Vec<Chunk>,
    /// What the chunks' offsets index: `prose` (the text as parsed for its media type;
    /// for plain text, the text itself).
    pub chunk_basis: &'static str,
    /// How the text was read (`text/plain`, `text/markdown`, `text/html`).
    pub media_type: &'static str,
    /// The document's headings, in order (omitted when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outline: Vec<Heading>,
    /// What was kept out of the prose (omitted for plain text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
}

/// Analyses `text` as plain text.
pub fn analyze(text: &str, opts: &AnalysisOptions) -> TextAnalysis {
    analyze_as(text, MediaType::Plain, opts)
}

/// Analyses `text` read as `media_type`: counts, language, keywords and chunks over
/// its prose (chunk offsets index the prose, which the summarizer re-parses).
pub fn analyze_as(text: &str, media_type: MediaType, opts: &AnalysisOptions) -> TextAnalysis {
    let doc = parse(text, media_type);
    let prose = doc.prose.as_str();
    let tokens = words(prose);
    let language = guess_language(prose);
    let wpm = u64::from(opts.words_per_minute.max(1));
    TextAnalysis {
        bytes: text.len(),
        words: tokens.len(),
        sentences: sentence_spans(prose).len(),
        reading_time_s: (tokens.len() as u64 * 60).div_ceil(wpm),
        keywords: keywords(prose, &language, opts.keywords),
        language,
        chunks: chunk_prose(prose, &doc.sections, &opts.chunk),
        chunk_basis: CHUNK_BASIS_PROSE,
        media_type: media_type.as_str(),
        outline: doc.outline,
        skipped: (media_type != MediaType::Plain).then_some(doc.skipped),
    }
}

/// RAKE: candidate phrases are runs of non-stop words between stop words and punctuation;
/// a word scores degree/frequency, a phrase the sum of its words. Ties keep first occurrence.
pub fn keywords(text: &str, language: &str, n: usize) -> Vec<String> {
    let stop = stopwords(language);
    let mut phrases: Vec<Vec<String>> = Vec::new();
    for (s, e) in sentence_spans(text) {
        for fragment in text[s..e].split(|c: char| ",;:()[]{}\"“”—–!?.".contains(c)) {
            let mut cur: Vec<String> = Vec::new();
            for w in words(fragment) {
                let useless = stop.contains(w.as_str())
                    || w.chars().count() < 3
                    || w.chars().all(|c| c.is_numeric());
                if useless {
                    if !cur.is_empty() {
                        phrases.push(std::mem::take(&mut cur));
                    }
                } else {
                    cur.push(w);
                }
            }
            if !cur.is_empty() {
                phrases.push(cur);
            }
        }
    }
    phrases.retain(|p| p.len() <= MAX_PHRASE_WORDS);
    let mut freq: HashMap<&str, f64> = HashMap::new();
    let mut degree: HashMap<&str, f64> = HashMap::new();
    for p in &phrases {
        for w in p {
            *freq.entry(w).or_default() += 1.0;
            *degree.entry(w).or_default() += p.len() as f64;
        }
    }
    // Phrases are grouped by their stems ("message queues" and "message queue" are one
    // keyword), shown as the group's most frequent surface form (ties: first seen).
    let stem = stemmer(language);
    let key = |p: &[String]| -> String {
        p.iter()
            .map(|w| stem.as_ref().map_or(w.clone(), |s| s.stem(w).into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    struct Group {
        score: f64,
        first: usize,
        count: usize,
        forms: Vec<(String, usize)>,
    }
    let mut groups: HashMap<String, Group> = HashMap::new();
    for (i, p) in phrases.iter().enumerate() {
        let score: f64 = p
            .iter()
            .map(|w| degree[w.as_str()] / freq[w.as_str()])
            .sum();
        let g = groups.entry(key(p)).or_insert(Group {
            score,
            first: i,
            count: 0,
            forms: Vec::new(),
        });
        g.count += 1;
        g.score = g.score.max(score);
        let phrase = p.join(" ");
        match g.forms.iter_mut().find(|(f, _)| *f == phrase) {
            Some((_, n)) => *n += 1,
            None => g.forms.push((phrase, 1)),
        }
    }
    let mut scored: Vec<(String, f64, usize)> = groups
        .into_values()
        .map(|g| {
            // Repetition is evidence: a phrase seen k times gets a mild boost.
            let score = g.score * (1.0 + (g.count as f64).ln());
            let best = g
                .forms
                .iter()
                .enumerate()
                .max_by(|(ia, a), (ib, b)| a.1.cmp(&b.1).then(ib.cmp(ia)))
                .map(|(_, f)| f.0.clone())
                .unwrap_or_default();
            (best, score, g.first)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)));
    scored.into_iter().take(n).map(|(p, _, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EN: &str = "The message queue delivers jobs to the worker fleet. \
        Each worker runs the job under a hard deadline, and the message queue keeps \
        the backlog when a worker is slow. Circuit breakers protect the database.";

    #[test]
    fn counts_and_reading_time() {
        let a = analyze(EN, &AnalysisOptions::default());
        assert_eq!(a.bytes, EN.len());
        assert_eq!(a.words, 35);
        assert_eq!(a.sentences, 3);
        assert_eq!(a.reading_time_s, (35 * 60_u64).div_ceil(230));
        assert_eq!(a.language, "en");
        assert_eq!(a.chunks.len(), 1);
        let empty = analyze("", &AnalysisOptions::default());
        assert_eq!(
            (empty.words, empty.sentences, empty.reading_time_s),
            (0, 0, 0)
        );
        assert_eq!(empty.language, "unknown");
        assert!(empty.keywords.is_empty() && empty.chunks.is_empty());
    }

    #[test]
    fn keywords_group_by_stem() {
        let t = "Message queues. A message queue. The message queues. Brokers.";
        assert_eq!(keywords(t, "en", 10), ["message queues", "brokers"]);
    }

    #[test]
    fn rake_keywords_are_deterministic_and_meaningful() {
        let k = keywords(EN, "en", 3);
        assert_eq!(k, keywords(EN, "en", 3));
        assert!(
            k.contains(&"message queue delivers jobs".to_owned())
                || k.contains(&"message queue".to_owned()),
            "{k:?}"
        );
        assert!(k.len() <= 3);
    }
}
