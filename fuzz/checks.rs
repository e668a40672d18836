//! What each fuzz target checks, in one place: compiled into the libFuzzer
//! targets (`fuzz/fuzz_targets/*.rs`, nightly) and into the stable replay
//! test `crates/switchboard/tests/it/fuzz_regressions.rs`, which runs every file
//! of `fuzz/corpus/TARGET/` and `fuzz/regressions/TARGET/` through them.
//!
//! Beyond "never panics" (the protocol crate's invariant), each check asserts
//! a property where the parser has one: what parses re-encodes to the same
//! bytes or the same value.

use switchboard::config::Config;
use switchboard_protocol::{binary, classic, v1};

/// One target's check: panics when the input breaks a property.
pub type Check = fn(&[u8]);

/// The targets, by the name of their corpus and regression directories.
pub const TARGETS: &[(&str, Check)] = &[
    ("v1_request", v1_request),
    ("binary_header", binary_header),
    ("classic", classic),
    ("config", config),
];

/// Text frames reach the parsers as `&str` (tungstenite has checked UTF-8);
/// invalid bytes are replaced rather than skipped so every input is used.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Protocol v1 envelopes: a request that parses serialises to one that
/// parses back equal; a refusal always carries a message; the one-pass
/// parse of a `dm` (issue 6) accepts exactly what serde's derived parser
/// accepts, as the same request.
pub fn v1_request(data: &[u8]) {
    let text = text(data);
    let general = serde_json::from_str::<v1::Request>(&text).ok();
    assert_eq!(
        v1::parse_request(&text).ok(),
        general,
        "parse_request and serde's parser disagree on {text:?}"
    );
    // The borrowing DM parser takes exactly the DMs, with the same fields.
    let borrowed = v1::parse_dm(&text).map(|dm| v1::Request::Dm {
        id: dm.id.map(|id| id.into_owned()),
        to: dm.to.into_owned(),
        text: dm.text.into_owned(),
        receipt: dm.receipt,
    });
    let dm = general.clone().filter(|request| matches!(request, v1::Request::Dm { .. }));
    assert_eq!(borrowed, dm, "parse_dm and serde's parser disagree on {text:?}");
    // The ack written without serde's key escaping is serde's, for any id.
    let ack = v1::Reply::Ack { id: text.to_string(), status: Some(v1::AckStatus::Live) };
    assert_eq!(ack.encode(), serde_json::to_string(&ack).expect("an ack serialises"));
    match v1::parse_request(&text) {
        Ok(request) => {
            let json = serde_json::to_string(&request).expect("a parsed request serialises");
            let again = v1::parse_request(&json).expect("a serialised request parses");
            assert_eq!(again, request, "round trip of {text:?}");
        }
        Err(error) => assert!(!error.message.is_empty(), "empty error for {text:?}"),
    }
}

/// Binary headers, both directions: what parses re-encodes to the same frame.
pub fn binary_header(data: &[u8]) {
    if let Ok(out) = binary::parse_outgoing(data) {
        let frame = binary::encode_outgoing(out.id, out.target, out.payload);
        assert_eq!(&frame[..], data, "outgoing round trip");
    }
    if let Ok(inc) = binary::parse_incoming(data) {
        let frame = binary::encode_incoming(inc.seq, inc.ts, inc.from, inc.room, inc.payload);
        assert_eq!(&frame[..], data, "incoming round trip");
    }
}

/// Classic frames: `parse` and `parse_direct` agree; a private message
/// forwarded with the sender's own escaping (`encode_direct_raw`) is the same
/// JSON value as one encoded afresh (`encode_direct`), and carries the text.
pub fn classic(data: &[u8]) {
    let text = text(data);
    let parsed = classic::parse(&text);
    match classic::parse_direct(&text) {
        Some(raw) => {
            let expected =
                classic::Inbound::Direct { dst: raw.dst.to_string(), msg: raw.msg.to_string() };
            assert_eq!(parsed, expected, "parse and parse_direct disagree on {text:?}");
            let spliced = classic::encode_direct_raw("src", &raw.dst, &raw.msg_json);
            // Where the hub reads the text back from the frame, it is the text.
            if let Some(range) = classic::text_in_frame(&raw, spliced.len()) {
                assert_eq!(spliced.get(range), Some(&*raw.msg), "text_in_frame of {text:?}");
            }
            let fresh = classic::encode_direct("src", &raw.dst, &raw.msg);
            let spliced: serde_json::Value = serde_json::from_str(&spliced)
                .unwrap_or_else(|e| panic!("forwarded frame is not JSON ({e}): {spliced:?}"));
            let fresh: serde_json::Value =
                serde_json::from_str(&fresh).expect("fresh frame is JSON");
            assert_eq!(spliced, fresh, "forwarding changed the message of {text:?}");
            assert_eq!(fresh["msg"].as_str(), Some(&*raw.msg));
            // The name, borrowed or unescaped, is the string the JSON holds
            // (when `Value` reads it: fields the parser skips are not
            // decoded, so a lone surrogate escape in one passes).
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                assert_eq!(value["dst"].as_str(), Some(&*raw.dst), "wrong recipient in {text:?}");
            }
        }
        None => assert_eq!(parsed, classic::Inbound::ToServer(text.to_string())),
    }
}

/// The config file: parsing and validating never panic, and a valid config
/// yields its derived settings.
pub fn config(data: &[u8]) {
    let text = text(data);
    if let Ok(config) = Config::from_toml(&text) {
        if config.validate().is_ok() {
            let _ = (config.hub_limits(), config.ping_interval(), config.handshake_timeout());
        }
    }
}
