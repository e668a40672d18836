//! Protocol v1: JSON envelopes with a `"type"`, negotiated with the
//! `switchboard.v1` WebSocket subprotocol. docs/protocol.md is the normative
//! description; this module is its implementation, and a test walks the
//! spec's examples through it.
//!
//! Two kinds of frames go from the hub to a client:
//! - *deliveries* ([`Delivery`]): messages from someone (a client, a room,
//!   the operator, presence). Each carries `seq`, a number the hub assigns per
//!   recipient, strictly increasing by one, and `ts`, the hub's clock in
//!   milliseconds since the Unix epoch;
//! - *replies* ([`Reply`]): answers to the client's own requests (`ack`,
//!   `error`, listings), naming the request's `id`. They carry no `seq`.
//!
//! A delivery is encoded once for all its recipients: [`Delivery::encode_tail`]
//! produces everything after the `seq` field, and [`frame`] puts a recipient's
//! `seq` in front of it with two copies and no JSON work.

use serde::{Deserialize, Serialize};

/// The hub's protocol version string, sent in the welcome.
pub const PROTOCOL_VERSION: &str = "1";

/// A request from a client: the `"type"` field selects the variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A private message to another client.
    Dm {
        /// Client-chosen id, echoed in the `ack` or `error`. Without it no ack is sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The recipient's name.
        to: String,
        /// The text.
        text: String,
    },
    /// A message to the server (the operator's event log).
    Server {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The text.
        text: String,
    },
    /// Join a room, creating it if it does not exist.
    Join {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room.
        room: String,
    },
    /// Leave a room; the room vanishes when its last member leaves.
    Leave {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room.
        room: String,
    },
    /// Publish to a room the client is a member of.
    Publish {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room.
        room: String,
        /// The text.
        text: String,
        /// Deliver to the sender too (default false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        echo: bool,
    },
    /// List a room's members.
    Members {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room.
        room: String,
    },
    /// List the clients online.
    Who {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Subscribe to presence: globally (no room) or for one room.
    Subscribe {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room to watch; absent for global presence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// Stop a presence subscription.
    Unsubscribe {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room; absent for global presence.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// An application-level ping; the hub answers `pong`.
    Ping {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

impl Request {
    /// The request's client-chosen id, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Request::Dm { id, .. }
            | Request::Server { id, .. }
            | Request::Join { id, .. }
            | Request::Leave { id, .. }
            | Request::Publish { id, .. }
            | Request::Members { id, .. }
            | Request::Who { id }
            | Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Ping { id } => id.as_deref(),
        }
    }
}

/// Why a request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The request's `id`, when the frame was an object with a string `id`.
    pub id: Option<String>,
    /// The error code: [`ErrorCode::BadRequest`] or [`ErrorCode::UnknownType`].
    pub code: ErrorCode,
    /// What was wrong, for a human.
    pub message: String,
}

/// Parses a client's text frame into a [`Request`].
///
/// # Errors
/// A [`ParseError`] with the code to send back and, when it could be found,
/// the id of the request it answers.
///
/// ```
/// use switchboard_protocol::v1::{parse_request, Request, ErrorCode};
/// let req = parse_request(r#"{"type":"dm","id":"1","to":"bob","text":"hi"}"#).unwrap();
/// assert_eq!(req, Request::Dm { id: Some("1".into()), to: "bob".into(), text: "hi".into() });
/// let err = parse_request(r#"{"type":"dance","id":"2"}"#).unwrap_err();
/// assert_eq!(err.code, ErrorCode::UnknownType);
/// assert_eq!(err.id.as_deref(), Some("2"));
/// ```
pub fn parse_request(text: &str) -> Result<Request, ParseError> {
    match serde_json::from_str::<Request>(text) {
        Ok(request) => Ok(request),
        Err(error) => Err(diagnose(text, error)),
    }
}

/// Slow path: work out what was wrong and which id to answer.
fn diagnose(text: &str, error: serde_json::Error) -> ParseError {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) => {
            return ParseError {
                id: None,
                code: ErrorCode::BadRequest,
                message: format!("not valid JSON: {error}"),
            }
        }
    };
    let Some(object) = value.as_object() else {
        return ParseError {
            id: None,
            code: ErrorCode::BadRequest,
            message: "a request must be a JSON object with a \"type\"".into(),
        };
    };
    let id = object.get("id").and_then(|v| v.as_str()).map(str::to_owned);
    match object.get("type") {
        None => {
            ParseError { id, code: ErrorCode::BadRequest, message: "missing field `type`".into() }
        }
        Some(serde_json::Value::String(kind)) if !KNOWN_TYPES.contains(&kind.as_str()) => {
            ParseError {
                id,
                code: ErrorCode::UnknownType,
                message: format!("unknown request type {kind:?}"),
            }
        }
        Some(_) => ParseError { id, code: ErrorCode::BadRequest, message: error.to_string() },
    }
}

