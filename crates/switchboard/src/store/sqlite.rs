//! The store thread and its SQL: opening and migrating the database, loading
//! the [`Snapshot`], group commits, reads in queue order and the retention
//! sweep. Only this thread touches the connection, so SQLite never waits on
//! its own locks and the hub never waits on SQLite.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::types::Type;
use rusqlite::{params, Connection, TransactionBehavior};

use super::{
    next_command, Cmd, Completion, Entry, InboxStats, Name, NameState, Op, Read, Receipt, Record,
    RecordKind, RoomRecord, RouteOutcome, Shared, Snapshot, StoreConfig, StoreError, StoreListener,
    SyncPolicy,
};

/// `PRAGMA user_version` of the schema below; a newer file is refused, an
/// older one is brought up to date ([`MIGRATE_SENT`]).
const SCHEMA_VERSION: i64 = 3;

/// Versions 1 and 2 kept one `sent` row per dedup id: version 1 keyed by
/// (sender, client_id) with an index on `ts` (two B-tree inserts at random
/// places per acknowledged send), version 2 as a log in time order; still
/// ~1.3 µs of a durable v1 DM's ~5–8 (issue 6). Version 3 writes one
/// `sent_ids` row per group commit, holding that commit's ids as a JSON
/// array. Both older tables have the same three columns; their ids are
/// copied over, one row per timestamp.
const MIGRATE_SENT: &str = "
CREATE TABLE sent_ids (ts INTEGER NOT NULL, ids TEXT NOT NULL);
INSERT INTO sent_ids (ts, ids)
    SELECT ts, json_group_array(json_array(sender, client_id)) FROM sent GROUP BY ts ORDER BY ts;
DROP TABLE sent;
";

/// How often expired inbox entries and dedup ids are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How long an append for a live recipient that nobody waits for may stay
/// in memory before it is written. It is carried from batch to batch until
/// it is this old, its recipient acknowledges it (then it is never written:
/// the common case for live traffic), or a batch needs everything durable —
/// one with a completion (a sender's ack waits on it) or followed by a read.
/// So no acknowledged message is ever only in memory; what a crash can lose
/// is at most this much of live traffic whose senders were not told it was
/// stored (and which had not reached the recipient). Appends for offline
/// recipients are written at the end of their batch. Most live deliveries
/// never get here: the hub holds them until acked (`hub/inbox.rs`) and
/// hands over the rest marked not live. What is still carried here: live
/// appends a sender waits for (for one batch, [`Due::Earlier`]), an inbox's
/// overflow, and room history and `Touch`es.
const CARRY_MAX_AGE: Duration = Duration::from_secs(1);

/// After a batch, the thread naps this long before taking the next one,
/// instead of blocking on the queue: a blocked thread is woken (a futex call
/// and a context switch) by every single submit, which under load cost more
/// than the store's own work. A read unparks the thread (a replay at
/// connect waits on it). A sender's ack waits for up to two naps: its batch
/// is committed after one, and its completion runs after the next commit
/// ([`Due::Earlier`]), by which time the recipient's ack has usually
/// cancelled the append. 2 ms rather than 0.5 ms: ~10% less CPU per
/// durable DM and per API-fanout delivery (issue 6, sixth pass).
const COALESCE: Duration = Duration::from_millis(2);

/// Which carried appends a batch writes besides those that came of age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Only those that came of age (or are for offline names).
    Aged,
    /// Every append that came in an earlier batch: a sender waits on this
    /// batch's successor. An append of this batch stays in memory for one
    /// more batch, so that the recipient's ack, which usually follows it
    /// within a batch, can still cancel it (issue 6: a v1 DM with an id to
    /// an online recipient otherwise cost an inbox row written and deleted).
    Earlier,
    /// All of them: a read follows, or the thread is closing.
    All,
}

/// A group commit slower than this is logged as a warning.
const SLOW_COMMIT: Duration = Duration::from_secs(1);

/// Most appends carried in memory; beyond, every carried append is written.
const CARRY_MAX_ENTRIES: usize = 200_000;

/// The carry keeps up to this much spare capacity between batches; more,
/// left by a burst, goes back to the allocator (issue 6, idle memory).
const SPARE_CAPACITY: usize = 1024;

/// How long a statement waits for a lock held by another process (the
/// `sqlite3` CLI inspecting the file) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `WITHOUT ROWID` because every table is looked up by its natural key; the
/// `ts` index keeps the sweep a range delete instead of a full scan. Except
/// `sent_ids`, the dedup ids: written once per acknowledged send and read
/// only when the store opens (the hub keeps the window in memory), so it is
/// a log in rowid (time) order, appended at its end and swept from its
/// start, with one row per group commit: a JSON array of the commit's
/// `[sender, client_id]` pairs.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    sender TEXT,
    text TEXT NOT NULL,
    payload BLOB,
    client_id TEXT,
    receipt INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (name, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS inbox_ts ON inbox (ts);
CREATE TABLE IF NOT EXISTS names (
    name TEXT NOT NULL PRIMARY KEY,
    seq_lease INTEGER NOT NULL DEFAULT 0,
    last_seen INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS room_log (
    room TEXT NOT NULL,
    rseq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    sender TEXT,
    text TEXT NOT NULL,
    PRIMARY KEY (room, rseq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sent_ids (
    ts INTEGER NOT NULL,
    ids TEXT NOT NULL
);
";

/// Opens the database file with the pragmas for `sync` and brings the
/// schema up to date.
pub(super) fn open(path: &Path, sync: SyncPolicy) -> Result<Connection, StoreError> {
    let db = |e: rusqlite::Error| StoreError::Database(format!("{}: {e}", path.display()));
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "{}: schema version {version} is newer than this build supports \
             ({SCHEMA_VERSION}); run a newer switchboard or use another data directory",
            path.display()
        )));
    }
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(db)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "{}: cannot enable WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    let synchronous = match sync {
        SyncPolicy::Full => "FULL",
        SyncPolicy::Normal => "NORMAL",
        SyncPolicy::Off => "OFF",
    };
    conn.pragma_update(None, "synchronous", synchronous).map_err(db)?;
    let migrate = if version == 1 || version == 2 { MIGRATE_SENT } else { "" };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;{migrate}{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
    ))
    .map_err(db)?;
    Ok(conn)
}

