//! The body of every benchmark message: `#s=SEQ;t=NANOS;` and padding.
//!
//! The marker survives every wire shape the targets produce (classic
//! `{"src","dst","msg"}`, v1 deliveries, plain-text broadcasts, raw frames),
//! so a receiver finds it with one substring search and no JSON parsing.

use std::sync::OnceLock;
use std::time::Instant;

use memchr::memmem;

/// Nanoseconds since the first call in this process: the clock every
/// sender stamps and every receiver reads (all in one process).
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Appends a payload of about `size` bytes carrying `seq` and `t`.
pub fn write(out: &mut Vec<u8>, seq: u64, t: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(b"#s=");
    write_u64(out, seq);
    out.extend_from_slice(b";t=");
    write_u64(out, t);
    out.push(b';');
    let written = out.len() - start;
    if size > written {
        out.resize(start + size, b'x');
    }
}

/// Appends the decimal digits of `n`.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// A payload's sequence number and send time, found anywhere in `frame`.
pub fn parse(frame: &[u8]) -> Option<(u64, u64)> {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    let finder = FINDER.get_or_init(|| memmem::Finder::new(b"#s="));
    let at = finder.find(frame)? + 3;
    let (seq, rest) = number(&frame[at..])?;
    let rest = rest.strip_prefix(b";t=")?;
    let (t, _) = number(rest)?;
    Some((seq, t))
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let n = bytes[..len].iter().fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some((n, &bytes[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_inside_json() {
        let mut out = b"{\"src\":\"a\",\"msg\":\"".to_vec();
        write(&mut out, 42, 123_456_789, 60);
        out.extend_from_slice(b"\"}");
        assert_eq!(parse(&out), Some((42, 123_456_789)));
        assert_eq!(parse(b"no marker"), None);
    }

    #[test]
    fn pads_to_size() {
        let mut out = Vec::new();
        write(&mut out, 0, 0, 80);
        assert_eq!(out.len(), 80);
    }
}
