//! Protocol v1 conformance through the real server: every request type, every
//! reachable error code, sequence numbers, presence, binary frames and
//! interop with classic clients, as docs/protocol.md specifies them.

use std::net::SocketAddr;

use crate::common::*;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::config::Config;
use switchboard::hub::{EventKind, Outgoing, Protocol};
use switchboard_protocol::binary::{self, Target};
use switchboard_protocol::ClientName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// FNV-1a, 64 bits: a checksum computed independently of the transport.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Connects with protocol v1 and returns the client and its welcome.
async fn v1_welcomed(server: &TestServer, name: &str) -> (WsClient, Value) {
    let mut request = server.ws_url(name).into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("switchboard.v1"));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("v1 connect");
    let mut client = WsClient { socket };
    let welcome = client.recv_json().await;
    (client, welcome)
}

async fn send_binary(client: &mut WsClient, frame: Bytes) {
    client.socket.send(Message::Binary(frame)).await.expect("send binary");
}

async fn recv_binary(client: &mut WsClient) -> Bytes {
    match client.recv().await {
        Message::Binary(data) => data,
        other => panic!("expected binary, got {other:?}"),
    }
}

/// Sends a request and returns the next frame.
async fn ask(client: &mut WsClient, request: Value) -> Value {
    client.send_json(request).await;
    client.recv_json().await
}

/// Sends a `ping` and asserts the next frame is its `pong`: nothing else was
/// queued for the client before it.
async fn assert_nothing_queued(client: &mut WsClient, id: &str) {
    let pong = ask(client, json!({"type": "ping", "id": id})).await;
    assert_eq!(pong, json!({"type": "pong", "id": id}));
}

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    edit(&mut config);
    config
}

#[tokio::test]
async fn welcome_names_the_client_its_session_version_and_limits() {
    let server = TestServer::start_with(config(|c| {
        c.max_message_bytes = 300_000;
        c.max_queued_bytes = 900_000;
        c.rate_messages_per_sec = 123;
        c.rate_bytes_per_sec = 456_789;
    }))
    .await;
    let (_alice, welcome) = v1_welcomed(&server, "alice").await;
    let (_bob, other) = v1_welcomed(&server, "bob").await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["protocol"], "1");
    assert!(welcome["version"].as_str().is_some_and(|v| !v.is_empty()), "{welcome}");
    assert!(welcome["session"].is_string() && welcome["session"] != other["session"]);
    assert_eq!(
        welcome["limits"],
        json!({
            "max_message_bytes": 300_000,
            "max_queued_bytes": 900_000,
            "rate_messages_per_sec": 123,
            "rate_bytes_per_sec": 456_789,
        })
    );
}

