//! The hub's durable side (issue 7): stored deliveries, acknowledgements,
//! replay at connect, deduplication of retried sends, receipts and room
//! history.
//!
//! The hub decides *what* is kept and hands it to the [`Store`], which
//! decides *how* (one SQLite transaction per batch). The rules:
//! - DMs, binary DMs, operator messages to one client, operator broadcasts
//!   and receipts are **stored** in the recipient's inbox before the sender
//!   is acknowledged; presence and room traffic are not (rooms keep a
//!   history instead, replayed on `join` with `since`).
//! - A name is **known** once it has connected; a known name that is offline
//!   still receives (stored) messages; an unknown name is an error.
//! - An entry leaves the inbox when the recipient acknowledges it: a
//!   client-ack session sends `ack` frames, an auto-ack session (classic,
//!   browsers, v1 without `resume`) acknowledges what the writer has put on
//!   the socket.
//! - A live delivery that no sender waits for (a classic DM, an operator
//!   broadcast) is **held** by its inbox instead of being appended at once:
//!   its ack usually comes within milliseconds and then the store never
//!   sees it. What is still unacknowledged is handed to the store by
//!   [`Hub::save_unsaved`] within [`UNSAVED_SWEEP`] × 2, when the session
//!   ends, or ahead of the next append for the same name (issue 6).
//! - A sender's client ids are remembered for [`HubLimits::dedup_window`]:
//!   a retried id is acknowledged as a duplicate and not delivered again.
//!
//! [`HubLimits::dedup_window`]: super::HubLimits::dedup_window

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use switchboard_protocol::v1::Since;
use switchboard_protocol::{ClientName, RoomName};

use super::inbox::{Confirm, Inbox, RecipientCache};
use super::message::{now_ms, Body, Message};
use super::outbox::{Outgoing, Replay};
use super::{Client, Hub, RouteError, Shared, State};
use crate::store::{
    Entry, InboxStats, Loaded, Op, Receipt, Record, RecordKind, RoomPublish, RoomRecord,
    RouteOutcome, RouteRequest, Snapshot, Store, StoreListener,
};

/// How often the server calls [`Hub::save_unsaved`]: a live delivery the
/// hub holds for its ack is handed to the store after one to two periods,
/// so a crash loses at most the last second of unacknowledged live traffic
/// nobody waited for, as docs/durability.md says.
pub const UNSAVED_SWEEP: std::time::Duration = std::time::Duration::from_millis(500);

/// How the hub took a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Queued to the recipient's live session (and stored, when durable).
    Live,
    /// The recipient is offline: stored for its next session.
    Stored,
    /// A retry of a client id this sender used recently: not delivered again.
    Duplicate,
}

/// How a session acknowledges stored deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// An entry is acknowledged once written to the socket.
    Auto,
    /// The client acknowledges with `ack` frames (it connected with `resume`).
    Client,
}

/// Answers a sender once its message is committed (or failed to be).
pub type OnCommit = Box<dyn FnOnce(Result<Accepted, RouteError>) + Send>;

/// What the hub needs to know about a client's send besides its content.
#[derive(Default)]
pub struct SendMeta {
    /// The client's id for the message: deduplication, receipts and acks.
    /// Shared, not copied, by the answer and the commit's completion.
    pub id: Option<Arc<str>>,
    /// Send a receipt to the sender when the recipient acknowledges it.
    pub receipt: bool,
    /// Runs once the message is durable (at once when nothing is stored).
    /// Not run when the send fails: the caller reports that error itself.
    pub on_commit: Option<OnCommit>,
    /// The message's time ([`Message::ts`]) when the caller has read the
    /// clock already (a session reads it once per run of frames, issue 6);
    /// `None`: now. Used for direct messages and the dedup window; a room
    /// publish, one message for all members, reads the clock itself.
    pub ts: Option<u64>,
}

impl std::fmt::Debug for SendMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendMeta")
            .field("id", &self.id)
            .field("receipt", &self.receipt)
            .field("on_commit", &self.on_commit.is_some())
            .field("ts", &self.ts)
            .finish()
    }
}

/// Who a stored delivery is from, as far as receipts are concerned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Origin<'a> {
    pub(crate) id: Option<&'a str>,
    pub(crate) receipt: bool,
    /// Cluster mode: the node and token that wait for the outcome, when the
    /// send was forwarded here by another node.
    pub(crate) reply: Option<(&'a str, u64)>,
    /// The sender waits for the outcome once stored (an ack, the operator
    /// API's answer); otherwise it only hears of refusals.
    pub(crate) confirm: bool,
    /// A v1 send with an id whose answer may be held with the delivery
    /// (issue 6): where the inbox that holds it says so.
    pub(crate) held: Option<&'a HeldAt>,
    /// The message's time, when the sender's session has read the clock
    /// ([`SendMeta::ts`]).
    pub(crate) ts: Option<u64>,
}

/// The inbox and seq of a delivery held with its sender's answer to come
/// ([`Hub::send_as`] attaches it).
pub(crate) type HeldAt = RefCell<Option<(Arc<Inbox>, u64)>>;

impl Origin<'_> {
    /// The operator: no id, no receipt.
    pub(crate) const OPERATOR: Origin<'static> =
        Origin { id: None, receipt: false, reply: None, confirm: false, held: None, ts: None };
}

/// One name's inbox, for the operator API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxInfo {
    /// The name.
    pub name: ClientName,
    /// Connected to this node now.
    pub online: bool,
    /// The next seq the name will get.
    pub next_seq: u64,
    /// Stored, unacknowledged entries.
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The oldest entry's time, ms since the Unix epoch.
    pub oldest_ts: Option<u64>,
}

