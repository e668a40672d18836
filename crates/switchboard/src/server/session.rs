//! One WebSocket session: a reader that routes what the client sends, and a
//! single writer that owns the socket's sending half.
//!
//! ```text
//!            ┌────────── reader (this task) ──────────┐
//!  socket ──►│ frames → rate limit → dispatch → Hub    │
//!            └─────────────────────────────────────────┘
//!            ┌────────── writer (spawned) ─────────────┐
//!  socket ◄──│ Outbox → seq stamp → feed… flush; pings │
//!            └─────────────────────────────────────────┘
//! ```
//!
//! Either side can end the session through the client's [`Closer`]; the
//! writer is the only one that sends the close frame. Shutdown comes the
//! same way (the server closes every client with
//! [`CloseReason::Shutdown`]): the writer flushes what is queued (bounded by
//! the drain timeout) and closes with 1001, and the reader reads on for the
//! peer's answer until shortly after the writer has finished.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use switchboard_protocol::close;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message as Frame, Utf8Bytes};

use super::contention;
use super::dispatch;
use super::frame_clock::{FrameClock, FrameTime};
use super::metrics::{self, InCounts, InKind, OutCounts, OutKind};
use crate::config::Config;
use crate::hub::rate::{Rate, TokenBucket};
use crate::hub::{
    entry_message, Client, CloseReason, CloseStage, Closer, Hub, OutboxReceiver, Outgoing,
    Protocol, RecipientCache, Registration, Replay,
};

/// How long the reader waits for the client's close frame after ours.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long the writer tries to get a close frame out to a client that has
/// stopped reading before giving up and dropping the connection.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Most frames written between two flushes: bounds the latency a large
/// backlog adds to the first frame of a batch.
const MAX_BATCH: usize = 256;

/// A routed frame also consumes one budget unit per this many payload bytes.
/// Without it, one turn of a reader could route 128 large frames (4 MiB of
/// 32 KiB messages, read 64 KiB per syscall by `ReadAhead`) into a
/// recipient's outbox before its writer runs once, and overflow a limit
/// that the recipient is in fact keeping up with.
const BUDGET_BYTES_PER_UNIT: usize = 4096;

/// Most turns a busy writer yields before it writes again.
const GATHER_TURNS: u32 = 16;

/// A busy writer stops gathering once this many bytes are queued.
const GATHER_BYTES: usize = 64 * 1024;

/// The slice of configuration a session needs.
#[derive(Debug, Clone)]
pub(crate) struct SessionSettings {
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_message_bytes: usize,
    /// The per-connection limits, as token-bucket rates.
    pub(crate) message_rate: Rate,
    pub(crate) byte_rate: Rate,
    pub(crate) rate_strikes: u32,
}

impl SessionSettings {
    pub(crate) fn from_config(config: &Config) -> SessionSettings {
        let messages = f64::from(config.rate_messages_per_sec);
        let bytes = config.rate_bytes_per_sec as f64;
        SessionSettings {
            ping_interval: config.ping_interval(),
            pong_timeout: config.pong_timeout(),
            drain_timeout: config.drain_timeout(),
            max_message_bytes: config.max_message_bytes,
            message_rate: Rate::new(messages, messages.max(1.0)),
            // The byte bucket must hold at least one maximal message.
            byte_rate: Rate::new(bytes, bytes.max(config.max_message_bytes as f64)),
            rate_strikes: config.rate_strikes,
        }
    }
}

/// Starts a session: spawns its writer now and returns the reader, which
/// runs the session to its end and then unregisters the client.
///
/// A plain function rather than an `async fn`: an async fn's future keeps
/// its arguments (the unsplit socket among them) for its whole life, and
/// this future lives as long as the connection (issue 6, idle memory).
pub(crate) fn run<S>(
    socket: WebSocketStream<S>,
    mut registration: Registration,
    outbox: OutboxReceiver,
    settings: Arc<SessionSettings>,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client = registration.client().clone();
    let hub = registration.hub().clone();
    metrics::global().connected();
    let (sink, stream) = socket.split();
    let finished = client.clone();
    let writer = tokio::spawn(
        write_loop(
            sink,
            outbox,
            Written { hub: hub.clone(), client: client.clone(), stored_upto: 0 },
            settings.clone(),
        )
        // However the writer ends, the reader stops waiting for it.
        .map(move |()| finished.outbox().closer().finish()),
    );
    async move {
        let reason = read_loop(stream, &mut registration, &hub, &client, &settings).await;
        client.outbox().closer().close(reason);
        let reason = client
            .outbox()
            .closer()
            .reason()
            .cloned()
            .unwrap_or(CloseReason::Dropped("unknown".into()));
        metrics::global().disconnected(&reason);
        registration.leave(&reason);
        let _ = writer.await;
        // After the writer, however it ended (a panic included): the sweeper
        // no longer sees this client, so nobody else would clear its mark.
        contention::leave(client.liveness());
    }
}

