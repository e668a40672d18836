//! Cluster mode: several Switchboard nodes that behave as one hub.
//!
//! The hub routes through one seam, the [`Bus`] trait. [`LocalBus`] is the
//! single-node implementation (nothing is ever remote); [`redis::RedisBus`]
//! joins a cluster over Redis. The rest of the code does not know which one
//! runs: the hub asks the bus only about names it does not hold itself, and
//! hands it the already-built [`Message`] of a room publish or broadcast
//! once, after delivering to its own clients.
//!
//! What crosses the bus is a small internal [`Envelope`] (serde JSON, with a
//! binary payload appended raw), never a client wire format: each node
//! builds its own `Message` and encodes it for its own clients.
//!
//! Every node keeps a [`Directory`] of the clients connected to the *other*
//! nodes, replicated from their join/leave/room events and from snapshots
//! exchanged at (re)connect. It answers "which node has `bob`?" without a
//! round trip, and makes presence, `/api/clients` and `/api/rooms` show the
//! whole cluster.

pub mod redis;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{ClientName, RoomName};

use crate::hub::{
    Accepted, Body, ClientInfo, EventKind, HubEvent, Message, OnCommit, Protocol, RegisterError,
    RouteError,
};

/// A future returned by [`Bus::claim`].
pub type ClaimFuture = Pin<Box<dyn Future<Output = Result<(), RegisterError>> + Send>>;

/// The seam between the hub and the rest of the cluster.
///
/// Every method is non-blocking except [`Bus::claim`], which the handshake
/// awaits before answering 101 (so a duplicate gets 409). Implementations
/// must keep the order of calls from one thread: one sender's messages are
/// handed over in order and must reach the other nodes in that order.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// False for the single-node bus: the hub skips cluster work entirely.
    fn is_clustered(&self) -> bool;
    /// True while the bus can reach the other nodes.
    fn healthy(&self) -> bool;
    /// Claims `name` cluster-wide for this node.
    fn claim(&self, name: &ClientName) -> ClaimFuture;
    /// Gives up this node's claim on `name` (the client left).
    fn release(&self, name: &ClientName);
    /// Tells the other nodes about an event on this node.
    fn announce(&self, event: &HubEvent);
    /// Hands `message` to the node where the client `to` is connected.
    ///
    /// # Errors
    /// [`RouteError::Offline`] when no node has `to`;
    /// [`RouteError::ClusterUnavailable`] when the bus is down.
    fn send_direct(&self, to: &str, message: &Message) -> Result<(), RouteError>;
    /// Asks the node where `name` is connected to disconnect it.
    ///
    /// # Errors
    /// As [`Bus::send_direct`].
    fn kick(&self, name: &str, reason: &str) -> Result<(), RouteError>;
    /// Hands a broadcast or room publish to every other node, once; each
    /// delivers to its own clients. Returns how many remote clients it is for.
    ///
    /// # Errors
    /// [`RouteError::ClusterUnavailable`] when remote recipients exist and the bus is down.
    fn publish_all(&self, message: &Message) -> Result<usize, RouteError>;
    /// Clients connected to other nodes.
    fn remote_clients(&self) -> Vec<ClientInfo>;
    /// Rooms with members on other nodes, and those members.
    fn remote_rooms(&self) -> HashMap<RoomName, Vec<ClientName>>;

    // --- issue 7 in cluster mode: deliveries handed to the node holding a
    // name wait for that node's answer (sent once it has stored them).

    /// This node's id.
    fn node_id(&self) -> &str {
        ""
    }
    /// Keeps `answer` until [`Bus::take_answer`] with the returned token
    /// (or a timeout answers it with [`RouteError::ClusterUnavailable`]).
    ///
    /// # Errors
    /// Gives `answer` back when too many answers are awaited already.
    fn expect_answer(&self, answer: OnCommit) -> Result<u64, OnCommit> {
        Err(answer)
    }
    /// The answer kept under `token`, if it has not timed out.
    fn take_answer(&self, _token: u64) -> Option<OnCommit> {
        None
    }
    /// Tells `node` the outcome of the send it registered as `token`.
    fn answer(&self, _node: &str, _token: u64, _outcome: Result<Accepted, RouteError>) {}
    /// The frame of a room message kept in Redis (see [`Envelope::RoomKept`]).
    fn room_frame(&self, _message: &Message, _echo: bool) -> Vec<u8> {
        Vec::new()
    }
    /// The frame that hands `message` for `to` to the node holding `to`,
    /// asking it to answer `reply` (node, token) once stored.
    fn direct_frame(
        &self,
        _to: &str,
        _message: &Message,
        _id: Option<&str>,
        _receipt: bool,
        _reply: Option<(&str, u64)>,
    ) -> Vec<u8> {
        Vec::new()
    }
}

