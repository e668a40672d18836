//! A client's outgoing queue, bounded in bytes, and the signal that closes it.
//!
//! Everyone who sends to a client — other sessions, the operator API, the
//! hub itself — pushes into its [`Outbox`] without waiting. The client's own
//! writer task is the only consumer. When a push would take the queued bytes
//! past the limit, the push fails and the client is closed with
//! [`CloseReason::SlowConsumer`]: a reader that stops reading costs the server
//! at most the limit, and never slows its senders down.
//!
//! The queue is a `VecDeque` behind a lock held for one push or one swap:
//! the writer takes everything queued at once, an idle client's queue holds
//! no allocation, and a burst's buffer is freed when the queue runs dry.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use super::message::Message;
use super::CloseReason;
use crate::store::Entry;

/// A pending replay of stored messages (issue 7).
#[derive(Debug)]
pub struct Replay {
    /// The store's answer: entries in seq order.
    pub entries: tokio::sync::oneshot::Receiver<Result<Vec<Entry>, String>>,
}

/// Queue capacity (items) an idle receiver keeps; a larger buffer left by a
/// burst is freed when the queue runs dry.
const IDLE_CAPACITY: usize = 64;

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
    /// A WebSocket ping (the keepalive).
    Ping,
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
                Outgoing::Ping => 0,
            }
    }
}

/// The producer side of a client's queue; cheap to clone.
#[derive(Debug)]
pub struct Outbox {
    shared: Arc<OutboxShared>,
}

/// The queue itself is a `VecDeque` under a short lock rather than a channel:
/// an idle client's empty queue allocates nothing (a tokio channel allocates
/// a block of 32 slots up front, ~1.3 KiB per connection), and the writer
/// takes everything queued with one lock per batch.
#[derive(Debug)]
struct OutboxShared {
    /// Items pushed and not yet taken by the writer, with their cost.
    items: Mutex<VecDeque<(Outgoing, usize)>>,
    /// Live [`Outbox`] handles: when the last one goes, `recv` ends.
    senders: AtomicUsize,
    /// The receiver is gone: pushes fail.
    receiver_gone: AtomicBool,
    /// Bytes pushed and not yet handed to the socket.
    queued: AtomicUsize,
    /// The most bytes that may be queued.
    limit: usize,
    /// Closes the session and wakes its tasks; see [`Closer`]. Inline, not
    /// behind an `Arc` of its own: one allocation less per client (issue 6).
    closer: Closer,
}

impl OutboxShared {
    fn items(&self) -> std::sync::MutexGuard<'_, VecDeque<(Outgoing, usize)>> {
        self.items.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The consumer side, owned by the client's writer task.
#[derive(Debug)]
pub struct OutboxReceiver {
    shared: Arc<OutboxShared>,
    /// Items taken from the shared queue in one swap, not yet returned.
    taken: VecDeque<(Outgoing, usize)>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Outbox { shared: self.shared.clone() }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.closer.ready.wake();
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
    }
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
    let shared = Arc::new(OutboxShared {
        items: Mutex::new(VecDeque::new()),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        queued: AtomicUsize::new(0),
        limit,
        closer: Closer::default(),
    });
    (Outbox { shared: shared.clone() }, OutboxReceiver { shared, taken: VecDeque::new() })
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
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
            return Err(PushError::Closed);
        }
        self.shared.items().push_back((item, cost));
        self.shared.closer.ready.wake();
        Ok(())
    }

    /// Where the queue's shared state lives, to prefetch it.
    pub(super) fn shared_ptr(&self) -> *const u8 {
        Arc::as_ptr(&self.shared).cast()
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// The session's close signal.
    pub fn closer(&self) -> &Closer {
        &self.shared.closer
    }
}

