//! Test harness: the real server on 127.0.0.1:0, real WebSocket clients.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod cli;
pub mod process;
pub mod redis;
pub mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard::config::Config;
use switchboard::hub::Hub;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        TestServer::start_at("127.0.0.1:0".parse().expect("addr"), config)
    }

    /// On a chosen address, so a "restarted" server can take the same port.
    pub fn start_at(addr: SocketAddr, config: Config) -> TestServer {
        let listener = switchboard::server::bind(addr, 1024).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let hub = Hub::new(config.hub_limits());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(switchboard::server::run_with_hub(
            listener,
            config,
            hub.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        TestServer { addr, hub, shutdown: Some(tx), handle: Some(handle) }
    }

    pub fn ws_url(&self, name: &str) -> String {
        format!("ws://{}/?name={}", self.addr, urlencode(name))
    }

    pub fn base_ws(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("shutdown in time")
                .expect("join")
                .expect("run");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Defaults (a durable store, issue 7), but quick to shut down, with a
/// data directory of the test's own.
pub fn test_config() -> Config {
    Config { drain_timeout_secs: 2, data_dir: temp_data_dir(), ..Config::default() }
}

/// A fresh, empty data directory under cargo's per-target temp dir
/// (`target/tmp`, removed by `cargo clean`).
pub fn temp_data_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let unique = format!(
        "switchboard-data-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    );
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique)
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A test client over a real WebSocket.
pub struct WsClient {
    pub socket: Socket,
}

/// Connects in classic mode with `?name=`.
pub async fn classic(server: &TestServer, name: &str) -> WsClient {
    let (socket, _) =
        tokio_tungstenite::connect_async(server.ws_url(name)).await.expect("classic connect");
    WsClient { socket }
}

/// Connects in classic mode with the name in the Origin header, as the Qt tutorial does.
pub async fn classic_by_origin(server: &TestServer, name: &str) -> WsClient {
    let mut request = server.base_ws().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Origin", HeaderValue::from_bytes(name.as_bytes()).expect("header"));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.expect("origin connect");
    WsClient { socket }
}

/// Connects with protocol v1 and consumes the welcome.
pub async fn v1(server: &TestServer, name: &str) -> WsClient {
    v1_url(&server.ws_url(name)).await.0
}

/// Tries a handshake and returns the HTTP status and body of a refusal.
pub async fn refused(url: &str, origin: Option<&str>) -> (u16, String) {
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", HeaderValue::from_bytes(origin.as_bytes()).expect("header"));
    }
    match handshake(request).await {
        Ok(_) => panic!("handshake to {url} was accepted"),
        Err(refusal) => refusal,
    }
}

/// The handshake's outcome: a connected client, or the refusal's status and body.
pub async fn handshake(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<WsClient, (u16, String)> {
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(WsClient { socket }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("unexpected handshake error: {other}"),
    }
}

/// POSTs `body` to `url` (the operator API): the status and the JSON answer.
pub async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new().post(url).body(body).send().await.expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Deterministic pseudo-random bytes (xorshift), so payloads are not all alike.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

impl WsClient {
    pub async fn send(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.expect("send");
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send(&value.to_string()).await;
    }

    /// The next data frame, skipping pings; panics on close or timeout.
    pub async fn recv(&mut self) -> Message {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("read error");
            match frame {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    pub async fn recv_json(&mut self) -> serde_json::Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// No data frame arrives within `wait` (pings are answered and skipped).
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.socket.next()).await
        {
            if !matches!(frame, Message::Ping(_) | Message::Pong(_)) {
                panic!("expected silence, got {frame:?}");
            }
        }
    }

    /// Reads until a close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("timed out waiting for close");
            match frame {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("error before close frame: {error}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Closes with 1000 "bye" and waits for the server's reply.
    pub async fn close(mut self) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        let _ = self.socket.close(Some(frame)).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.socket.next()).await {}
    }
}

/// Polls `check` until it holds (for state that settles asynchronously).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- durability (issue 7) ---

/// Connects with protocol v1 to `url` (the in-process server's or a child
/// process's, with any query such as `&resume=N`), checks the subprotocol
/// and returns the client with its welcome.
pub async fn v1_url(url: &str) -> (WsClient, serde_json::Value) {
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("switchboard.v1"));
    let (socket, response) = tokio_tungstenite::connect_async(request).await.expect("v1 connect");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes()),
        Some(&b"switchboard.v1"[..])
    );
    let mut client = WsClient { socket };
    let welcome = client.recv_json().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}
