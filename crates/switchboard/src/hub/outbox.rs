//! A client's outgoing queue, bounded in bytes, and the signal that closes it.
//!
//! Everyone who sends to a client — other sessions, the operator API, the
//! hub itself — pushes into its [`Outbox`] without waiting. The client's own
//! writer task is the only consumer. When a push would take the queued bytes
//! past the limit, the push fails and the client is closed with
//! [`CloseReason::SlowConsumer`]: a reader that stops reading costs the server
//! at most the limit, and never slows its senders down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::message::Message;
use super::CloseReason;
use crate::store::Entry;

/// A pending replay of stored messages (issue 7).
#[derive(Debug)]
pub struct Replay {
    /// The store's answer: entries in seq order.
    pub entries: tokio::sync::oneshot::Receiver<Result<Vec<Entry>, String>>,
}

/// Fixed cost charged per queued item on top of its payload, so that a flood
/// of tiny messages is bounded too (roughly the size of the queue node).
const ITEM_OVERHEAD_BYTES: usize = 64;

/// One item in a client's outbox.
#[derive(Debug)]
pub enum Outgoing {
    /// A message routed to this client, shared with its other recipients.
    Deliver {
        /// The message.
        message: Arc<Message>,
        /// This recipient's sequence number for it.
        seq: u64,
        /// It is also in the durable store; the writer acknowledges it
        /// there once written (auto-ack sessions, issue 7).
        stored: bool,
    },
    /// Stored messages to replay before anything queued after this item
    /// (issue 7): the store's answer arrives on the channel.
    Replay(Replay),
    /// A text frame for this client only (a v1 reply, a classic notice).
    Text(String),
    /// A binary frame for this client only.
    Binary(Bytes),
}

impl Outgoing {
    fn cost(&self) -> usize {
        ITEM_OVERHEAD_BYTES
            + match self {
                Outgoing::Deliver { message, .. } => message.approximate_size(),
                // Replayed entries are bounded by the inbox limits, not the outbox.
                Outgoing::Replay(_) => 0,
                Outgoing::Text(text) => text.len(),
                Outgoing::Binary(bytes) => bytes.len(),
            }
    }
}

/// The producer side of a client's queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<(Outgoing, usize)>,
    shared: Arc<OutboxShared>,
}

#[derive(Debug)]
struct OutboxShared {
    /// Bytes pushed and not yet handed to the socket.
    queued: AtomicUsize,
    /// The most bytes that may be queued.
    limit: usize,
    /// Closes the session; see [`Closer`].
    closer: Arc<Closer>,
}

/// The consumer side, owned by the client's writer task.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<(Outgoing, usize)>,
    shared: Arc<OutboxShared>,
}

/// The push failed: the queue is full (the client is being closed) or gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The client's queue is over its byte limit; it is being disconnected.
    #[error("the recipient is not reading fast enough and is being disconnected")]
    Overflow,
    /// The client's session has ended.
    #[error("the recipient has disconnected")]
    Closed,
}

/// Creates a queue that holds at most `limit` bytes.
pub fn outbox(limit: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared =
        Arc::new(OutboxShared { queued: AtomicUsize::new(0), limit, closer: Arc::default() });
    (Outbox { tx, shared: shared.clone() }, OutboxReceiver { rx, shared })
}

impl Outbox {
    /// Queues `item` without waiting.
    ///
    /// # Errors
    /// [`PushError::Overflow`] when the byte limit would be exceeded — the
    /// client is then closed with [`CloseReason::SlowConsumer`];
    /// [`PushError::Closed`] when the session is gone or closing.
    pub fn push(&self, item: Outgoing) -> Result<(), PushError> {
        if self.shared.closer.is_closed() {
            return Err(PushError::Closed);
        }
        let cost = item.cost();
        let before = self.shared.queued.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.shared.limit {
            self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
            self.shared.closer.close(CloseReason::SlowConsumer { limit: self.shared.limit });
            return Err(PushError::Overflow);
        }
        self.tx.send((item, cost)).map_err(|_| PushError::Closed)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// The session's close signal.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.shared.closer
    }
}

impl OutboxReceiver {
    /// Waits for the next item; `None` once every producer is gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let (item, cost) = self.rx.recv().await?;
        self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
        Some(item)
    }

    /// Takes the next item if one is ready.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let (item, cost) = self.rx.try_recv().ok()?;
        self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
        Some(item)
    }

    /// The session's close signal.
    pub fn closer(&self) -> &Arc<Closer> {
        &self.shared.closer
    }
}

/// Closes a session from anywhere, once, with a reason.
///
/// The first reason wins: a client kicked while overflowing is reported as
/// whichever happened first.
///
/// [`Closer::is_closed`] is one atomic load (every push checks it); the
/// cancellation token is only there to wake whoever awaits [`Closer::closed`].
#[derive(Debug, Default)]
pub struct Closer {
    reason: OnceLock<CloseReason>,
    closed: AtomicBool,
    token: CancellationToken,
}

impl Closer {
    /// Asks the session to close with `reason`; later calls are ignored.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.closed.store(true, Ordering::Release);
            self.token.cancel();
        }
    }

    /// True once [`Closer::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The reason given to the first [`Closer::close`].
    pub fn reason(&self) -> Option<&CloseReason> {
        self.reason.get()
    }

    /// Resolves when the session is asked to close.
    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_and_frees_nothing_twice() {
        let (outbox, mut rx) = outbox(1000);
        outbox.push(Outgoing::Text("x".repeat(500))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(outbox.queued_bytes(), 564);
        assert_eq!(outbox.push(Outgoing::Text("x".repeat(500))), Err(PushError::Overflow));
        assert!(matches!(outbox.closer().reason(), Some(CloseReason::SlowConsumer { .. })));
        assert_eq!(outbox.push(Outgoing::Text("y".into())), Err(PushError::Closed));
        assert!(rx.try_recv().is_some());
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
