//! Cluster mode (issue 8): several nodes on loopback as one hub over a real
//! `redis-server` that each test starts on its own port.

use std::time::Duration;

use crate::common::redis::{node_process, nodes, settle, Redis};
use crate::common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::hub::EventKind;

async fn ask(client: &mut WsClient, request: Value) -> Value {
    client.send_json(request).await;
    client.recv_json().await
}

#[tokio::test]
async fn direct_messages_cross_nodes_in_both_protocols_and_in_order() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 3).await;
    let mut alice = classic(&nodes[0], "alice").await;
    let mut bob = v1(&nodes[1], "bob").await;
    let mut carol = classic(&nodes[2], "carol").await;
    settle(&nodes, 3).await;

    // classic → v1, across nodes, sender stamped by the hub.
    alice.send(r#"{"src":"mallory","dst":"bob","msg":"hi bob"}"#).await;
    let dm = bob.recv_json().await;
    assert_eq!((dm["type"].as_str(), dm["from"].as_str()), (Some("dm"), Some("alice")), "{dm}");
    assert_eq!(dm["text"], "hi bob");

    // v1 → classic, with an ack.
    let ack =
        ask(&mut bob, json!({"type": "dm", "id": "d1", "to": "carol", "text": "hi carol"})).await;
    assert_eq!(ack, json!({"type": "ack", "id": "d1", "status": "live"}));
    assert_eq!(carol.recv_json().await, json!({"src": "bob", "dst": "carol", "msg": "hi carol"}));

    // Per-sender order across nodes.
    for i in 0..200 {
        carol.send(&json!({"dst": "alice", "msg": i.to_string()}).to_string()).await;
    }
    for i in 0..200 {
        assert_eq!(alice.recv_json().await["msg"], i.to_string());
    }

    // Offline stays offline (not "unavailable") while the bus is healthy.
    alice.send(r#"{"dst":"nobody","msg":"x"}"#).await;
    assert!(alice.recv_text().await.contains("nobody is not online"));

    // Binary payloads cross nodes untouched.
    let mut dave = v1(&nodes[2], "dave").await;
    settle(&nodes, 4).await;
    let frame = switchboard_protocol::binary::encode_outgoing(
        "",
        switchboard_protocol::binary::Target::Client("bob"),
        &[0, 255, 7],
    );
    dave.socket.send(tokio_tungstenite::tungstenite::Message::Binary(frame)).await.expect("send");
    match bob.recv().await {
        tokio_tungstenite::tungstenite::Message::Binary(bytes) => {
            assert!(bytes.ends_with(&[0, 255, 7]), "{bytes:?}");
        }
        other => panic!("expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn a_room_spread_over_three_nodes_reaches_each_member_once() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 3).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut client = v1(node, &format!("m{i}")).await;
        let reply = ask(&mut client, json!({"type": "join", "id": "j", "room": "lobby"})).await;
        assert_eq!(reply, json!({"type": "ack", "id": "j"}));
        members.push(client);
    }
    for node in &nodes {
        let hub = node.hub.clone();
        eventually("room spread over three nodes", || {
            hub.room("lobby").is_some_and(|r| r.members.len() == 3)
        })
        .await;
    }
    let reply =
        ask(&mut members[0], json!({"type": "publish", "id": "p", "room": "lobby", "text": "hi"}))
            .await;
    assert_eq!(reply, json!({"type": "ack", "id": "p"}));
    for member in &mut members[1..] {
        let got = member.recv_json().await;
        assert_eq!((got["room"].as_str(), got["from"].as_str()), (Some("lobby"), Some("m0")));
        assert_eq!(got["text"], "hi");
    }
    // Exactly once: the next thing each member gets is the next publish.
    let reply =
        ask(&mut members[2], json!({"type": "publish", "id": "q", "room": "lobby", "text": "2"}))
            .await;
    assert_eq!(reply, json!({"type": "ack", "id": "q"}));
    for member in &mut members[..2] {
        let got = member.recv_json().await;
        assert_eq!((got["from"].as_str(), got["text"].as_str()), (Some("m2"), Some("2")), "{got}");
    }

    // The API on any node shows the whole cluster.
    let http = reqwest::Client::new();
    let rooms: Value = http
        .get(nodes[1].http("/api/rooms"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(rooms, json!([{"name": "lobby", "members": ["m0", "m1", "m2"]}]));
    let clients: Value = http
        .get(nodes[2].http("/api/clients"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> =
        clients.as_array().expect("array").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["m0", "m1", "m2"]);
    // The operator publishes on one node; members on every node get it once.
    let (_, delivered) =
        post(&nodes[1].http("/api/rooms/lobby/messages"), "from the operator").await;
    assert_eq!(delivered["delivered"], 3);
    for member in &mut members {
        let got = member.recv_json().await;
        assert_eq!(got["text"], "from the operator", "{got}");
    }
}

#[tokio::test]
async fn operator_broadcast_send_to_one_and_disconnect_work_across_nodes() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 3).await;
    let mut a = v1(&nodes[0], "a").await;
    let mut b = classic(&nodes[1], "b").await;
    let mut c = v1(&nodes[2], "c").await;
    settle(&nodes, 3).await;
    let http = reqwest::Client::new();
    let (_, delivered) = post(&nodes[0].http("/api/broadcast"), "hello everyone").await;
    assert_eq!(delivered["delivered"], 3);
    assert_eq!(a.recv_json().await["text"], "hello everyone");
    assert_eq!(b.recv_text().await, "hello everyone");
    assert_eq!(c.recv_json().await["text"], "hello everyone");

    // Send to one client on another node.
    let response = http
        .post(nodes[0].http("/api/clients/c/messages"))
        .body("just you")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let got = c.recv_json().await;
    assert_eq!((got["type"].as_str(), got["text"].as_str()), (Some("server"), Some("just you")));

    // Disconnect a client on another node.
    let response = http
        .post(nodes[2].http("/api/clients/b/disconnect?reason=bye"))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let (code, reason) = b.expect_close().await;
    assert_eq!(code, 4000);
    assert!(reason.contains("bye"), "{reason}");
    settle(&nodes, 2).await;
}

#[tokio::test]
async fn a_name_online_on_one_node_is_refused_on_another_with_409() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 2).await;
    let alice = classic(&nodes[0], "alice").await;
    settle(&nodes, 1).await;
    let (status, body) = refused(&nodes[1].ws_url("alice"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("alice"), "{body}");
    alice.close().await;
    settle(&nodes, 0).await;
    // Freed on leave: the name can be taken on the other node now.
    let mut again = None;
    for _ in 0..100 {
        match tokio_tungstenite::connect_async(nodes[1].ws_url("alice")).await {
            Ok((socket, _)) => {
                again = Some(socket);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(again.is_some(), "alice could not reconnect on the other node");
}

#[tokio::test]
async fn a_node_killed_with_sigkill_frees_its_names_and_its_clients_leave() {
    let redis = Redis::start().await;
    let nodes = nodes(&redis, 1).await;
    let survivor = &nodes[0];
    let mut events = survivor.hub.subscribe_events();
    let doomed = node_process(&redis, "doomed").await;
    let mut watcher = v1(survivor, "watcher").await;
    let reply = ask(&mut watcher, json!({"type": "subscribe", "id": "s"})).await;
    assert_eq!(reply["type"], "members", "{reply}");
    let (_dave, _) =
        tokio_tungstenite::connect_async(doomed.ws_url("dave")).await.expect("dave connects");
    let presence = watcher.recv_json().await;
    assert_eq!(
        (presence["name"].as_str(), presence["event"].as_str()),
        (Some("dave"), Some("join"))
    );
    let (status, _) = refused(&survivor.ws_url("dave"), None).await;
    assert_eq!(status, 409);

    doomed.signal("KILL").await;

    // The survivor notices the dead node: a leave event and a presence leave.
    let left = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let EventKind::Left { name, reason, .. } = event.kind {
                        if name.as_str() == "dave" {
                            return reason;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(error) => panic!("{error}"),
            }
        }
    })
    .await
    .expect("leave event for dave");
    assert!(left.contains("doomed"), "{left}");
    let presence = watcher.recv_json().await;
    assert_eq!(
        (presence["name"].as_str(), presence["event"].as_str()),
        (Some("dave"), Some("leave"))
    );

    // And the name is free again (within the TTL).
    let mut reused = false;
    for _ in 0..100 {
        if tokio_tungstenite::connect_async(survivor.ws_url("dave")).await.is_ok() {
            reused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reused, "dave's name was not freed after the node died");
}

#[tokio::test]
async fn redis_outage_keeps_local_traffic_refuses_cross_node_and_heals() {
    let mut redis = Redis::start().await;
    let nodes = nodes(&redis, 2).await;
    let mut alice = classic(&nodes[0], "alice").await;
    let mut bob = v1(&nodes[0], "bob").await;
    let mut carol = v1(&nodes[1], "carol").await;
    settle(&nodes, 3).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(nodes[0].http("/readyz")).send().await.expect("get").status(), 200);

    redis.stop().await;
    for node in &nodes {
        let hub = node.hub.clone();
        eventually("bus degraded", || !hub.bus().healthy()).await;
    }
    let ready = http.get(nodes[0].http("/readyz")).send().await.expect("get");
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.expect("body").contains("cluster"));
    assert_eq!(http.get(nodes[0].http("/healthz")).send().await.expect("get").status(), 200);

    // Local traffic goes on.
    alice.send(r#"{"dst":"bob","msg":"still here"}"#).await;
    let dm = bob.recv_json().await;
    assert_eq!(dm["text"], "still here", "{dm}");
    // Cross-node sends are refused clearly, in both protocols.
    alice.send(r#"{"dst":"carol","msg":"lost?"}"#).await;
    let notice = alice.recv_text().await;
    assert!(notice.contains("cluster bus unavailable"), "{notice}");
    let error =
        ask(&mut bob, json!({"type": "dm", "id": "x", "to": "carol", "text": "lost?"})).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    let response = http
        .post(nodes[0].http("/api/clients/carol/messages"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 503);

    // Redis comes back on the same port (empty): the cluster heals by itself.
    redis.spawn().await;
    for node in &nodes {
        let hub = node.hub.clone();
        let wait_healthy = async {
            while !hub.bus().healthy() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait_healthy).await.expect("bus healed");
    }
    assert_eq!(http.get(nodes[0].http("/readyz")).send().await.expect("get").status(), 200);
    settle(&nodes, 3).await;
    // The message store (the same Redis) may refuse the first sends after
    // the restart with `unavailable`; a client retries them, with the same id.
    let mut ack = Value::Null;
    for _ in 0..50 {
        ack = ask(&mut bob, json!({"type": "dm", "id": "y", "to": "carol", "text": "back"})).await;
        if ack["code"] != "unavailable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `duplicate` when a refused attempt had in fact been stored: either way
    // carol gets it.
    assert_eq!((ack["type"].as_str(), ack["id"].as_str()), (Some("ack"), Some("y")), "{ack}");
    assert!(ack["status"] == "live" || ack["status"] == "duplicate", "{ack}");
    let dm = carol.recv_json().await;
    assert_eq!((dm["from"].as_str(), dm["text"].as_str()), (Some("bob"), Some("back")), "{dm}");
    // Names were re-claimed in the new Redis: still unique cluster-wide.
    let (status, _) = refused(&nodes[1].ws_url("alice"), None).await;
    assert_eq!(status, 409);
}
