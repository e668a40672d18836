//! Hub events: what the operator's event log shows.
//!
//! Events go out on a `tokio::sync::broadcast` channel. A subscriber that
//! falls behind is told how many events it missed (see `server::api`), it is
//! not dropped silently; the hub itself never waits for subscribers.

use std::net::SocketAddr;
use std::time::SystemTime;

use switchboard_protocol::{ClientName, RoomName};

use super::Protocol;

/// Something the operator should see.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of [`HubEvent`].
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A client connected.
    Joined {
        /// Who.
        name: ClientName,
        /// From where.
        addr: SocketAddr,
        /// Classic or v1.
        protocol: Protocol,
    },
    /// A client disconnected.
    Left {
        /// Who.
        name: ClientName,
        /// The close code, when a close frame was exchanged.
        code: Option<u16>,
        /// Why, for a human.
        reason: String,
    },
    /// A client sent a message to the server.
    ToServer {
        /// Who.
        from: ClientName,
        /// The text.
        text: String,
    },
    /// A client joined a room.
    RoomJoined {
        /// Who.
        name: ClientName,
        /// Which room.
        room: RoomName,
    },
    /// A client left a room.
    RoomLeft {
        /// Who.
        name: ClientName,
        /// Which room.
        room: RoomName,
    },
    /// A client's input was refused or its session failed.
    Error {
        /// Whose session, if known.
        name: Option<ClientName>,
        /// What went wrong.
        message: String,
    },
}
