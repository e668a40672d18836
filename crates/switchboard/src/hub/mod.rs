//! The hub: who is online, which rooms exist, and where each message goes.
//!
//! [`Hub`] is a cheap-to-clone handle to the shared state, in the style of
//! mini-redis's `Db`. Every surface — WebSocket sessions, the operator API,
//! the event stream — is a client of its methods. The hub knows nothing of
//! HTTP, axum or sockets: it moves [`Message`]s into bounded [`Outbox`]es and
//! never waits. A session's writer task turns them into frames.
//!
//! **Invariants**
//! - The sender of every message is the hub's record of who sent it
//!   (a [`ClientName`] bound to the session at registration), never a
//!   client-supplied field.
//! - One sender's messages reach each recipient in the order sent: a sender's
//!   reader routes sequentially and each outbox is FIFO.
//! - Memory per client is bounded by its outbox byte limit; a recipient that
//!   does not keep up is disconnected rather than buffered without bound.
//! - The state lock is a `std::sync::Mutex`, held for map operations and
//!   non-blocking pushes only, never across an `.await`.
//! - Every delivery to a name passes through its `Inbox` lock (`inbox.rs`), which
//!   assigns the name's next `seq`, queues the store append (issue 7,
//!   `durable.rs`) and pushes to the live outbox, in that order: seqs reach
//!   the wire in order, and nothing can acknowledge an entry before the
//!   store has it. Lock order: state, then an inbox; never the reverse.

mod durable;
mod event;
mod inbox;
mod liveness;
mod message;
mod outbox;
mod prefetch;
pub mod rate;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use switchboard_protocol::v1::{PresenceEvent, Since};
use switchboard_protocol::{close, ClientName, NameError, RoomName};
use tokio::sync::broadcast;

use crate::cluster::{Bus, LocalBus};
use crate::store::Store;
use durable::Origin;
pub use inbox::RecipientCache;
use inbox::{Inbox, Inboxes};

pub use durable::{entry_message, Accepted, AckMode, InboxInfo, OnCommit, SendMeta, UNSAVED_SWEEP};
pub use event::{EventKind, HubEvent};
pub use liveness::{Keepalive, Liveness};
pub use message::{now_ms, Body, DmText, Message};
pub use outbox::{outbox, CloseStage, Closer, Outbox, OutboxReceiver, Outgoing, PushError, Replay};

/// How many events a slow `/api/events` subscriber may fall behind before it
/// is told it missed some.
const EVENT_BUFFER: usize = 4096;

/// The limits the hub enforces on its own state.
#[derive(Debug, Clone)]
pub struct HubLimits {
    /// Bytes a client's outbox may hold before it is disconnected.
    pub max_queued_bytes: usize,
    /// Longest client or room name, in characters.
    pub max_name_chars: usize,
    /// Rooms one client may be in at once.
    pub max_rooms_per_client: usize,
    /// Members one room may hold.
    pub max_members_per_room: usize,
    // --- durability (issue 7) ---
    /// Stored, unacknowledged messages one inbox may hold.
    pub inbox_max_messages: u64,
    /// Bytes one inbox may hold.
    pub inbox_max_bytes: u64,
    /// Bytes every inbox together may hold.
    pub store_max_bytes: u64,
    /// Names the hub keeps inboxes for.
    pub max_known_names: usize,
    /// Messages each room keeps for joins with `since` (0: none).
    pub room_history: usize,
    /// Rooms that may keep history at once.
    pub max_history_rooms: usize,
    /// How long a sender's client ids are remembered to drop retries.
    pub dedup_window: Duration,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_queued_bytes: 4 * 1024 * 1024,
            max_name_chars: switchboard_protocol::name::DEFAULT_MAX_NAME_CHARS,
            max_rooms_per_client: 100,
            max_members_per_room: 10_000,
            inbox_max_messages: 10_000,
            inbox_max_bytes: 16 * 1024 * 1024,
            store_max_bytes: 1024 * 1024 * 1024,
            max_known_names: 100_000,
            room_history: 100,
            max_history_rooms: 10_000,
            dedup_window: Duration::from_secs(600),
        }
    }
}

/// Which wire protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The Qt tutorial's protocol.
    Classic,
    /// Protocol v1 (`switchboard.v1`).
    V1,
}

impl Protocol {
    /// A short name for logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Classic => "classic",
            Protocol::V1 => "v1",
        }
    }
}

/// Why a session ended; maps to a WebSocket close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server is shutting down.
    Shutdown,
    /// A text frame was not valid UTF-8.
    InvalidUtf8,
    /// A message exceeded the size limit.
    TooBig {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer broke the WebSocket protocol.
    ProtocolError(String),
    /// The client's outbox overflowed: it does not read fast enough.
    SlowConsumer {
        /// The limit in bytes.
        limit: usize,
    },
    /// An operator disconnected the client.
    Kicked(String),
    /// No answer to pings within the keepalive timeout.
    KeepaliveTimeout,
    /// The client kept exceeding its rate limit.
    RateLimited,
    /// The client's access token expired while it was connected (issue 5).
    TokenExpired,
    /// The client sent no data frame within the idle timeout (issue 5).
    IdleTimeout {
        /// The timeout in seconds.
        secs: u64,
    },
    /// The client closed the connection.
    PeerClosed {
        /// The client's close code, if it sent one.
        code: Option<u16>,
        /// The client's close reason.
        reason: String,
    },
    /// The connection failed (I/O error, reset).
    Dropped(String),
    /// The server failed to serve the session (e.g. cannot read stored
    /// messages); the client may reconnect.
    Internal(String),
}

impl CloseReason {
    /// The close code to send, or `None` when no close frame can or should be sent.
    pub fn code(&self) -> Option<u16> {
        match self {
            CloseReason::Shutdown => Some(close::GOING_AWAY),
            CloseReason::InvalidUtf8 => Some(close::INVALID_PAYLOAD),
            CloseReason::TooBig { .. } => Some(close::MESSAGE_TOO_BIG),
            CloseReason::ProtocolError(_) => Some(close::PROTOCOL_ERROR),
            CloseReason::SlowConsumer { .. } | CloseReason::RateLimited => {
                Some(close::POLICY_VIOLATION)
            }
            CloseReason::Kicked(_) => Some(close::KICKED),
            CloseReason::KeepaliveTimeout => Some(close::KEEPALIVE_TIMEOUT),
            CloseReason::TokenExpired => Some(close::TOKEN_EXPIRED),
            CloseReason::IdleTimeout { .. } => Some(close::IDLE_TIMEOUT),
            CloseReason::PeerClosed { code, .. } => *code,
            CloseReason::Dropped(_) => None,
            CloseReason::Internal(_) => Some(close::INTERNAL_ERROR),
        }
    }