/// Deletes what has expired (without reporting: nobody has counted it yet)
/// and reads what the hub needs to start.
pub(super) fn load(conn: &mut Connection, config: &StoreConfig) -> rusqlite::Result<Snapshot> {
    let now = now_ms();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    sweep_rows(&tx, now, config)?;
    tx.commit()?;

    let mut names = Vec::new();
    let mut stmt = conn.prepare(
        "WITH i AS (SELECT name, MAX(seq) AS top, COUNT(*) AS depth, SUM(bytes) AS bytes
                    FROM inbox GROUP BY name),
              every AS (SELECT name FROM names UNION SELECT name FROM i)
         SELECT every.name, COALESCE(names.seq_lease, 0), COALESCE(i.top, 0),
                COALESCE(i.depth, 0), COALESCE(i.bytes, 0)
         FROM every
         LEFT JOIN names ON names.name = every.name
         LEFT JOIN i ON i.name = every.name
         ORDER BY every.name",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let lease = uint(row.get(1)?);
        let top = uint(row.get(2)?);
        names.push(NameState {
            name: row.get(0)?,
            next_seq: lease.max(top).saturating_add(1),
            depth: uint(row.get(3)?),
            bytes: uint(row.get(4)?),
        });
    }

    let mut rooms = Vec::new();
    if config.room_history > 0 {
        let keep = int(u64::try_from(config.room_history).unwrap_or(u64::MAX));
        let mut list = conn.prepare("SELECT DISTINCT room FROM room_log ORDER BY room")?;
        let mut last = conn.prepare(
            "SELECT rseq, ts, sender, text FROM room_log WHERE room = ?1
             ORDER BY rseq DESC LIMIT ?2",
        )?;
        let room_names = list
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for room in room_names {
            let mut entries = last
                .query_map(params![room, keep], |row| {
                    Ok(RoomRecord {
                        rseq: uint(row.get(0)?),
                        ts: uint(row.get(1)?),
                        from: row.get(2)?,
                        text: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            entries.reverse();
            rooms.push((room, entries));
        }
    }

    let since = int(now.saturating_sub(millis(config.dedup_window)));
    let mut stmt = conn.prepare("SELECT ids FROM sent_ids WHERE ts >= ?1 ORDER BY rowid")?;
    let mut rows = stmt.query([since])?;
    let mut recent_ids = Vec::new();
    while let Some(row) = rows.next()? {
        let ids: Vec<(String, String)> = serde_json::from_str(row.get_ref(0)?.as_str()?)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Text, e.into()))?;
        recent_ids.extend(ids);
    }

    Ok(Snapshot { names, rooms, recent_ids })
}

/// The store thread's state.
pub(super) struct Worker {
    conn: Connection,
    rx: Receiver<Cmd>,
    shared: Arc<Shared>,
    listener: Arc<dyn StoreListener>,
    config: StoreConfig,
    /// Per name, a range covering every seq that may have a row on disk.
    on_disk: OnDisk,
    /// Appends not written yet; see [`CARRY_MAX_AGE`].
    carry: Carry,
    /// A commit failed since the last completion ran (or was deferred).
    failed: bool,
    /// Seq leases a failed commit did not write, retried first by the next
    /// one: the hub hands out seqs up to a lease it has submitted, and one
    /// missing on disk would let a restarted hub number new deliveries at
    /// or below seqs a client has already acknowledged.
    owed_leases: Vec<Op>,
    /// The last batch's completions, run after the next commit has written
    /// (or an ack has cancelled) the appends they wait for, with whether
    /// every commit up to their own succeeded ([`Due::Earlier`]).
    deferred: Option<(Vec<Completion>, bool)>,
    /// The last batch's operations buffer, emptied, for the next batch: a
    /// 4,096-operation buffer is half a megabyte, and allocating it afresh
    /// per batch made the kernel zero new pages for it every time (6% of
    /// the server's CPU in a 1,000-receiver durable fanout). Dropped when
    /// the thread finds no work (issue 6, idle memory).
    spare_ops: Vec<Op>,
}

/// Appends held in memory across batches, per name in seq order.
#[derive(Default)]
struct Carry {
    by_name: HashMap<Name, Vec<Pending>>,
    /// The entries in `by_name`, kept as they come and go.
    entries: usize,
    /// No entry in `by_name` is older than this (a bound, not exact: acks
    /// do not move it). While it is younger than the cutoff and no offline
    /// append came, no entry is due and a batch does not look at the lists
    /// at all (issue 6: a 1,000-receiver fanout spent most of the store
    /// thread's time scanning every carried entry, batch after batch).
    oldest: Option<Instant>,
    /// An append for an offline name came since the last write: it is due
    /// at once.
    offline: bool,
    /// Operations nobody waits for, oldest first, applied when due like the
    /// appends: room-history appends and `Touch`es. Writing each publish or
    /// each new connection at once would cost a commit (an fsync) apiece.
    later: Vec<(Op, Instant)>,
    /// The number of the batch being written ([`Due::Earlier`]).
    batch: u64,
}

impl Carry {
    /// When the oldest carried append must be written.
    fn deadline(&self) -> Option<Instant> {
        let later = self.later.first().map(|(_, at)| *at);
        // Acks may have emptied the lists since `oldest` was set.
        let inboxes = self.oldest.filter(|_| self.entries > 0);
        inboxes.into_iter().chain(later).min().map(|oldest| oldest + CARRY_MAX_AGE)
    }

    fn is_empty(&self) -> bool {
        self.entries == 0 && self.later.is_empty()
    }
}

/// For each name, (lowest, highest) seq that may have a row in `inbox`.
/// Conservative (a range may cover seqs with no row), never short: an ack
/// below a name's range (or for a name with none) needs no `DELETE`, which
/// is the common case for live traffic, whose entries cancel in the batch.
pub(super) type OnDisk = HashMap<String, (u64, u64)>;

/// Reads [`OnDisk`] from the table.
fn load_on_disk(conn: &Connection) -> rusqlite::Result<OnDisk> {
    let mut stmt = conn.prepare("SELECT name, MIN(seq), MAX(seq) FROM inbox GROUP BY name")?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, (uint(row.get(1)?), uint(row.get(2)?))))
    })?;
    rows.collect()
}

