//! docs/protocol.md is normative: every example in it parses with the
//! protocol crate, and a scripted session through the real server produces
//! frames with exactly the fields of the examples of their type.

use std::collections::BTreeSet;

use crate::common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard_protocol::v1::{self, ErrorCode, Incoming};
use switchboard_protocol::{binary, close};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const SPEC: &str = include_str!("../../../../docs/protocol.md");

/// One fenced block of the spec: its info string, first line number and body.
#[derive(Debug)]
struct Example {
    tag: String,
    line: usize,
    body: String,
}

/// Every fenced code block in the spec, in order.
fn blocks() -> Vec<Example> {
    let mut found = Vec::new();
    let mut open: Option<Example> = None;
    for (index, line) in SPEC.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Example {
                    tag: info.trim().to_owned(),
                    line: index + 1,
                    body: String::new(),
                })
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => found.extend(open.take()),
            (Some(block), _) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unterminated code block in docs/protocol.md");
    found
}

fn tagged(tag: &str) -> Vec<Example> {
    let found: Vec<Example> = blocks().into_iter().filter(|b| b.tag == tag).collect();
    assert!(!found.is_empty(), "no `{tag}` examples in docs/protocol.md");
    found
}

fn json_of(example: &Example) -> Value {
    serde_json::from_str(&example.body)
        .unwrap_or_else(|e| panic!("line {}: not JSON ({e}): {}", example.line, example.body))
}

/// The bytes of a `hex` block: pairs of hex digits, `#` comments.
fn hex_of(example: &Example) -> Vec<u8> {
    example
        .body
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or_default().split_whitespace())
        .map(|pair| {
            u8::from_str_radix(pair, 16)
                .unwrap_or_else(|e| panic!("line {}: bad hex {pair:?}: {e}", example.line))
        })
        .collect()
}

#[test]
fn every_fenced_block_is_tagged_with_a_known_scheme() {
    let known =
        ["json client", "json server", "json classic", "json api", "hex client", "hex server"];
    let illustrations = ["text", "http", "sh"];
    for block in blocks() {
        assert!(
            known.contains(&block.tag.as_str()) || illustrations.contains(&block.tag.as_str()),
            "line {}: unknown code block tag {:?}",
            block.line,
            block.tag
        );
    }
}

#[test]
fn client_examples_parse_as_requests_and_cover_every_type() {
    let mut types = BTreeSet::new();
    for example in tagged("json client") {
        let request = v1::parse_request(example.body.trim()).unwrap_or_else(|e| {
            panic!("line {}: {:?} {}: {}", example.line, e.code, e.message, example.body)
        });
        // The example means what it says: re-encoding keeps every field.
        assert_eq!(
            serde_json::to_value(&request).unwrap_or_default(),
            json_of(&example),
            "line {}",
            example.line
        );
        types.insert(json_of(&example)["type"].as_str().unwrap_or_default().to_owned());
    }
    for kind in v1::KNOWN_TYPES {
        assert!(types.contains(*kind), "no client example of request type {kind:?}");
    }
}

#[test]
fn server_examples_parse_as_incoming_and_cover_every_type() {
    let mut types = BTreeSet::new();
    for example in tagged("json server") {
        let incoming = Incoming::parse(example.body.trim())
            .unwrap_or_else(|e| panic!("line {}: {e}: {}", example.line, example.body));
        // No field of the example is silently dropped by the parser.
        assert_eq!(
            serde_json::to_value(&incoming).map(|v| strip_nulls(&v)).unwrap_or_default(),
            json_of(&example),
            "line {}",
            example.line
        );
        types.insert(json_of(&example)["type"].as_str().unwrap_or_default().to_owned());
    }
    let expected = [
        "welcome", "dm", "room", "server", "presence", "ack", "error", "clients", "members", "pong",
    ];
    for kind in expected {
        assert!(types.contains(kind), "no server example of frame type {kind:?}");
    }
}

/// `Incoming` serialises absent optional fields as null; the wire omits them.
fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn classic_and_api_examples_are_json_objects() {
    for example in tagged("json classic").iter().chain(&tagged("json api")) {
        assert!(json_of(example).is_object(), "line {}", example.line);
    }
    for example in tagged("json classic") {
        let value = json_of(&example);
        assert!(value["dst"].is_string(), "line {}: classic DMs name dst", example.line);
    }
}

#[test]
fn binary_examples_parse_and_re_encode_byte_for_byte() {
    for example in tagged("hex client") {
        let bytes = hex_of(&example);
        let parsed =
            binary::parse_outgoing(&bytes).unwrap_or_else(|e| panic!("line {}: {e}", example.line));
        let encoded = binary::encode_outgoing(parsed.id, parsed.target, parsed.payload);
        assert_eq!(&encoded[..], &bytes[..], "line {}", example.line);
    }
    for example in tagged("hex server") {
        let bytes = hex_of(&example);
        let parsed =
            binary::parse_incoming(&bytes).unwrap_or_else(|e| panic!("line {}: {e}", example.line));
        assert_eq!(parsed.ts, 1_764_100_000_000, "line {}: ts as annotated", example.line);
        let encoded = binary::encode_incoming(
            parsed.seq,
            parsed.ts,
            parsed.from,
            parsed.room,
            parsed.payload,
        );
        assert_eq!(&encoded[..], &bytes[..], "line {}", example.line);
    }
}

