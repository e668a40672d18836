//! The durable store (issue 7): per-recipient inboxes, room history and the
//! sender-id window for deduplication, in an embedded SQLite database.
//!
//! The hub never waits for the disk. It *submits* operations ([`Op`]) to one
//! store thread, which takes everything queued, applies it in one SQLite
//! transaction (group commit), commits with the configured [`SyncPolicy`],
//! and only then runs the operations' completions — the sender's `ack` is a
//! completion, so no message is acknowledged before it is on disk.
//!
//! ```text
//!  hub (any task) ──submit(Op, then)──► queue (bounded in bytes) ──► store thread
//!                                                                    │ BEGIN
//!                                                                    │ apply queued ops (≤ max_batch)
//!                                                                    │ COMMIT (fsync per policy)
//!                                                                    ▼ report to the listener, run completions
//! ```
//!
//! **Invariants**
//! - Operations are applied in submission order; a completion runs after its
//!   operation's transaction has committed. Reads ([`Store::replay`],
//!   [`Store::inbox_stats`]) end the batch they arrive in, so they see every
//!   operation submitted before them.
//! - An `Append` and an `Ack` that covers it in the same batch cancel out: a
//!   message delivered and acknowledged live never touches the disk. (The
//!   thread holds a batch's appends back until its end to make this work.)
//! - The queue is bounded in bytes ([`StoreConfig::queue_limit_bytes`]);
//!   beyond it [`Store::submit`] fails with [`StoreError::Overloaded`] and
//!   the caller refuses the message with a clear error.
//! - The store knows nothing of the hub: it stores [`Record`]s under names
//!   and reports back through the [`StoreListener`] it is given, only after
//!   the change has committed. A failed commit reports nothing and runs the
//!   batch's completions with `false`; the thread carries on.
//! - Entries older than [`StoreConfig::max_age`] and dedup ids older than
//!   [`StoreConfig::dedup_window`] are swept every 30 s (reported as
//!   `removed`) and once at open, before the [`Snapshot`] is read.
//!
//! SQLite because it is embedded (no server to run), its WAL `synchronous`
//! levels map one to one onto [`SyncPolicy`], and `switchboard.db` can be
//! inspected with the `sqlite3` CLI. The thread and the SQL are in
//! `sqlite.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

mod redis;
mod sqlite;
#[cfg(test)]
mod tests;

/// When a commit is forced to stable storage; see docs/durability.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// Every group commit is fsynced before its acks are sent (SQLite WAL,
    /// `synchronous=FULL`). Survives process crashes and power loss.
    #[default]
    Full,
    /// Commits reach the OS at once, fsync only at WAL checkpoints (SQLite
    /// `synchronous=NORMAL`). Survives a process crash (kill -9); a power
    /// loss or kernel crash may lose the last commits.
    Normal,
    /// No fsync at all (`synchronous=OFF`). Survives a process crash; a power
    /// loss may lose or corrupt recent data. For benchmarks and tests.
    Off,
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory holding `switchboard.db` (created if missing).
    pub data_dir: PathBuf,
    /// When commits are synced.
    pub sync: SyncPolicy,
    /// Most operations in one transaction.
    pub max_batch: usize,
    /// Bytes of operations that may wait for the store thread.
    pub queue_limit_bytes: usize,
    /// Entries older than this are removed by the retention sweep.
    pub max_age: Duration,
    /// How long a (sender, client id) pair is remembered for deduplication.
    pub dedup_window: Duration,
    /// Room messages kept per room (0: no room history).
    pub room_history: usize,
}

/// Seqs are leased in steps of this size: after a crash a name's numbering
/// resumes above the last lease, so a seq a client has seen is never handed
/// out again even if its delivery was never stored.
pub const LEASE_STEP: u64 = 1 << 16;

/// Where the Redis store is and who this node is (cluster mode).
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// `redis://HOST:PORT`, the cluster's Redis.
    pub url: String,
    /// This node's id: the value of the name claims it holds.
    pub node_id: String,
}

/// What kind of delivery an inbox entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A private text message (`from` set).
    Direct,
    /// A text from the operator to this client only.
    Server,
    /// A text from the operator to everyone.
    Broadcast,
    /// A private binary message (`from` set, `payload` set).
    Binary,
    /// A delivery receipt: `text` is the sender's message id, `from` the
    /// client that acknowledged it.
    Receipt,
}

