//! Per-name delivery state: the sequence counter, the inbox accounting, the
//! link to the live session, and the window of recently used client ids.
//!
//! Every delivery to a client — live or stored, DM, room message, presence —
//! goes through its [`Inbox`]: one short lock assigns the recipient's next
//! `seq`, appends the message to the durable store when it is kept
//! (issue 7), and pushes it to the session's outbox when the client is
//! online. Doing all three under one lock is what makes the order the same
//! everywhere: a seq is never pushed out of order, and a stored entry is
//! always queued to the store before the recipient could acknowledge it.
//!
//! With a durable store an inbox exists for every *known* name (one that has
//! connected) and outlives its sessions; in `--ephemeral` mode it lives and
//! dies with the session, exactly as the hub behaved before issue 7.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use switchboard_protocol::ClientName;

use super::message::Message;
use super::outbox::{Outbox, Outgoing, PushError};
use crate::store::{Op, Store};

pub(crate) use crate::store::LEASE_STEP;

/// Most client ids remembered per sender for deduplication.
const DEDUP_IDS: usize = 4096;

/// One name's delivery state.
#[derive(Debug)]
pub(crate) struct Inbox {
    name: ClientName,
    /// The durable store; `None` in ephemeral mode or for a name the hub
    /// could not make known (issue 7).
    store: Option<Store>,
    state: Mutex<InboxState>,
}

#[derive(Debug)]
pub(crate) struct InboxState {
    /// The next seq to hand out.
    pub(crate) next_seq: u64,
    /// Seqs up to this are covered by a lease submitted to the store.
    pub(crate) leased: u64,
    /// Stored, unacknowledged entries.
    pub(crate) depth: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// The live session: its id and outbox. `None` while offline.
    pub(crate) live: Option<(u64, Outbox)>,
    /// Client ids this name used recently as a sender.
    pub(crate) recent: DedupWindow,
}

impl Inbox {
    /// A fresh inbox whose first seq is `next_seq`.
    pub(crate) fn new(name: ClientName, store: Option<Store>, next_seq: u64) -> Inbox {
        Inbox {
            name,
            store,
            state: Mutex::new(InboxState {
                next_seq: next_seq.max(1),
                leased: next_seq.saturating_sub(1),
                depth: 0,
                bytes: 0,
                live: None,
                recent: DedupWindow::default(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name this inbox belongs to.
    pub(crate) fn name(&self) -> &ClientName {
        &self.name
    }

    /// The store this inbox keeps entries in, if durable.
    pub(crate) fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Delivers a message that is not stored (presence, room traffic): a
    /// seq, then the live outbox. `Ok(false)` when offline.
    pub(crate) fn deliver(&self, message: &Arc<Message>) -> Result<bool, PushError> {
        let mut state = self.lock();
        if state.live.is_none() {
            return Ok(false);
        }
        let seq = self.take_seq(&mut state);
        state.push_live(message, seq, false)
    }

    /// Hands out the next seq, extending the lease in the store when more
    /// than half of it is used (so the lease is on disk long before the
    /// seqs it covers run out).
    pub(crate) fn take_seq(&self, state: &mut InboxState) -> u64 {
        let seq = state.next_seq;
        state.next_seq += 1;
        self.lease(state, seq);
        seq
    }

    /// Moves numbering up to `next` (never down), leasing it first.
    pub(crate) fn skip_to(&self, state: &mut InboxState, next: u64) {
        if next > state.next_seq {
            self.lease(state, next);
            state.next_seq = next;
        }
    }

    fn lease(&self, state: &mut InboxState, seq: u64) {
        if let Some(store) = &self.store {
            if seq + LEASE_STEP / 2 > state.leased {
                let upto = seq + LEASE_STEP;
                let lease = Op::Lease { name: self.name.to_shared(), upto };
                if store.submit(lease).is_ok() {
                    state.leased = upto;
                }
            }
        }
    }
}

impl InboxState {
    /// Pushes a delivery to the live session, if any. `Ok(false)` when offline.
    pub(crate) fn push_live(
        &self,
        message: &Arc<Message>,
        seq: u64,
        stored: bool,
    ) -> Result<bool, PushError> {
        match &self.live {
            Some((_, outbox)) => outbox
                .push(Outgoing::Deliver { message: message.clone(), seq, stored })
                .map(|()| true),
            None => Ok(false),
        }
    }
}

/// The client ids a sender used recently, oldest first; bounded in count
/// (and pruned by age by the caller's clock).
#[derive(Debug, Default)]
pub(crate) struct DedupWindow {
    ids: HashSet<Arc<str>>,
    order: VecDeque<(u64, Arc<str>)>,
}

impl DedupWindow {
    /// True when `id` was used within the window.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Forgets `id` (its send failed after all).
    pub(crate) fn remove(&mut self, id: &str) {
        if self.ids.remove(id) {
            self.order.retain(|(_, kept)| &**kept != id);
        }
    }

    /// Remembers `id` at `now_ms`, forgetting ids older than `window_ms` and
    /// the oldest beyond [`DEDUP_IDS`].
    pub(crate) fn insert(&mut self, id: &str, now_ms: u64, window_ms: u64) {
        while let Some((at, _)) = self.order.front() {
            if self.order.len() < DEDUP_IDS && now_ms.saturating_sub(*at) <= window_ms {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        let id: Arc<str> = Arc::from(id);
        if self.ids.insert(id.clone()) {
            self.order.push_back((now_ms, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_is_bounded_by_count_and_age() {
        let mut window = DedupWindow::default();
        window.insert("a", 0, 1000);
        assert!(window.contains("a"));
        window.insert("b", 2000, 1000);
        assert!(!window.contains("a"), "aged out");
        for i in 0..(DEDUP_IDS + 10) {
            window.insert(&i.to_string(), 2000, 1000);
        }
        assert!(window.order.len() <= DEDUP_IDS);
        assert!(!window.contains("0"));
        assert!(window.contains(&(DEDUP_IDS + 9).to_string()));
    }

    #[test]
    fn seqs_count_up_from_the_first() {
        let name = ClientName::parse("a").unwrap_or_else(|e| panic!("{e}"));
        let inbox = Inbox::new(name, None, 7);
        let mut state = inbox.lock();
        assert_eq!(inbox.take_seq(&mut state), 7);
        assert_eq!(inbox.take_seq(&mut state), 8);
        assert_eq!(state.next_seq, 9);
    }
}