/// The single-node bus: nobody is remote. Without `--cluster` this is the
/// behaviour of the hub, exactly as before cluster mode existed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn is_clustered(&self) -> bool {
        false
    }
    fn healthy(&self) -> bool {
        true
    }
    fn claim(&self, _name: &ClientName) -> ClaimFuture {
        Box::pin(std::future::ready(Ok(())))
    }
    fn release(&self, _name: &ClientName) {}
    fn announce(&self, _event: &HubEvent) {}
    fn send_direct(&self, to: &str, _message: &Message) -> Result<(), RouteError> {
        Err(RouteError::Offline(to.to_owned()))
    }
    fn kick(&self, name: &str, _reason: &str) -> Result<(), RouteError> {
        Err(RouteError::Offline(name.to_owned()))
    }
    fn publish_all(&self, _message: &Message) -> Result<usize, RouteError> {
        Ok(0)
    }
    fn remote_clients(&self) -> Vec<ClientInfo> {
        Vec::new()
    }
    fn remote_rooms(&self) -> HashMap<RoomName, Vec<ClientName>> {
        HashMap::new()
    }
}

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The Redis URL, `redis://HOST:PORT`.
    pub url: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How long a name (and a node) stays claimed without a heartbeat.
    pub ttl: Duration,
}

impl ClusterOptions {
    /// How often the node refreshes its claims: a third of the TTL, so two
    /// heartbeats may be lost before a live node's names expire.
    pub fn heartbeat(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }
}

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL is not valid.
    #[error("invalid cluster URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What the client library said.
        source: ::redis::RedisError,
    },
}

/// Why an envelope from the bus could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The frame is shorter than its header says.
    #[error("truncated envelope")]
    Truncated,
    /// The header is not valid JSON for [`Envelope`].
    #[error("invalid envelope header: {0}")]
    Json(#[from] serde_json::Error),
}

/// A client as the other nodes see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireClient {
    /// Name.
    pub name: String,
    /// Remote address, as text.
    pub addr: String,
    /// `classic` or `v1`.
    pub protocol: String,
    /// Connected since, ms since the Unix epoch.
    pub since: u64,
    /// Rooms joined.
    pub rooms: Vec<String>,
}

/// An event, as it crosses the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum WireEvent {
    /// A client connected.
    Joined {
        /// Who, from where, since when.
        client: WireClient,
    },
    /// A client disconnected.
    Left {
        /// Who.
        name: String,
        /// Close code.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// A client sent a message to the server.
    ToServer {
        /// Who.
        from: String,
        /// What.
        text: String,
    },
    /// A client joined a room.
    RoomJoined {
        /// Who.
        name: String,
        /// Which room.
        room: String,
    },
    /// A client left a room.
    RoomLeft {
        /// Who.
        name: String,
        /// Which room.
        room: String,
    },
    /// Something was refused or failed.
    Error {
        /// Whose session.
        name: Option<String>,
        /// What.
        message: String,
    },
}