#[tokio::test]
async fn dm_is_delivered_with_seq_and_ts_and_acked_only_with_an_id() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    let reply = ask(&mut alice, json!({"type": "dm", "id": "m1", "to": "bob", "text": "hi"})).await;
    assert_eq!(reply, json!({"type": "ack", "id": "m1", "status": "live"}));
    let dm = bob.recv_json().await;
    assert_eq!(dm["type"], "dm");
    assert_eq!(dm["seq"], 1);
    assert!(dm["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000), "{dm}");
    assert_eq!(
        (&dm["from"], &dm["to"], &dm["text"]),
        (&json!("alice"), &json!("bob"), &json!("hi"))
    );

    alice.send_json(json!({"type": "dm", "to": "bob", "text": "no id"})).await;
    assert_nothing_queued(&mut alice, "p").await;
    let second = bob.recv_json().await;
    assert_eq!((&second["seq"], &second["text"]), (&json!(2), &json!("no id")));
}

/// The session reads the clock once per run of frames (issue 6); a pause
/// ends the run, so a message sent after one is stamped after it, not with
/// the time of the frames before.
#[tokio::test]
async fn ts_is_when_the_frame_was_read_also_after_a_pause() {
    let now_ms = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.expect("clock after 1970").as_millis() as u64
    };
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    for _ in 0..3 {
        let sent_from = now_ms();
        for i in 0..5 {
            alice.send_json(json!({"type": "dm", "to": "bob", "text": i.to_string()})).await;
        }
        for _ in 0..5 {
            let ts = bob.recv_json().await["ts"].as_u64().expect("ts");
            assert!(
                ts >= sent_from && ts <= now_ms(),
                "ts {ts} is not between send ({sent_from}) and receipt"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn server_requests_reach_the_event_log() {
    let server = TestServer::start().await;
    let mut events = server.hub.subscribe_events();
    let mut alice = v1(&server, "alice").await;
    let reply = ask(&mut alice, json!({"type": "server", "id": "s", "text": "hello op"})).await;
    assert_eq!(reply, json!({"type": "ack", "id": "s"}));
    for _ in 0..100 {
        let event = tokio::time::timeout(WAIT, events.recv()).await.expect("event").expect("recv");
        if let EventKind::ToServer { from, text } = event.kind {
            assert_eq!((from.as_str(), text.as_str()), ("alice", "hello op"));
            return;
        }
    }
    panic!("no message-to-server event");
}

#[tokio::test]
async fn rooms_join_publish_members_leave_and_vanish() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    let mut carol = v1(&server, "carol").await;
    for (client, id) in [(&mut alice, "a"), (&mut bob, "b"), (&mut carol, "c")] {
        let reply = ask(client, json!({"type": "join", "id": id, "room": "lobby"})).await;
        assert_eq!(reply, json!({"type": "ack", "id": id}));
    }
    let again = ask(&mut alice, json!({"type": "join", "id": "a2", "room": "lobby"})).await;
    assert_eq!(again["type"], "ack", "joining twice is not an error");

    let reply =
        ask(&mut alice, json!({"type": "publish", "id": "p1", "room": "lobby", "text": "hi all"}))
            .await;
    assert_eq!(reply, json!({"type": "ack", "id": "p1"}));
    for member in [&mut bob, &mut carol] {
        let room = member.recv_json().await;
        assert_eq!(room["type"], "room");
        assert_eq!(
            (&room["room"], &room["from"], &room["text"]),
            (&json!("lobby"), &json!("alice"), &json!("hi all"))
        );
    }
    assert_nothing_queued(&mut alice, "no-echo").await;
    alice
        .send_json(json!({"type": "publish", "room": "lobby", "text": "echoed", "echo": true}))
        .await;
    assert_eq!(alice.recv_json().await["text"], "echoed");
    assert_eq!(bob.recv_json().await["text"], "echoed");
    assert_eq!(carol.recv_json().await["text"], "echoed");

    let members = ask(&mut carol, json!({"type": "members", "id": "m", "room": "lobby"})).await;
    assert_eq!(
        members,
        json!({"type": "members", "id": "m", "room": "lobby", "members": ["alice", "bob", "carol"]})
    );
    let none = ask(&mut carol, json!({"type": "members", "room": "nowhere"})).await;
    assert_eq!(none, json!({"type": "members", "room": "nowhere", "members": []}));

    for (client, id) in [(&mut alice, "la"), (&mut bob, "lb")] {
        let reply = ask(client, json!({"type": "leave", "id": id, "room": "lobby"})).await;
        assert_eq!(reply, json!({"type": "ack", "id": id}));
    }
    let members = ask(&mut carol, json!({"type": "members", "room": "lobby"})).await;
    assert_eq!(members["members"], json!(["carol"]));
    carol.send_json(json!({"type": "leave", "room": "lobby"})).await;
    assert_nothing_queued(&mut carol, "left").await;
    assert!(server.hub.room("lobby").is_none(), "an empty room vanishes");
    let gone = ask(&mut carol, json!({"type": "members", "id": "g", "room": "lobby"})).await;
    assert_eq!(gone["members"], json!([]));
}

#[tokio::test]
async fn who_lists_every_client_online_sorted() {
    let server = TestServer::start().await;
    let _zed = classic(&server, "zed").await;
    let mut bob = v1(&server, "bob").await;
    let _amy = v1(&server, "amy").await;
    let reply = ask(&mut bob, json!({"type": "who", "id": "w"})).await;
    assert_eq!(reply, json!({"type": "clients", "id": "w", "clients": ["amy", "bob", "zed"]}));
    let reply = ask(&mut bob, json!({"type": "who"})).await;
    assert_eq!(reply, json!({"type": "clients", "clients": ["amy", "bob", "zed"]}));
}

#[tokio::test]
async fn ping_answers_pong_with_and_without_an_id() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    assert_eq!(
        ask(&mut alice, json!({"type": "ping", "id": "1"})).await,
        json!({"type": "pong", "id": "1"})
    );
    assert_eq!(ask(&mut alice, json!({"type": "ping"})).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn malformed_requests_get_bad_request_naming_the_id_when_readable() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let cases: &[(&str, Option<&str>)] = &[
        ("not json", None),
        ("", None),
        ("[1,2]", None),
        ("\"dm\"", None),
        ("null", None),
        (r#"{"id":"1"}"#, Some("1")),
        (r#"{"type":"dm","id":"2","text":"no to"}"#, Some("2")),
        (r#"{"type":"dm","id":"3","to":5,"text":"x"}"#, Some("3")),
        (r#"{"type":"join","id":"4"}"#, Some("4")),
        (r#"{"type":7,"id":"5"}"#, Some("5")),
        (r#"{"type":"ping","id":"6","extra":true}"#, Some("6")),
        (r#"{"type":"publish","id":"7","room":"r","text":"x","echo":"yes"}"#, Some("7")),
        (r#"{"type":"ping","id":8}"#, None),
        (r#"{"type":"dm","to":"b","text":"x""#, None),
    ];
    for (frame, id) in cases {
        let reply = ask_raw(&mut alice, frame).await;
        assert_eq!(reply["type"], "error", "{frame}: {reply}");
        assert_eq!(reply["code"], "bad_request", "{frame}: {reply}");
        assert_eq!(reply.get("id").and_then(Value::as_str), *id, "{frame}: {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply}");
    }
    assert_nothing_queued(&mut alice, "still open").await;
}

async fn ask_raw(client: &mut WsClient, frame: &str) -> Value {
    client.send(frame).await;
    client.recv_json().await
}

#[tokio::test]
async fn unknown_types_get_unknown_type_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let reply = ask_raw(&mut alice, r#"{"type":"dance","id":"d1","style":"tango"}"#).await;
    assert_eq!(reply["code"], "unknown_type");
    assert_eq!(reply["id"], "d1");
    let reply = ask_raw(&mut alice, r#"{"type":"DM","to":"x","text":"y"}"#).await;
    assert_eq!(reply["code"], "unknown_type", "types are case-sensitive");
    assert!(reply.get("id").is_none());
    assert_nothing_queued(&mut alice, "open").await;
}

#[tokio::test]
async fn recipient_offline_for_dm_and_binary() {
    // Ephemeral: nothing is stored, so an offline name is refused (issue 7
    // keeps this behaviour behind --ephemeral; durable mode says
    // unknown_recipient for a never-seen name, see tests/it/durability.rs).
    let server = TestServer::start_with(config(|c| c.ephemeral = true)).await;
    let mut alice = v1(&server, "alice").await;
    let reply =
        ask(&mut alice, json!({"type": "dm", "id": "x", "to": "nobody", "text": "hi"})).await;
    assert_eq!((&reply["code"], &reply["id"]), (&json!("recipient_offline"), &json!("x")));
    assert!(reply["message"].as_str().is_some_and(|m| m.contains("nobody")), "{reply}");
    let reply = ask(&mut alice, json!({"type": "dm", "to": "nobody", "text": "no id"})).await;
    assert_eq!(reply["code"], "recipient_offline", "errors are sent without an id too");
    assert!(reply.get("id").is_none());
    send_binary(&mut alice, binary::encode_outgoing("b", Target::Client("nobody"), b"data")).await;
    let reply = alice.recv_json().await;
    assert_eq!((&reply["code"], &reply["id"]), (&json!("recipient_offline"), &json!("b")));
}

#[tokio::test]
async fn invalid_room_names_get_invalid_name() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let long = "r".repeat(65);
    let requests = [
        json!({"type": "join", "id": "1", "room": ""}),
        json!({"type": "join", "id": "2", "room": " padded"}),
        json!({"type": "join", "id": "3", "room": "line\nbreak"}),
        json!({"type": "join", "id": "4", "room": long}),
        json!({"type": "leave", "id": "5", "room": "\t"}),
        json!({"type": "subscribe", "id": "6", "room": ""}),
    ];
    for request in requests {
        let reply = ask(&mut alice, request.clone()).await;
        assert_eq!(reply["code"], "invalid_name", "{request}: {reply}");
        assert_eq!(reply["id"], request["id"]);
    }
    assert!(server.hub.rooms().is_empty());
}

#[tokio::test]
async fn not_member_for_publish_leave_and_binary_to_a_room() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    assert_eq!(ask(&mut bob, json!({"type": "join", "id": "j", "room": "r"})).await["type"], "ack");
    let requests = [
        json!({"type": "publish", "id": "1", "room": "r", "text": "x"}),
        json!({"type": "publish", "id": "2", "room": "no-such-room", "text": "x"}),
        json!({"type": "leave", "id": "3", "room": "r"}),
    ];
    for request in requests {
        let reply = ask(&mut alice, request.clone()).await;
        assert_eq!(reply["code"], "not_member", "{request}: {reply}");
        assert_eq!(reply["id"], request["id"]);
    }
    send_binary(&mut alice, binary::encode_outgoing("4", Target::Room("r"), b"data")).await;
    let reply = alice.recv_json().await;
    assert_eq!((&reply["code"], &reply["id"]), (&json!("not_member"), &json!("4")));
    assert_nothing_queued(&mut bob, "nothing leaked").await;
}

#[tokio::test]
async fn limit_reached_for_rooms_per_client_members_per_room_and_watches() {
    let server = TestServer::start_with(config(|c| {
        c.max_rooms_per_client = 2;
        c.max_members_per_room = 2;
    }))
    .await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    let mut carol = v1(&server, "carol").await;
    for room in ["r1", "r2"] {
        assert_eq!(
            ask(&mut alice, json!({"type": "join", "id": room, "room": room})).await["type"],
            "ack"
        );
    }
    let reply = ask(&mut alice, json!({"type": "join", "id": "r3", "room": "r3"})).await;
    assert_eq!((&reply["code"], &reply["id"]), (&json!("limit_reached"), &json!("r3")));
    assert!(server.hub.room("r3").is_none(), "a refused join creates no room");

    assert_eq!(
        ask(&mut bob, json!({"type": "join", "room": "r1", "id": "b"})).await["type"],
        "ack"
    );
    let reply = ask(&mut carol, json!({"type": "join", "room": "r1", "id": "full"})).await;
    assert_eq!(reply["code"], "limit_reached", "{reply}");

    for room in ["w1", "w2"] {
        assert_eq!(
            ask(&mut carol, json!({"type": "subscribe", "room": room})).await["type"],
            "members"
        );
    }
    let reply = ask(&mut carol, json!({"type": "subscribe", "id": "w3", "room": "w3"})).await;
    assert_eq!(reply["code"], "limit_reached", "{reply}");
}

#[tokio::test]
async fn rate_limited_frames_are_refused_one_by_one() {
    let server = TestServer::start_with(config(|c| {
        c.rate_messages_per_sec = 1;
        c.rate_strikes = 1000;
    }))
    .await;
    let mut alice = v1(&server, "alice").await;
    const N: usize = 20;
    for i in 0..N {
        alice.send_json(json!({"type": "ping", "id": i.to_string()})).await;
    }
    let mut refused = 0;
    for i in 0..N {
        let reply = alice.recv_json().await;
        assert_eq!(reply["id"], i.to_string(), "every frame is answered, in order: {reply}");
        match reply["type"].as_str() {
            Some("pong") => {}
            Some("error") => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                refused += 1;
            }
            _ => panic!("unexpected {reply}"),
        }
    }
    assert!(refused > 0, "a burst of {N} at 1/s must be limited");
    // Garbage counts against the limit like anything else.
    for _ in 0..10 {
        alice.send("garbage").await;
    }
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(alice.recv_json().await["code"].clone());
    }
    assert!(codes.contains(&json!("rate_limited")), "{codes:?}");
}

#[tokio::test]
async fn a_rate_limited_binary_frame_is_refused_with_its_id() {
    let server = TestServer::start_with(config(|c| {
        c.rate_messages_per_sec = 1;
        c.rate_strikes = 1000;
    }))
    .await;
    let mut alice = v1(&server, "alice").await;
    let _bob = v1(&server, "bob").await;
    // The first frame uses the one token; the second is refused.
    for id in ["b1", "b2"] {
        let frame = binary::encode_outgoing(id, Target::Client("bob"), b"payload");
        alice.socket.send(Message::Binary(frame)).await.expect("send binary");
    }
    // The ack comes after the store commit, so the refusal may overtake it:
    // replies are matched by id.
    let mut replies = [alice.recv_json().await, alice.recv_json().await];
    replies.sort_by_key(|reply| reply["id"].as_str().unwrap_or_default().to_owned());
    let [first, second] = replies;
    assert_eq!(
        (first["type"].as_str(), first["id"].as_str()),
        (Some("ack"), Some("b1")),
        "{first}"
    );
    assert_eq!(second["code"], "rate_limited", "{second}");
    assert_eq!(second["id"], "b2", "the refusal names the binary frame's id");
}

#[tokio::test]
async fn persisting_past_the_rate_limit_closes_with_1008() {
    let server = TestServer::start_with(config(|c| {
        c.rate_messages_per_sec = 1;
        c.rate_strikes = 5;
    }))
    .await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    for _ in 0..50 {
        if alice.socket.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
            break;
        }
    }
    let (code, reason) = alice.expect_close().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");
    assert_nothing_queued(&mut bob, "others are still served").await;
}

#[tokio::test]
async fn oversized_v1_frames_close_with_1009() {
    let server = TestServer::start_with(config(|c| c.max_message_bytes = 4096)).await;
    let mut alice = v1(&server, "alice").await;
    let _bob = v1(&server, "bob").await;
    send_binary(&mut alice, binary::encode_outgoing("", Target::Client("bob"), &[7; 5000])).await;
    let (code, reason) = alice.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
}

#[tokio::test]
async fn seq_is_strictly_monotonic_per_recipient_across_kinds() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    assert_eq!(ask(&mut alice, json!({"type": "subscribe", "id": "s"})).await["type"], "members");
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            ask(client, json!({"type": "join", "id": "j", "room": "r"})).await["type"],
            "ack"
        );
    }
    bob.send_json(json!({"type": "dm", "to": "alice", "text": "dm"})).await;
    bob.send_json(json!({"type": "publish", "room": "r", "text": "room"})).await;
    send_binary(&mut bob, binary::encode_outgoing("", Target::Client("alice"), b"bin")).await;
    send_binary(&mut bob, binary::encode_outgoing("", Target::Room("r"), b"roombin")).await;
    assert_nothing_queued(&mut bob, "routed").await;
    http.post(server.http("/api/broadcast")).body("all").send().await.expect("broadcast");
    http.post(server.http("/api/clients/alice/messages")).body("you").send().await.expect("send");
    http.post(server.http("/api/rooms/r/messages")).body("op").send().await.expect("publish");
    let carol = classic(&server, "carol").await;
    carol.close().await;

    // Replies (no seq) are interleaved with deliveries (seq 1, 2, ...).
    let mut seqs = Vec::new();
    let mut kinds = Vec::new();
    alice.send_json(json!({"type": "ping", "id": "mid"})).await;
    while kinds.len() < 9 {
        match alice.recv().await {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("json");
                match frame.get("seq").and_then(Value::as_u64) {
                    Some(seq) => {
                        seqs.push(seq);
                        kinds.push(frame["type"].as_str().unwrap_or_default().to_owned());
                    }
                    None => assert_eq!(frame["type"], "pong", "{frame}"),
                }
            }
            Message::Binary(data) => {
                let parsed = binary::parse_incoming(&data).expect("binary header");
                assert_eq!(parsed.from, "bob");
                seqs.push(parsed.seq);
                kinds.push(format!("binary:{}", parsed.room.unwrap_or("-")));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, (1..=9).collect::<Vec<u64>>(), "{kinds:?}");
    let expected =
        ["dm", "room", "binary:-", "binary:r", "server", "server", "room", "presence", "presence"];
    assert_eq!(kinds, expected, "one sender's messages arrive in order");
    alice.close().await;

    // Seqs belong to the name (issue 7): a new session continues after 9.
    let mut alice = v1(&server, "alice").await;
    bob.send_json(json!({"type": "dm", "to": "alice", "text": "again"})).await;
    assert_eq!(alice.recv_json().await["seq"], 10);
}

#[tokio::test]
async fn v1_and_classic_clients_interoperate_both_ways() {
    let server = TestServer::start().await;
    let mut carol = classic(&server, "carol").await;
    let mut alice = v1(&server, "alice").await;
    let reply =
        ask(&mut alice, json!({"type": "dm", "id": "1", "to": "carol", "text": "hi carol"})).await;
    assert_eq!(reply["type"], "ack");
    assert_eq!(
        carol.recv_json().await,
        json!({"src": "alice", "dst": "carol", "msg": "hi carol"}),
        "a classic client gets no welcome; its first frame is the DM in the classic shape"
    );

    carol.send(r#"{"src":"mallory","dst":"alice","msg":"hi alice"}"#).await;
    let dm = alice.recv_json().await;
    assert_eq!(dm["type"], "dm");
    assert_eq!(
        (&dm["from"], &dm["to"], &dm["text"]),
        (&json!("carol"), &json!("alice"), &json!("hi alice"))
    );
    carol.send(r#"{"dst":"alice","msg":{"n":1}}"#).await;
    assert_eq!(alice.recv_json().await["text"], r#"{"n":1}"#);
    carol.send(r#"{"dst":"nobody","msg":"x"}"#).await;
    assert!(carol.recv_text().await.contains("nobody is not online"));

    // Binary to a classic client: the raw payload, without header.
    let data = pseudo_random(1000, 3);
    send_binary(&mut alice, binary::encode_outgoing("b", Target::Client("carol"), &data)).await;
    assert_eq!(alice.recv_json().await, json!({"type": "ack", "id": "b", "status": "live"}));
    assert_eq!(&recv_binary(&mut carol).await[..], &data[..]);
    // Binary from a classic client: refused with a plain-text notice.
    carol.socket.send(Message::Binary(Bytes::from_static(b"raw"))).await.expect("send");
    let notice = carol.recv_text().await;
    assert!(notice.starts_with("switchboard: ") && notice.contains("switchboard.v1"), "{notice}");
}

#[tokio::test]
async fn room_messages_reach_a_classic_member_as_plain_text() {
    // The classic protocol has no join syntax, so the classic member is
    // registered with the server's own hub; the routing and the encoding are
    // the ones its session writer uses.
    let server = TestServer::start().await;
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let name = ClientName::parse("dave").expect("name");
    let (registration, mut outbox) =
        server.hub.register(name, addr, Protocol::Classic).expect("register");
    server.hub.join(registration.client(), "lobby", None).expect("join");
    let mut alice = v1(&server, "alice").await;
    assert_eq!(
        ask(&mut alice, json!({"type": "join", "id": "j", "room": "lobby"})).await["type"],
        "ack"
    );
    let reply = ask(
        &mut alice,
        json!({"type": "publish", "id": "p", "room": "lobby", "text": "hello room"}),
    )
    .await;
    assert_eq!(reply["type"], "ack");
    server.hub.publish_as_server("lobby", "from the desk".into()).expect("operator publish");
    for expected in ["[#lobby] alice: hello room", "[#lobby] server: from the desk"] {
        let item = tokio::time::timeout(WAIT, outbox.recv()).await.expect("queued").expect("item");
        let Outgoing::Deliver { message, .. } = item else { panic!("expected a delivery") };
        assert_eq!(message.classic_text(), Some(expected));
    }
}

#[tokio::test]
async fn binary_to_a_client_and_a_room_names_the_sender() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    let mut carol = v1(&server, "carol").await;
    send_binary(&mut alice, binary::encode_outgoing("1", Target::Client("bob"), b"\x00\x01\xff"))
        .await;
    assert_eq!(alice.recv_json().await, json!({"type": "ack", "id": "1", "status": "live"}));
    let frame = recv_binary(&mut bob).await;
    let got = binary::parse_incoming(&frame).expect("header");
    assert_eq!(
        (got.seq, got.from, got.room, got.payload),
        (1, "alice", None, &b"\x00\x01\xff"[..])
    );
    assert!(got.ts > 1_600_000_000_000);

    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            ask(client, json!({"type": "join", "id": "j", "room": "files"})).await["type"],
            "ack"
        );
    }
    send_binary(&mut alice, binary::encode_outgoing("", Target::Room("files"), b"room data")).await;
    for (member, seq) in [(&mut bob, 2), (&mut carol, 1)] {
        let frame = recv_binary(member).await;
        let got = binary::parse_incoming(&frame).expect("header");
        assert_eq!(
            (got.seq, got.from, got.room, got.payload),
            (seq, "alice", Some("files"), &b"room data"[..])
        );
    }
    assert_nothing_queued(&mut alice, "no ack without id, no echo").await;
}

#[tokio::test]
async fn binary_512_kib_round_trips_with_checksum() {
    const SIZE: usize = 512 * 1024;
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    let mut carol = v1(&server, "carol").await;
    let data = pseudo_random(SIZE, 42);
    let sum = fnv1a(&data);
    send_binary(&mut alice, binary::encode_outgoing("big", Target::Client("bob"), &data)).await;
    assert_eq!(alice.recv_json().await, json!({"type": "ack", "id": "big", "status": "live"}));
    let frame = recv_binary(&mut bob).await;
    let got = binary::parse_incoming(&frame).expect("header");
    assert_eq!((got.payload.len(), fnv1a(got.payload), got.from), (SIZE, sum, "alice"));

    // And back, then through a room to two members.
    send_binary(&mut bob, binary::encode_outgoing("", Target::Client("alice"), got.payload)).await;
    let back = recv_binary(&mut alice).await;
    let back = binary::parse_incoming(&back).expect("header");
    assert_eq!((fnv1a(back.payload), back.from), (sum, "bob"));

    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            ask(client, json!({"type": "join", "id": "j", "room": "big"})).await["type"],
            "ack"
        );
    }
    send_binary(&mut alice, binary::encode_outgoing("r", Target::Room("big"), &data)).await;
    assert_eq!(alice.recv_json().await, json!({"type": "ack", "id": "r"}));
    for member in [&mut bob, &mut carol] {
        let frame = recv_binary(member).await;
        let got = binary::parse_incoming(&frame).expect("header");
        assert_eq!((got.room, got.payload.len(), fnv1a(got.payload)), (Some("big"), SIZE, sum));
    }
}

#[tokio::test]
async fn malformed_binary_headers_get_bad_request() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let frames: &[&[u8]] =
        &[b"", b"\x09rest", b"\x01", b"\x01\x05ab", b"\x01\x00\x00", b"\x02\x00\x02\xff\xfe"];
    for frame in frames {
        send_binary(&mut alice, Bytes::copy_from_slice(frame)).await;
        let reply = alice.recv_json().await;
        assert_eq!(reply["code"], "bad_request", "{frame:?}: {reply}");
        assert!(reply.get("id").is_none());
    }
    assert_nothing_queued(&mut alice, "open").await;
}

#[tokio::test]
async fn a_room_of_100_members_gets_every_publish() {
    const N: usize = 100;
    let server = TestServer::start().await;
    let mut watcher = v1(&server, "watcher").await;
    let reply = ask(&mut watcher, json!({"type": "subscribe", "id": "w", "room": "big"})).await;
    assert_eq!(reply["members"], json!([]));
    let mut members = Vec::new();
    for i in 0..N {
        let mut client = v1(&server, &format!("m{i:03}")).await;
        assert_eq!(
            ask(&mut client, json!({"type": "join", "id": "j", "room": "big"})).await["type"],
            "ack"
        );
        members.push(client);
    }
    for i in 0..N {
        let presence = watcher.recv_json().await;
        assert_eq!(presence["seq"], i + 1);
        assert_eq!(
            (&presence["name"], &presence["event"]),
            (&json!(format!("m{i:03}")), &json!("join"))
        );
    }
    let listed = ask(&mut members[0], json!({"type": "members", "room": "big"})).await;
    assert_eq!(listed["members"].as_array().map(Vec::len), Some(N));
    assert_eq!(server.hub.room("big").map(|r| r.members.len()), Some(N));

    let reply = ask(
        &mut members[0],
        json!({"type": "publish", "id": "p", "room": "big", "text": "to all"}),
    )
    .await;
    assert_eq!(reply["type"], "ack");
    let mut tasks = Vec::new();
    for mut member in members.drain(1..) {
        tasks.push(tokio::spawn(async move {
            let room = member.recv_json().await;
            assert_eq!((&room["from"], &room["text"]), (&json!("m000"), &json!("to all")));
        }));
    }
    for task in tasks {
        task.await.expect("member");
    }
    assert_nothing_queued(&mut members[0], "sender excluded").await;
}

#[tokio::test]
async fn presence_is_opt_in_global_and_per_room() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;

    // Without a subscription nothing is pushed.
    let mut bob = v1(&server, "bob").await;
    assert_eq!(ask(&mut bob, json!({"type": "join", "id": "j", "room": "r"})).await["type"], "ack");
    bob.close().await;
    eventually("bob gone", || server.hub.client("bob").is_none()).await;
    assert_nothing_queued(&mut alice, "no presence without subscribe").await;

    // Global.
    let reply = ask(&mut alice, json!({"type": "subscribe", "id": "g"})).await;
    assert_eq!(reply, json!({"type": "members", "id": "g", "members": ["alice"]}));
    let carol = v1(&server, "carol").await;
    let joined = alice.recv_json().await;
    assert_eq!(joined["type"], "presence");
    assert_eq!((&joined["name"], &joined["event"]), (&json!("carol"), &json!("join")));
    assert!(joined.get("room").is_none(), "{joined}");
    carol.close().await;
    let left = alice.recv_json().await;
    assert_eq!((&left["name"], &left["event"]), (&json!("carol"), &json!("leave")));

    // Per room, without being a member.
    let mut dave = v1(&server, "dave").await;
    assert_eq!(alice.recv_json().await["event"], "join");
    let reply = ask(&mut alice, json!({"type": "subscribe", "id": "r", "room": "r"})).await;
    assert_eq!(reply, json!({"type": "members", "id": "r", "room": "r", "members": []}));
    assert_eq!(
        ask(&mut dave, json!({"type": "join", "id": "j", "room": "r"})).await["type"],
        "ack"
    );
    let joined = alice.recv_json().await;
    assert_eq!(
        (&joined["room"], &joined["name"], &joined["event"]),
        (&json!("r"), &json!("dave"), &json!("join"))
    );
    assert_eq!(
        ask(&mut dave, json!({"type": "leave", "id": "l", "room": "r"})).await["type"],
        "ack"
    );
    let left = alice.recv_json().await;
    assert_eq!((&left["room"], &left["event"]), (&json!("r"), &json!("leave")));
    assert_eq!(
        ask(&mut dave, json!({"type": "join", "id": "j2", "room": "r"})).await["type"],
        "ack"
    );
    assert_eq!(alice.recv_json().await["event"], "join");
    dave.close().await;
    let room_leave = alice.recv_json().await;
    assert_eq!(
        (&room_leave["room"], &room_leave["event"]),
        (&json!("r"), &json!("leave")),
        "disconnect leaves the room"
    );
    let global_leave = alice.recv_json().await;
    assert_eq!((&global_leave["name"], &global_leave["event"]), (&json!("dave"), &json!("leave")));
    assert!(global_leave.get("room").is_none());

    // Unsubscribed: silence again.
    for request in [
        json!({"type": "unsubscribe", "id": "u1"}),
        json!({"type": "unsubscribe", "id": "u2", "room": "r"}),
    ] {
        assert_eq!(ask(&mut alice, request).await["type"], "ack");
    }
    let mut eve = v1(&server, "eve").await;
    assert_eq!(ask(&mut eve, json!({"type": "join", "id": "j", "room": "r"})).await["type"], "ack");
    eve.close().await;
    eventually("eve gone", || server.hub.client("eve").is_none()).await;
    assert_nothing_queued(&mut alice, "unsubscribed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_is_first_even_when_messages_race_the_handshake() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const ROUNDS: usize = 100;
    let server = TestServer::start().await;
    // An operator sends to the next client's name as fast as it can, so
    // messages reach it the moment its name is registered.
    let round = Arc::new(AtomicUsize::new(0));
    let current = round.clone();
    let hub = server.hub.clone();
    let spam = tokio::spawn(async move {
        loop {
            let target = current.load(Ordering::Relaxed);
            if target >= ROUNDS {
                break;
            }
            let _ = hub.send_to(&format!("late-{target}"), "early".into()).await;
            tokio::task::yield_now().await;
        }
    });
    for n in 0..ROUNDS {
        round.store(n, Ordering::Relaxed);
        let (late, welcome) = v1_welcomed(&server, &format!("late-{n}")).await;
        assert_eq!(welcome["type"], "welcome", "round {n}: the welcome must come first: {welcome}");
        drop(late);
    }
    round.store(ROUNDS, Ordering::Relaxed);
    spam.await.expect("spammer");
}

#[tokio::test]
async fn operator_messages_arrive_as_server_deliveries() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut alice = v1(&server, "alice").await;
    let mut carol = classic(&server, "carol").await;
    let response =
        http.post(server.http("/api/broadcast")).body("to all").send().await.expect("post");
    assert_eq!(response.json::<Value>().await.expect("JSON"), json!({"delivered": 2}));
    let response = http
        .post(server.http("/api/clients/alice/messages"))
        .body("to you")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let all = alice.recv_json().await;
    assert_eq!(
        (&all["type"], &all["seq"], &all["text"]),
        (&json!("server"), &json!(1), &json!("to all"))
    );
    assert_eq!(all["broadcast"], true);
    let direct = alice.recv_json().await;
    assert_eq!(
        (&direct["seq"], &direct["text"], &direct["broadcast"]),
        (&json!(2), &json!("to you"), &json!(false))
    );
    assert_eq!(carol.recv_text().await, "to all");
}

#[tokio::test]
async fn a_client_close_is_echoed_with_its_code_and_logged() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let server = TestServer::start().await;
    let mut events = server.hub.subscribe_events();
    let mut alice = v1(&server, "alice").await;
    let frame = CloseFrame { code: CloseCode::Normal, reason: "done".into() };
    alice.socket.send(Message::Close(Some(frame))).await.expect("send close");
    let (code, _) = alice.expect_close().await;
    assert_eq!(code, 1000);
    for _ in 0..100 {
        let event = tokio::time::timeout(WAIT, events.recv()).await.expect("event").expect("recv");
        if let EventKind::Left { name, code, reason } = event.kind {
            assert_eq!((name.as_str(), code), ("alice", Some(1000)));
            assert!(reason.contains("done"), "{reason}");
            return;
        }
    }
    panic!("no leave event");
}