async fn read_loop<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    registration: &mut Registration,
    hub: &Hub,
    client: &Arc<Client>,
    settings: &SessionSettings,
) -> CloseReason
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let closer = client.outbox().closer();
    let mut clock = FrameClock::new();
    let start = clock.frame_time().monotonic_ns;
    let (message_rate, byte_rate) = (&settings.message_rate, &settings.byte_rate);
    let mut messages = TokenBucket::full(message_rate, start);
    let mut bytes = TokenBucket::full(byte_rate, start);
    let rate_limited = !(message_rate.is_unlimited() && byte_rate.is_unlimited());
    let mut strikes = 0u32;
    // Set once the session is closing: how long to wait for the peer's
    // close frame. Boxed, like the other cold-path futures here, so that the
    // session's task stays small while it is idle (issue 6).
    let mut linger: Option<Pin<Box<Sleep>>> = None;
    // Set while the writer drains before its close frame (a shutdown, a
    // kick): the linger, sized for the whole drain, then shrinks to the
    // close handshake's once the writer has finished.
    let mut draining = false;
    // Created once, not per frame, and re-armed in place for the writer's
    // finish while draining. Polled only when the socket has nothing ready,
    // to register for the wake-up; while frames flow, the close stage is
    // read from its atomic per frame (polling the future takes a mutex).
    // Shutdown comes the same way: the server closes every client.
    let mut closed = std::pin::pin!(closer.reached(CloseStage::Requested));
    let mut owed_budget = 0usize;
    let mut counts = InCounts::default();
    let mut recipient = RecipientCache::default();
    let mut until_sample = metrics::SAMPLE_EVERY;
    let reason = loop {
        if owed_budget > 0 {
            // Charge tokio's coop budget for the frame just routed: a reader
            // with a backlog yields after a turn of ~128 small frames (~42
            // while the workers are contended, fewer large ones), so a light
            // client's frame waits for a short turn of each busy session
            // (issue 6, rtt under load; see `contention`), and a recipient's
            // writer runs between turns. A reader that drains its socket
            // never yields.
            for _ in 0..owed_budget {
                clock.watch(tokio::task::coop::consume_budget()).await;
            }
            owed_budget = 0;
        }
        // Issue 7: when the store falls behind, stop reading (TCP pushes
        // back on the sender) instead of queueing without bound.
        if let Some(store) = hub.store().filter(|store| store.congested()) {
            tokio::select! {
                () = Box::pin(store.uncongested()) => {}
                () = closed.as_mut(), if linger.is_none() => {}
            }
            clock.waited();
        }
        if linger.is_none() {
            if closer.is_closed() {
                // Free the name and stop routing to this client now; the
                // close handshake below only concerns the socket.
                leave_now(registration);
                let drains = !closer.has_reached(CloseStage::Finished)
                    && closer.reason().is_some_and(|reason| !reason.discards_queue());
                let wait = if drains {
                    // The writer drains, then sends the close frame; keep
                    // reading for the reply.
                    draining = true;
                    closed.set(closer.reached(CloseStage::Finished));
                    settings.drain_timeout + CLOSE_LINGER
                } else {
                    CLOSE_LINGER
                };
                linger = Some(Box::pin(tokio::time::sleep(wait)));
            }
        } else if draining && closer.has_reached(CloseStage::Finished) {
            // The writer is done: a peer that does not answer holds the
            // connection only as long as any close.
            draining = false;
            linger = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
        }
        let frame = tokio::select! {
            biased;
            () = lingered(&mut linger), if linger.is_some() => {
                break closer.reason().cloned().unwrap_or(CloseReason::Shutdown);
            }
            frame = std::future::poll_fn(|cx| clock.note(stream.poll_next_unpin(cx))) => frame,
            // Reached only when no frame is ready; the checks above then act.
            () = closed.as_mut(), if linger.is_none() || draining => continue,
        };
        let frame = match frame {
            None => {
                break closer.reason().cloned().unwrap_or_else(|| {
                    CloseReason::Dropped("connection closed without a close frame".into())
                })
            }
            Some(Err(error)) => {
                let reason = reason_for(error, settings.max_message_bytes);
                if linger.is_some() || reason.discards_queue() {
                    break closer.reason().cloned().unwrap_or(reason);
                }
                tracing::warn!(name = %client.name(), reason = %reason.text(), "closing session on bad input");
                hub.emit(crate::hub::EventKind::Error {
                    name: Some(client.name().clone()),
                    message: reason.text(),
                });
                closer.close(reason);
                continue;
            }
            Some(Ok(frame)) => frame,
        };
        client.liveness().touch();
        if linger.is_some() {
            if let Frame::Close(frame) = frame {
                // Our close was answered; the stream ends next.
                let _ = frame;
            }
            continue;
        }
        let (text, payload_len) = match &frame {
            Frame::Text(text) => (Some(text.as_str()), text.len()),
            Frame::Binary(data) => (None, data.len()),
            Frame::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                    None => (None, String::new()),
                };
                closer.close(CloseReason::PeerClosed { code, reason });
                leave_now(registration);
                // Keep reading: tungstenite sends our reply on the next poll, then ends.
                linger = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
                continue;
            }
            Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_) => continue,
        };
        client.count_in();
        owed_budget = contention::global().budget_per_frame() + payload_len / BUDGET_BYTES_PER_UNIT;
        let kind = match (&frame, client.protocol()) {
            (Frame::Text(_), Protocol::Classic) => InKind::ClassicText,
            (Frame::Text(_), Protocol::V1) => InKind::V1Text,
            (_, Protocol::Classic) => InKind::ClassicBinary,
            (_, Protocol::V1) => InKind::V1Binary,
        };
        if counts.count(kind, payload_len) {
            metrics::global().add_in(&mut counts);
        }
        let FrameTime { monotonic_ns: now, ts } = clock.frame_time();
        let over = if rate_limited {
            if !messages.try_take(message_rate, 1.0, now) {
                Some(format!("{} messages/s", message_rate.per_sec()))
            } else if !bytes.try_take(byte_rate, payload_len as f64, now) {
                Some(format!("{} bytes/s", byte_rate.per_sec()))
            } else {
                None
            }
        } else {
            None
        };
        if let Some(limit) = over {
            strikes += 1;
            let refused = match &frame {
                Frame::Binary(bytes) => Err(&bytes[..]),
                _ => Ok(text.unwrap_or_default()),
            };
            dispatch::rate_limited(client, refused, &limit);
            if strikes >= settings.rate_strikes.max(1) {
                tracing::warn!(name = %client.name(), "disconnecting client that keeps exceeding its rate limit");
                closer.close(CloseReason::RateLimited);
            }
            continue;
        }
        strikes = 0;
        until_sample -= 1;
        let started = (until_sample == 0).then(Instant::now);
        match (frame, client.protocol()) {
            (Frame::Text(text), Protocol::Classic) => {
                dispatch::classic_text(hub, client, &text, ts, &mut recipient)
            }
            (Frame::Text(text), Protocol::V1) => {
                dispatch::v1_text(hub, client, &text, ts, &mut recipient)
            }
            (Frame::Binary(data), Protocol::V1) => dispatch::v1_binary(hub, client, &data, ts),
            (Frame::Binary(_), Protocol::Classic) => dispatch::classic_binary(client),
            _ => {}
        }
        if let Some(started) = started {
            until_sample = metrics::SAMPLE_EVERY;
            metrics::global().observe_route(started.elapsed().as_secs_f64());
        }
    };
    metrics::global().add_in(&mut counts);
    reason
}

