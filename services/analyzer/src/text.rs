//! Text primitives shared by the analyzer and the summarizer, from the ecosystem's
//! crates: word and sentence boundaries (`unicode-segmentation`, UAX #29), stop
//! words (`stop-words`, the NLTK lists), the language guess (`whatlang`) and
//! stemming for keyword grouping (`rust-stemmers`, Snowball).

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_segmentation::UnicodeSegmentation as _;

/// Languages the guess reports, as (whatlang ISO 639-3 code, ISO 639-1 code).
///
/// Why a table: whatlang names languages by ISO 639-3 (`eng`), the stop-word
/// lists and the analysis by ISO 639-1 (`en`); whatlang has no 639-1 mapping.
const LANGUAGE_CODES: [(&str, &str); 30] = [
    ("eng", "en"),
    ("deu", "de"),
    ("fra", "fr"),
    ("spa", "es"),
    ("ita", "it"),
    ("nld", "nl"),
    ("por", "pt"),
    ("rus", "ru"),
    ("swe", "sv"),
    ("dan", "da"),
    ("fin", "fi"),
    ("hun", "hu"),
    ("ron", "ro"),
    ("tur", "tr"),
    ("nob", "no"),
    ("ell", "el"),
    ("ara", "ar"),
    ("aze", "az"),
    ("ind", "id"),
    ("kaz", "kk"),
    ("nep", "ne"),
    ("slv", "sl"),
    ("tgk", "tg"),
    ("pol", "pl"),
    ("ces", "cs"),
    ("ukr", "uk"),
    ("jpn", "ja"),
    ("cmn", "zh"),
    ("kor", "ko"),
    ("hin", "hi"),
];

/// Words the text must have before its language is guessed at all.
const MIN_WORDS: usize = 4;

/// Stop words a short text must contain before the stop-word vote names its language.
const MIN_STOPWORD_HITS: usize = 3;

/// The ISO 639-1 code of the language of `text`, or `unknown`.
///
/// whatlang's trigram guess when whatlang calls it reliable; else the language
/// whose NLTK stop words make the most (at least 1 in 20) of the words. Why the
/// second vote: on a short text (a few sentences) whatlang's trigrams are often
/// unreliable or wrong, while stop words are the strongest signal there is; a list
/// of identifiers has neither and stays `unknown`.
pub fn guess_language(text: &str) -> String {
    let tokens = words(text);
    if tokens.len() < MIN_WORDS {
        return "unknown".to_owned();
    }
    let reliable = whatlang::detect(text)
        .filter(whatlang::Info::is_reliable)
        .and_then(|info| {
            let code = info.lang().code();
            LANGUAGE_CODES
                .iter()
                .find(|(three, _)| *three == code)
                .map(|(_, two)| (*two).to_owned())
        });
    reliable.unwrap_or_else(|| {
        let mut best = ("unknown", 0usize);
        for (_, two) in LANGUAGE_CODES {
            if stop_words::lookup(two).is_none() {
                continue;
            }
            let set = stopwords(two);
            let hits = tokens.iter().filter(|t| set.contains(t.as_str())).count();
            if hits > best.1 {
                best = (two, hits);
            }
        }
        if best.1 >= MIN_STOPWORD_HITS && best.1 * 20 >= tokens.len() {
            best.0.to_owned()
        } else {
            "unknown".to_owned()
        }
    })
}

/// The NLTK stop-word set of `lang` (ISO 639-1); English for a language without a list.
pub fn stopwords(lang: &str) -> &'static HashSet<&'static str> {
    static SETS: OnceLock<HashMap<&'static str, HashSet<&'static str>>> = OnceLock::new();
    let sets = SETS.get_or_init(|| {
        stop_words::available_languages()
            .iter()
            .filter_map(|code| {
                let words = stop_words::lookup(code)?;
                Some((*code, words.iter().copied().collect()))
            })
            .collect()
    });
    static EMPTY: OnceLock<HashSet<&'static str>> = OnceLock::new();
    sets.get(lang)
        .or_else(|| sets.get("en"))
        .unwrap_or_else(|| EMPTY.get_or_init(HashSet::new))
}

/// The Snowball stemmer of `lang` (ISO 639-1), if Snowball has one.
pub fn stemmer(lang: &str) -> Option<Stemmer> {
    let algorithm = match lang {
        "en" => Algorithm::English,
        "de" => Algorithm::German,
        "fr" => Algorithm::French,
        "es" => Algorithm::Spanish,
        "it" => Algorithm::Italian,
        "nl" => Algorithm::Dutch,
        "pt" => Algorithm::Portuguese,
        "ru" => Algorithm::Russian,
        "sv" => Algorithm::Swedish,
        "da" => Algorithm::Danish,
        "fi" => Algorithm::Finnish,
        "hu" => Algorithm::Hungarian,
        "ro" => Algorithm::Romanian,
        "tr" => Algorithm::Turkish,
        "no" => Algorithm::Norwegian,
        "el" => Algorithm::Greek,
        "ar" => Algorithm::Arabic,
        _ => return None,
    };
    Some(Stemmer::create(algorithm))
}