/// Every request type this version understands.
pub const KNOWN_TYPES: &[&str] = &[
    "dm",
    "server",
    "join",
    "leave",
    "publish",
    "members",
    "who",
    "subscribe",
    "unsubscribe",
    "ping",
];

/// Machine-readable error codes, sent in `error` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a well-formed request (not JSON, missing or mistyped field).
    BadRequest,
    /// The `type` is not one this version knows.
    UnknownType,
    /// The recipient is not online.
    RecipientOffline,
    /// A name (client or room) is not valid.
    InvalidName,
    /// The client is not a member of the room it publishes to.
    NotMember,
    /// The client is over its rate limit; the message was refused.
    RateLimited,
    /// The message is larger than allowed.
    TooLarge,
    /// A limit on rooms or members was reached.
    LimitReached,
    /// The recipient cannot take this kind of message (binary to a classic client).
    Unsupported,
    /// The server failed; the message was not routed.
    Internal,
    /// Cluster mode: the recipient may be on another node and the cluster
    /// bus is down; the message was not sent there. Retry later.
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::RecipientOffline => "recipient_offline",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NotMember => "not_member",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// The limits a client is told about in its welcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame the hub accepts, in bytes; larger closes with 1009.
    pub max_message_bytes: usize,
    /// The most bytes the hub queues for this client before disconnecting it with 1008.
    pub max_queued_bytes: usize,
    /// Sustained messages per second allowed (0: unlimited).
    pub rate_messages_per_sec: u32,
    /// Sustained bytes per second allowed (0: unlimited).
    pub rate_bytes_per_sec: u64,
}

/// A reply to one client's request, or a message about its own session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// First frame of every v1 session.
    Welcome {
        /// The client's name, as the hub knows it.
        name: String,
        /// This session's id, unique for the life of the server process.
        session: String,
        /// The hub's software version.
        version: String,
        /// The protocol version ([`PROTOCOL_VERSION`]).
        protocol: String,
        /// The limits in force for this client.
        limits: Limits,
    },
    /// The request with this id was accepted and routed.
    Ack {
        /// The request's id.
        id: String,
    },
    /// The request was refused.
    Error {
        /// The request's id, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Answer to `who`.
    Clients {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// Names online, sorted.
        clients: Vec<String>,
    },
    /// Answer to `members` and `subscribe`: who is in a room (or online, without room).
    Members {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The room; absent for the global list.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Member names, sorted.
        members: Vec<String>,
    },
    /// Answer to `ping`.
    Pong {
        /// The request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
}

impl Reply {
    /// Encodes the reply as a JSON text frame.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An `error` reply.
    pub fn error(id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error { id: id.map(str::to_owned), code, message: message.into() }
    }
}

/// A presence event: who joined or left (globally, or a room).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    /// The client came online (or joined the room).
    Join,
    /// The client went offline (or left the room).
    Leave,
}