impl RecordKind {
    /// The number a stored entry carries for its kind.
    pub fn code(self) -> i64 {
        match self {
            RecordKind::Direct => 0,
            RecordKind::Server => 1,
            RecordKind::Broadcast => 2,
            RecordKind::Binary => 3,
            RecordKind::Receipt => 4,
        }
    }

    /// The kind a stored number stands for.
    pub fn from_code(code: i64) -> Option<RecordKind> {
        Some(match code {
            0 => RecordKind::Direct,
            1 => RecordKind::Server,
            2 => RecordKind::Broadcast,
            3 => RecordKind::Binary,
            4 => RecordKind::Receipt,
            _ => return None,
        })
    }
}

/// One stored delivery, as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The kind.
    pub kind: RecordKind,
    /// Hub time when the message was accepted, ms since the Unix epoch.
    pub ts: u64,
    /// The sender's name (for `Direct`, `Binary`, `Receipt`).
    pub from: Option<Name>,
    /// The text (or, for a receipt, the acknowledged message's id), shared
    /// with the message: a broadcast's entries share one copy.
    pub text: Arc<str>,
    /// A binary message's payload.
    pub payload: Option<Bytes>,
}

/// A client name as the store keeps it: shared, so that queueing an
/// operation for a name costs a reference count, not a copy.
pub type Name = Arc<str>;

impl Record {
    /// Bytes this entry is charged against inbox and store limits.
    pub fn size(&self) -> usize {
        64 + self.text.len()
            + self.from.as_ref().map_or(0, |from| from.len())
            + self.payload.as_ref().map_or(0, Bytes::len)
    }
}

/// One room-history entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// The room's own sequence number, +1 per stored message.
    pub rseq: u64,
    /// Hub time, ms since the Unix epoch.
    pub ts: u64,
    /// The sender; `None` for the operator.
    pub from: Option<String>,
    /// The text.
    pub text: String,
}

/// An inbox entry read back for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The recipient's sequence number.
    pub seq: u64,
    /// The delivery.
    pub record: Record,
}

/// A delivery receipt owed to a sender: `to` acknowledged `sender`'s message `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Who sent the message and asked for the receipt.
    pub sender: String,
    /// The sender's client id of the message.
    pub id: String,
    /// The recipient who acknowledged it.
    pub to: String,
}

/// A name's inbox as loaded at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameState {
    /// The name.
    pub name: String,
    /// The next sequence number to assign (above every seq ever handed out,
    /// stored or leased).
    pub next_seq: u64,
    /// Unacknowledged entries.
    pub depth: u64,
    /// Their bytes ([`Record::size`]).
    pub bytes: u64,
}

/// Everything the hub needs from disk at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every known name.
    pub names: Vec<NameState>,
    /// Room history: each room's last entries, oldest first.
    pub rooms: Vec<(String, Vec<RoomRecord>)>,
    /// (sender, client id) pairs within the dedup window.
    pub recent_ids: Vec<(String, String)>,
}

/// Depth and age of one inbox, for the operator API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboxStats {
    /// Unacknowledged entries.
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The oldest entry's time, ms since the Unix epoch.
    pub oldest_ts: Option<u64>,
    /// The lowest unacknowledged seq.
    pub first_seq: Option<u64>,
}

/// A name's inbox as a cluster node takes it over when the client connects
/// there (the Redis store; see `redis.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loaded {
    /// The first seq of the block this node now numbers from.
    pub next_seq: u64,
    /// The top of that block.
    pub leased: u64,
    /// Stored, unacknowledged entries.
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The client ids the name sent within the dedup window.
    pub recent_ids: Vec<String>,
}

/// A delivery to a name this node does not hold (the Redis store): stored
/// under a seq from the name's counter when no node holds the name, or
/// handed to the node that does.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    /// The recipient.
    pub to: Name,
    /// The delivery.
    pub record: Record,
    /// The sender's client id (deduplication, receipts).
    pub client_id: Option<String>,
    /// Send a receipt when the recipient acknowledges it.
    pub receipt: bool,
    /// The cluster frame to publish to the node that holds `to`, if one does.
    pub forward: Vec<u8>,
    /// Most entries in one inbox.
    pub max_messages: u64,
    /// Most bytes in one inbox.
    pub max_bytes: u64,
}

