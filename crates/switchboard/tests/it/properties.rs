//! Property tests: random JSON, random text and random binary frames never
//! break the server. Every frame is answered exactly as the protocol crate
//! predicts (an error with the right code and id) or routed, the connection
//! stays open, and a final `ping` (or message) gets through.
//!
//! Each test runs one server and a bounded number of cases, each case on a
//! fresh connection, so a run takes seconds.

use std::cell::Cell;

use crate::common::*;
use bytes::Bytes;
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use switchboard::hub::EventKind;
use switchboard_protocol::v1::{self, Incoming};
use switchboard_protocol::{binary, classic};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

/// Cases per property: enough to hit every parser branch, few enough for seconds.
const CASES: u32 = 64;

/// Most frames a single case sends before its final check.
const MAX_FRAMES: usize = 6;

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    })
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Names that are never online (or rooms nobody joined), plus invalid ones.
const NAMES: &[&str] = &["nobody", "ghost", "r1", "r2", "", " pad", "tab\there", "我"];

/// Objects that look like requests: a known or unknown type and a random
/// mix of fields with plausible or random values.
fn envelope() -> impl Strategy<Value = Value> {
    let mut types: Vec<&str> = v1::KNOWN_TYPES.to_vec();
    types.extend(["dance", "DM", "", "welcome", "ack"]);
    let field = prop::sample::select(vec!["id", "to", "text", "room", "echo", "extra"]);
    let value = prop_oneof![
        3 => prop::sample::select(NAMES).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => json_value(),
    ];
    (prop::sample::select(types), prop::collection::btree_map(field, value, 0..5)).prop_map(
        |(kind, fields)| {
            let mut object: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            object.insert("type".into(), Value::from(kind));
            Value::Object(object)
        },
    )
}

/// Text frames for a v1 session.
fn v1_text_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        envelope().prop_map(|v| v.to_string()),
        ".{0,48}",
        "[{}\\[\\]\":, a-z0-9]{0,40}",
    ]
}

/// Binary frames: random bytes, or a header of any kind with random fields.
fn binary_frame() -> impl Strategy<Value = Vec<u8>> {
    let headed = (
        prop::sample::select(vec![0u8, 1, 2, 3]),
        ".{0,8}",
        prop::sample::select(NAMES),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, id, target, payload)| {
            let mut frame = vec![kind, id.len().min(255) as u8];
            frame.extend_from_slice(&id.as_bytes()[..id.len().min(255)]);
            frame.push(target.len() as u8);
            frame.extend_from_slice(target.as_bytes());
            frame.extend_from_slice(&payload);
            frame
        });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..64), headed]
}

/// Stands for the case's observer (a v1 client) in generated DMs.
const OBSERVER: &str = "@observer";

/// A classic client's frame: text of any shape, or binary.
#[derive(Debug, Clone)]
enum ClassicFrame {
    Text(String),
    Binary(Vec<u8>),
}

fn classic_frame() -> impl Strategy<Value = ClassicFrame> {
    let direct = (prop::sample::select(vec![OBSERVER, "nobody", "ghost"]), json_value())
        .prop_map(|(dst, msg)| json!({"src": "mallory", "dst": dst, "msg": msg}).to_string());
    prop_oneof![
        2 => direct.prop_map(ClassicFrame::Text),
        1 => json_value().prop_map(|v| ClassicFrame::Text(v.to_string())),
        1 => ".{0,48}".prop_map(ClassicFrame::Text),
        1 => prop::collection::vec(any::<u8>(), 0..32).prop_map(ClassicFrame::Binary),
    ]
}

/// Reads a v1 session's frames until the `pong` for `id`; every frame must be
/// a valid v1 frame. Returns the text frames before the pong.
async fn until_pong(client: &mut WsClient, id: &str, bound: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    for _ in 0..bound {
        match client.recv().await {
            Message::Text(text) => {
                Incoming::parse(&text).unwrap_or_else(|e| panic!("invalid v1 frame ({e}): {text}"));
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame == json!({"type": "pong", "id": id}) {
                    return frames;
                }
                frames.push(frame);
            }
            Message::Binary(data) => {
                binary::parse_incoming(&data).expect("valid binary delivery");
            }
            other => panic!("unexpected frame (the connection must stay open): {other:?}"),
        }
    }
    panic!("no pong for {id} within {bound} frames");
}

/// The error replies the protocol crate predicts for malformed requests, in order.
fn predicted_parse_errors(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|text| v1::parse_request(text).err())
        .map(|e| json!({"code": e.code.as_str(), "id": e.id}))
        .collect()
}

