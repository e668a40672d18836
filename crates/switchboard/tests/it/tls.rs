//! TLS (issue 5): the real server with a throwaway CA and certificate made by
//! rcgen, serving wss and https on one port. DMs over wss with
//! tokio-tungstenite, with the client library (`ca_pem`) and with
//! `switchboard connect --ca`; /healthz over https from the real binary; a
//! plain-HTTP client and a stalled client on the TLS port fail cleanly while
//! others are served; bad certificate settings stop the server with a reason.
//! Also the echo endpoint behind `--echo-path`, over ws and wss.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use crate::common::cli::Cli;
use crate::common::process::ServerProcess;
use crate::common::{test_config, TestServer, WsClient, WAIT};
use futures_util::{SinkExt as _, StreamExt as _};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::json;
use switchboard::config::Config;
use switchboard_client::{ClientBuilder, ConnectError, Event, Events, ReconnectPolicy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

/// Most events or lines a test looks through for the one it expects.
const MAX_ITEMS: usize = 10_000;

/// A throwaway CA and a server certificate it signed for 127.0.0.1 and
/// localhost, written as PEM files into a directory removed on drop.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Switchboard test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, "switchboard test server");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server cert");

        let dir =
            std::env::temp_dir().join(format!("switchboard-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        let ca_pem = ca_cert.pem();
        Pki {
            ca_path: write("ca.pem", &ca_pem),
            cert_path: write("cert.pem", &cert.pem()),
            key_path: write("key.pem", &key.serialize_pem()),
            ca_pem,
            dir,
        }
    }

    fn config(&self) -> Config {
        Config {
            tls_cert: Some(self.cert_path.clone()),
            tls_key: Some(self.key_path.clone()),
            ..test_config()
        }
    }

    /// A tokio-tungstenite connector that trusts this CA only.
    fn connector(&self) -> Connector {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .expect("ca der");
        roots.add(ca).expect("add ca");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Connector::Rustls(Arc::new(config))
    }

    /// An https client that trusts this CA.
    fn https_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("reqwest ca");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(WAIT)
            .build()
            .expect("https client")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wss(server: &TestServer) -> String {
    format!("wss://{}", server.addr)
}

/// A v1 client over wss through tokio-tungstenite; the welcome is consumed.
async fn v1_wss(server: &TestServer, pki: &Pki, name: &str) -> WsClient {
    let url = format!("{}/?name={name}", wss(server));
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("switchboard.v1"));
    let (socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(pki.connector()),
    )
    .await
    .expect("wss connect");
    let mut client = WsClient { socket };
    let welcome = client.recv_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    client
}

/// Reads events until one matches; panics after [`WAIT`].
async fn expect_event(events: &mut Events, what: &str, check: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    for _ in 0..MAX_ITEMS {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if check(&event) => return event,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("events ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
    panic!("no {what} within {MAX_ITEMS} events");
}

fn is_dm(event: &Event, sender: &str, body: &str) -> bool {
    matches!(event, Event::Direct { from, text, .. } if from == sender && text == body)
}

/// Sends a v1 DM from `from` to `to` over wss and checks that it arrives.
async fn dm_over_wss(from: &mut WsClient, to: &mut WsClient, to_name: &str, text: &str) {
    from.send_json(json!({"type": "dm", "id": "1", "to": to_name, "text": text})).await;
    let dm = to.recv_json().await;
    assert_eq!((&dm["type"], &dm["text"]), (&json!("dm"), &json!(text)), "{dm}");
    let ack = from.recv_json().await;
    assert_eq!((&ack["type"], &ack["id"]), (&json!("ack"), &json!("1")), "{ack}");
}

#[tokio::test]
async fn dm_over_wss_between_tungstenite_clients() {
    let pki = Pki::new("tungstenite");
    let server = TestServer::start_with(pki.config()).await;
    let mut alice = v1_wss(&server, &pki, "alice").await;
    let mut bob = v1_wss(&server, &pki, "bob").await;

    dm_over_wss(&mut alice, &mut bob, "bob", "hi bob, over TLS").await;
    dm_over_wss(&mut bob, &mut alice, "alice", "hi alice").await;
    let dm = {
        alice.send_json(json!({"type": "dm", "to": "bob", "text": "second"})).await;
        bob.recv_json().await
    };
    assert_eq!((&dm["from"], &dm["seq"]), (&json!("alice"), &json!(2)), "{dm}");

    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test]
async fn dm_over_wss_with_the_client_library_and_ca_pem() {
    let pki = Pki::new("library");
    let server = TestServer::start_with(pki.config()).await;
    // One trusts the CA from PEM bytes, the other from the file.
    let (alice, mut alice_events) = ClientBuilder::new(wss(&server), "alice")
        .ca_pem(pki.ca_pem.as_bytes())
        .connect()
        .await
        .expect("alice connects over wss");
    let (bob, mut bob_events) = ClientBuilder::new(wss(&server), "bob")
        .ca_pem(pki.ca_path.as_path())
        .connect()
        .await
        .expect("bob connects over wss");

    let id = alice.send_direct("bob", "hi bob").expect("send");
    expect_event(&mut bob_events, "alice's DM", |e| is_dm(e, "alice", "hi bob")).await;
    expect_event(&mut alice_events, "ack", |e| {
        matches!(e, Event::Ack { .. }) && e.request_id() == Some(id.as_str())
    })
    .await;
    bob.send_direct("alice", "hi alice").expect("send");
    expect_event(&mut alice_events, "bob's DM", |e| is_dm(e, "bob", "hi alice")).await;

    alice.close().await;
    bob.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_client_library_refuses_an_untrusted_certificate_and_a_bad_ca() {
    let pki = Pki::new("untrusted");
    let server = TestServer::start_with(pki.config()).await;

    // Without the CA, the system's roots do not vouch for the test certificate.
    let error = ClientBuilder::new(wss(&server), "mallory")
        .reconnect(ReconnectPolicy::disabled())
        .connect()
        .await
        .map(|_| ())
        .expect_err("an untrusted certificate must be refused");
    assert!(matches!(&error, ConnectError::Tls(_)), "{error:?}");
    assert!(error.to_string().contains("certificate"), "{error}");

    let missing = pki.dir.join("missing.pem");
    let error = ClientBuilder::new(wss(&server), "mallory")
        .ca_pem(missing.as_path())
        .connect()
        .await
        .map(|_| ())
        .expect_err("a missing CA file must be refused");
    assert!(matches!(&error, ConnectError::Ca { .. }) && error.is_permanent(), "{error:?}");
    let error = ClientBuilder::new(wss(&server), "mallory")
        .ca_pem(b"not a certificate".as_slice())
        .connect()
        .await
        .map(|_| ())
        .expect_err("PEM without a certificate must be refused");
    assert!(matches!(&error, ConnectError::Ca { .. }), "{error:?}");

    // The refused attempts left the server serving.
    let mut alice = v1_wss(&server, &pki, "alice").await;
    let mut bob = v1_wss(&server, &pki, "bob").await;
    dm_over_wss(&mut alice, &mut bob, "bob", "still here").await;
    server.stop().await;
}

#[tokio::test]
async fn cli_connects_over_wss_with_ca() {
    let pki = Pki::new("cli");
    let server = TestServer::start_with(pki.config()).await;
    let (bob, mut bob_events) = ClientBuilder::new(wss(&server), "bob")
        .ca_pem(pki.ca_path.as_path())
        .connect()
        .await
        .expect("bob connects");

    let ca = pki.ca_path.to_str().expect("utf-8 path");
    let mut cli = Cli::spawn(&wss(&server), "alice", &["--no-reconnect", "--ca", ca]);
    cli.expect_line("connected", |line| line.starts_with("* connected as")).await;
    cli.send("@bob hi bob from the CLI").await;
    expect_event(&mut bob_events, "the CLI's DM", |e| is_dm(e, "alice", "hi bob from the CLI"))
        .await;
    bob.send_direct("alice", "hi alice").expect("send");
    cli.expect_line("bob's DM", |line| line == "[bob] hi alice").await;
    let (code, _, stderr) = cli.finish().await;
    assert_eq!(code, Some(0), "{stderr}");

    // Without --ca the CLI explains the refusal on one line and fails.
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", &wss(&server), "--name", "carol", "--no-reconnect"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().expect("stderr");
    tokio::time::timeout(WAIT, pipe.read_to_string(&mut stderr)).await.expect("stderr").ok();
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exit").expect("wait");
    assert!(!status.success());
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    bob.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_binary_serves_https_and_wss_on_one_port() {
    let pki = Pki::new("binary");
    let cert = pki.cert_path.to_str().expect("utf-8 path");
    let key = pki.key_path.to_str().expect("utf-8 path");
    let server = ServerProcess::start(&["--tls-cert", cert, "--tls-key", key]).await;
    let https = pki.https_client();
    let base = format!("https://{}", server.addr);

    let response = https.get(format!("{base}/healthz")).send().await.expect("GET /healthz");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("body"), "ok\n");
    let clients = https.get(format!("{base}/api/clients")).send().await.expect("GET /api");
    assert_eq!(clients.status(), 200);

    // wss on the same port, and the API sees the client.
    let (alice, _events) = ClientBuilder::new(format!("wss://{}", server.addr), "alice")
        .ca_pem(pki.ca_pem.as_bytes())
        .connect()
        .await
        .expect("wss connect");
    let clients: serde_json::Value = https
        .get(format!("{base}/api/clients"))
        .send()
        .await
        .expect("GET /api/clients")
        .json()
        .await
        .expect("json");
    assert!(clients.to_string().contains("alice"), "{clients}");
    alice.close().await;

    // Plain http:// to the TLS port is refused with a reason.
    let plain = reqwest::get(format!("http://{}/healthz", server.addr)).await.expect("plain GET");
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.expect("body").contains("TLS"));

    server.signal("TERM").await;
    assert_eq!(server.wait().await, Some(0));
}

/// Reads what the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("server closes the connection in time")
        .expect("read");
    received
}

#[tokio::test]
async fn plain_clients_and_stalled_handshakes_fail_cleanly_without_affecting_others() {
    let pki = Pki::new("plain");
    // One connection slot: a stuck handshake that kept it would starve everyone.
    let config = Config { max_connections: 1, handshake_timeout_secs: 1, ..pki.config() };
    let server = TestServer::start_with(config).await;

    // Plain HTTP: a readable 400, then the connection is closed.
    let mut plain = TcpStream::connect(server.addr).await.expect("tcp");
    plain.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
    let answer = String::from_utf8_lossy(&read_to_close(&mut plain).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("use https:// or wss://"), "{answer}");

    // A plain ws:// handshake fails with the same refusal.
    let (status, body) =
        crate::common::refused(&format!("ws://{}/?name=eve", server.addr), None).await;
    assert_eq!(status, 400, "{body}");

    // Garbage after a TLS-looking first byte: the handshake fails and the connection closes.
    let mut garbage = TcpStream::connect(server.addr).await.expect("tcp");
    garbage.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await.expect("write");
    read_to_close(&mut garbage).await;

    // Silence: the handshake timeout covers TLS, so the slot is freed.
    let mut silent = TcpStream::connect(server.addr).await.expect("tcp");
    assert!(read_to_close(&mut silent).await.is_empty());
    // Half a TLS handshake (the first byte only): also timed out.
    let mut partial = TcpStream::connect(server.addr).await.expect("tcp");
    partial.write_all(&[0x16]).await.expect("write");
    read_to_close(&mut partial).await;

    // Through all of that, the one slot still serves TLS clients.
    let https = pki.https_client();
    let ok = https.get(format!("https://{}/healthz", server.addr)).send().await.expect("https");
    assert_eq!(ok.status(), 200);
    let mut alice = v1_wss(&server, &pki, "alice").await;
    alice.send_json(json!({"type": "dm", "id": "1", "to": "alice", "text": "to myself"})).await;
    let dm = alice.recv_json().await;
    assert_eq!(dm["text"], "to myself", "{dm}");
    alice.close().await;
    server.stop().await;
}

#[tokio::test]
async fn bad_tls_settings_stop_the_server_with_a_reason() {
    let pki = Pki::new("bad");
    let listener =
        switchboard::server::bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind");
    let config = Config { tls_cert: Some(pki.dir.join("missing.pem")), ..pki.config() };
    let error = switchboard::server::run(listener, config, std::future::pending())
        .await
        .expect_err("a missing certificate is fatal");
    assert!(error.to_string().contains("missing.pem"), "{error}");

    // A key that does not match the certificate.
    let other = Pki::new("bad-other");
    let listener =
        switchboard::server::bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind");
    let config = Config { tls_key: Some(other.key_path.clone()), ..pki.config() };
    let error = switchboard::server::run(listener, config, std::future::pending())
        .await
        .expect_err("a mismatched key is fatal");
    assert!(error.to_string().contains("TLS"), "{error}");
    // rustls's reason is the error's cause, said once when the chain is
    // printed (as the binary prints it).
    let cause = std::error::Error::source(&error).expect("rustls's reason").to_string();
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(next) = source {
        chain = format!("{chain}: {next}");
        source = next.source();
    }
    assert_eq!(chain.matches(&cause).count(), 1, "{chain}");

    // One without the other, and through the binary: a one-line reason, exit 1.
    let half = Config { tls_key: None, ..pki.config() };
    assert!(half.validate().unwrap_err().to_string().contains("tls_key"));
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-key"])
        .arg(&pki.key_path)
        .arg("--tls-cert")
        .arg(pki.dir.join("missing.pem"))
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(WAIT, output).await.expect("exits").expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("switchboard: ") && last.contains("missing.pem"), "{stderr}");
}

/// Sends `message` to an echo socket and expects it back.
async fn echo_round_trip<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, message: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket.send(message.clone()).await.expect("send");
    let deadline = tokio::time::Instant::now() + WAIT;
    for _ in 0..MAX_ITEMS {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("echo in time")
            .expect("open")
            .expect("frame");
        if matches!(frame, Message::Ping(_) | Message::Pong(_)) {
            continue;
        }
        assert_eq!(frame, message);
        return;
    }
}

