//! Property tests over a corpus of real documents: public-domain texts checked
//! in under `tests/corpus/` (plain text, Markdown, HTML) and fleet's own
//! README.md and docs/*.md. For any document and any target length: no markup
//! in a summary, a keyword or a chunk; every summary sentence is a whole
//! sentence of the document's prose, in document order, within the target;
//! the same input gives the same output. Few cases: it runs in seconds in debug.

use std::path::{Path, PathBuf};

use fleet_analyzer::analysis::{AnalysisOptions, analyze_as};
use fleet_analyzer::chunk::{ChunkSize, chunk_prose};
use fleet_analyzer::document::{MediaType, parse};
use fleet_analyzer::text::{sentences, words};
use fleet_summarizer::extractive::{ExtractiveOptions, summarize};
use proptest::prelude::*;

/// Markdown and HTML syntax. Inline code keeps its content (`list|show`, `<pipeline>`),
/// so a lone `|` or `<` can be prose; a table row, a link or a tag is not.
const MARKUP: [&str; 15] = [
    "```", "](", "|---", "| |", "<!--", "<br>", "<img", "<a ", "<div", "<p>", "</", "<script",
    "&amp;", "&mdash;", "{ font",
];

fn corpus() -> Vec<(PathBuf, MediaType, String)> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(here.join("tests/corpus"))
        .expect("tests/corpus")
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    let root = here.join("../..");
    files.push(root.join("README.md"));
    files.extend(
        std::fs::read_dir(root.join("docs"))
            .expect("docs/")
            .map(|e| e.expect("a docs/ entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a readable document");
            let mt = MediaType::from_path(&p.to_string_lossy()).expect("a known extension");
            (p, mt, text)
        })
        .collect()
}

fn no_markup(what: &str, s: &str, mt: MediaType) {
    let bad: Vec<_> = MARKUP.iter().filter(|m| s.contains(*m)).collect();
    assert!(bad.is_empty(), "{bad:?} in {what} {s:?}");
    // Strong emphasis (`**word`); a `***` mask in inline code is prose.
    let strong = s
        .match_indices("**")
        .any(|(i, _)| s[i + 2..].starts_with(char::is_alphabetic) && !s[..i].ends_with('*'));
    assert!(!strong, "strong emphasis in {what} {s:?}");
    // A chunk may begin at a hard cut inside a long sentence, anywhere in its prose.
    if mt != MediaType::Plain && what != "chunk" {
        assert!(!s.contains('\n'), "a line break in {what} {s:?}");
        assert!(
            !["# ", "- ", "* ", "| ", "> ", "+ "]
                .iter()
                .any(|m| s.starts_with(m)),
            "block markup opens {what} {s:?}"
        );
    }
}

/// The summary as whole prose sentences in document order, or `None` (a search:
/// one sentence can be a prefix of another, so a greedy match could go astray).
fn as_prose_sentences<'a>(summary: &'a str, prose: &'a str) -> Option<Vec<&'a str>> {
    fn walk<'a>(rest: &str, all: &[&'a str], from: usize, out: &mut Vec<&'a str>) -> bool {
        if rest.is_empty() {
            return true;
        }
        for (j, s) in all.iter().enumerate().skip(from) {
            if let Some(r) = rest.strip_prefix(s) {
                if !(r.is_empty() || r.starts_with(' ')) {
                    continue;
                }
                out.push(s);
                if walk(r.trim_start(), all, j + 1, out) {
                    return true;
                }
                out.pop();
            }
        }
        false
    }
    let all = sentences(prose);
    let mut out = Vec::new();
    walk(summary, &all, 0, &mut out).then_some(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn summaries_are_prose_sentences_within_the_target(
        pick in 0usize..64,
        target_sentences in 1usize..6,
        target_chars in 60usize..1200,
    ) {
        let docs = corpus();
        let (path, mt, text) = &docs[pick % docs.len()];
        let name = path.display();
        let prose = parse(text, *mt).prose;
        let opts = ExtractiveOptions { target_sentences, target_chars };
        let summary = summarize(&prose, &opts);
        prop_assert!(!summary.is_empty(), "{name}: empty summary");
        prop_assert_eq!(&summary, &summarize(&prose, &opts), "{}: not deterministic", name);
        prop_assert!(summary.chars().count() <= target_chars, "{name}: {summary:?}");
        no_markup("summary", &summary, *mt);
        match as_prose_sentences(&summary, &prose) {
            Some(picked) => prop_assert!(picked.len() <= target_sentences, "{name}: {summary:?}"),
            // Only when no whole sentence fits is the best one cut at a word, marked `…`.
            None => {
                let head = summary.strip_suffix('…').unwrap_or_else(|| panic!("{name}: not prose sentences: {summary:?}"));
                prop_assert!(sentences(&prose).iter().any(|s| s.starts_with(head)), "{name}: {summary:?}");
                prop_assert!(sentences(&prose).iter().all(|s| s.chars().count() > target_chars), "{name}: a whole sentence would fit");
            }
        }
    }

    #[test]
    fn keywords_and_chunks_carry_no_markup(pick in 0usize..64, max_tokens in 40usize..400) {
        let docs = corpus();
        let (path, mt, text) = &docs[pick % docs.len()];
        let name = path.display();
        let a = analyze_as(text, *mt, &AnalysisOptions::default());
        prop_assert!(!a.keywords.is_empty(), "{name}: no keywords");
        for k in &a.keywords {
            no_markup("keyword", k, *mt);
        }
        let doc = parse(text, *mt);
        let size = ChunkSize::tokens(max_tokens, "gpt-4o").expect("gpt-4o is known");
        let chunks = chunk_prose(&doc.prose, &doc.sections, &size);
        let mut all = Vec::new();
        for c in &chunks {
            prop_assert!(size.len(&c.text) <= max_tokens, "{name}: chunk over the bound");
            no_markup("chunk", &c.text.replace('\n', " "), *mt);
            all.extend(words(&c.text));
        }
        prop_assert_eq!(all, words(&doc.prose), "{}: chunks lose or reorder words", name);
    }
}