/// A room's recent messages.
#[derive(Debug, Default)]
pub(crate) struct RoomHistory {
    next_rseq: u64,
    recent: VecDeque<Arc<Message>>,
}

impl RoomHistory {
    /// Cluster mode: keeps `message` (numbered by Redis) in rseq order,
    /// once, within the last `keep`.
    fn insert(&mut self, message: Arc<Message>, rseq: u64, keep: usize) {
        let rseq_of = |m: &Arc<Message>| match m.body() {
            Body::Room { rseq: Some(rseq), .. } => *rseq,
            _ => 0,
        };
        let at = self.recent.partition_point(|m| rseq_of(m) < rseq);
        if self.recent.get(at).is_some_and(|m| rseq_of(m) == rseq) {
            return;
        }
        if self.recent.len() >= keep && at == 0 {
            return; // older than everything kept
        }
        self.recent.insert(at, message);
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
        self.next_rseq = self.next_rseq.max(rseq);
    }

    /// The kept messages after `since`, oldest first.
    pub(crate) fn since(&self, since: Since) -> impl Iterator<Item = &Arc<Message>> {
        self.recent.iter().filter(move |message| match since {
            Since::Rseq(after) => match message.body() {
                Body::Room { rseq: Some(rseq), .. } => *rseq > after,
                _ => false,
            },
            Since::Ts(after) => message.ts() > after,
        })
    }
}

impl Hub {
    /// Issue 7: makes this hub durable with `store`, restoring the known
    /// names, their seq counters and inbox sizes, room histories and recent
    /// client ids from `snapshot`. Call before serving; a second call is
    /// ignored (returns false).
    pub fn attach_store(&self, store: Store, snapshot: Snapshot) -> bool {
        if self.shared.store.set(store.clone()).is_err() {
            return false;
        }
        let window_ms = self.shared.limits.dedup_window.as_millis() as u64;
        let now = now_ms();
        let mut state = self.state();
        let mut total = 0;
        for known in snapshot.names {
            let Ok(name) = self.client_name(&known.name) else { continue };
            let inbox = Inbox::new(name.clone(), Some(store.clone()), known.next_seq);
            {
                let mut inner = inbox.lock();
                inner.depth = known.depth;
                inner.bytes = known.bytes;
                // The lease on disk already covers everything below next_seq.
                inner.leased = known.next_seq.saturating_sub(1);
            }
            total += known.bytes;
            state.inboxes.insert(name, Arc::new(inbox));
        }
        for (sender, id) in snapshot.recent_ids {
            if let Some(inbox) = state.inboxes.get(sender.as_str()) {
                inbox.lock().recent.insert(&id, now, window_ms);
            }
        }
        for (room, records) in snapshot.rooms {
            let Ok(room) = self.room_name(&room) else { continue };
            let mut history = RoomHistory::default();
            for record in records {
                history.next_rseq = history.next_rseq.max(record.rseq);
                let from = record.from.and_then(|from| self.client_name(&from).ok());
                let body = Body::Room {
                    room: room.clone(),
                    from,
                    text: record.text,
                    rseq: Some(record.rseq),
                };
                history.recent.push_back(Arc::new(Message::at(record.ts, body)));
            }
            state.histories.insert(room, history);
        }
        drop(state);
        self.shared.stored_bytes.store(total, Ordering::Relaxed);
        true
    }

    /// A listener that reports the store's changes back to this hub.
    pub fn store_listener(&self) -> Arc<dyn StoreListener> {
        Arc::new(Listener { hub: Arc::downgrade(&self.shared) })
    }

    /// The durable store, if any.
    pub fn store(&self) -> Option<&Store> {
        self.shared.store.get()
    }

    /// Bytes of stored, unacknowledged entries ([`Record::size`]), as
    /// charged against `store_max_bytes` (0 without a store).
    pub fn stored_bytes(&self) -> u64 {
        self.shared.stored_bytes.load(Ordering::Relaxed)
    }

    /// True when messages to offline names are stored (not `--ephemeral`).
    pub fn is_durable(&self) -> bool {
        self.shared.store.get().is_some()
    }

    /// True in cluster mode with a durable store: inboxes live in Redis and a
    /// node holds a name's inbox only while the client is connected to it.
    pub fn shares_inboxes(&self) -> bool {
        self.shared.store.get().is_some_and(Store::shares_inboxes)
    }

    /// Cluster mode: this node now holds `name` (its claim is ours), so it
    /// numbers the name's deliveries from the block `loaded` leased.
    pub(super) fn take_over(&self, name: &ClientName, store: &Store, loaded: Loaded) {
        let window_ms = self.shared.limits.dedup_window.as_millis() as u64;
        let inbox = Inbox::new(name.clone(), Some(store.clone()), loaded.next_seq);
        {
            let mut inner = inbox.lock();
            inner.depth = loaded.depth;
            inner.bytes = loaded.bytes;
            inner.leased = loaded.leased;
            let now = now_ms();
            for id in &loaded.recent_ids {
                inner.recent.insert(id, now, window_ms);
            }
        }
        self.state().inboxes.insert(name.clone(), Arc::new(inbox));
    }

    /// The inbox a new session of `name` uses: the known name's, created on
    /// first connect; in ephemeral mode (or past the known-name limit) one
    /// that lives only as long as the session. In cluster mode, the one
    /// [`Hub::claim`] took over.
    pub(super) fn inbox_for_session(&self, state: &mut State, name: &ClientName) -> Arc<Inbox> {
        let store = self.shared.store.get();
        if let Some(inbox) = state.inboxes.get(name.as_str()) {
            return inbox.clone();
        }
        if store.is_some_and(Store::shares_inboxes) {
            // Registered without a claim (tests calling `register` directly):
            // live delivery only, nothing numbered against the shared counter.
            let inbox = Arc::new(Inbox::new(name.clone(), None, 1));
            state.inboxes.insert(name.clone(), inbox.clone());
            return inbox;
        }
        let known = match store {
            Some(store) if state.inboxes.len() < self.shared.limits.max_known_names => {
                let _ = store.submit(Op::Touch { name: name.to_shared() });
                Some(store.clone())
            }
            Some(_) => {
                tracing::warn!(%name, "known-name limit reached: this name's messages are not stored");
                None
            }
            None => None,
        };
        let inbox = Arc::new(Inbox::new(name.clone(), known, 1));
        state.inboxes.insert(name.clone(), inbox.clone());
        inbox
    }