/// What one node tells the others. Serialised once per message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Envelope {
    /// A private message to a client on the receiving node.
    Direct {
        /// The sender.
        from: String,
        /// The recipient.
        to: String,
        /// The text.
        text: String,
        /// Issue 7: what the receiving node stores with it and whom it answers.
        #[serde(default, flatten)]
        kept: Kept,
    },
    /// A binary payload (appended after the header) to a client or a room.
    Binary {
        /// The sender.
        from: String,
        /// The recipient client, for a direct payload.
        to: Option<String>,
        /// The room, for a room payload.
        room: Option<String>,
        /// Issue 7, for a direct payload: as for `Direct`.
        #[serde(default, flatten)]
        kept: Kept,
    },
    /// Issue 7: a room message kept in the room's history in Redis, published
    /// (behind its `rseq`) to every node, its origin included.
    RoomKept {
        /// The room.
        room: String,
        /// The sender; `None` for the operator.
        from: Option<String>,
        /// The text.
        text: String,
        /// Deliver to the sender too.
        echo: bool,
        /// Hub time at the origin, ms since the Unix epoch.
        ts: u64,
    },
    /// Issue 7: a delivery receipt for `to`: `by` acknowledged its message `id`.
    Receipt {
        /// The sender of the acknowledged message.
        to: String,
        /// Its client id.
        id: String,
        /// The recipient who acknowledged it.
        by: String,
    },
    /// Issue 7: the outcome of a send that a node registered as `token`.
    Answer {
        /// The waiting node's token.
        token: u64,
        /// What became of the send.
        outcome: WireOutcome,
    },
    /// A room publish: each node delivers to its own members.
    Room {
        /// The room.
        room: String,
        /// The sender; `None` for the operator.
        from: Option<String>,
        /// The text.
        text: String,
    },
    /// An operator message to one client (`to`) or to everyone.
    Server {
        /// The recipient, or `None` for a broadcast.
        to: Option<String>,
        /// The text.
        text: String,
        /// Issue 7, for one recipient: as for `Direct`.
        #[serde(default, flatten)]
        kept: Kept,
    },
    /// The operator disconnects a client on the receiving node.
    Kick {
        /// Who.
        name: String,
        /// Why.
        reason: String,
    },
    /// An event on the origin node.
    Event {
        /// When, ms since the Unix epoch.
        at: u64,
        /// What.
        event: WireEvent,
    },
    /// A node (re)joined: the others answer with a [`Envelope::Snapshot`].
    Hello,
    /// Every client of the origin node, replacing what others knew of it.
    Snapshot {
        /// The clients.
        clients: Vec<WireClient>,
    },
}

/// Issue 7 in cluster mode: the sender's client id, its receipt request, and
/// the node and token waiting for the outcome of a forwarded delivery.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kept {
    /// The sender's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Send a receipt to the sender once acknowledged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipt: bool,
    /// The node waiting for the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_node: Option<String>,
    /// Its token for this send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_token: Option<u64>,
}

impl Kept {
    /// The (node, token) to answer, if any.
    pub fn reply(&self) -> Option<(String, u64)> {
        Some((self.reply_node.clone()?, self.reply_token?))
    }
}

/// The outcome of a forwarded send, as it crosses the bus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum WireOutcome {
    /// Delivered to the live session (and stored).
    Live,
    /// Stored for later.
    Stored,
    /// A retry of a recent client id.
    Duplicate,
    /// The name never connected.
    Unknown {
        /// The name.
        name: String,
    },
    /// The inbox is full.
    Full {
        /// Why.
        message: String,
    },
    /// The recipient is not reading and is being disconnected.
    Overflow {
        /// The name.
        name: String,
    },
    /// Anything else: retry later.
    Unavailable {
        /// Why.
        message: String,
    },
}

impl From<Result<Accepted, RouteError>> for WireOutcome {
    fn from(outcome: Result<Accepted, RouteError>) -> WireOutcome {
        match outcome {
            Ok(Accepted::Live) => WireOutcome::Live,
            Ok(Accepted::Stored) => WireOutcome::Stored,
            Ok(Accepted::Duplicate) => WireOutcome::Duplicate,
            Err(RouteError::UnknownRecipient(name) | RouteError::Offline(name)) => {
                WireOutcome::Unknown { name }
            }
            Err(RouteError::InboxFull(message)) => WireOutcome::Full { message },
            Err(RouteError::RecipientOverflow(name)) => WireOutcome::Overflow { name },
            Err(other) => WireOutcome::Unavailable { message: other.to_string() },
        }
    }
}

impl From<WireOutcome> for Result<Accepted, RouteError> {
    fn from(outcome: WireOutcome) -> Result<Accepted, RouteError> {
        match outcome {
            WireOutcome::Live => Ok(Accepted::Live),
            WireOutcome::Stored => Ok(Accepted::Stored),
            WireOutcome::Duplicate => Ok(Accepted::Duplicate),
            WireOutcome::Unknown { name } => Err(RouteError::UnknownRecipient(name)),
            WireOutcome::Full { message } => Err(RouteError::InboxFull(message)),
            WireOutcome::Overflow { name } => Err(RouteError::RecipientOverflow(name)),
            WireOutcome::Unavailable { message } => Err(RouteError::StoreUnavailable(message)),
        }
    }
}

