//! A minimal client for the three targets, cheap enough that one core of
//! load can keep a server core busy.
//!
//! WebSocket frames from the client are masked with the all-zero key (valid
//! per RFC 6455 §5.3, and it makes masking free); many frames go out in one
//! `write`, and server frames are parsed in place from a 64 KiB read buffer.
//! The raw relay's framing is `[u32 len LE][u16 id LE][payload]`: `id` is the
//! destination on the way in and the source on the way out; a client's first
//! frame (empty payload) registers its own id, and destination
//! [`RAW_BROADCAST`] means every other connection.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Raw relay destination id meaning "every other connection".
pub const RAW_BROADCAST: u16 = 0xFFFF;

/// Read buffer size of an active connection.
const READ_CHUNK: usize = 64 * 1024;

/// What kind of server is at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Switchboard itself (classic protocol, v1 for rooms, HTTP API).
    Switchboard,
    /// The naive reference hub (classic protocol; `"dst":"*"` broadcasts).
    Naive,
    /// The raw TCP relay (length-prefixed frames).
    Raw,
}

/// Where to connect and how to speak.
#[derive(Debug, Clone)]
pub struct Target {
    /// The kind of server.
    pub kind: Kind,
    /// Its address (loopback only).
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header.
    pub host: String,
    /// Request path for the WebSocket upgrade.
    pub path: String,
}

impl Target {
    /// Parses `ws://127.0.0.1:PORT[/path]`, `tcp://HOST:PORT` or `HOST:PORT`.
    ///
    /// # Errors
    /// An unparsable address, or one that is not on loopback.
    pub fn parse(url: &str, kind: Kind) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("tcp://"))
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or(url);
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = host
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the load generator only targets loopback, not {addr}"
        );
        Ok(Target { kind, addr, host: host.to_owned(), path: path.to_owned() })
    }
}

/// A client's identity: a WebSocket name and a raw-relay id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    /// The name sent as `?name=`.
    pub name: String,
    /// The raw relay id.
    pub id: u16,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    raw: bool,
}

