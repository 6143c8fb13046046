//! Documents as documents: Markdown and HTML parsed into prose (paragraphs and
//! list items as text, separated by blank lines), an outline of the headings,
//! and counts of what was kept out of the prose (code blocks, tables, front
//! matter, HTML boilerplate). Plain text stays plain.
//!
//! The media type comes from the item's metadata (`media_type`, else the
//! extension of `source`), else a cheap sniff of the text.

use std::cell::RefCell;

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use pulldown_cmark::{Event, MetadataBlockKind, Options, Parser, Tag, TagEnd};
use serde::Serialize;
use serde_json::Value;

/// Headings kept in the outline at most: bounds the analysis for huge documents.
pub const MAX_OUTLINE: usize = 64;
/// Characters of one heading kept in the outline at most.
pub const MAX_HEADING_CHARS: usize = 120;
/// Bytes of heading text in the whole outline at most: with JSON escapes and
/// per-entry overhead the serialized outline stays under 10 KiB, which the
/// coordinator's item limit reserves for (`FIXED_RESERVE` in its `item_limit`).
pub const MAX_OUTLINE_BYTES: usize = 4096;
/// Bytes of the text the sniff looks at.
const SNIFF_BYTES: usize = 2048;

/// How an item's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `text/plain`: the text is the prose.
    Plain,
    /// `text/markdown` (CommonMark plus tables and front matter).
    Markdown,
    /// `text/html`.
    Html,
}

impl MediaType {
    /// The media type's name, e.g. `text/markdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Plain => "text/plain",
            MediaType::Markdown => "text/markdown",
            MediaType::Html => "text/html",
        }
    }

    /// The media type a `media_type` value names (parameters such as `; charset=` ignored).
    pub fn from_name(name: &str) -> Option<MediaType> {
        let essence = name.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "text/plain" => Some(MediaType::Plain),
            "text/markdown" | "text/x-markdown" => Some(MediaType::Markdown),
            "text/html" | "application/xhtml+xml" => Some(MediaType::Html),
            _ => None,
        }
    }

    /// The media type of a file name's extension, if it is a known one.
    pub fn from_path(path: &str) -> Option<MediaType> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" | "mdown" | "mkd" => Some(MediaType::Markdown),
            "html" | "htm" | "xhtml" => Some(MediaType::Html),
            "txt" | "text" => Some(MediaType::Plain),
            _ => None,
        }
    }

    /// A cheap guess from the start of the text: HTML if it opens with a tag of a
    /// document, Markdown if a line looks like a heading, fence, table or front matter.
    pub fn sniff(text: &str) -> MediaType {
        let mut end = text.len().min(SNIFF_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let head = &text[..end];
        let lower = head.trim_start().to_ascii_lowercase();
        if lower.starts_with("<!doctype html")
            || lower.starts_with("<html")
            || (lower.starts_with('<') && (lower.contains("<body") || lower.contains("<p>")))
        {
            return MediaType::Html;
        }
        let markdownish = head.starts_with("---\n")
            || head.lines().any(|l| {
                let l = l.trim_start();
                let hashes = l.chars().take_while(|&c| c == '#').count();
                (1..=6).contains(&hashes) && l[hashes..].starts_with(' ')
                    || l.starts_with("```")
                    || l.starts_with("~~~")
                    || (l.starts_with('|') && l.contains("---"))
            });
        if markdownish {
            MediaType::Markdown
        } else {
            MediaType::Plain
        }
    }

    /// The media type of an item: `metadata.media_type`, else the extension of
    /// `metadata.source`, else [`MediaType::sniff`].
    pub fn of_item(metadata: Option<&Value>, text: &str) -> MediaType {
        let field = |k: &str| metadata.and_then(|m| m.get(k)).and_then(Value::as_str);
        field("media_type")
            .and_then(MediaType::from_name)
            .or_else(|| field("source").and_then(MediaType::from_path))
            .unwrap_or_else(|| MediaType::sniff(text))
    }
}

/// One heading of the outline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heading {
    /// 1 to 6.
    pub level: u8,
    /// The heading's text, without markup.
    pub text: String,
}

