//! The background task: the only owner of the socket.
//!
//! It drains the send queue into the socket (bounded by the in-flight window),
//! turns frames into [`Event`]s, remembers rooms (with the last room `rseq`
//! seen) and presence subscriptions, and reconnects with backoff when the
//! connection drops. In client-ack mode it keeps the last delivery `seq`,
//! acknowledges deliveries with cumulative `ack`s and resumes after that
//! `seq` on reconnect; messages the hub had not answered are re-sent with
//! their ids after the rooms are re-joined. It talks to the handles through
//! bounded channels only, so memory stays bounded whatever the caller or the
//! hub does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::binary::{self, encode_outgoing};
use switchboard_protocol::close;
use switchboard_protocol::v1::{ErrorCode, Incoming, Request, Since};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Shared;
use crate::connection::{open, Endpoint, Socket};
use crate::error::ConnectError;
use crate::event::{Event, State, Welcome};
use crate::options::{ClientBuilder, ReconnectPolicy};
use crate::outbound::{Outbound, Target};

/// Most frames written between two flushes: many per syscall under load,
/// without delaying the first one much.
const MAX_BATCH: usize = 64;

/// How long reconnection keeps trying through 409 (name taken): after a
/// silent network failure the hub holds our old session until its keepalive
/// notices (60 s with its defaults), so a conflict is expected for a while.
const STALE_SESSION_GRACE: Duration = Duration::from_secs(90);

/// How long a requested close waits for the hub's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Client-ack mode: an `ack` goes out after this many deliveries...
const ACK_EVERY: u64 = 64;

/// ...or this long after the first delivery it covers, whichever is first.
const ACK_DELAY: Duration = Duration::from_millis(50);

/// What a handle asks the task to do, in queue order.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message.
    Send(Outbound),
    /// Answer once everything before it was sent and answered.
    Flush(oneshot::Sender<()>),
}

/// What an unanswered request changes when it is refused.
#[derive(Debug)]
enum Effect {
    Join(String),
    Subscribe(Option<String>),
    None,
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct Pending {
    /// Send order, to report losses and re-send in order.
    order: u64,
    /// What a refusal undoes.
    effect: Effect,
    /// The frame, for messages re-sent after a reconnect.
    retry: Option<Message>,
}

/// A room we are in, as re-joined after a reconnect.
#[derive(Debug, Default)]
struct RoomState {
    /// The `since` of our join, if any.
    since: Option<Since>,
    /// The `rseq` of the last message from the room's history we got.
    last_rseq: Option<u64>,
}

impl RoomState {
    /// Where a re-join picks up: after the last history message we got,
    /// else where our own join started.
    fn rejoin_since(&self) -> Option<Since> {
        self.last_rseq.map(Since::Rseq).or(self.since)
    }
}

/// What sending a request changes in the state renewed after a reconnect.
enum Change {
    Join(String, Option<Since>),
    Leave(String),
    Subscribe(Option<String>),
    Unsubscribe(Option<String>),
    None,
}

/// How a session ended.
enum End {
    /// Asked to close, or every handle is gone.
    Close,
    /// The connection was lost.
    Lost { code: Option<u16>, reason: String },
}

pub(crate) struct Task {
    endpoint: Endpoint,
    policy: ReconnectPolicy,
    connect_timeout: Duration,
    keepalive: Option<Duration>,
    max_in_flight: usize,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    close: watch::Receiver<bool>,
    shared: Arc<Shared>,
    /// Requests sent and not yet answered, by id.
    in_flight: HashMap<String, Pending>,
    sent: u64,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Rooms to re-join after a reconnect.
    rooms: BTreeMap<String, RoomState>,
    /// Presence subscriptions to renew after a reconnect.
    presence: BTreeSet<Option<String>>,
    /// The hub's frame size limit, from the last welcome.
    max_message_bytes: usize,
    /// Client-ack mode: resume after `last_seq` and acknowledge deliveries.
    acks: bool,
    /// Re-send unanswered messages after a reconnect.
    retry_sends: bool,
    /// The highest delivery `seq` reported (across sessions in client-ack
    /// mode, else in this session); anything not above it is dropped.
    last_seq: u64,
    /// The highest `seq` the hub knows we have: our last ack or resume point.
    acked_seq: u64,
    /// Deliveries since the last ack.
    unacked: u64,
    /// True while the [`ACK_DELAY`] timer runs.
    ack_due: bool,
    /// This session has sent an ack (to recognise a hub that does not know them).
    acks_sent: bool,
}

impl Drop for Task {
    fn drop(&mut self) {
        // Also on panic: `Client::close` waits for this state.
        self.shared.state.send_replace(State::Closed);
    }
}

async fn close_requested(close: &mut watch::Receiver<bool>) {
    // The sender lives in `Shared`, which the task holds: this never errors.
    let _ = close.wait_for(|requested| *requested).await;
}

impl Task {
    pub(crate) fn new(
        endpoint: Endpoint,
        options: &ClientBuilder,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
    ) -> Task {
        Task {
            endpoint,
            policy: options.reconnect.clone(),
            connect_timeout: options.connect_timeout,
            keepalive: options.keepalive,
            max_in_flight: options.max_in_flight,
            commands,
            events,
            close: shared.close.subscribe(),
            shared,
            in_flight: HashMap::new(),
            sent: 0,
            flush_waiters: Vec::new(),
            rooms: BTreeMap::new(),
            presence: BTreeSet::new(),
            max_message_bytes: usize::MAX,
            acks: options.acks,
            retry_sends: options.retry_sends,
            last_seq: 0,
            acked_seq: 0,
            unacked: 0,
            ack_due: false,
            acks_sent: false,
        }
    }

