//! Wire compatibility with the tutorial's own library, QtWebSockets.
//!
//! `tests/it/qt/qt_client.cpp` is the tutorial's client window as a console
//! program: `QWebSocket(NAME, VersionLatest)` (the name travels as the
//! Origin header), private messages as compact JSON `{src,dst,msg}`, and one
//! printed line per received message. These tests build it with qmake + make
//! (Debian: `qtbase5-dev qt5-qmake libqt5websockets5-dev g++ make`, which
//! `.ci/run` installs) and run it against the real hub next to a Rust client.
//!
//! A finding pinned here: Qt 5 writes its handshake as Latin-1, so a name
//! with characters beyond Latin-1 (the tutorial's "C1我是客户端") reaches any
//! server as "C1?????". Such clients name themselves with `?name=` (QUrl
//! percent-encodes it as UTF-8) and keep the name as origin, as the tutorial
//! does; Latin-1 names ("José") work from the Origin alone.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use switchboard::hub::{EventKind, HubEvent, Protocol};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{broadcast, mpsc};

const INSTALL_HINT: &str =
    "the Qt interop test needs Qt 5 with QtWebSockets, qmake, g++ and make; \
     on Debian/Ubuntu: apt-get install -y --no-install-recommends \
     qtbase5-dev qt5-qmake libqt5websockets5-dev g++ make (.ci/run does this)";

/// How long building the Qt client may take (one C++ file, on 2 cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds `tests/it/qt/qt_client` under the cargo target dir, once: make only
/// recompiles when the source is newer than the binary, and `flock` keeps
/// concurrently running tests from building over each other.
async fn qt_client_binary() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/qt");
    let pro = source.join("qt_client.pro");
    let build = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qt_client");
    std::fs::create_dir_all(&build).expect("create the Qt build directory");
    let qmake = std::env::var("QMAKE").unwrap_or_else(|_| "qmake".to_owned());
    for tool in [qmake.as_str(), "make", "g++", "flock"] {
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v \"$1\" >/dev/null", "sh", tool])
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "`{tool}` not found: {INSTALL_HINT}");
    }
    let mut command = Command::new("flock");
    command
        .arg(build.join(".lock"))
        .args(["sh", "-c", "cd \"$1\" && \"$2\" \"$3\" && make", "sh"])
        .arg(&build)
        .arg(&qmake)
        .arg(&pro)
        // qtchooser (Debian's /usr/bin/qmake) picks Qt 5 even if Qt 6 is there.
        .env("QT_SELECT", "qt5")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(BUILD_TIMEOUT, command.output())
        .await
        .expect("building the Qt client timed out")
        .expect("run qmake + make");
    assert!(
        output.status.success(),
        "building the Qt client failed ({}):\n{}\n{}\n{INSTALL_HINT}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let binary = build.join("qt_client");
    assert!(binary.is_file(), "the Qt build made no {}", binary.display());
    binary
}

/// The running Qt client: its stdin, and its stdout one line at a time.
struct QtClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl QtClient {
    /// Starts `qt_client URL NAME` under a non-UTF-8 locale, to show the
    /// client does not depend on it.
    async fn spawn(url: &str, name: &str) -> QtClient {
        let binary = qt_client_binary().await;
        let mut child = Command::new(binary)
            .arg(url)
            .arg(name)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Qt client");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        QtClient { child, stdin, lines }
    }

    /// The next line the client printed.
    async fn next_line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .expect("timed out waiting for the Qt client to print")
            .expect("the Qt client's stdout ended")
    }

    async fn expect_line(&mut self, expected: &str) {
        assert_eq!(self.next_line().await, expected, "Qt client output");
    }

    /// Types a line into the client, as into the tutorial's send box.
    async fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write to the Qt client");
        stdin.flush().await.expect("flush");
    }

    /// Ends stdin; the client closes its socket and exits.
    async fn end_input(&mut self) {
        drop(self.stdin.take());
    }

    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the Qt client did not exit")
            .expect("wait for the Qt client")
    }
}

/// The next hub event matching `pick`, skipping others.
async fn next_event<T>(
    events: &mut broadcast::Receiver<HubEvent>,
    what: &str,
    mut pick: impl FnMut(EventKind) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the event: {what}"))
            .expect("event stream");
        if let Some(found) = pick(event.kind) {
            return found;
        }
    }
}