/// What became of a [`RouteRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Stored for the offline name under this seq.
    Stored(u64),
    /// Handed to the node that holds the name; it answers the sender.
    Forwarded(String),
    /// The sender used this client id within the dedup window.
    Duplicate,
    /// The name never connected.
    Unknown,
    /// The inbox is at a limit (the text says which).
    Full(String),
    /// The store could not be reached or refused.
    Failed(String),
}

/// A room message to number and publish cluster-wide (the Redis store).
#[derive(Debug, Clone)]
pub struct RoomPublish {
    /// The room.
    pub room: String,
    /// Hub time, ms since the Unix epoch.
    pub ts: u64,
    /// The sender; `None` for the operator.
    pub from: Option<String>,
    /// The text.
    pub text: String,
    /// The cluster frame every node delivers from (the room's `rseq` is
    /// put in front of it, see `redis.rs`).
    pub frame: Vec<u8>,
}

/// Rooms and their kept messages, oldest first.
pub type Histories = Vec<(String, Vec<RoomRecord>)>;

/// Runs on the store thread with a room message's `rseq`, or why it failed.
pub type RoomDone = Box<dyn FnOnce(Result<u64, String>) + Send>;

/// Runs on the store thread with the outcome of a [`RouteRequest`].
pub type RouteDone = Box<dyn FnOnce(RouteOutcome) + Send>;

/// One change to the store.
#[derive(Debug, Clone)]
pub enum Op {
    /// Marks `name` as known (it connected), and records activity.
    Touch {
        /// The name.
        name: Name,
    },
    /// Appends a delivery to `name`'s inbox under `seq`.
    Append {
        /// The recipient.
        name: Name,
        /// The recipient's sequence number for it.
        seq: u64,
        /// The delivery, shared: a broadcast's appends share one record
        /// (issue 6: an `Op` is moved several times on its way to disk).
        record: Arc<Record>,
        /// The sender's client id, remembered for deduplication and receipts.
        client_id: Option<String>,
        /// Send a receipt to `record.from` when the recipient acknowledges it.
        receipt: bool,
        /// It was also pushed to the recipient's live session, so an ack is
        /// likely soon: the store may hold it in memory a while (never past
        /// a commit a sender waits on) hoping to never write it.
        live: bool,
    },
    /// Removes `name`'s entries with seq ≤ `upto` (acknowledged). Receipts
    /// owed for them go to [`StoreListener::receipts`].
    Ack {
        /// The recipient.
        name: Name,
        /// Highest acknowledged seq (cumulative).
        upto: u64,
    },
    /// Records that seqs up to `upto` may have been handed out for `name`
    /// (deliveries that are not stored still consume seqs): after a crash,
    /// numbering resumes above it.
    Lease {
        /// The name.
        name: Name,
        /// Highest seq that may be in use.
        upto: u64,
    },
    /// Remembers a (sender, client id) pair for deduplication.
    Sent {
        /// The sender.
        sender: Name,
        /// Its client id.
        id: String,
    },
    /// Appends a room message to its history, keeping the last
    /// [`StoreConfig::room_history`].
    RoomAppend {
        /// The room.
        room: String,
        /// The entry.
        record: RoomRecord,
    },
    /// Deletes every entry of `name`'s inbox (operator purge).
    Purge {
        /// The name.
        name: Name,
    },
    /// Changes nothing: its completion runs once everything submitted
    /// before it is committed (the operator API answers after it).
    Barrier,
}

impl Op {
    /// An append nobody waits on or asked a receipt for, written with its
    /// batch: a delivery the hub held and now hands over, or stored for an
    /// offline name.
    pub fn append(name: impl Into<Name>, seq: u64, record: impl Into<Arc<Record>>) -> Op {
        Op::Append {
            name: name.into(),
            seq,
            record: record.into(),
            client_id: None,
            receipt: false,
            live: false,
        }
    }
}

/// Runs after an operation's transaction has committed (or failed:
/// the argument is false when the commit failed).
pub type Completion = Box<dyn FnOnce(bool) + Send>;