fn leave_now(registration: &mut Registration) {
    let reason = registration.client().outbox().closer().reason().cloned();
    registration.leave(&reason.unwrap_or(CloseReason::Dropped("closing".into())));
}

async fn lingered(linger: &mut Option<Pin<Box<Sleep>>>) {
    match linger {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

fn reason_for(error: tungstenite::Error, limit: usize) -> CloseReason {
    use tungstenite::error::{CapacityError, Error};
    match error {
        Error::Utf8(_) => CloseReason::InvalidUtf8,
        Error::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooBig { limit },
        Error::Capacity(other) => CloseReason::ProtocolError(other.to_string()),
        Error::Protocol(detail) => CloseReason::ProtocolError(detail.to_string()),
        Error::ConnectionClosed | Error::AlreadyClosed => {
            CloseReason::Dropped("connection closed".into())
        }
        other => CloseReason::Dropped(other.to_string()),
    }
}

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Frame>;

/// What the writer has put on the socket, for auto-ack sessions (issue 7):
/// after each flush, stored deliveries up to `stored_upto` are acknowledged.
struct Written {
    hub: Hub,
    client: Arc<Client>,
    stored_upto: u64,
}

impl Written {
    fn closer(&self) -> &Closer {
        self.client.outbox().closer()
    }

    fn protocol(&self) -> Protocol {
        self.client.protocol()
    }

    /// Adds what was fed to `/metrics` and to the client's counter: once
    /// per batch, not per frame.
    fn count_out(&self, counts: &OutCounts) {
        metrics::global().add_out(counts);
        self.client.count_out(counts.deliveries());
    }

    /// Called after a successful flush.
    fn flushed(&mut self) {
        if self.stored_upto > 0 {
            self.hub.written(&self.client, self.stored_upto);
            self.stored_upto = 0;
        }
    }
}

/// The writer. A plain function returning an `async move` block rather than
/// an `async fn`: an async fn's future stores its arguments twice (once as
/// passed, once moved into the body), and this future lives as long as the
/// connection (issue 6, idle memory).
#[allow(clippy::manual_async_fn)] // deliberately not an async fn, see above
fn write_loop<S>(
    mut sink: Sink<S>,
    mut outbox: OutboxReceiver,
    mut written: Written,
    settings: Arc<SessionSettings>,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        // A close (shutdown included: the server closes every client) wakes
        // the writer through `recv`, which then returns `None`; while
        // batches flow, the close flag is checked per batch instead. Pings
        // come through the outbox too (`keepalive`): the writer has nothing
        // else to wait for, and no timer of its own.
        let mut gathering = 0u32;
        // Ends with the drain's deadline, or `None` when nothing more may
        // be written. Not variables set inside: they would live in the
        // future across every idle wait.
        let drain_until = 'run: loop {
            if written.closer().is_closed() {
                break 'run Some(tokio::time::Instant::now() + settings.drain_timeout);
            }
            if gathering > 0 {
                // A busy writer under contention lets its next batch grow: it
                // yields to the other tasks for up to GATHER_TURNS turns, or
                // until GATHER_BYTES are queued. A write syscall costs about as
                // much as routing a few dozen frames; without this, each busy
                // writer writes once per (short) turn of its sender, and those
                // writes lengthen every round of the worker, which is what the
                // reader of a light client waits for (see `contention`). Inline,
                // not a helper future: the writer's future stays its size.
                gathering -= 1;
                if outbox.queued_bytes() < GATHER_BYTES {
                    tokio::task::yield_now().await;
                    continue;
                }
                gathering = 0;
            }
            let Some(item) = outbox.recv().await else {
                if written.closer().is_closed() {
                    break 'run Some(tokio::time::Instant::now() + settings.drain_timeout);
                }
                return;
            };
            // Boxed: a batch is one allocation, and an idle session's task
            // does not carry the batch's state (issue 6). The batch holds a
            // client handle of its own, for the close signal, while it
            // borrows `written` mutably.
            let client = written.client.clone();
            let borrowed = (&mut sink, &mut outbox, &mut written);
            let drain_timeout = settings.drain_timeout;
            let batch = Box::pin(async move {
                let (sink, outbox, written) = borrowed;
                let mut batch = std::pin::pin!(write_batch(sink, outbox, item, written));
                tokio::select! {
                    biased;
                    result = batch.as_mut() => Batch::Written(result),
                    // Reached only while the socket (or, for a replay, the
                    // store) does not take the batch.
                    () = client.outbox().closer().closed() => {
                        let closer = client.outbox().closer();
                        if closer.reason().is_some_and(CloseReason::discards_queue) {
                            return Batch::Abandoned;
                        }
                        // The batch has taken its items off the queue: dropped
                        // now, they would be missing before the later ones the
                        // drain writes, a gap in the client's seqs that its
                        // next ack would cover. It finishes first, in the
                        // drain's time.
                        let deadline = tokio::time::Instant::now() + drain_timeout;
                        match tokio::time::timeout_at(deadline, batch).await {
                            Ok(Ok(_)) => Batch::Closing(deadline),
                            Ok(Err(reason)) => Batch::Written(Err(reason)),
                            Err(_) => Batch::Abandoned,
                        }
                    }
                }
            });
            match batch.await {
                // A socket error (no close frame can go out) or a replay the
                // store could not read (the close frame says 1011).
                Batch::Written(Err(reason)) => {
                    written.closer().close(reason);
                    break 'run None;
                }
                Batch::Written(Ok(Next::Gather)) => gathering = GATHER_TURNS,
                Batch::Written(Ok(Next::Write)) => {}
                // The drain shares the batch's time budget.
                Batch::Closing(deadline) => break 'run Some(deadline),
                Batch::Abandoned => break 'run None,
            }
        };
        let reason = written.closer().reason().cloned().unwrap_or(CloseReason::Shutdown);
        // Nothing queued after an unfinished batch may be written.
        if let Some(deadline) = drain_until.filter(|_| !reason.discards_queue()) {
            // A shutdown or a kick: what is queued goes out first.
            // Boxed with its timer: a `Sleep` inline would size the
            // writer's future, idle or not.
            let drain = drain(&mut sink, &mut outbox, &mut written);
            if Box::pin(tokio::time::timeout_at(deadline, drain)).await.is_err() {
                tracing::warn!(name = %written.client.name(), "drain timeout: closing with messages still queued");
            }
        }
        if !matches!(reason, CloseReason::PeerClosed { .. } | CloseReason::Dropped(_)) {
            Box::pin(send_close(&mut sink, &reason)).await;
        }
    }
}