    /// Links the inbox to `client`'s outbox and, when entries are stored,
    /// queues their replay right behind what the outbox holds (the welcome).
    pub(super) fn go_live(&self, client: &Arc<Client>, resume: Option<u64>) {
        let inbox = &client.inbox;
        let mut state = inbox.lock();
        // A client that has seen seqs this hub never handed out (an
        // ephemeral hub that forgot the name, a data dir that was reset)
        // is numbered above them: it would drop lower seqs as repeats.
        if let Some(resume) = resume.filter(|resume| *resume >= state.next_seq) {
            inbox.skip_to(&mut state, resume + 1);
        }
        let cutoff = state.next_seq - 1;
        state.live = Some((client.session, client.outbox.clone()));
        let Some(store) = inbox.store() else { return };
        if state.depth == 0 {
            return;
        }
        let after = resume.unwrap_or(0).min(cutoff);
        let entries = store.replay(client.name.as_str(), after, cutoff, resume.is_some());
        let _ = client.outbox.push(Outgoing::Replay(Replay { entries }));
    }

    /// Unlinks a leaving session from its inbox; in ephemeral mode (or for a
    /// name that is not known) the inbox goes with it.
    pub(super) fn go_offline(&self, state: &mut State, client: &Client) {
        let mut inbox = client.inbox.lock();
        if inbox.live.as_ref().is_some_and(|(session, _)| *session == client.session) {
            inbox.live = None;
            // Before the next session's replay (and, with shared inboxes,
            // before the name is released), which must see them.
            client.inbox.save(&mut inbox, u64::MAX);
        }
        drop(inbox);
        if client.inbox.store().is_none_or(Store::shares_inboxes) {
            state.inboxes.remove(client.name.as_str());
        }
    }

    /// Delivers `message` to one inbox: with a durable store and a storable
    /// message, kept first (before anything could acknowledge it), then
    /// pushed to the live session if there is one. Kept means appended to
    /// the store, or, for a live delivery no sender waits for, held by the
    /// inbox until acknowledged or handed to the store (see `inbox.rs`).
    ///
    /// Takes the message: its one reference moves into the outbox rather
    /// than being cloned there and dropped here, two locked reference-count
    /// operations less per delivery (issue 6).
    pub(crate) fn deliver_kept(
        &self,
        inbox: &Arc<Inbox>,
        message: Arc<Message>,
        origin: Origin<'_>,
    ) -> Result<Accepted, RouteError> {
        let kept = KeptRecord::new(&message, inbox.store().is_some());
        self.deliver_kept_as(inbox, message, &kept, origin)
    }

    /// What the store keeps of `message` when this hub is durable, to hand
    /// to [`Hub::deliver_kept_as`] for each of its recipients: one record
    /// however many inboxes it goes to.
    pub(crate) fn kept_record(&self, message: &Message) -> KeptRecord {
        KeptRecord::new(message, self.is_durable())
    }

    /// [`Hub::deliver_kept`] with the stored record computed by the caller
    /// ([`Hub::kept_record`]), once for all of a broadcast's recipients.
    pub(crate) fn deliver_kept_as(
        &self,
        inbox: &Arc<Inbox>,
        message: Arc<Message>,
        kept: &KeptRecord,
        origin: Origin<'_>,
    ) -> Result<Accepted, RouteError> {
        let (Some(store), Some(size)) = (inbox.store(), kept.size) else {
            return deliver_unkept(inbox, message);
        };
        let name = inbox.name();
        let mut state = inbox.lock();
        let limits = &self.shared.limits;
        let (depth, bytes) = state.unacknowledged();
        if depth + 1 > limits.inbox_max_messages || bytes + size > limits.inbox_max_bytes {
            return Err(RouteError::InboxFull(format!(
                "{name}'s inbox is full ({depth} stored messages, {bytes} bytes; limits {} \
                 and {}): it must connect and acknowledge first",
                limits.inbox_max_messages, limits.inbox_max_bytes
            )));
        }
        if self.shared.stored_bytes.load(Ordering::Relaxed) + size > limits.store_max_bytes {
            return Err(RouteError::InboxFull(format!(
                "the message store is full ({} bytes)",
                limits.store_max_bytes
            )));
        }
        let seq = inbox.take_seq(&mut state);
        let online = state.live.is_some();
        // Issue 6: a live delivery no sender waits for is held by the inbox,
        // most likely until its ack, and costs the store nothing. So is a
        // v1 send with an id (without a receipt), whose sender's answer is
        // then held with it (`inbox.rs`). While the store is refusing work,
        // it is refused like any other (bounded memory: a held delivery
        // goes to the store within a second).
        let unanswered = origin.id.is_none() && !origin.confirm;
        let answered_later = origin.held.is_some()
            && origin.id.is_some()
            && !origin.receipt
            && !store.shares_inboxes();
        let holdable =
            online && (unanswered || answered_later) && origin.reply.is_none() && store.accepting();
        match holdable.then(|| Inbox::hold(&mut state, seq, &message, size)).flatten() {
            Some(list) => {
                if list {
                    self.unsaved_list().push(Arc::clone(inbox));
                }
                if let Some(held) = origin.held.filter(|_| answered_later) {
                    *held.borrow_mut() = Some((Arc::clone(inbox), seq));
                }
            }
            None => {
                // What the inbox holds goes first: the store sees each
                // name's appends in seq order.
                inbox.save(&mut state, u64::MAX);
                let append = Op::Append {
                    name: name.to_shared(),
                    seq,
                    record: kept.record(&message),
                    client_id: origin.id.map(str::to_owned),
                    receipt: origin.receipt && origin.id.is_some(),
                    live: online,
                };
                store
                    .submit(append)
                    .map_err(|error| RouteError::StoreUnavailable(error.to_string()))?;
                Inbox::appended(&mut state, seq);
            }
        }
        state.depth += 1;
        state.bytes += size;
        self.shared.stored_bytes.fetch_add(size, Ordering::Relaxed);
        // An overflowing session is being closed; the entry waits for the next one.
        let _ = state.push_live(message, seq, true);
        Ok(if online { Accepted::Live } else { Accepted::Stored })
    }