/// An envelope with its origin node and, for binary messages, its payload.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The node that published it; a node ignores its own frames.
    pub origin: String,
    /// What it says.
    pub envelope: Envelope,
    /// The binary payload, empty for text messages.
    pub payload: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Header {
    o: String,
    #[serde(flatten)]
    envelope: Envelope,
}

impl Frame {
    /// Encodes as `[u32 BE header length][JSON header][payload]`, so binary
    /// payloads cross the bus without inflation.
    pub fn encode(origin: &str, envelope: Envelope, payload: &[u8]) -> Vec<u8> {
        let header =
            serde_json::to_vec(&Header { o: origin.to_owned(), envelope }).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + header.len() + payload.len());
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        out
    }

    /// Decodes what [`Frame::encode`] produced.
    ///
    /// # Errors
    /// When the frame is truncated or the header is not an envelope.
    pub fn decode(bytes: &[u8]) -> Result<Frame, EnvelopeError> {
        let len_bytes: [u8; 4] =
            bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or(EnvelopeError::Truncated)?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let header = bytes.get(4..4 + len).ok_or(EnvelopeError::Truncated)?;
        let header: Header = serde_json::from_slice(header)?;
        Ok(Frame {
            origin: header.o,
            envelope: header.envelope,
            payload: Bytes::copy_from_slice(&bytes[4 + len..]),
        })
    }
}

/// The envelope for a message built by the hub, and its binary payload.
/// `to` is the recipient for direct messages. `None` for presence, which
/// never crosses the bus (each node derives it from events).
pub fn envelope_for(message: &Message, to: Option<&str>) -> Option<(Envelope, Bytes)> {
    envelope_kept(message, to, Kept::default())
}

