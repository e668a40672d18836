//! The classic protocol: wire-compatible with the Qt tutorial's clients.
//!
//! A client's text frame is either a private message — a JSON object with a
//! string `"dst"` — or, in every other case (plain text, invalid JSON, JSON
//! without `dst`), a message to the server. Recipients of a private message
//! get the compact JSON object `{"src","dst","msg"}`; everything else the hub
//! sends a classic client is plain text.
//!
//! The one deliberate difference from the tutorial: `src` is always the
//! sender's real name, stamped by the hub. Whatever `src` the client wrote is
//! ignored.
//!
//! On the hub's hot path a private message's `msg` is not unescaped and
//! escaped again: [`parse_direct`] keeps the sender's JSON string literal and
//! [`encode_direct_raw`] splices it into the recipient's object. The
//! recipient gets the same JSON value as from [`encode_direct`]; only the
//! escaping inside `msg` is the sender's (e.g. `\u00e9` stays `\u00e9`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::borrowed::Borrowed;
use crate::json_text::push_json_str;

/// What a classic client's text frame asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A private message to the client named `dst`.
    Direct {
        /// The recipient's name, as the client wrote it (not yet validated).
        dst: String,
        /// The message text. A non-string `msg` is kept as its JSON text.
        msg: String,
    },
    /// Anything else: a message to the server.
    ToServer(String),
}

#[derive(Deserialize)]
struct DirectShape<'a> {
    #[serde(borrow)]
    dst: Option<Borrowed<'a>>,
    #[serde(default, borrow)]
    msg: Option<&'a RawValue>,
}

/// The common DM read in one pass: `msg` as the text between its quotes,
/// borrowed when it has no escapes, which serde then knows from its own
/// scan (a `RawValue` would be scanned, then searched for a backslash).
#[derive(Deserialize)]
struct PlainDirectShape<'a> {
    #[serde(borrow)]
    dst: Option<Borrowed<'a>>,
    #[serde(default, borrow)]
    msg: PlainMsg<'a>,
}

/// A DM's `msg` as the one-pass read sees it.
#[derive(Default)]
enum PlainMsg<'a> {
    /// A string without escapes: its text, borrowed from the frame.
    Plain(&'a str),
    /// Anything else (absent, `null`, an escaped string, a number, an
    /// object...): read again by the full parse, which knows each case.
    #[default]
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for PlainMsg<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct PlainVisitor<'a>(std::marker::PhantomData<&'a str>);
        impl<'de: 'a, 'a> Visitor<'de> for PlainVisitor<'a> {
            type Value = PlainMsg<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(PlainMsg::Plain(text))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(PlainMsg::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(PlainMsg::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(PlainMsg::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(PlainMsg::Other)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(PlainMsg::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(PlainMsg::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(PlainMsg::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(PlainMsg::Other)
            }
        }
        deserializer.deserialize_any(PlainVisitor(std::marker::PhantomData))
    }
}

/// A classic private message as parsed by [`parse_direct`]: borrowed from the
/// frame where possible, with `msg` also kept as the JSON text the client
/// wrote, so that a classic recipient's frame can be built without escaping
/// the text again ([`encode_direct_raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirect<'a> {
    /// The recipient's name, as the client wrote it (not yet validated).
    pub dst: Cow<'a, str>,
    /// The message text (a non-string `msg` is kept as its compact JSON text).
    pub msg: Cow<'a, str>,
    /// `msg` as a JSON string literal, quotes included: the client's own
    /// escaping when it sent a string, else `msg` encoded by serde.
    pub msg_json: Cow<'a, str>,
}

/// Classifies a classic client's text frame without copying: `Some` for a
/// private message, `None` for a message to the server (the frame itself).
/// Same classification as [`parse`].
///
/// ```
/// use std::borrow::Cow;
/// use switchboard_protocol::classic::parse_direct;
/// let dm = parse_direct(r#"{"dst":"bob","msg":"a \"b\""}"#).unwrap();
/// assert_eq!((&*dm.dst, &*dm.msg, &*dm.msg_json), ("bob", "a \"b\"", r#""a \"b\"""#));
/// // Nothing copied but what needed unescaping.
/// assert!(matches!((&dm.dst, &dm.msg_json), (Cow::Borrowed(_), Cow::Borrowed(_))));
/// assert!(matches!(parse_direct(r#"{"dst":"b\u006fb"}"#).unwrap().dst, Cow::Owned(_)));
/// assert!(parse_direct("hello server").is_none());
/// ```
pub fn parse_direct(text: &str) -> Option<RawDirect<'_>> {
    // Cheap pre-check: only something that looks like an object can be a DM.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let PlainDirectShape { dst, msg } = serde_json::from_str(text).ok()?;
    let Borrowed(dst) = dst?;
    // serde hands out a borrowed string only as a slice of `text`, between
    // its quotes: the literal is that slice and its quotes.
    if let PlainMsg::Plain(inner) = msg {
        if let Some(literal) = enclosing_literal(text, inner) {
            return Some(RawDirect {
                dst,
                msg: Cow::Borrowed(inner),
                msg_json: Cow::Borrowed(literal),
            });
        }
    }
    parse_direct_full(text)
}