    /// Runs a client's send with deduplication and the commit answer:
    /// `route` does the routing, `meta.on_commit` hears the outcome once it
    /// is durable.
    pub(super) fn send_as(
        &self,
        from: &Client,
        mut meta: SendMeta,
        route: impl FnOnce(&Hub, Origin<'_>, &mut Option<OnCommit>) -> Result<Accepted, RouteError>,
    ) -> Result<Accepted, RouteError> {
        if let Some(id) = &meta.id {
            // Remembered before routing: an outcome known later (and a
            // failure that forgets the id) always comes after this.
            let window_ms = self.shared.limits.dedup_window.as_millis() as u64;
            let now = meta.ts.unwrap_or_else(now_ms);
            if !from.inbox.lock().recent.insert(id, now, window_ms) {
                if let Some(answer) = meta.on_commit.take() {
                    answer(Ok(Accepted::Duplicate));
                }
                return Ok(Accepted::Duplicate);
            }
        }
        let held = HeldAt::default();
        let origin = Origin {
            id: meta.id.as_deref(),
            receipt: meta.receipt,
            reply: None,
            confirm: meta.id.is_some(),
            held: Some(&held),
            ts: meta.ts,
        };
        let clustered = self.shared.bus.get().is_some() || self.shares_inboxes();
        let mut answer = match (meta.on_commit.take(), &meta.id) {
            // An id whose send failed later is forgotten, so the sender's
            // retry is not a "duplicate". Only a cluster route takes the
            // answer away to run it later, so only then is it wrapped (an
            // allocation and an id copy per send, issue 6); a failed commit
            // forgets the id in the store's completion below.
            (Some(answer), Some(id)) if clustered => {
                let inbox = from.inbox.clone();
                let id = id.clone();
                Some(Box::new(move |outcome: Result<Accepted, RouteError>| {
                    if outcome.is_err() {
                        inbox.lock().recent.remove(&id);
                    }
                    answer(outcome);
                }) as OnCommit)
            }
            (answer, _) => answer,
        };
        let had_answer = answer.is_some();
        let accepted = match route(self, origin, &mut answer) {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(id) = &meta.id {
                    from.inbox.lock().recent.remove(id);
                }
                return Err(error);
            }
        };
        debug_assert!(
            clustered || answer.is_some() == had_answer,
            "only a cluster route takes the answer"
        );
        let Some(id) = meta.id else {
            if let Some(answer) = answer {
                answer(Ok(accepted));
            }
            return Ok(accepted);
        };
        match self.shared.store.get() {
            // The id is remembered on disk in the same or a later batch than
            // the message, and the sender hears back only after that commit.
            // (In cluster mode the append itself remembers it.) A failed
            // commit forgets the id again, so the sender's retry is not
            // taken for a duplicate of a message that was never stored.
            Some(store) => {
                let inbox = from.inbox.clone();
                let forget = id.clone();
                let then: crate::store::Completion = Box::new(move |committed| {
                    if !committed {
                        inbox.lock().recent.remove(&forget);
                    }
                    if let Some(answer) = answer {
                        answer(if committed {
                            Ok(accepted)
                        } else {
                            Err(RouteError::StoreUnavailable(
                                "the message store failed to commit; retry".into(),
                            ))
                        });
                    }
                });
                // Held with its delivery: answered once the recipient has
                // acknowledged it (or it was handed over) and committed.
                let id = id.to_string();
                let (id, then) = match held.into_inner() {
                    Some((inbox, seq)) => {
                        let confirm = Confirm { sender: from.name.to_shared(), id, then };
                        match inbox.attach(seq, confirm) {
                            Ok(()) => return Ok(accepted),
                            Err(Confirm { id, then, .. }) => (id, then),
                        }
                    }
                    None => (id, then),
                };
                let op = if store.shares_inboxes() {
                    Op::Barrier
                } else {
                    Op::Sent { sender: from.name.to_shared(), id }
                };
                if let Err(error) = store.submit_then(op, Some(then)) {
                    tracing::warn!(%error, "could not remember a client id for deduplication");
                }
            }
            None => {
                if let Some(answer) = answer {
                    answer(Ok(accepted));
                }
            }
        }
        Ok(accepted)
    }

