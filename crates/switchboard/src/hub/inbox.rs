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
//!
//! A stored delivery to an online client that no sender waits for is not
//! queued to the store at once: the inbox holds it ([`Unsaved`]) until the
//! client acknowledges it, which is the common case and then costs the store
//! nothing, or until it has waited a sweep period or two, its session ends,
//! or a delivery that must be stored at once comes for the same name. Then
//! it is handed to the store, in seq order (issue 6).
//!
//! A v1 send with an id is held the same way, with its sender's answer
//! ([`Confirm`]): the sender is told its message was taken once the
//! recipient has acknowledged it and the id is committed (so that a retry
//! is known as one), or once the delivery, handed over, is committed with
//! its id. Never before: an id on disk without its message would make a
//! retry after a crash look like a duplicate of a message that was lost.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use compact_str::CompactString;
use switchboard_protocol::ClientName;

use super::durable::record_of;
use super::message::Message;
use super::outbox::{Outbox, Outgoing, PushError};
use crate::store::{Completion, Name, Op, Store};

pub(crate) use crate::store::LEASE_STEP;

/// Most client ids remembered per sender for deduplication.
const DEDUP_IDS: usize = 4096;

/// Most live deliveries one inbox holds unsaved; beyond, they go to the
/// store at once (a client-ack session that does not acknowledge).
const UNSAVED_MAX: usize = 4096;

/// A session's last recipient (issue 6): a client that sends many private
/// messages to one name (a chat, a game peer) finds its inbox here, without
/// the hub's lock, a hash lookup and a reference count per message.
///
/// It holds one inbox at most, and gives it up at its next lookup once the
/// inbox has left the registry: looking a name up here is the same as
/// looking it up in the registry at that moment. Until then a departed
/// client's inbox stays allocated, emptied of its ids ([`Inboxes::remove`]):
/// a few hundred bytes per session at most. A session's reader owns one;
/// callers without one pass a fresh `RecipientCache::default()`.
#[derive(Debug, Default)]
pub struct RecipientCache(Option<Arc<Inbox>>);

impl RecipientCache {
    /// The inbox of `to`: the one held if it is `to`'s and still
    /// registered, else what `lookup` finds, held from now on.
    pub(crate) fn find(
        &mut self,
        to: &str,
        lookup: impl FnOnce(&str) -> Option<Arc<Inbox>>,
    ) -> Option<&Arc<Inbox>> {
        let current = self
            .0
            .as_ref()
            .is_some_and(|held| held.name.as_str() == to && !held.retired.load(Ordering::Relaxed));
        if !current {
            // A retired inbox is let go here too: an idle sender's cache
            // would otherwise keep a departed client's state alive.
            self.0 = lookup(to);
        }
        self.0.as_ref()
    }
}

/// The registry's inboxes by name. Every inbox that leaves it is retired on
/// the way out, which is what keeps a [`RecipientCache`] true.
#[derive(Debug, Default)]
pub(crate) struct Inboxes(HashMap<ClientName, Arc<Inbox>>);