impl Worker {
    pub(super) fn new(
        conn: Connection,
        rx: Receiver<Cmd>,
        shared: Arc<Shared>,
        listener: Arc<dyn StoreListener>,
        config: StoreConfig,
    ) -> Self {
        let on_disk = load_on_disk(&conn).unwrap_or_else(|e| {
            tracing::error!(error = %e, "store: cannot read inbox ranges; acks always delete");
            HashMap::new()
        });
        Worker {
            spare_ops: Vec::new(),
            conn,
            rx,
            shared,
            listener,
            config,
            on_disk,
            carry: Carry::default(),
            failed: false,
            owed_leases: Vec::new(),
            deferred: None,
        }
    }

    /// Serves commands until every sender is gone (the queue is drained
    /// first: `recv` yields what is buffered before reporting disconnect).
    pub(super) fn run(mut self) {
        let _exit = ExitGuard(Arc::clone(&self.shared));
        let max_batch = self.config.max_batch.max(1);
        let mut last_sweep = Instant::now();
        loop {
            let mut wake = last_sweep + SWEEP_INTERVAL;
            if let Some(deadline) = self.carry.deadline() {
                wake = wake.min(deadline);
            }
            if self.deferred.is_some() {
                // Senders wait for the next commit: one nap, not the carry's age.
                wake = wake.min(Instant::now() + COALESCE);
            }
            let Ok(first) = next_command(&self.rx, Some(wake)) else { break };
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                self.sweep();
                last_sweep = Instant::now();
            }
            let Some(mut cmd) = first else {
                // Carried appends came of age, or senders wait: write them.
                let due = if self.deferred.is_some() { Due::Earlier } else { Due::Aged };
                self.commit(Batch::default(), due);
                self.spare_ops = Vec::new();
                continue;
            };
            let mut batch = Batch { ops: std::mem::take(&mut self.spare_ops), ..Batch::default() };
            let mut read = None;
            loop {
                match cmd {
                    Cmd::Op { op, then, cost } => batch.push(op, then, cost),
                    Cmd::Read(r) => {
                        read = Some(r);
                        break;
                    }
                }
                if batch.ops.len() >= max_batch {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(next) => cmd = next,
                    Err(_) => break,
                }
            }
            // A read must see every append; a waiting sender, every append
            // but this batch's, and hears back after the next commit.
            let due = if read.is_some() {
                Due::All
            } else if !batch.thens.is_empty() || self.deferred.is_some() {
                Due::Earlier
            } else {
                Due::Aged
            };
            self.commit(batch, due);
            if let Some(read) = read {
                self.serve(read);
            } else {
                // Woken early by reads (`Store::send_read`).
                std::thread::park_timeout(COALESCE);
            }
        }
        // Closing: nothing stays in memory.
        self.commit(Batch::default(), Due::All);
    }

    /// Applies `batch` in one transaction, then reports and runs completions.
    fn commit(&mut self, mut batch: Batch, due: Due) {
        if !self.owed_leases.is_empty() {
            batch.ops.splice(0..0, std::mem::take(&mut self.owed_leases));
        }
        if batch.ops.is_empty() && (self.carry.is_empty() || !self.carry_is_due(due)) {
            // Nothing to write: what deferred completions waited for was
            // cancelled by acks (or written by an earlier commit).
            if let Some((thens, ok)) = self.deferred.take() {
                for then in thens {
                    guarded("a completion", || then(ok));
                }
            }
            return;
        }
        let count = batch.ops.len();
        // Only operations a failure does not lose for anyone waiting:
        // last-seen times and room history (nobody waits for them), seq
        // leases (retried until written, see `owed_leases`) and acks (what
        // one does not delete stays stored, and the next ack deletes it).
        let background = batch.ops.iter().all(|op| {
            matches!(
                op,
                Op::Touch { .. } | Op::RoomAppend { .. } | Op::Lease { .. } | Op::Ack { .. }
            )
        });
        let leases: Vec<Op> = batch
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Lease { name, upto } => Some(Op::Lease { name: name.clone(), upto: *upto }),
                _ => None,
            })
            .collect();
        let mut ops = batch.ops;
        let started = Instant::now();
        let mut carried = CarryEffects::default();
        let result = write_batch(
            &mut self.conn,
            &mut ops,
            self.config.room_history,
            &mut self.on_disk,
            &mut self.carry,
            due,
            &mut carried,
        );
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            // Meanwhile the queue fills, and once it is full messages that
            // must be stored are refused: the operator should hear why.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                operations = count,
                "store: slow group commit (the disk is not keeping up)"
            );
        }
        self.shared.release(batch.cost);
        self.report(carried.cancelled);
        // Whether nothing a completion waits for was lost for good.
        let kept = match result {
            Ok(effects) => {
                self.report(effects);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, operations = count, "store: group commit failed");
                // The ranges were updated for a transaction that rolled back.
                if let Ok(on_disk) = load_on_disk(&self.conn) {
                    self.on_disk = on_disk;
                }
                self.owed_leases = leases;
                let lost = self.forget_failed(&mut ops, carried.writing);
                let kept = background && lost.removed.is_empty();
                self.report(lost);
                kept
            }
        };
        // Emptied whether the transaction ran to the end or not.
        ops.clear();
        self.spare_ops = ops;
        // Whether the completions this commit answers cover all it lost:
        // this batch's (now or deferred) cover everything submitted before
        // them; the last batch's, everything but this batch's operations.
        let failure_told = !batch.thens.is_empty() || (self.deferred.is_some() && background);
        // A completion confirms everything submitted before it: a failed
        // commit of an earlier batch without completions counts too.
        self.failed |= !kept;
        // A lease still owed is not on disk yet: no completion confirms it.
        let durable = kept && self.owed_leases.is_empty();
        let confirmed = !self.failed && durable;
        // The last batch's completions: this commit wrote what they wait for.
        if let Some((thens, ok_then)) = self.deferred.take() {
            for then in thens {
                guarded("a completion", || then(ok_then && durable));
            }
        }
        if failure_told {
            // Told now, or deferred with `confirmed`: later completions,
            // which may confirm only what came after, start afresh.
            self.failed = false;
        }
        if !batch.thens.is_empty() {
            if due == Due::Earlier {
                self.deferred = Some((batch.thens, confirmed));
            } else {
                for then in batch.thens {
                    guarded("a completion", || then(confirmed));
                }
            }
        }
        self.shared.drained.notify_waiters();
    }

    /// What a failed commit lost, for the listener: the appends it took
    /// from the carry to write (`writing`), this batch's appends when its
    /// transaction did not begin (`unapplied`), and the carried appends of
    /// the batch whose completions hear of the failure — this one once its
    /// transaction began, else the last one, which this commit was to
    /// confirm. Those are dropped rather than left for a later commit:
    /// a sender told `unavailable` retries, and a later commit of the first
    /// copy would deliver the message twice.
    fn forget_failed(&mut self, unapplied: &mut Vec<Op>, mut lost: Effects) -> Effects {
        for op in unapplied.drain(..) {
            if let Op::Append { name, record, .. } = op {
                lost.removed(&name, size(&record));
            }
        }
        let batch = self.carry.batch;
        for (name, list) in &mut self.carry.by_name {
            let before = list.len();
            list.retain(|p| {
                let keep = p.batch != batch;
                if !keep {
                    lost.removed(name, size(&p.record));
                }
                keep
            });
            self.carry.entries -= before - list.len();
        }
        lost
    }

    /// True when some carried append must be written now.
    fn carry_is_due(&self, due: Due) -> bool {
        due != Due::Aged
            || self.carry.entries + self.carry.later.len() > CARRY_MAX_ENTRIES
            || self.carry.deadline().is_some_and(|deadline| deadline <= Instant::now())
    }

    fn serve(&mut self, read: Read) {
        match read {
            Read::Replay { name, after, upto, ack_through_after, reply } => {
                if ack_through_after && after > 0 {
                    let mut batch = Batch::default();
                    batch.push(Op::Ack { name: Name::from(name.as_str()), upto: after }, None, 0);
                    self.commit(batch, Due::All);
                }
                let entries = read_entries(&self.conn, &name, after, upto).map_err(|e| {
                    tracing::error!(error = %e, name, "store: replay failed");
                    format!("message store: {e}")
                });
                let _ = reply.send(entries);
            }
            Read::Stats { name, reply } => match read_stats(&self.conn, &name) {
                Ok(stats) => {
                    let _ = reply.send(stats);
                }
                // Dropping `reply` tells the caller there is no answer.
                Err(e) => tracing::error!(error = %e, name, "store: inbox stats failed"),
            },
            Read::Sweep => self.sweep(),
            Read::Load { reply, .. } => {
                let _ = reply.send(Err("the SQLite store does not share inboxes".to_owned()));
            }
            Read::RoomPublish { done, cost, .. } => {
                self.shared.release(cost);
                guarded("a room completion", || {
                    done(Err("the SQLite store does not share room history".to_owned()));
                });
            }
            Read::Histories { reply } => {
                let _ = reply.send(Err("the SQLite store does not share room history".to_owned()));
            }
            Read::Route { done, cost, .. } => {
                self.shared.release(cost);
                guarded("a route completion", || {
                    done(RouteOutcome::Failed(
                        "the SQLite store does not share inboxes".to_owned(),
                    ));
                });
            }
        }
    }

    /// Deletes expired inbox entries and dedup ids, reporting the entries.
    fn sweep(&mut self) {
        let now = now_ms();
        let result =
            self.conn.transaction_with_behavior(TransactionBehavior::Immediate).and_then(|tx| {
                let effects = sweep_rows(&tx, now, &self.config)?;
                tx.commit()?;
                Ok(effects)
            });
        match result {
            Ok(effects) => {
                if !effects.removed.is_empty() {
                    tracing::debug!(
                        names = effects.removed.len(),
                        "store: expired entries removed"
                    );
                }
                self.report(effects);
            }
            Err(e) => tracing::error!(error = %e, "store: retention sweep failed"),
        }
    }

    fn report(&self, effects: Effects) {
        let listener = &self.listener;
        if !effects.receipts.is_empty() {
            guarded("StoreListener::receipts", || listener.receipts(effects.receipts));
        }
        for (name, (entries, bytes)) in effects.removed {
            guarded("StoreListener::removed", || listener.removed(&name, entries, bytes));
        }
    }
}

