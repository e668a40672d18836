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

use serde::{Deserialize, Serialize};

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
struct DirectShape {
    dst: Option<String>,
    #[serde(default)]
    msg: Option<serde_json::Value>,
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
    // Cheap pre-check: only something that looks like an object can be a DM.
    if !text.trim_start().starts_with('{') {
        return Inbound::ToServer(text.to_owned());
    }
    match serde_json::from_str::<DirectShape>(text) {
        Ok(DirectShape { dst: Some(dst), msg }) => {
            let msg = match msg {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s,
                Some(other) => other.to_string(),
            };
            Inbound::Direct { dst, msg }
        }
        _ => Inbound::ToServer(text.to_owned()),
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
    fn direct_round_trips_with_escapes() {
        let encoded = encode_direct("C1我是客户端", "b", "line\nbreak \"quoted\" <tag>");
        let back: serde_json::Value = serde_json::from_str(&encoded).unwrap_or_default();
        assert_eq!(back["src"], "C1我是客户端");
        assert_eq!(back["msg"], "line\nbreak \"quoted\" <tag>");
    }
}
