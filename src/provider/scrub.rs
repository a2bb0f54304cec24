//! The [`Scrubber`]: takes every fragment of a key out of a text before
//! keyfan writes it anywhere.
//!
//! Servers and proxies echo keys back, whole or in part (`Incorrect API key
//! provided: sk-VKMIs***…wjh3`, or a middle slice), and a model may be made
//! to repeat one. A fragment of 8 characters is taken to identify a key: any
//! run of 8 or more characters of a configured key, wherever it appears, is
//! replaced by that key's fingerprint.

use crate::types::ApiKey;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// The shortest fragment of a key that is scrubbed. Keys shorter than this
/// are scrubbed when they appear whole.
const FRAGMENT_CHARS: usize = 8;

/// What replaces a fragment when a fingerprint would not do: it is not a
/// character any key sent in an HTTP header can hold (those are visible
/// ASCII), so no fragment can form across it.
const NEUTRAL: &str = "…";

/// Removes every fragment of 8 or more characters of any of its keys from a
/// text, in time linear in the text's length (one hash
/// lookup per character) whatever the number of keys.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// Fragment length (in characters) → each fragment of that length of
    /// any key that is all ASCII (as keys sent in headers are), its bytes
    /// packed into a `u64` → the index of its key's fingerprint. Looked up
    /// by a rolling value over the text's bytes, with no allocation and no
    /// hashing of strings.
    ascii: BTreeMap<usize, HashMap<u64, usize, BuildHasherDefault<PackedHasher>>>,
    /// The same for fragments holding other characters.
    other: BTreeMap<usize, HashMap<String, usize>>,
    fingerprints: Vec<String>,
}

/// Hashes a packed fragment with one folded multiplication: the values
/// are the key's own bytes, so nothing needs a keyed hash.
#[derive(Debug, Clone, Copy, Default)]
struct PackedHasher(u64);

impl Hasher for PackedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 << 8 | u64::from(b));
        }
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(value ^ self.0) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

/// The bytes of an ASCII fragment of at most 8 characters as one value.
fn pack(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |v, &b| v << 8 | u64::from(b))
}

/// Part of a text to replace: a byte range and the key it is a fragment of.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    key: usize,
}

impl Scrubber {
    /// A scrubber for `keys` (empty keys are ignored).
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a ApiKey>) -> Scrubber {
        let mut scrubber = Scrubber::default();
        for key in keys {
            let chars: Vec<char> = key.expose().chars().collect();
            if chars.is_empty() {
                continue;
            }
            let index = scrubber.fingerprints.len();
            scrubber.fingerprints.push(key.fingerprint().to_owned());
            let length = chars.len().min(FRAGMENT_CHARS);
            for window in chars.windows(length) {
                let fragment: String = window.iter().collect();
                if fragment.is_ascii() {
                    let fragments = scrubber.ascii.entry(length).or_default();
                    fragments.entry(pack(fragment.as_bytes())).or_insert(index);
                } else {
                    let fragments = scrubber.other.entry(length).or_default();
                    fragments.entry(fragment).or_insert(index);
                }
            }
        }
        scrubber
    }

    /// Scrubs `text` in place: every fragment of a key is replaced by the
    /// key's fingerprint.
    pub fn clean(&self, text: &mut String) {
        let hits = self.hits(text);
        if hits.is_empty() {
            return;
        }
        let named = replace(text, &hits, |key| &self.fingerprints[key]);
        // A fingerprint shows a key's first and last characters; next to
        // the text around it, they could in theory form a new fragment.
        *text = if self.hits(&named).is_empty() {
            named
        } else {
            replace(text, &hits, |_| NEUTRAL)
        };
    }

    /// [`Scrubber::clean`] for an optional text.
    pub fn clean_option(&self, text: &mut Option<String>) {
        if let Some(text) = text {
            self.clean(text);
        }
    }

    /// The parts of `text` that are fragments of a key, merged where they
    /// overlap or touch, in order.
    fn hits(&self, text: &str) -> Vec<Hit> {
        let mut hits = Vec::new();
        // An ASCII fragment of `length` characters can only be `length`
        // ASCII bytes of the text: a rolling value over each run of them.
        for (&length, fragments) in &self.ascii {
            let mask = u64::MAX >> (64 - 8 * length);
            let (mut packed, mut run) = (0u64, 0);
            for (i, &b) in text.as_bytes().iter().enumerate() {
                if !b.is_ascii() {
                    run = 0;
                    continue;
                }
                packed = (packed << 8 | u64::from(b)) & mask;
                run += 1;
                if run >= length {
                    if let Some(&key) = fragments.get(&packed) {
                        hits.push(Hit {
                            start: i + 1 - length,
                            end: i + 1,
                            key,
                        });
                    }
                }
            }
        }
        for (&length, fragments) in &self.other {
            // The byte offsets where the last `length` characters start.
            let mut starts = VecDeque::with_capacity(length + 1);
            let ends = text.char_indices().map(|(i, _)| i).chain([text.len()]);
            for end in ends {
                if starts.len() == length {
                    let start = starts.pop_front().unwrap_or_default();
                    if let Some(&key) = fragments.get(&text[start..end]) {
                        hits.push(Hit { start, end, key });
                    }
                }
                starts.push_back(end);
            }
        }
        hits.sort_by_key(|h| h.start);
        let mut merged: Vec<Hit> = Vec::with_capacity(hits.len());
        for hit in hits {
            match merged.last_mut() {
                Some(last) if hit.start <= last.end => last.end = last.end.max(hit.end),
                _ => merged.push(hit),
            }
        }
        merged
    }
}