/// Leaves the handles in a sane state however the thread ends: nothing is
/// queued any more, so nobody waits in `uncongested` forever.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.queued.store(0, std::sync::atomic::Ordering::Release);
        self.0.drained.notify_waiters();
    }
}

/// Operations taken from the queue for one transaction.
#[derive(Default)]
struct Batch {
    ops: Vec<Op>,
    thens: Vec<Completion>,
    cost: usize,
}

impl Batch {
    fn push(&mut self, op: Op, then: Option<Completion>, cost: usize) {
        self.ops.push(op);
        self.thens.extend(then);
        self.cost = self.cost.saturating_add(cost);
    }
}

/// What a transaction owes the listener once committed.
#[derive(Default)]
struct Effects {
    receipts: Vec<Receipt>,
    /// Per name: entries and bytes removed.
    removed: HashMap<String, (u64, u64)>,
}

impl Effects {
    fn removed(&mut self, name: &str, bytes: u64) {
        self.removed_many(name, 1, bytes);
    }

    fn removed_many(&mut self, name: &str, count: u64, bytes: u64) {
        if let Some((entries, total)) = self.removed.get_mut(name) {
            *entries += count;
            *total = total.saturating_add(bytes);
        } else {
            self.removed.insert(name.to_owned(), (count, bytes));
        }
    }
}