/// What was kept out of the prose, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Fenced or indented code blocks (`<pre>` in HTML).
    pub code_blocks: usize,
    /// Tables.
    pub tables: usize,
    /// Front matter blocks (YAML `---` or TOML `+++`).
    pub front_matter: usize,
    /// HTML boilerplate elements: scripts, styles, navigation, headers, footers, asides, forms.
    pub boilerplate: usize,
}

/// A parsed document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// How the text was read.
    pub media_type: MediaType,
    /// The prose: paragraphs and list items, markup removed, separated by blank lines.
    pub prose: String,
    /// The headings, in order (at most [`MAX_OUTLINE`]).
    pub outline: Vec<Heading>,
    /// What was kept out of the prose.
    pub skipped: Skipped,
    /// Byte offsets into `prose` where a section under a heading begins (chunks start there
    /// where they can).
    pub sections: Vec<usize>,
}

/// Parses `text` as `media_type`.
pub fn parse(text: &str, media_type: MediaType) -> Document {
    let mut b = Builder::default();
    match media_type {
        MediaType::Plain => {
            return Document {
                media_type,
                prose: text.to_owned(),
                outline: Vec::new(),
                skipped: Skipped::default(),
                sections: Vec::new(),
            };
        }
        MediaType::Markdown => markdown(text, &mut b),
        MediaType::Html => html(text, &mut b),
    }
    b.end_block();
    Document {
        media_type,
        prose: b.prose,
        outline: b.outline,
        skipped: b.skipped,
        sections: b.sections,
    }
}

/// Accumulates prose paragraphs and headings; whitespace runs collapse to one space.
#[derive(Debug, Default)]
struct Builder {
    prose: String,
    para: String,
    heading: Option<(u8, String)>,
    outline: Vec<Heading>,
    skipped: Skipped,
    /// Depth of elements whose text stays out of the prose.
    skip: usize,
    /// Prose offsets of the first paragraph after each heading.
    sections: Vec<usize>,
    /// A heading ended and no paragraph followed yet.
    section_pending: bool,
}

impl Builder {
    fn text(&mut self, t: &str) {
        if self.skip > 0 {
            return;
        }
        let buf = match &mut self.heading {
            Some((_, h)) => h,
            None => &mut self.para,
        };
        for c in t.chars() {
            if c.is_control() && !c.is_whitespace() {
                continue;
            }
            if c.is_whitespace() {
                if !buf.is_empty() && !buf.ends_with(' ') {
                    buf.push(' ');
                }
            } else {
                buf.push(c);
            }
        }
    }

    fn end_block(&mut self) {
        let p = self.para.trim();
        if !p.is_empty() {
            if !self.prose.is_empty() {
                self.prose.push_str("\n\n");
            }
            if std::mem::take(&mut self.section_pending) && !self.prose.is_empty() {
                self.sections.push(self.prose.len());
            }
            self.prose.push_str(p);
        }
        self.para.clear();
    }

    fn start_heading(&mut self, level: u8) {
        self.end_block();
        self.heading = Some((level, String::new()));
    }

    fn end_heading(&mut self) {
        self.section_pending = true;
        if let Some((level, h)) = self.heading.take() {
            let h = h.trim();
            let used: usize = self.outline.iter().map(|h| h.text.len()).sum();
            if !h.is_empty() && self.outline.len() < MAX_OUTLINE {
                let text = match h.char_indices().nth(MAX_HEADING_CHARS) {
                    Some((i, _)) => format!("{}…", h[..i].trim_end()),
                    None => h.to_owned(),
                };
                if used + text.len() <= MAX_OUTLINE_BYTES {
                    self.outline.push(Heading { level, text });
                }
            }
        }
    }
}