impl Inboxes {
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Inbox>> {
        self.0.get(name)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Registers `inbox` for `name`, retiring the one it replaces.
    pub(crate) fn insert(&mut self, name: ClientName, inbox: Arc<Inbox>) {
        if let Some(replaced) = self.0.insert(name, inbox) {
            replaced.retire();
        }
    }

    /// Removes and retires `name`'s inbox, whose session has ended.
    pub(crate) fn remove(&mut self, name: &str) {
        if let Some(removed) = self.0.remove(name) {
            removed.retire();
            // Its session sends no more, so its ids need no remembering;
            // a `RecipientCache` may hold the inbox until that cache's next
            // DM, and holds only its shell then.
            removed.lock().recent = DedupWindow::default();
        }
    }
}

/// One name's delivery state.
#[derive(Debug)]
pub(crate) struct Inbox {
    name: ClientName,
    /// The durable store; `None` in ephemeral mode or for a name the hub
    /// could not make known (issue 7).
    store: Option<Store>,
    state: Mutex<InboxState>,
    /// Set once the inbox has left the hub's registry (its session ended in
    /// ephemeral mode, another node took the name over): a
    /// [`RecipientCache`] holding it must look the name up again.
    retired: AtomicBool,
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
    /// The highest seq the recipient has acknowledged in this process: the
    /// entries up to it leave `depth` only once the store reports them gone.
    pub(crate) acked_upto: u64,
    /// The live session: its id and outbox. `None` while offline.
    pub(crate) live: Option<(u64, Outbox)>,
    /// Client ids this name used recently as a sender.
    pub(crate) recent: DedupWindow,
    /// Live deliveries not handed to the store yet (issue 6).
    pub(crate) unsaved: Unsaved,
}

/// Stored deliveries to the live session that the inbox holds instead of
/// the store, oldest first, and what the store may hold besides.
///
/// Each counts in the inbox's `depth` and `bytes` like a stored entry. An
/// acknowledgement drops the held ones in memory and reaches the store only
/// when the store may hold some of the acknowledged seqs. A held delivery
/// is its message (which the outbox shares until written); the store's
/// record of it is built only when it is handed over, which most never are.
#[derive(Debug, Default)]
pub(crate) struct Unsaved {
    entries: VecDeque<Held>,
    /// Entries up to this seq were already held at the last sweep, so have
    /// waited at least a sweep period.
    aged_upto: u64,
    /// On the hub's list of inboxes to sweep.
    listed: bool,
    /// Highest seq appended to the store (conservatively: everything
    /// numbered before this inbox was loaded may be on disk).
    stored_upto: u64,
    /// Highest seq an `Ack` sent to the store covers.
    store_acked: u64,
}

/// One held delivery.
#[derive(Debug)]
struct Held {
    seq: u64,
    /// Bytes charged against the limits.
    size: u64,
    /// The store's record of it is built only if it is handed over.
    message: Arc<Message>,
    /// The sender waits for it (a v1 send with an id).
    confirm: Option<Box<Confirm>>,
}

/// The answer a v1 sender waits for, held with its delivery.
pub(crate) struct Confirm {
    /// The sender's name and client id, remembered for deduplication.
    pub(crate) sender: Name,
    pub(crate) id: String,
    /// Runs once the id (and, if handed over, the delivery) is committed.
    pub(crate) then: Completion,
}

impl std::fmt::Debug for Confirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirm").field("sender", &self.sender).field("id", &self.id).finish()
    }
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
                acked_upto: 0,
                live: None,
                recent: DedupWindow::default(),
                unsaved: Unsaved { stored_upto: next_seq.saturating_sub(1), ..Unsaved::default() },
            }),
            retired: AtomicBool::new(false),
        }
    }

    /// Marks the inbox as gone from the registry (see [`RecipientCache`]).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
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
        state.push_live(Arc::clone(message), seq, false)
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

    /// Holds a live delivery instead of appending it to the store: `None`
    /// when it must be appended now (too many held), else whether this
    /// inbox must be put on the hub's sweep list (it is not on it yet).
    pub(crate) fn hold(
        state: &mut InboxState,
        seq: u64,
        message: &Arc<Message>,
        size: u64,
    ) -> Option<bool> {
        let unsaved = &mut state.unsaved;
        if unsaved.entries.len() >= UNSAVED_MAX {
            return None;
        }
        unsaved.entries.push_back(Held { seq, size, message: Arc::clone(message), confirm: None });
        Some(!std::mem::replace(&mut unsaved.listed, true))
    }

    /// Gives the held delivery numbered `seq` its sender's answer. `Err`
    /// with the answer when it is no longer held (acknowledged or handed
    /// over in the meantime): the caller answers it another way.
    pub(crate) fn attach(&self, seq: u64, confirm: Confirm) -> Result<(), Confirm> {
        let mut state = self.lock();
        match state.unsaved.entries.iter_mut().rev().find(|held| held.seq == seq) {
            Some(held) => {
                held.confirm = Some(Box::new(confirm));
                Ok(())
            }
            None => Err(confirm),
        }
    }

    /// Notes that the delivery numbered `seq` was appended to the store.
    pub(crate) fn appended(state: &mut InboxState, seq: u64) {
        state.unsaved.stored_upto = state.unsaved.stored_upto.max(seq);
    }

    /// Hands the held deliveries with seq ≤ `upto` to the store, oldest
    /// first. They go as not live: they are written with their batch.
    pub(crate) fn save(&self, state: &mut InboxState, upto: u64) {
        let Some(store) = &self.store else { return };
        let unsaved = &mut state.unsaved;
        while let Some(held) = unsaved.entries.front_mut() {
            if held.seq > upto {
                break;
            }
            let seq = held.seq;
            let mut append = Op::append(self.name.to_shared(), seq, record_of(&held.message));
            // A waiting sender's id is written with the entry, and the
            // sender answered after that commit.
            let then = held.confirm.take().map(|confirm| {
                if let Op::Append { client_id, .. } = &mut append {
                    *client_id = Some(confirm.id);
                }
                confirm.then
            });
            if let Err(error) = store.hand_over_then(append, then) {
                // Only a closed store refuses; the entries stay held (a
                // waiting sender is not answered: its connection is ending).
                tracing::warn!(name = %self.name, %error, "cannot save held deliveries");
                return;
            }
            unsaved.stored_upto = unsaved.stored_upto.max(seq);
            unsaved.entries.pop_front();
        }
    }

    /// One sweep: saves what was already held at the last sweep (or
    /// everything, with `all`), and marks what is held now. True while
    /// something is still held (the inbox stays on the sweep list).
    pub(crate) fn sweep(&self, all: bool) -> bool {
        let mut state = self.lock();
        let upto = if all { u64::MAX } else { state.unsaved.aged_upto };
        self.save(&mut state, upto);
        let unsaved = &mut state.unsaved;
        unsaved.aged_upto = unsaved.entries.back().map_or(0, |held| held.seq);
        unsaved.listed = !unsaved.entries.is_empty();
        if !unsaved.listed {
            // Off the list until its next delivery: an idle inbox keeps no
            // buffer (issue 6, idle memory).
            unsaved.entries = VecDeque::new();
        }
        unsaved.listed
    }

    /// Every delivery up to `upto` is acknowledged: drops the held ones and
    /// tells the store when it may hold some. Returns the bytes dropped in
    /// memory (the caller owns the hub-wide count).
    pub(crate) fn acknowledge(&self, state: &mut InboxState, upto: u64) -> u64 {
        state.acked_upto = state.acked_upto.max(upto);
        let (mut entries, mut bytes) = (0, 0);
        let unsaved = &mut state.unsaved;
        while unsaved.entries.front().is_some_and(|held| held.seq <= upto) {
            if let Some(held) = unsaved.entries.pop_front() {
                entries += 1;
                bytes += held.size;
                if let Some(confirm) = held.confirm {
                    self.confirm_delivered(*confirm);
                }
            }
        }
        if let Some(store) = &self.store {
            if unsaved.stored_upto > unsaved.store_acked && upto > unsaved.store_acked {
                let ack = Op::Ack { name: self.name.to_shared(), upto };
                if store.hand_over(ack).is_ok() {
                    unsaved.store_acked = upto;
                }
            }
        }
        state.depth = state.depth.saturating_sub(entries);
        state.bytes = state.bytes.saturating_sub(bytes);
        bytes
    }

    /// Drops every held delivery (the operator purges the inbox); returns
    /// their bytes.
    pub(crate) fn forget_unsaved(&self, state: &mut InboxState) -> u64 {
        let dropped = std::mem::take(&mut state.unsaved.entries);
        let bytes = dropped.iter().map(|held| held.size).sum();
        state.depth = state.depth.saturating_sub(dropped.len() as u64);
        state.bytes = state.bytes.saturating_sub(bytes);
        // Taken, then purged by the operator: the senders are answered as
        // for a delivered message.
        for confirm in dropped.into_iter().filter_map(|held| held.confirm) {
            self.confirm_delivered(*confirm);
        }
        bytes
    }

    /// A held delivery whose sender waits is gone from memory without
    /// being stored (acknowledged, or purged): its id is committed, and the
    /// sender answered after that commit.
    fn confirm_delivered(&self, confirm: Confirm) {
        let Some(store) = &self.store else { return };
        let Confirm { sender, id, then } = confirm;
        // Unrun only when the store has closed: the sender's connection is
        // ending, and its retry is answered from the window in memory.
        let _ = store.hand_over_then(Op::Sent { sender, id }, Some(then));
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
    /// Entries and bytes counted against the inbox limits: those the
    /// recipient has not acknowledged. An acknowledged entry still counts in
    /// `depth` until the store has deleted it, which under load comes
    /// batches later; a recipient that keeps up must not look full for
    /// that. At most one entry per seq above `acked_upto` can be pending;
    /// bytes are taken in proportion.
    pub(crate) fn unacknowledged(&self) -> (u64, u64) {
        let above = self.next_seq.saturating_sub(1).saturating_sub(self.acked_upto);
        if above >= self.depth {
            return (self.depth, self.bytes);
        }
        let bytes = u128::from(self.bytes) * u128::from(above) / u128::from(self.depth.max(1));
        (above, u64::try_from(bytes).unwrap_or(u64::MAX))
    }

    /// Pushes a delivery to the live session, if any. `Ok(false)` when offline.
    pub(crate) fn push_live(
        &self,
        message: Arc<Message>,
        seq: u64,
        stored: bool,
    ) -> Result<bool, PushError> {
        match &self.live {
            Some((_, outbox)) => {
                outbox.push(Outgoing::Deliver { message, seq, stored }).map(|()| true)
            }
            None => Ok(false),
        }
    }
}

