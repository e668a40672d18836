//! `switchboard connect` as a real child process against the real server:
//! DMs with v1 and classic clients, rooms, `/who`, `/send-file`, `--json`,
//! end of input, and connection errors.

use crate::common::cli::{Cli, MAX_LINES};
use crate::common::{classic, v1, TestServer, WAIT};
use switchboard_client::{Client, Event, Events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The first event `pick` accepts, within [`WAIT`] and [`MAX_LINES`] events.
async fn next_event<T>(events: &mut Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    for _ in 0..MAX_LINES {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            Ok(None) => panic!("events ended"),
            Err(_) => panic!("timed out waiting for an event"),
        }
    }
    panic!("no matching event in {MAX_LINES} events");
}

/// Runs the CLI to completion with no input (for connection failures).
async fn run_to_exit(url: &str, name: &str) -> (Option<i32>, String) {
    let cli = Cli::spawn(url, name, &[]);
    let (code, _, stderr) = cli.finish().await;
    (code, stderr)
}

#[tokio::test]
async fn direct_messages_both_ways_with_a_v1_socket() {
    let server = TestServer::start().await;
    let mut cli = Cli::connected(&server, "alice", &[]).await;
    let mut bob = v1(&server, "bob").await;

    cli.send("@bob hello bob").await;
    let dm = bob.recv_json().await;
    assert_eq!((dm["type"].as_str(), dm["from"].as_str()), (Some("dm"), Some("alice")), "{dm}");
    assert_eq!(dm["text"], "hello bob");

    bob.send_json(serde_json::json!({"type": "dm", "id": "1", "to": "alice", "text": "hi alice"}))
        .await;
    assert_eq!(bob.recv_json().await["type"], "ack");
    cli.expect_line("bob's DM", |line| line == "[bob] hi alice").await;

    let (code, _, stderr) = cli.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn classic_clients_and_the_cli_interoperate() {
    let server = TestServer::start().await;
    let mut cli = Cli::connected(&server, "alice", &[]).await;
    let mut carol = classic(&server, "carol").await;

    cli.send("@carol hi carol").await;
    let dm = carol.recv_json().await;
    assert_eq!(dm, serde_json::json!({"src": "alice", "dst": "carol", "msg": "hi carol"}));

    carol.send(r#"{"src":"mallory","dst":"alice","msg":"hi alice"}"#).await;
    cli.expect_line("carol's DM", |line| line == "[carol] hi alice").await;

    // An operator broadcast reaches both.
    let http = reqwest::Client::new();
    let response = http
        .post(server.http("/api/broadcast"))
        .body("maintenance at noon")
        .send()
        .await
        .expect("post");
    assert!(response.status().is_success());
    cli.expect_line("broadcast", |line| line == "[server] maintenance at noon").await;
    assert!(carol.recv_text().await.contains("maintenance at noon"));

    let (code, _, stderr) = cli.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn rooms_and_who() {
    let server = TestServer::start().await;
    let mut cli = Cli::connected(&server, "alice", &[]).await;
    let mut bob = v1(&server, "bob").await;
    bob.send_json(serde_json::json!({"type": "join", "id": "j", "room": "lobby"})).await;
    assert_eq!(bob.recv_json().await["type"], "ack");

    cli.send("/join lobby").await;
    crate::common::eventually("alice in lobby", || {
        server.hub.room("lobby").is_some_and(|room| room.members.len() == 2)
    })
    .await;
    cli.send("#lobby hello room").await;
    let message = bob.recv_json().await;
    assert_eq!((message["type"].as_str(), message["room"].as_str()), (Some("room"), Some("lobby")));
    assert_eq!(
        (message["from"].as_str(), message["text"].as_str()),
        (Some("alice"), Some("hello room"))
    );

    bob.send_json(serde_json::json!({"type": "publish", "room": "lobby", "text": "hi all"})).await;
    cli.expect_line("room message", |line| line == "[#lobby bob] hi all").await;

    cli.send("/who").await;
    cli.expect_line("who", |line| line == "online: alice, bob").await;
    cli.send("/members lobby").await;
    cli.expect_line("members", |line| line == "members of #lobby: alice, bob").await;

    cli.send("/leave lobby").await;
    cli.send("#lobby anyone?").await;
    cli.expect_line("not-member error", |line| {
        line.starts_with("error: ") && line.contains("not_member")
    })
    .await;

    cli.send("some words for the operator").await;
    let (code, _, stderr) = cli.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn json_output_is_one_object_per_line() {
    let server = TestServer::start().await;
    let mut cli = Cli::connected(&server, "alice", &["--json"]).await;
    let (bob, _bob_events) = Client::connect(server.base_ws(), "bob").await.expect("bob");

    bob.send_direct("alice", "line one\nline two").expect("dm");
    let line = cli.expect_line("dm", |line| line.contains(r#""type":"dm""#)).await;
    let dm: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(dm["from"], "bob");
    assert_eq!(dm["text"], "line one\nline two");
    assert!(dm["seq"].as_u64().is_some() && dm["ts"].as_u64().is_some(), "{dm}");

    cli.send("@nobody hello?").await;
    let line = cli.expect_line("error", |line| line.contains(r#""type":"error""#)).await;
    let error: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(error["code"], "unknown_recipient");

    let (code, rest, stderr) = cli.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    for line in rest {
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["type"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn end_of_input_delivers_everything_then_exits_0() {
    let server = TestServer::start().await;
    let (_bob, mut bob_events) = Client::connect(server.base_ws(), "bob").await.expect("bob");
    let mut cli = Cli::connected(&server, "alice", &[]).await;
    let count = 500;
    let input: String = (0..count).map(|i| format!("@bob message {i}\n")).collect();
    cli.stdin.as_mut().expect("stdin").write_all(input.as_bytes()).await.expect("write");
    let (code, _, stderr) = cli.finish().await;
    assert_eq!(code, Some(0), "{stderr}");

    for i in 0..count {
        let expected = format!("message {i}");
        let text = next_event(&mut bob_events, |event| match event {
            Event::Direct { text, .. } => Some(text),
            _ => None,
        })
        .await;
        assert_eq!(text, expected);
    }
}

#[tokio::test]
async fn send_file_delivers_the_bytes() {
    let server = TestServer::start().await;
    let (_bob, mut bob_events) = Client::connect(server.base_ws(), "bob").await.expect("bob");
    let mut cli = Cli::connected(&server, "alice", &[]).await;
    let path = std::env::temp_dir().join(format!("switchboard-cli-{}.bin", std::process::id()));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).expect("write file");

    cli.send(&format!("/send-file bob {}", path.display())).await;
    let (from, payload) = next_event(&mut bob_events, |event| match event {
        Event::Binary { from, payload, .. } => Some((from, payload)),
        _ => None,
    })
    .await;
    assert_eq!(from, "alice");
    assert_eq!(&payload[..], &data[..]);

    cli.send("/send-file bob /nonexistent/file").await;
    let (code, _, stderr) = cli.finish().await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("cannot read /nonexistent/file"), "{stderr}");
}

#[tokio::test]
async fn a_closed_port_fails_with_one_line() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = format!("ws://{addr}");
    let (code, stderr) = run_to_exit(&url, "alice").await;
    assert_ne!(code, Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("switchboard: cannot connect to {url}: ")), "{stderr}");
}

#[tokio::test]
async fn a_taken_name_fails_with_the_reason() {
    let server = TestServer::start().await;
    let _alice = classic(&server, "alice").await;
    let (code, stderr) = run_to_exit(&server.base_ws(), "alice").await;
    assert_ne!(code, Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(r#"name "alice" is already online"#), "{stderr}");

    let (code, stderr) = run_to_exit(&server.base_ws(), "bad\tname").await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("invalid client name"), "{stderr}");
}

#[tokio::test]
async fn losing_the_connection_for_good_exits_non_zero() {
    let server = TestServer::start().await;
    let mut cli = Cli::connected(&server, "alice", &["--no-reconnect"]).await;
    server.stop().await;
    cli.expect_line("disconnect", |line| line.starts_with("* disconnected (1001)")).await;
    // Stdin stays open: the exit is caused by the lost connection alone.
    let status =
        tokio::time::timeout(WAIT, cli.child.wait()).await.expect("exit in time").expect("wait");
    assert_ne!(status.code(), Some(0));
    let mut stderr = String::new();
    let mut pipe = cli.child.stderr.take().expect("stderr");
    tokio::time::timeout(WAIT, pipe.read_to_string(&mut stderr))
        .await
        .expect("stderr")
        .expect("read");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("lost: server shutting down"), "{stderr}");
}

#[tokio::test]
async fn a_message_to_an_offline_cli_user_is_stored_and_shown_when_they_return() {
    // Issue 7, the README's tour: bob quits, alice writes, bob comes back.
    let server = TestServer::start().await;
    let bob = Cli::connected(&server, "bob", &[]).await;
    let (code, _, stderr) = bob.finish().await;
    assert_eq!(code, Some(0), "{stderr}");

    let mut alice = Cli::connected(&server, "alice", &[]).await;
    alice.send("@bob are you there?").await;
    alice
        .expect_line("the stored notice", |line| line.contains("stored: the recipient is offline"))
        .await;

    let mut bob = Cli::connected(&server, "bob", &[]).await;
    bob.expect_line("the stored DM", |line| line == "[alice] are you there?").await;
    let (code, _, stderr) = bob.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = alice.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
}