fn markdown(text: &str, b: &mut Builder) {
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_PLUSES_DELIMITED_METADATA_BLOCKS;
    for ev in Parser::new_ext(text, opts) {
        match ev {
            Event::Start(tag) => match tag {
                Tag::Heading { level, .. } => b.start_heading(level as u8),
                Tag::CodeBlock(_) => {
                    b.end_block();
                    b.skipped.code_blocks += 1;
                    b.skip += 1;
                }
                Tag::Table(_) => {
                    b.end_block();
                    b.skipped.tables += 1;
                    b.skip += 1;
                }
                Tag::MetadataBlock(
                    MetadataBlockKind::YamlStyle | MetadataBlockKind::PlusesStyle,
                ) => {
                    b.skipped.front_matter += 1;
                    b.skip += 1;
                }
                // An image's alt text is not prose of the document.
                Tag::Image { .. } => b.skip += 1,
                Tag::Paragraph | Tag::Item | Tag::List(_) | Tag::BlockQuote(_) => b.end_block(),
                _ => {}
            },
            Event::End(tag) => match tag {
                TagEnd::Heading(_) => b.end_heading(),
                TagEnd::CodeBlock | TagEnd::Table | TagEnd::MetadataBlock(_) | TagEnd::Image => {
                    b.skip = b.skip.saturating_sub(1);
                }
                TagEnd::Paragraph | TagEnd::Item | TagEnd::List(_) | TagEnd::BlockQuote(_) => {
                    b.end_block()
                }
                _ => {}
            },
            Event::Text(t) | Event::Code(t) => b.text(&t),
            Event::SoftBreak | Event::HardBreak => b.text(" "),
            // Raw HTML, rules, footnotes, math: not prose.
            _ => {}
        }
    }
}

/// Elements whose content is boilerplate, not the document's prose.
const BOILERPLATE: [&str; 12] = [
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "head",
    "svg", "iframe",
];
/// Elements that end a paragraph of prose.
const BLOCKS: [&str; 20] = [
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "br",
    "hr",
    "section",
    "article",
    "main",
    "blockquote",
    "figure",
    "figcaption",
    "tr",
    "td",
    "th",
    "body",
];

/// The tokenizer's sink: the builder plus the stack of open skipped elements.
struct HtmlSink {
    b: RefCell<Builder>,
    open_skips: RefCell<Vec<String>>,
}

