//! Limits and bad input: each refusal comes with a close code or an HTTP
//! status and a reason, and everyone else keeps being served.

use std::time::Duration;

use crate::common::process::ServerProcess;
use crate::common::*;
use futures_util::SinkExt;
use serde_json::json;
use switchboard::config::Config;
use switchboard::hub::EventKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

async fn still_served(server: &TestServer, a: &str, b: &str) {
    let mut x = classic(server, a).await;
    let mut y = classic(server, b).await;
    x.send(&json!({"dst": b, "msg": "still here"}).to_string()).await;
    assert_eq!(y.recv_json().await["msg"], "still here");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut bad = classic(&server, "bad").await;
    let frame = Frame::message(vec![0x66, 0x6f, 0xff, 0xfe], OpCode::Data(Data::Text), true);
    bad.socket.send(Message::Frame(frame)).await.expect("send raw frame");
    let (code, reason) = bad.expect_close().await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains("UTF-8"), "{reason}");
    still_served(&server, "x", "y").await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = TestServer::start_with(Config { max_message_bytes: 1024, ..test_config() }).await;
    let mut big = classic(&server, "big").await;
    big.send(&"x".repeat(2000)).await;
    let (code, reason) = big.expect_close().await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("1024"), "{reason}");
    still_served(&server, "x", "y").await;
}

#[tokio::test]
async fn protocol_violation_closes_with_1002() {
    let server = TestServer::start().await;
    let mut bad = classic(&server, "bad").await;
    // A continuation frame with no message to continue.
    let frame = Frame::message(b"orphan".to_vec(), OpCode::Data(Data::Continue), true);
    bad.socket.send(Message::Frame(frame)).await.expect("send raw frame");
    let (code, _) = bad.expect_close().await;
    assert_eq!(code, 1002);
    still_served(&server, "x", "y").await;
}

/// A client that never reads while ~64 MiB is pushed at it is disconnected
/// (1008), its sender is never slowed down, and the server's memory stays
/// bounded. The server runs as its own process so its RSS is its own.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    // Ephemeral: this is about the outbox bound. With the durable store the
    // DMs to the cut-off victim are stored, and the store's queue may hold up
    // to its own limit (64 MiB, backpressure from 32 MiB) when the disk is
    // slow; that bound is tested in store::tests::overload_and_backpressure.
    let server = ServerProcess::start(&[
        "--ephemeral",
        "--rate-messages-per-sec",
        "0",
        "--rate-bytes-per-sec",
        "0",
    ])
    .await;
    let (mut _victim, _) =
        tokio_tungstenite::connect_async(server.ws_url("victim")).await.expect("victim");
    let (mut sender, _) =
        tokio_tungstenite::connect_async(server.ws_url("sender")).await.expect("sender");
    let before = server.rss_kib();
    let chunk = "x".repeat(64 * 1024);
    let message = json!({"dst": "victim", "msg": chunk}).to_string();
    // 1024 × 64 KiB = 64 MiB, sent as fast as the server takes it.
    for _ in 0..1024 {
        sender
            .send(Message::text(message.clone()))
            .await
            .expect("sender is never blocked or dropped");
    }
    // The sender learns the victim is gone: notices arrive instead of silence.
    let mut notices = 0;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(2), futures_util::StreamExt::next(&mut sender))
            .await
    {
        if let Message::Text(text) = frame {
            assert!(text.contains("victim"), "{text}");
            notices += 1;
        }
        if notices > 0 {
            break;
        }
    }
    assert!(notices > 0, "the sender was told that the victim is no longer reachable");
    let after = server.rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    // Outbox limit 4 MiB + socket buffers: far below the 64 MiB pushed.
    assert!(grown_mib < 32, "server RSS grew by {grown_mib} MiB ({before} → {after} KiB)");
    let health =
        reqwest::get(server.http("/api/clients")).await.expect("api").text().await.expect("body");
    assert!(!health.contains("victim"), "victim was disconnected: {health}");
    assert!(health.contains("sender"), "sender still connected: {health}");
}

