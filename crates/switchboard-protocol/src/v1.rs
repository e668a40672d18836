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
//!
//! Delivery guarantees (docs/protocol.md, section 7): `seq` is per client
//! *name*, strictly increasing across sessions and hub restarts, with gaps
//! allowed. A client that connects with `?resume=N` ([`RESUME_PARAM`]) is
//! replayed its stored deliveries after `N` and acknowledges them with
//! [`Request::Ack`]; senders learn from [`Reply::Ack`]'s [`AckStatus`]
//! whether a message went out live, was stored, or was a retry.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};

use crate::borrowed::Borrowed;
use crate::json_text::push_json_str;

/// The hub's protocol version string, sent in the welcome.
pub const PROTOCOL_VERSION: &str = "1";

/// The handshake query parameter that resumes a name's delivery stream:
/// `?name=alice&resume=41` asks for every stored delivery after seq 41 and
/// puts the session in client-ack mode (see [`Request::Ack`]).
pub const RESUME_PARAM: &str = "resume";

/// Where a room's history replay starts, in [`Request::Join`]'s `since`:
/// `{"rseq":12}` or `{"ts":1764100000000}`.
///
/// ```
/// use switchboard_protocol::v1::Since;
/// assert_eq!(serde_json::to_string(&Since::Rseq(12)).unwrap(), r#"{"rseq":12}"#);
/// let since: Since = serde_json::from_str(r#"{"ts":1764100000000}"#).unwrap();
/// assert_eq!(since, Since::Ts(1_764_100_000_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Since {
    /// The room messages with a room sequence number (`rseq`) greater than this.
    Rseq(u64),
    /// The room messages the hub accepted after this time (ms since the Unix epoch).
    Ts(u64),
}

/// What an [`Reply::Ack`] says happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Queued for the recipients online (and, with a durable store, written
    /// to the recipient's inbox before this ack).
    Live,
    /// The recipient is offline: stored in its inbox for delivery when it
    /// next connects.
    Stored,
    /// A retry of an id this sender used recently: the first one was
    /// accepted, nothing is delivered twice.
    Duplicate,
}

impl AckStatus {
    /// The status as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Live => "live",
            AckStatus::Stored => "stored",
            AckStatus::Duplicate => "duplicate",
        }
    }

    /// The status named `wire`, if this version knows it.
    pub fn from_wire(wire: &str) -> Option<AckStatus> {
        [AckStatus::Live, AckStatus::Stored, AckStatus::Duplicate]
            .into_iter()
            .find(|status| status.as_str() == wire)
    }
}

/// An ack's `status` as a client reads it: one this version does not know
/// reads as none, so the ack still answers its request (docs/protocol.md:
/// clients ignore statuses they do not know).
fn lenient_status<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<AckStatus>, D::Error> {
    let wire = Option::<String>::deserialize(deserializer)?;
    Ok(wire.as_deref().and_then(AckStatus::from_wire))
}

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
        /// Ask for a `delivered` receipt once the recipient acknowledges it
        /// (default false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        receipt: bool,
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
        /// Replay the room's history after this point before live traffic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
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
    /// Cumulative acknowledgement of every delivery with `seq` up to this one.
    /// No reply unless it has an id (then a plain `ack`).
    Ack {
        /// Client-chosen id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The highest delivery `seq` received.
        seq: u64,
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
            | Request::Ping { id }
            | Request::Ack { id, .. } => id.as_deref(),
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
/// assert_eq!(
///     req,
///     Request::Dm { id: Some("1".into()), to: "bob".into(), text: "hi".into(), receipt: false }
/// );
/// let err = parse_request(r#"{"type":"dance","id":"2"}"#).unwrap_err();
/// assert_eq!(err.code, ErrorCode::UnknownType);
/// assert_eq!(err.id.as_deref(), Some("2"));
/// ```
pub fn parse_request(text: &str) -> Result<Request, ParseError> {
    if let Some(DmRequest { id, to, text, receipt }) = parse_dm(text) {
        let id = id.map(Cow::into_owned);
        return Ok(Request::Dm { id, to: to.into_owned(), text: text.into_owned(), receipt });
    }
    match serde_json::from_str::<Request>(text) {
        Ok(request) => Ok(request),
        Err(error) => Err(diagnose(text, error)),
    }
}

/// A `dm` request as [`parse_dm`] reads it: each string borrowed from the
/// frame unless it had escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmRequest<'a> {
    /// Client-chosen id; see [`Request::Dm`].
    pub id: Option<Cow<'a, str>>,
    /// The recipient's name.
    pub to: Cow<'a, str>,
    /// The text.
    pub text: Cow<'a, str>,
    /// Ask for a `delivered` receipt.
    pub receipt: bool,
}

