//! The operator API: the tutorial's server window over HTTP.

use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard::config::Config;

#[tokio::test]
async fn clients_lists_name_address_and_connected_since() {
    let server = TestServer::start().await;
    let _alice = classic(&server, "alice").await;
    let _bob = v1(&server, "bob").await;
    let clients: Vec<Value> =
        reqwest::get(server.http("/api/clients")).await.expect("get").json().await.expect("json");
    let names: Vec<&str> = clients.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    for client in &clients {
        assert!(client["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{client}");
        assert!(client["connected_since"].as_str().is_some_and(|t| t.ends_with('Z')), "{client}");
    }
    assert_eq!(clients[0]["protocol"], "classic");
    assert_eq!(clients[1]["protocol"], "v1");
}

/// `messages_out` counts every message written to a client: DMs, room
/// messages and operator messages alike; replies to its own requests are
/// not messages.
#[tokio::test]
async fn clients_count_every_message_written_to_them() {
    let server = TestServer::start().await;
    let mut alice = classic(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    for i in 0..3 {
        alice.send(&json!({"dst": "bob", "msg": format!("m{i}")}).to_string()).await;
        assert_eq!(bob.recv_json().await["text"], format!("m{i}"));
    }
    let (status, _) = post(&server.http("/api/clients/bob/messages"), "from the operator").await;
    assert_eq!(status, 200);
    assert_eq!(bob.recv_json().await["text"], "from the operator");
    bob.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(bob.recv_json().await["type"], "pong");
    let counted = |clients: &[Value], name: &str| {
        let client = clients.iter().find(|c| c["name"] == name).expect("listed");
        (client["messages_in"].clone(), client["messages_out"].clone())
    };
    let clients: Vec<Value> =
        reqwest::get(server.http("/api/clients")).await.expect("get").json().await.expect("json");
    assert_eq!(counted(&clients, "alice"), (json!(3), json!(0)));
    assert_eq!(counted(&clients, "bob"), (json!(1), json!(4)));
}

#[tokio::test]
async fn broadcast_reaches_everyone_and_reports_how_many() {
    let server = TestServer::start().await;
    let mut alice = classic(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    let (_, reply) = post(&server.http("/api/broadcast"), "hello everyone").await;
    assert_eq!(reply, json!({"delivered": 2}));
    assert_eq!(alice.recv_text().await, "hello everyone", "classic clients get plain text");
    let got = bob.recv_json().await;
    assert_eq!(
        (got["type"].as_str(), got["text"].as_str()),
        (Some("server"), Some("hello everyone"))
    );
    assert_eq!(got["broadcast"], true);
}

#[tokio::test]
async fn send_to_one_reaches_only_that_client_and_404s_when_offline() {
    let server = TestServer::start().await;
    let mut alice = classic(&server, "alice").await;
    let mut bob = classic(&server, "bob").await;
    let (status, _) = post(&server.http("/api/clients/alice/messages"), "just you").await;
    assert_eq!(status, 200);
    assert_eq!(alice.recv_text().await, "just you");
    bob.expect_silence(Duration::from_millis(200)).await;
    let (status, body) = post(&server.http("/api/clients/nobody/messages"), "x").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("nobody is unknown")), "{body}");
}

#[tokio::test]
async fn admin_token_is_required_when_configured() {
    let server =
        TestServer::start_with(Config { admin_token: Some("s3cret".into()), ..test_config() })
            .await;
    let http = reqwest::Client::new();
    let missing = http.get(server.http("/api/clients")).send().await.expect("get");
    assert_eq!(missing.status(), 401);
    let wrong =
        http.get(server.http("/api/clients")).bearer_auth("nope").send().await.expect("get");
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.expect("json");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("admin token")), "{body}");
    let right =
        http.get(server.http("/api/clients")).bearer_auth("s3cret").send().await.expect("get");
    assert_eq!(right.status(), 200);
    // `/metrics` is the operator's too (a scrape walks every client).
    let scrape = http.get(server.http("/metrics")).send().await.expect("scrape");
    assert_eq!(scrape.status(), 401);
    let scrape =
        http.get(server.http("/metrics")).bearer_auth("s3cret").send().await.expect("scrape");
    assert_eq!(scrape.status(), 200);
    assert!(scrape.text().await.expect("body").contains("switchboard_connections"));
    // Health checks stay open for load balancers.
    assert_eq!(http.get(server.http("/healthz")).send().await.expect("get").status(), 200);
}

/// Reads SSE `data:` lines until `want` events have arrived.
async fn read_events(response: reqwest::Response, want: usize) -> Vec<Value> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < want {
        let chunk = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("event in time")
            .expect("stream")
            .expect("chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push(serde_json::from_str(data.trim()).expect("event JSON"));
                }
            }
        }
    }
    events
}