    /// Cluster mode: a delivery to a name this node does not hold. The Redis
    /// store stores it for the offline name or hands it to the node that
    /// holds the name, atomically (see `store/redis.rs`); the sender's
    /// `answer` runs with the outcome, here or (forwarded) when the holder
    /// has stored it and answered over the bus.
    pub(super) fn route_shared(
        &self,
        to: &str,
        message: impl FnOnce(ClientName) -> Message,
        origin: Origin<'_>,
        answer: &mut Option<OnCommit>,
    ) -> Result<Accepted, RouteError> {
        let name = self.client_name(to).map_err(|_| RouteError::UnknownRecipient(to.into()))?;
        let Some(store) = self.shared.store.get() else { return Err(self.no_inbox(to)) };
        let message = message(name.clone());
        let Some(record) = record_for(&message) else {
            return Err(RouteError::Offline(to.to_owned()));
        };
        let bus = self.shared.bus.get().cloned().ok_or(RouteError::ClusterUnavailable)?;
        if !bus.healthy() {
            // Redis is down: neither the holder nor the inbox can be reached.
            return Err(RouteError::ClusterUnavailable);
        }
        // Who waits for the outcome: a node that forwarded the send here, or
        // this node's sender (registered with the bus, so the holder's
        // answer finds it).
        let (reply, waiting): (Option<(String, u64)>, Option<OnCommit>) =
            match (origin.reply, answer.take()) {
                (Some((node, token)), answer) => (Some((node.to_owned(), token)), answer),
                // Only refusals matter (a classic sender): the holder need
                // not answer, nor store before delivering.
                (None, Some(answer)) if !origin.confirm => (None, Some(answer)),
                (None, Some(answer)) => match bus.expect_answer(answer) {
                    Ok(token) => {
                        let waiter = bus.clone();
                        let local: OnCommit = Box::new(move |outcome| {
                            if let Some(answer) = waiter.take_answer(token) {
                                answer(outcome);
                            }
                        });
                        (Some((bus.node_id().to_owned(), token)), Some(local))
                    }
                    // Too many sends wait for answers: refuse this one (the
                    // caller reports the error; the answer is not run).
                    Err(_) => return Err(RouteError::ClusterUnavailable),
                },
                (None, None) => (None, None),
            };
        let reply_ref = reply.as_ref().map(|(node, token)| (node.as_str(), *token));
        let forward = bus.direct_frame(to, &message, origin.id, origin.receipt, reply_ref);
        let limits = &self.shared.limits;
        let request = RouteRequest {
            to: name.to_shared(),
            record,
            client_id: origin.id.map(str::to_owned),
            receipt: origin.receipt && origin.id.is_some(),
            forward,
            max_messages: limits.inbox_max_messages,
            max_bytes: limits.inbox_max_bytes,
        };
        let to_name = to.to_owned();
        store.route(
            request,
            Box::new(move |outcome| {
                let result = match outcome {
                    RouteOutcome::Stored(_) => Ok(Accepted::Stored),
                    // The holder answers the sender itself.
                    RouteOutcome::Forwarded(_) => return,
                    RouteOutcome::Duplicate => Ok(Accepted::Duplicate),
                    RouteOutcome::Unknown => Err(RouteError::UnknownRecipient(to_name.clone())),
                    RouteOutcome::Full(why) => Err(RouteError::InboxFull(why)),
                    RouteOutcome::Failed(why) => Err(RouteError::StoreUnavailable(why)),
                };
                match waiting {
                    Some(answer) => answer(result),
                    None => {
                        if let Err(error) = result {
                            tracing::warn!(to = %to_name, %error, "cluster delivery refused");
                        }
                    }
                }
            }),
        );
        Ok(Accepted::Stored)
    }

    /// Cluster mode with shared inboxes: a delivery another node handed to
    /// this one because it holds `to` (or held it when the other node
    /// looked). Stored and delivered here, then the waiting node is answered
    /// after the commit.
    ///
    /// If the client has just left, the delivery is refused (`unavailable`,
    /// retry), not routed on: the sender's later messages may already be
    /// stored directly, and storing this one after them would break the
    /// sender's order. Only accepted messages are ordered.
    pub fn deliver_forwarded(
        &self,
        to: &str,
        body: Body,
        id: Option<String>,
        receipt: bool,
        reply: Option<(String, u64)>,
    ) {
        let bus = self.shared.bus.get().cloned();
        let mut answer: Option<OnCommit> = match (&reply, bus) {
            (Some((node, token)), Some(bus)) => {
                let (node, token) = (node.clone(), *token);
                Some(Box::new(move |outcome| bus.answer(&node, token, outcome)))
            }
            _ => None,
        };
        if self.shares_inboxes() && self.inbox_of(to).is_none() {
            if let Some(answer) = answer {
                answer(Err(RouteError::StoreUnavailable(format!(
                    "{to} is moving between nodes of the cluster; retry"
                ))));
            }
            return;
        }
        let origin = Origin {
            id: id.as_deref(),
            receipt,
            reply: reply.as_ref().map(|(node, token)| (node.as_str(), *token)),
            confirm: reply.is_some(),
            held: None,
            ts: None,
        };
        let message = |ts, _| Message::at(ts, body);
        match self.route_one(to, message, origin, &mut answer, &mut RecipientCache::default()) {
            Ok(accepted) => {
                let Some(answer) = answer else { return };
                let Some(store) = self.shared.store.get() else {
                    answer(Ok(accepted));
                    return;
                };
                let then: crate::store::Completion = Box::new(move |committed| {
                    answer(if committed {
                        Ok(accepted)
                    } else {
                        Err(RouteError::StoreUnavailable(
                            "the message store failed to commit; retry".into(),
                        ))
                    });
                });
                if let Err(error) = store.submit_then(Op::Barrier, Some(then)) {
                    tracing::warn!(%error, "cannot confirm a forwarded delivery");
                }
            }
            Err(error) => {
                if let Some(answer) = answer {
                    answer(Err(error));
                }
            }
        }
    }

