//! Issue 7 through the real server and real sockets: durable inboxes,
//! offline delivery, resume after a dropped connection, deduplication of
//! retried sends, retention limits, receipts, room history, the inbox API
//! and `--ephemeral`. The kill -9 test is in `crash.rs`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::stream::{join_since, read_stream, rseq_of, seq_of, stream_dms, texts};
use crate::common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard::config::Config;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = test_config();
    edit(&mut config);
    config
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64
}

fn dm(id: &str, to: &str, text: &str) -> Value {
    json!({"type": "dm", "id": id, "to": to, "text": text})
}

fn resume_url(server: &TestServer, name: &str, seq: u64) -> String {
    format!("{}&resume={seq}", server.ws_url(name))
}

/// Sends a request and returns the next frame.
async fn ask(client: &mut WsClient, request: Value) -> Value {
    client.send_json(request).await;
    client.recv_json().await
}

/// Sends a `ping` and asserts that its `pong` is the next frame: nothing
/// else was queued for the client before it.
async fn assert_nothing_queued(client: &mut WsClient, id: &str) {
    let pong = ask(client, json!({"type": "ping", "id": id})).await;
    assert_eq!(pong, json!({"type": "pong", "id": id}), "expected nothing queued before the pong");
}

async fn wait_offline(server: &TestServer, name: &str) {
    eventually(&format!("{name} has left the hub"), || server.hub.client(name).is_none()).await;
}

/// Connects `name` once with v1 and leaves, so that the name is known.
async fn make_known(server: &TestServer, name: &str) {
    v1(server, name).await.close().await;
    wait_offline(server, name).await;
}

