//! What the client reports: [`Event`]s, the connection [`State`] and the
//! hub's [`Welcome`]. The receiving end, [`Events`], is a bounded channel.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use switchboard_protocol::v1::{AckStatus, ErrorCode, Limits, PresenceEvent};
use tokio::sync::mpsc;

/// The connection's state, as Qt's `QAbstractSocket::SocketState` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The first connection is being opened.
    Connecting,
    /// Connected and welcomed; requests flow.
    Connected,
    /// The connection was lost; waiting for the next attempt or attempting.
    Reconnecting,
    /// Closing on request: the close handshake is under way.
    Closing,
    /// Closed for good: by request, on a permanent error, or out of attempts.
    Closed,
}

impl State {
    /// A short lower-case name, e.g. for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Reconnecting => "reconnecting",
            State::Closing => "closing",
            State::Closed => "closed",
        }
    }
}

/// The first frame of every session: who the hub says we are, and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Our name, as the hub knows it.
    pub name: String,
    /// This session's id (changes on every reconnect).
    pub session: String,
    /// The hub's software version.
    pub version: String,
    /// The protocol version.
    pub protocol: String,
    /// The limits the hub enforces on this session.
    pub limits: Limits,
}

/// Something that happened: a delivery, a reply to a request, or a change of
/// the connection. Deliveries carry the hub's `seq` for our name (strictly
/// increasing across sessions and reconnects, with gaps where the hub
/// numbered deliveries that were not kept for us, such as presence or room
/// messages while we were away) and its timestamp `ts` (ms since the Unix
/// epoch). The client never reports the same `seq` twice, nor out of order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A session started (first connect or reconnect) and its rooms and
    /// presence subscriptions were requested again.
    Connected(Welcome),
    /// The session ended; `code` is the close code when the hub sent one.
    Disconnected {
        /// The WebSocket close code, if any.
        code: Option<u16>,
        /// Why, for a human.
        reason: String,
    },
    /// The next connection attempt starts after `delay`.
    Reconnecting {
        /// Attempt number since the connection was lost, from 1.
        attempt: u32,
        /// How long the client waits before this attempt.
        delay: Duration,
    },
    /// A reconnection attempt failed; another follows unless the error is
    /// permanent or attempts are exhausted.
    ConnectFailed {
        /// The attempt that failed.
        attempt: u32,
        /// Why it failed.
        error: String,
    },
    /// The connection state changed.
    StateChanged(State),
    /// A private message.
    Direct {
        /// Per-recipient sequence number.
        seq: u64,
        /// Hub time, ms since the Unix epoch.
        ts: u64,
        /// Sender, stamped by the hub.
        from: String,
        /// Recipient (us).
        to: String,
        /// Text.
        text: String,
    },
    /// A message published to a room we are in (or replayed from its
    /// history, see [`Client::join_since`](crate::Client::join_since)).
    Room {
        /// Per-recipient sequence number.
        seq: u64,
        /// Hub time.
        ts: u64,
        /// The room.
        room: String,
        /// The room's own sequence number, when the room keeps history.
        rseq: Option<u64>,
        /// Sender; `None` when the operator published (HTTP API).
        from: Option<String>,
        /// Text.
        text: String,
    },
    /// A message from the server (operator or HTTP API).
    Server {
        /// Per-recipient sequence number.
        seq: u64,
        /// Hub time.
        ts: u64,
        /// Text.
        text: String,
        /// True when every client got it.
        broadcast: bool,
    },
    /// A binary payload from a client, directly or through a room.
    Binary {
        /// Per-recipient sequence number.
        seq: u64,
        /// Hub time.
        ts: u64,
        /// Sender, stamped by the hub.
        from: String,
        /// The room, for room deliveries.
        room: Option<String>,
        /// The payload.
        payload: Bytes,
    },
    /// Someone joined or left (globally, or a room we watch).
    Presence {
        /// Per-recipient sequence number.
        seq: u64,
        /// Hub time.
        ts: u64,
        /// The room, or `None` for global presence.
        room: Option<String>,
        /// Who.
        name: String,
        /// Joined or left.
        event: PresenceEvent,
    },
    /// The request with this id was accepted and routed; for a message,
    /// `status` says whether it went out live, was stored for an offline
    /// recipient, or was a retry the hub had already accepted.
    Ack {
        /// The request's id.
        id: String,
        /// What happened to a message; `None` for other requests (and from
        /// hubs that predate statuses, which means live).
        status: Option<AckStatus>,
    },
    /// A delivery receipt: the recipient acknowledged our private message
    /// with this id (sent with [`Client::send_direct_with_receipt`](crate::Client::send_direct_with_receipt)).
    Delivered {
        /// Per-recipient sequence number.
        seq: u64,
        /// Hub time.
        ts: u64,
        /// The id of our message.
        id: String,
        /// Its recipient, who acknowledged it.
        to: String,
    },
    /// A request was refused (or, without id, a frame was not understood).
    Error {
        /// The request's id.
        id: Option<String>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// The request with this id was sent but the hub never answered: it may
    /// or may not have been routed. Private messages (text or binary) and
    /// room publishes are re-sent after a reconnect instead (see
    /// [`ClientBuilder::retry_sends`](crate::ClientBuilder::retry_sends)), so
    /// they are only reported lost when the client closes or stops
    /// reconnecting before the hub answered them; other requests are
    /// reported lost when the connection drops.
    Lost {
        /// The request's id.
        id: String,
    },
    /// Answer to [`Client::who`](crate::Client::who).
    Clients {
        /// The request's id.
        id: Option<String>,
        /// Names online, sorted.
        clients: Vec<String>,
    },
    /// Answer to [`Client::members`](crate::Client::members) and to presence subscriptions.
    Members {
        /// The request's id.
        id: Option<String>,
        /// The room; `None` for the global list.
        room: Option<String>,
        /// Names, sorted.
        members: Vec<String>,
    },
    /// Answer to [`Client::ping`](crate::Client::ping).
    Pong {
        /// The request's id.
        id: Option<String>,
    },
}

impl Event {
    /// The request id this event answers, for acks, errors, losses and replies.
    ///
    /// ```
    /// use switchboard_client::Event;
    /// assert_eq!(Event::Ack { id: "7".into(), status: None }.request_id(), Some("7"));
    /// ```
    ///
    /// A [`Event::Delivered`] receipt is not an answer: it names the id of
    /// the message it reports on in its own field, and this returns `None`.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Event::Ack { id, .. } | Event::Lost { id } => Some(id),
            Event::Error { id, .. }
            | Event::Clients { id, .. }
            | Event::Members { id, .. }
            | Event::Pong { id } => id.as_deref(),
            _ => None,
        }
    }
}

/// The stream of [`Event`]s of one [`Client`](crate::Client); ends after
/// [`State::Closed`].
///
/// It is bounded: a consumer that stops reading eventually stops the client
/// from reading its socket, and the hub then disconnects it as a slow
/// consumer. Keep reading. Also a [`futures_util::Stream`].
///
/// ```no_run
/// # async fn demo() -> Result<(), switchboard_client::ConnectError> {
/// let (_client, mut events) = switchboard_client::Client::connect("ws://127.0.0.1:8888", "alice").await?;
/// while let Some(event) = events.recv().await {
///     println!("{event:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Events {
    pub(crate) receiver: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed and all events were read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.receiver.poll_recv(cx)
    }
}