    /// Resolves once everything routed before the call is durable (at once
    /// without a store): the operator API answers after it, so that its
    /// 200 means stored, as a client's ack does.
    ///
    /// # Errors
    /// [`RouteError::StoreUnavailable`] when the store is overloaded or a
    /// commit failed.
    pub async fn committed(&self) -> Result<(), RouteError> {
        let Some(store) = self.shared.store.get() else { return Ok(()) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let then: crate::store::Completion = Box::new(move |ok| {
            let _ = tx.send(ok);
        });
        store
            .submit_then(Op::Barrier, Some(then))
            .map_err(|error| RouteError::StoreUnavailable(error.to_string()))?;
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(RouteError::StoreUnavailable("the message store failed to commit".into())),
        }
    }

    /// A client-ack session acknowledges every delivery up to `seq`.
    pub fn ack(&self, client: &Client, seq: u64) {
        self.acknowledge(&client.inbox, seq);
    }

    /// An auto-ack session's writer put every stored delivery up to `seq`
    /// on the socket.
    pub fn written(&self, client: &Client, seq: u64) {
        if client.ack_mode == AckMode::Auto {
            self.acknowledge(&client.inbox, seq);
        }
    }

    fn acknowledge(&self, inbox: &Inbox, seq: u64) {
        if inbox.store().is_none() {
            return;
        }
        let mut state = inbox.lock();
        let upto = seq.min(state.next_seq.saturating_sub(1));
        if upto == 0 {
            return;
        }
        let bytes = inbox.acknowledge(&mut state, upto);
        drop(state);
        if bytes > 0 {
            self.uncount_stored(bytes);
        }
    }

