//! The mixed items of the benchmark (`fleet-bench mixed`) and the fault campaign
//! (`fleet-chaos`): deterministic, varied English-like text from a seed (no network, no data
//! files), 40 % of about 2.5 KB and 60 % of about 25 KB, in a shuffled order.
//!
//! Each item has a topic whose nouns recur across its sentences, so that keyword
//! extraction and the TextRank summarizer see structure like real prose, not noise.

/// SplitMix64: tiny, seedable and good enough to vary text; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.range(0, xs.len() - 1)]
    }
}

/// Size classes of the item mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// About 2.5 KB.
    Small,
    /// About 25 KB.
    Large,
}

impl Size {
    /// Label in the report.
    pub fn label(self) -> &'static str {
        match self {
            Size::Small => "~2.5 KB",
            Size::Large => "~25 KB",
        }
    }

    /// Target size in bytes (each item varies by up to ±15 % around it).
    pub fn target(self) -> usize {
        match self {
            Size::Small => 2_500,
            Size::Large => 25_000,
        }
    }
}

/// One generated item.
#[derive(Debug, Clone)]
pub struct Item {
    /// `item-0000` … in publish order.
    pub id: String,
    /// Its size class.
    pub size: Size,
    /// The text (UTF-8, paragraphs separated by blank lines).
    pub text: String,
}

const TOPICS: &[&[&str]] = &[
    &[
        "queue",
        "broker",
        "consumer",
        "message",
        "backlog",
        "worker",
        "acknowledgement",
        "retry",
    ],
    &[
        "harbour",
        "ship",
        "cargo",
        "crane",
        "tide",
        "captain",
        "container",
        "dock",
    ],
    &[
        "garden", "soil", "seed", "orchard", "harvest", "gardener", "compost", "blossom",
    ],
    &[
        "library",
        "archive",
        "manuscript",
        "reader",
        "catalogue",
        "shelf",
        "librarian",
        "index",
    ],
    &[
        "mountain",
        "glacier",
        "valley",
        "climber",
        "ridge",
        "summit",
        "avalanche",
        "trail",
    ],
    &[
        "kitchen", "recipe", "bread", "oven", "flour", "baker", "dough", "spice",
    ],
    &[
        "council", "budget", "citizen", "bridge", "district", "mayor", "election", "road",
    ],
    &[
        "laboratory",
        "sample",
        "experiment",
        "microscope",
        "researcher",
        "protein",
        "result",
        "cell",
    ],
    &[
        "orchestra",
        "violin",
        "concert",
        "composer",
        "rehearsal",
        "melody",
        "audience",
        "score",
    ],
    &[
        "railway",
        "station",
        "timetable",
        "engine",
        "passenger",
        "signal",
        "platform",
        "carriage",
    ],
    &[
        "hospital",
        "nurse",
        "patient",
        "ward",
        "treatment",
        "doctor",
        "shift",
        "clinic",
    ],
    &[
        "market", "trader", "price", "contract", "merchant", "ledger", "invoice", "supplier",
    ],
];

const NOUNS: &[&str] = &[
    "plan",
    "problem",
    "morning",
    "decision",
    "team",
    "report",
    "system",
    "question",
    "afternoon",
    "method",
    "change",
    "meeting",
    "week",
    "season",
    "process",
    "story",
    "record",
    "week",
    "schedule",
    "pattern",
    "failure",
    "signal",
    "choice",
    "detail",
    "habit",
    "rule",
];
const ADJECTIVES: &[&str] = &[
    "quiet", "careful", "late", "early", "heavy", "small", "broken", "steady", "sudden",
    "familiar", "narrow", "bright", "patient", "busy", "old", "new", "simple", "strange",
    "reliable", "slow", "quick", "empty", "crowded", "cold", "warm", "long",
];
const VERBS: &[&str] = &[
    "moved",
    "checked",
    "delayed",
    "carried",
    "watched",
    "repaired",
    "followed",
    "described",
    "changed",
    "measured",
    "opened",
    "closed",
    "protected",
    "explained",
    "counted",
    "ignored",
    "prepared",
    "replaced",
    "noticed",
    "finished",
    "started",
    "recorded",
    "shared",
    "tested",
];
const ADVERBS: &[&str] = &[
    "slowly",
    "carefully",
    "again",
    "quietly",
    "finally",
    "often",
    "rarely",
    "suddenly",
    "usually",
    "nearly",
    "always",
    "already",
];
const PREPOSITIONS: &[&str] = &[
    "near", "after", "before", "under", "behind", "beside", "during", "without", "across",
    "through",
];
const NAMES: &[&str] = &[
    "Anna", "Tomas", "Mira", "Jonah", "Elena", "Samuel", "Priya", "Oskar", "Lena", "Marcus",
];
const CONNECTORS: &[&str] = &[
    "However,",
    "Meanwhile,",
    "In the end,",
    "As a result,",
    "For that reason,",
    "Later,",
    "At first,",
    "Even so,",
];

