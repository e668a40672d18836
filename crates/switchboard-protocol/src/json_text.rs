//! JSON string literals written straight into a frame being built.
//!
//! The hot encoders (a classic DM's frame, a v1 DM's frame, an ack) build
//! their frame in one `String`. A value that needs no escaping, which names
//! and most texts are, is its own literal between quotes and is copied as
//! it is; any other value is escaped by serde_json. Nothing here escapes by
//! hand, and nothing is validated as UTF-8 again: the value is a `str`.

/// Appends `value` as a JSON string literal, exactly as serde_json writes it.
pub(crate) fn push_json_str(out: &mut String, value: &str) {
    // Without a control character, quote or backslash, serde writes the
    // text unchanged between quotes. `fold`, not `all`: without an early
    // exit the compiler can vectorise the scan (texts are mostly plain).
    let plain =
        !value.bytes().fold(false, |seen, b| seen | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if plain {
        out.reserve(value.len() + 2);
        out.push('"');
        out.push_str(value);
        out.push('"');
        return;
    }
    // serde's escaped output, appended to the frame.
    match serde_json::to_string(value) {
        Ok(literal) => out.push_str(&literal),
        // Serialising a `&str` cannot fail.
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_literals_match_serde_with_and_without_escapes() {
        let values = [
            "alice",
            "",
            "ünïcødé 名前",
            "a\"b",
            "back\\slash",
            "tab\there",
            "nl\n",
            "\u{1f}",
            "\u{7f}del",
            "emoji 🎉",
            "</script>",
            "a long plain text that goes past any vector width: 0123456789abcdef0123456789abcdef",
            "a long text with one quote at the very end, past any vector width: 0123456789abcdef\"",
        ];
        for value in values {
            let mut out = String::from("prefix:");
            push_json_str(&mut out, value);
            assert_eq!(
                out,
                format!("prefix:{}", serde_json::to_string(value).unwrap()),
                "{value:?}"
            );
        }
    }
}