/// What a transaction did to the carry, which its rollback does not undo.
#[derive(Default)]
struct CarryEffects {
    /// Appends an ack or a purge cancelled in memory: gone, and their
    /// receipts owed, whether the transaction commits or not.
    cancelled: Effects,
    /// Appends taken from the carry to be written: stored if the
    /// transaction commits, lost if it does not.
    writing: Effects,
}

/// An `Append` held back in memory (see [`CARRY_MAX_AGE`]), so that an
/// `Ack` can cancel it before it is ever written.
struct Pending {
    /// When it was taken from the queue.
    at: Instant,
    /// The batch it came in.
    batch: u64,
    seq: u64,
    record: Arc<Record>,
    client_id: Option<String>,
    receipt: bool,
    live: bool,
}

/// Milliseconds since `at`.
fn ms_since(at: Instant) -> u64 {
    u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Applies `ops` in order in one transaction. Appends are written last;
/// that is equivalent to writing them in place because only `Ack` and
/// `Purge` read or delete inbox rows, and both act on the pending list too.
fn write_batch(
    conn: &mut Connection,
    ops: &mut Vec<Op>,
    room_history: usize,
    on_disk: &mut OnDisk,
    carry: &mut Carry,
    due: Due,
    carried: &mut CarryEffects,
) -> rusqlite::Result<Effects> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    carry.batch += 1;
    let batch = carry.batch;
    let now = int(now_ms());
    let taken = Instant::now();
    let mut effects = Effects::default();
    let pending = &mut carry.by_name;
    // The (sender, client id) pairs this batch remembers, written as one
    // row; the set keeps an id an append remembered from being listed again
    // by the hub's `Sent` for it.
    let mut ids: Vec<(Name, String)> = Vec::new();
    let mut kept_ids: HashSet<(Name, String), foldhash::fast::RandomState> = HashSet::default();
    for op in ops.drain(..) {
        match op {
            Op::Append { name, seq, record, client_id, receipt, live } => {
                // The sender's id is remembered in the same transaction as
                // the entry (even when an ack cancels the entry below): a
                // crash can never keep the message but forget the id, which
                // would let a retry deliver it twice.
                if let (Some(sender), Some(id)) = (&record.from, &client_id) {
                    ids.push((Arc::clone(sender), id.clone()));
                    // The hub's `Sent` for this id (it carries the sender's
                    // ack) usually follows in the same batch: listed once.
                    kept_ids.insert((Arc::clone(sender), id.clone()));
                }
                carry.offline |= !live;
                carry.entries += 1;
                carry.oldest.get_or_insert(taken);
                pending.entry(name).or_default().push(Pending {
                    at: taken,
                    batch,
                    seq,
                    record,
                    client_id,
                    receipt,
                    live,
                });
            }
            Op::Ack { name, upto } => {
                if let Some(list) = pending.get_mut(&name) {
                    // A list is in seq order: the acknowledged entries are a
                    // prefix, found without scanning the rest (issue 6).
                    let acked = list.partition_point(|p| p.seq <= upto);
                    carry.entries -= acked;
                    for p in list.drain(..acked) {
                        carried.cancelled.removed(&name, size(&p.record));
                        if p.receipt {
                            if let (Some(sender), Some(id)) = (&p.record.from, &p.client_id) {
                                carried.cancelled.receipts.push(Receipt {
                                    sender: sender.to_string(),
                                    id: id.clone(),
                                    to: name.to_string(),
                                });
                            }
                        }
                    }
                }
                if let Some(&(low, high)) = on_disk.get(&*name).filter(|(low, _)| *low <= upto) {
                    delete_acked(&tx, &name, upto, &mut effects)?;
                    if upto >= high {
                        on_disk.remove(&*name);
                    } else {
                        on_disk.insert(name.to_string(), (low.max(upto + 1), high));
                    }
                }
            }
            Op::Barrier => {}
            Op::Purge { name } => {
                on_disk.remove(&*name);
                if let Some(list) = pending.remove(&name) {
                    carry.entries -= list.len();
                    for p in list {
                        carried.cancelled.removed(&name, size(&p.record));
                    }
                }
                let mut stmt =
                    tx.prepare_cached("DELETE FROM inbox WHERE name = ?1 RETURNING bytes")?;
                let mut rows = stmt.query([&name])?;
                while let Some(row) = rows.next()? {
                    effects.removed(&name, uint(row.get(0)?));
                }
            }
            op @ Op::Touch { .. } => carry.later.push((op, taken)),
            Op::Lease { name, upto } => {
                tx.prepare_cached(
                    "INSERT INTO names (name, seq_lease) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET seq_lease = MAX(seq_lease, excluded.seq_lease)",
                )?
                .execute(params![name, int(upto)])?;
            }
            Op::Sent { sender, id } => {
                // Held v1 sends (`hub/inbox.rs`) come as a `Sent` alone:
                // no append listed them, nothing to hash.
                let pair = (sender, id);
                if kept_ids.is_empty() || !kept_ids.remove(&pair) {
                    ids.push(pair);
                }
            }
            op @ Op::RoomAppend { .. } => {
                if room_history > 0 {
                    carry.later.push((op, taken));
                }
            }
        }
    }
    if !ids.is_empty() {
        let pairs: Vec<(&str, &str)> = ids.iter().map(|(s, id)| (&**s, id.as_str())).collect();
        // Pairs of strings always serialise; an error is reported, not a panic.
        let json = serde_json::to_string(&pairs)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        tx.prepare_cached("INSERT INTO sent_ids (ts, ids) VALUES (?1, ?2)")?
            .execute(params![now, json])?;
    }
    // Carried appends that are due: all of them when a read waits on this
    // commit (or too many are held), all but this batch's when a sender
    // does, else the old ones.
    let all = due == Due::All || carry.entries > CARRY_MAX_ENTRIES;
    let earlier = due == Due::Earlier;
    let cutoff = taken.checked_sub(CARRY_MAX_AGE);
    if carry.entries == 0 {
        carry.oldest = None;
    }
    let some_due = all
        || earlier
        || carry.offline
        || cutoff.zip(carry.oldest).is_some_and(|(cutoff, oldest)| oldest <= cutoff);
    if some_due {
        let mut insert = None;
        let mut oldest = None::<Instant>;
        for (name, list) in pending.iter_mut() {
            // A prefix: everything up to the last entry that is due.
            let due = if all {
                list.len()
            } else {
                let old = cutoff.map_or(0, |cutoff| list.partition_point(|p| p.at <= cutoff));
                let offline = if carry.offline {
                    list.iter().rposition(|p| !p.live).map_or(0, |last| last + 1)
                } else {
                    0
                };
                // A name's appends come in seq order, so batch by batch.
                let before = if earlier { list.partition_point(|p| p.batch < batch) } else { 0 };
                old.max(offline).max(before)
            };
            if let Some(first_kept) = list.get(due) {
                oldest = Some(oldest.map_or(first_kept.at, |o| o.min(first_kept.at)));
            }
            if due == 0 {
                continue;
            }
            let insert = match &mut insert {
                Some(insert) => insert,
                None => insert.insert(tx.prepare_cached(
                    "INSERT INTO inbox (name, seq, ts, kind, sender, text, payload, client_id, receipt, bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?),
            };
            let (low, high) = (list[0].seq, list[due - 1].seq);
            let range = on_disk.entry(name.to_string()).or_insert((low, high));
            *range = (range.0.min(low), range.1.max(high));
            carry.entries -= due;
            // All of them before the first insert: a failed insert drops
            // the rest of the drain too.
            let bytes = list[..due].iter().map(|p| size(&p.record)).sum();
            carried.writing.removed_many(name, due as u64, bytes);
            for p in list.drain(..due) {
                let r = &p.record;
                insert.execute(params![
                    name,
                    int(p.seq),
                    int(r.ts),
                    RecordKind::code(r.kind),
                    r.from,
                    r.text,
                    r.payload.as_deref(),
                    p.client_id,
                    p.receipt,
                    int(size(r)),
                ])?;
            }
        }
        // Every offline append was in a due prefix, so is written now.
        carry.offline = false;
        carry.oldest = oldest;
    }
    // A name whose carried entries were all acknowledged or written keeps
    // its empty list, so that its next delivery neither inserts into the
    // map nor allocates (issue 6: a live fanout empties and refills every
    // receiver's list, broadcast after broadcast). Not beyond a bound.
    if pending.len() > carry.entries + SPARE_CAPACITY {
        pending.retain(|_, list| !list.is_empty());
        if pending.capacity() > SPARE_CAPACITY && pending.len() * 4 < pending.capacity() {
            // A burst's high-water mark is not kept for the life of the process.
            pending.shrink_to(pending.len() * 2);
        }
    }
    let later_due = carry.later.first().is_some_and(|(_, at)| {
        all || earlier
            || carry.later.len() > CARRY_MAX_ENTRIES
            || cutoff.is_some_and(|cutoff| *at <= cutoff)
    });
    if later_due {
        let keep = u64::try_from(room_history).unwrap_or(u64::MAX);
        for (op, at) in carry.later.drain(..) {
            match op {
                Op::Touch { name } => {
                    tx.prepare_cached(
                        "INSERT INTO names (name, last_seen) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
                    )?
                    .execute(params![name, now - int(ms_since(at))])?;
                }
                Op::RoomAppend { room, record } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO room_log (room, rseq, ts, sender, text)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![
                        room,
                        int(record.rseq),
                        int(record.ts),
                        record.from,
                        record.text
                    ])?;
                    if record.rseq > keep {
                        tx.prepare_cached("DELETE FROM room_log WHERE room = ?1 AND rseq <= ?2")?
                            .execute(params![room, int(record.rseq - keep)])?;
                    }
                }
                // Only the two kinds above are deferred.
                _ => {}
            }
        }
        // A burst's buffer (10k connects: ~1 MB of `Touch`es) is not kept.
        carry.later.shrink_to(SPARE_CAPACITY);
    }
    tx.commit()?;
    Ok(effects)
}