impl Conn {
    /// Connects and completes the handshake (`v1` asks for `switchboard.v1`).
    ///
    /// # Errors
    /// Connect failures and refused handshakes.
    pub async fn connect(target: &Target, ident: &Ident, v1: bool) -> io::Result<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let raw = target.kind == Kind::Raw;
        let mut conn = Conn { stream, buf: Vec::new(), start: 0, end: 0, raw };
        if raw {
            let mut hello = Vec::with_capacity(6);
            hello.extend_from_slice(&0u32.to_le_bytes());
            hello.extend_from_slice(&ident.id.to_le_bytes());
            conn.stream.write_all(&hello).await?;
            return Ok(conn);
        }
        let sep = if target.path.contains('?') { '&' } else { '?' };
        let protocol = if v1 { "Sec-WebSocket-Protocol: switchboard.v1\r\n" } else { "" };
        let request = format!(
            "GET {}{sep}name={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n",
            target.path, ident.name, target.host
        );
        conn.stream.write_all(request.as_bytes()).await?;
        conn.buf = vec![0; 2048];
        let header_end = loop {
            if let Some(i) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break i + 4;
            }
            if conn.end == conn.buf.len() {
                return Err(io::Error::other("handshake response too long"));
            }
            let n = conn.stream.read(&mut conn.buf[conn.end..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            conn.end += n;
        };
        let head = &conn.buf[..header_end];
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(io::Error::other(format!(
                "handshake refused: {}",
                String::from_utf8_lossy(line)
            )));
        }
        conn.start = header_end;
        if conn.start == conn.end {
            conn.release();
        }
        Ok(conn)
    }

    /// Drops the read buffer when nothing is pending (idle clients).
    pub fn release(&mut self) {
        if self.start == self.end {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Writes `bytes` (many frames at once).
    ///
    /// # Errors
    /// Socket errors.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads at least one more byte into the buffer.
    ///
    /// # Errors
    /// Socket errors; `UnexpectedEof` when the peer closed.
    pub async fn read_some(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < 4096 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        } else if self.end == self.buf.len() {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(n)
    }

    /// The next complete frame in the buffer: `(opcode, payload)`. Raw frames
    /// report opcode 2 and their payload includes the 6-byte header.
    pub fn next_frame(&mut self) -> Option<(u8, &[u8])> {
        let avail = &self.buf[self.start..self.end];
        if self.raw {
            if avail.len() < 6 {
                return None;
            }
            let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            if avail.len() < 6 + len {
                return None;
            }
            let at = self.start;
            self.start += 6 + len;
            return Some((2, &self.buf[at..at + 6 + len]));
        }
        if avail.len() < 2 {
            return None;
        }
        let opcode = avail[0] & 0x0F;
        let masked = avail[1] & 0x80 != 0;
        let (mut header, len) = match avail[1] & 0x7F {
            126 if avail.len() >= 4 => (4, u16::from_be_bytes([avail[2], avail[3]]) as usize),
            127 if avail.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&avail[2..10]);
                (10, u64::from_be_bytes(b) as usize)
            }
            126 | 127 => return None,
            n => (2, n as usize),
        };
        if masked {
            header += 4;
        }
        if avail.len() < header + len {
            return None;
        }
        let at = self.start + header;
        self.start += header + len;
        Some((opcode, &self.buf[at..at + len]))
    }

    /// Closes politely: a close frame (WebSocket) or a write shutdown (raw),
    /// then waits up to `linger` for the server to close.
    pub async fn close(mut self, linger: Duration) {
        if self.raw {
            let _ = self.stream.shutdown().await;
        } else {
            let _ = self.stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
        }
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(linger, async {
            while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Builds client frames for a target.
#[derive(Debug, Default)]
pub struct Encoder {
    body: Vec<u8>,
}

/// What a frame asks the server to do.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// A private message to `Ident` (classic DM, or raw frame to its id).
    Dm(&'a Ident),
    /// A v1 private message with an id (`m` and the payload's seq): the
    /// sender gets an `ack` once the hub has taken it (stored, when durable).
    V1Dm(&'a Ident),
    /// A v1 room publish.
    Publish(&'a str),
    /// A "send to everyone else": the naive hub's `"dst":"*"` or the raw
    /// relay's broadcast id.
    Everyone,
}

impl Encoder {
    /// Appends one frame carrying the benchmark payload `(seq, t)` of
    /// `size` bytes to `out`.
    pub fn frame(
        &mut self,
        out: &mut Vec<u8>,
        raw: bool,
        op: Op<'_>,
        seq: u64,
        t: u64,
        size: usize,
    ) {
        if raw {
            let dst = match op {
                Op::Dm(to) | Op::V1Dm(to) => to.id,
                Op::Publish(_) | Op::Everyone => RAW_BROADCAST,
            };
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&dst.to_le_bytes());
            crate::payload::write(out, seq, t, size);
            let len = (out.len() - at - 6) as u32;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
            return;
        }
        let body = &mut self.body;
        body.clear();
        match op {
            Op::Dm(to) => {
                body.extend_from_slice(b"{\"dst\":\"");
                body.extend_from_slice(to.name.as_bytes());
                body.extend_from_slice(b"\",\"msg\":\"");
            }
            Op::V1Dm(to) => {
                body.extend_from_slice(b"{\"type\":\"dm\",\"id\":\"m");
                let _ = std::io::Write::write_fmt(body, format_args!("{seq}"));
                body.extend_from_slice(b"\",\"to\":\"");
                body.extend_from_slice(to.name.as_bytes());
                body.extend_from_slice(b"\",\"text\":\"");
            }
            Op::Publish(room) => {
                body.extend_from_slice(b"{\"type\":\"publish\",\"room\":\"");
                body.extend_from_slice(room.as_bytes());
                body.extend_from_slice(b"\",\"text\":\"");
            }
            Op::Everyone => body.extend_from_slice(b"{\"dst\":\"*\",\"msg\":\""),
        }
        crate::payload::write(body, seq, t, size);
        body.extend_from_slice(b"\"}");
        ws_text(out, body);
    }
}

/// Appends a masked (all-zero key) WebSocket text frame holding `payload`.
pub fn ws_text(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len < 65536 {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// A keep-alive HTTP/1.1 connection for the operator API.
#[derive(Debug)]
pub struct HttpConn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// Where the last response's body starts in `buf`.
    body_at: usize,
}

impl HttpConn {
    /// Opens a connection to the target's HTTP port.
    ///
    /// # Errors
    /// Connect failures.
    pub async fn connect(target: &Target) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            host: target.host.clone(),
            buf: Vec::with_capacity(4096),
            body_at: 0,
        })
    }

    /// The body of the last response [`HttpConn::post`] read.
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_at..).unwrap_or_default()
    }

    /// POSTs `body` to `path` and returns the status code.
    ///
    /// # Errors
    /// Socket errors and malformed responses.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> io::Result<u16> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i]).to_ascii_lowercase();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io::Error::other("bad status line"))?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < i + 4 + length {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.body_at = i + 4;
                self.buf.truncate(i + 4 + length);
                return Ok(status);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_header_lengths() {
        let mut out = Vec::new();
        ws_text(&mut out, &[b'a'; 10]);
        assert_eq!(&out[..6], &[0x81, 0x8A, 0, 0, 0, 0]);
        out.clear();
        ws_text(&mut out, &[b'a'; 300]);
        assert_eq!(&out[..4], &[0x81, 0xFE, 1, 44]);
        assert_eq!(out.len(), 8 + 300);
    }

    #[test]
    fn raw_frame_layout() {
        let mut out = Vec::new();
        let to = Ident { name: "x".into(), id: 7 };
        Encoder::default().frame(&mut out, true, Op::Dm(&to), 3, 9, 20);
        assert_eq!(u32::from_le_bytes([out[0], out[1], out[2], out[3]]) as usize, out.len() - 6);
        assert_eq!(u16::from_le_bytes([out[4], out[5]]), 7);
        assert_eq!(crate::payload::parse(&out), Some((3, 9)));
    }
}
