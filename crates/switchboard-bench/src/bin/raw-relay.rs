//! `raw-relay`: reference 2 of issue 6 — the ceiling of this box's loopback
//! and syscalls for a relay.
//!
//! Frames are `[u32 len LE][u16 id LE][payload]`. A client's first frame
//! registers its id; after that `id` names the destination, and the relay
//! forwards the frame with `id` rewritten to the source. Id 0xFFFF sends to
//! every other client. Reads take whatever the socket has (many frames per
//! syscall) and split it without copying; each connection's writer gathers
//! everything queued and writes it in one syscall when its queue drains.
//! Buffers are released when a connection goes idle.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

const BROADCAST: u16 = 0xFFFF;
const HEADER: usize = 6;
/// Most bytes gathered into one write.
const MAX_WRITE: usize = 256 * 1024;

type Registry = Arc<Mutex<HashMap<u16, UnboundedSender<Bytes>>>>;

/// A raw TCP relay of length-prefixed frames (benchmark reference).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    listen: SocketAddr,
    /// Runtime worker threads; 1 runs a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(args.listen)?;
        let listener: TcpListener = socket.listen(4096)?;
        eprintln!("raw-relay listening on {}", listener.local_addr()?);
        let registry: Registry = Arc::default();
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(connection(stream, registry.clone()));
        }
    })
}

fn header(buf: &[u8]) -> Option<(usize, u16)> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    Some((len, u16::from_le_bytes([buf[4], buf[5]])))
}

async fn connection(stream: TcpStream, registry: Registry) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut buf = BytesMut::new();
    let mut me: Option<(u16, UnboundedSender<Bytes>)> = None;
    let mut cache: HashMap<u16, UnboundedSender<Bytes>> = HashMap::new();
    let mut writer = Some(write);
    loop {
        if read.readable().await.is_err() {
            break;
        }
        if me.is_none() {
            // Registration is one 6-byte frame: an idle client never needs
            // a full read buffer.
            buf.reserve(64);
        } else if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        match read.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        while let Some((len, id)) = header(&buf) {
            if buf.len() < HEADER + len {
                break;
            }
            let mut frame = buf.split_to(HEADER + len);
            let Some((src, _)) = me else {
                // The first frame registers the sender's id.
                let (tx, rx) = unbounded_channel();
                registry.lock().unwrap().insert(id, tx.clone());
                if let Some(write) = writer.take() {
                    tokio::spawn(write_loop(write, rx));
                }
                me = Some((id, tx));
                continue;
            };
            frame[4..6].copy_from_slice(&src.to_le_bytes());
            let frame = frame.freeze();
            if id == BROADCAST {
                for (peer, tx) in registry.lock().unwrap().iter() {
                    if *peer != src {
                        let _ = tx.send(frame.clone());
                    }
                }
                continue;
            }
            let tx = match cache.entry(id) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => match registry.lock().unwrap().get(&id) {
                    Some(tx) => entry.insert(tx.clone()),
                    None => continue,
                },
            };
            if tx.send(frame).is_err() {
                cache.remove(&id);
            }
        }
        if buf.is_empty() {
            // Idle: give the buffer back; the next read allocates afresh.
            buf = BytesMut::new();
        }
    }
    if let Some((id, tx)) = me {
        let mut registry = registry.lock().unwrap();
        // Unless a newer connection has taken the id since.
        if registry.get(&id).is_some_and(|registered| registered.same_channel(&tx)) {
            registry.remove(&id);
        }
    }
}

async fn write_loop(mut write: OwnedWriteHalf, mut rx: UnboundedReceiver<Bytes>) {
    let mut out: Vec<u8> = Vec::new();
    while let Some(first) = rx.recv().await {
        out.extend_from_slice(&first);
        while out.len() < MAX_WRITE {
            match rx.try_recv() {
                Ok(frame) => out.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if write.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
}