/// `GET /api/inboxes/{name}`: status and body (Null when not JSON).
async fn inbox(server: &TestServer, name: &str) -> (u16, Value) {
    let response =
        reqwest::get(server.http(&format!("/api/inboxes/{name}"))).await.expect("get inbox");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls the inbox API until `name`'s depth is `depth` (bounded by WAIT).
async fn wait_depth(server: &TestServer, name: &str, depth: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = inbox(server, name).await;
        assert_eq!(status, 200, "GET /api/inboxes/{name}: {body}");
        if body["depth"] == depth {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}'s inbox depth did not reach {depth}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn operator_message(server: &TestServer, name: &str, text: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.http(&format!("/api/clients/{name}/messages")))
        .body(text.to_owned())
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ts_of(delivery: &Value) -> u64 {
    delivery["ts"].as_u64().unwrap_or_else(|| panic!("delivery without ts: {delivery}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_dms_are_stored_and_replayed_in_order_right_after_the_welcome() {
    let server = TestServer::start().await;
    make_known(&server, "bob").await;
    let mut alice = v1(&server, "alice").await;
    let sent_from = now_ms();
    for i in 0..100 {
        alice.send_json(dm(&format!("m{i}"), "bob", &format!("text {i}"))).await;
    }
    let mut acked = HashSet::new();
    for _ in 0..100 {
        let ack = alice.recv_json().await;
        assert_eq!((&ack["type"], &ack["status"]), (&json!("ack"), &json!("stored")), "{ack}");
        assert!(acked.insert(ack["id"].as_str().expect("ack id").to_owned()), "acked twice: {ack}");
    }
    assert_eq!(acked, (0..100).map(|i| format!("m{i}")).collect::<HashSet<_>>());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reconnect_at = now_ms();

    // The replay comes first, in order, with the original timestamps.
    let mut bob = v1(&server, "bob").await;
    let mut last_seq = 0;
    for i in 0..100 {
        let got = bob.recv_json().await;
        assert_eq!(got["type"], "dm", "{got}");
        assert_eq!((&got["from"], &got["to"]), (&json!("alice"), &json!("bob")), "{got}");
        assert_eq!(got["text"], format!("text {i}"), "replayed out of order: {got}");
        assert!(seq_of(&got) > last_seq, "seq not increasing: {got} after {last_seq}");
        last_seq = seq_of(&got);
        let ts = ts_of(&got);
        assert!(ts >= sent_from && ts < reconnect_at, "ts {ts} is not the original one: {got}");
    }
    assert_nothing_queued(&mut bob, "after-replay").await;

    // Then live traffic, seq continuing.
    let ack = ask(&mut alice, dm("live", "bob", "live one")).await;
    assert_eq!(ack, json!({"type": "ack", "id": "live", "status": "live"}));
    let got = bob.recv_json().await;
    assert_eq!(got["text"], "live one");
    assert!(seq_of(&got) > last_seq, "{got}");
    last_seq = seq_of(&got);

    // Auto-ack: what was written is acknowledged; a new session replays nothing.
    wait_depth(&server, "bob", 0).await;
    bob.close().await;
    wait_offline(&server, "bob").await;
    let mut bob = v1(&server, "bob").await;
    assert_nothing_queued(&mut bob, "nothing-left").await;
    let ack = ask(&mut alice, dm("next", "bob", "next session")).await;
    assert_eq!(ack["status"], "live", "{ack}");
    let got = bob.recv_json().await;
    assert_eq!(got["text"], "next session");
    assert!(seq_of(&got) > last_seq, "seq is per name and continues across sessions: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_clients_receive_their_stored_messages_in_the_classic_shape() {
    let server = TestServer::start().await;
    classic(&server, "bob").await.close().await;
    wait_offline(&server, "bob").await;

    let mut alice = classic(&server, "alice").await;
    for i in 0..5 {
        alice.send(&json!({"dst": "bob", "msg": format!("c{i}")}).to_string()).await;
    }
    // Classic senders get no ack: wait until the store has them.
    wait_depth(&server, "bob", 5).await;
    let mut carol = v1(&server, "carol").await;
    let ack = ask(&mut carol, dm("v", "bob", "from v1")).await;
    assert_eq!(ack, json!({"type": "ack", "id": "v", "status": "stored"}));
    let (status, body) = operator_message(&server, "bob", "operator note").await;
    assert_eq!((status, &body), (200, &json!({"delivered": 1, "status": "stored"})));
    alice.expect_silence(Duration::from_millis(200)).await;

    let mut bob = classic(&server, "bob").await;
    for i in 0..5 {
        assert_eq!(
            bob.recv_json().await,
            json!({"src": "alice", "dst": "bob", "msg": format!("c{i}")})
        );
    }
    assert_eq!(bob.recv_json().await, json!({"src": "carol", "dst": "bob", "msg": "from v1"}));
    assert_eq!(bob.recv_text().await, "operator note", "operator messages are plain text");

    alice.send(r#"{"dst":"bob","msg":"live"}"#).await;
    assert_eq!(bob.recv_json().await, json!({"src": "alice", "dst": "bob", "msg": "live"}));
    bob.expect_silence(Duration::from_millis(200)).await;
    wait_depth(&server, "bob", 0).await;
}

/// Issue 6: a live delivery no sender waits for (a classic DM, an operator
/// broadcast) is held by the hub, not written, until the recipient
/// acknowledges it; one never acknowledged is replayed to the next session
/// like any stored entry, with its seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_deliveries_nobody_waited_for_are_replayed_when_never_acknowledged() {
    let server = TestServer::start_with(config(|c| c.rate_messages_per_sec = 0)).await;
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    let mut alice = classic(&server, "alice").await;
    for i in 0..3 {
        alice.send(&json!({"dst": "bob", "msg": format!("c{i}")}).to_string()).await;
    }
    let mut live = Vec::new();
    for i in 0..4 {
        if i == 3 {
            let (status, body) = post(&server.http("/api/broadcast"), "to all").await;
            assert_eq!(status, 200, "{body}");
        }
        let got = bob.recv_json().await;
        live.push((seq_of(&got), got["text"].clone()));
    }
    let texts: Vec<_> = live.iter().map(|(_, text)| text.clone()).collect();
    assert_eq!(texts, [json!("c0"), json!("c1"), json!("c2"), json!("to all")]);
    let (_, info) = inbox(&server, "bob").await;
    assert_eq!(info["depth"], 4, "unacknowledged deliveries count in the inbox: {info}");

    drop(bob); // no ack, no close frame
    wait_offline(&server, "bob").await;
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    for (seq, text) in &live {
        let got = bob.recv_json().await;
        assert_eq!((seq_of(&got), &got["text"]), (*seq, text), "replayed as delivered: {got}");
    }
    assert_nothing_queued(&mut bob, "after-replay").await;
    bob.send_json(json!({"type": "ack", "seq": live[3].0})).await;
    wait_depth(&server, "bob", 0).await;

    // Acknowledged as soon as written (a classic session): nothing stays.
    bob.close().await;
    let mut carol = classic(&server, "carol").await;
    for i in 0..50 {
        alice.send(&json!({"dst": "carol", "msg": format!("d{i}")}).to_string()).await;
    }
    for i in 0..50 {
        assert_eq!(carol.recv_json().await["msg"], format!("d{i}"));
    }
    wait_depth(&server, "carol", 0).await;
    eventually("no stored bytes left", || server.hub.stored_bytes() == 0).await;
}

/// Bob (client-ack mode) drops out after `drop_after` of a stream of
/// `total`; alice keeps sending; bob resumes with the last seq it processed.
async fn resume_mid_stream(total: usize, drop_after: usize, pause_at: usize, kick: bool) {
    let server = TestServer::start_with(config(|c| c.rate_messages_per_sec = 0)).await;
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    let alice = v1(&server, "alice").await;
    let (open_gate, gate) = oneshot::channel();
    let sender = stream_dms(alice, "bob", total, pause_at, gate);

    let (mut next_text, mut last_seq) = (0, 0);
    read_stream(&mut bob, &mut next_text, &mut last_seq, Some(drop_after)).await;
    if kick {
        // What is already on its way still arrives before the close frame.
        server.hub.disconnect("bob", "test".into()).expect("disconnect bob");
        read_stream(&mut bob, &mut next_text, &mut last_seq, None).await;
    } else {
        drop(bob); // abruptly: no close frame
    }
    wait_offline(&server, "bob").await;
    open_gate.send(()).expect("gate");
    let statuses =
        tokio::time::timeout(WAIT, sender).await.expect("sender in time").expect("sender");
    for (i, status) in statuses.iter().enumerate() {
        let status = status.as_deref().expect("every message acked");
        assert!(status == "live" || status == "stored", "message {i} acked {status:?}");
        if i >= pause_at {
            assert_eq!(status, "stored", "message {i} was sent while bob was away");
        }
    }

    let processed = next_text;
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", last_seq)).await;
    read_stream(&mut bob, &mut next_text, &mut last_seq, Some(total)).await;
    assert_nothing_queued(&mut bob, "end").await;
    assert!(processed < total && processed >= drop_after, "processed {processed} before the drop");
    bob.send_json(json!({"type": "ack", "seq": last_seq})).await;
    wait_depth(&server, "bob", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_dropped_connection_mid_stream_has_no_gap_and_no_duplicate() {
    resume_mid_stream(10_000, 2_345, 6_000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_an_operator_kick_mid_stream_has_no_gap_and_no_duplicate() {
    resume_mid_stream(3_000, 777, 2_000, true).await;
}

/// Bob stops reading until his socket is full, then is kicked: what the
/// writer had taken from the queue when the kick came is written before
/// what came after it, so bob reads every seq in order up to the close
/// frame. With `offline_first`, the first half is stored while bob is away
/// and replayed when he comes back: the kick finds the writer in the replay.
async fn kick_while_the_socket_is_full(offline_first: bool) {
    const COUNT: usize = 200;
    let server = TestServer::start_with(config(|c| {
        c.rate_messages_per_sec = 0;
        c.max_queued_bytes = 64 << 20;
        c.inbox_max_bytes = 64 << 20;
    }))
    .await;
    let mut alice = v1(&server, "alice").await;
    let pad = "x".repeat(50_000); // 200 of these are more than loopback's buffers hold
    let text = |i: usize| format!("{i} {pad}");
    let mut sent = 0;
    if offline_first {
        make_known(&server, "bob").await;
        while sent < COUNT / 2 {
            alice.send_json(json!({"type": "dm", "to": "bob", "text": text(sent)})).await;
            sent += 1;
        }
        wait_depth(&server, "bob", (COUNT / 2) as u64).await;
    }
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    while sent < COUNT {
        alice.send_json(json!({"type": "dm", "to": "bob", "text": text(sent)})).await;
        sent += 1;
    }
    wait_depth(&server, "bob", COUNT as u64).await;
    // Let the writer run into the full socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.hub.disconnect("bob", "test".into()).expect("kick bob");

    let mut seqs = Vec::new();
    loop {
        let frame = tokio::time::timeout(WAIT, bob.socket.next()).await.expect("bob reads in time");
        match frame {
            Some(Ok(Message::Text(frame))) => {
                let got: Value = serde_json::from_str(&frame).expect("json");
                let (i, got_text) = (seqs.len(), got["text"].as_str().unwrap_or_default());
                let number = got_text.split(' ').next();
                assert_eq!(number, Some(i.to_string().as_str()), "seq {}: a gap", seq_of(&got));
                assert_eq!(got_text, text(i));
                seqs.push(seq_of(&got));
            }
            Some(Ok(Message::Close(close))) => {
                assert_eq!(close.map(|c| u16::from(c.code)), Some(4000));
                break;
            }
            other => panic!("bob: unexpected {other:?} after {} texts", seqs.len()),
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs increase: {seqs:?}");
    assert_eq!(seqs.len(), COUNT, "the drain writes everything queued before the close frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_while_the_socket_is_full_leaves_no_gap_before_the_close() {
    kick_while_the_socket_is_full(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_during_a_replay_leaves_no_gap_before_the_close() {
    kick_while_the_socket_is_full(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_is_acked_duplicate_and_delivered_once_across_the_senders_reconnect() {
    let server = TestServer::start().await;
    let mut bob = v1(&server, "bob").await;
    let mut alice = v1(&server, "alice").await;
    let ack = ask(&mut alice, dm("d1", "bob", "once")).await;
    assert_eq!(ack, json!({"type": "ack", "id": "d1", "status": "live"}));
    assert_eq!(bob.recv_json().await["text"], "once");
    let again = ask(&mut alice, dm("d1", "bob", "once")).await;
    assert_eq!(again, json!({"type": "ack", "id": "d1", "status": "duplicate"}));

    alice.close().await;
    wait_offline(&server, "alice").await;
    let mut alice = v1(&server, "alice").await;
    let retry = ask(&mut alice, dm("d1", "bob", "once")).await;
    assert_eq!(retry, json!({"type": "ack", "id": "d1", "status": "duplicate"}));
    // Ids are per sender: carol's "d1" is another message.
    let mut carol = v1(&server, "carol").await;
    let ack = ask(&mut carol, dm("d1", "bob", "carol's")).await;
    assert_eq!(ack["status"], "live", "{ack}");
    let got = bob.recv_json().await;
    assert_eq!((&got["from"], &got["text"]), (&json!("carol"), &json!("carol's")), "{got}");
    assert_nothing_queued(&mut bob, "once").await;

    // The same for a stored message.
    bob.close().await;
    wait_offline(&server, "bob").await;
    let ack = ask(&mut alice, dm("d2", "bob", "stored once")).await;
    assert_eq!(ack["status"], "stored", "{ack}");
    alice.close().await;
    wait_offline(&server, "alice").await;
    let mut alice = v1(&server, "alice").await;
    let retry = ask(&mut alice, dm("d2", "bob", "stored once")).await;
    assert_eq!(retry, json!({"type": "ack", "id": "d2", "status": "duplicate"}));
    let mut bob = v1(&server, "bob").await;
    assert_eq!(bob.recv_json().await["text"], "stored once");
    assert_nothing_queued(&mut bob, "stored-once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_refuses_with_inbox_full_until_the_recipient_acknowledges() {
    let server = TestServer::start_with(config(|c| c.inbox_max_messages = 5)).await;
    make_known(&server, "bob").await;
    let mut alice = v1(&server, "alice").await;
    for i in 0..5 {
        let ack = ask(&mut alice, dm(&format!("k{i}"), "bob", &i.to_string())).await;
        assert_eq!(ack["status"], "stored", "{ack}");
    }
    let full = ask(&mut alice, dm("k5", "bob", "sixth")).await;
    assert_eq!(
        (&full["type"], &full["id"], &full["code"]),
        (&json!("error"), &json!("k5"), &json!("inbox_full")),
        "{full}"
    );
    let message = full["message"].as_str().unwrap_or_default();
    assert!(message.contains('5'), "the error names the limit: {full}");

    let mut carol = classic(&server, "carol").await;
    carol.send(r#"{"dst":"bob","msg":"classic sixth"}"#).await;
    let notice = carol.recv_text().await;
    assert!(notice.starts_with("switchboard: "), "classic senders get a notice: {notice}");
    assert!(notice.contains("full"), "{notice}");
    let (status, body) = operator_message(&server, "bob", "operator sixth").await;
    assert_ne!(status, 200, "the operator's message does not fit either: {body}");

    // Client-ack mode: entries stay (and count) until bob acknowledges them.
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    let mut last_seq = 0;
    for i in 0..5 {
        let got = bob.recv_json().await;
        assert_eq!(got["text"], i.to_string(), "{got}");
        last_seq = seq_of(&got);
    }
    assert_nothing_queued(&mut bob, "only-five").await;
    let still = ask(&mut alice, dm("k6", "bob", "unacked")).await;
    assert_eq!(still["code"], "inbox_full", "nothing acknowledged yet: {still}");
    bob.send_json(json!({"type": "ack", "seq": last_seq})).await;
    assert_nothing_queued(&mut bob, "ack-has-no-reply").await;
    wait_depth(&server, "bob", 0).await;

    let mut accepted = None;
    for attempt in 0..100 {
        let reply = ask(&mut alice, dm(&format!("k7-{attempt}"), "bob", "after ack")).await;
        if reply["type"] == "ack" {
            accepted = Some(reply);
            break;
        }
        assert_eq!(reply["code"], "inbox_full", "{reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted = accepted.expect("sending works again after bob acknowledged");
    assert_eq!(accepted["status"], "live", "{accepted}");
    assert_eq!(bob.recv_json().await["text"], "after ack");
    assert_nothing_queued(&mut bob, "once").await;
}

/// Reads frames until both the ack and the receipt for `id` arrived.
async fn ack_and_receipt(alice: &mut WsClient, id: &str) -> (Value, Value) {
    let (mut ack, mut receipt) = (None, None);
    for _ in 0..2 {
        let frame = alice.recv_json().await;
        match frame["type"].as_str() {
            Some("ack") if frame["id"] == id => ack = Some(frame),
            Some("delivered") if frame["id"] == id => receipt = Some(frame),
            _ => panic!("unexpected frame while waiting for {id}'s ack and receipt: {frame}"),
        }
    }
    (ack.expect("ack"), receipt.expect("receipt"))
}

fn assert_receipt(receipt: &Value, id: &str, to: &str) {
    assert_eq!(receipt["type"], "delivered", "{receipt}");
    assert_eq!((&receipt["id"], &receipt["to"]), (&json!(id), &json!(to)), "{receipt}");
    seq_of(receipt);
    ts_of(receipt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_the_sender_when_the_recipient_acknowledges() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;

    // Without "receipt": no receipt.
    let ack = ask(&mut alice, dm("r0", "bob", "no receipt")).await;
    assert_eq!(ack["status"], "live", "{ack}");
    assert_eq!(bob.recv_json().await["text"], "no receipt");

    // Auto-ack recipient: the receipt follows the write to bob's socket.
    alice
        .send_json(json!({"type": "dm", "id": "r1", "to": "bob", "text": "x", "receipt": true}))
        .await;
    let (ack, receipt) = ack_and_receipt(&mut alice, "r1").await;
    assert_eq!(ack, json!({"type": "ack", "id": "r1", "status": "live"}));
    assert_receipt(&receipt, "r1", "bob");
    assert_eq!(bob.recv_json().await["text"], "x");
    alice.expect_silence(Duration::from_millis(200)).await;

    // Client-ack recipient: the receipt waits for bob's ack.
    wait_depth(&server, "bob", 0).await;
    bob.close().await;
    wait_offline(&server, "bob").await;
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    assert_nothing_queued(&mut bob, "empty").await;
    let ack = ask(
        &mut alice,
        json!({"type": "dm", "id": "r2", "to": "bob", "text": "ack me", "receipt": true}),
    )
    .await;
    assert_eq!(ack, json!({"type": "ack", "id": "r2", "status": "live"}));
    let got = bob.recv_json().await;
    assert_eq!(got["text"], "ack me");
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.send_json(json!({"type": "ack", "seq": seq_of(&got)})).await;
    let second = alice.recv_json().await;
    assert_receipt(&second, "r2", "bob");
    assert!(seq_of(&second) > seq_of(&receipt), "{second} after {receipt}");

    // An offline sender gets its receipt stored, and replayed when it connects.
    bob.close().await;
    wait_offline(&server, "bob").await;
    let ack = ask(
        &mut alice,
        json!({"type": "dm", "id": "r3", "to": "bob", "text": "later", "receipt": true}),
    )
    .await;
    assert_eq!(ack, json!({"type": "ack", "id": "r3", "status": "stored"}));
    alice.close().await;
    wait_offline(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    assert_eq!(bob.recv_json().await["text"], "later");
    wait_depth(&server, "alice", 1).await;
    let mut alice = v1(&server, "alice").await;
    let stored = alice.recv_json().await;
    assert_receipt(&stored, "r3", "bob");
    assert!(seq_of(&stored) > seq_of(&second), "{stored} after {second}");
    assert_nothing_queued(&mut alice, "one-receipt").await;
    assert_nothing_queued(&mut bob, "bob-done").await;
}

fn assert_rseqs_increase(deliveries: &[Value], after: u64) {
    let mut last = after;
    for delivery in deliveries {
        let rseq = rseq_of(delivery);
        assert!(rseq > last, "rseq not increasing: {delivery} after {last}");
        last = rseq;
        seq_of(delivery);
        ts_of(delivery);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_with_since_replays_the_room_history_before_the_ack() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            ask(client, json!({"type": "join", "id": "j0", "room": "r"})).await["type"],
            "ack"
        );
    }
    let publish = |i: usize| json!({"type": "publish", "id": format!("p{i}"), "room": "r", "text": format!("p{i}")});
    for i in 0..5 {
        let ack = ask(&mut alice, publish(i)).await;
        assert_eq!((&ack["type"], &ack["id"]), (&json!("ack"), &json!(format!("p{i}"))), "{ack}");
    }
    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(bob.recv_json().await);
    }
    assert_eq!(texts(&live), ["p0", "p1", "p2", "p3", "p4"]);
    assert_rseqs_increase(&live, 0);
    assert_eq!(
        ask(&mut bob, json!({"type": "leave", "id": "l", "room": "r"})).await["type"],
        "ack"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 5..8 {
        assert_eq!(ask(&mut alice, publish(i)).await["type"], "ack");
    }

    let rseq1 = live[1]["rseq"].as_u64().expect("rseq");
    let replayed = join_since(&mut bob, "r", json!({"rseq": rseq1})).await;
    assert_eq!(texts(&replayed), ["p2", "p3", "p4", "p5", "p6", "p7"]);
    assert_rseqs_increase(&replayed, rseq1);
    assert_eq!(replayed[0]["rseq"], live[2]["rseq"], "rseq is the room's, the same for everyone");
    assert_eq!(replayed[0]["ts"], live[2]["ts"], "replays keep the original ts");

    let mut carol = v1(&server, "carol").await;
    let replayed = join_since(&mut carol, "r", json!({"ts": ts_of(&live[4])})).await;
    assert_eq!(texts(&replayed), ["p5", "p6", "p7"]);

    let mut dave = v1(&server, "dave").await;
    let replayed = join_since(&mut dave, "r", json!({"rseq": 0})).await;
    assert_eq!(texts(&replayed), ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]);
    assert_rseqs_increase(&replayed, 0);

    let mut erin = v1(&server, "erin").await;
    let reply = ask(&mut erin, json!({"type": "join", "id": "plain", "room": "r"})).await;
    assert_eq!(reply["type"], "ack", "a join without since replays nothing: {reply}");

    assert_eq!(ask(&mut alice, publish(8)).await["type"], "ack");
    for member in [&mut bob, &mut carol, &mut dave, &mut erin] {
        let got = member.recv_json().await;
        assert_eq!(got["text"], "p8", "{got}");
        assert!(got["rseq"].as_u64() > replayed[7]["rseq"].as_u64(), "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_history_keeps_only_the_last_n_messages() {
    let server = TestServer::start_with(config(|c| c.room_history = 3)).await;
    let mut alice = v1(&server, "alice").await;
    assert_eq!(
        ask(&mut alice, json!({"type": "join", "id": "j", "room": "r"})).await["type"],
        "ack"
    );
    for i in 0..6 {
        let request =
            json!({"type": "publish", "id": format!("q{i}"), "room": "r", "text": format!("q{i}")});
        assert_eq!(ask(&mut alice, request).await["type"], "ack");
    }
    let mut bob = v1(&server, "bob").await;
    let replayed = join_since(&mut bob, "r", json!({"rseq": 0})).await;
    assert_eq!(texts(&replayed), ["q3", "q4", "q5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_api_reports_depth_and_age_purges_and_stores_operator_messages() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let (status, _) = inbox(&server, "nobody").await;
    assert_eq!(status, 404, "a never-seen name has no inbox");
    let (status, _) = operator_message(&server, "nobody", "x").await;
    assert_eq!(status, 404);

    make_known(&server, "bob").await;
    let (status, empty) = inbox(&server, "bob").await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        (&empty["name"], &empty["online"], &empty["depth"]),
        (&json!("bob"), &json!(false), &json!(0)),
        "{empty}"
    );
    assert!(empty["oldest_ts_ms"].is_null() && empty["oldest_age_ms"].is_null(), "{empty}");
    let next_seq = empty["next_seq"].as_u64().expect("next_seq");

    let mut alice = v1(&server, "alice").await;
    let before = now_ms();
    for i in 0..3 {
        assert_eq!(
            ask(&mut alice, dm(&format!("a{i}"), "bob", "stored")).await["status"],
            "stored"
        );
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let body = wait_depth(&server, "bob", 3).await;
    assert!(body["bytes"].as_u64().is_some_and(|b| b > 0), "{body}");
    assert_eq!(body["next_seq"], next_seq + 3, "{body}");
    let oldest = body["oldest_ts_ms"].as_u64().expect("oldest_ts_ms");
    assert!(oldest >= before && oldest <= now_ms(), "{body}");
    assert!(body["oldest_age_ms"].as_u64().is_some_and(|age| age >= 150), "{body}");

    let (status, reply) = operator_message(&server, "bob", "before purge").await;
    assert_eq!((status, &reply), (200, &json!({"delivered": 1, "status": "stored"})));
    wait_depth(&server, "bob", 4).await;

    let response = http.delete(server.http("/api/inboxes/bob")).send().await.expect("delete");
    assert_eq!(response.status(), 200);
    let purged = wait_depth(&server, "bob", 0).await;
    assert!(purged["oldest_ts_ms"].is_null(), "{purged}");
    let response = http.delete(server.http("/api/inboxes/nobody")).send().await.expect("delete");
    assert_eq!(response.status(), 404);

    let (status, reply) = operator_message(&server, "bob", "after purge").await;
    assert_eq!((status, &reply), (200, &json!({"delivered": 1, "status": "stored"})));
    let mut bob = v1(&server, "bob").await;
    let got = bob.recv_json().await;
    assert_eq!(
        (&got["type"], &got["text"]),
        (&json!("server"), &json!("after purge")),
        "purged messages are not replayed: {got}"
    );
    seq_of(&got);
    ts_of(&got);
    assert_nothing_queued(&mut bob, "purged").await;

    let client: Value = reqwest::get(server.http("/api/clients/bob"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(client["inbox_depth"].is_u64(), "{client}");
    let (_, online) = inbox(&server, "bob").await;
    assert_eq!(online["online"], true, "{online}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_mode_stores_nothing_and_refuses_offline_recipients() {
    let dir = temp_data_dir();
    let server = TestServer::start_with(config(|c| {
        c.ephemeral = true;
        c.data_dir = dir.clone();
    }))
    .await;
    make_known(&server, "bob").await;
    let mut alice = v1(&server, "alice").await;
    let refused = ask(&mut alice, dm("1", "bob", "x")).await;
    assert_eq!(
        (&refused["type"], &refused["id"], &refused["code"]),
        (&json!("error"), &json!("1"), &json!("recipient_offline")),
        "{refused}"
    );
    let never = ask(&mut alice, dm("2", "never", "x")).await;
    assert_eq!(never["code"], "recipient_offline", "{never}");
    let mut carol = classic(&server, "carol").await;
    carol.send(r#"{"dst":"bob","msg":"x"}"#).await;
    let notice = carol.recv_text().await;
    assert!(notice.contains("bob is not online"), "{notice}");
    let (status, _) = operator_message(&server, "bob", "x").await;
    assert_eq!(status, 404);

    let mut bob = v1(&server, "bob").await;
    assert_nothing_queued(&mut bob, "nothing-stored").await;
    let ack = ask(&mut alice, dm("3", "bob", "live")).await;
    assert_eq!((&ack["type"], &ack["id"]), (&json!("ack"), &json!("3")), "{ack}");
    assert!(ack["status"].is_null() || ack["status"] == "live", "{ack}");
    assert_eq!(bob.recv_json().await["text"], "live");
    assert!(!dir.join("switchboard.db").exists(), "an ephemeral hub writes no database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_to_a_name_that_never_connected_is_an_error_not_a_silent_drop() {
    let server = TestServer::start().await;
    let mut alice = v1(&server, "alice").await;
    let error = ask(&mut alice, dm("1", "ghost", "boo")).await;
    assert_eq!(
        (&error["type"], &error["id"], &error["code"]),
        (&json!("error"), &json!("1"), &json!("unknown_recipient")),
        "{error}"
    );
    assert!(error["message"].as_str().is_some_and(|m| m.contains("ghost")), "{error}");
    let mut carol = classic(&server, "carol").await;
    carol.send(r#"{"dst":"ghost","msg":"boo"}"#).await;
    let notice = carol.recv_text().await;
    assert!(notice.starts_with("switchboard: ") && notice.contains("ghost"), "{notice}");

    // Once it has connected, the name is known and its messages are kept.
    make_known(&server, "ghost").await;
    let ack = ask(&mut alice, dm("2", "ghost", "now stored")).await;
    assert_eq!(ack, json!({"type": "ack", "id": "2", "status": "stored"}));
    let mut ghost = v1(&server, "ghost").await;
    assert_eq!(ghost.recv_json().await["text"], "now stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_v1_send_is_answered_when_its_recipient_acks_or_the_inbox_is_purged() {
    // Issue 6: a v1 DM with an id to an online recipient is held with its
    // sender's answer (docs/durability.md); the answer comes with the
    // recipient's ack, or with an operator purge of the inbox.
    let server = TestServer::start_with(config(|_| {})).await;
    let (mut bob, _) = v1_url(&resume_url(&server, "bob", 0)).await;
    let mut alice = v1(&server, "alice").await;
    alice.send_json(dm("h1", "bob", "one")).await;
    let first = bob.recv_json().await;
    assert_eq!(first["text"], "one", "{first}");
    assert_nothing_queued(&mut alice, "before-bob-acks").await;
    bob.send_json(json!({"type": "ack", "seq": first["seq"]})).await;
    assert_eq!(alice.recv_json().await, json!({"type": "ack", "id": "h1", "status": "live"}));
    wait_depth(&server, "bob", 0).await;

    alice.send_json(dm("h2", "bob", "two")).await;
    assert_eq!(bob.recv_json().await["text"], "two");
    let http = reqwest::Client::new();
    let response = http.delete(server.http("/api/inboxes/bob")).send().await.expect("delete");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(alice.recv_json().await, json!({"type": "ack", "id": "h2", "status": "live"}));
    wait_depth(&server, "bob", 0).await;
    // Remembered either way: a retry is a duplicate, not a second delivery.
    let retry = ask(&mut alice, dm("h2", "bob", "two")).await;
    assert_eq!(retry, json!({"type": "ack", "id": "h2", "status": "duplicate"}));
    assert_nothing_queued(&mut bob, "no-second-delivery").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_the_store_cannot_read_closes_with_1011_until_the_operator_purges_it() {
    // A record kind this build does not know: the store cannot read the row.
    unreadable_stored_message("UPDATE inbox SET kind = 99 WHERE name = 'bob'").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_without_its_sender_closes_with_1011_until_the_operator_purges_it() {
    // The store reads the row; the hub cannot make a direct message of it.
    unreadable_stored_message("UPDATE inbox SET sender = NULL WHERE name = 'bob'").await;
}

/// A row damaged on disk (by `damage`) is neither skipped (an accepted
/// message lost without a word) nor a panic: its recipient's session
/// closes with 1011, the rest of the hub runs on, and the operator's purge
/// clears the way.
async fn unreadable_stored_message(damage: &str) {
    let dir = temp_data_dir();
    let server = TestServer::start_with(config(|c| c.data_dir = dir.clone())).await;
    make_known(&server, "bob").await;
    let mut alice = v1(&server, "alice").await;
    assert_eq!(ask(&mut alice, dm("d1", "bob", "damaged")).await["status"], "stored");
    alice.close().await;
    server.stop().await;

    let db = rusqlite::Connection::open(dir.join("switchboard.db")).expect("open the store");
    let damaged = db.execute(damage, []).expect("damage");
    assert_eq!(damaged, 1, "bob's stored message is one row");
    drop(db);

    let server = TestServer::start_with(config(|c| c.data_dir = dir.clone())).await;
    let (mut bob, welcome) = v1_url(&server.ws_url("bob")).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(
        bob.expect_close().await,
        (1011, "server error: cannot read stored messages".to_owned())
    );
    wait_offline(&server, "bob").await;
    let (status, kept) = inbox(&server, "bob").await;
    assert_eq!((status, &kept["depth"]), (200, &json!(1)), "still stored: {kept}");

    // The hub serves everyone else meanwhile.
    let mut carol = v1(&server, "carol").await;
    assert_nothing_queued(&mut carol, "carol-served").await;

    let http = reqwest::Client::new();
    let response = http.delete(server.http("/api/inboxes/bob")).send().await.expect("delete");
    assert_eq!(response.status().as_u16(), 200);
    wait_depth(&server, "bob", 0).await;
    let mut bob = v1(&server, "bob").await;
    assert_nothing_queued(&mut bob, "purged").await;
    let ack = ask(&mut carol, dm("c1", "bob", "after the purge")).await;
    assert_eq!(ack["status"], "live", "{ack}");
    assert_eq!(bob.recv_json().await["text"], "after the purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_database_refuses_is_answered_unavailable_and_the_retry_is_stored_once() {
    // Another process holds the database's write lock past the store's busy
    // timeout: the group commit fails. The sender hears `unavailable` (not
    // an ack for a message that is not on disk), the id is forgotten (the
    // retry is not a "duplicate"), and the retry is stored and replayed once.
    let dir = temp_data_dir();
    let server = TestServer::start_with(config(|c| c.data_dir = dir.clone())).await;
    make_known(&server, "bob").await;
    let mut alice = v1(&server, "alice").await;
    let db = rusqlite::Connection::open(dir.join("switchboard.db")).expect("open the store");
    db.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");

    // Each commit waits out the busy timeout (5 s) before it fails: the
    // message's, and the next one, after which its sender is answered.
    alice.send_json(dm("d1", "bob", "once")).await;
    let refused = match tokio::time::timeout(3 * WAIT, alice.socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text).expect("json"),
        other => panic!("expected the refusal, got {other:?}"),
    };
    assert_eq!((&refused["type"], &refused["id"]), (&json!("error"), &json!("d1")), "{refused}");
    assert_eq!(refused["code"], "unavailable", "{refused}");

    db.execute_batch("ROLLBACK").expect("release the write lock");
    drop(db);
    let ack = ask(&mut alice, dm("d1", "bob", "once")).await;
    assert_eq!(ack, json!({"type": "ack", "id": "d1", "status": "stored"}));
    // The refused copy is not counted in the inbox.
    wait_depth(&server, "bob", 1).await;

    let mut bob = v1(&server, "bob").await;
    let got = bob.recv_json().await;
    assert_eq!((&got["type"], &got["text"]), (&json!("dm"), &json!("once")), "{got}");
    assert_nothing_queued(&mut bob, "stored-once").await;
}