#[tokio::test]
async fn events_stream_joins_messages_and_leaves_with_reasons() {
    let server = TestServer::start().await;
    let response = reqwest::get(server.http("/api/events")).await.expect("events");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let reader = tokio::spawn(read_events(response, 3));
    // Give the subscription a moment to be registered before the events happen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut alice = classic(&server, "alice").await;
    alice.send("hello operator").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    alice.close().await;
    let events = reader.await.expect("reader");
    assert_eq!(events[0]["type"], "join");
    assert_eq!(events[0]["name"], "alice");
    assert_eq!(events[1]["type"], "message");
    assert_eq!(events[1]["text"], "hello operator");
    assert_eq!(events[2]["type"], "leave");
    assert_eq!(events[2]["code"], 1000, "{}", events[2]);
    assert_eq!(events[2]["reason"], "client closed: bye");
}

#[tokio::test]
async fn refused_handshakes_and_bad_input_appear_as_error_events() {
    let server = TestServer::start().await;
    let mut events = server.hub.subscribe_events();
    let _alice = classic(&server, "alice").await;
    let _ = refused(&server.ws_url("alice"), None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event =
            tokio::time::timeout_at(deadline, events.recv()).await.expect("event").expect("recv");
        if let switchboard::hub::EventKind::Error { message, .. } = event.kind {
            assert!(message.contains("already online"), "{message}");
            break;
        }
    }
}

/// `GET /metrics`: one gauge from the scrape.
async fn gauge(server: &TestServer, name: &str) -> Option<i64> {
    let text = reqwest::get(server.http("/metrics")).await.expect("scrape").text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_with_the_stores_gauges() {
    let server = TestServer::start().await;
    let response = reqwest::get(server.http("/metrics")).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap_or_default().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.expect("body");
    for name in ["switchboard_open_connections", "switchboard_store_queued_bytes"] {
        assert!(text.lines().any(|line| line.starts_with(name)), "{name} missing from:\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    assert_eq!(gauge(&server, "switchboard_stored_bytes").await, Some(0));

    // A message stored for an offline name counts until it is delivered.
    v1(&server, "bob").await.close().await;
    eventually("bob has left", || server.hub.client("bob").is_none()).await;
    let mut carol = v1(&server, "carol").await;
    carol
        .send_json(json!({"type": "dm", "id": "m1", "to": "bob", "text": "while you were out"}))
        .await;
    assert_eq!(carol.recv_json().await["status"], "stored");
    let stored = gauge(&server, "switchboard_stored_bytes").await.unwrap_or_default();
    assert!(stored > 0, "switchboard_stored_bytes {stored}");

    let mut bob = v1(&server, "bob").await;
    let got = bob.recv_json().await;
    assert_eq!(got["text"], "while you were out", "{got}");
    // Written to the socket, so acknowledged: the gauge comes back down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gauge(&server, "switchboard_stored_bytes").await != Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "stored bytes never went back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every error the API answers is JSON `{"error": ...}` with a status and a
/// one-line message, axum's own included: a route or method that does not
/// exist (plain 404 and 405 before, with empty bodies), a body that is not
/// UTF-8 or over the size limit, a path segment that is not valid UTF-8
/// (plain text before).
#[tokio::test]
async fn every_api_error_is_json_with_a_message() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let too_big = vec![b'a'; Config::default().max_message_bytes + 1];
    let cases = [
        (http.get(server.http("/api/nothing")), 404, "no API route GET /api/nothing"),
        (http.get(server.http("/api/")), 404, "no API route GET /api/"),
        (http.get(server.http("/api")), 404, "no API route GET /api"),
        (http.get(server.http("/api/broadcast")), 405, "GET is not allowed on /api/broadcast"),
        (http.delete(server.http("/api/rooms")), 405, "DELETE is not allowed on /api/rooms"),
        (http.post(server.http("/api/broadcast")).body(vec![0xff, 0xfe]), 400, "UTF-8"),
        (http.post(server.http("/api/broadcast")).body(too_big), 413, "length limit"),
        (http.get(server.http("/api/clients/%FF")), 400, "UTF-8"),
    ];
    for (request, status, phrase) in cases {
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), status, "{phrase}");
        let kind = response.headers().get("content-type").cloned();
        assert_eq!(kind.as_ref().and_then(|v| v.to_str().ok()), Some("application/json"));
        let allow = response.headers().get("allow").cloned();
        let body: Value = response.json().await.expect("a JSON body");
        let error = body["error"].as_str().unwrap_or_else(|| panic!("no error in {body}"));
        assert!(error.contains(phrase) && !error.contains('\n'), "{status}: {error}");
        if status == 405 {
            assert!(allow.is_some_and(|allow| !allow.is_empty()), "no Allow header");
        }
    }
    // Outside the API, a path nothing serves is answered in a line of text.
    let response = http.get(server.http("/nothing")).send().await.expect("get");
    assert_eq!(response.status(), 404);
    assert_eq!(response.text().await.expect("body"), "nothing is served at /nothing\n");
}
