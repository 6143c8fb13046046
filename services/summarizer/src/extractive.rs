//! The built-in `extractive` provider: TextRank over the item's sentences.
//! Deterministic and model-free; CPU-bound (up to quadratic in sentences), so the
//! handler runs it through `ctx.blocking`.

use std::collections::HashSet;

use fleet_analyzer::analysis::guess_language;
use fleet_analyzer::document::{MediaType, parse};
use fleet_analyzer::text::{sentences, stopwords, words};

/// Default summary length in sentences.
pub const DEFAULT_TARGET_SENTENCES: usize = 3;
/// Default summary length bound in characters (about a paragraph).
pub const DEFAULT_TARGET_CHARS: usize = 600;
/// TextRank damping factor (the PageRank value).
const DAMPING: f64 = 0.85;
/// Power iterations: scores are stable to ~1e-3 well before this on real text.
const ITERATIONS: usize = 20;
/// Sentences ranked at most (the first ones): the cap for very long documents. The graph
/// is sparse, but on one topic nearly every pair shares a word, so building it stays
/// quadratic; 1 500 sentences (about 150 KB of prose) bound that to a few tens of ms.
const MAX_RANKED_SENTENCES: usize = 1500;

/// Target length of an extractive summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractiveOptions {
    /// Most sentences in the summary.
    pub target_sentences: usize,
    /// Most characters in the summary (a single longer top sentence is cut at a word).
    pub target_chars: usize,
}

impl Default for ExtractiveOptions {
    fn default() -> Self {
        ExtractiveOptions {
            target_sentences: DEFAULT_TARGET_SENTENCES,
            target_chars: DEFAULT_TARGET_CHARS,
        }
    }
}

/// TextRank scores of `sentences`: similarity is the word overlap (non-stop words)
/// normalized by the log of both sentence lengths; 20 damped power iterations.
///
/// Cost: each sentence is tokenized and its words looked up once; the graph is built
/// from an inverted index (only pairs that share a word are visited) and kept sparse,
/// each edge already divided by its source's out-weight, so an iteration is one pass
/// over the edges rather than over all n² pairs. The scores are the same, bit for bit,
/// as the dense matrix's (same terms, summed in the same order).
pub fn rank(sentences: &[&str], stop: &HashSet<&str>) -> Vec<f64> {
    // Words as integer ids, each sentence a sorted set of ids.
    let mut ids: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    let bags: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| {
            let mut bag: Vec<u32> = words(s)
                .into_iter()
                .filter(|w| !stop.contains(w.as_str()))
                .map(|w| {
                    let next = ids.len() as u32;
                    *ids.entry(w).or_insert(next)
                })
                .collect();
            bag.sort_unstable();
            bag.dedup();
            bag
        })
        .collect();
    let n = bags.len();
    // Postings: the sentences of each word, ascending.
    let mut postings: Vec<Vec<u32>> = vec![Vec::new(); ids.len()];
    for (i, bag) in bags.iter().enumerate() {
        for &w in bag {
            postings[w as usize].push(i as u32);
        }
    }
    let log_len: Vec<f64> = bags.iter().map(|b| ((b.len() + 1) as f64).ln()).collect();
    // adj[i]: (j, weight of i–j) for every j sharing a word with i, j ascending.
    let mut adj: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    let mut shared = vec![0u32; n];
    let mut touched: Vec<u32> = Vec::new();
    for i in 0..n {
        for &w in &bags[i] {
            let p = &postings[w as usize];
            // Later sentences only: each pair once.
            let from = p.partition_point(|&j| j as usize <= i);
            for &j in &p[from..] {
                if shared[j as usize] == 0 {
                    touched.push(j);
                }
                shared[j as usize] += 1;
            }
        }
        touched.sort_unstable();
        for &j in &touched {
            let weight = f64::from(shared[j as usize]) / (log_len[i] + log_len[j as usize]);
            adj[i].push((j, weight));
            adj[j as usize].push((i as u32, weight));
            shared[j as usize] = 0;
        }
        touched.clear();
    }
    let out_sum: Vec<f64> = adj
        .iter()
        .map(|row| row.iter().map(|&(_, w)| w).sum())
        .collect();
    // The graph is symmetric: i's in-edges are its out-edges, each divided by the
    // out-weight of its source once here instead of in every iteration.
    let incoming: Vec<Vec<(u32, f64)>> = adj
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(j, w)| (j, w / out_sum[j as usize]))
                .collect()
        })
        .collect();
    // Position prior (as PositionRank): the random jump favours early sentences, weight
    // 1/sqrt(1 + i), scaled to mean 1. A document's opening usually says what it is about,
    // while a short sentence deep in a list can be "central" by word overlap alone.
    let prior: Vec<f64> = (0..n).map(|i| 1.0 / ((1 + i) as f64).sqrt()).collect();
    let mean = prior.iter().sum::<f64>() / n.max(1) as f64;
    let prior: Vec<f64> = prior.into_iter().map(|p| p / mean).collect();
    let mut scores = vec![1.0f64; n];
    let mut next = vec![0.0f64; n];
    for _ in 0..ITERATIONS {
        for (i, edges) in incoming.iter().enumerate() {
            let into: f64 = edges.iter().map(|&(j, w)| w * scores[j as usize]).sum();
            next[i] = (1.0 - DAMPING) * prior[i] + DAMPING * into;
        }
        std::mem::swap(&mut scores, &mut next);
    }
    scores
}