/// Lower-cased word tokens: UAX #29 words (so `don't`, `it's` and `1.5` stay whole).
pub fn words(text: &str) -> Vec<String> {
    text.unicode_words().map(str::to_lowercase).collect()
}

/// Abbreviations whose period does not end a sentence before a capital letter.
///
/// Hand-written because UAX #29 has no dictionary: it keeps "e.g. the" together
/// (a lower-case word follows) but splits "Dr. Smith" and "e.g. Fleet".
const ABBREVIATIONS: [&str; 16] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "no", "fig", "cf", "jr",
    "sr", "approx",
];

/// Byte spans `(start, end)` of the sentences of `text`, trimmed, in order.
///
/// UAX #29 sentence boundaries, with two rules it lacks (hand-written, see why):
/// - a blank line ends a paragraph and so a sentence, but a single line break does
///   not: UAX #29 breaks at every line break, which would cut hard-wrapped text
///   mid-sentence, so single breaks are read as spaces;
/// - a period after a known abbreviation or a single letter (an initial) does not
///   end a sentence ([`ABBREVIATIONS`]);
/// - a `!` glued to a word and followed by a lower-case word is a macro name in
///   running text (`select! picks…`, inline code whose backticks the parser removed),
///   not the end of a sentence; nor is a terminator with no space after it
///   (`./README.md`).
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (ps, pe) in paragraph_spans(text) {
        // Same byte length: '\n' and '\r' become ' ', so offsets carry over.
        let para: String = text[ps..pe]
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        let mut open: Option<usize> = None;
        for (off, seg) in para.split_sentence_bound_indices() {
            let trimmed = seg.trim_end();
            if trimmed.trim_start().is_empty() {
                continue;
            }
            let lead = seg.len() - seg.trim_start().len();
            let start = *open.get_or_insert(off + lead);
            let end = off + trimmed.len();
            // No space after the terminator (`./README.md`, `v1.2.x`): not a sentence end.
            let glued = off + seg.len() < para.len() && !seg.ends_with(char::is_whitespace);
            if glued || ends_with_abbreviation(&para[start..end]) {
                continue;
            }
            open = None;
            if let Some(last) = spans.last_mut().filter(|l| l.0 >= ps)
                && macro_bang(&text[last.0..last.1])
                && para[start..].starts_with(|c: char| c.is_lowercase() || "/|,;:)".contains(c))
            {
                last.1 = ps + end;
                continue;
            }
            spans.push((ps + start, ps + end));
        }
        if let Some(start) = open {
            let end = para.trim_end().len();
            spans.push((ps + start, ps + end));
        }
    }
    spans
}

/// Byte spans of the paragraphs of `text` (separated by blank lines), trimmed.
pub fn paragraph_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut last_content_end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
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

/// Ends with `!` right after a letter, digit or `_` (`select!`, not `Oh dear !`).
fn macro_bang(sentence: &str) -> bool {
    sentence
        .strip_suffix('!')
        .and_then(|b| b.chars().last())
        .is_some_and(|c| c.is_alphanumeric() || c == '_')
        && !sentence.ends_with("!!")
}

fn ends_with_abbreviation(sentence: &str) -> bool {
    let Some(before) = sentence.strip_suffix('.') else {
        return false;
    };
    let last = before
        .rsplit(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    (last.chars().count() == 1 && last.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&last.as_str())
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
        assert_eq!(
            sentences("A hard-wrapped\nline goes on. Use e.g. Fleet here."),
            vec!["A hard-wrapped\nline goes on.", "Use e.g. Fleet here."]
        );
        assert_eq!(
            sentences("Call tokio::select! when needed. Oh dear! Oh dear!"),
            vec!["Call tokio::select! when needed.", "Oh dear!", "Oh dear!"]
        );
        assert_eq!(
            sentences("It reads ./docs and ./README.md first. Then counter! / gauge! calls."),
            vec![
                "It reads ./docs and ./README.md first.",
                "Then counter! / gauge! calls."
            ]
        );
    }

    #[test]
    fn language_stop_words_and_stems() {
        let de = "Der Hund und die Katze sind nicht im Haus, aber sie wird bald auch da sein.";
        let fr = "Le chat est dans la maison et il ne veut pas sortir avec les enfants.";
        let es = "El perro y los gatos están en la casa, pero no quieren salir con ella.";
        let en = "The queue keeps every job until a worker has finished with it.";
        assert_eq!(guess_language(de), "de");
        assert_eq!(guess_language(fr), "fr");
        assert_eq!(guess_language(es), "es");
        assert_eq!(guess_language(en), "en");
        assert_eq!(guess_language("zxq vbn"), "unknown");
        assert!(stopwords("en").contains("the") && stopwords("de").contains("und"));
        assert!(stopwords("xx").contains("the"));
        let s = stemmer("en").expect("an English stemmer");
        assert_eq!(s.stem("queues"), s.stem("queue"));
    }
}