async fn joined(events: &mut broadcast::Receiver<HubEvent>, who: &str) -> Protocol {
    next_event(events, &format!("{who} joined"), |kind| match kind {
        EventKind::Joined { name, protocol, .. } if name.as_str() == who => Some(protocol),
        _ => None,
    })
    .await
}

/// The hub's ToServer event from `who`.
async fn to_server(events: &mut broadcast::Receiver<HubEvent>, who: &str) -> String {
    next_event(events, &format!("message to the server from {who}"), |kind| match kind {
        EventKind::ToServer { from, text } if from.as_str() == who => Some(text),
        _ => None,
    })
    .await
}

async fn left(events: &mut broadcast::Receiver<HubEvent>, who: &str) -> (Option<u16>, String) {
    next_event(events, &format!("{who} left"), |kind| match kind {
        EventKind::Left { name, code, reason } if name.as_str() == who => Some((code, reason)),
        _ => None,
    })
    .await
}

/// POSTs a raw text body to the operator API and returns the JSON reply.
async fn operator_post(server: &TestServer, path: &str, body: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .post(server.http(path))
        .body(body.to_owned())
        .send()
        .await
        .expect("operator request");
    assert!(response.status().is_success(), "POST {path}: {}", response.status());
    response.json().await.expect("operator reply is JSON")
}

/// The whole tutorial conversation between a Qt client called `qt_name`,
/// started on `url`, and a Rust client called "rust": DMs both ways, a
/// spoofed src, a message to the server, an offline recipient, an operator
/// broadcast and direct message, then a clean goodbye.
async fn converse(server: &TestServer, qt_name: &str, text: &str, url: &str) {
    let mut events = server.hub.subscribe_events();
    let mut qt = QtClient::spawn(url, qt_name).await;
    // A refused handshake shows here as "ERROR <Qt's reason>".
    qt.expect_line("CONNECTED").await;
    // The hub's name for the Qt client is the one it asked for.
    assert_eq!(joined(&mut events, qt_name).await, Protocol::Classic);

    let mut rust = classic(server, "rust").await;
    assert_eq!(joined(&mut events, "rust").await, Protocol::Classic);

    // Rust -> Qt: the tutorial's receive handler shows "from src: msg".
    let to_qt = format!("hello {qt_name} from rust: {text}");
    rust.send_json(json!({"dst": qt_name, "msg": to_qt})).await;
    qt.expect_line(&format!("FROM rust: {to_qt}")).await;
    // A spoofed src is overwritten with the sender's real name.
    rust.send_json(json!({"src": "mallory", "dst": qt_name, "msg": "not mallory"})).await;
    qt.expect_line("FROM rust: not mallory").await;

    // Qt -> Rust: on_sendpb_clicked's compact JSON, src stamped by the hub.
    let to_rust = format!("hi rust, {qt_name} here: {text}");
    qt.type_line(&format!("@rust {to_rust}")).await;
    assert_eq!(rust.recv_json().await, json!({"src": qt_name, "dst": "rust", "msg": to_rust}));

    // Qt -> server: a plain line is a message to the server, an event.
    let to_hub = format!("hello server, {text}");
    qt.type_line(&to_hub).await;
    assert_eq!(to_server(&mut events, qt_name).await, to_hub);

    // Qt -> someone offline: a plain-text notice, shown as a message.
    qt.type_line("@nobody are you there?").await;
    let notice = qt.next_line().await;
    assert!(notice.starts_with("MSG ") && notice.contains("nobody is not online"), "{notice}");

    // Operator broadcast reaches both, as plain text.
    let announcement = format!("operator broadcast: {text}");
    let reply = operator_post(server, "/api/broadcast", &announcement).await;
    assert_eq!(reply["delivered"], 2, "{reply}");
    qt.expect_line(&format!("MSG {announcement}")).await;
    assert_eq!(rust.recv_text().await, announcement);

    // Operator message to the Qt client alone (the name is percent-encoded).
    let path = format!("/api/clients/{}/messages", urlencode(qt_name).replace('+', "%20"));
    let reply = operator_post(server, &path, "just for you").await;
    assert_eq!(reply["delivered"], 1, "{reply}");
    qt.expect_line("MSG just for you").await;

    // Rust still talks to Qt after all that, and vice versa.
    rust.send_json(json!({"dst": qt_name, "msg": "last one"})).await;
    qt.expect_line("FROM rust: last one").await;
    qt.type_line("@rust bye").await;
    assert_eq!(rust.recv_json().await["msg"], "bye");

    // stdin EOF: the Qt client closes normally and exits 0.
    qt.end_input().await;
    qt.expect_line("DISCONNECTED").await;
    let status = qt.wait().await;
    assert!(status.success(), "Qt client exit: {status}");
    assert_eq!(left(&mut events, qt_name).await.0, Some(1000));
    eventually("the Qt client is gone", || {
        !server.hub.online().iter().any(|n| n.as_str() == qt_name)
    })
    .await;
    rust.close().await;
}