/// The client ids a sender used recently, oldest first; bounded in count
/// (and pruned by age by the caller's clock).
///
/// A send evicts the oldest id once the window is full, so eviction is on
/// the hot path of v1 DMs with ids (issue 6). Ids live in a ring in send
/// order, each numbered by its place in the sequence of inserts; the table
/// holds those numbers under the id's hash. An eviction finds its entry by
/// number, never by comparing strings. Ids of up to 24 bytes are kept in
/// their slot: no allocation per send, and no touch of memory thousands of
/// sends old besides the evicted slot itself.
#[derive(Debug, Default)]
pub(crate) struct DedupWindow {
    /// Insert numbers of the ids in the window, by hash.
    ids: hashbrown::HashTable<u64>,
    hasher: foldhash::fast::RandomState,
    /// The ids in insert order: `ring[k]` is number `first + k`. An id that
    /// was removed keeps its slot (no longer in `ids`) until it is evicted.
    ring: VecDeque<Remembered>,
    /// The insert number of `ring[0]`.
    first: u64,
}

#[derive(Debug)]
struct Remembered {
    at_ms: u64,
    hash: u64,
    /// Inline up to 24 bytes: the ring is walked in order, where a heap
    /// string per id would be a miss at a random address (issue 6).
    id: CompactString,
}