#[test]
fn every_error_code_and_close_code_is_documented() {
    for &code in ErrorCode::ALL {
        let wire = serde_json::to_value(code).unwrap_or_default();
        assert_eq!(wire, code.as_str(), "serde and as_str agree");
        let row = format!("| `{}`", code.as_str());
        assert!(SPEC.contains(&row), "error code {} has no row in the spec", code.as_str());
    }
    let closes = [
        close::NORMAL,
        close::GOING_AWAY,
        close::PROTOCOL_ERROR,
        close::INVALID_PAYLOAD,
        close::POLICY_VIOLATION,
        close::MESSAGE_TOO_BIG,
        close::INTERNAL_ERROR,
        close::KICKED,
        close::KEEPALIVE_TIMEOUT,
        close::TOKEN_EXPIRED,
        close::IDLE_TIMEOUT,
    ];
    for code in closes {
        assert!(SPEC.contains(&format!("| {code} |")), "close code {code} has no row in the spec");
    }
    for kind in v1::KNOWN_TYPES {
        assert!(
            SPEC.contains(&format!("### `{kind}`")) || SPEC.contains(&format!("`{kind}` ")),
            "{kind}"
        );
    }
}

/// The spec's examples of one frame type, by the JSON `type`.
fn server_examples(kind: &str) -> Vec<Value> {
    tagged("json server").iter().map(json_of).filter(|v| v["type"] == kind).collect()
}