/// As [`envelope_for`], with what a shared-inbox node stores and answers.
pub fn envelope_kept(message: &Message, to: Option<&str>, kept: Kept) -> Option<(Envelope, Bytes)> {
    let envelope = match message.body() {
        Body::Direct { from, to, .. } => Envelope::Direct {
            from: from.to_string(),
            to: to.to_string(),
            text: message.dm_text().unwrap_or_default().to_owned(),
            kept,
        },
        // Room history (issue 7) is per node: the rseq stays local.
        Body::Room { room, from, text, .. } => Envelope::Room {
            room: room.to_string(),
            from: from.as_ref().map(ToString::to_string),
            text: text.clone(),
        },
        Body::Server { text, broadcast } => Envelope::Server {
            to: (!broadcast).then(|| to.unwrap_or_default().to_owned()),
            text: text.clone(),
            kept,
        },
        Body::Binary { from, room, payload } => {
            return Some((
                Envelope::Binary {
                    from: from.to_string(),
                    to: to.map(str::to_owned),
                    room: room.as_ref().map(ToString::to_string),
                    kept,
                },
                payload.clone(),
            ))
        }
        Body::Receipt { id, to: by } => Envelope::Receipt {
            to: to.unwrap_or_default().to_owned(),
            id: id.clone(),
            by: by.to_string(),
        },
        Body::Presence { .. } => return None,
    };
    Some((envelope, Bytes::new()))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The event as it crosses the bus; `None` for events that stay local.
pub(crate) fn wire_event(event: &EventKind) -> Option<WireEvent> {
    Some(match event {
        EventKind::Joined { name, addr, protocol } => WireEvent::Joined {
            client: WireClient {
                name: name.to_string(),
                addr: addr.to_string(),
                protocol: protocol.as_str().to_owned(),
                since: millis(SystemTime::now()),
                rooms: Vec::new(),
            },
        },
        EventKind::Left { name, code, reason } => {
            WireEvent::Left { name: name.to_string(), code: *code, reason: reason.clone() }
        }
        EventKind::ToServer { from, text } => {
            WireEvent::ToServer { from: from.to_string(), text: text.clone() }
        }
        EventKind::RoomJoined { name, room } => {
            WireEvent::RoomJoined { name: name.to_string(), room: room.to_string() }
        }
        EventKind::RoomLeft { name, room } => {
            WireEvent::RoomLeft { name: name.to_string(), room: room.to_string() }
        }
        EventKind::Error { name, message } => WireEvent::Error {
            name: name.as_ref().map(ToString::to_string),
            message: message.clone(),
        },
    })
}

/// A client connected to another node.
#[derive(Debug, Clone)]
pub struct RemoteClient {
    /// The node it is connected to.
    pub node: String,
    /// Its remote address.
    pub addr: SocketAddr,
    /// Its protocol.
    pub protocol: Protocol,
    /// Connected since.
    pub connected_at: SystemTime,
    /// Rooms joined.
    pub rooms: BTreeSet<RoomName>,
}

impl RemoteClient {
    /// From the wire; unparsable fields fall back to neutral values, since the
    /// origin node validated them already.
    pub fn from_wire(node: &str, client: &WireClient) -> RemoteClient {
        RemoteClient {
            node: node.to_owned(),
            addr: client.addr.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            protocol: if client.protocol == "v1" { Protocol::V1 } else { Protocol::Classic },
            connected_at: UNIX_EPOCH + Duration::from_millis(client.since),
            rooms: client.rooms.iter().filter_map(|r| RoomName::parse(r).ok()).collect(),
        }
    }
}

/// The clients of the other nodes, by name.
#[derive(Debug, Default)]
pub struct Directory {
    /// Remote clients.
    pub clients: HashMap<ClientName, RemoteClient>,
}

impl Directory {
    /// Snapshot for the API.
    pub fn infos(&self) -> Vec<ClientInfo> {
        self.clients
            .iter()
            .map(|(name, remote)| ClientInfo {
                name: name.clone(),
                session: 0,
                addr: remote.addr,
                protocol: remote.protocol,
                connected_at: remote.connected_at,
                rooms: remote.rooms.iter().cloned().collect(),
                messages_in: 0,
                messages_out: 0,
                queued_bytes: 0,
                inbox_depth: 0,
            })
            .collect()
    }

    /// Remote members by room.
    pub fn rooms(&self) -> HashMap<RoomName, Vec<ClientName>> {
        let mut rooms: HashMap<RoomName, Vec<ClientName>> = HashMap::new();
        for (name, remote) in &self.clients {
            for room in &remote.rooms {
                rooms.entry(room.clone()).or_default().push(name.clone());
            }
        }
        rooms
    }

    /// Remote members of one room.
    pub fn room_members(&self, room: &str) -> usize {
        self.clients.values().filter(|c| c.rooms.iter().any(|r| r.as_str() == room)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_raw_payloads() {
        let envelope = Envelope::Binary {
            from: "a".into(),
            to: Some("b".into()),
            room: None,
            kept: Kept::default(),
        };
        let bytes = Frame::encode("n1", envelope, &[0, 1, 2, 255]);
        let frame = Frame::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(frame.origin, "n1");
        assert_eq!(&frame.payload[..], &[0, 1, 2, 255]);
        assert!(matches!(frame.envelope, Envelope::Binary { to: Some(ref t), .. } if t == "b"));
        assert!(matches!(Frame::decode(&[0, 0, 0, 9, b'{']), Err(EnvelopeError::Truncated)));
    }

    #[test]
    fn forwarded_deliveries_carry_their_id_and_whom_to_answer() {
        let kept = Kept {
            id: Some("m1".into()),
            receipt: true,
            reply_node: Some("n1".into()),
            reply_token: Some(7),
        };
        let envelope =
            Envelope::Direct { from: "a".into(), to: "b".into(), text: "hi".into(), kept };
        let frame =
            Frame::decode(&Frame::encode("n1", envelope, &[])).unwrap_or_else(|e| panic!("{e}"));
        let Envelope::Direct { kept, .. } = frame.envelope else { panic!("not direct") };
        assert_eq!(kept.reply(), Some(("n1".to_owned(), 7)));
        assert_eq!((kept.id.as_deref(), kept.receipt), (Some("m1"), true));
        let answer = Envelope::Answer { token: 7, outcome: WireOutcome::Stored };
        let frame =
            Frame::decode(&Frame::encode("n2", answer, &[])).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            frame.envelope,
            Envelope::Answer { token: 7, outcome: WireOutcome::Stored }
        ));
    }
}