impl DedupWindow {
    /// The slot of the id numbered `number` (every number in `ids` has one).
    fn slot(&self, number: u64) -> Option<&Remembered> {
        slot(&self.ring, self.first, number)
    }

    fn find(&self, hash: u64, id: &str) -> Option<u64> {
        self.ids.find(hash, |&number| self.slot(number).is_some_and(|kept| kept.id == id)).copied()
    }

    /// True when `id` is remembered (tests: the hub asks [`Self::insert`]).
    #[cfg(test)]
    fn contains(&self, id: &str) -> bool {
        self.find(self.hasher.hash_one(id), id).is_some()
    }

    /// Forgets `id` (its send failed after all).
    pub(crate) fn remove(&mut self, id: &str) {
        let hash = self.hasher.hash_one(id);
        if let Some(number) = self.find(hash, id) {
            if let Ok(entry) = self.ids.find_entry(hash, |&kept| kept == number) {
                entry.remove();
            }
        }
    }

    /// Remembers `id` at `now_ms`, forgetting ids older than `window_ms` and
    /// the oldest beyond [`DEDUP_IDS`]. False when `id` was used within the
    /// window already (a duplicate): one hash and one lookup for both the
    /// check and the insert (issue 6).
    pub(crate) fn insert(&mut self, id: &str, now_ms: u64, window_ms: u64) -> bool {
        while let Some(oldest) = self.ring.front() {
            if self.ring.len() < DEDUP_IDS && now_ms.saturating_sub(oldest.at_ms) <= window_ms {
                break;
            }
            let number = self.first;
            if let Ok(entry) = self.ids.find_entry(oldest.hash, |&kept| kept == number) {
                entry.remove();
            }
            self.ring.pop_front();
            self.first += 1;
        }
        let hash = self.hasher.hash_one(id);
        if self.find(hash, id).is_some() {
            return false;
        }
        let id = CompactString::new(id);
        let number = self.first + self.ring.len() as u64;
        self.ring.push_back(Remembered { at_ms: now_ms, hash, id });
        let (ring, first) = (&self.ring, self.first);
        self.ids.insert_unique(hash, number, |&kept| {
            slot(ring, first, kept).map_or(0, |kept| kept.hash)
        });
        true
    }
}

