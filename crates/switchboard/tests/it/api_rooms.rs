//! The operator API for rooms and disconnects, through the real server:
//! `GET /api/rooms`, `GET /api/rooms/{room}`, `POST /api/rooms/{room}/messages`,
//! `GET /api/clients/{name}`, and disconnecting a client with a reason.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard::hub::EventKind;

async fn join(client: &mut WsClient, room: &str) {
    client.send_json(json!({"type": "join", "id": room, "room": room})).await;
    assert_eq!(client.recv_json().await, json!({"type": "ack", "id": room}));
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn post(http: &reqwest::Client, url: String, body: &str) -> (u16, Value) {
    let response = http.post(url).body(body.to_owned()).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test]
async fn rooms_are_listed_and_looked_up() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    assert_eq!(get(&http, server.http("/api/rooms")).await, (200, json!([])));
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    join(&mut bob, "quotes").await;
    join(&mut alice, "quotes").await;
    join(&mut alice, "chat").await;

    let (status, rooms) = get(&http, server.http("/api/rooms")).await;
    assert_eq!(status, 200);
    assert_eq!(
        rooms,
        json!([
            {"name": "chat", "members": ["alice"]},
            {"name": "quotes", "members": ["alice", "bob"]},
        ])
    );
    let (status, room) = get(&http, server.http("/api/rooms/quotes")).await;
    assert_eq!((status, room), (200, json!({"name": "quotes", "members": ["alice", "bob"]})));

    let (status, error) = get(&http, server.http("/api/rooms/nowhere")).await;
    assert_eq!(status, 404);
    assert!(error["error"].as_str().is_some_and(|e| e.contains("nowhere")), "{error}");

    // A room watched but without members does not exist for the operator.
    alice.send_json(json!({"type": "subscribe", "id": "s", "room": "empty"})).await;
    assert_eq!(alice.recv_json().await["type"], "members");
    assert_eq!(get(&http, server.http("/api/rooms/empty")).await.0, 404);
    assert_eq!(post(&http, server.http("/api/rooms/empty/messages"), "x").await.0, 404);

    // Rooms vanish when their last member leaves.
    alice.send_json(json!({"type": "leave", "id": "l", "room": "chat"})).await;
    assert_eq!(alice.recv_json().await["type"], "ack");
    assert_eq!(get(&http, server.http("/api/rooms/chat")).await.0, 404);
    let (_, rooms) = get(&http, server.http("/api/rooms")).await;
    assert_eq!(rooms.as_array().map(Vec::len), Some(1), "{rooms}");
}

#[tokio::test]
async fn publishing_to_a_room_reaches_every_member() {
    const SUBSCRIBERS: usize = 5;
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut client = v1(&server, &format!("sub{i}")).await;
        join(&mut client, "quotes").await;
        subscribers.push(client);
    }
    let mut outsider = v1(&server, "outsider").await;
    let mut legacy = classic(&server, "legacy").await;

    for price in ["EURUSD 1.0842", "EURUSD 1.0843"] {
        let (status, body) = post(&http, server.http("/api/rooms/quotes/messages"), price).await;
        assert_eq!((status, body), (200, json!({"delivered": SUBSCRIBERS})));
    }
    for subscriber in &mut subscribers {
        for (seq, price) in [(1, "EURUSD 1.0842"), (2, "EURUSD 1.0843")] {
            let got = subscriber.recv_json().await;
            assert_eq!(got["type"], "room");
            assert_eq!(
                (&got["seq"], &got["room"], &got["text"]),
                (&json!(seq), &json!("quotes"), &json!(price))
            );
            assert!(got.get("from").is_none(), "operator publishes carry no from: {got}");
        }
    }
    outsider.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(
        outsider.recv_json().await,
        json!({"type": "pong", "id": "p"}),
        "non-members get nothing"
    );

    let (status, error) = post(&http, server.http("/api/rooms/nowhere/messages"), "x").await;
    assert_eq!(status, 404, "{error}");

    // A classic client gets operator messages as plain text (it cannot join rooms).
    let (status, _) =
        post(&http, server.http("/api/clients/legacy/messages"), "plain notice").await;
    assert_eq!(status, 200);
    assert_eq!(legacy.recv_text().await, "plain notice");
}