impl OutboxReceiver {
    /// Waits for the next item; `None` once the session is closing or
    /// every producer is gone.
    ///
    /// A plain `poll_fn`, not an `async fn`: the writer waits here whenever
    /// its client is idle, and this future is all it holds while it does
    /// (8 bytes; a `Notify` wait was ~80, issue 6).
    pub fn recv(&mut self) -> impl std::future::Future<Output = Option<Outgoing>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(outcome) = self.outcome() {
                return Poll::Ready(outcome);
            }
            // Registered before the second look, so a push or a close in
            // between wakes this task: no lost wake-up.
            self.shared.closer.ready.register(cx.waker());
            match self.outcome() {
                Some(outcome) => Poll::Ready(outcome),
                None => Poll::Pending,
            }
        })
    }

    /// What `recv` returns now, if it need not wait.
    fn outcome(&mut self) -> Option<Option<Outgoing>> {
        if let Some(item) = self.try_recv() {
            return Some(Some(item));
        }
        if self.shared.closer.is_closed() {
            return Some(None);
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            // A last push may have raced the last drop.
            return Some(self.try_recv());
        }
        None
    }

    /// Bytes queued and not yet taken by [`OutboxReceiver::try_recv`].
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Takes the next item if one is ready.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        if self.taken.is_empty() {
            let mut items = self.shared.items();
            if items.is_empty() {
                // Idle: give back what a burst grew, on both sides of the swap.
                if items.capacity() > IDLE_CAPACITY {
                    *items = VecDeque::new();
                }
                drop(items);
                if self.taken.capacity() > IDLE_CAPACITY {
                    self.taken = VecDeque::new();
                }
                return None;
            }
            // Take the whole queue; producers keep our (empty) buffer.
            std::mem::swap(&mut *items, &mut self.taken);
        }
        let (item, cost) = self.taken.pop_front()?;
        self.shared.queued.fetch_sub(cost, Ordering::AcqRel);
        Some(item)
    }

    /// The session's close signal.
    pub fn closer(&self) -> &Closer {
        &self.shared.closer
    }
}

/// Closes a session from anywhere, once, with a reason.
///
/// The first reason wins: a client kicked while overflowing is reported as
/// whichever happened first.
///
/// A close goes through two stages: requested ([`Closer::close`], by
/// anyone) and finished ([`Closer::finish`], by the writer once it has sent
/// its close frame or given up). The reader keeps reading for the peer's
/// answer until a little after the second.
///
/// [`Closer::is_closed`] is one atomic load (every push checks it). Two
/// wake-ups, no allocation: a change of stage wakes whoever awaits
/// [`Closer::reached`] (the reader), and a close also wakes the writer
/// waiting in [`OutboxReceiver::recv`], which then returns `None`.
#[derive(Debug, Default)]
pub struct Closer {
    reason: OnceLock<CloseReason>,
    /// The [`CloseStage`] reached, as a number (0: open).
    stage: AtomicU8,
    /// Wakes the awaiters of [`Closer::reached`].
    changed: Notify,
    /// Wakes the writer, the queue's one consumer: a push, the last sender
    /// gone, or the close.
    ready: AtomicWaker,
}

/// How far a session's close has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum CloseStage {
    /// Someone asked the session to close; the writer is draining.
    Requested = 1,
    /// The writer has sent its close frame, or given up on the socket.
    Finished = 2,
}