/// `text` with each hit replaced by `with(hit.key)`.
fn replace<'s>(text: &str, hits: &[Hit], with: impl Fn(usize) -> &'s str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for hit in hits {
        out.push_str(&text[at..hit.start]);
        out.push_str(with(hit.key));
        at = hit.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AIzaSyD-this-is-not-a-real-key-k3Qf";

    fn scrubbed(scrubber: &Scrubber, text: &str) -> String {
        let mut text = text.to_owned();
        scrubber.clean(&mut text);
        text
    }

    #[test]
    fn fragments_of_eight_or_more_characters_are_scrubbed() {
        let key = ApiKey::new(KEY);
        let scrubber = Scrubber::new([&key]);
        // The whole key, twice.
        assert_eq!(
            scrubbed(&scrubber, &format!("{KEY} and again {KEY}")),
            "AIza…k3Qf and again AIza…k3Qf"
        );
        // An 8-character fragment from the middle, and a 22-character one.
        assert_eq!(
            scrubbed(&scrubber, "bad key: this-is-."),
            "bad key: AIza…k3Qf."
        );
        assert_eq!(
            scrubbed(&scrubber, "key=D-this-is-not-a-real-k!"),
            "key=AIza…k3Qf!"
        );
        // 7 characters are not a fragment; short texts pass as they are.
        for text in ["this-is", "", "AIza", "not-a-r"] {
            assert_eq!(scrubbed(&scrubber, text), text);
        }
    }

    #[test]
    fn non_ascii_text_and_keys() {
        let key = ApiKey::new(KEY);
        let unicode = ApiKey::new("ключ-совсем-секретный");
        let scrubber = Scrubber::new([&key, &unicode]);
        assert_eq!(
            scrubbed(&scrubber, "机器学习 SyD-this-is 的密钥 ключ-совсем!"),
            format!(
                "机器学习 {} 的密钥 {}!",
                key.fingerprint(),
                unicode.fingerprint()
            )
        );
        assert_eq!(scrubbed(&scrubber, "совсем"), "совсем");
    }

    #[test]
    fn several_keys_and_short_keys() {
        let a = ApiKey::new("key-aaaaaaaaaaaaaaa-one");
        let b = ApiKey::new("short");
        let empty = ApiKey::new("");
        let scrubber = Scrubber::new([&a, &b, &empty]);
        assert_eq!(
            scrubbed(&scrubber, "x aaaaaaaa-one y short z shor"),
            format!("x {} y {} z shor", a.fingerprint(), b.fingerprint())
        );
        assert_eq!(scrubbed(&Scrubber::new([&empty]), "anything"), "anything");
    }

    #[test]
    fn finds_what_a_plain_search_of_every_window_finds() {
        use rand::{Rng, SeedableRng};
        let keys = [
            ApiKey::new(KEY),
            ApiKey::new("sk-proj-AAAAbbbbCCCC"),
            ApiKey::new("ключ-совсем-секретный"),
            ApiKey::new("short"),
        ];
        let scrubber = Scrubber::new(&keys);
        // Every fragment of every key, as a plain list of strings.
        let fragments: Vec<(usize, String)> = keys
            .iter()
            .enumerate()
            .flat_map(|(index, key)| {
                let chars: Vec<char> = key.expose().chars().collect();
                let length = chars.len().min(FRAGMENT_CHARS);
                let windows: Vec<String> =
                    chars.windows(length).map(|w| w.iter().collect()).collect();
                windows.into_iter().map(move |w| (index, w))
            })
            .collect();
        let alphabet: Vec<char> = "AIzaSyD-thisk3Qfsk-projbC ключсовем机器.".chars().collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..rng.gen_range(0..40) {
                if rng.gen_bool(0.1) {
                    let (_, fragment) = &fragments[rng.gen_range(0..fragments.len())];
                    text.push_str(fragment);
                } else {
                    text.push(alphabet[rng.gen_range(0..alphabet.len())]);
                }
            }
            // The plain search: every window of every fragment's length.
            let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            let found = fragments.iter().any(|(_, fragment)| {
                let n = fragment.chars().count();
                (0..starts.len()).any(|s| {
                    let end = starts.get(s + n).copied().unwrap_or(text.len());
                    s + n <= starts.len() && text[starts[s]..end] == **fragment
                })
            });
            assert_eq!(!scrubber.hits(&text).is_empty(), found, "{text:?}");
            let cleaned = scrubbed(&scrubber, &text);
            assert!(scrubber.hits(&cleaned).is_empty(), "{text:?} → {cleaned:?}");
        }
    }

    #[test]
    fn a_fingerprint_never_completes_a_fragment_with_its_neighbours() {
        // This key's fingerprint starts with "abcd", which the key also
        // holds after "wxyz": "wxyz" + fingerprint would show "wxyzabcd".
        let key = ApiKey::new("abcd-0000-wxyzabcd-1111-zzzz");
        let scrubber = Scrubber::new([&key]);
        assert_eq!(key.fingerprint(), "abcd…zzzz");
        assert_eq!(scrubbed(&scrubber, "wxyz0000-wxy"), "wxyz…");
        let text = scrubbed(&scrubber, "…wxyzabcd-1111 and wxyz1111-zzzz");
        assert!(scrubber.hits(&text).is_empty(), "{text}");
    }
}
