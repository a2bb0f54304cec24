//! The input-token heuristic: what keyfan assumes a text costs before any
//! API has counted it (the pool's TPM admission, `--max-cost` reservations,
//! `keyfan estimate`).
//!
//! Tokenizers split English into about four characters per token, while a
//! CJK character (Chinese hanzi, Japanese kana and kanji, Korean hangul) is
//! about one token of its own. So each run of text is counted by its script:
//!
//! * ASCII: one token per 4 characters (rounded up over the whole text);
//! * CJK ideographs, kana, hangul and full-width forms: one token each;
//! * any other character (accented Latin, Cyrillic, Greek, emoji…): one
//!   token per 2 characters.
//!
//! A text counts at least 1 token. Mixed text adds the three parts, so
//! `用一句话解释 machine learning` is 6 + ⌈17 / 4⌉ = 11 tokens.

/// The estimated tokens of `text` (see the module's rules).
pub fn estimate_tokens(text: &str) -> u64 {
    let (mut ascii, mut wide, mut other) = (0u64, 0u64, 0u64);
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else if is_wide(c) {
            wide += 1;
        } else {
            other += 1;
        }
    }
    (ascii.div_ceil(4) + wide + other.div_ceil(2)).max(1)
}

/// The estimated input tokens of a request: its prompt and its system
/// instruction.
pub fn prompt_tokens(prompt: &str, system: Option<&str>) -> u64 {
    estimate_tokens(prompt) + system.map_or(0, estimate_tokens)
}

/// The estimated input tokens of a job item sent to `model`: its prompt,
/// its system instruction, the turns of its conversation and its media
/// ([`super::media_tokens`]).
pub fn item_tokens(item: &crate::job::Item, model: &str) -> u64 {
    text_tokens(item) + super::media_tokens(item, model).tokens
}

/// The estimated tokens of an item's text: its prompt, its system
/// instruction and the turns of its conversation.
pub(super) fn text_tokens(item: &crate::job::Item) -> u64 {
    prompt_tokens(&item.prompt, item.system.as_deref())
        + item
            .turns
            .iter()
            .map(|turn| estimate_tokens(&turn.text))
            .sum::<u64>()
}

/// CJK scripts and full-width forms: about one token per character.
fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF      // Hangul Jamo
        | 0x2E80..=0x2FDF    // CJK radicals
        | 0x3000..=0x30FF    // CJK punctuation, hiragana, katakana
        | 0x3100..=0x31FF    // bopomofo, Hangul compatibility, kana extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF00..=0xFFEF    // full-width and half-width forms
        | 0x20000..=0x3FFFF) // CJK extensions B and later
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_script_counts_by_its_rule() {
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcdefgh!"), 3);
        assert_eq!(estimate_tokens("机器学习"), 4);
        assert_eq!(estimate_tokens("こんにちは"), 5);
        assert_eq!(estimate_tokens("안녕"), 2);
        assert_eq!(estimate_tokens("éèêë"), 2);
        assert_eq!(estimate_tokens("用一句话解释 machine learning"), 6 + 5);
        assert_eq!(estimate_tokens(""), 1);
    }
}