/// The JSON kind of a value; for objects, also the sorted field names and kinds.
fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(map) => {
            let fields: Vec<String> =
                map.iter().map(|(k, v)| format!("{k}:{}", kind_of(v))).collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

/// `frame` has exactly the fields, with the same JSON kinds, of some example
/// (nested objects such as the welcome's `limits` included).
fn assert_shape(frame: &Value, examples: &[Value]) {
    assert!(
        examples.iter().any(|example| kind_of(example) == kind_of(frame)),
        "frame {frame} matches no example of its type in docs/protocol.md: {examples:?}"
    );
}

/// A v1 session as the spec's reader sees it: frames checked against the
/// spec, deliveries checked for `seq` strictly +1.
struct Session {
    ws: WsClient,
    last_seq: u64,
}

impl Session {
    async fn connect(server: &TestServer, name: &str) -> (Session, Value) {
        let mut request = server.ws_url(name).into_client_request().expect("request");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("switchboard.v1"));
        let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("v1 connect");
        let mut session = Session { ws: WsClient { socket }, last_seq: 0 };
        let welcome = session.expect("welcome").await;
        (session, welcome)
    }

    /// The next frame, which must be of type `kind` and shaped as the spec says.
    async fn expect(&mut self, kind: &str) -> Value {
        let frame = self.ws.recv_json().await;
        assert_eq!(frame["type"], kind, "{frame}");
        Incoming::parse(&frame.to_string()).unwrap_or_else(|e| panic!("{e}: {frame}"));
        assert_shape(&frame, &server_examples(kind));
        if let Some(seq) = frame.get("seq") {
            assert_eq!(seq.as_u64(), Some(self.last_seq + 1), "seq strictly +1: {frame}");
            self.last_seq += 1;
            assert!(frame["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000), "{frame}");
        }
        frame
    }

    async fn send(&mut self, value: Value) {
        v1::parse_request(&value.to_string()).unwrap_or_else(|e| panic!("{}", e.message));
        self.ws.send_json(value).await;
    }
}

#[tokio::test]
async fn scripted_session_matches_the_examples() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let (mut alice, welcome) = Session::connect(&server, "alice").await;
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["protocol"], v1::PROTOCOL_VERSION);
    let (mut bob, _) = Session::connect(&server, "bob").await;

    alice.send(json!({"type":"subscribe","id":"9"})).await;
    let online = alice.expect("members").await;
    assert_eq!(online, json!({"type":"members","id":"9","members":["alice","bob"]}));
    alice.send(json!({"type":"subscribe","id":"10","room":"lobby"})).await;
    assert_eq!(alice.expect("members").await["members"], json!([]));

    let mut carol = classic(&server, "carol").await;
    let joined = alice.expect("presence").await;
    assert_eq!((&joined["name"], &joined["event"]), (&json!("carol"), &json!("join")));

    alice.send(json!({"type":"join","id":"3","room":"lobby"})).await;
    assert_eq!(alice.expect("presence").await["room"], "lobby", "own join is watched");
    assert_eq!(alice.expect("ack").await, json!({"type":"ack","id":"3"}));
    bob.send(json!({"type":"join","id":"b1","room":"lobby"})).await;
    bob.expect("ack").await;
    let bob_joined = alice.expect("presence").await;
    assert_eq!((&bob_joined["room"], &bob_joined["name"]), (&json!("lobby"), &json!("bob")));

    bob.send(json!({"type":"publish","id":"5","room":"lobby","text":"hello room"})).await;
    bob.expect("ack").await;
    let published = alice.expect("room").await;
    assert_eq!(published["from"], "bob");
    assert_eq!(published["text"], "hello room");

    let response = http
        .post(server.http("/api/rooms/lobby/messages"))
        .body("EURUSD 1.0842")
        .send()
        .await
        .expect("publish as operator");
    assert_eq!(response.status(), 200);
    for session in [&mut alice, &mut bob] {
        let quote = session.expect("room").await;
        assert!(quote.get("from").is_none(), "operator publishes carry no from: {quote}");
    }

    alice.send(json!({"type":"dm","id":"1","to":"bob","text":"hi bob"})).await;
    alice.expect("ack").await;
    let dm = bob.expect("dm").await;
    assert_eq!((&dm["from"], &dm["text"]), (&json!("alice"), &json!("hi bob")));

    // Binary, as in the spec's hex examples: the sender learns nothing new,
    // the recipient's binary delivery takes the next seq.
    let frame = binary::encode_outgoing("7", binary::Target::Client("bob"), b"hi");
    alice.ws.socket.send(Message::Binary(frame)).await.expect("send binary");
    assert_eq!(alice.expect("ack").await, json!({"type":"ack","id":"7","status":"live"}));
    let Message::Binary(data) = bob.ws.recv().await else { panic!("expected binary") };
    let got = binary::parse_incoming(&data).expect("binary header");
    assert_eq!(
        (got.seq, got.from, got.room, got.payload),
        (bob.last_seq + 1, "alice", None, &b"hi"[..])
    );
    bob.last_seq += 1;

    alice.send(json!({"type":"dm","id":"2","to":"nobody","text":"x"})).await;
    let offline = alice.expect("error").await;
    assert_eq!((&offline["id"], &offline["code"]), (&json!("2"), &json!("unknown_recipient")));
    alice.ws.send("not json at all").await;
    let bad = alice.expect("error").await;
    assert_eq!(bad["code"], "bad_request");
    alice.ws.send_json(json!({"type":"dance","id":"13"})).await;
    assert_eq!(alice.expect("error").await["code"], "unknown_type");

    alice.send(json!({"type":"members","id":"7","room":"lobby"})).await;
    let members = alice.expect("members").await;
    assert_eq!(
        members,
        json!({"type":"members","id":"7","room":"lobby","members":["alice","bob"]})
    );
    alice.send(json!({"type":"who","id":"8"})).await;
    let clients = alice.expect("clients").await;
    assert_eq!(clients["clients"], json!(["alice", "bob", "carol"]));

    let response = http
        .post(server.http("/api/broadcast"))
        .body("maintenance at noon")
        .send()
        .await
        .expect("broadcast");
    assert_eq!(response.status(), 200);
    assert_eq!(alice.expect("server").await["broadcast"], true);
    assert_eq!(bob.expect("server").await["text"], "maintenance at noon");
    assert_eq!(carol.recv_text().await, "maintenance at noon");

    carol.send(r#"{"dst":"alice","msg":"hi alice"}"#).await;
    let from_classic = alice.expect("dm").await;
    assert_eq!((&from_classic["from"], &from_classic["to"]), (&json!("carol"), &json!("alice")));
    alice.send(json!({"type":"dm","id":"20","to":"carol","text":"hi carol"})).await;
    alice.expect("ack").await;
    let classic_dm = carol.recv_json().await;
    assert_eq!(classic_dm, json!({"src":"alice","dst":"carol","msg":"hi carol"}));
    let classic_examples: Vec<Value> = tagged("json classic").iter().map(json_of).collect();
    assert_shape(&classic_dm, &classic_examples);

    bob.send(json!({"type":"leave","id":"4","room":"lobby"})).await;
    bob.expect("ack").await;
    let left = alice.expect("presence").await;
    assert_eq!((&left["room"], &left["event"]), (&json!("lobby"), &json!("leave")));

    alice.send(json!({"type":"unsubscribe","id":"11","room":"lobby"})).await;
    alice.expect("ack").await;
    alice.send(json!({"type":"ping","id":"12"})).await;
    assert_eq!(alice.expect("pong").await, json!({"type":"pong","id":"12"}));
    alice.send(json!({"type":"server","id":"s","text":"bye"})).await;
    alice.expect("ack").await;
    assert!(alice.last_seq >= 8, "deliveries were seen: {}", alice.last_seq);
}