    pub(crate) async fn run(mut self, mut socket: Socket, welcome: Welcome) {
        self.max_message_bytes = welcome.limits.max_message_bytes;
        self.emit(Event::StateChanged(State::Connected)).await;
        self.emit(Event::Connected(welcome)).await;
        loop {
            match self.session(&mut socket).await {
                End::Close => {
                    self.close_socket(socket).await;
                    break;
                }
                End::Lost { code, reason } => {
                    tracing::debug!(?code, %reason, "connection lost");
                    let keep_messages = self.retry_sends && code != Some(close::KICKED);
                    self.lose_in_flight(keep_messages).await;
                    self.emit(Event::Disconnected { code, reason }).await;
                    if code == Some(close::KICKED) {
                        break;
                    }
                    match self.reconnect().await {
                        Some(next) => socket = next,
                        None => break,
                    }
                }
            }
        }
        self.lose_in_flight(false).await;
        self.set_state(State::Closed).await;
    }

    async fn set_state(&mut self, state: State) {
        if self.shared.state.send_replace(state) != state {
            self.emit(Event::StateChanged(state)).await;
        }
    }

    /// Hands `event` to the consumer, waiting for room; gives up when a close
    /// is requested so a consumer that stopped reading cannot block closing.
    async fn emit(&mut self, event: Event) {
        if self.events.is_closed() {
            return;
        }
        tokio::select! {
            biased;
            _ = self.events.send(event) => {}
            () = close_requested(&mut self.close) => {}
        }
    }

    async fn session(&mut self, socket: &mut Socket) -> End {
        let mut closed_with: Option<(u16, String)> = None;
        // The hub pings idle clients too, so silence means a dead connection.
        let keepalive = self.keepalive.unwrap_or(Duration::MAX);
        let period = (keepalive.min(Duration::from_secs(3600)) / 2).max(Duration::from_millis(10));
        let mut check = tokio::time::interval(period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        let mut pinged = false;
        let ack_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_timer);
        loop {
            let window_open = self.in_flight.len() < self.max_in_flight;
            tokio::select! {
                biased;
                () = close_requested(&mut self.close) => return End::Close,
                () = &mut ack_timer, if self.ack_due => {
                    if let Err(error) = self.send_ack(socket).await {
                        return lost(closed_with, error.to_string());
                    }
                }
                frame = socket.next() => {
                    last_heard = tokio::time::Instant::now();
                    pinged = false;
                    match frame {
                        Some(Ok(Message::Text(text))) => self.on_text(&text).await,
                        Some(Ok(Message::Binary(data))) => self.on_binary(data).await,
                        Some(Ok(Message::Close(frame))) => {
                            // tungstenite answers it; the stream ends next.
                            closed_with = Some(frame.map_or((close::NORMAL, String::new()), |f| {
                                (u16::from(f.code), f.reason.to_string())
                            }));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(error)) => return lost(closed_with, error.to_string()),
                        None => return lost(closed_with, "connection closed".into()),
                    }
                }
                command = self.commands.recv(), if window_open => match command {
                    None => return End::Close,
                    Some(command) => {
                        if let Err(error) = self.on_command(socket, command).await {
                            return lost(closed_with, error.to_string());
                        }
                    }
                },
                _ = check.tick(), if self.keepalive.is_some() => {
                    let idle = last_heard.elapsed();
                    if idle >= keepalive.saturating_mul(2) {
                        let reason = format!("no answer from the hub for {}s", idle.as_secs());
                        return End::Lost { code: None, reason };
                    }
                    if idle >= keepalive && !pinged {
                        pinged = true;
                        if let Err(error) = socket.send(Message::Ping(Bytes::new())).await {
                            return lost(closed_with, error.to_string());
                        }
                    }
                }
            }
            if self.unacked >= ACK_EVERY {
                if let Err(error) = self.send_ack(socket).await {
                    return lost(closed_with, error.to_string());
                }
            } else if self.unacked > 0 && !self.ack_due {
                self.ack_due = true;
                ack_timer.as_mut().reset(tokio::time::Instant::now() + ACK_DELAY);
            }
        }
    }

