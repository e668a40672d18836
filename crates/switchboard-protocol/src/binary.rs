//! The header in front of v1 binary payloads.
//!
//! Client to hub (all lengths one byte, strings UTF-8):
//!
//! ```text
//! kind (1: to a client, 2: to a room) | id_len | id | target_len | target | payload...
//! ```
//!
//! Hub to client:
//!
//! ```text
//! kind | seq (u64 BE) | ts (u64 BE, ms) | from_len | from | [room_len | room, kind 2 only] | payload...
//! ```
//!
//! The id may be empty (no ack wanted); the target may not.

use bytes::{BufMut, Bytes, BytesMut};

/// Binary frame kind: the payload goes to one client.
pub const KIND_DIRECT: u8 = 1;
/// Binary frame kind: the payload goes to a room.
pub const KIND_ROOM: u8 = 2;

/// Where a client's binary frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// To the named client.
    Client(&'a str),
    /// To the named room.
    Room(&'a str),
}

/// A client's binary frame, parsed (borrowing the frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// Client-chosen id (empty: no ack wanted).
    pub id: &'a str,
    /// Destination.
    pub target: Target<'a>,
    /// The bytes after the header.
    pub payload: &'a [u8],
}

/// Why a binary header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The frame ends inside the header.
    #[error("binary frame ends inside its header")]
    Truncated,
    /// The first byte is not a known kind.
    #[error("unknown binary kind {0}")]
    UnknownKind(u8),
    /// A string in the header is not UTF-8.
    #[error("binary header string is not UTF-8")]
    NotUtf8,
    /// The target is empty.
    #[error("binary header has an empty target")]
    EmptyTarget,
}

fn take_str<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a str, HeaderError> {
    let len = *buf.get(*at).ok_or(HeaderError::Truncated)? as usize;
    let start = *at + 1;
    let bytes = buf.get(start..start + len).ok_or(HeaderError::Truncated)?;
    *at = start + len;
    std::str::from_utf8(bytes).map_err(|_| HeaderError::NotUtf8)
}

/// Parses a client's binary frame.
///
/// # Errors
/// When the header is truncated, of an unknown kind or not UTF-8.
///
/// ```
/// use switchboard_protocol::binary::{encode_outgoing, parse_outgoing, Target};
/// let frame = encode_outgoing("7", Target::Client("bob"), b"\x00\x01");
/// let parsed = parse_outgoing(&frame).unwrap();
/// assert_eq!(parsed.target, Target::Client("bob"));
/// assert_eq!(parsed.payload, b"\x00\x01");
/// ```
pub fn parse_outgoing(frame: &[u8]) -> Result<Outgoing<'_>, HeaderError> {
    let kind = *frame.first().ok_or(HeaderError::Truncated)?;
    if kind != KIND_DIRECT && kind != KIND_ROOM {
        return Err(HeaderError::UnknownKind(kind));
    }
    let mut at = 1;
    let id = take_str(frame, &mut at)?;
    let target = take_str(frame, &mut at)?;
    if target.is_empty() {
        return Err(HeaderError::EmptyTarget);
    }
    let target = if kind == KIND_DIRECT { Target::Client(target) } else { Target::Room(target) };
    Ok(Outgoing { id, target, payload: &frame[at..] })
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Names are at most a few hundred bytes by validation; cut defensively at 255.
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

/// Encodes a client's binary frame (used by the client library).
pub fn encode_outgoing(id: &str, target: Target<'_>, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(3 + id.len() + 64 + payload.len());
    let name = match target {
        Target::Client(name) => {
            out.put_u8(KIND_DIRECT);
            name
        }
        Target::Room(room) => {
            out.put_u8(KIND_ROOM);
            room
        }
    };
    put_str(&mut out, id);
    put_str(&mut out, name);
    out.put_slice(payload);
    out.freeze()
}

/// A binary delivery as the recipient reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// Per-recipient sequence number.
    pub seq: u64,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// Sender, stamped by the hub.
    pub from: &'a str,
    /// The room, for room deliveries.
    pub room: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Encodes a binary delivery for one recipient.
pub fn encode_incoming(seq: u64, ts: u64, from: &str, room: Option<&str>, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(19 + from.len() + 64 + payload.len());
    out.put_u8(if room.is_some() { KIND_ROOM } else { KIND_DIRECT });
    out.put_u64(seq);
    out.put_u64(ts);
    put_str(&mut out, from);
    if let Some(room) = room {
        put_str(&mut out, room);
    }
    out.put_slice(payload);
    out.freeze()
}

/// Parses a binary delivery (used by the client library).
///
/// # Errors
/// When the header is truncated, of an unknown kind or not UTF-8.
pub fn parse_incoming(frame: &[u8]) -> Result<Incoming<'_>, HeaderError> {
    let kind = *frame.first().ok_or(HeaderError::Truncated)?;
    if kind != KIND_DIRECT && kind != KIND_ROOM {
        return Err(HeaderError::UnknownKind(kind));
    }
    let number = |at: usize| -> Result<u64, HeaderError> {
        let bytes = frame.get(at..at + 8).ok_or(HeaderError::Truncated)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    };
    let seq = number(1)?;
    let ts = number(9)?;
    let mut at = 17;
    let from = take_str(frame, &mut at)?;
    let room = if kind == KIND_ROOM { Some(take_str(frame, &mut at)?) } else { None };
    Ok(Incoming { seq, ts, from, room, payload: &frame[at..] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_table() {
        type Parsed<'a> = Result<(&'a str, Target<'a>, &'a [u8]), HeaderError>;
        let cases: &[(&[u8], Parsed<'_>)] = &[
            (b"", Err(HeaderError::Truncated)),
            (b"\x09", Err(HeaderError::UnknownKind(9))),
            (b"\x01", Err(HeaderError::Truncated)),
            (b"\x01\x00", Err(HeaderError::Truncated)),
            (b"\x01\x00\x00", Err(HeaderError::EmptyTarget)),
            (b"\x01\x00\x03bo", Err(HeaderError::Truncated)),
            (b"\x01\x00\x02\xff\xfe", Err(HeaderError::NotUtf8)),
            (b"\x01\x01x\x03bobPAY", Ok(("x", Target::Client("bob"), b"PAY"))),
            (b"\x02\x00\x01r", Ok(("", Target::Room("r"), b""))),
        ];
        for (frame, expected) in cases {
            let got = parse_outgoing(frame).map(|o| (o.id, o.target, o.payload));
            assert_eq!(&got, expected, "{frame:?}");
        }
    }

    #[test]
    fn incoming_round_trips() {
        let frame = encode_incoming(5, 6, "alice", Some("room"), b"data");
        let parsed = parse_incoming(&frame).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed,
            Incoming { seq: 5, ts: 6, from: "alice", room: Some("room"), payload: b"data" }
        );
        let frame = encode_incoming(1, 2, "bob", None, b"");
        assert_eq!(parse_incoming(&frame).map(|i| i.room), Ok(None));
        assert_eq!(parse_incoming(&frame[..10]), Err(HeaderError::Truncated));
    }
}