/// A message delivered to a client; the wire form also carries `seq` and `ts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// A private message.
    Dm {
        /// Sender, stamped by the hub.
        from: &'a str,
        /// Recipient.
        to: &'a str,
        /// Text.
        text: &'a str,
    },
    /// A message published to a room.
    Room {
        /// The room.
        room: &'a str,
        /// Sender, stamped by the hub; `None` when the operator published.
        from: Option<&'a str>,
        /// Text.
        text: &'a str,
    },
    /// A message from the server (the operator or the HTTP API).
    Server {
        /// Text.
        text: &'a str,
        /// True when every client got it.
        broadcast: bool,
    },
    /// A presence change.
    Presence {
        /// The room, or `None` for global presence.
        room: Option<&'a str>,
        /// Who.
        name: &'a str,
        /// Joined or left.
        event: PresenceEvent,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Tail<'a> {
    Dm {
        ts: u64,
        from: &'a str,
        to: &'a str,
        text: &'a str,
    },
    Room {
        ts: u64,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<&'a str>,
        text: &'a str,
    },
    Server {
        ts: u64,
        text: &'a str,
        broadcast: bool,
    },
    Presence {
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        name: &'a str,
        event: PresenceEvent,
    },
}

impl Delivery<'_> {
    /// The wire `type` of this delivery.
    pub fn kind(&self) -> &'static str {
        match self {
            Delivery::Dm { .. } => "dm",
            Delivery::Room { .. } => "room",
            Delivery::Server { .. } => "server",
            Delivery::Presence { .. } => "presence",
        }
    }

    /// Encodes everything after `seq`, ready for [`frame`]: shared by all recipients.
    pub fn encode_tail(&self, ts: u64) -> EncodedDelivery {
        let tail = match *self {
            Delivery::Dm { from, to, text } => Tail::Dm { ts, from, to, text },
            Delivery::Room { room, from, text } => Tail::Room { ts, room, from, text },
            Delivery::Server { text, broadcast } => Tail::Server { ts, text, broadcast },
            Delivery::Presence { room, name, event } => Tail::Presence { ts, room, name, event },
        };
        let object = serde_json::to_string(&tail).unwrap_or_else(|_| "{}".into());
        // `{"ts":..}` becomes `,"ts":..}`: the part after `"seq":N`.
        let mut rest = object;
        rest.replace_range(0..1, ",");
        EncodedDelivery { head: head_for(self.kind()), rest }
    }
}

fn head_for(kind: &'static str) -> &'static str {
    match kind {
        "dm" => r#"{"type":"dm","seq":"#,
        "room" => r#"{"type":"room","seq":"#,
        "server" => r#"{"type":"server","seq":"#,
        _ => r#"{"type":"presence","seq":"#,
    }
}

/// A delivery encoded for all its recipients but the `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedDelivery {
    head: &'static str,
    rest: String,
}

impl EncodedDelivery {
    /// Length of the frame this produces, give or take the digits of `seq`.
    pub fn len(&self) -> usize {
        self.head.len() + self.rest.len() + 20
    }