/// Summarizes `text` read as `media_type`: whole sentences of its prose (Markdown
/// and HTML markup, code blocks, tables and boilerplate never appear), in document order.
pub fn summarize_document(text: &str, media_type: MediaType, opts: &ExtractiveOptions) -> String {
    match media_type {
        MediaType::Plain => summarize(text, opts),
        _ => summarize(&parse(text, media_type).prose, opts),
    }
}

/// Summarizes `text`: the top-ranked sentences, in their original order, within the target.
pub fn summarize(text: &str, opts: &ExtractiveOptions) -> String {
    let all = sentences(text);
    let considered = &all[..all.len().min(MAX_RANKED_SENTENCES)];
    if considered.is_empty() || opts.target_sentences == 0 || opts.target_chars == 0 {
        return String::new();
    }
    let lang = guess_language(text);
    let scores = rank(considered, stopwords(&lang));
    let mut order: Vec<usize> = (0..considered.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    // Fragments (a lead-in ending in `:`, a word or two such as an inline `select!`)
    // read badly on their own: pick them only when the item has nothing else.
    if order.iter().any(|&i| !is_fragment(considered[i])) {
        order.retain(|&i| !is_fragment(considered[i]));
    }
    let mut picked: Vec<usize> = Vec::new();
    let mut used = 0usize;
    for i in order {
        if picked.len() >= opts.target_sentences {
            break;
        }
        let len = considered[i].chars().count() + usize::from(!picked.is_empty());
        // A sentence that does not fit is passed over for a shorter one: whole sentences only.
        if used + len <= opts.target_chars {
            picked.push(i);
            used += len;
        }
    }
    if picked.is_empty() {
        // No sentence fits on its own: cut the best one rather than return nothing.
        let best = (0..considered.len())
            .min_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)))
            .unwrap_or(0);
        return cut_at_word(considered[best], opts.target_chars);
    }
    picked.sort_unstable();
    picked
        .iter()
        .map(|&i| considered[i])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fewer words than this make a sentence a fragment.
const MIN_SENTENCE_WORDS: usize = 4;

/// A lead-in (ends with `:`) or a piece of fewer than [`MIN_SENTENCE_WORDS`] words.
fn is_fragment(s: &str) -> bool {
    s.ends_with(':') || words(s).len() < MIN_SENTENCE_WORDS
}