/// `inner`'s quoted literal in `text`, if `inner` is a slice of `text`
/// between two quotes.
fn enclosing_literal<'a>(text: &'a str, inner: &str) -> Option<&'a str> {
    let start = (inner.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let literal = text.get(start.checked_sub(1)?..start + inner.len() + 1)?;
    (literal.starts_with('"') && literal.ends_with('"')).then_some(literal)
}

/// [`parse_direct`] for any `msg`: kept as the client's JSON text, then
/// unescaped or turned into compact text as it needs.
fn parse_direct_full(text: &str) -> Option<RawDirect<'_>> {
    let DirectShape { dst, msg } = serde_json::from_str::<DirectShape<'_>>(text).ok()?;
    let Borrowed(dst) = dst?;
    let (msg, msg_json) = match msg.map(RawValue::get) {
        None | Some("null") => (Cow::Borrowed(""), Cow::Borrowed("\"\"")),
        Some(raw) if raw.starts_with('"') => {
            // A string literal, checked by the parse above: without a
            // backslash its text is what lies between the quotes, so it is
            // not parsed a second time (issue 6); with one, it is unescaped.
            // The raw literal is kept either way.
            let inner = &raw[1..raw.len() - 1];
            let msg = if inner.contains('\\') {
                Cow::Owned(serde_json::from_str::<String>(raw).ok()?)
            } else {
                Cow::Borrowed(inner)
            };
            (msg, Cow::Borrowed(raw))
        }
        Some(raw) => {
            // Any other JSON value: its compact text, as a string (rare path).
            let value = serde_json::from_str::<serde_json::Value>(raw).ok()?;
            let compact = value.to_string();
            let literal = serde_json::to_string(&compact).ok()?;
            (Cow::Owned(compact), Cow::Owned(literal))
        }
    };
    Some(RawDirect { dst, msg, msg_json })
}

/// Classifies a classic client's text frame. Never fails: what is not a
/// private message is a message to the server.
///
/// ```
/// use switchboard_protocol::classic::{parse, Inbound};
/// assert_eq!(
///     parse(r#"{"src":"mallory","dst":"bob","msg":"hi"}"#),
///     Inbound::Direct { dst: "bob".into(), msg: "hi".into() }
/// );
/// assert_eq!(parse("hello server"), Inbound::ToServer("hello server".into()));
/// ```
pub fn parse(text: &str) -> Inbound {
    match parse_direct(text) {
        Some(RawDirect { dst, msg, .. }) => {
            Inbound::Direct { dst: dst.into_owned(), msg: msg.into_owned() }
        }
        None => Inbound::ToServer(text.to_owned()),
    }
}