#[test]
fn random_text_frames_to_a_v1_session_are_answered_and_never_close() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let counter = Cell::new(0usize);
    let frames = prop::collection::vec(v1_text_frame(), 1..=MAX_FRAMES);
    runner()
        .run(&frames, |frames| {
            counter.set(counter.get() + 1);
            let name = format!("prop-text-{}", counter.get());
            rt.block_on(async {
                let mut client = v1(&server, &name).await;
                for frame in &frames {
                    client.send(frame).await;
                }
                client.send_json(json!({"type": "ping", "id": "final"})).await;
                let replies = until_pong(&mut client, "final", 16 * MAX_FRAMES).await;
                let parse_errors: Vec<Value> = replies
                    .iter()
                    .filter(|r| r["type"] == "error" && (r["code"] == "bad_request" || r["code"] == "unknown_type"))
                    .map(|r| json!({"code": r["code"], "id": r.get("id").cloned().unwrap_or(Value::Null)}))
                    .collect();
                assert_eq!(parse_errors, predicted_parse_errors(&frames), "{frames:?} -> {replies:?}");
                // Every valid request that carried an id was answered by id.
                for request in frames.iter().filter_map(|t| v1::parse_request(t).ok()) {
                    if let Some(id) = request.id() {
                        assert!(replies.iter().any(|r| r["id"] == id), "no reply to {request:?}: {replies:?}");
                    }
                }
                client.close().await;
            });
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(counter.get() >= CASES as usize, "ran {} cases", counter.get());
    rt.block_on(async {
        let mut last = v1(&server, "last").await;
        last.send_json(json!({"type": "ping", "id": "alive"})).await;
        assert_eq!(last.recv_json().await, json!({"type": "pong", "id": "alive"}));
    });
}

#[test]
fn random_binary_frames_to_a_v1_session_are_answered_and_never_close() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let counter = Cell::new(0usize);
    let frames = prop::collection::vec(binary_frame(), 1..=MAX_FRAMES);
    runner()
        .run(&frames, |frames| {
            counter.set(counter.get() + 1);
            let name = format!("prop-binary-{}", counter.get());
            rt.block_on(async {
                let mut client = v1(&server, &name).await;
                let mut predicted = Vec::new();
                for frame in &frames {
                    client.socket.send(Message::Binary(Bytes::copy_from_slice(frame))).await.expect("send");
                    // Nobody is online under NAMES and no room has members, so
                    // every frame is refused; the crate says with what.
                    let (code, id) = match binary::parse_outgoing(frame) {
                        Err(_) => ("bad_request", None),
                        Ok(parsed) => {
                            let id = (!parsed.id.is_empty()).then(|| parsed.id.to_owned());
                            match parsed.target {
                                binary::Target::Client(_) => ("unknown_recipient", id),
                                binary::Target::Room(_) => ("not_member", id),
                            }
                        }
                    };
                    predicted.push(json!({"type": "error", "code": code, "id": id}));
                }
                client.send_json(json!({"type": "ping", "id": "final"})).await;
                let replies = until_pong(&mut client, "final", 4 * MAX_FRAMES).await;
                let got: Vec<Value> = replies
                    .iter()
                    .map(|r| json!({"type": r["type"], "code": r["code"], "id": r.get("id").cloned().unwrap_or(Value::Null)}))
                    .collect();
                assert_eq!(got, predicted, "{frames:?}");
                client.close().await;
            });
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(counter.get() >= CASES as usize, "ran {} cases", counter.get());
}

#[test]
fn random_frames_to_a_classic_session_are_routed_or_answered() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let counter = Cell::new(0usize);
    let frames = prop::collection::vec(classic_frame(), 1..=MAX_FRAMES);
    runner()
        .run(&frames, |frames| {
            counter.set(counter.get() + 1);
            let name = format!("prop-classic-{}", counter.get());
            rt.block_on(async {
                let mut events = server.hub.subscribe_events();
                let observer_name = format!("{name}-observer");
                let mut observer = v1(&server, &observer_name).await;
                let mut client = classic(&server, &name).await;
                let mut notices = Vec::new();
                let mut to_observer = Vec::new();
                let mut to_server = Vec::new();
                for frame in &frames {
                    match frame {
                        ClassicFrame::Binary(data) => {
                            client
                                .socket
                                .send(Message::Binary(Bytes::copy_from_slice(data)))
                                .await
                                .expect("send");
                            notices.push(classic::error_notice(
                                "binary messages need protocol v1 (switchboard.v1)",
                            ));
                        }
                        ClassicFrame::Text(text) => {
                            let text = text.replace(OBSERVER, &observer_name);
                            client.send(&text).await;
                            match classic::parse(&text) {
                                classic::Inbound::Direct { dst, msg } if dst == observer_name => {
                                    to_observer.push(msg)
                                }
                                classic::Inbound::Direct { dst, .. } => {
                                    notices.push(classic::offline_notice(&dst))
                                }
                                classic::Inbound::ToServer(text) => to_server.push(text),
                            }
                        }
                    }
                }
                // The connection is still open: a last DM gets through.
                client.send(&json!({"dst": observer_name, "msg": "final"}).to_string()).await;
                to_observer.push("final".into());
                for expected in &to_observer {
                    let dm = observer.recv_json().await;
                    assert_eq!(
                        (&dm["from"], &dm["text"]),
                        (&json!(name), &json!(expected)),
                        "{frames:?}"
                    );
                }
                client.send(r#"{"dst":"end-marker","msg":""}"#).await;
                notices.push(classic::offline_notice("end-marker"));
                for expected in &notices {
                    assert_eq!(&client.recv_text().await, expected, "{frames:?}");
                }
                let mut seen = Vec::new();
                while seen.len() < to_server.len() {
                    let event = tokio::time::timeout(WAIT, events.recv())
                        .await
                        .expect("event")
                        .expect("recv");
                    if let EventKind::ToServer { from, text } = event.kind {
                        if from.as_str() == name {
                            seen.push(text);
                        }
                    }
                }
                assert_eq!(seen, to_server, "{frames:?}");
                client.close().await;
                observer.close().await;
            });
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    assert!(counter.get() >= CASES as usize, "ran {} cases", counter.get());
}