/// `s` cut to at most `max` characters at a word boundary, ending with `…`.
fn cut_at_word(s: &str, max: usize) -> String {
    let budget = max.saturating_sub(1);
    let end = s.char_indices().nth(budget).map_or(s.len(), |(i, _)| i);
    let cut = s[..end]
        .rfind(char::is_whitespace)
        .filter(|&i| i > 0)
        .unwrap_or(end);
    format!("{}…", s[..cut].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "Message queues decouple producers from consumers. \
        A consumer fleet processes jobs from the message queues under hard deadlines. \
        The weather was pleasant yesterday. \
        Deadlines protect the consumer fleet from hanging jobs and stuck consumers. \
        Retries with backoff keep message queues from overload when consumers fail. \
        Bananas are yellow.";

    #[test]
    fn deterministic_and_central_sentences_win() {
        let opts = ExtractiveOptions::default();
        let a = summarize(TEXT, &opts);
        assert_eq!(a, summarize(TEXT, &opts));
        assert!(!a.contains("weather") && !a.contains("Bananas"), "{a}");
        assert_eq!(sentences(&a).len(), 3, "{a}");
        // Original order is kept.
        let positions: Vec<usize> = sentences(&a)
            .iter()
            .map(|s| TEXT.find(s).expect("sentence from the text"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{a}");
    }

    #[test]
    fn respects_target_length() {
        let opts = ExtractiveOptions {
            target_sentences: 10,
            target_chars: 160,
        };
        let s = summarize(TEXT, &opts);
        assert!(s.chars().count() <= 160, "{s}");
        assert!(sentences(&s).len() >= 2, "{s}");
        let one = ExtractiveOptions {
            target_sentences: 1,
            target_chars: 600,
        };
        assert_eq!(sentences(&summarize(TEXT, &one)).len(), 1);
        // A top sentence too long for the target gives way to a shorter whole sentence.
        let short = ExtractiveOptions {
            target_sentences: 3,
            target_chars: 40,
        };
        assert_eq!(
            summarize(TEXT, &short),
            "The weather was pleasant yesterday."
        );
        // Only when no sentence fits is the best one cut.
        let tiny = ExtractiveOptions {
            target_sentences: 3,
            target_chars: 12,
        };
        let t = summarize(TEXT, &tiny);
        assert!(t.chars().count() <= 12 && t.ends_with('…'), "{t}");
    }

    #[test]
    fn fragments_only_when_nothing_else() {
        let opts = ExtractiveOptions::default();
        let t = "Use select! Workers select jobs from queues. Workers ack jobs after queues \
            confirm. Queues hold jobs for workers:\n\nQueues keep jobs when workers stop.";
        let s = summarize(t, &opts);
        assert_eq!(
            s,
            "Workers select jobs from queues. Workers ack jobs after queues confirm. \
             Queues keep jobs when workers stop."
        );
        assert_eq!(summarize("Short one. Two!", &opts), "Short one. Two!");
    }

    #[test]
    fn one_sentence_and_empty_input() {
        let opts = ExtractiveOptions::default();
        assert_eq!(summarize("", &opts), "");
        assert_eq!(summarize("   \n\n ", &opts), "");
        assert_eq!(
            summarize("Just one sentence here.", &opts),
            "Just one sentence here."
        );
        assert_eq!(
            summarize("no punctuation at all", &opts),
            "no punctuation at all"
        );
    }

    #[test]
    fn large_item_is_fast_enough() {
        let para = TEXT.repeat(60); // ~25 KB, 360 sentences
        let t = std::time::Instant::now();
        let s = summarize(&para, &ExtractiveOptions::default());
        assert!(!s.is_empty());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }

    /// The summary's sentences, in order, each a whole sentence of `prose`, or `None`.
    fn prose_sentences<'a>(summary: &'a str, prose: &'a str) -> Option<Vec<&'a str>> {
        let mut rest = summary;
        let mut out = Vec::new();
        for s in sentences(prose) {
            if let Some(r) = rest.strip_prefix(s) {
                out.push(s);
                rest = r.trim_start();
            }
        }
        rest.is_empty().then_some(out)
    }

    #[test]
    fn fleets_own_docs_summarize_to_prose_sentences() {
        use fleet_analyzer::analysis::{AnalysisOptions, analyze_as};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = vec![root.join("README.md")];
        let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
            .expect("docs/ of the repository")
            .map(|e| e.expect("a docs/ entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
        assert!(files.len() >= 3, "{files:?}");
        // Markdown and HTML syntax; inline code keeps its content (`list|show`, `<pipeline>`),
        // so a lone `|` or `<` is prose here (`<broker>` is not `<br>`), a table row or a tag is not.
        let markup = [
            "```", "](", "**", "|---", "| |", "<!--", "<br>", "<br/", "<br ", "<img", "<a ",
            "<details", "<div", "\n",
        ];
        let opts = ExtractiveOptions::default();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("a readable doc");
            let name = f.display();
            let analysis = analyze_as(&text, MediaType::Markdown, &AnalysisOptions::default());
            assert!(!analysis.outline.is_empty(), "{name}: no headings");
            for k in &analysis.keywords {
                assert!(
                    !markup.iter().any(|m| k.contains(m)),
                    "{name}: keyword {k:?}"
                );
            }
            let summary = summarize_document(&text, MediaType::Markdown, &opts);
            assert!(!summary.is_empty(), "{name}");
            assert_eq!(
                summary,
                summarize_document(&text, MediaType::Markdown, &opts)
            );
            let prose = parse(&text, MediaType::Markdown).prose;
            let picked = prose_sentences(&summary, &prose)
                .unwrap_or_else(|| panic!("{name}: summary is not prose sentences: {summary}"));
            for s in picked {
                let bad: Vec<_> = markup.iter().filter(|m| s.contains(*m)).collect();
                assert!(bad.is_empty(), "{name}: {bad:?} in summary sentence {s:?}");
                assert!(
                    !s.starts_with(['#', '-', '*', '|', '>', '+']),
                    "{name}: block markup opens summary sentence {s:?}"
                );
            }
        }
    }
}