/// Exactly the tutorial's setup: the name only in the Origin header.
#[tokio::test]
async fn qt_client_named_by_origin_talks_to_a_rust_client_and_the_operator() {
    let server = TestServer::start().await;
    converse(&server, "qt-client", "plain ASCII", &server.base_ws()).await;
    server.stop().await;
}

/// The tutorial's own client name, "C1我是客户端", with Chinese text both
/// ways. Qt 5 cannot put it in the Origin header intact (see below), so the
/// URL carries it as `?name=`; the origin is still the name, as in the
/// tutorial, and is what the client writes as `src`.
#[tokio::test]
async fn qt_client_with_the_tutorials_chinese_name() {
    let server = TestServer::start().await;
    let name = "C1我是客户端";
    let url = format!("{}/?name={}", server.base_ws(), urlencode(name));
    converse(&server, name, "你好，世界 — ünïcödé ✓", &url).await;
    server.stop().await;
}

/// A Latin-1 name works from the Origin alone: Qt sends "José" as the
/// Latin-1 byte 0xE9, which the hub decodes as Latin-1.
#[tokio::test]
async fn qt_client_with_a_latin1_name_in_the_origin() {
    let server = TestServer::start().await;
    let name = "José Müller";
    converse(&server, name, "olá", &server.base_ws()).await;
    server.stop().await;
}

/// What Qt 5 really puts on the wire, captured with a bare TCP listener:
/// the tutorial's handshake with the name as Origin, encoded as Latin-1
/// (characters beyond it become '?'). This is why the Chinese-name test
/// above passes `?name=`.
#[tokio::test]
async fn qt_handshake_sends_the_name_as_a_latin1_origin() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut qt = QtClient::spawn(&format!("ws://{addr}"), "C1我是客户端-José").await;
    let (mut socket, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the Qt client did not connect")
        .expect("accept");
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "handshake too long");
        let n = tokio::time::timeout(WAIT, socket.read(&mut chunk))
            .await
            .expect("handshake read timed out")
            .expect("read");
        assert!(n > 0, "connection closed mid-handshake");
        head.extend_from_slice(&chunk[..n]);
    }
    let lines: Vec<&[u8]> = head.split(|&b| b == b'\n').map(|l| l.trim_ascii_end()).collect();
    assert_eq!(lines[0], b"GET / HTTP/1.1");
    assert!(lines.contains(&&b"Sec-WebSocket-Version: 13"[..]), "{}", head.escape_ascii());
    assert!(lines.contains(&&b"Upgrade: websocket"[..]), "{}", head.escape_ascii());
    assert!(
        lines.contains(&&b"Origin: C1?????-Jos\xe9"[..]),
        "Qt's Origin is not the Latin-1 name: {}",
        head.escape_ascii()
    );
    // Refuse it like a dead server would: Qt reports an error, exits 1.
    drop(socket);
    let first = qt.next_line().await;
    assert!(first.starts_with("ERROR "), "{first}");
    qt.end_input().await;
    let status = qt.wait().await;
    assert_eq!(status.code(), Some(1), "{status}");
}

/// A Qt client whose name is online already is refused at the handshake
/// (409): QWebSocket reports an error and never connects; the first client
/// keeps working.
#[tokio::test]
async fn qt_client_with_a_taken_name_is_refused_and_the_first_keeps_working() {
    let server = TestServer::start().await;
    let mut first = classic(&server, "taken").await;
    let mut qt = QtClient::spawn(&server.base_ws(), "taken").await;
    let line = qt.next_line().await;
    assert!(line.starts_with("ERROR ") && line.contains("409"), "{line}");
    qt.end_input().await;
    let status = qt.wait().await;
    assert_eq!(status.code(), Some(1), "{status}");
    let mut other = classic(&server, "other").await;
    other.send_json(json!({"dst": "taken", "msg": "still here?"})).await;
    assert_eq!(first.recv_json().await["src"], "other");
    first.close().await;
    other.close().await;
    server.stop().await;
}
