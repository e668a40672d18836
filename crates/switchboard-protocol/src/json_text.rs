//! JSON string literals written straight into a frame being built.
//!
//! The hot encoders (a classic DM's frame, a v1 DM's frame, an ack) build
//! their frame in one `String`. A value that needs no escaping, which names
//! and most texts are, is its own literal between quotes and is copied as
//! it is, with no second UTF-8 check (it is a `str`); any other value is
//! escaped by serde_json, straight into the frame. Nothing here escapes by
//! hand.

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
    // serde escapes straight into the frame, with no literal of its own
    // allocated per message. Serialising a `&str` cannot fail.
    let _ = serde_json::to_writer(Utf8Writer(out), value);
}

/// Lets serde write into a `String`: serde's formatter only ever writes
/// whole UTF-8 sequences (the text's runs between escapes, and escapes).
struct Utf8Writer<'a>(&'a mut String);

impl std::io::Write for Utf8Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.push_str(text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