/// Deletes `name`'s stored entries up to `upto`, collecting receipts.
fn delete_acked(
    conn: &Connection,
    name: &str,
    upto: u64,
    effects: &mut Effects,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "DELETE FROM inbox WHERE name = ?1 AND seq <= ?2 RETURNING seq, bytes, receipt, sender, client_id",
    )?;
    let mut rows = stmt.query(params![name, int(upto)])?;
    // RETURNING gives no order; receipts go out in seq order.
    let mut owed = Vec::new();
    while let Some(row) = rows.next()? {
        effects.removed(name, uint(row.get(1)?));
        if row.get::<_, bool>(2)? {
            if let (Some(sender), Some(id)) =
                (row.get::<_, Option<String>>(3)?, row.get::<_, Option<String>>(4)?)
            {
                owed.push((uint(row.get(0)?), Receipt { sender, id, to: name.to_owned() }));
            }
        }
    }
    owed.sort_by_key(|(seq, _)| *seq);
    effects.receipts.extend(owed.into_iter().map(|(_, r)| r));
    Ok(())
}

/// Deletes inbox entries older than `max_age` and dedup ids older than
/// `dedup_window`, as of `now`.
fn sweep_rows(conn: &Connection, now: u64, config: &StoreConfig) -> rusqlite::Result<Effects> {
    let mut effects = Effects::default();
    let expired = int(now.saturating_sub(millis(config.max_age)));
    let mut stmt = conn.prepare_cached("DELETE FROM inbox WHERE ts < ?1 RETURNING name, bytes")?;
    let mut rows = stmt.query([expired])?;
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        effects.removed(&name, uint(row.get(1)?));
    }
    let forgotten = int(now.saturating_sub(millis(config.dedup_window)));
    // `sent_ids` is in time order: the expired rows are a prefix, found by
    // scanning up to the first row still in the window.
    conn.prepare_cached(
        "DELETE FROM sent_ids WHERE rowid < COALESCE(
             (SELECT rowid FROM sent_ids WHERE ts >= ?1 ORDER BY rowid LIMIT 1),
             (SELECT MAX(rowid) FROM sent_ids) + 1)",
    )?
    .execute([forgotten])?;
    Ok(effects)
}