/// Reads a `dm` request without copying its strings (issue 6: the hub's
/// hottest v1 request): `Some` exactly when [`parse_request`] would return
/// a [`Request::Dm`] with the same fields, `None` for anything else.
///
/// ```
/// use std::borrow::Cow;
/// use switchboard_protocol::v1::parse_dm;
/// let dm = parse_dm(r#"{"type":"dm","id":"7","to":"bob","text":"hi"}"#).unwrap();
/// assert_eq!((dm.id.as_deref(), &*dm.to, &*dm.text), (Some("7"), "bob", "hi"));
/// assert!(matches!((&dm.id, &dm.to, &dm.text), (Some(Cow::Borrowed(_)), Cow::Borrowed(_), Cow::Borrowed(_))));
/// // Escapes are decoded, into a copy of that field only.
/// let dm = parse_dm(r#"{"type":"dm","to":"bob","text":"a\nb"}"#).unwrap();
/// assert!(matches!((&dm.to, &dm.text), (Cow::Borrowed(_), Cow::Owned(_))));
/// assert_eq!(dm.text, "a\nb");
/// assert!(parse_dm(r#"{"type":"ping"}"#).is_none());
/// ```
pub fn parse_dm(text: &str) -> Option<DmRequest<'_>> {
    let DmWire { kind: DmTag::Dm, id, to, text, receipt } = serde_json::from_str(text).ok()?;
    Some(DmRequest { id: id.map(|Borrowed(id)| id), to: to.0, text: text.0, receipt })
}

/// The hot request, parsed in one pass: an internally tagged enum makes
/// serde buffer every field of the frame before it picks the variant (~6%
/// of a v1 DM's server CPU, issue 6). Exactly [`Request::Dm`]'s shape and
/// rules (unknown fields refused); anything it does not take goes through
/// the general path, which gives the same result or the same error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DmWire<'a> {
    #[serde(rename = "type")]
    kind: DmTag,
    #[serde(default, borrow)]
    id: Option<Borrowed<'a>>,
    #[serde(borrow)]
    to: Borrowed<'a>,
    #[serde(borrow)]
    text: Borrowed<'a>,
    #[serde(default)]
    receipt: bool,
}

#[derive(Deserialize)]
enum DmTag {
    #[serde(rename = "dm")]
    Dm,
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
    "ack",
];