#[tokio::test]
async fn the_echo_endpoint_echoes_over_ws_and_wss_only_when_enabled() {
    // Off by default: the path is not special.
    let server = TestServer::start().await;
    let (status, _) = crate::common::refused(&format!("ws://{}/echo", server.addr), None).await;
    assert_eq!(status, 404);
    server.stop().await;

    let config = Config { echo_path: Some("/echo".into()), ..test_config() };
    let server = TestServer::start_with(config).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/echo", server.addr)).await.expect("ws");
    echo_round_trip(&mut socket, Message::text("hello échø")).await;
    echo_round_trip(&mut socket, Message::binary(vec![0u8, 255, 1, 254])).await;
    socket.close(None).await.expect("close");
    // A non-upgrade request to the path is refused; the rest of the server is unchanged.
    let http = reqwest::get(server.http("/echo")).await.expect("GET /echo");
    assert_eq!(http.status(), 400);
    let health = reqwest::get(server.http("/healthz")).await.expect("GET /healthz");
    assert_eq!(health.status(), 200);
    let mut hub_client = crate::common::v1(&server, "alice").await;
    hub_client.send_json(json!({"type": "dm", "to": "alice", "text": "hub"})).await;
    assert_eq!(hub_client.recv_json().await["text"], "hub");
    server.stop().await;

    let pki = Pki::new("echo");
    let config = Config { echo_path: Some("/echo".into()), ..pki.config() };
    let server = TestServer::start_with(config).await;
    let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{}/echo", server.addr),
        None,
        false,
        Some(pki.connector()),
    )
    .await
    .expect("wss echo");
    echo_round_trip(&mut socket, Message::text("over TLS")).await;
    socket.close(None).await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn the_echo_endpoint_applies_the_hub_size_limit() {
    let config =
        Config { echo_path: Some("/echo".into()), max_message_bytes: 1024, ..test_config() };
    let server = TestServer::start_with(config).await;
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/echo", server.addr)).await.expect("ws");
    let mut client = WsClient { socket };
    client.send(&"x".repeat(1024)).await;
    assert_eq!(client.recv_text().await.len(), 1024);
    client.send(&"x".repeat(1025)).await;
    let (code, _) = client.expect_close().await;
    assert_eq!(code, 1009);
    server.stop().await;

    let bad = Config { echo_path: Some("echo".into()), ..test_config() };
    assert!(bad.validate().unwrap_err().to_string().contains("echo_path"));
}