/// The object a classic recipient of a private message receives.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Direct<'a> {
    /// The sender, stamped by the hub.
    pub src: &'a str,
    /// The recipient.
    pub dst: &'a str,
    /// The text.
    pub msg: &'a str,
}

/// Encodes a private message for a classic recipient: compact JSON, as the
/// tutorial's `QJsonDocument::Compact` does.
///
/// ```
/// use switchboard_protocol::classic::encode_direct;
/// assert_eq!(encode_direct("a", "b", "hi \"x\""), r#"{"src":"a","dst":"b","msg":"hi \"x\""}"#);
/// ```
pub fn encode_direct(src: &str, dst: &str, msg: &str) -> String {
    serde_json::to_string(&Direct { src, dst, msg }).unwrap_or_default()
}

/// As [`encode_direct`], with `msg_json` already a JSON string literal
/// (quotes included, e.g. [`RawDirect::msg_json`]), spliced in as is: the
/// text is not unescaped and escaped again. `src` and `dst` are still escaped
/// by serde. The result is the same JSON value as [`encode_direct`]'s; only
/// the escaping of `msg` may differ (it is the sender's).
///
/// ```
/// use switchboard_protocol::classic::encode_direct_raw;
/// assert_eq!(encode_direct_raw("a", "b", r#""hi \u0022""#), r#"{"src":"a","dst":"b","msg":"hi \u0022"}"#);
/// ```
pub fn encode_direct_raw(src: &str, dst: &str, msg_json: &str) -> String {
    // Exact for names without escapes (always, for validated names): the
    // buffer is never regrown and becomes a shared frame without a copy.
    let mut out = String::with_capacity(26 + src.len() + dst.len() + msg_json.len());
    out.push_str("{\"src\":");
    push_json_str(&mut out, src);
    out.push_str(",\"dst\":");
    push_json_str(&mut out, dst);
    out.push_str(",\"msg\":");
    out.push_str(msg_json);
    out.push('}');
    out
}

/// Where `dm`'s text lies, as it is, in the frame [`encode_direct_raw`]
/// built from it (`frame_len` bytes): `Some(range)` when the sender's `msg`
/// was a string literal without escapes, the common case, so that the text
/// need not be kept apart from the frame; `None` otherwise.
///
/// ```
/// use switchboard_protocol::classic::{encode_direct_raw, parse_direct, text_in_frame};
/// let dm = parse_direct(r#"{"dst":"bob","msg":"hi there"}"#).unwrap();
/// let frame = encode_direct_raw("alice", &dm.dst, &dm.msg_json);
/// assert_eq!(&frame[text_in_frame(&dm, frame.len()).unwrap()], "hi there");
/// let escaped = parse_direct(r#"{"dst":"bob","msg":"a \"b\""}"#).unwrap();
/// assert_eq!(text_in_frame(&escaped, 99), None);
/// ```
pub fn text_in_frame(dm: &RawDirect<'_>, frame_len: usize) -> Option<std::ops::Range<usize>> {
    // The frame ends with `msg_json` and `}`; a literal whose text is the
    // part between its quotes is one without escapes.
    let verbatim = matches!(dm.msg, Cow::Borrowed(_)) && dm.msg_json.len() == dm.msg.len() + 2;
    let end = frame_len.checked_sub(2).filter(|_| verbatim)?;
    Some(end.checked_sub(dm.msg.len())?..end)
}

/// The plain-text notice a classic sender gets when its recipient is not online.
pub fn offline_notice(dst: &str) -> String {
    format!("switchboard: {dst} is not online; message not delivered")
}

/// The plain-text notice for any other refused message (bad name, rate limit, ...).
pub fn error_notice(reason: &str) -> String {
    format!("switchboard: {reason}")
}