    /// Client-ack mode: acknowledges every delivery up to `last_seq`, if the
    /// hub does not know it has them yet.
    async fn send_ack(
        &mut self,
        socket: &mut Socket,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.unacked = 0;
        self.ack_due = false;
        if !self.acks || self.last_seq <= self.acked_seq {
            return Ok(());
        }
        let ack = Request::Ack { id: None, seq: self.last_seq };
        self.acked_seq = self.last_seq;
        self.acks_sent = true;
        // Serialising a Request cannot fail: only strings, numbers and bools.
        socket.send(Message::text(serde_json::to_string(&ack).unwrap_or_default())).await
    }

    /// A delivery numbered `seq` arrived: true when it is new, false when
    /// it is not after the last one reported (a repeat: drop it).
    fn accept(&mut self, seq: u64) -> bool {
        if seq <= self.last_seq {
            // A conforming hub never sends one: make it visible.
            tracing::warn!(seq, last_seq = self.last_seq, "dropping a delivery not after the last");
            return false;
        }
        self.last_seq = seq;
        self.shared.last_seq.store(seq, Ordering::Relaxed);
        if self.acks {
            self.unacked += 1;
        }
        true
    }

    /// A new session started: the hub knows what we resumed after.
    fn start_session(&mut self) {
        if !self.acks {
            // Without resume, seq is only ordered within a session for all
            // we know (hubs before resume restart it at 1).
            self.last_seq = 0;
            self.shared.last_seq.store(0, Ordering::Relaxed);
        }
        self.acked_seq = self.last_seq;
        self.unacked = 0;
        self.ack_due = false;
        self.acks_sent = false;
    }

    /// Writes `first` and whatever else is queued (up to [`MAX_BATCH`] and
    /// the in-flight window), then flushes once.
    async fn on_command(
        &mut self,
        socket: &mut Socket,
        first: Command,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let mut next = Some(first);
        let mut batch = 0;
        while let Some(command) = next.take() {
            match command {
                Command::Send(message) => {
                    if let Some(frame) = self.prepare(message).await {
                        socket.feed(frame).await?;
                        batch += 1;
                    }
                }
                Command::Flush(done) => {
                    if self.in_flight.is_empty() {
                        let _ = done.send(());
                    } else {
                        self.flush_waiters.push(done);
                    }
                }
            }
            if batch < MAX_BATCH && self.in_flight.len() < self.max_in_flight {
                next = self.commands.try_recv().ok();
            }
        }
        socket.flush().await
    }

    /// Encodes a message and records what it changes; `None` when it is too
    /// large for the hub (reported as an error instead of being sent, since
    /// the hub would close the connection with 1009).
    async fn prepare(&mut self, message: Outbound) -> Option<Message> {
        let id = message.id().unwrap_or_default().to_owned();
        let retried = self.retry_sends && message.is_retried();
        let (frame, change) = match message {
            Outbound::Request(request) => {
                let change = match &request {
                    Request::Join { room, since, .. } => Change::Join(room.clone(), *since),
                    Request::Leave { room, .. } => Change::Leave(room.clone()),
                    Request::Subscribe { room, .. } => Change::Subscribe(room.clone()),
                    Request::Unsubscribe { room, .. } => Change::Unsubscribe(room.clone()),
                    _ => Change::None,
                };
                // Serialising a Request cannot fail: only strings and bools.
                let text = serde_json::to_string(&request).unwrap_or_default();
                (Message::text(text), change)
            }
            Outbound::Binary { target, payload, .. } => {
                let target = match &target {
                    Target::Client(name) => binary::Target::Client(name),
                    Target::Room(room) => binary::Target::Room(room),
                };
                (Message::Binary(encode_outgoing(&id, target, &payload)), Change::None)
            }
        };
        let size = frame.len();
        if size > self.max_message_bytes {
            let message = format!(
                "message of {size} bytes exceeds the hub's limit of {} bytes; not sent",
                self.max_message_bytes
            );
            self.emit(Event::Error { id: Some(id), code: ErrorCode::TooLarge, message }).await;
            return None;
        }
        // Remembered as sent, so a reconnect renews exactly what was asked for.
        let effect = match change {
            Change::Join(room, since) => {
                let state = self.rooms.entry(room.clone()).or_default();
                if since.is_some() {
                    // A join from a point: the history replay starts there.
                    *state = RoomState { since, last_rseq: None };
                }
                Effect::Join(room)
            }
            Change::Subscribe(room) => {
                self.presence.insert(room.clone());
                Effect::Subscribe(room)
            }
            Change::Leave(room) => {
                self.rooms.remove(&room);
                Effect::None
            }
            Change::Unsubscribe(room) => {
                self.presence.remove(&room);
                Effect::None
            }
            Change::None => Effect::None,
        };
        if !id.is_empty() {
            self.sent += 1;
            let retry = retried.then(|| frame.clone());
            self.in_flight.insert(id, Pending { order: self.sent, effect, retry });
        }
        Some(frame)
    }

