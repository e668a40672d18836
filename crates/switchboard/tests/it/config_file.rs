//! `serve --config FILE`: the file sets the same options as the flags, flags
//! win, and a bad file stops the binary with a one-line reason.

use crate::common::process::ServerProcess;
use crate::common::TestServer;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn options_from_the_config_file_are_applied() {
    let dir = std::env::temp_dir().join(format!("switchboard-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("switchboard.toml");
    std::fs::write(
        &path,
        "# a test configuration\nmax_message_bytes = 100\nmax_queued_bytes = 4096\n",
    )
    .expect("write");
    let server = ServerProcess::start(&["--config", path.to_str().expect("utf-8 path")]).await;
    let (mut client, _) =
        tokio_tungstenite::connect_async(server.ws_url("alice")).await.expect("connect");
    client.send(Message::text("x".repeat(200))).await.expect("send");
    let close = loop {
        match tokio::time::timeout(crate::common::WAIT, client.next()).await.expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(1009), "the file's 100-byte limit is in force");
}

#[tokio::test]
async fn a_bad_config_file_is_refused_with_one_line() {
    let dir = std::env::temp_dir().join(format!("switchboard-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "max_message_bytes = \"lots\"\n").expect("write");
    let auth = |name: &str, key: &str| {
        let path = dir.join(name);
        let table = format!("[auth]\nalgorithm = \"RS256\"\npublic_key = {key:?}\n");
        std::fs::write(&path, table).expect("write");
        path.to_str().expect("path").to_owned()
    };
    let missing_key = auth("missing-key.toml", "/nonexistent/key.pem");
    let bad_key = auth("bad-key.toml", path.to_str().expect("path"));
    let local = ["serve", "--listen", "127.0.0.1:0", "--ephemeral", "--config"];
    // Each with a phrase of its cause, which the line says once.
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["serve", "--config", path.to_str().expect("path")], "invalid type"),
        (vec!["serve", "--config", "/nonexistent/switchboard.toml"], "No such file"),
        (vec!["serve", "--listen", "127.0.0.1:0", "--ping-interval-secs", "0"], "greater than 0"),
        ([&local[..], &[&*missing_key]].concat(), "No such file"),
        ([&local[..], &[&*bad_key]].concat(), "InvalidKeyFormat"),
    ];
    for (args, cause) in cases {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&args)
            .output()
            .await
            .expect("run");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("switchboard: "), "{stderr}");
        assert_eq!(lines[0].matches(cause).count(), 1, "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn durability_options_are_checked_at_start() {
    // Issue 7: a data directory that cannot be used stops the server with
    // one line naming the store; a bad --sync value names the choices.
    let file = std::env::temp_dir().join(format!("switchboard-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, "").expect("write");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("switchboard: ") && lines[0].contains("message store"),
        "{stderr}"
    );

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--sync", "sometimes"])
        .output()
        .await
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("expected full, normal or off"));
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn ephemeral_from_the_config_file_writes_nothing() {
    let dir = crate::common::temp_data_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("ephemeral.toml");
    let data = dir.join("data");
    std::fs::write(
        &path,
        format!(
            "ephemeral = true\ndata_dir = {:?}\nroom_history = 5\n",
            data.display().to_string()
        ),
    )
    .expect("write");
    let config = switchboard::config::Config::from_file(&path).expect("valid file");
    assert!(config.ephemeral && config.store_config().is_none());
    assert_eq!(config.hub_limits().room_history, 5);
    let server = TestServer::start_with(config).await;
    let mut alice = crate::common::classic(&server, "alice").await;
    alice.socket.close(None).await.expect("close");
    server.stop().await;
    assert!(!data.exists(), "an ephemeral hub creates no data directory");
}