impl TokenSink for HtmlSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let mut b = self.b.borrow_mut();
        match token {
            Token::CharacterTokens(t) => b.text(&t),
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                let heading = name.len() == 2
                    && name.starts_with('h')
                    && matches!(name.as_bytes()[1], b'1'..=b'6');
                let skipped = BOILERPLATE.contains(&name) || name == "pre" || name == "table";
                match tag.kind {
                    TagKind::StartTag if skipped && !tag.self_closing => {
                        b.end_block();
                        let mut open = self.open_skips.borrow_mut();
                        if open.is_empty() {
                            match name {
                                "pre" => b.skipped.code_blocks += 1,
                                "table" => b.skipped.tables += 1,
                                _ => b.skipped.boilerplate += 1,
                            }
                        }
                        open.push(name.to_owned());
                        b.skip += 1;
                        // Script and style bodies are raw text, not markup.
                        return match name {
                            "script" => TokenSinkResult::RawData(RawKind::ScriptData),
                            "style" | "noscript" | "iframe" => {
                                TokenSinkResult::RawData(RawKind::Rawtext)
                            }
                            _ => TokenSinkResult::Continue,
                        };
                    }
                    TagKind::EndTag if skipped => {
                        let mut open = self.open_skips.borrow_mut();
                        if let Some(at) = open.iter().rposition(|n| n == name) {
                            b.skip = b.skip.saturating_sub(open.len() - at);
                            open.truncate(at);
                        }
                    }
                    TagKind::StartTag if heading => {
                        b.start_heading(name.as_bytes()[1] - b'0');
                    }
                    TagKind::EndTag if heading => b.end_heading(),
                    _ if BLOCKS.contains(&name) => b.end_block(),
                    _ => {}
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

fn html(text: &str, b: &mut Builder) {
    let sink = HtmlSink {
        b: RefCell::new(std::mem::take(b)),
        open_skips: RefCell::new(Vec::new()),
    };
    let tok = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(text));
    // The sink never asks to run a script, so one feed consumes the input.
    let _ = tok.feed(&input);
    tok.end();
    *b = tok.sink.b.take();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::sentences;

    const MD: &str = "---\ntitle: Fleet\ntags: [a, b]\n---\n\n# Fleet overview\n\n\
        Fleet runs **consumers** over a [message queue](docs/queue.md). It keeps `jobs` safe.\n\n\
        ## Building\n\n```sh\ncargo build # the workspace\n```\n\n\
        | setting | default |\n|---|---|\n| a | 1 |\n\n\
        - First item of the list\n- Second item with a [link](http://x.y)\n\n\
        ![diagram](arch.png)\n\n    indented code\n\nThe end.\n";

    fn no_markup(s: &str) {
        for bad in ["```", "|", "](", "#", "**", "---", "<", ">"] {
            assert!(!s.contains(bad), "{bad:?} in {s:?}");
        }
    }

    #[test]
    fn markdown_prose_outline_and_counts() {
        let d = parse(MD, MediaType::Markdown);
        assert_eq!(
            d.outline,
            vec![
                Heading {
                    level: 1,
                    text: "Fleet overview".into()
                },
                Heading {
                    level: 2,
                    text: "Building".into()
                }
            ]
        );
        assert_eq!(
            d.skipped,
            Skipped {
                code_blocks: 2,
                tables: 1,
                front_matter: 1,
                boilerplate: 0
            }
        );
        assert_eq!(
            sentences(&d.prose),
            vec![
                "Fleet runs consumers over a message queue.",
                "It keeps jobs safe.",
                "First item of the list",
                "Second item with a link",
                "The end."
            ]
        );
        no_markup(&d.prose);
        assert!(!d.prose.contains("title") && !d.prose.contains("cargo"));
    }

    #[test]
    fn html_keeps_only_the_prose() {
        let h = "<!DOCTYPE html><html><head><title>T</title><style>p { x: 1 }</style></head>\
            <body><nav><a href=/>Home</a> | <a href=/b>Blog</a></nav>\
            <script>var s = \"<p>not prose</p>\"; if (a < b) {}</script>\
            <h1>Queue <em>basics</em></h1><p>Queues decouple producers &amp; consumers.\n  They buffer work.</p>\
            <pre><code>cargo run</code></pre><table><tr><td>a</td></tr></table>\
            <ul><li>One item</li><li>Two</li></ul><footer>© 2026 Fleet</footer></body></html>";
        assert_eq!(MediaType::sniff(h), MediaType::Html);
        let d = parse(h, MediaType::Html);
        assert_eq!(
            d.prose,
            "Queues decouple producers & consumers. They buffer work.\n\nOne item\n\nTwo"
        );
        assert_eq!(d.outline[0].text, "Queue basics");
        assert_eq!(
            d.skipped,
            Skipped {
                code_blocks: 1,
                tables: 1,
                front_matter: 0,
                boilerplate: 4
            }
        );
    }

    #[test]
    fn media_type_from_metadata_extension_or_sniff() {
        let m = serde_json::json!({"media_type": "text/html; charset=utf-8", "source": "a.md"});
        assert_eq!(MediaType::of_item(Some(&m), "x"), MediaType::Html);
        let m = serde_json::json!({"source": "docs/README.MD"});
        assert_eq!(MediaType::of_item(Some(&m), "x"), MediaType::Markdown);
        assert_eq!(MediaType::of_item(None, MD), MediaType::Markdown);
        assert_eq!(
            MediaType::of_item(None, "Just text. Nothing else."),
            MediaType::Plain
        );
        let plain = parse("a  b\n\nc", MediaType::Plain);
        assert_eq!(plain.prose, "a  b\n\nc");
        assert!(plain.outline.is_empty());
    }

    #[test]
    fn outline_stays_bounded() {
        let heading = format!("# {}\n\n", "\"\\𝄞\u{1}".repeat(200));
        let d = parse(&heading.repeat(500), MediaType::Markdown);
        assert!(!d.outline.is_empty() && d.outline.len() <= MAX_OUTLINE);
        let json = serde_json::to_string(&d.outline).expect("serializable");
        assert!(json.len() < 10 * 1024, "{}", json.len());
        assert!(!json.contains("\\u0001"));
    }
}