    /// The human-readable reason, sent in the close frame (at most 123 bytes).
    pub fn text(&self) -> String {
        match self {
            CloseReason::Shutdown => "server shutting down".into(),
            CloseReason::InvalidUtf8 => "text frame is not valid UTF-8".into(),
            CloseReason::TooBig { limit } => format!("message exceeds {limit} bytes"),
            CloseReason::ProtocolError(detail) => format!("protocol error: {detail}"),
            CloseReason::SlowConsumer { limit } => {
                format!("outgoing queue exceeded {limit} bytes: client too slow")
            }
            CloseReason::Kicked(reason) if reason.is_empty() => "disconnected by operator".into(),
            CloseReason::Kicked(reason) => format!("disconnected by operator: {reason}"),
            CloseReason::KeepaliveTimeout => "no pong within keepalive timeout".into(),
            CloseReason::RateLimited => "rate limit exceeded repeatedly".into(),
            CloseReason::TokenExpired => "token expired".into(),
            CloseReason::IdleTimeout { secs } => format!("idle timeout: no message for {secs} s"),
            CloseReason::PeerClosed { reason, .. } if reason.is_empty() => "client closed".into(),
            CloseReason::PeerClosed { reason, .. } => format!("client closed: {reason}"),
            CloseReason::Dropped(detail) => format!("connection lost: {detail}"),
            CloseReason::Internal(detail) => format!("server error: {detail}"),
        }
    }

    /// True when the server initiates the close and drains nothing (the
    /// queue is the problem, or the peer is gone).
    pub fn discards_queue(&self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumer { .. }
                | CloseReason::PeerClosed { .. }
                | CloseReason::Dropped(_)
                | CloseReason::KeepaliveTimeout
        )
    }
}

/// Why a message could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No client of that name is online.
    #[error("{0} is not online")]
    Offline(String),
    /// The name given is not a valid name.
    #[error("invalid name {name:?}: {error}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it is invalid.
        error: NameError,
    },
    /// The sender is not a member of the room.
    #[error("not a member of room {0}")]
    NotMember(String),
    /// The room does not exist.
    #[error("no room named {0}")]
    NoSuchRoom(String),
    /// A room or membership limit was reached.
    #[error("{0}")]
    LimitReached(String),
    /// The recipient's queue overflowed; it is being disconnected.
    #[error("{0} is not reading fast enough and is being disconnected")]
    RecipientOverflow(String),
    /// Issue 7: the name never connected, so there is no inbox to store into.
    #[error("{0} is unknown: it has never connected to this hub")]
    UnknownRecipient(String),
    /// Issue 7: the recipient's inbox (or the whole store) is at its limit.
    #[error("{0}")]
    InboxFull(String),
    /// Issue 7: the store cannot take the message now (overloaded or failing).
    #[error("{0}")]
    StoreUnavailable(String),
    /// Cluster mode (issue 8): the recipient may be on another node and the
    /// cluster bus is down, so the message was not sent there.
    #[error(
        "cluster bus unavailable: clients on other nodes cannot be reached right now; retry later"
    )]
    ClusterUnavailable,
}

/// Why a client could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The name is already online.
    #[error("name {0:?} is already online")]
    NameTaken(String),
    /// Cluster mode: the name's stored inbox could not be taken over (the
    /// message store is unreachable), so the session would miss messages.
    #[error("{0}")]
    Unavailable(String),
    /// The hub is shutting down ([`Hub::close_all`] was called).
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A connected client as the hub sees it; shared by the hub and the session.
#[derive(Debug)]
pub struct Client {
    /// The validated name, stamped on everything this client sends.
    name: ClientName,
    /// Unique per server process; tells two sessions of the same name apart.
    session: u64,
    /// The remote address.
    addr: SocketAddr,
    /// Classic or v1.
    protocol: Protocol,
    /// When the handshake was accepted.
    connected_at: SystemTime,
    /// Where messages to this client go.
    outbox: Outbox,
    /// Its name's seq counter and inbox (issue 7).
    inbox: Arc<Inbox>,
    /// How the session acknowledges stored deliveries (issue 7).
    ack_mode: AckMode,
    /// Messages received from the client (for the console).
    messages_in: AtomicU64,
    /// Messages written to the client (for the console), counted by its
    /// writer once per batch: not per push, where 1,000 recipients of a
    /// broadcast would each take a cold cache line for it (issue 6).
    messages_out: AtomicU64,
    /// Rooms the client's access token lets it join (issue 5); unset, any room.
    allowed_rooms: OnceLock<BTreeSet<String>>,
    /// When it was last heard from; keepalive and contention marks.
    liveness: Liveness,
}

impl Client {
    /// When it was last heard from; keepalive and contention marks.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }
    /// The client's name.
    pub fn name(&self) -> &ClientName {
        &self.name
    }
    /// The session id.
    pub fn session(&self) -> u64 {
        self.session
    }
    /// The wire protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The client's outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }
    /// Counts `n` messages written to this client (its writer, per batch).
    pub fn count_out(&self, n: u64) {
        if n > 0 {
            self.messages_out.fetch_add(n, Ordering::Relaxed);
        }
    }
    /// Counts one message received from this client.
    pub fn count_in(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }
    /// Messages received from this client so far (the idle timeout watches it).
    pub fn messages_in(&self) -> u64 {
        self.messages_in.load(Ordering::Relaxed)
    }
    /// Restricts the rooms this client may join (from its access token,
    /// issue 5). Set once, before the session starts; later calls are ignored.
    pub fn restrict_rooms(&self, rooms: impl IntoIterator<Item = String>) {
        let _ = self.allowed_rooms.set(rooms.into_iter().collect());
    }
    fn may_join(&self, room: &RoomName) -> bool {
        self.allowed_rooms.get().is_none_or(|allowed| allowed.contains(room.as_str()))
    }

    /// How the session acknowledges stored deliveries.
    pub fn ack_mode(&self) -> AckMode {
        self.ack_mode
    }

    /// Delivers a message that is not stored: presence, room traffic.
    fn deliver(&self, message: &Arc<Message>) -> Result<(), PushError> {
        self.inbox.deliver(message).map(|_| ())
    }
}

/// A snapshot of one client, for the operator API.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Name.
    pub name: ClientName,
    /// Session id.
    pub session: u64,
    /// Remote address.
    pub addr: SocketAddr,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Connected since.
    pub connected_at: SystemTime,
    /// Rooms joined, sorted.
    pub rooms: Vec<RoomName>,
    /// Messages received from the client.
    pub messages_in: u64,
    /// Messages written to the client.
    pub messages_out: u64,
    /// Bytes waiting in its outbox.
    pub queued_bytes: usize,
    /// Stored messages not yet acknowledged (issue 7).
    pub inbox_depth: u64,
}