impl Closer {
    /// Asks the session to close with `reason`; later calls are ignored.
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.advance(CloseStage::Requested);
            self.ready.wake();
        }
    }

    /// The writer is done: its close frame is sent, or the socket failed.
    pub fn finish(&self) {
        self.advance(CloseStage::Finished);
    }

    fn advance(&self, stage: CloseStage) {
        if self.stage.fetch_max(stage as u8, Ordering::AcqRel) < stage as u8 {
            self.changed.notify_waiters();
        }
    }

    /// True once the close is requested (or the writer has finished).
    pub fn is_closed(&self) -> bool {
        self.stage.load(Ordering::Acquire) != 0
    }

    /// True once `stage` is reached.
    pub fn has_reached(&self, stage: CloseStage) -> bool {
        self.stage.load(Ordering::Acquire) >= stage as u8
    }

    /// The reason given to the first [`Closer::close`].
    pub fn reason(&self) -> Option<&CloseReason> {
        self.reason.get()
    }

    /// Resolves when the session is asked to close.
    pub async fn closed(&self) {
        self.reached(CloseStage::Requested).await;
    }

    /// Resolves once `stage` is reached. One future type for every stage,
    /// so that a pinned wait can be re-armed for the next one in place.
    pub async fn reached(&self, stage: CloseStage) {
        loop {
            let mut notified = std::pin::pin!(self.changed.notified());
            // Registered before the check, so a change in between still wakes it.
            notified.as_mut().enable();
            if self.has_reached(stage) {
                return;
            }
            notified.await;
        }
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

    #[tokio::test]
    async fn a_waiting_writer_wakes_for_pushes_and_ends_with_the_last_sender() {
        let (outbox, mut rx) = outbox(1 << 20);
        let other = outbox.clone();
        let pusher = std::thread::spawn(move || {
            for i in 0..1000 {
                other.push(Outgoing::Text(i.to_string())).unwrap_or_else(|e| panic!("{e}"));
            }
        });
        for i in 0..1000 {
            match rx.recv().await {
                Some(Outgoing::Text(text)) => assert_eq!(text, i.to_string(), "FIFO"),
                other => panic!("unexpected {other:?}"),
            }
        }
        pusher.join().unwrap_or_else(|_| panic!("pusher panicked"));
        // A burst's buffers are released once the queue runs dry.
        assert!(rx.try_recv().is_none());
        assert!(rx.taken.capacity() <= IDLE_CAPACITY);
        assert!(rx.shared.items().capacity() <= IDLE_CAPACITY);
        drop(outbox);
        assert!(rx.recv().await.is_none(), "no producer left");
    }

    /// Two threads push rounds of 1 to 97 items and wait until the writer
    /// has taken each round before the next: a lost wake-up stalls them
    /// (the writer would sleep with items queued and the pushers still
    /// holding their handles). Written for a push that woke the writer only
    /// when it made the queue non-empty, which measured no gain and was
    /// dropped (issue 6, ninth pass); the test stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_up_is_lost_while_pushers_wait_for_the_writer() {
        use std::sync::atomic::AtomicU64;
        const EACH: u64 = 20_000;
        let (outbox, mut rx) = outbox(1 << 30);
        let taken = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let pushers: Vec<_> = (0..2u64)
            .map(|thread| {
                let (outbox, taken) = (outbox.clone(), taken.clone());
                std::thread::spawn(move || {
                    let (mut sent, mut round) = (0, 1 + thread * 13);
                    while sent < EACH {
                        let end = (sent + round % 97 + 1).min(EACH);
                        for i in sent..end {
                            let item =
                                Outgoing::Binary(Bytes::from((thread * EACH + i).to_string()));
                            outbox.push(item).unwrap_or_else(|e| panic!("{e}"));
                        }
                        sent = end;
                        round += 31;
                        let deadline =
                            std::time::Instant::now() + std::time::Duration::from_secs(10);
                        while taken[thread as usize].load(Ordering::Acquire) < sent {
                            assert!(std::time::Instant::now() < deadline, "lost wake-up at {sent}");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(outbox);
        let mut next = [0, EACH];
        while let Some(item) = rx.recv().await {
            let Outgoing::Binary(bytes) = item else { panic!("unexpected {item:?}") };
            let number: u64 =
                std::str::from_utf8(&bytes).ok().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
            let thread = usize::from(number >= EACH);
            assert_eq!(number, next[thread], "each pusher's items in order");
            next[thread] += 1;
            taken[thread].store(next[thread] - thread as u64 * EACH, Ordering::Release);
        }
        for pusher in pushers {
            pusher.join().unwrap_or_else(|_| panic!("pusher failed"));
        }
        assert_eq!(next, [EACH, 2 * EACH]);
    }

    #[test]
    fn pushes_fail_once_the_writer_is_gone() {
        let (outbox, rx) = outbox(1000);
        drop(rx);
        assert_eq!(outbox.push(Outgoing::Text("x".into())), Err(PushError::Closed));
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_close_wakes_the_writer_and_the_stages_wake_the_reader() {
        let (outbox, mut rx) = outbox(1 << 20);
        let closer = &outbox.shared.closer;
        // A writer waiting for items wakes for the close and sees no item.
        let (recv, ()) = tokio::join!(rx.recv(), async {
            tokio::task::yield_now().await;
            closer.close(CloseReason::Shutdown);
        });
        assert!(recv.is_none());
        assert!(closer.is_closed() && !closer.has_reached(CloseStage::Finished));
        // Requested is already reached; Finished waits for the writer.
        closer.reached(CloseStage::Requested).await;
        let mut finished = std::pin::pin!(closer.reached(CloseStage::Finished));
        assert!(futures_util::poll!(finished.as_mut()).is_pending());
        closer.finish();
        finished.await;
        // The first reason stays; a finish needs no reason of its own.
        closer.close(CloseReason::KeepaliveTimeout);
        assert!(matches!(closer.reason(), Some(CloseReason::Shutdown)));
        let (other, _rx) = super::outbox(1);
        other.closer().finish();
        assert!(other.closer().is_closed() && other.closer().reason().is_none());
    }
}