/// How a room message appears to a classic client: plain text naming room and sender.
pub fn encode_room(room: &str, from: &str, text: &str) -> String {
    format!("[#{room}] {from}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases: &[(&str, Inbound)] = &[
            (
                r#"{"src":"a","dst":"b","msg":"hi"}"#,
                Inbound::Direct { dst: "b".into(), msg: "hi".into() },
            ),
            (r#"{"dst":"b"}"#, Inbound::Direct { dst: "b".into(), msg: String::new() }),
            (
                r#"{"dst":"b","msg":{"x":1}}"#,
                Inbound::Direct { dst: "b".into(), msg: r#"{"x":1}"#.into() },
            ),
            (r#"  {"dst":"b","msg":"x"}"#, Inbound::Direct { dst: "b".into(), msg: "x".into() }),
            ("plain text", Inbound::ToServer("plain text".into())),
            ("", Inbound::ToServer(String::new())),
            ("{not json", Inbound::ToServer("{not json".into())),
            (r#"{"msg":"no dst"}"#, Inbound::ToServer(r#"{"msg":"no dst"}"#.into())),
            (r#"{"dst":5,"msg":"x"}"#, Inbound::ToServer(r#"{"dst":5,"msg":"x"}"#.into())),
            ("[1,2]", Inbound::ToServer("[1,2]".into())),
            ("42", Inbound::ToServer("42".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(&parse(text), expected, "{text}");
        }
    }

    #[test]
    fn raw_parse_and_splice_match_the_json_round_trip() {
        let frames = [
            r#"{"src":"a","dst":"b","msg":"hi"}"#,
            r#"{"dst":"b"}"#,
            r#"{"dst":"b","msg":null}"#,
            r#"{"dst":"b","msg":{"x": 1}}"#,
            r#"{"dst":"b","msg":[1, "two"]}"#,
            r#"{"dst":"b","msg":42}"#,
            r#"{"dst":"b\u00e9","msg":"line\nbreak \"q\" \u00e9 \/ \ud83d\ude00"}"#,
            r#"{ "msg" : "first" , "dst" : "b" }"#,
        ];
        for frame in frames {
            let Some(raw) = parse_direct(frame) else { panic!("{frame}") };
            let Inbound::Direct { dst, msg } = parse(frame) else { panic!("{frame}") };
            assert_eq!((&*raw.dst, &*raw.msg), (dst.as_str(), msg.as_str()), "{frame}");
            let spliced = encode_direct_raw("C1我", &raw.dst, &raw.msg_json);
            let spliced: serde_json::Value = serde_json::from_str(&spliced).unwrap_or_default();
            let expected: serde_json::Value =
                serde_json::from_str(&encode_direct("C1我", &dst, &msg)).unwrap_or_default();
            assert_eq!(spliced, expected, "{frame}");
        }
    }

    #[test]
    fn the_one_pass_read_agrees_with_the_full_parse() {
        // A string without escapes: read in one pass, nothing copied.
        let plain = [
            r#"{"dst":"b","msg":"hi"}"#,
            r#"{"dst":"b","msg":""}"#,
            r#"{"dst":"b","msg":"ünïcødé 名前 🎉"}"#,
            r#"{"msg":"first","dst":"b"}"#,
            r#"{ "dst" : "b" , "msg" : "spaced" }"#,
            r#"{"dst":"b","other":{"msg":"inner"},"msg":"outer"}"#,
        ];
        for frame in plain {
            let dm = parse_direct(frame).expect("a DM");
            assert!(matches!(dm.msg_json, Cow::Borrowed(_)), "{frame}");
            assert_eq!(Some(dm), parse_direct_full(frame), "{frame}");
        }
        // Anything else: the same answer as the full parse, DM or not.
        let others = [
            r#"{"dst":"b","msg":"a \"b\""}"#,
            r#"{"dst":"b","msg":"\u00e9"}"#,
            r#"{"dst":"b","msg":"\ud800"}"#,
            r#"{"dst":"b","msg":null}"#,
            r#"{"dst":"b"}"#,
            r#"{"dst":"b","msg":true}"#,
            r#"{"dst":"b","msg":-1.5e3}"#,
            r#"{"dst":"b","msg":1e400}"#,
            r#"{"dst":"b","msg":18446744073709551615}"#,
            r#"{"dst":"b","msg":[1,[2,{"x":"y"}]]}"#,
            r#"{"dst":"b","msg":{"a":{"b":[null]}}}"#,
            r#"{"dst":"b","msg":"one","msg":"two"}"#,
            r#"{"dst":"b","msg":"x""#,
            r#"{"dst":"b","msg":"x"} trailing"#,
            r#"{"dst":null,"msg":"x"}"#,
        ];
        for frame in others {
            assert_eq!(parse_direct(frame), parse_direct_full(frame), "{frame}");
        }
    }

    #[test]
    fn the_one_pass_read_agrees_with_the_full_parse_on_random_frames() {
        let keys =
            [r#""dst""#, r#""msg""#, r#""src""#, r#""other""#, r#""d\u0073t""#, r#""m\u0073g""#];
        let values = [
            r#""plain text""#,
            r#""""#,
            r#""é名🎉""#,
            r#""a \"q\"""#,
            r#""\u00e9\n""#,
            r#""\ud800""#,
            "\"raw\u{1}control\"",
            "null",
            "true",
            "42",
            "-1.5e3",
            "1e400",
            r#"[1,"x",{"msg":"y"}]"#,
            r#"{"dst":"z"}"#,
            r#""unterminated"#,
        ];
        let spaces = ["", " ", "\n\t"];
        let mut state = 0x5eed_u64;
        let mut next = |n: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        let (mut direct, mut plain) = (0, 0);
        for _ in 0..20_000 {
            let mut frame = String::from(spaces[next(3)]);
            frame.push('{');
            for pair in 0..next(5) {
                if pair > 0 {
                    frame.push(',');
                }
                frame.push_str(spaces[next(3)]);
                frame.push_str(keys[next(keys.len())]);
                frame.push_str(spaces[next(3)]);
                frame.push(':');
                frame.push_str(values[next(values.len())]);
            }
            frame.push('}');
            match next(8) {
                // Cut anywhere (on a character boundary), or add a tail.
                0 => {
                    let mut cut = next(frame.len() + 1);
                    while !frame.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    frame.truncate(cut);
                }
                1 => frame.push_str(" junk"),
                _ => {}
            }
            let one_pass = parse_direct(&frame);
            assert_eq!(one_pass, parse_direct_full(&frame), "{frame}");
            if let Some(dm) = one_pass {
                direct += 1;
                plain += usize::from(matches!(dm.msg, Cow::Borrowed(m) if !m.is_empty()));
            }
        }
        // The generator reaches both outcomes, and the one-pass case.
        assert!(direct > 500 && plain > 20, "{direct} DMs, {plain} borrowed");
    }

    #[test]
    fn the_text_of_a_dm_is_what_serde_json_decodes() {
        let values = ["plain", "", "ünïcødé 名前 🎉", "a\"b", "back\\slash", "nl\n\t", "\u{1f}"];
        for value in values {
            let frame = format!(r#"{{"dst":"b","msg":{}}}"#, serde_json::to_string(value).unwrap());
            let Some(raw) = parse_direct(&frame) else { panic!("{frame}") };
            assert_eq!(&*raw.msg, value, "{frame}");
        }
        // A raw control character is not JSON: a message to the server.
        let invalid = "{\"dst\":\"b\",\"msg\":\"a\u{1}b\"}";
        assert!(serde_json::from_str::<serde_json::Value>(invalid).is_err());
        assert!(parse_direct(invalid).is_none(), "{invalid:?}");
    }

    #[test]
    fn direct_round_trips_with_escapes() {
        let encoded = encode_direct("C1我是客户端", "b", "line\nbreak \"quoted\" <tag>");
        let back: serde_json::Value = serde_json::from_str(&encoded).unwrap_or_default();
        assert_eq!(back["src"], "C1我是客户端");
        assert_eq!(back["msg"], "line\nbreak \"quoted\" <tag>");
    }
}