/// Feeds `first` and whatever else is ready (up to [`MAX_BATCH`]), then
/// flushes once: many frames per write syscall under load, one when idle.
async fn write_batch<S>(
    sink: &mut Sink<S>,
    outbox: &mut OutboxReceiver,
    first: Outgoing,
    written: &mut Written,
) -> Result<Next, CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Counted locally, added to /metrics once per batch.
    let mut counts = OutCounts::default();
    let mut next = Some(first);
    let mut fed = 0;
    while let Some(item) = next.take() {
        feed(sink, item, written, &mut counts).await?;
        fed += 1;
        if fed < MAX_BATCH {
            next = outbox.try_recv();
        }
    }
    written.count_out(&counts);
    sink.flush().await.map_err(dropped)?;
    written.flushed();
    let busy = fed >= contention::BUSY_BATCH;
    contention::set_busy(written.client.liveness(), busy);
    if busy && contention::global().contended() {
        Ok(Next::Gather)
    } else {
        Ok(Next::Write)
    }
}

/// Feeds one outbox item to the socket: its frame, or for a replay the
/// stored entries in seq order.
async fn feed<S>(
    sink: &mut Sink<S>,
    item: Outgoing,
    written: &mut Written,
    counts: &mut OutCounts,
) -> Result<(), CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match item {
        Outgoing::Replay(replay) => replay_stored(sink, replay, written, counts).await,
        item => match encode_counted(item, written, counts) {
            Some(frame) => sink.feed(frame).await.map_err(dropped),
            None => Ok(()),
        },
    }
}