fn noun<'a>(rng: &mut Rng, topic: &[&'a str]) -> &'a str {
    // Two in three nouns come from the topic, so the item has recurring key terms.
    if rng.range(0, 2) < 2 {
        rng.pick(topic)
    } else {
        rng.pick(NOUNS)
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| {
        f.to_uppercase().collect::<String>() + c.as_str()
    })
}

fn sentence(rng: &mut Rng, topic: &[&str]) -> String {
    let (a1, n1) = (rng.pick(ADJECTIVES), noun(rng, topic));
    let (v, a2, n2) = (rng.pick(VERBS), rng.pick(ADJECTIVES), noun(rng, topic));
    let (p, n3, adv) = (rng.pick(PREPOSITIONS), noun(rng, topic), rng.pick(ADVERBS));
    let who = rng.pick(NAMES);
    let s = match rng.range(0, 6) {
        0 => format!("the {a1} {n1} {v} the {a2} {n2} {p} the {n3}."),
        1 => format!("{who} {adv} {v} the {n1} {p} the {a2} {n2}, and nobody asked why."),
        2 => format!(
            "{} {who} {v} every {n1} that the {n2} had left {p} the {a1} {n3}.",
            rng.pick(CONNECTORS)
        ),
        3 => format!("it was a {a1} {n1}, and the {n2} {v} it {adv}."),
        4 => format!("when the {n1} {v} the {n2}, {who} wrote it down in the {a2} {n3}."),
        5 => format!("the {n1} of the {n2} was {a1} {p} the {n3}, so {who} {v} it {adv}."),
        _ => format!("{who} said that the {a1} {n1} {v} more than one {n2} {p} the {n3}."),
    };
    capitalize(&s)
}

/// An item of about `target` bytes (±15 %), cut at a sentence end.
fn text(rng: &mut Rng, target: usize) -> String {
    let topic = TOPICS[rng.range(0, TOPICS.len() - 1)];
    let want = rng.range(target * 85 / 100, target * 115 / 100);
    let mut out = String::with_capacity(want + 200);
    while out.len() < want {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        for i in 0..rng.range(3, 7) {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&sentence(rng, topic));
        }
    }
    out
}

/// `total` items from `seed`: `small_percent` % small, the rest large, shuffled.
pub fn items(seed: u64, total: usize, small_percent: usize) -> Vec<Item> {
    let mut rng = Rng::new(seed);
    let small = total * small_percent / 100;
    let mut sizes: Vec<Size> = (0..total)
        .map(|i| if i < small { Size::Small } else { Size::Large })
        .collect();
    // Fisher–Yates, so small and large items interleave as in a real mixed feed.
    for i in (1..sizes.len()).rev() {
        sizes.swap(i, rng.range(0, i));
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, size)| Item {
            id: format!("item-{i:04}"),
            size,
            text: text(&mut rng, size.target()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_sizes_and_determinism() {
        let a = items(7, 100, 40);
        let b = items(7, 100, 40);
        assert_eq!(a.len(), 100);
        assert_eq!(a.iter().filter(|i| i.size == Size::Small).count(), 40);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.text, y.text, "same seed, same text");
        }
        for i in &a {
            let t = i.size.target();
            assert!(i.text.len() >= t * 85 / 100 && i.text.len() <= t * 115 / 100 + 400);
            assert!(i.text.ends_with('.'));
        }
        // Shuffled: the first 40 are not all small.
        assert!(a[..40].iter().any(|i| i.size == Size::Large));
        assert_ne!(items(8, 10, 40)[0].text, a[0].text);
    }
}
