//! Text primitives shared by the analyzer and the summarizer: word tokens,
//! sentence spans and per-language stop words.

use std::collections::HashSet;
use std::sync::OnceLock;

/// Languages the stop-word guess knows, as (ISO 639-1 code, stop words).
pub const LANGUAGES: [(&str, &[&str]); 7] = [
    (
        "en",
        &[
            "the", "and", "of", "to", "a", "in", "is", "it", "that", "for", "was", "on", "are",
            "with", "as", "be", "this", "by", "at", "or", "from", "have", "an", "not", "which",
            "but", "they", "were", "has", "their", "can", "will", "there", "been", "we", "its",
            "more", "also", "into", "than", "these", "would", "when", "what", "he", "she", "you",
            "i", "all", "so", "if", "about", "no", "one", "out", "up", "do", "other",
        ],
    ),
    (
        "de",
        &[
            "der", "die", "und", "das", "ist", "nicht", "ein", "eine", "zu", "den", "von", "mit",
            "sich", "des", "auf", "für", "im", "dem", "auch", "es", "als", "wird", "bei", "noch",
            "wie", "nach", "aus", "sind", "oder", "einer", "werden", "wurde", "ich", "wir", "sie",
            "aber", "dass", "hat", "zum", "zur", "über", "nur", "kann",
        ],
    ),
    (
        "fr",
        &[
            "le", "la", "les", "et", "des", "est", "une", "du", "dans", "que", "qui", "pour",
            "pas", "sur", "au", "avec", "ce", "il", "elle", "sont", "par", "plus", "ne", "aux",
            "mais", "ou", "nous", "vous", "ils", "cette", "été", "être", "fait", "leur", "ses",
            "comme", "tout", "aussi",
        ],
    ),
    (
        "es",
        &[
            "el", "la", "los", "las", "y", "del", "que", "en", "un", "una", "es", "por", "con",
            "para", "se", "no", "su", "al", "lo", "como", "más", "pero", "sus", "fue", "son",
            "está", "ha", "muy", "también", "entre", "cuando", "todo", "esta", "ser", "hay",
        ],
    ),
    (
        "it",
        &[
            "il", "di", "che", "è", "e", "la", "per", "un", "una", "non", "sono", "del", "della",
            "con", "gli", "le", "si", "da", "nel", "alla", "dei", "delle", "anche", "come", "più",
            "ma", "questo", "questa", "sul", "essere", "hanno", "ha", "loro",
        ],
    ),
    (
        "nl",
        &[
            "de", "het", "een", "en", "van", "is", "dat", "niet", "op", "te", "zijn", "voor",
            "met", "die", "ook", "als", "er", "maar", "om", "aan", "bij", "nog", "wordt", "naar",
            "dan", "wel", "uit", "hij", "zij", "wij", "heeft", "worden", "door", "deze",
        ],
    ),
    (
        "pt",
        &[
            "o", "a", "os", "as", "de", "do", "da", "dos", "das", "e", "que", "em", "um", "uma",
            "não", "para", "com", "por", "se", "no", "na", "mais", "mas", "como", "foi", "ao",
            "são", "também", "ser", "está", "pelo", "pela", "muito", "isso", "seu", "sua",
        ],
    ),
];

/// The stop-word set of `lang` (an entry of [`LANGUAGES`]); English for anything else.
pub fn stopwords(lang: &str) -> &'static HashSet<&'static str> {
    static SETS: OnceLock<Vec<(&'static str, HashSet<&'static str>)>> = OnceLock::new();
    let sets = SETS.get_or_init(|| {
        LANGUAGES
            .iter()
            .map(|(code, words)| (*code, words.iter().copied().collect()))
            .collect()
    });
    sets.iter()
        .find(|(code, _)| *code == lang)
        .or_else(|| sets.first())
        .map(|(_, set)| set)
        .unwrap_or_else(|| unreachable_empty())
}

fn unreachable_empty() -> &'static HashSet<&'static str> {
    static EMPTY: OnceLock<HashSet<&'static str>> = OnceLock::new();
    EMPTY.get_or_init(HashSet::new)
}

/// Lower-cased word tokens: maximal runs of alphanumeric characters (apostrophes inside kept).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let inner_apostrophe = (c == '\'' || c == '’')
            && !cur.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() || inner_apostrophe {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Abbreviations whose period does not end a sentence.
const ABBREVIATIONS: [&str; 12] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "fig",
];

/// Byte spans `(start, end)` of the sentences of `text`, trimmed, in order.
///
/// A sentence ends at `.`, `!`, `?` or `…` (plus closing quotes/brackets) followed by
/// whitespace or the end, except after a known abbreviation or a single letter; a blank
/// line also ends one.
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if start.is_none() && c.is_whitespace() {
            i += 1;
            continue;
        }
        let s = *start.get_or_insert(pos);
        let blank_line = c == '\n' && next_line_blank(&chars, i + 1);
        if blank_line {
            push_trimmed(text, s, pos, &mut spans);
            start = None;
            i += 1;
            continue;
        }
        if matches!(c, '.' | '!' | '?' | '…' | '。') {
            let mut j = i + 1;
            while j < chars.len()
                && matches!(
                    chars[j].1,
                    '.' | '!' | '?' | '"' | '\'' | '”' | '’' | ')' | ']'
                )
            {
                j += 1;
            }
            let at_break = j >= chars.len() || chars[j].1.is_whitespace();
            if at_break && !(c == '.' && is_abbreviation(&text[s..pos])) {
                let end = chars.get(j).map_or(text.len(), |(p, _)| *p);
                push_trimmed(text, s, end, &mut spans);
                start = None;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    if let Some(s) = start {
        push_trimmed(text, s, text.len(), &mut spans);
    }
    spans
}

fn next_line_blank(chars: &[(usize, char)], from: usize) -> bool {
    for (_, c) in &chars[from.min(chars.len())..] {
        match c {
            '\n' => return true,
            c if c.is_whitespace() => {}
            _ => return false,
        }
    }
    true
}

fn is_abbreviation(before: &str) -> bool {
    let last = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    (last.chars().count() == 1 && last.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&last.as_str())
}

fn push_trimmed(text: &str, start: usize, end: usize, spans: &mut Vec<(usize, usize)>) {
    let slice = &text[start..end];
    let trimmed = slice.trim_end();
    if !trimmed.trim().is_empty() {
        spans.push((start, start + trimmed.len()));
    }
}

/// The sentences of `text` as string slices (see [`sentence_spans`]).
pub fn sentences(text: &str) -> Vec<&str> {
    sentence_spans(text)
        .into_iter()
        .map(|(s, e)| &text[s..e])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_lowercase_and_keep_inner_apostrophes() {
        assert_eq!(
            words("Don't STOP, it's 42 — ok!"),
            vec!["don't", "stop", "it's", "42", "ok"]
        );
        assert!(words("  ... ").is_empty());
    }

    #[test]
    fn sentences_respect_abbreviations_and_paragraphs() {
        let t = "Dr. Smith arrived. He said \"hi!\" Then left?\n\nNew paragraph without end";
        assert_eq!(
            sentences(t),
            vec![
                "Dr. Smith arrived.",
                "He said \"hi!\"",
                "Then left?",
                "New paragraph without end"
            ]
        );
        assert!(sentences("").is_empty());
        assert_eq!(sentences("One sentence"), vec!["One sentence"]);
        assert_eq!(
            sentences("Version 1.5 is out. Yes."),
            vec!["Version 1.5 is out.", "Yes."]
        );
    }
}