    /// Takes `bytes` off the hub-wide count of stored bytes.
    fn uncount_stored(&self, bytes: u64) {
        let _ = self
            .shared
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(bytes)));
    }

    /// Issue 6: hands to the store every live delivery an inbox has held
    /// since the last call or before (so for one to two periods of the
    /// caller's), and with `all` every one. The server calls it every
    /// [`UNSAVED_SWEEP`], and with `all` at shutdown.
    pub fn save_unsaved(&self, all: bool) {
        let listed = std::mem::take(&mut *self.unsaved_list());
        let still: Vec<Arc<Inbox>> = listed.into_iter().filter(|inbox| inbox.sweep(all)).collect();
        if !still.is_empty() {
            self.unsaved_list().extend(still);
        }
    }

    fn unsaved_list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Inbox>>> {
        self.shared.unsaved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes every stored entry of `name` (operator purge).
    ///
    /// # Errors
    /// [`RouteError::UnknownRecipient`] when the name has no inbox.
    pub fn purge(&self, name: &str) -> Result<(), RouteError> {
        if let Some(store) = self.shared.store.get().filter(|store| store.shares_inboxes()) {
            if self.inbox_of(name).is_none() {
                let name = self
                    .client_name(name)
                    .map_err(|_| RouteError::UnknownRecipient(name.into()))?;
                return store
                    .submit(Op::Purge { name: name.to_shared() })
                    .map_err(|error| RouteError::StoreUnavailable(error.to_string()));
            }
        }
        let inbox = self.inbox_of(name).ok_or_else(|| RouteError::UnknownRecipient(name.into()))?;
        let Some(store) = inbox.store() else { return Ok(()) };
        let mut state = inbox.lock();
        store
            .submit(Op::Purge { name: inbox.name().to_shared() })
            .map_err(|error| RouteError::StoreUnavailable(error.to_string()))?;
        let bytes = inbox.forget_unsaved(&mut state);
        drop(state);
        self.uncount_stored(bytes);
        Ok(())
    }

    /// Depth and age of `name`'s inbox, or `None` for a name with no inbox.
    pub async fn inbox_info(&self, name: &str) -> Option<InboxInfo> {
        if let Some(store) = self.shared.store.get().filter(|store| store.shares_inboxes()) {
            if self.inbox_of(name).is_none() {
                // Cluster mode: a name not held here; its inbox is in Redis.
                let name = self.client_name(name).ok()?;
                let stats = store.inbox_stats(name.as_str()).await.ok()?;
                let online = self.bus().remote_clients().iter().any(|c| c.name == name);
                if stats.depth == 0 && !online {
                    return None;
                }
                return Some(InboxInfo {
                    name,
                    online,
                    next_seq: 0,
                    depth: stats.depth,
                    bytes: stats.bytes,
                    oldest_ts: stats.oldest_ts,
                });
            }
        }
        let inbox = self.inbox_of(name)?;
        let (online, next_seq) = {
            let mut state = inbox.lock();
            // The store's figures must include what the inbox holds.
            inbox.save(&mut state, u64::MAX);
            (state.live.is_some(), state.next_seq)
        };
        // The store's figures, not the hub's running estimate: they account
        // for acknowledgements still in flight.
        let stats = match inbox.store() {
            Some(store) => store.inbox_stats(name).await.unwrap_or_default(),
            None => InboxStats::default(),
        };
        Some(InboxInfo {
            name: inbox.name().clone(),
            online,
            next_seq,
            depth: stats.depth,
            bytes: stats.bytes,
            oldest_ts: stats.oldest_ts,
        })
    }

    /// Builds a room message with the room's next rseq and keeps it in the
    /// room's history (memory, and the store when durable).
    pub(super) fn record_in_history(
        &self,
        state: &mut State,
        room: RoomName,
        body: impl FnOnce(RoomName, Option<u64>) -> Body,
    ) -> Arc<Message> {
        let keep = self.shared.limits.room_history;
        let may_add = state.histories.len() < self.shared.limits.max_history_rooms;
        let history = match state.histories.get_mut(&room) {
            Some(history) if keep > 0 => history,
            None if keep > 0 && may_add => state.histories.entry(room.clone()).or_default(),
            _ => return Arc::new(Message::new(body(room, None))),
        };
        history.next_rseq += 1;
        let rseq = history.next_rseq;
        let message = Arc::new(Message::new(body(room.clone(), Some(rseq))));
        if history.recent.len() >= keep {
            history.recent.pop_front();
        }
        history.recent.push_back(message.clone());
        if let (Some(store), Body::Room { from, text, .. }) =
            (self.shared.store.get(), message.body())
        {
            let record = RoomRecord {
                rseq,
                ts: message.ts(),
                from: from.as_ref().map(ToString::to_string),
                text: text.clone(),
            };
            let _ = store.submit(Op::RoomAppend { room: room.to_string(), record });
        }
        message
    }

    /// Cluster mode: hands a room message to Redis (see
    /// [`Store::room_publish`]); every node, this one too, delivers it when
    /// it comes back on the room channel ([`Hub::room_kept`]). Takes the
    /// sender's `answer`: it runs once Redis has the message. Returns how
    /// many members on other nodes it is for.
    pub(super) fn publish_kept(
        &self,
        room: RoomName,
        echo: bool,
        body: impl FnOnce(RoomName, Option<u64>) -> Body,
        answer: &mut Option<OnCommit>,
    ) -> Result<usize, RouteError> {
        let Some(store) = self.shared.store.get() else {
            return Err(RouteError::ClusterUnavailable);
        };
        if !self.bus().healthy() {
            return Err(RouteError::ClusterUnavailable);
        }
        let message = Message::new(body(room.clone(), None));
        let Body::Room { from, text, .. } = message.body() else {
            return Err(RouteError::NoSuchRoom(room.to_string()));
        };
        let publish = RoomPublish {
            room: room.to_string(),
            ts: message.ts(),
            from: from.as_ref().map(ToString::to_string),
            text: text.clone(),
            frame: self.bus().room_frame(&message, echo),
        };
        let remote = self.bus().remote_rooms().get(&room).map_or(0, Vec::len);
        let answer = answer.take();
        store.room_publish(
            publish,
            Box::new(move |rseq| match (rseq, answer) {
                (Ok(_), Some(answer)) => answer(Ok(Accepted::Live)),
                (Err(why), Some(answer)) => answer(Err(RouteError::StoreUnavailable(why))),
                (Err(why), None) => tracing::warn!(%room, %why, "room message lost"),
                (Ok(_), None) => {}
            }),
        );
        Ok(remote)
    }

    /// Cluster mode: a room message numbered in Redis (`rseq`) reached this
    /// node: kept in the node's copy of the room's history and delivered to
    /// the room's local members, under the hub's lock like any publish.
    pub fn room_kept(
        &self,
        room: RoomName,
        from: Option<ClientName>,
        text: String,
        echo: bool,
        ts: u64,
        rseq: u64,
    ) {
        let body = Body::Room { room: room.clone(), from: from.clone(), text, rseq: Some(rseq) };
        let message = Arc::new(Message::at(ts, body));
        let keep = self.shared.limits.room_history;
        let mut state = self.state();
        if keep > 0 {
            let may_add = state.histories.len() < self.shared.limits.max_history_rooms;
            let history = match state.histories.get_mut(&room) {
                Some(history) => Some(history),
                None if may_add => Some(state.histories.entry(room.clone()).or_default()),
                None => None,
            };
            if let Some(history) = history {
                history.insert(message.clone(), rseq, keep);
            }
        }
        let Some(entry) = state.rooms.get(&room) else { return };
        for (_, member) in
            entry.members.iter().filter(|(name, _)| echo || from.as_ref() != Some(*name))
        {
            // A member whose outbox overflowed is being closed.
            let _ = member.deliver(&message);
        }
    }

    /// Cluster mode: fills this node's copy of every room's history from
    /// Redis (at start, and after the bus reconnects).
    pub async fn reload_room_histories(&self) {
        let Some(store) = self.shared.store.get().filter(|store| store.shares_inboxes()) else {
            return;
        };
        let rooms = match store.histories().await {
            Ok(rooms) => rooms,
            Err(error) => {
                tracing::warn!(%error, "cannot read the rooms' history from Redis");
                return;
            }
        };
        let keep = self.shared.limits.room_history;
        let mut state = self.state();
        for (room, records) in rooms {
            let Ok(room) = self.room_name(&room) else { continue };
            if !state.histories.contains_key(&room)
                && state.histories.len() >= self.shared.limits.max_history_rooms
            {
                continue;
            }
            let history = state.histories.entry(room.clone()).or_default();
            for record in records {
                let from = record.from.and_then(|from| self.client_name(&from).ok());
                let rseq = record.rseq;
                let body =
                    Body::Room { room: room.clone(), from, text: record.text, rseq: Some(rseq) };
                history.insert(Arc::new(Message::at(record.ts, body)), rseq, keep);
            }
        }
    }

    /// Routes receipts owed after acknowledgements to their senders.
    fn route_receipts(&self, receipts: Vec<Receipt>) {
        for receipt in receipts {
            let Ok(to) = self.client_name(&receipt.to) else { continue };
            if self.shares_inboxes() {
                // Cluster mode: the sender's inbox may be held by any node.
                let message = |ts, _| Message::at(ts, Body::Receipt { id: receipt.id, to });
                if let Err(error) = self.route_one(
                    &receipt.sender,
                    message,
                    Origin::OPERATOR,
                    &mut None,
                    &mut RecipientCache::default(),
                ) {
                    tracing::warn!(sender = %receipt.sender, %error, "delivery receipt dropped");
                }
                continue;
            }
            let Some(inbox) = self.inbox_of(&receipt.sender) else { continue };
            let message = Arc::new(Message::new(Body::Receipt { id: receipt.id, to }));
            if let Err(error) = self.deliver_kept(&inbox, message, Origin::OPERATOR) {
                tracing::warn!(sender = %receipt.sender, %error, "delivery receipt dropped");
            }
        }
    }
}