/// A snapshot of one room, for the operator API.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    /// Name.
    pub name: RoomName,
    /// Members, sorted.
    pub members: Vec<ClientName>,
}

/// Handle to the hub's shared state. Clone it freely.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Clients, rooms and presence subscriptions, under one short-held lock.
    state: Mutex<State>,
    /// The operator's event feed.
    events: broadcast::Sender<HubEvent>,
    /// Limits on state and queues.
    limits: HubLimits,
    /// Source of session ids.
    next_session: AtomicU64,
    /// Cluster mode (issue 8): the bus to the other nodes; unset on a single node.
    bus: OnceLock<Arc<dyn Bus>>,
    /// Issue 7: the durable store; unset in ephemeral mode.
    store: OnceLock<Store>,
    /// Issue 7: bytes in every inbox together.
    stored_bytes: AtomicU64,
    /// Issue 6: inboxes that may hold live deliveries not handed to the
    /// store yet ([`Hub::save_unsaved`] goes through them).
    unsaved: Mutex<Vec<Arc<Inbox>>>,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<ClientName, Slot>,
    rooms: HashMap<RoomName, Room>,
    /// Clients subscribed to global presence.
    presence: HashMap<ClientName, Arc<Client>>,
    /// Issue 7: every name's inbox — known names with a durable store,
    /// online names only in ephemeral mode.
    inboxes: Inboxes,
    /// Issue 7: rooms' recent messages, kept after a room empties.
    histories: HashMap<RoomName, durable::RoomHistory>,
    /// Set by [`Hub::close_all`]: no client registers after it.
    closed: bool,
}

#[derive(Debug)]
struct Slot {
    client: Arc<Client>,
    rooms: RoomSet,
    /// Rooms whose presence this client watches.
    watching: RoomSet,
}

/// A set of room names that takes 8 bytes in its [`Slot`] while empty (a
/// `BTreeSet` takes 24): most clients join no room, and the registry's
/// table holds a slot per client, and room for more (issue 6, idle memory).
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the box is the point: 8 bytes inline, not 24
struct RoomSet(Option<Box<BTreeSet<RoomName>>>);

impl RoomSet {
    fn contains<Q: Ord + ?Sized>(&self, room: &Q) -> bool
    where
        RoomName: std::borrow::Borrow<Q>,
    {
        self.0.as_ref().is_some_and(|set| set.contains(room))
    }
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |set| set.len())
    }
    fn insert(&mut self, room: RoomName) {
        self.0.get_or_insert_default().insert(room);
    }
    /// True when the room was in the set; the last removal frees the set.
    fn remove<Q: Ord + ?Sized>(&mut self, room: &Q) -> bool
    where
        RoomName: std::borrow::Borrow<Q>,
    {
        let Some(set) = &mut self.0 else { return false };
        let removed = set.remove(room);
        if set.is_empty() {
            self.0 = None;
        }
        removed
    }
    fn iter(&self) -> impl Iterator<Item = &RoomName> {
        self.0.iter().flat_map(|set| set.iter())
    }
}

impl IntoIterator for RoomSet {
    type Item = RoomName;
    type IntoIter = std::iter::Flatten<std::option::IntoIter<BTreeSet<RoomName>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|set| *set).into_iter().flatten()
    }
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<ClientName, Arc<Client>>,
    watchers: HashMap<ClientName, Arc<Client>>,
}

