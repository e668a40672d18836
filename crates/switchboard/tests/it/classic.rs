//! Classic mode end to end: the tutorial's protocol through the real server.

use crate::common::*;
use serde_json::json;
use switchboard::config::Config;

#[tokio::test]
async fn private_message_is_routed_with_the_real_sender() {
    let server = TestServer::start().await;
    let mut alice = classic(&server, "alice").await;
    let mut bob = classic(&server, "bob").await;
    alice.send(r#"{"src":"mallory","dst":"bob","msg":"hi bob"}"#).await;
    assert_eq!(bob.recv_json().await, json!({"src": "alice", "dst": "bob", "msg": "hi bob"}));
    bob.send(r#"{"dst":"alice","msg":"hi alice"}"#).await;
    assert_eq!(alice.recv_json().await, json!({"src": "bob", "dst": "alice", "msg": "hi alice"}));
}

/// A session remembers its last recipient's inbox (issue 6); a recipient
/// that reconnected has a new one, which the sender's next message must
/// find, in both modes. In ephemeral mode the old inbox went with the old
/// session, and a message while the name is offline is refused.
#[tokio::test]
async fn a_recipient_that_reconnected_gets_the_next_message_from_the_same_sender() {
    for ephemeral in [true, false] {
        let server = TestServer::start_with(Config { ephemeral, ..test_config() }).await;
        let mut alice = classic(&server, "alice").await;
        let mut bob = classic(&server, "bob").await;
        alice.send(r#"{"dst":"bob","msg":"one"}"#).await;
        assert_eq!(bob.recv_json().await["msg"], "one");
        bob.close().await;
        let hub = server.hub.clone();
        eventually("bob has left", || hub.online().iter().all(|name| name.as_str() != "bob")).await;
        alice.send(r#"{"dst":"bob","msg":"two"}"#).await;
        if ephemeral {
            let notice = alice.recv_text().await;
            assert!(notice.contains("bob is not online"), "{notice}");
        }
        let mut bob = classic(&server, "bob").await;
        if !ephemeral {
            // Stored while bob was away, replayed at connect.
            assert_eq!(bob.recv_json().await["msg"], "two");
        }
        alice.send(r#"{"dst":"bob","msg":"three"}"#).await;
        assert_eq!(bob.recv_json().await["msg"], "three", "ephemeral: {ephemeral}");
        server.stop().await;
    }
}

#[tokio::test]
async fn name_from_origin_header_like_the_qt_client() {
    let server = TestServer::start().await;
    let mut qt = classic_by_origin(&server, "C1我是客户端").await;
    let mut bob = classic(&server, "bob").await;
    bob.send(&json!({"dst": "C1我是客户端", "msg": "你好"}).to_string()).await;
    assert_eq!(qt.recv_json().await, json!({"src": "bob", "dst": "C1我是客户端", "msg": "你好"}));
}

#[tokio::test]
async fn offline_recipient_gets_a_plain_text_notice() {
    let server = TestServer::start().await;
    let mut alice = classic(&server, "alice").await;
    alice.send(r#"{"dst":"nobody","msg":"x"}"#).await;
    let notice = alice.recv_text().await;
    assert!(notice.contains("nobody is not online"), "{notice}");
    assert!(serde_json::from_str::<serde_json::Value>(&notice).is_err(), "notices are plain text");
}

#[tokio::test]
async fn everything_else_is_a_message_to_the_server_event() {
    let server = TestServer::start().await;
    let mut events = server.hub.subscribe_events();
    let mut alice = classic(&server, "alice").await;
    for text in ["hello server", "{not json", r#"{"msg":"no dst"}"#] {
        alice.send(text).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, events.recv()).await.expect("event").expect("recv");
        if let switchboard::hub::EventKind::ToServer { from, text } = event.kind {
            assert_eq!(from.as_str(), "alice");
            seen.push(text);
        }
    }
    assert_eq!(seen, ["hello server", "{not json", r#"{"msg":"no dst"}"#]);
}

#[tokio::test]
async fn duplicate_name_is_refused_with_409_and_the_first_is_unaffected() {
    let server = TestServer::start().await;
    let mut first = classic(&server, "alice").await;
    let (status, body) = refused(&server.ws_url("alice"), None).await;
    assert_eq!(status, 409);
    assert!(body.contains("already online"), "{body}");
    let (status, _) = refused(&server.base_ws(), Some("alice")).await;
    assert_eq!(status, 409);
    let mut bob = classic(&server, "bob").await;
    bob.send(r#"{"dst":"alice","msg":"still there?"}"#).await;
    assert_eq!(first.recv_json().await["msg"], "still there?");
}

#[tokio::test]
async fn bad_or_missing_names_are_refused_with_400() {
    let server = TestServer::start().await;
    let long = "x".repeat(65);
    let cases: &[(String, Option<&str>, &str)] = &[
        (server.base_ws(), None, "no client name"),
        (server.ws_url("bad\nname"), None, "control character"),
        (server.ws_url(""), None, "empty"),
        (server.ws_url(&long), None, "longer than 64"),
        (server.ws_url(" padded"), None, "white space"),
        (server.base_ws(), Some("http://evil.example"), "no client name"),
    ];
    for (url, origin, reason) in cases {
        let (status, body) = refused(url, *origin).await;
        assert_eq!(status, 400, "{url}");
        assert!(body.contains(reason), "{url}: {body}");
    }
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_order() {
    let server = TestServer::start_with(switchboard::config::Config {
        rate_messages_per_sec: 0,
        ..test_config()
    })
    .await;
    let mut alice = classic(&server, "alice").await;
    let mut bob = classic(&server, "bob").await;
    let sender = tokio::spawn(async move {
        for i in 0..10_000 {
            alice.send(&json!({"dst": "bob", "msg": i.to_string()}).to_string()).await;
        }
        alice
    });
    for i in 0..10_000 {
        assert_eq!(bob.recv_json().await["msg"], i.to_string());
    }
    sender.await.expect("sender");
}

#[tokio::test]
async fn two_hundred_clients_dm_each_other_without_loss() {
    const N: usize = 200;
    const EACH: usize = 20;
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(classic(&server, &format!("c{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // Each client sends EACH messages to its right neighbour and
            // receives EACH from its left one, in order.
            let to = format!("c{}", (i + 1) % N);
            let from = format!("c{}", (i + N - 1) % N);
            let send = async {
                for k in 0..EACH {
                    client.socket_send(&json!({"dst": to, "msg": k.to_string()}).to_string()).await;
                }
            };
            send.await;
            for k in 0..EACH {
                let got = client.recv_json().await;
                assert_eq!(got["src"], from);
                assert_eq!(got["msg"], k.to_string());
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

/// Many flows busy at once switch the hub to short turns and gathered
/// writes (`server::contention`): nothing may be lost, reordered or held
/// back by it, for the busy flows or for a light client beside them.
#[tokio::test]
async fn many_busy_flows_and_a_light_one_lose_nothing() {
    const PAIRS: usize = 8;
    const EACH: usize = 3_000;
    let server = TestServer::start_with(switchboard::config::Config {
        rate_messages_per_sec: 0,
        rate_bytes_per_sec: 0,
        ..test_config()
    })
    .await;
    let mut flows = Vec::new();
    for pair in 0..PAIRS {
        let mut sender = classic(&server, &format!("s{pair}")).await;
        let mut receiver = classic(&server, &format!("r{pair}")).await;
        let to = format!("r{pair}");
        flows.push(tokio::spawn(async move {
            for k in 0..EACH {
                sender.send(&json!({"dst": to, "msg": k.to_string()}).to_string()).await;
            }
            sender
        }));
        flows.push(tokio::spawn(async move {
            for k in 0..EACH {
                assert_eq!(receiver.recv_json().await["msg"], k.to_string());
            }
            receiver
        }));
    }
    let mut ping = classic(&server, "ping").await;
    let mut pong = classic(&server, "pong").await;
    for k in 0..20 {
        ping.send(&json!({"dst": "pong", "msg": k.to_string()}).to_string()).await;
        assert_eq!(pong.recv_json().await["msg"], k.to_string());
        pong.send(&json!({"dst": "ping", "msg": k.to_string()}).to_string()).await;
        assert_eq!(ping.recv_json().await["msg"], k.to_string());
    }
    for flow in flows {
        flow.await.expect("flow");
    }
}

trait SendExt {
    async fn socket_send(&mut self, text: &str);
}

impl SendExt for WsClient {
    async fn socket_send(&mut self, text: &str) {
        self.send(text).await;
    }
}