/// How a batch ended.
enum Batch {
    /// Written (or failed) before any close.
    Written(Result<Next, CloseReason>),
    /// Finished after a close that keeps the queue: the drain goes on,
    /// until the same deadline.
    Closing(tokio::time::Instant),
    /// Left unfinished by a close: the queue behind it is not written.
    Abandoned,
}

/// What a writer does after a batch.
enum Next {
    /// Write the next batch as soon as there is one.
    Write,
    /// Let the next batch gather first (see `write_loop`).
    Gather,
}

fn dropped(error: tungstenite::Error) -> CloseReason {
    CloseReason::Dropped(error.to_string())
}

/// Writes the stored messages a session starts with (issue 7), in seq
/// order, ahead of anything routed to it since.
async fn replay_stored<S>(
    sink: &mut Sink<S>,
    replay: Replay,
    written: &mut Written,
    counts: &mut OutCounts,
) -> Result<(), CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let entries = match replay.entries.await {
        Ok(Ok(entries)) => entries,
        Ok(Err(error)) => {
            tracing::error!(name = %written.client.name(), %error, "cannot read stored messages");
            return Err(CloseReason::Internal("cannot read stored messages".into()));
        }
        Err(_) => return Err(CloseReason::Internal("message store closed".into())),
    };
    let name = written.client.name().clone();
    for entry in entries {
        let seq = entry.seq;
        // A record the hub cannot turn into a message (damaged: a direct
        // message without a valid sender) fails the replay like one the
        // store cannot read: skipped, the client's next ack would cover it.
        let Some((message, seq)) = entry_message(&name, entry) else {
            tracing::error!(name = %name, seq, "cannot read a stored message");
            return Err(CloseReason::Internal("cannot read stored messages".into()));
        };
        let item = Outgoing::Deliver { message, seq, stored: true };
        if let Some(frame) = encode_counted(item, written, counts) {
            sink.feed(frame).await.map_err(dropped)?;
        }
    }
    Ok(())
}