impl Room {
    fn is_unused(&self) -> bool {
        self.members.is_empty() && self.watchers.is_empty()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Hub {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Hub {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                events,
                limits,
                next_session: AtomicU64::new(1),
                bus: OnceLock::new(),
                store: OnceLock::new(),
                stored_bytes: AtomicU64::new(0),
                unsaved: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The limits this hub enforces.
    pub fn limits(&self) -> &HubLimits {
        &self.shared.limits
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in
        // a way that matters more than refusing all service would.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates a client-supplied name with this hub's length limit.
    ///
    /// # Errors
    /// The rule the name breaks.
    pub fn client_name(&self, raw: &str) -> Result<ClientName, NameError> {
        ClientName::parse_with_limit(raw, self.shared.limits.max_name_chars)
    }

    /// Validates a client-supplied room name.
    ///
    /// # Errors
    /// The rule the name breaks.
    pub fn room_name(&self, raw: &str) -> Result<RoomName, NameError> {
        RoomName::parse_with_limit(raw, self.shared.limits.max_name_chars)
    }

    /// Subscribes to hub events.
    pub fn subscribe_events(&self) -> broadcast::Receiver<HubEvent> {
        self.shared.events.subscribe()
    }

    /// Publishes an event to the operator feed (no-op without subscribers),
    /// and in cluster mode to the other nodes' feeds.
    pub fn emit(&self, kind: EventKind) {
        let event = HubEvent { at: SystemTime::now(), kind };
        // --- cluster (issue 8): events replicate the directory of clients.
        let bus = self.bus();
        if bus.is_clustered() {
            bus.announce(&event);
        }
        let _ = self.shared.events.send(event);
    }

    /// Registers a client under `name`, reserving the name until the
    /// returned [`Registration`] is dropped or [`Registration::leave`]s.
    ///
    /// # Errors
    /// [`RegisterError::NameTaken`] when the name is online; the existing
    /// client is not affected.
    pub fn register(
        &self,
        name: ClientName,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> Result<(Registration, OutboxReceiver), RegisterError> {
        self.register_with(name, addr, protocol, |_| None)
    }

    /// As [`Hub::register`], queueing `first(client)` (a v1 welcome) before
    /// the name becomes visible, so nothing routed to the client precedes it.
    ///
    /// # Errors
    /// As [`Hub::register`].
    pub fn register_with(
        &self,
        name: ClientName,
        addr: SocketAddr,
        protocol: Protocol,
        first: impl FnOnce(&Client) -> Option<Outgoing>,
    ) -> Result<(Registration, OutboxReceiver), RegisterError> {
        self.register_session(name, addr, protocol, None, first)
    }

    /// As [`Hub::register_with`], for a session that resumes after the seq
    /// `resume` (issue 7): `Some` puts the session in client-ack mode. With
    /// a durable store, the name's stored messages are queued (as an
    /// [`Outgoing::Replay`]) right behind `first`, ahead of live traffic.
    ///
    /// # Errors
    /// As [`Hub::register`].
    pub fn register_session(
        &self,
        name: ClientName,
        addr: SocketAddr,
        protocol: Protocol,
        resume: Option<u64>,
        first: impl FnOnce(&Client) -> Option<Outgoing>,
    ) -> Result<(Registration, OutboxReceiver), RegisterError> {
        let (outbox, receiver) = outbox(self.shared.limits.max_queued_bytes);
        let session = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        let ack_mode = match resume {
            Some(_) => AckMode::Client,
            None => AckMode::Auto,
        };
        let client = {
            let mut state = self.state();
            if state.clients.contains_key(&name) {
                return Err(RegisterError::NameTaken(name.to_string()));
            }
            if state.closed {
                // The name is not online here: a claim taken for this
                // session (cluster mode) is this session's to give back.
                self.bus().release(&name);
                return Err(RegisterError::ShuttingDown);
            }
            let inbox = self.inbox_for_session(&mut state, &name);
            let client = Arc::new(Client {
                name: name.clone(),
                session,
                addr,
                protocol,
                connected_at: SystemTime::now(),
                outbox,
                inbox,
                ack_mode,
                messages_in: AtomicU64::new(0),
                messages_out: AtomicU64::new(0),
                allowed_rooms: OnceLock::new(),
                liveness: Liveness::new(),
            });
            if let Some(item) = first(&client) {
                let _ = client.outbox.push(item);
            }
            self.go_live(&client, resume);
            state.clients.insert(
                name.clone(),
                Slot {
                    client: client.clone(),
                    rooms: RoomSet::default(),
                    watching: RoomSet::default(),
                },
            );
            let presence = Arc::new(Message::new(Body::Presence {
                room: None,
                name: name.clone(),
                event: PresenceEvent::Join,
            }));
            for watcher in state.presence.values() {
                let _ = watcher.deliver(&presence);
            }
            client
        };
        tracing::info!(%name, %addr, protocol = protocol.as_str(), "client joined");
        self.emit(EventKind::Joined { name, addr, protocol });
        Ok((Registration { hub: self.clone(), client, left: false }, receiver))
    }

    fn unregister(&self, client: &Arc<Client>, reason: &CloseReason) {
        let name = client.name.clone();
        let mut room_events = Vec::new();
        {
            let mut state = self.state();
            // Only remove the slot if it is still this session's.
            match state.clients.get(&name) {
                Some(slot) if slot.client.session == client.session => {}
                _ => return,
            }
            let Some(slot) = state.clients.remove(&name) else { return };
            self.go_offline(&mut state, &slot.client);
            state.presence.remove(&name);
            for room in slot.watching.iter() {
                if let Some(entry) = state.rooms.get_mut(room) {
                    entry.watchers.remove(&name);
                }
            }
            for room in slot.rooms {
                Self::remove_member(&mut state, &room, &name);
                room_events.push(room);
            }
            for room in slot.watching.iter() {
                if state.rooms.get(room).is_some_and(Room::is_unused) {
                    state.rooms.remove(room);
                }
            }
            let presence = Arc::new(Message::new(Body::Presence {
                room: None,
                name: name.clone(),
                event: PresenceEvent::Leave,
            }));
            for watcher in state.presence.values() {
                let _ = watcher.deliver(&presence);
            }
        }
        let code = reason.code();
        let text = reason.text();
        tracing::info!(%name, code, reason = %text, "client left");
        for room in room_events {
            self.emit(EventKind::RoomLeft { name: name.clone(), room });
        }
        let left = EventKind::Left { name: name.clone(), code, reason: text };
        // --- cluster (issue 8): free the name cluster-wide. With shared
        // inboxes (issue 7) only once the appends this node numbered for it
        // are in Redis: the next holder's replay must see them, and the
        // claim fences them. The leave is announced after the release, so a
        // node that saw it can take the name at once.
        if let Some(store) = self.shared.store.get().filter(|store| store.shares_inboxes()) {
            let (hub, then_name, then_left) = (self.clone(), name.clone(), left.clone());
            let release: crate::store::Completion = Box::new(move |_| {
                hub.bus().release(&then_name);
                hub.emit(then_left);
            });
            match store.submit_then(crate::store::Op::Barrier, Some(release)) {
                Ok(()) => return,
                Err(error) => tracing::warn!(%error, "releasing the name without a store flush"),
            }
        }
        self.bus().release(&name);
        self.emit(left);
    }

    /// Removes `name` from `room`, tells the room's watchers, drops the room if unused.
    fn remove_member(state: &mut State, room: &RoomName, name: &ClientName) {
        let Some(entry) = state.rooms.get_mut(room) else { return };
        if entry.members.remove(name).is_none() {
            return;
        }
        let presence = Arc::new(Message::new(Body::Presence {
            room: Some(room.clone()),
            name: name.clone(),
            event: PresenceEvent::Leave,
        }));
        for watcher in entry.watchers.values() {
            let _ = watcher.deliver(&presence);
        }
        if entry.is_unused() {
            state.rooms.remove(room);
        }
    }

    fn lookup(&self, to: &str) -> Result<Arc<Client>, RouteError> {
        self.state()
            .clients
            .get(to)
            .map(|slot| slot.client.clone())
            .ok_or_else(|| RouteError::Offline(to.to_owned()))
    }

    /// The inbox of `to`: online, or known while offline (issue 7).
    fn inbox_of(&self, to: &str) -> Option<Arc<Inbox>> {
        self.state().inboxes.get(to).cloned()
    }

    /// What a sender is told about a name with no inbox here.
    fn no_inbox(&self, to: &str) -> RouteError {
        if self.is_durable() {
            RouteError::UnknownRecipient(to.to_owned())
        } else {
            RouteError::Offline(to.to_owned())
        }
    }

    /// Routes one message to one name: a live or stored delivery here, or
    /// in cluster mode to the node that has the client.
    ///
    /// `message` builds the message at a time for the recipient's name, once
    /// the route has found it. `answer` is the sender's: when the outcome is
    /// only known later (a shared inbox in cluster mode), the route takes it
    /// and runs it then.
    fn route_one(
        &self,
        to: &str,
        message: impl FnOnce(u64, ClientName) -> Message,
        origin: Origin<'_>,
        answer: &mut Option<OnCommit>,
        recipient: &mut RecipientCache,
    ) -> Result<Accepted, RouteError> {
        let ts = || origin.ts.unwrap_or_else(now_ms);
        let inbox = recipient.find(to, |to| self.inbox_of(to));
        if self.shares_inboxes() {
            // Cluster mode with shared inboxes: this node numbers and stores
            // for the names it holds; Redis routes the rest.
            let Some(inbox) = inbox else {
                return self.route_shared(to, |name| message(ts(), name), origin, answer);
            };
            let message = Arc::new(message(ts(), inbox.name().clone()));
            return self.deliver_kept(inbox, message, origin);
        }
        let Some(inbox) = inbox else {
            let offline = self.no_inbox(to);
            return self
                .send_remote(to, offline, |name| message(ts(), name))
                .map(|()| Accepted::Live);
        };
        // --- cluster (issue 8): a name known here may be online on another node.
        if self.bus().is_clustered() && inbox.lock().live.is_none() {
            let message = message(ts(), inbox.name().clone());
            return match self.bus().send_direct(to, &message) {
                Ok(()) => Ok(Accepted::Live),
                Err(RouteError::Offline(_)) => self.deliver_kept(inbox, Arc::new(message), origin),
                Err(other) => Err(other),
            };
        }
        let message = Arc::new(message(ts(), inbox.name().clone()));
        self.deliver_kept(inbox, message, origin)
    }

    /// Routes a private message from `from` to the client named `to`.
    ///
    /// # Errors
    /// [`RouteError::Offline`] when `to` is not online (ephemeral mode) or
    /// [`RouteError::UnknownRecipient`] when it never connected (durable);
    /// [`RouteError::RecipientOverflow`] when its queue is full;
    /// [`RouteError::InboxFull`] when its stored messages are at the limit.
    pub fn send_direct(
        &self,
        from: &Client,
        to: &str,
        text: String,
        meta: SendMeta,
    ) -> Result<Accepted, RouteError> {
        self.send_direct_encoded(from, to, text.into(), None, meta, &mut RecipientCache::default())
    }

    /// As [`Hub::send_direct`], with the classic frame already encoded by the
    /// caller (issue 6: a classic DM is spliced from the sender's JSON, not
    /// re-escaped); see [`Message::with_classic`]. A `text` in the classic
    /// frame ([`DmText::InClassicFrame`]) comes with that frame. The
    /// recipient's inbox is looked up through the sender session's
    /// `recipient` cache.
    ///
    /// # Errors
    /// As [`Hub::send_direct`].
    pub fn send_direct_encoded(
        &self,
        from: &Client,
        to: &str,
        text: DmText,
        classic: Option<String>,
        meta: SendMeta,
        recipient: &mut RecipientCache,
    ) -> Result<Accepted, RouteError> {
        debug_assert!(
            classic.is_some() || matches!(text, DmText::Shared(_)),
            "a DM's text in a classic frame it was not given"
        );
        self.send_as(from, meta, |hub, origin, answer| {
            // Built with its frame: the text may lie in it (`DmText`).
            let message = |ts, to| {
                Message::with_classic(
                    ts,
                    Body::Direct { from: from.name.clone(), to, text },
                    classic,
                )
            };
            hub.route_one(to, message, origin, answer, recipient)
        })
    }

    /// Routes a binary payload from `from` to the client named `to`.
    ///
    /// # Errors
    /// As [`Hub::send_direct`].
    pub fn send_binary(
        &self,
        from: &Client,
        to: &str,
        payload: Bytes,
        meta: SendMeta,
    ) -> Result<Accepted, RouteError> {
        self.send_as(from, meta, |hub, origin, answer| {
            let message = |ts, _| {
                Message::at(ts, Body::Binary { from: from.name.clone(), room: None, payload })
            };
            hub.route_one(to, message, origin, answer, &mut RecipientCache::default())
        })
    }

    /// A client's message to the server: logged and published as an event.
    pub fn to_server(&self, from: &Client, text: String) {
        tracing::info!(from = %from.name, text = %text, "message to server");
        self.emit(EventKind::ToServer { from: from.name.clone(), text });
    }

    /// Sends `text` from the operator to every connected client.
    /// Returns how many clients it was queued for.
    pub fn broadcast(&self, text: String) -> usize {
        let message = Arc::new(Message::new(Body::Server { text, broadcast: true }));
        let delivered = self.deliver_to_everyone(&message);
        // --- cluster (issue 8): once to the bus; each node delivers to its own.
        let remote = self.bus().publish_all(&message).unwrap_or_else(|error| {
            tracing::warn!(%error, "broadcast reached this node's clients only");
            0
        });
        delivered + remote
    }

    /// Sends `text` from the operator to the client named `to`: live, or
    /// stored for a known name that is offline (issue 7).
    ///
    /// # Errors
    /// [`RouteError::Offline`] / [`RouteError::UnknownRecipient`] as for
    /// [`Hub::send_direct`]; [`RouteError::InboxFull`].
    ///
    /// Resolves once the message is durable (after the store commit), as the
    /// operator API answers.
    pub async fn send_to(&self, to: &str, text: String) -> Result<Accepted, RouteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut answer: Option<OnCommit> = Some(Box::new(move |outcome| {
            let _ = tx.send(outcome);
        }));
        let message = |ts, _| Message::at(ts, Body::Server { text, broadcast: false });
        let origin = Origin { confirm: true, ..Origin::OPERATOR };
        let accepted =
            self.route_one(to, message, origin, &mut answer, &mut RecipientCache::default())?;
        if answer.is_none() {
            // The route took the answer: the outcome comes later.
            return rx.await.unwrap_or(Err(RouteError::ClusterUnavailable));
        }
        self.committed().await?;
        Ok(accepted)
    }

    /// Disconnects the client named `name` with close code 4000 and `reason`.
    ///
    /// # Errors
    /// [`RouteError::Offline`] when `name` is not online.
    pub fn disconnect(&self, name: &str, reason: String) -> Result<(), RouteError> {
        let client = match self.lookup(name) {
            Ok(client) => client,
            // --- cluster (issue 8): the node that has the client closes it.
            Err(offline) if self.bus().is_clustered() => {
                tracing::info!(%name, %reason, "operator disconnects client on another node");
                return self.bus().kick(name, &reason).map_err(|e| match e {
                    RouteError::Offline(_) => offline,
                    other => other,
                });
            }
            Err(offline) => return Err(offline),
        };
        tracing::info!(%name, %reason, "operator disconnects client");
        client.outbox.closer().close(CloseReason::Kicked(reason));
        Ok(())
    }

    /// Adds `client` to `room`, creating the room on first join. Joining a
    /// room twice is not an error. Returns the room's members.
    ///
    /// With `since` (issue 7), the room's kept messages after that point are
    /// delivered to the client first, under the same lock as live publishes:
    /// no message is missed or repeated between history and live traffic.
    ///
    /// # Errors
    /// [`RouteError::InvalidName`] for a bad room name,
    /// [`RouteError::LimitReached`] when a room or membership limit is hit.
    pub fn join(
        &self,
        client: &Client,
        room: &str,
        since: Option<Since>,
    ) -> Result<Vec<ClientName>, RouteError> {
        let room = self
            .room_name(room)
            .map_err(|error| RouteError::InvalidName { name: room.into(), error })?;
        if !client.may_join(&room) {
            return Err(RouteError::LimitReached(format!(
                "room {room} is not allowed by your access token"
            )));
        }
        let limits = &self.shared.limits;
        let members = {
            let mut state = self.state();
            let state = &mut *state;
            let Some(slot) = state.clients.get_mut(&client.name) else {
                return Err(RouteError::Offline(client.name.to_string()));
            };
            if !slot.rooms.contains(&room) {
                if slot.rooms.len() >= limits.max_rooms_per_client {
                    return Err(RouteError::LimitReached(format!(
                        "a client may be in at most {} rooms",
                        limits.max_rooms_per_client
                    )));
                }
                let entry = state.rooms.entry(room.clone()).or_default();
                if entry.members.len() >= limits.max_members_per_room {
                    if entry.is_unused() {
                        state.rooms.remove(&room);
                    }
                    return Err(RouteError::LimitReached(format!(
                        "room {room} is full ({} members)",
                        limits.max_members_per_room
                    )));
                }
                entry.members.insert(client.name.clone(), slot.client.clone());
                slot.rooms.insert(room.clone());
                let presence = Arc::new(Message::new(Body::Presence {
                    room: Some(room.clone()),
                    name: client.name.clone(),
                    event: PresenceEvent::Join,
                }));
                for watcher in entry.watchers.values() {
                    let _ = watcher.deliver(&presence);
                }
            }
            if let Some(since) = since {
                if let Some(history) = state.histories.get(&room) {
                    for message in history.since(since) {
                        let _ = client.deliver(message);
                    }
                }
            }
            sorted_names(state.rooms.get(&room).map(|r| r.members.keys()))
        };
        self.emit(EventKind::RoomJoined { name: client.name.clone(), room });
        Ok(members)
    }

    /// Removes `client` from `room`; the room vanishes when empty.
    ///
    /// # Errors
    /// [`RouteError::NotMember`] when the client is not in the room.
    pub fn leave(&self, client: &Client, room: &str) -> Result<(), RouteError> {
        let room_name = self
            .room_name(room)
            .map_err(|error| RouteError::InvalidName { name: room.into(), error })?;
        {
            let mut state = self.state();
            let removed = state
                .clients
                .get_mut(&client.name)
                .is_some_and(|slot| slot.rooms.remove(&room_name));
            if !removed {
                return Err(RouteError::NotMember(room.to_owned()));
            }
            Self::remove_member(&mut state, &room_name, &client.name);
        }
        self.emit(EventKind::RoomLeft { name: client.name.clone(), room: room_name });
        Ok(())
    }

    /// Publishes `text` from `client` to every member of `room` (and to the
    /// sender too when `echo`). Returns how many members it was queued for.
    ///
    /// # Errors
    /// [`RouteError::NotMember`] when the client is not in the room.
    pub fn publish(
        &self,
        client: &Client,
        room: &str,
        text: String,
        echo: bool,
        meta: SendMeta,
    ) -> Result<usize, RouteError> {
        let mut delivered = 0;
        self.send_as(client, meta, |hub, _, answer| {
            let body =
                |room, rseq| Body::Room { room, from: Some(client.name.clone()), text, rseq };
            delivered = hub.publish_body(Some(client), room, echo, true, body, answer)?;
            Ok(Accepted::Live)
        })?;
        Ok(delivered)
    }

    /// Publishes a binary payload from `client` to `room`.
    ///
    /// # Errors
    /// As [`Hub::publish`].
    pub fn publish_binary(
        &self,
        client: &Client,
        room: &str,
        payload: Bytes,
    ) -> Result<usize, RouteError> {
        let body = |room, _| Body::Binary { from: client.name.clone(), room: Some(room), payload };
        self.publish_body(Some(client), room, false, false, body, &mut None)
    }

    /// Publishes `text` from the operator to every member of `room`.
    ///
    /// # Errors
    /// [`RouteError::NoSuchRoom`] when the room has no members.
    pub fn publish_as_server(&self, room: &str, text: String) -> Result<usize, RouteError> {
        let body = |room, rseq| Body::Room { room, from: None, text, rseq };
        self.publish_body(None, room, true, true, body, &mut None)
    }

    fn publish_body(
        &self,
        sender: Option<&Client>,
        room: &str,
        echo: bool,
        history: bool,
        body: impl FnOnce(RoomName, Option<u64>) -> Body,
        answer: &mut Option<OnCommit>,
    ) -> Result<usize, RouteError> {
        let mut state = self.state();
        // A room that only has watchers has no members to publish to.
        let found = state.rooms.get_key_value(room).filter(|(_, entry)| !entry.members.is_empty());
        let Some((room_name, entry)) = found else {
            drop(state);
            // --- cluster (issue 8): the operator may publish to a room whose
            // members are all on other nodes.
            if sender.is_none() && self.bus().is_clustered() {
                if let Ok(room_name) = self.room_name(room) {
                    if self.bus().remote_rooms().contains_key(&room_name) {
                        if history && self.shared.limits.room_history > 0 && self.shares_inboxes() {
                            return self.publish_kept(room_name, echo, body, answer);
                        }
                        let message = Message::new(body(room_name, None));
                        return self.bus().publish_all(&message);
                    }
                }
            }
            return Err(match sender {
                Some(_) => RouteError::NotMember(room.to_owned()),
                None => RouteError::NoSuchRoom(room.to_owned()),
            });
        };
        if let Some(sender) = sender {
            if !entry.members.contains_key(&sender.name) {
                return Err(RouteError::NotMember(room.to_owned()));
            }
        }
        let room_name = room_name.clone();
        // Issue 7 in cluster mode: the room's history lives in Redis, which
        // numbers the message and publishes it to every node, this one too.
        if history && self.shared.limits.room_history > 0 && self.shares_inboxes() {
            let local = entry
                .members
                .keys()
                .filter(|name| echo || Some(*name) != sender.map(|s| &s.name))
                .count();
            drop(state);
            return self.publish_kept(room_name, echo, body, answer).map(|remote| local + remote);
        }
        // Issue 7: text published to the room is kept in its history.
        let message = match history {
            true => self.record_in_history(&mut state, room_name.clone(), body),
            false => Arc::new(Message::new(body(room_name.clone(), None))),
        };
        let Some(entry) = state.rooms.get(&room_name) else {
            return Err(RouteError::NoSuchRoom(room_name.to_string()));
        };
        let sender_name = sender.map(|s| &s.name);
        let members = entry.members.iter().filter(|(name, _)| echo || Some(*name) != sender_name);
        let mut delivered = 0;
        prefetch::for_each_client(members.map(|(_, member)| member), |member| {
            delivered += usize::from(member.deliver(&message).is_ok());
        });
        drop(state);
        // --- cluster (issue 8): once to the bus; each node delivers to its members.
        Ok(delivered + self.bus().publish_all(&message)?)
    }

    /// Subscribes `client` to presence: global when `room` is `None`.
    /// Returns who is online (or in the room) now.
    ///
    /// # Errors
    /// [`RouteError::InvalidName`] for a bad room name.
    pub fn watch(
        &self,
        client: &Client,
        room: Option<&str>,
    ) -> Result<Vec<ClientName>, RouteError> {
        let room = room
            .map(|r| {
                self.room_name(r).map_err(|error| RouteError::InvalidName { name: r.into(), error })
            })
            .transpose()?;
        if let Some(room) = room.as_ref().filter(|room| !client.may_join(room)) {
            return Err(RouteError::LimitReached(format!(
                "room {room} is not allowed by your access token"
            )));
        }
        let mut guard = self.state();
        let state = &mut *guard;
        let Some(slot) = state.clients.get_mut(&client.name) else {
            return Err(RouteError::Offline(client.name.to_string()));
        };
        // --- cluster (issue 8): the snapshot shows the whole cluster.
        let merge = |mut names: Vec<ClientName>, remote: Vec<ClientName>| {
            if !remote.is_empty() {
                names.extend(remote);
                names.sort();
                names.dedup();
            }
            names
        };
        match room {
            None => {
                state.presence.insert(client.name.clone(), slot.client.clone());
                let local = sorted_names(Some(state.clients.keys()));
                drop(guard);
                let remote = self.bus().remote_clients().into_iter().map(|c| c.name).collect();
                Ok(merge(local, remote))
            }
            Some(room) => {
                if !slot.watching.contains(&room)
                    && slot.watching.len() >= self.shared.limits.max_rooms_per_client
                {
                    return Err(RouteError::LimitReached(format!(
                        "a client may watch at most {} rooms",
                        self.shared.limits.max_rooms_per_client
                    )));
                }
                slot.watching.insert(room.clone());
                let entry = state.rooms.entry(room.clone()).or_default();
                entry.watchers.insert(client.name.clone(), slot.client.clone());
                let local = sorted_names(Some(entry.members.keys()));
                drop(guard);
                let remote = self.bus().remote_rooms().remove(&room).unwrap_or_default();
                Ok(merge(local, remote))
            }
        }
    }

    /// Ends a presence subscription. Unsubscribing twice is not an error.
    pub fn unwatch(&self, client: &Client, room: Option<&str>) {
        let mut state = self.state();
        match room {
            None => {
                state.presence.remove(&client.name);
            }
            Some(room) => {
                if let Some(slot) = state.clients.get_mut(&client.name) {
                    slot.watching.remove(room);
                }
                if let Some(entry) = state.rooms.get_mut(room) {
                    entry.watchers.remove(&client.name);
                    if entry.is_unused() {
                        state.rooms.remove(room);
                    }
                }
            }
        }
    }

    /// The names online, sorted (in cluster mode, on every node).
    pub fn online(&self) -> Vec<ClientName> {
        let mut names = self.local_names();
        // --- cluster (issue 8)
        if self.bus().is_clustered() {
            names.extend(self.bus().remote_clients().into_iter().map(|c| c.name));
            names.sort();
            names.dedup();
        }
        names
    }

    /// How many clients are online.
    pub fn client_count(&self) -> usize {
        self.state().clients.len()
    }

    /// A room's members, or `None` if the room has none.
    pub fn room(&self, room: &str) -> Option<RoomInfo> {
        // --- cluster (issue 8): members on every node.
        if self.bus().is_clustered() {
            return self.rooms().into_iter().find(|r| r.name.as_str() == room);
        }
        let state = self.state();
        let (name, entry) = state.rooms.get_key_value(room)?;
        (!entry.members.is_empty()).then(|| RoomInfo {
            name: name.clone(),
            members: sorted_names(Some(entry.members.keys())),
        })
    }

    /// Every room with members, sorted by name.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let state = self.state();
        let mut rooms: Vec<RoomInfo> = state
            .rooms
            .iter()
            .filter(|(_, entry)| !entry.members.is_empty())
            .map(|(name, entry)| RoomInfo {
                name: name.clone(),
                members: sorted_names(Some(entry.members.keys())),
            })
            .collect();
        drop(state);
        // --- cluster (issue 8): members on every node.
        if self.bus().is_clustered() {
            for (name, members) in self.bus().remote_rooms() {
                match rooms.iter_mut().find(|r| r.name == name) {
                    Some(room) => room.members.extend(members),
                    None => rooms.push(RoomInfo { name, members }),
                }
            }
            for room in &mut rooms {
                room.members.sort();
                room.members.dedup();
            }
        }
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        rooms
    }

    /// A snapshot of every client, sorted by name (in cluster mode, on every node).
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut clients = self.local_clients();
        // --- cluster (issue 8)
        if self.bus().is_clustered() {
            clients.extend(self.bus().remote_clients());
            clients.sort_by(|a, b| a.name.cmp(&b.name));
        }
        clients
    }

    /// A snapshot of one client (in cluster mode, on any node).
    pub fn client(&self, name: &str) -> Option<ClientInfo> {
        let local = self.state().clients.get(name).map(Self::info);
        // --- cluster (issue 8)
        local.or_else(|| {
            self.bus().is_clustered().then(|| {
                self.bus().remote_clients().into_iter().find(|c| c.name.as_str() == name)
            })?
        })
    }

    fn info(slot: &Slot) -> ClientInfo {
        let client = &slot.client;
        ClientInfo {
            name: client.name.clone(),
            session: client.session,
            addr: client.addr,
            protocol: client.protocol,
            connected_at: client.connected_at,
            rooms: slot.rooms.iter().cloned().collect(),
            messages_in: client.messages_in.load(Ordering::Relaxed),
            messages_out: client.messages_out.load(Ordering::Relaxed),
            queued_bytes: client.outbox.queued_bytes(),
            inbox_depth: client.inbox.lock().depth,
        }
    }

    // --- cluster (issue 8): the seam to the other nodes ---------------------

    /// Connects this hub to a cluster bus. Returns false if one is attached already.
    pub fn attach_bus(&self, bus: Arc<dyn Bus>) -> bool {
        self.shared.bus.set(bus).is_ok()
    }

    /// The bus to the other nodes: [`LocalBus`] on a single node.
    pub fn bus(&self) -> &dyn Bus {
        self.shared.bus.get().map_or(&LocalBus, |bus| bus.as_ref())
    }

    /// Claims `name` cluster-wide before [`Hub::register_with`], so that a
    /// name online on another node is refused at the handshake (409).
    ///
    /// # Errors
    /// [`RegisterError::NameTaken`] when the name is online here or elsewhere.
    pub async fn claim(&self, name: &ClientName) -> Result<(), RegisterError> {
        let local = self.state().clients.contains_key(name);
        if local {
            return Err(RegisterError::NameTaken(name.to_string()));
        }
        let shared = self.shared.store.get().filter(|store| store.shares_inboxes());
        if shared.is_some() && !self.bus().healthy() {
            // Without a claim this node may not number the name's deliveries.
            return Err(RegisterError::Unavailable(
                "cluster bus unavailable: cannot take the name over; retry later".into(),
            ));
        }
        let claim = self.bus().claim(name);
        claim.await?;
        // --- issue 7 in cluster mode: take the name's shared inbox over.
        if let Some(store) = shared {
            match store.load(name.as_str()).await {
                Ok(loaded) => self.take_over(name, store, loaded),
                Err(error) => {
                    self.bus().release(name);
                    return Err(RegisterError::Unavailable(format!(
                        "cannot load the stored messages of {name}: {error}; retry later"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Hands a message for a client not on this node to the bus.
    fn send_remote(
        &self,
        to: &str,
        offline: RouteError,
        message: impl FnOnce(ClientName) -> Message,
    ) -> Result<(), RouteError> {
        let bus = self.bus();
        if !bus.is_clustered() {
            return Err(offline);
        }
        let Ok(name) = self.client_name(to) else { return Err(offline) };
        bus.send_direct(to, &message(name))?;
        Ok(())
    }

    /// The names of the clients on this node, sorted.
    pub fn local_names(&self) -> Vec<ClientName> {
        sorted_names(Some(self.state().clients.keys()))
    }

    /// Bytes waiting in the outboxes of this node's clients (`/metrics`):
    /// one atomic load per client under the lock, no snapshot.
    pub fn queued_bytes(&self) -> usize {
        self.state().clients.values().map(|slot| slot.client.outbox.queued_bytes()).sum()
    }

    /// A snapshot of the clients on this node, sorted by name.
    pub fn local_clients(&self) -> Vec<ClientInfo> {
        let state = self.state();
        let mut clients: Vec<ClientInfo> = state.clients.values().map(Self::info).collect();
        drop(state);
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        clients
    }

    /// Publishes an event from another node to this node's operator feed.
    pub fn emit_local(&self, event: HubEvent) {
        let _ = self.shared.events.send(event);
    }

    /// Delivers a message from another node to the local client `to`.
    pub fn deliver_from_cluster(&self, to: &str, body: Body) {
        if let Some(inbox) = self.inbox_of(to) {
            let message = Arc::new(Message::new(body));
            if let Err(error) = self.deliver_kept(&inbox, message, Origin::OPERATOR) {
                tracing::warn!(%to, %error, "a message from another node was not delivered");
            }
        }
    }

    /// Delivers a broadcast from another node to every local client.
    pub fn broadcast_from_cluster(&self, body: Body) {
        self.deliver_to_everyone(&Arc::new(Message::new(body)));
    }

    /// Delivers an operator's broadcast to every local client, kept like
    /// any operator message (one stored record for all of them). Returns
    /// how many took it.
    fn deliver_to_everyone(&self, message: &Arc<Message>) -> usize {
        let record = self.kept_record(message);
        let state = self.state();
        let mut delivered = 0;
        prefetch::for_each_client(state.clients.values().map(|slot| &slot.client), |client| {
            let message = Arc::clone(message);
            let kept = self.deliver_kept_as(&client.inbox, message, &record, Origin::OPERATOR);
            delivered += usize::from(kept.is_ok());
        });
        drop(state);
        delivered
    }

    /// Delivers a room publish from another node to the room's local members.
    pub fn room_from_cluster(&self, room: &str, body: Body) {
        let state = self.state();
        let Some(entry) = state.rooms.get(room) else { return };
        if entry.members.is_empty() {
            return;
        }
        let message = Arc::new(Message::new(body));
        prefetch::for_each_client(entry.members.values(), |member| {
            // A member whose outbox overflowed is being closed.
            let _ = member.deliver(&message);
        });
    }

    /// Disconnects a local client at another node's request.
    pub fn kick_from_cluster(&self, name: &str, reason: String) {
        if let Ok(client) = self.lookup(name) {
            tracing::info!(%name, %reason, "disconnecting client at the cluster's request");
            client.outbox.closer().close(CloseReason::Kicked(reason));
        }
    }

    /// Tells local presence watchers that a client on another node joined or
    /// left (a room, or the cluster when `room` is `None`).
    pub fn remote_presence(
        &self,
        room: Option<&RoomName>,
        name: &ClientName,
        event: PresenceEvent,
    ) {
        let message = Arc::new(Message::new(Body::Presence {
            room: room.cloned(),
            name: name.clone(),
            event,
        }));
        let state = self.state();
        let watchers = match room {
            None => Some(&state.presence),
            Some(room) => state.rooms.get(room).map(|entry| &entry.watchers),
        };
        for watcher in watchers.into_iter().flat_map(HashMap::values) {
            let _ = watcher.deliver(&message);
        }
    }

    // --- end cluster (issue 8) ------------------------------------------------

    /// The clients connected to this node, for a sweep over them (the
    /// keepalive): a snapshot, so that the sweep holds no lock.
    pub fn local_sessions(&self) -> Vec<Arc<Client>> {
        self.state().clients.values().map(|slot| slot.client.clone()).collect()
    }

    /// Asks every session to close with `reason`, and refuses registrations
    /// from now on ([`RegisterError::ShuttingDown`]): the server's shutdown.
    /// Under the one lock, so that no session slips in between.
    pub fn close_all(&self, reason: CloseReason) {
        let mut state = self.state();
        state.closed = true;
        for slot in state.clients.values() {
            slot.client.outbox.closer().close(reason.clone());
        }
    }
}

fn sorted_names<'a, T: Clone + Ord + 'a>(names: Option<impl Iterator<Item = &'a T>>) -> Vec<T> {
    let mut names: Vec<T> = names.map(|it| it.cloned().collect()).unwrap_or_default();
    names.sort();
    names
}

/// A client's claim on its name. Dropping it (or calling
/// [`Registration::leave`]) removes the client from the hub, its rooms and
/// presence, and emits its leave event.
#[derive(Debug)]
pub struct Registration {
    hub: Hub,
    client: Arc<Client>,
    left: bool,
}

impl Registration {
    /// The registered client.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The hub it is registered with.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Unregisters now, recording why. Idempotent.
    pub fn leave(&mut self, reason: &CloseReason) {
        if !self.left {
            self.left = true;
            self.hub.unregister(&self.client, reason);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let reason = self
            .client
            .outbox
            .closer()
            .reason()
            .cloned()
            .unwrap_or_else(|| CloseReason::Dropped("session ended".into()));
        self.leave(&reason);
    }
}

#[cfg(test)]
mod tests;