/// How the store reports changes it made by itself or that the hub needs
/// to hear about after commit.
pub trait StoreListener: Send + Sync + 'static {
    /// Entries left `name`'s inbox: acknowledged, expired by age or purged.
    fn removed(&self, name: &str, entries: u64, bytes: u64);
    /// Receipts owed after acknowledgements.
    fn receipts(&self, receipts: Vec<Receipt>);
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The queue to the store thread is full: the disk cannot keep up.
    #[error("the message store is overloaded; retry later")]
    Overloaded,
    /// The store thread has stopped.
    #[error("the message store is closed")]
    Closed,
    /// SQLite failed.
    #[error("message store: {0}")]
    Database(String),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Handle to the store thread. Clone it freely.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The only sender: taking it out (close) or dropping the last handle
    /// disconnects the queue, and the thread exits once it has drained it.
    tx: RwLock<Option<mpsc::Sender<Cmd>>>,
    shared: Arc<Shared>,
    limit: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The store thread, unparked by reads: between batches it naps (see
    /// `sqlite.rs`).
    waiter: std::thread::Thread,
    /// Inboxes live in Redis, shared by the cluster's nodes.
    shared_inboxes: bool,
}

/// State shared by the handles and the store thread.
#[derive(Debug, Default)]
struct Shared {
    /// Bytes of queued operations not yet committed.
    queued: AtomicUsize,
    /// Signalled after every group commit.
    drained: Notify,
    /// When the last "queue full" warning was logged, in seconds since the
    /// Unix epoch: one a minute at most, however many sends are refused.
    overload_warned: AtomicU64,
}

impl Shared {
    fn release(&self, cost: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(cost)));
    }
}

