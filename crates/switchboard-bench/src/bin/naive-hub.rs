//! `naive-hub`: reference 1 of issue 6 — a hub written the way a typical
//! Rust developer writes one first, kept deliberately untuned.
//!
//! tokio-tungstenite `accept_hdr_async` with the default `WebSocketConfig`,
//! one `Arc<Mutex<HashMap<name, UnboundedSender<Message>>>>`, one writer task
//! per client that `send`s (and so flushes) every message. Classic protocol:
//! the name comes from `?name=`; `{"dst","msg"}` is forwarded to `dst` as
//! `{"src","dst","msg"}`. For the fanout workload only, `"dst":"*"` forwards
//! to every other client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Peers = Arc<Mutex<HashMap<String, UnboundedSender<Message>>>>;

/// A naive classic-protocol hub (benchmark reference).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Set TCP_NODELAY on accepted sockets (a typical first hub does not).
    #[arg(long)]
    nodelay: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("naive-hub listening on {}", listener.local_addr()?);
    let peers: Peers = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        if args.nodelay {
            stream.set_nodelay(true)?;
        }
        tokio::spawn(handle(stream, peers.clone()));
    }
}

// The handshake callback's signature (its large error type) is tungstenite's.
#[allow(clippy::result_large_err)]
async fn handle(stream: TcpStream, peers: Peers) {
    let mut name = String::new();
    let callback = |request: &Request, response: Response| {
        if let Some(query) = request.uri().query() {
            for pair in query.split('&') {
                if let Some(value) = pair.strip_prefix("name=") {
                    name = value.to_string();
                }
            }
        }
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    peers.lock().unwrap().insert(name.clone(), tx);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                let Some(dst) = value["dst"].as_str() else { continue };
                let out =
                    serde_json::json!({ "src": name, "dst": dst, "msg": value["msg"] }).to_string();
                let peers = peers.lock().unwrap();
                if dst == "*" {
                    for (peer, tx) in peers.iter() {
                        if *peer != name {
                            let _ = tx.send(Message::text(out.clone()));
                        }
                    }
                } else if let Some(tx) = peers.get(dst) {
                    let _ = tx.send(Message::text(out));
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    peers.lock().unwrap().remove(&name);
    writer.abort();
}