/// A delivery nothing keeps (no durable store, or a kind that is not
/// stored): a seq, then the live session's outbox.
fn deliver_unkept(inbox: &Inbox, message: Arc<Message>) -> Result<Accepted, RouteError> {
    let mut state = inbox.lock();
    if state.live.is_none() {
        return Err(RouteError::Offline(inbox.name().to_string()));
    }
    let seq = inbox.take_seq(&mut state);
    match state.push_live(message, seq, false) {
        Ok(_) => Ok(Accepted::Live),
        Err(_) => Err(RouteError::RecipientOverflow(inbox.name().to_string())),
    }
}

/// What the store keeps of a message, built only once the store needs it:
/// a live delivery that the inbox holds until it is acknowledged never does
/// (issue 6). One for a message, whatever the number of its recipients, so
/// that their appends share one record.
///
/// It does not borrow the message (each use is handed it), so that a DM's
/// one reference can move into the outbox at the end of the delivery.
pub(crate) struct KeptRecord {
    /// Bytes charged against the limits; `None` when nothing is stored (no
    /// durable store, or a kind of message that is not kept).
    pub(super) size: Option<u64>,
    record: OnceCell<Arc<Record>>,
}

impl KeptRecord {
    pub(super) fn new(message: &Message, durable: bool) -> KeptRecord {
        let size = if durable { record_size(message) } else { None };
        KeptRecord { size, record: OnceCell::new() }
    }

    /// The record of `message` (the one this was made for), built on first
    /// use. Called only when `size` is known, so the message is of a kept
    /// kind.
    pub(super) fn record(&self, message: &Message) -> Arc<Record> {
        Arc::clone(self.record.get_or_init(|| Arc::new(record_of(message))))
    }
}

/// [`record_for`] of a message known to be of a kept kind (one that has a
/// [`record_size`]: only those are held or appended). The fallback, an
/// empty server message, is never built; it keeps the caller total.
pub(super) fn record_of(message: &Message) -> Record {
    record_for(message).unwrap_or_else(|| {
        // Unreachable (`a_kept_record_is_charged_what_the_record_built_later_weighs`);
        // said loudly if it ever is not.
        debug_assert!(false, "a record of a message that is not kept");
        tracing::error!(ts = message.ts(), "a message of a kind that is not kept was stored empty");
        Record {
            kind: RecordKind::Server,
            ts: message.ts(),
            from: None,
            text: "".into(),
            payload: None,
        }
    })
}

/// `record_for(message).size()` without building the record.
fn record_size(message: &Message) -> Option<u64> {
    let (from, text, payload) = match message.body() {
        Body::Direct { from, text, .. } => (from.as_str().len(), text.len(), 0),
        Body::Server { text, .. } => (0, text.len(), 0),
        Body::Binary { from, room: None, payload } => (from.as_str().len(), 0, payload.len()),
        Body::Receipt { to, id } => (to.as_str().len(), id.len(), 0),
        Body::Room { .. } | Body::Presence { .. } | Body::Binary { room: Some(_), .. } => {
            return None
        }
    };
    Some(64 + (from + text + payload) as u64)
}

/// What the store keeps of a message, or `None` for messages not stored.
fn record_for(message: &Message) -> Option<Record> {
    let ts = message.ts();
    let (kind, from, payload) = match message.body() {
        Body::Direct { from, .. } => (RecordKind::Direct, Some(from.to_shared()), None),
        Body::Server { broadcast: false, .. } => (RecordKind::Server, None, None),
        Body::Server { broadcast: true, .. } => (RecordKind::Broadcast, None, None),
        Body::Binary { from, room: None, payload } => {
            (RecordKind::Binary, Some(from.to_shared()), Some(payload.clone()))
        }
        Body::Receipt { to, .. } => (RecordKind::Receipt, Some(to.to_shared()), None),
        Body::Room { .. } | Body::Presence { .. } | Body::Binary { room: Some(_), .. } => {
            return None
        }
    };
    Some(Record { kind, ts, from, text: message.stored_text(), payload })
}

/// A stored entry of `name`'s inbox as the message it was, with its seq.
pub fn entry_message(name: &ClientName, entry: Entry) -> Option<(Arc<Message>, u64)> {
    let Entry { seq, record } = entry;
    let from = record.from.as_deref().and_then(|from| ClientName::parse(from).ok());
    let body = match record.kind {
        RecordKind::Direct => {
            Body::Direct { from: from?, to: name.clone(), text: record.text.into() }
        }
        RecordKind::Server => Body::Server { text: record.text.to_string(), broadcast: false },
        RecordKind::Broadcast => Body::Server { text: record.text.to_string(), broadcast: true },
        RecordKind::Binary => {
            Body::Binary { from: from?, room: None, payload: record.payload.unwrap_or_default() }
        }
        RecordKind::Receipt => Body::Receipt { id: record.text.to_string(), to: from? },
    };
    Some((Arc::new(Message::at(record.ts, body)), seq))
}

/// Reports the store's changes to the hub; holds it weakly so that the
/// store thread does not keep a dropped hub alive.
struct Listener {
    hub: Weak<Shared>,
}

impl StoreListener for Listener {
    fn removed(&self, name: &str, entries: u64, bytes: u64) {
        let Some(shared) = self.hub.upgrade() else { return };
        let hub = Hub { shared };
        if let Some(inbox) = hub.inbox_of(name) {
            let mut state = inbox.lock();
            state.depth = state.depth.saturating_sub(entries);
            state.bytes = state.bytes.saturating_sub(bytes);
        }
        hub.uncount_stored(bytes);
    }

    fn receipts(&self, receipts: Vec<Receipt>) {
        let Some(shared) = self.hub.upgrade() else { return };
        Hub { shared }.route_receipts(receipts);
    }
}