/// Machine-readable error codes, sent in `error` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a well-formed request (not JSON, missing or mistyped field).
    BadRequest,
    /// The `type` is not one this version knows.
    UnknownType,
    /// The recipient is not online (ephemeral mode), or is being
    /// disconnected because it does not keep up.
    RecipientOffline,
    /// The recipient never connected to this hub: there is no inbox to store into.
    UnknownRecipient,
    /// The recipient's stored-message limit (count or bytes) is reached.
    InboxFull,
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
    /// Every code, in declaration order (for documentation checks and tests).
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::RecipientOffline,
        ErrorCode::UnknownRecipient,
        ErrorCode::InboxFull,
        ErrorCode::InvalidName,
        ErrorCode::NotMember,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::LimitReached,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::RecipientOffline => "recipient_offline",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::InboxFull => "inbox_full",
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
    /// The request with this id was accepted and routed (for durable sends:
    /// after the store committed it).
    Ack {
        /// The request's id.
        id: String,
        /// What happened to a message (`dm`, `publish`, `server`, binary);
        /// absent for other requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<AckStatus>,
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
        if let Reply::Ack { id, status } = self {
            return Reply::ack_frame(id, *status);
        }
        // Serialising these types cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The frame of `Reply::Ack { id, status }`, encoded from a borrowed id:
    /// one per message sent with an id, so the hub keeps the id shared
    /// rather than copying it into a `Reply`, and the keys are written as
    /// they are rather than escaped by serde on every call (issue 6); the id
    /// is escaped by serde_json.
    ///
    /// ```
    /// use switchboard_protocol::v1::{AckStatus, Reply};
    /// let frame = Reply::ack_frame("7\"", Some(AckStatus::Live));
    /// assert_eq!(frame, Reply::ack_with("7\"", AckStatus::Live).encode());
    /// assert_eq!(frame, r#"{"type":"ack","id":"7\"","status":"live"}"#);
    /// ```
    pub fn ack_frame(id: &str, status: Option<AckStatus>) -> String {
        let mut out = String::with_capacity(48 + id.len());
        out.push_str(r#"{"type":"ack","id":"#);
        push_json_str(&mut out, id);
        if let Some(status) = status {
            out.push_str(r#","status":""#);
            out.push_str(status.as_str());
            out.push('"');
        }
        out.push('}');
        out
    }

    /// A plain `ack` reply, without status.
    ///
    /// ```
    /// use switchboard_protocol::v1::{AckStatus, Reply};
    /// assert_eq!(Reply::ack("3").encode(), r#"{"type":"ack","id":"3"}"#);
    /// assert_eq!(
    ///     Reply::ack_with("1", AckStatus::Stored).encode(),
    ///     r#"{"type":"ack","id":"1","status":"stored"}"#
    /// );
    /// ```
    pub fn ack(id: impl Into<String>) -> Reply {
        Reply::Ack { id: id.into(), status: None }
    }

    /// An `ack` reply with a status, for messages.
    pub fn ack_with(id: impl Into<String>, status: AckStatus) -> Reply {
        Reply::Ack { id: id.into(), status: Some(status) }
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
        /// The room's own sequence number, for messages kept in room history.
        rseq: Option<u64>,
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
    /// A delivery receipt (wire type `delivered`), sent to the sender of a
    /// `dm` with `"receipt":true` once the recipient acknowledged it.
    Receipt {
        /// The sender's id of the acknowledged `dm`.
        id: &'a str,
        /// The recipient who acknowledged it.
        to: &'a str,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum Tail<'a> {
    // No `Dm`: a DM's tail is written by `dm_tail` (its test serialises
    // the same shape with serde).
    Room {
        ts: u64,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        rseq: Option<u64>,
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
    Receipt {
        ts: u64,
        id: &'a str,
        to: &'a str,
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
            Delivery::Receipt { .. } => "delivered",
        }
    }

    /// The whole frame for one recipient's `seq`: [`frame`] of
    /// [`Delivery::encode_tail`], for a delivery nobody else shares (a DM
    /// is written in one buffer, issue 6).
    ///
    /// ```
    /// use switchboard_protocol::v1::{frame, Delivery};
    /// let dm = Delivery::Dm { from: "a", to: "b", text: "hi" };
    /// assert_eq!(dm.encode_frame(7, 3), frame(&dm.encode_tail(7), 3));
    /// ```
    pub fn encode_frame(&self, ts: u64, seq: u64) -> String {
        match *self {
            Delivery::Dm { from, to, text } => dm_frame(ts, seq, from, to, text),
            _ => frame(&self.encode_tail(ts), seq),
        }
    }

    /// Encodes everything after `seq`, ready for [`frame`]: shared by all recipients.
    pub fn encode_tail(&self, ts: u64) -> EncodedDelivery {
        let tail = match *self {
            Delivery::Dm { from, to, text } => {
                return EncodedDelivery { head: head_for("dm"), rest: dm_tail(ts, from, to, text) }
            }
            Delivery::Room { room, from, text, rseq } => Tail::Room { ts, room, rseq, from, text },
            Delivery::Server { text, broadcast } => Tail::Server { ts, text, broadcast },
            Delivery::Presence { room, name, event } => Tail::Presence { ts, room, name, event },
            Delivery::Receipt { id, to } => Tail::Receipt { ts, id, to },
        };
        let object = serde_json::to_string(&tail).unwrap_or_else(|_| "{}".into());
        // `{"ts":..}` becomes `,"ts":..}`: the part after `"seq":N`.
        let mut rest = object;
        rest.replace_range(0..1, ",");
        EncodedDelivery { head: head_for(self.kind()), rest }
    }
}

/// The tail of a `dm` (every DM has one), byte for byte what serde writes
/// for `{ts, from, to, text}`: the keys are constants and the values go
/// through [`push_json_str`], instead of a serde call per field (issue 6).
fn dm_tail(ts: u64, from: &str, to: &str, text: &str) -> String {
    let mut rest = String::with_capacity(40 + from.len() + to.len() + text.len());
    push_dm_tail(&mut rest, ts, from, to, text);
    rest
}

/// A whole `dm` frame for one `seq`, in one buffer: [`frame`] of
/// [`dm_tail`] without the tail's own allocation and copy.
fn dm_frame(ts: u64, seq: u64, from: &str, to: &str, text: &str) -> String {
    let head = head_for("dm");
    let mut out = String::with_capacity(head.len() + 60 + from.len() + to.len() + text.len());
    out.push_str(head);
    out.push_str(itoa::Buffer::new().format(seq));
    push_dm_tail(&mut out, ts, from, to, text);
    out
}

fn push_dm_tail(out: &mut String, ts: u64, from: &str, to: &str, text: &str) {
    out.push_str(",\"ts\":");
    out.push_str(itoa::Buffer::new().format(ts));
    out.push_str(",\"from\":");
    push_json_str(out, from);
    out.push_str(",\"to\":");
    push_json_str(out, to);
    out.push_str(",\"text\":");
    push_json_str(out, text);
    out.push('}');
}

fn head_for(kind: &'static str) -> &'static str {
    match kind {
        "dm" => r#"{"type":"dm","seq":"#,
        "room" => r#"{"type":"room","seq":"#,
        "server" => r#"{"type":"server","seq":"#,
        "delivered" => r#"{"type":"delivered","seq":"#,
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
        /// The room's sequence number, for messages kept in room history.
        #[serde(default)]
        rseq: Option<u64>,
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
    /// A delivery receipt: `to` acknowledged our `dm` with this `id`
    /// (see [`Delivery::Receipt`]).
    Delivered {
        /// Per-recipient sequence number.
        seq: u64,
        /// Server time.
        ts: u64,
        /// The id of our `dm`.
        id: String,
        /// Its recipient.
        to: String,
    },
    /// See [`Reply::Ack`].
    Ack {
        /// Request id.
        id: String,
        /// What happened to the message; absent for other requests (and
        /// from hubs before issue 7, which means live). A status this
        /// version does not know reads as `None`.
        #[serde(default, deserialize_with = "lenient_status")]
        status: Option<AckStatus>,
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

    /// The delivery's `seq`; `None` for replies.
    ///
    /// ```
    /// use switchboard_protocol::v1::Incoming;
    /// let receipt = Incoming::parse(r#"{"type":"delivered","seq":9,"ts":1,"id":"1","to":"bob"}"#).unwrap();
    /// assert_eq!(receipt.seq(), Some(9));
    /// assert_eq!(Incoming::parse(r#"{"type":"ack","id":"1"}"#).unwrap().seq(), None);
    /// ```
    pub fn seq(&self) -> Option<u64> {
        match self {
            Incoming::Dm { seq, .. }
            | Incoming::Room { seq, .. }
            | Incoming::Server { seq, .. }
            | Incoming::Presence { seq, .. }
            | Incoming::Delivered { seq, .. } => Some(*seq),
            Incoming::Welcome { .. }
            | Incoming::Ack { .. }
            | Incoming::Error { .. }
            | Incoming::Clients { .. }
            | Incoming::Members { .. }
            | Incoming::Pong { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DM's tail as serde writes it: the reference for `dm_tail`.
    #[derive(Serialize)]
    struct DmTail<'a> {
        ts: u64,
        from: &'a str,
        to: &'a str,
        text: &'a str,
    }

    #[test]
    fn the_dm_tail_is_what_serde_writes_for_it() {
        let strings =
            ["", "plain", "q\"uote", "back\\slash", "tab\tnew\nline\u{1}", "été ☃ 😀", "</script>"];
        for (n, from) in strings.iter().enumerate() {
            for text in strings {
                let to = strings[(n + 1) % strings.len()];
                let ts = 1_700_000_000_000 + n as u64;
                let mut expected = serde_json::to_string(&DmTail { ts, from, to, text }).unwrap();
                expected.replace_range(0..1, ",");
                assert_eq!(dm_tail(ts, from, to, text), expected);
                let delivery = Delivery::Dm { from, to, text };
                assert_eq!(
                    delivery.encode_frame(ts, n as u64),
                    frame(&delivery.encode_tail(ts), n as u64)
                );
            }
        }
    }

    #[test]
    fn the_ack_frame_is_what_serde_writes_for_it() {
        let ids = ["", "1", "q\"uote", "back\\slash", "tab\tnew\nline\u{1}", "été ☃ 😀"];
        let statuses =
            [None, Some(AckStatus::Live), Some(AckStatus::Stored), Some(AckStatus::Duplicate)];
        for id in ids {
            for status in statuses {
                let reply = Reply::Ack { id: id.to_owned(), status };
                assert_eq!(reply.encode(), serde_json::to_string(&reply).unwrap(), "{reply:?}");
            }
        }
    }

    #[test]
    fn deliveries_round_trip_through_incoming() {
        let cases = [
            Delivery::Dm { from: "a", to: "b", text: "x\"y" },
            Delivery::Room { room: "lobby", from: Some("a"), text: "hi", rseq: None },
            Delivery::Room { room: "lobby", from: Some("a"), text: "hi", rseq: Some(12) },
            Delivery::Room { room: "quotes", from: None, text: "q", rseq: Some(0) },
            Delivery::Server { text: "notice", broadcast: true },
            Delivery::Presence { room: None, name: "a", event: PresenceEvent::Join },
            Delivery::Presence { room: Some("r"), name: "a", event: PresenceEvent::Leave },
            Delivery::Receipt { id: "m-1\"", to: "bob" },
        ];
        for (i, delivery) in cases.iter().enumerate() {
            let seq = i as u64 + 1;
            let text = frame(&delivery.encode_tail(99), seq);
            let incoming = Incoming::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            assert_eq!(json["seq"], seq, "{text}");
            assert_eq!(json["ts"], 99, "{text}");
            assert_eq!(json["type"], delivery.kind(), "{incoming:?}");
            assert_eq!(incoming.seq(), Some(seq), "{text}");
            // Every field comes back as it went in.
            let back = match (delivery, &incoming) {
                (Delivery::Dm { from, to, text }, Incoming::Dm { from: f, to: t, text: x, .. }) => {
                    from == f && to == t && text == x
                }
                (
                    Delivery::Room { room, from, text, rseq },
                    Incoming::Room { room: r, from: f, text: x, rseq: q, .. },
                ) => room == r && from.map(str::to_owned) == *f && text == x && rseq == q,
                (
                    Delivery::Server { text, broadcast },
                    Incoming::Server { text: x, broadcast: b, .. },
                ) => text == x && broadcast == b,
                (
                    Delivery::Presence { room, name, event },
                    Incoming::Presence { room: r, name: n, event: e, .. },
                ) => room.map(str::to_owned) == *r && name == n && event == e,
                (Delivery::Receipt { id, to }, Incoming::Delivered { id: i, to: t, .. }) => {
                    id == i && to == t
                }
                _ => false,
            };
            assert!(back, "{delivery:?} came back as {incoming:?}");
        }
    }

    #[test]
    fn room_rseq_is_in_the_tail_only_when_kept() {
        let kept = Delivery::Room { room: "r", from: Some("a"), text: "t", rseq: Some(12) };
        assert_eq!(
            frame(&kept.encode_tail(5), 3),
            r#"{"type":"room","seq":3,"ts":5,"room":"r","rseq":12,"from":"a","text":"t"}"#
        );
        let live = Delivery::Room { room: "r", from: None, text: "t", rseq: None };
        assert_eq!(
            frame(&live.encode_tail(5), 4),
            r#"{"type":"room","seq":4,"ts":5,"room":"r","text":"t"}"#
        );
        let receipt = Delivery::Receipt { id: "7", to: "bob" };
        assert_eq!(
            frame(&receipt.encode_tail(5), 8),
            r#"{"type":"delivered","seq":8,"ts":5,"id":"7","to":"bob"}"#
        );
    }

    #[test]
    fn new_request_shapes_parse_and_re_encode() {
        let cases: Vec<(&str, Request)> = vec![
            (
                r#"{"type":"dm","id":"1","to":"bob","text":"hi","receipt":true}"#,
                Request::Dm {
                    id: Some("1".into()),
                    to: "bob".into(),
                    text: "hi".into(),
                    receipt: true,
                },
            ),
            (
                r#"{"type":"dm","to":"bob","text":"hi"}"#,
                Request::Dm { id: None, to: "bob".into(), text: "hi".into(), receipt: false },
            ),
            (
                r#"{"type":"join","id":"3","room":"lobby","since":{"rseq":12}}"#,
                Request::Join {
                    id: Some("3".into()),
                    room: "lobby".into(),
                    since: Some(Since::Rseq(12)),
                },
            ),
            (
                r#"{"type":"join","room":"lobby","since":{"ts":1764100000000}}"#,
                Request::Join {
                    id: None,
                    room: "lobby".into(),
                    since: Some(Since::Ts(1_764_100_000_000)),
                },
            ),
            (
                r#"{"type":"join","room":"lobby"}"#,
                Request::Join { id: None, room: "lobby".into(), since: None },
            ),
            (r#"{"type":"ack","seq":42}"#, Request::Ack { id: None, seq: 42 }),
            (r#"{"type":"ack","id":"a","seq":0}"#, Request::Ack { id: Some("a".into()), seq: 0 }),
        ];
        for (text, expected) in cases {
            let request = parse_request(text).unwrap_or_else(|e| panic!("{text}: {}", e.message));
            assert_eq!(request, expected, "{text}");
            assert_eq!(serde_json::to_string(&request).unwrap_or_default(), text);
        }
        assert_eq!(
            parse_request(r#"{"type":"ack","id":"x","seq":1}"#)
                .ok()
                .and_then(|r| r.id().map(str::to_owned)),
            Some("x".into())
        );
        assert!(KNOWN_TYPES.contains(&"ack"));
    }

    #[test]
    fn the_dm_fast_path_agrees_with_the_general_parser() {
        let cases = [
            r#"{"type":"dm","to":"bob","text":"hi"}"#,
            r#"{"to":"bob","type":"dm","id":"1","text":"h\"i\u00e9","receipt":true}"#,
            r#"{"type":"dm","id":null,"to":"bob","text":"","receipt":false}"#,
            r#"{"type":"dm","to":"bob"}"#,
            r#"{"type":"dm","to":"bob","text":"hi","extra":1}"#,
            r#"{"type":"dm","to":"bob","text":"hi","to":"carol"}"#,
            r#"{"type":"dm","type":"dm","to":"bob","text":"hi"}"#,
            r#"{"type":"dm","to":7,"text":"hi"}"#,
            r#"{"type":"dm","id":5,"to":"bob","text":"hi"}"#,
            r#"{"type":"publish","room":"r","text":"hi"}"#,
            r#"{"type":"Dm","to":"bob","text":"hi"}"#,
            r#"["dm"]"#,
        ];
        for case in cases {
            let general = match serde_json::from_str::<Request>(case) {
                Ok(request) => Ok(request),
                Err(error) => Err(diagnose(case, error)),
            };
            assert_eq!(parse_request(case), general, "{case}");
            let borrowed = parse_dm(case).map(|dm| Request::Dm {
                id: dm.id.map(Cow::into_owned),
                to: dm.to.into_owned(),
                text: dm.text.into_owned(),
                receipt: dm.receipt,
            });
            let dm = general.ok().filter(|request| matches!(request, Request::Dm { .. }));
            assert_eq!(borrowed, dm, "parse_dm on {case}");
        }
    }

    #[test]
    fn malformed_new_fields_are_bad_requests() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"type":"ack","id":"1"}"#, Some("1")),
            (r#"{"type":"ack","id":"2","seq":-1}"#, Some("2")),
            (r#"{"type":"ack","id":"3","seq":"7"}"#, Some("3")),
            (r#"{"type":"ack","seq":1,"extra":true}"#, None),
            (r#"{"type":"join","id":"4","room":"r","since":{"rseq":1,"ts":2}}"#, Some("4")),
            (r#"{"type":"join","id":"5","room":"r","since":{"seq":1}}"#, Some("5")),
            (r#"{"type":"join","id":"6","room":"r","since":12}"#, Some("6")),
            (r#"{"type":"join","id":"7","room":"r","since":{}}"#, Some("7")),
            (r#"{"type":"dm","id":"8","to":"b","text":"x","receipt":"yes"}"#, Some("8")),
        ];
        for (text, id) in cases {
            let err = parse_request(text).expect_err(text);
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}: {}", err.message);
            assert_eq!(err.id.as_deref(), *id, "{text}");
        }
    }

    #[test]
    fn since_and_ack_status_serde() {
        for (since, wire) in [
            (Since::Rseq(0), r#"{"rseq":0}"#),
            (Since::Ts(u64::MAX), r#"{"ts":18446744073709551615}"#),
        ] {
            assert_eq!(serde_json::to_string(&since).unwrap_or_default(), wire);
            assert_eq!(serde_json::from_str::<Since>(wire).ok(), Some(since));
        }
        for status in [AckStatus::Live, AckStatus::Stored, AckStatus::Duplicate] {
            let wire = serde_json::to_value(status).unwrap_or_default();
            assert_eq!(wire, status.as_str());
            assert_eq!(serde_json::from_value::<AckStatus>(wire).ok(), Some(status));
        }
        assert!(serde_json::from_str::<AckStatus>(r#""lost""#).is_err());
        // A client still reads an ack whose status it does not know.
        assert_eq!(
            Incoming::parse(r#"{"type":"ack","id":"1","status":"teleported"}"#).ok(),
            Some(Incoming::Ack { id: "1".into(), status: None })
        );
        assert_eq!(
            Incoming::parse(r#"{"type":"ack","id":"1","status":null}"#).ok(),
            Some(Incoming::Ack { id: "1".into(), status: None })
        );
    }

    #[test]
    fn error_codes_agree_with_serde_and_are_all_listed() {
        assert_eq!(ErrorCode::UnknownRecipient.as_str(), "unknown_recipient");
        assert_eq!(ErrorCode::InboxFull.as_str(), "inbox_full");
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let wire = serde_json::to_value(code).unwrap_or_default();
            assert_eq!(wire, code.as_str(), "{code:?}");
            assert_eq!(serde_json::from_value::<ErrorCode>(wire).ok(), Some(*code));
            assert!(seen.insert(code.as_str()), "{code:?} twice");
        }
        let reply = Reply::error(Some("9"), ErrorCode::InboxFull, "bob's inbox is full");
        let parsed = Incoming::parse(&reply.encode()).ok();
        assert_eq!(
            parsed,
            Some(Incoming::Error {
                id: Some("9".into()),
                code: ErrorCode::InboxFull,
                message: "bob's inbox is full".into()
            })
        );
    }

    #[test]
    fn acks_with_and_without_status_round_trip() {
        let cases = [
            (Reply::ack("3"), r#"{"type":"ack","id":"3"}"#, None),
            (
                Reply::ack_with("1", AckStatus::Live),
                r#"{"type":"ack","id":"1","status":"live"}"#,
                Some(AckStatus::Live),
            ),
            (
                Reply::ack_with("2", AckStatus::Stored),
                r#"{"type":"ack","id":"2","status":"stored"}"#,
                Some(AckStatus::Stored),
            ),
            (
                Reply::ack_with("4", AckStatus::Duplicate),
                r#"{"type":"ack","id":"4","status":"duplicate"}"#,
                Some(AckStatus::Duplicate),
            ),
        ];
        for (reply, wire, status) in cases {
            assert_eq!(reply.encode(), wire);
            let Ok(Incoming::Ack { id, status: got }) = Incoming::parse(wire) else {
                panic!("{wire}")
            };
            assert_eq!(got, status, "{wire}");
            assert_eq!(Some(id.as_str()), wire.split('"').nth(7), "{wire}");
            assert_eq!(serde_json::from_str::<Reply>(wire).ok(), Some(reply));
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