impl Store {
    /// Opens (or creates) the database, loads the [`Snapshot`] and starts the
    /// store thread. Blocking: call before serving.
    ///
    /// Entries already past [`StoreConfig::max_age`] are deleted before the
    /// snapshot is read, so the snapshot never counts them.
    ///
    /// # Errors
    /// When the directory or database cannot be opened.
    pub fn open(
        config: StoreConfig,
        listener: Arc<dyn StoreListener>,
    ) -> Result<(Store, Snapshot), StoreError> {
        let io = |source| StoreError::Io { path: config.data_dir.display().to_string(), source };
        // Messages at rest are private: a directory the store creates is
        // readable by the server's user only. One that exists is left as the
        // operator set it up.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        if !config.data_dir.is_dir() {
            builder.create(&config.data_dir).map_err(io)?;
        }
        let path = config.data_dir.join(DB_FILE);
        let mut conn = sqlite::open(&path, config.sync)?;
        let snapshot = sqlite::load(&mut conn, &config)
            .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let limit = config.queue_limit_bytes;
        let worker = sqlite::Worker::new(conn, rx, Arc::clone(&shared), listener, config);
        let thread = std::thread::Builder::new()
            .name("switchboard-store".to_owned())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Database(format!("cannot start the store thread: {e}")))?;
        Ok((Store::spawned(tx, shared, limit, thread, false), snapshot))
    }

    /// Cluster mode: a store whose inboxes live in Redis at `options.url`,
    /// so a client resumes on any node (see `redis.rs` for the keys and
    /// scripts). Nothing is loaded at start: a node takes a name's inbox
    /// over ([`Store::load`]) when the client connects to it. Redis need
    /// not be up yet; operations fail (and senders are told) until it is.
    ///
    /// # Errors
    /// When the URL is not a Redis URL or the thread cannot start.
    pub fn open_redis(
        config: StoreConfig,
        options: RedisStoreOptions,
        listener: Arc<dyn StoreListener>,
    ) -> Result<Store, StoreError> {
        let client = ::redis::Client::open(options.url.as_str())
            .map_err(|e| StoreError::Database(format!("redis URL {}: {e}", options.url)))?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let limit = config.queue_limit_bytes;
        let worker = redis::Worker::new(client, options, rx, Arc::clone(&shared), listener, config);
        let thread = std::thread::Builder::new()
            .name("switchboard-store".to_owned())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Database(format!("cannot start the store thread: {e}")))?;
        Ok(Store::spawned(tx, shared, limit, thread, true))
    }

    fn spawned(
        tx: mpsc::Sender<Cmd>,
        shared: Arc<Shared>,
        limit: usize,
        thread: JoinHandle<()>,
        shared_inboxes: bool,
    ) -> Store {
        let inner = Inner {
            tx: RwLock::new(Some(tx)),
            shared,
            limit,
            waiter: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
            shared_inboxes,
        };
        Store { inner: Arc::new(inner) }
    }

    /// True when inboxes live in Redis and are shared by a cluster's nodes.
    pub fn shares_inboxes(&self) -> bool {
        self.inner.shared_inboxes
    }

    /// Cluster mode: takes `name`'s inbox over for this node (after the
    /// node claimed the name): leases a block of seqs above every seq
    /// handed out anywhere, and reads the inbox's size and the name's recent
    /// client ids. In queue order, like every read.
    pub async fn load(&self, name: &str) -> Result<Loaded, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send_read(Read::Load { name: name.to_owned(), reply })
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(loaded)) => Ok(loaded),
            Ok(Err(error)) => Err(StoreError::Database(error)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Cluster mode: stores `request` for a name no node holds, or hands it
    /// to the node that holds it; `done` runs on the store thread with the
    /// outcome (at once with [`RouteOutcome::Failed`] when closed).
    ///
    /// Charged to the queue like an operation, and pipelined with them.
    pub fn route(&self, request: RouteRequest, done: RouteDone) {
        let cost = 64 + request.to.len() + request.record.size() + request.forward.len();
        if let Err(error) = self.charge(cost) {
            done(RouteOutcome::Failed(error.to_string()));
            return;
        }
        if let Err(cmd) = self.send_read(Read::Route { request, done, cost }) {
            self.inner.shared.release(cost);
            if let Cmd::Read(Read::Route { done, .. }) = *cmd {
                done(RouteOutcome::Failed(StoreError::Closed.to_string()));
            }
        }
    }

    /// Cluster mode: numbers a room message with the room's cluster-wide
    /// `rseq`, keeps it in the room's history in Redis (the last
    /// [`StoreConfig::room_history`]) and publishes it to every node, this
    /// one included, in one atomic step; `done` gets the rseq. Pipelined
    /// with the operations, charged to the queue.
    pub fn room_publish(&self, publish: RoomPublish, done: RoomDone) {
        let cost = 64 + publish.room.len() + publish.text.len() + publish.frame.len();
        if let Err(error) = self.charge(cost) {
            done(Err(error.to_string()));
            return;
        }
        if let Err(cmd) = self.send_read(Read::RoomPublish { publish, done, cost }) {
            self.inner.shared.release(cost);
            if let Cmd::Read(Read::RoomPublish { done, .. }) = *cmd {
                done(Err(StoreError::Closed.to_string()));
            }
        }
    }

    /// Cluster mode: every room's kept history in Redis, oldest first.
    pub async fn histories(&self) -> Result<Histories, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send_read(Read::Histories { reply }).map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(rooms)) => Ok(rooms),
            Ok(Err(error)) => Err(StoreError::Database(error)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Charges `cost` bytes to the queue, or fails when it is full.
    fn charge(&self, cost: usize) -> Result<(), StoreError> {
        let limit = self.inner.limit;
        self.inner
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(cost).filter(|n| *n <= limit)
            })
            .map(|_| ())
            .map_err(|_| {
                self.warn_overloaded();
                StoreError::Overloaded
            })
    }

    /// Tells the operator, at most once a minute, that the store is not
    /// keeping up: messages are being refused until it does.
    #[cold]
    fn warn_overloaded(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.inner.shared.overload_warned.load(Ordering::Relaxed);
        if now >= last + 60
            && self
                .inner
                .shared
                .overload_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit_bytes = self.inner.limit,
                "message store queue full: its disk (or Redis, in cluster mode) is not keeping \
                 up; messages that must be stored are refused until it does (logged once a \
                 minute at most)"
            );
        }
    }

    /// Queues `op`; never blocks.
    ///
    /// # Errors
    /// [`StoreError::Overloaded`] when the queue is full, [`StoreError::Closed`].
    pub fn submit(&self, op: Op) -> Result<(), StoreError> {
        self.submit_then(op, None)
    }

    /// Queues `op` and runs `then` once it is committed; never blocks.
    ///
    /// `then` runs on the store thread, after the listener has been told
    /// about the batch: it must be quick and must not block.
    ///
    /// # Errors
    /// As [`Store::submit`]; `then` is dropped unrun.
    pub fn submit_then(&self, op: Op, then: Option<Completion>) -> Result<(), StoreError> {
        self.queue(op, then, true)
    }

    /// Queues an operation for work the hub has already accepted (a live
    /// delivery it held in memory, issue 6): charged to the queue like any
    /// other, but never refused for a full one. Refusing it would lose a
    /// message whose sender was told it was taken; what it adds is bounded
    /// by the deliveries the hub holds.
    ///
    /// # Errors
    /// [`StoreError::Closed`].
    pub fn hand_over(&self, op: Op) -> Result<(), StoreError> {
        self.queue(op, None, false)
    }

    /// [`Store::hand_over`] with a completion, as [`Store::submit_then`]:
    /// a held delivery whose sender waits for the commit.
    ///
    /// # Errors
    /// [`StoreError::Closed`]; `then` is dropped unrun.
    pub fn hand_over_then(&self, op: Op, then: Option<Completion>) -> Result<(), StoreError> {
        self.queue(op, then, false)
    }

    fn queue(&self, op: Op, then: Option<Completion>, limited: bool) -> Result<(), StoreError> {
        let cost = op_cost(&op);
        let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = tx.as_ref() else {
            return Err(StoreError::Closed);
        };
        if limited {
            self.charge(cost)?;
        } else {
            self.inner.shared.queued.fetch_add(cost, Ordering::AcqRel);
        }
        if tx.send(Cmd::Op { op, then, cost }).is_err() {
            self.inner.shared.release(cost);
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Bytes of operations queued for the store thread and not yet
    /// committed; at [`StoreConfig::queue_limit_bytes`] sends are refused.
    pub fn queued_bytes(&self) -> usize {
        self.inner.shared.queued.load(Ordering::Acquire)
    }

    /// True while the queue is below its limit: a submit of an ordinary
    /// size would be taken.
    pub fn accepting(&self) -> bool {
        self.inner.shared.queued.load(Ordering::Acquire) < self.inner.limit
    }

    /// True while the queue holds more than half its limit: readers should
    /// wait in [`Store::uncongested`] before routing more (backpressure).
    pub fn congested(&self) -> bool {
        self.inner.shared.queued.load(Ordering::Acquire) > self.inner.limit / 2
    }

    /// Resolves once the queue is below half its limit.
    pub async fn uncongested(&self) {
        loop {
            let notified = self.inner.shared.drained.notified();
            tokio::pin!(notified);
            // Registered before the check, so a commit in between still wakes us.
            notified.as_mut().enable();
            if !self.congested() {
                return;
            }
            notified.await;
        }
    }

    /// Reads `name`'s entries with `after < seq ≤ upto`, in seq order, after
    /// every operation submitted before this call is applied. When
    /// `ack_through_after` is true, entries with seq ≤ `after` are deleted
    /// first (the client said it has them).
    ///
    /// The deletion is reported like an [`Op::Ack`] (receipts, `removed`).
    /// A closed store answers `Err` at once. Reads are not charged to the
    /// queue limit.
    pub fn replay(
        &self,
        name: &str,
        after: u64,
        upto: u64,
        ack_through_after: bool,
    ) -> oneshot::Receiver<Result<Vec<Entry>, String>> {
        let (reply, rx) = oneshot::channel();
        let read = Read::Replay { name: name.to_owned(), after, upto, ack_through_after, reply };
        if let Err(cmd) = self.send_read(read) {
            if let Cmd::Read(Read::Replay { reply, .. }) = *cmd {
                let _ = reply.send(Err(StoreError::Closed.to_string()));
            }
        }
        rx
    }

    /// Depth and age of `name`'s inbox, consistent with every operation
    /// submitted before.
    ///
    /// The receiver fails (the sender is dropped) when the store is closed
    /// or SQLite failed; the failure is logged.
    pub fn inbox_stats(&self, name: &str) -> oneshot::Receiver<InboxStats> {
        let (reply, rx) = oneshot::channel();
        // On failure the reply sender is dropped with the command.
        let _ = self.send_read(Read::Stats { name: name.to_owned(), reply });
        rx
    }

    /// Runs the retention sweep now, in queue order (tests cannot wait for
    /// the timer).
    #[cfg(test)]
    pub(crate) fn sweep_now(&self) {
        let _ = self.send_read(Read::Sweep);
    }

    /// Applies everything queued, commits, and stops the thread. Blocking
    /// (bounded by the queue); idempotent. Afterwards every submit fails
    /// with [`StoreError::Closed`]. Called from a completion (on the store
    /// thread) it returns at once and the thread stops after the batch.
    pub fn close(&self) {
        // Dropping the only sender disconnects the queue; the thread drains it.
        drop(self.inner.tx.write().unwrap_or_else(PoisonError::into_inner).take());
        let handle = self.inner.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            if handle.thread().id() == std::thread::current().id() {
                return;
            }
            if handle.join().is_err() {
                tracing::error!("the store thread panicked");
            }
        }
    }

    /// Queues a read; gives the command back when the store is closed.
    fn send_read(&self, read: Read) -> Result<(), Box<Cmd>> {
        let cmd = Cmd::Read(read);
        let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
        match tx.as_ref() {
            Some(tx) => {
                tx.send(cmd).map_err(|mpsc::SendError(cmd)| Box::new(cmd))?;
                self.inner.waiter.unpark();
                Ok(())
            }
            None => Err(Box::new(cmd)),
        }
    }
}