    /// The hub answered `id`: it is no longer in flight.
    fn answered(&mut self, id: Option<&str>, refused: bool) {
        let Some(id) = id else { return };
        if let Some(Pending { effect, .. }) = self.in_flight.remove(id) {
            if refused {
                match effect {
                    Effect::Join(room) => {
                        self.rooms.remove(&room);
                    }
                    Effect::Subscribe(room) => {
                        self.presence.remove(&room);
                    }
                    Effect::None => {}
                }
            }
        }
        if self.in_flight.is_empty() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    async fn on_text(&mut self, text: &str) {
        let incoming = match Incoming::parse(text) {
            Ok(incoming) => incoming,
            Err(error) => {
                // A newer hub may send types this version does not know.
                tracing::debug!(%error, "ignoring a frame this client does not understand");
                return;
            }
        };
        if let Some(seq) = incoming.seq() {
            if !self.accept(seq) {
                return;
            }
        }
        let event = match incoming {
            Incoming::Welcome { .. } => return,
            Incoming::Dm { seq, ts, from, to, text } => Event::Direct { seq, ts, from, to, text },
            Incoming::Room { seq, ts, room, rseq, from, text } => {
                if let (Some(rseq), Some(state)) = (rseq, self.rooms.get_mut(&room)) {
                    // The last one, not the largest: a hub that lost the
                    // room's history (ephemeral, restarted) numbers anew.
                    state.last_rseq = Some(rseq);
                }
                Event::Room { seq, ts, room, rseq, from, text }
            }
            Incoming::Delivered { seq, ts, id, to } => Event::Delivered { seq, ts, id, to },
            Incoming::Server { seq, ts, text, broadcast } => {
                Event::Server { seq, ts, text, broadcast }
            }
            Incoming::Presence { seq, ts, room, name, event } => {
                Event::Presence { seq, ts, room, name, event }
            }
            Incoming::Ack { id, status } => {
                self.answered(Some(&id), false);
                Event::Ack { id, status }
            }
            Incoming::Error { id: None, code: ErrorCode::UnknownType, message }
                if self.acks && self.acks_sent =>
            {
                // Only our acks go out without an id: this hub predates them.
                tracing::warn!(%message, "the hub does not know acks; resume is off");
                self.acks = false;
                self.unacked = 0;
                self.ack_due = false;
                return;
            }
            Incoming::Error { id, code, message } => {
                self.answered(id.as_deref(), true);
                Event::Error { id, code, message }
            }
            Incoming::Clients { id, clients } => {
                self.answered(id.as_deref(), false);
                Event::Clients { id, clients }
            }
            Incoming::Members { id, room, members } => {
                self.answered(id.as_deref(), false);
                Event::Members { id, room, members }
            }
            Incoming::Pong { id } => {
                self.answered(id.as_deref(), false);
                Event::Pong { id }
            }
        };
        self.emit(event).await;
    }

    async fn on_binary(&mut self, data: Bytes) {
        let event = match binary::parse_incoming(&data) {
            Ok(parsed) if !self.accept(parsed.seq) => return,
            Ok(parsed) => Event::Binary {
                seq: parsed.seq,
                ts: parsed.ts,
                from: parsed.from.to_owned(),
                room: parsed.room.map(str::to_owned),
                // Share the frame's allocation instead of copying the payload.
                payload: data.slice_ref(parsed.payload),
            },
            Err(error) => {
                tracing::debug!(%error, "ignoring a binary frame with a bad header");
                return;
            }
        };
        self.emit(event).await;
    }

    /// Reports unanswered requests as lost, except, with `keep_messages`,
    /// the messages re-sent after a reconnect; releases flush waiters when
    /// nothing is left in flight.
    async fn lose_in_flight(&mut self, keep_messages: bool) {
        let mut lost: Vec<(u64, String)> = Vec::new();
        self.in_flight.retain(|id, pending| {
            let keep = keep_messages && pending.retry.is_some();
            if !keep {
                lost.push((pending.order, id.clone()));
            }
            keep
        });
        lost.sort_unstable();
        if self.in_flight.is_empty() {
            for waiter in self.flush_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        for (_, id) in lost {
            self.emit(Event::Lost { id }).await;
        }
    }

    /// Tries to reconnect per the policy; `None` when giving up or closing.
    async fn reconnect(&mut self) -> Option<Socket> {
        self.set_state(State::Reconnecting).await;
        let mut attempt = 0u32;
        let lost_at = tokio::time::Instant::now();
        loop {
            attempt = attempt.saturating_add(1);
            // With every handle gone nobody can use a new connection.
            if !self.policy.allows(attempt) || self.commands.is_closed() {
                return None;
            }
            let delay = self.policy.delay(attempt);
            self.emit(Event::Reconnecting { attempt, delay }).await;
            let endpoint = &self.endpoint;
            let timeout = self.connect_timeout;
            let resume = self.acks.then_some(self.last_seq);
            let opened = tokio::select! {
                biased;
                () = close_requested(&mut self.close) => return None,
                opened = async {
                    tokio::time::sleep(delay).await;
                    open(endpoint, timeout, resume).await
                } => opened,
            };
            if opened.is_ok() {
                self.start_session();
            }
            let failure = match opened {
                Ok((mut socket, welcome)) => match self.renew(&mut socket).await {
                    Ok(()) => {
                        self.max_message_bytes = welcome.limits.max_message_bytes;
                        self.set_state(State::Connected).await;
                        self.emit(Event::Connected(welcome)).await;
                        return Some(socket);
                    }
                    Err(error) => (error.to_string(), false),
                },
                Err(ConnectError::Rejected { status: 409, reason })
                    if lost_at.elapsed() < STALE_SESSION_GRACE =>
                {
                    (format!("{reason} (HTTP 409; the hub may still hold our old session)"), false)
                }
                Err(error) => (error.with_causes(), error.is_permanent()),
            };
            let (error, permanent) = failure;
            tracing::debug!(attempt, %error, "reconnect attempt failed");
            self.emit(Event::ConnectFailed { attempt, error }).await;
            if permanent {
                return None;
            }
        }
    }

    /// Re-joins rooms (from the last history message seen in each) and
    /// renews presence subscriptions on a new session, then re-sends the
    /// messages the hub had not answered, with their ids, in their original
    /// order. Joins and subscriptions carry no id: a refusal still arrives
    /// as an error event.
    async fn renew(
        &mut self,
        socket: &mut Socket,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let joins = self.rooms.iter().map(|(room, state)| Request::Join {
            id: None,
            room: room.clone(),
            since: state.rejoin_since(),
        });
        let subscriptions =
            self.presence.iter().map(|room| Request::Subscribe { id: None, room: room.clone() });
        for request in joins.chain(subscriptions) {
            let text = serde_json::to_string(&request).unwrap_or_default();
            socket.feed(Message::text(text)).await?;
        }
        let mut retries: Vec<(u64, Message)> = self
            .in_flight
            .values()
            .filter_map(|pending| pending.retry.clone().map(|frame| (pending.order, frame)))
            .collect();
        retries.sort_unstable_by_key(|(order, _)| *order);
        if !retries.is_empty() {
            tracing::debug!(count = retries.len(), "re-sending unanswered messages");
        }
        for (_, frame) in retries {
            socket.feed(frame).await?;
        }
        socket.flush().await
    }

    /// The close handshake on request: code 1000, then wait briefly for the hub's reply.
    async fn close_socket(&mut self, mut socket: Socket) {
        self.set_state(State::Closing).await;
        // What we got so far stays acknowledged: not replayed next time.
        let _ = self.send_ack(&mut socket).await;
        let frame = CloseFrame { code: CloseCode::Normal, reason: "client closed".into() };
        let _ = socket.close(Some(frame)).await;
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
        self.emit(Event::Disconnected {
            code: Some(close::NORMAL),
            reason: "client closed".into(),
        })
        .await;
    }
}

fn lost(closed_with: Option<(u16, String)>, error: String) -> End {
    match closed_with {
        Some((code, reason)) => End::Lost { code: Some(code), reason },
        None => End::Lost { code: None, reason: error },
    }
}
