//! The framing layer (issue 6): what the server's side of one classic DM
//! costs in tokio-tungstenite, as the hub uses it, against fastwebsockets
//! (which the issue asks to try "if the profile says the framing layer is
//! the cost").
//!
//! One element is one DM on the server: read one masked ~100-byte text
//! frame from the sender, write one ~120-byte text frame to the recipient.
//! The socket is in memory (reads from frames encoded beforehand by a
//! tungstenite client, writes counted and dropped), so the figures are the
//! framing libraries' CPU alone: no syscalls, no hub. Both read text frames
//! as validated UTF-8, as the hub needs them. tungstenite buffers written
//! frames and is flushed every 64, as the hub's writer batches;
//! fastwebsockets writes each frame to the stream at once (in the server it
//! would need a buffer of its own to batch syscalls, which is not counted
//! here, so the comparison favours it). docs/performance.md has the results.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// A classic DM as the load generator sends it: ~100 bytes.
const CLASSIC_DM: &str = r##"{"dst":"receiver42","msg":"#s=123456;t=987654321;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"##;

/// What the recipient gets for it.
const DELIVERED: &str = r##"{"src":"sender42","dst":"receiver42","msg":"#s=123456;t=987654321;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"##;

/// DMs per measured batch.
const DMS: usize = 4096;

/// Frames the hub's writer feeds between two flushes, at most.
const FLUSH_EVERY: usize = 64;

/// A socket in memory: reads return the next (up to 64 KiB, as the hub's
/// read-ahead does) of the client's frames, writes are counted and dropped.
struct MemSocket {
    input: Vec<u8>,
    at: usize,
    written: usize,
}

impl AsyncRead for MemSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let n = buf.remaining().min(this.input.len() - this.at).min(64 * 1024);
        buf.put_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Collects what a synchronous tungstenite client writes.
struct Recorder(Vec<u8>);

impl Read for Recorder {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `count` DMs as a client puts them on the wire (masked text frames).
fn client_frames(count: usize) -> Vec<u8> {
    let mut client =
        tungstenite::WebSocket::from_raw_socket(Recorder(Vec::new()), Role::Client, None);
    for _ in 0..count {
        client.write(Message::text(CLASSIC_DM)).unwrap_or_else(|e| panic!("{e}"));
    }
    client.flush().unwrap_or_else(|e| panic!("{e}"));
    std::mem::take(&mut client.get_mut().0)
}

/// The hub's settings that matter here: a 256-byte read buffer over the
/// read-ahead (`server::handshake::websocket_config`).
fn hub_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(256)
}

async fn with_tungstenite(input: Vec<u8>, config: WebSocketConfig) -> usize {
    let socket = MemSocket { input, at: 0, written: 0 };
    let mut ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
    let delivered = Utf8Bytes::from_static(DELIVERED);
    for i in 0..DMS {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => black_box(text),
            other => panic!("expected a text frame, got {other:?}"),
        };
        ws.feed(Message::Text(delivered.clone())).await.unwrap_or_else(|e| panic!("{e}"));
        if i % FLUSH_EVERY == FLUSH_EVERY - 1 {
            ws.flush().await.unwrap_or_else(|e| panic!("{e}"));
        }
    }
    ws.flush().await.unwrap_or_else(|e| panic!("{e}"));
    ws.get_ref().written
}

async fn with_fastwebsockets(input: Vec<u8>) -> usize {
    use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
    let socket = MemSocket { input, at: 0, written: 0 };
    let mut ws = WebSocket::after_handshake(socket, fastwebsockets::Role::Server);
    ws.set_writev(false);
    for _ in 0..DMS {
        let frame = ws.read_frame().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frame.opcode, OpCode::Text);
        // read_frame has validated the text as UTF-8.
        black_box(&frame.payload);
        let reply = Frame::text(Payload::Borrowed(DELIVERED.as_bytes()));
        ws.write_frame(reply).await.unwrap_or_else(|e| panic!("{e}"));
    }
    ws.into_inner().written
}

fn framing(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    let input = client_frames(DMS);
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Elements(DMS as u64));
    group.bench_function("tungstenite_dm", |b| {
        b.iter_batched(
            || input.clone(),
            |input| runtime.block_on(with_tungstenite(input, hub_config())),
            BatchSize::LargeInput,
        )
    });
    // tungstenite's own default read buffer (128 KiB per connection, which
    // the hub cannot afford per idle client): what the small one costs.
    group.bench_function("tungstenite_dm_default_read_buffer", |b| {
        b.iter_batched(
            || input.clone(),
            |input| runtime.block_on(with_tungstenite(input, WebSocketConfig::default())),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("fastwebsockets_dm", |b| {
        b.iter_batched(
            || input.clone(),
            |input| runtime.block_on(with_fastwebsockets(input)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Every group, with Criterion's command-line configuration.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    framing(&mut c);
}

criterion_main!(benches);