/// What travels from the handles to the thread.
enum Cmd {
    /// A change, applied in the next group commit.
    Op {
        op: Op,
        then: Option<Completion>,
        /// Bytes charged to the queue for it.
        cost: usize,
    },
    /// Anything that must see every change queued before it.
    Read(Read),
}

/// A command that ends the current batch.
enum Read {
    Replay {
        name: String,
        after: u64,
        upto: u64,
        ack_through_after: bool,
        reply: oneshot::Sender<Result<Vec<Entry>, String>>,
    },
    Stats {
        name: String,
        reply: oneshot::Sender<InboxStats>,
    },
    #[cfg_attr(not(test), allow(dead_code))]
    Sweep,
    /// Takes a name over for this node (the Redis store only).
    Load {
        name: String,
        reply: oneshot::Sender<Result<Loaded, String>>,
    },
    /// Numbers a room message, keeps it in the room's history and publishes
    /// it to every node (the Redis store only).
    RoomPublish {
        publish: RoomPublish,
        done: RoomDone,
        /// Bytes charged to the queue for it.
        cost: usize,
    },
    /// Every room's history (the Redis store only).
    Histories {
        reply: oneshot::Sender<Result<Histories, String>>,
    },
    /// Stores or forwards a delivery to a name not held here (the Redis store only).
    Route {
        request: RouteRequest,
        done: RouteDone,
        /// Bytes charged to the queue for it.
        cost: usize,
    },
}