#[tokio::test]
async fn a_client_is_looked_up_by_name() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut alice = v1(&server, "alice").await;
    join(&mut alice, "b-room").await;
    join(&mut alice, "a-room").await;
    let _carol = classic(&server, "carol").await;
    let (status, info) = get(&http, server.http("/api/clients/alice")).await;
    assert_eq!(status, 200);
    assert_eq!(info["name"], "alice");
    assert_eq!(info["protocol"], "v1");
    assert_eq!(info["rooms"], json!(["a-room", "b-room"]));
    assert!(info["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{info}");
    assert!(info["connected_since"].is_string() && info["connected_since_ms"].is_u64(), "{info}");
    assert!(info["messages_in"].as_u64().is_some_and(|n| n >= 2), "{info}");
    let (status, info) = get(&http, server.http("/api/clients/carol")).await;
    assert_eq!((status, &info["protocol"]), (200, &json!("classic")));
    let (status, error) = get(&http, server.http("/api/clients/nobody")).await;
    assert_eq!(status, 404, "{error}");
}

/// Reads the SSE stream until a `leave` event for `name`; returns its data.
async fn leave_event(events: reqwest::Response, name: &str) -> Value {
    let mut stream = events.bytes_stream();
    let mut buffer = String::new();
    loop {
        let chunk = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("timed out waiting for the leave event")
            .expect("event stream ended")
            .expect("event stream error");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if !event.lines().any(|l| l == "event: leave") {
                continue;
            }
            let data = event.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or_default();
            let data: Value = serde_json::from_str(data).expect("event JSON");
            if data["name"] == name {
                return data;
            }
        }
    }
}

#[tokio::test]
async fn delete_disconnects_with_4000_and_the_reason() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let events = http.get(server.http("/api/events")).send().await.expect("events");
    assert_eq!(events.status(), 200);
    let mut watcher = v1(&server, "watcher").await;
    watcher.send_json(json!({"type": "subscribe", "id": "s", "room": "lobby"})).await;
    assert_eq!(watcher.recv_json().await["type"], "members");
    let mut alice = v1(&server, "alice").await;
    join(&mut alice, "lobby").await;
    assert_eq!(watcher.recv_json().await["event"], "join");

    let response = http
        .delete(server.http("/api/clients/alice?reason=maintenance%20window"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.expect("JSON"), json!({"disconnected": "alice"}));
    let (code, reason) = alice.expect_close().await;
    assert_eq!((code, reason.as_str()), (4000, "disconnected by operator: maintenance window"));

    let left = watcher.recv_json().await;
    assert_eq!(
        (&left["room"], &left["name"], &left["event"]),
        (&json!("lobby"), &json!("alice"), &json!("leave"))
    );
    let event = leave_event(events, "alice").await;
    assert_eq!(event["code"], 4000);
    assert_eq!(event["reason"], "disconnected by operator: maintenance window");
    eventually("alice unregistered", || server.hub.client("alice").is_none()).await;
    let (status, _) = get(&http, server.http("/api/clients/alice")).await;
    assert_eq!(status, 404);
    let response = http.delete(server.http("/api/clients/alice")).send().await.expect("DELETE");
    assert_eq!(response.status(), 404, "disconnecting someone offline");
}

#[tokio::test]
async fn post_disconnect_takes_the_reason_from_the_body_and_works_for_classic() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let mut hub_events = server.hub.subscribe_events();
    let mut carol = classic(&server, "carol").await;
    let (status, body) =
        post(&http, server.http("/api/clients/carol/disconnect"), "spamming\n").await;
    assert_eq!((status, body), (200, json!({"disconnected": "carol"})));
    let (code, reason) = carol.expect_close().await;
    assert_eq!((code, reason.as_str()), (4000, "disconnected by operator: spamming"));
    for _ in 0..100 {
        let event =
            tokio::time::timeout(WAIT, hub_events.recv()).await.expect("event").expect("recv");
        if let EventKind::Left { name, code, reason } = event.kind {
            assert_eq!((name.as_str(), code), ("carol", Some(4000)), "{reason}");
            break;
        }
    }

    let mut bob = v1(&server, "bob").await;
    let (status, _) = post(&http, server.http("/api/clients/bob/disconnect"), "").await;
    assert_eq!(status, 200);
    let (code, reason) = bob.expect_close().await;
    assert_eq!((code, reason.as_str()), (4000, "disconnected by operator"));
    let (status, _) = post(&http, server.http("/api/clients/nobody/disconnect"), "x").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn operator_bodies_over_the_message_limit_are_refused_with_413() {
    let config = switchboard::config::Config { max_message_bytes: 1024, ..test_config() };
    let server = TestServer::start_with(config).await;
    let http = reqwest::Client::new();
    let mut alice = v1(&server, "alice").await;
    join(&mut alice, "r").await;
    let response = http
        .post(server.http("/api/rooms/r/messages"))
        .body("x".repeat(2048))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 413);
    let (status, body) = post(&http, server.http("/api/rooms/r/messages"), "small").await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    assert_eq!(alice.recv_json().await["text"], "small");
}