fn read_entries(
    conn: &Connection,
    name: &str,
    after: u64,
    upto: u64,
) -> rusqlite::Result<Vec<Entry>> {
    if upto <= after {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, ts, kind, sender, text, payload FROM inbox
         WHERE name = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![name, int(after), int(upto)], |row| {
        let kind: i64 = row.get(2)?;
        let kind = RecordKind::from_code(kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Integer,
                format!("unknown record kind {kind}").into(),
            )
        })?;
        Ok(Entry {
            seq: uint(row.get(0)?),
            record: Record {
                kind,
                ts: uint(row.get(1)?),
                from: row.get(3)?,
                text: row.get(4)?,
                payload: row.get::<_, Option<Vec<u8>>>(5)?.map(Bytes::from),
            },
        })
    })?;
    rows.collect()
}

fn read_stats(conn: &Connection, name: &str) -> rusqlite::Result<InboxStats> {
    conn.prepare_cached(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0), MIN(ts), MIN(seq) FROM inbox WHERE name = ?1",
    )?
    .query_row([name], |row| {
        Ok(InboxStats {
            depth: uint(row.get(0)?),
            bytes: uint(row.get(1)?),
            oldest_ts: row.get::<_, Option<i64>>(2)?.map(uint),
            first_seq: row.get::<_, Option<i64>>(3)?.map(uint),
        })
    })
}