/// [`encode`], counting the frame for `/metrics`.
fn encode_counted(item: Outgoing, written: &mut Written, counts: &mut OutCounts) -> Option<Frame> {
    let kind = match item {
        Outgoing::Deliver { .. } | Outgoing::Replay(_) => Some(OutKind::Delivery),
        Outgoing::Text(_) | Outgoing::Binary(_) => Some(OutKind::Reply),
        // A control frame, not a message.
        Outgoing::Ping => None,
    };
    let frame = encode(item, written)?;
    let len = match &frame {
        Frame::Text(text) => text.len(),
        Frame::Binary(data) => data.len(),
        _ => 0,
    };
    if let Some(kind) = kind {
        counts.count(kind, len);
    }
    Some(frame)
}

/// Writes what is queued (at shutdown, or before a close that keeps the
/// queue), a pending replay of stored messages included: what was queued
/// after it comes after its entries, and written without them would leave
/// a gap. The caller bounds it in time; what it does not write stays
/// stored for the next session.
async fn drain<S>(sink: &mut Sink<S>, outbox: &mut OutboxReceiver, written: &mut Written)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut counts = OutCounts::default();
    let fed = async {
        while let Some(item) = outbox.try_recv() {
            feed(sink, item, written, &mut counts).await?;
        }
        sink.flush().await.map_err(dropped)
    };
    let fed = fed.await;
    written.count_out(&counts);
    if fed.is_ok() {
        written.flushed();
    }
}

async fn send_close<S>(sink: &mut Sink<S>, reason: &CloseReason)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = reason.code().unwrap_or(close::INTERNAL_ERROR);
    let mut text = reason.text();
    // A close reason may hold at most 123 bytes.
    while text.len() > 123 {
        text.pop();
    }
    let frame = CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from(text) };
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(Frame::Close(Some(frame)))).await;
}

/// Turns an outbox item into this client's frame; v1 deliveries carry the
/// seq the hub assigned, and stored ones are noted for the auto-ack.
fn encode(item: Outgoing, written: &mut Written) -> Option<Frame> {
    match item {
        Outgoing::Text(text) => Some(Frame::Text(Utf8Bytes::from(text))),
        Outgoing::Binary(bytes) => Some(Frame::Binary(bytes)),
        Outgoing::Ping => Some(Frame::Ping(Default::default())),
        Outgoing::Replay(_) => None,
        Outgoing::Deliver { message, seq, stored } => {
            if stored {
                written.stored_upto = written.stored_upto.max(seq);
            }
            match written.protocol() {
                Protocol::Classic => match message.classic_binary() {
                    Some(payload) => Some(Frame::Binary(payload)),
                    None => message.into_classic_frame().map(Frame::Text),
                },
                Protocol::V1 => match message.v1_binary(seq) {
                    Some(payload) => Some(Frame::Binary(payload)),
                    None => message.into_v1_text(seq).map(|text| Frame::Text(text.into())),
                },
            }
        }
    }
}