fn slot(ring: &VecDeque<Remembered>, first: u64, number: u64) -> Option<&Remembered> {
    let offset = usize::try_from(number.checked_sub(first)?).ok()?;
    ring.get(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache answers what the registry would: the held inbox while it
    /// is registered, a fresh lookup once it was replaced or removed.
    #[test]
    fn a_recipient_cache_never_answers_with_an_inbox_that_left_the_registry() {
        let name = |n: &str| ClientName::parse(n).unwrap();
        let mut inboxes = Inboxes::default();
        let mut cache = RecipientCache::default();
        let first = Arc::new(Inbox::new(name("bob"), None, 1));
        inboxes.insert(name("bob"), first.clone());
        let mut lookups = 0;
        let mut find = |cache: &mut RecipientCache, inboxes: &Inboxes, to: &str| {
            cache
                .find(to, |to| {
                    lookups += 1;
                    inboxes.get(to).cloned()
                })
                .cloned()
        };
        assert!(Arc::ptr_eq(&find(&mut cache, &inboxes, "bob").unwrap(), &first));
        assert!(Arc::ptr_eq(&find(&mut cache, &inboxes, "bob").unwrap(), &first));
        assert!(find(&mut cache, &inboxes, "carol").is_none());
        assert!(Arc::ptr_eq(&find(&mut cache, &inboxes, "bob").unwrap(), &first));
        // Another node took the name over: a new inbox replaces the first.
        let second = Arc::new(Inbox::new(name("bob"), None, 7));
        inboxes.insert(name("bob"), second.clone());
        assert!(Arc::ptr_eq(&find(&mut cache, &inboxes, "bob").unwrap(), &second));
        // The session ended (ephemeral): no inbox, and none held; the
        // retired inbox, still held until the next lookup, forgot its ids.
        second.lock().recent.insert("id-1", 0, 1000);
        inboxes.remove("bob");
        assert!(second.lock().recent.insert("id-1", 0, 1000), "forgotten at removal");
        assert!(find(&mut cache, &inboxes, "bob").is_none());
        // Only the second "bob" was answered from the cache.
        assert_eq!(lookups, 5);
        assert!(cache.0.is_none(), "a retired inbox is not kept alive");
    }

    #[test]
    fn dedup_window_is_bounded_by_count_and_age() {
        let mut window = DedupWindow::default();
        window.insert("a", 0, 1000);
        assert!(window.contains("a"));
        window.insert("b", 2000, 1000);
        assert!(!window.contains("a"), "aged out");
        assert!(window.insert("a", 2000, 1000), "an aged-out id is new again");
        for i in 0..(DEDUP_IDS + 10) {
            window.insert(&i.to_string(), 2000, 1000);
        }
        assert!(window.ring.len() <= DEDUP_IDS);
        assert_eq!(window.ids.len(), window.ring.len(), "evicted from both");
        assert!(!window.contains("0"));
        assert!(window.contains(&(DEDUP_IDS + 9).to_string()));
        // A failed send's id is forgotten, and can be used again.
        let last = (DEDUP_IDS + 9).to_string();
        window.remove(&last);
        assert!(!window.contains(&last));
        assert_eq!(window.ids.len() + 1, window.ring.len(), "its slot stays until evicted");
        assert!(window.insert(&last, 2000, 1000), "new again once removed");
        assert!(!window.insert(&last, 2000, 1000), "a duplicate");
        assert!(window.contains(&last));
        assert_eq!(window.ids.len() + 1, window.ring.len(), "remembered once");
        // Evicting the removed id's old slot leaves its new one alone.
        for i in 0..(DEDUP_IDS - 1) {
            window.insert(&format!("x{i}"), 2000, 1000);
        }
        assert!(window.contains(&last));
        assert_eq!(window.ids.len(), window.ring.len());
    }

    /// The window against a plain list of the same ids, through a long
    /// pseudo-random run of inserts (repeats included), removes and clock
    /// steps that age ids out.
    #[test]
    fn dedup_window_agrees_with_a_plain_list() {
        let mut window = DedupWindow::default();
        let mut model: VecDeque<(u64, Option<String>)> = VecDeque::new();
        let (mut state, mut now) = (12345u64, 0u64);
        let (mut full, mut aged) = (false, false);
        for step in 0..15_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Short ids (kept inline in the ring) and, for a third of the
            // numbers, ids longer than 24 bytes (kept on the heap).
            let n = (state >> 33) % 6000;
            let id = if n % 3 == 0 {
                format!("f47ac10b-58cc-4372-a567-{n:012}")
            } else {
                format!("m{n}")
            };
            now += (state >> 20) % 5;
            let window_ms = 20_000;
            match (state >> 60) % 8 {
                0 => {
                    window.remove(&id);
                    for (_, kept) in model.iter_mut() {
                        if kept.as_deref() == Some(&id) {
                            *kept = None;
                        }
                    }
                }
                _ => {
                    let new = window.insert(&id, now, window_ms);
                    while let Some((at, _)) = model.front() {
                        if model.len() < DEDUP_IDS && now.saturating_sub(*at) <= window_ms {
                            break;
                        }
                        model.pop_front();
                    }
                    let duplicate = model.iter().any(|(_, kept)| kept.as_deref() == Some(&id));
                    if !duplicate {
                        model.push_back((now, Some(id.clone())));
                    }
                    assert_eq!(new, !duplicate, "step {step}: insert of {id}");
                }
            }
            let expected = model.iter().any(|(_, kept)| kept.as_deref() == Some(&id));
            assert_eq!(window.contains(&id), expected, "step {step}: {id}");
            let live = model.iter().filter(|(_, kept)| kept.is_some()).count();
            assert_eq!((window.ids.len(), window.ring.len()), (live, model.len()), "step {step}");
            full |= model.len() == DEDUP_IDS;
            aged |= full && model.len() < DEDUP_IDS - 100;
        }
        assert!(full && aged, "both bounds were reached");
    }

    #[test]
    fn acknowledged_entries_the_store_has_not_deleted_yet_do_not_count() {
        let name = ClientName::parse("a").unwrap_or_else(|e| panic!("{e}"));
        let inbox = Inbox::new(name, None, 21);
        let mut state = inbox.lock();
        (state.depth, state.bytes) = (10, 1000);
        assert_eq!(state.unacknowledged(), (10, 1000), "nothing acknowledged");
        state.acked_upto = 17;
        assert_eq!(state.unacknowledged(), (3, 300), "at most seqs 18, 19 and 20 are pending");
        state.acked_upto = 5;
        assert_eq!(state.unacknowledged(), (10, 1000), "fifteen seqs above: no bound");
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