    /// Never empty; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Builds one recipient's frame: head, its `seq`, the shared tail.
///
/// ```
/// use switchboard_protocol::v1::{frame, Delivery};
/// let enc = Delivery::Dm { from: "a", to: "b", text: "hi" }.encode_tail(7);
/// assert_eq!(frame(&enc, 3), r#"{"type":"dm","seq":3,"ts":7,"from":"a","to":"b","text":"hi"}"#);
/// ```
pub fn frame(encoded: &EncodedDelivery, seq: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let seq = digits.format(seq);
    let mut out = String::with_capacity(encoded.head.len() + seq.len() + encoded.rest.len());
    out.push_str(encoded.head);
    out.push_str(seq);
    out.push_str(&encoded.rest);
    out
}

/// A delivery as a client library reads it back (owned, all fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Incoming {
    /// See [`Reply::Welcome`].
    Welcome {
        /// Name.
        name: String,
        /// Session id.
        session: String,
        /// Server version.
        version: String,
        /// Protocol version.
        protocol: String,
        /// Limits.
        limits: Limits,
    },
    /// A private message.
    Dm {
        /// Per-recipient sequence number.
        seq: u64,
        /// Server time, ms since the Unix epoch.
        ts: u64,
        /// Sender.
        from: String,
        /// Recipient.
        to: String,
        /// Text.
        text: String,
    },
    /// A room message.
    Room {
        /// Per-recipient sequence number.
        seq: u64,
        /// Server time.
        ts: u64,
        /// Room.
        room: String,
        /// Sender; absent when the operator published.
        #[serde(default)]
        from: Option<String>,
        /// Text.
        text: String,
    },
    /// A message from the server.
    Server {
        /// Per-recipient sequence number.
        seq: u64,
        /// Server time.
        ts: u64,
        /// Text.
        text: String,
        /// Sent to every client.
        broadcast: bool,
    },
    /// A presence change.
    Presence {
        /// Per-recipient sequence number.
        seq: u64,
        /// Server time.
        ts: u64,
        /// Room, or none for global presence.
        #[serde(default)]
        room: Option<String>,
        /// Who.
        name: String,
        /// Join or leave.
        event: PresenceEvent,
    },
    /// See [`Reply::Ack`].
    Ack {
        /// Request id.
        id: String,
    },
    /// See [`Reply::Error`].
    Error {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// See [`Reply::Clients`].
    Clients {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Names.
        clients: Vec<String>,
    },
    /// See [`Reply::Members`].
    Members {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
        /// Room.
        #[serde(default)]
        room: Option<String>,
        /// Names.
        members: Vec<String>,
    },
    /// See [`Reply::Pong`].
    Pong {
        /// Request id.
        #[serde(default)]
        id: Option<String>,
    },
}

impl Incoming {
    /// Parses a hub text frame.
    ///
    /// # Errors
    /// When the frame is not a v1 envelope this version knows.
    pub fn parse(text: &str) -> Result<Incoming, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_round_trip_through_incoming() {
        let cases = [
            Delivery::Dm { from: "a", to: "b", text: "x\"y" },
            Delivery::Room { room: "lobby", from: Some("a"), text: "hi" },
            Delivery::Server { text: "notice", broadcast: true },
            Delivery::Presence { room: None, name: "a", event: PresenceEvent::Join },
            Delivery::Presence { room: Some("r"), name: "a", event: PresenceEvent::Leave },
        ];
        for (i, delivery) in cases.iter().enumerate() {
            let text = frame(&delivery.encode_tail(99), i as u64 + 1);
            let incoming = Incoming::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(json["seq"], i as u64 + 1, "{text}");
            assert_eq!(json["ts"], 99, "{text}");
            assert_eq!(json["type"], delivery.kind(), "{incoming:?}");
        }
    }

    #[test]
    fn request_errors_name_the_id_and_code() {
        let cases: &[(&str, ErrorCode, Option<&str>)] = &[
            ("not json", ErrorCode::BadRequest, None),
            ("[1]", ErrorCode::BadRequest, None),
            (r#"{"id":"1"}"#, ErrorCode::BadRequest, Some("1")),
            (r#"{"type":"nope","id":"2"}"#, ErrorCode::UnknownType, Some("2")),
            (r#"{"type":"dm","id":"3","text":"x"}"#, ErrorCode::BadRequest, Some("3")),
            (r#"{"type":"dm","id":"4","to":5,"text":"x"}"#, ErrorCode::BadRequest, Some("4")),
            (r#"{"type":7,"id":"5"}"#, ErrorCode::BadRequest, Some("5")),
            (r#"{"type":"dm","to":"b","text":"x","extra":1}"#, ErrorCode::BadRequest, None),
        ];
        for (text, code, id) in cases {
            let err = parse_request(text).expect_err(text);
            assert_eq!(err.code, *code, "{text}: {}", err.message);
            assert_eq!(err.id.as_deref(), *id, "{text}");
        }
    }
}