#[tokio::test]
async fn overflow_disconnect_reports_1008_in_the_leave_event() {
    let server = TestServer::start_with(Config {
        max_queued_bytes: 256 * 1024,
        max_message_bytes: 64 * 1024,
        rate_messages_per_sec: 0,
        rate_bytes_per_sec: 0,
        ..test_config()
    })
    .await;
    let mut events = server.hub.subscribe_events();
    let _victim = classic(&server, "victim").await;
    let mut sender = classic(&server, "sender").await;
    let message = json!({"dst": "victim", "msg": "y".repeat(60 * 1024)}).to_string();
    for _ in 0..400 {
        sender.send(&message).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("leave event")
            .expect("recv");
        if let EventKind::Left { name, code, reason } = event.kind {
            assert_eq!(name.as_str(), "victim");
            assert_eq!(code, Some(1008), "{reason}");
            assert!(reason.contains("too slow"), "{reason}");
            break;
        }
    }
}

#[tokio::test]
async fn unresponsive_clients_are_dropped_by_keepalive() {
    let server = TestServer::start_with(Config {
        ping_interval_secs: 1,
        pong_timeout_secs: 1,
        ..test_config()
    })
    .await;
    let mut events = server.hub.subscribe_events();
    let mut silent = classic(&server, "silent").await;
    let mut lively = classic(&server, "lively").await;
    // `lively` keeps reading, so tungstenite answers the pings; `silent` does
    // not read at all, so its pongs are never sent.
    lively.expect_silence(Duration::from_millis(3500)).await;
    let (code, reason) = silent.expect_close().await;
    assert_eq!(code, 4001, "{reason}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event =
            tokio::time::timeout_at(deadline, events.recv()).await.expect("event").expect("recv");
        if let EventKind::Left { name, code, .. } = event.kind {
            assert_eq!(name.as_str(), "silent");
            assert_eq!(code, Some(4001));
            break;
        }
    }
    assert!(server.hub.client("lively").is_some(), "a client that answers pings stays connected");
}

#[tokio::test]
async fn slow_handshakes_are_dropped() {
    let server =
        TestServer::start_with(Config { handshake_timeout_secs: 1, ..test_config() }).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("tcp");
    tcp.write_all(b"GET /?name=loris HTTP/1.1\r\nHost: x\r\n").await.expect("partial header");
    let mut buf = Vec::new();
    // The server gives up on the half-sent header and closes the connection:
    // read_to_end only returns once the server has closed it (EOF or reset).
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("the server closed the half-open handshake");
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(server.hub.client("loris").is_none());
    still_served(&server, "x", "y").await;
}

/// A sender's burst of large messages is routed in slices, with the
/// recipient's writer running in between, so a recipient that keeps reading
/// is not cut off as a slow consumer. (The reader's share of the scheduler is
/// counted in bytes as well as frames: counted in frames only, one turn
/// could route 128 messages of 32 KiB into one outbox.)
#[tokio::test]
async fn a_burst_of_large_messages_does_not_overflow_a_recipient_that_reads() {
    let server = TestServer::start_with(Config {
        max_queued_bytes: 1 << 20,
        rate_messages_per_sec: 0,
        rate_bytes_per_sec: 0,
        ephemeral: true,
        ..test_config()
    })
    .await;
    let mut bob = classic(&server, "bob").await;
    let mut alice = classic(&server, "alice").await;
    let chunk = "x".repeat(32 * 1024);
    const COUNT: usize = 60; // ~1.9 MiB, nearly twice bob's outbox limit
    for i in 0..COUNT {
        let dm = json!({"dst": "bob", "msg": format!("{i} {chunk}")}).to_string();
        alice.socket.feed(Message::text(dm)).await.expect("feed");
    }
    alice.socket.flush().await.expect("flush");
    for i in 0..COUNT {
        let dm: serde_json::Value = serde_json::from_str(&bob.recv_text().await).expect("json");
        let msg = dm["msg"].as_str().expect("msg");
        assert!(msg.starts_with(&format!("{i} ")), "message {i} in order");
    }
    assert!(server.hub.online().iter().any(|name| name.as_str() == "bob"), "bob was not cut off");
}