/// The database file inside [`StoreConfig::data_dir`].
const DB_FILE: &str = "switchboard.db";

/// Bytes an operation is charged against [`StoreConfig::queue_limit_bytes`]:
/// a fixed overhead plus what it carries.
fn op_cost(op: &Op) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    64 + match op {
        Op::Touch { name } | Op::Purge { name } => name.len(),
        Op::Ack { name, .. } | Op::Lease { name, .. } => name.len(),
        Op::Append { name, record, client_id, .. } => name.len() + record.size() + opt(client_id),
        Op::Sent { sender, id } => sender.len() + id.len(),
        Op::RoomAppend { room, record } => room.len() + record.text.len() + opt(&record.from),
        Op::Barrier => 0,
    }
}

/// The writer thread's wait for its next command, shared by both stores:
/// until `deadline` (carried appends coming of age) and at most
/// [`crate::idle::IDLE_AFTER`], so that an idle writer gets to hand its
/// freed memory back ([`crate::idle::thread_idle`], called on a timeout).
/// `Ok(None)` on a timeout; `Err` once every handle is gone.
fn next_command(
    rx: &mpsc::Receiver<Cmd>,
    deadline: Option<std::time::Instant>,
) -> Result<Option<Cmd>, mpsc::RecvTimeoutError> {
    let wait = deadline.map_or(crate::idle::IDLE_AFTER, |deadline| {
        deadline.saturating_duration_since(std::time::Instant::now()).min(crate::idle::IDLE_AFTER)
    });
    match rx.recv_timeout(wait) {
        Ok(cmd) => Ok(Some(cmd)),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            crate::idle::thread_idle();
            Ok(None)
        }
        Err(error) => Err(error),
    }
}