/// Runs listener and completion code (the hub's) so that a panic there is
/// logged instead of stopping the store for everyone.
pub(super) fn guarded(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("store: {what} panicked");
    }
}

fn size(record: &Record) -> u64 {
    u64::try_from(record.size()).unwrap_or(u64::MAX)
}

/// SQLite integers are signed; values beyond `i64::MAX` saturate.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

#[cfg(test)]
mod carry_tests {
    use super::*;

    fn live(name: &str, seq: u64) -> Op {
        let record = Record {
            kind: RecordKind::Direct,
            ts: 1,
            from: Some(Name::from("alice")),
            text: Arc::from("hi"),
            payload: None,
        };
        Op::Append {
            name: Name::from(name),
            seq,
            record: Arc::new(record),
            client_id: None,
            receipt: false,
            live: true,
        }
    }

    fn acks(names: &[String], upto: u64) -> Vec<Op> {
        names.iter().map(|n| Op::Ack { name: Name::from(n.as_str()), upto }).collect()
    }

    /// A database in a temporary directory and the state `write_batch`
    /// keeps between batches.
    struct Batches {
        _dir: tempfile::TempDir,
        conn: Connection,
        on_disk: OnDisk,
        carry: Carry,
    }

    impl Batches {
        fn new() -> Batches {
            let dir = tempfile::tempdir().unwrap();
            let conn = open(&dir.path().join("switchboard.db"), SyncPolicy::Off).unwrap();
            Batches { _dir: dir, conn, on_disk: OnDisk::new(), carry: Carry::default() }
        }

        /// Writes one batch; returns the rows in `inbox` and the appends
        /// still carried.
        fn write(&mut self, mut ops: Vec<Op>, due: Due) -> (i64, usize) {
            let (conn, carry) = (&mut self.conn, &mut self.carry);
            let mut carried = CarryEffects::default();
            write_batch(conn, &mut ops, 0, &mut self.on_disk, carry, due, &mut carried).unwrap();
            let rows = conn.query_row("SELECT COUNT(*) FROM inbox", [], |row| row.get(0)).unwrap();
            (rows, carry.entries)
        }
    }

    /// Acknowledged names keep their empty lists for their next delivery,
    /// but never more than `SPARE_CAPACITY` of them (bounded memory).
    #[test]
    fn emptied_lists_are_kept_up_to_a_bound() {
        let mut b = Batches::new();
        // A live fanout to a few names: delivered and acknowledged.
        let names: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        b.write(names.iter().map(|n| live(n, 1)).collect(), Due::Aged);
        b.write(acks(&names, 1), Due::Aged);
        assert_eq!(b.carry.entries, 0);
        assert_eq!(b.carry.by_name.len(), 10, "emptied lists are kept");
        assert!(b.carry.by_name.values().all(Vec::is_empty));
        // A batch that writes everything (a read follows it) keeps them too.
        b.write(Vec::new(), Due::All);
        assert_eq!(b.carry.by_name.len(), 10, "emptied lists survive a full write");
        // The next delivery to them lands in the kept lists.
        b.write(names.iter().map(|n| live(n, 2)).collect(), Due::Aged);
        assert_eq!((b.carry.entries, b.carry.by_name.len()), (10, 10));
        b.write(acks(&names, 2), Due::Aged);
        // Many more names than the bound: the empty lists go.
        let many: Vec<String> = (0..SPARE_CAPACITY * 2).map(|i| format!("m{i}")).collect();
        b.write(many.iter().map(|n| live(n, 1)).collect(), Due::Aged);
        b.write(acks(&many, 1), Due::Aged);
        assert_eq!(b.carry.entries, 0);
        assert!(b.carry.by_name.len() <= SPARE_CAPACITY, "{} lists kept", b.carry.by_name.len());
    }

    /// A batch a sender waits on writes every append of earlier batches but
    /// keeps its own for one more batch, in which the recipient's ack can
    /// still cancel it; one not acknowledged by then is written.
    #[test]
    fn a_waiting_batch_keeps_its_own_appends_for_one_more_batch() {
        let mut b = Batches::new();
        // Acknowledged in the next batch: never written.
        assert_eq!(b.write(vec![live("bob", 1)], Due::Earlier), (0, 1));
        let ack = Op::Ack { name: Name::from("bob"), upto: 1 };
        assert_eq!(b.write(vec![ack], Due::Earlier), (0, 0));
        // Not acknowledged by the next batch: written by it.
        assert_eq!(b.write(vec![live("bob", 2)], Due::Earlier), (0, 1));
        assert_eq!(b.write(vec![live("bob", 3)], Due::Earlier), (1, 1));
        // A read needs everything.
        assert_eq!(b.write(Vec::new(), Due::All), (2, 0));
    }
}
