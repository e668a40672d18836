//! The store over Redis, for cluster mode (issue 7 with issue 8): inboxes
//! live in Redis, so a client resumes on whichever node it reconnects to.
//!
//! Keys (all under `sb:`, next to the bus's own):
//! - `sb:seq:{name}`: the name's seq counter. It exists once the name has
//!   connected anywhere: that is what makes a name *known*.
//! - `sb:inbox:{name}`: a stream of the stored deliveries, entry id
//!   `{seq}-1`, so `XRANGE` reads by seq and `XTRIM MINID` acknowledges.
//! - `sb:ibytes:{name}`: the bytes those entries are charged.
//! - `sb:sent:{name}`: a sorted set of the client ids the name sent within
//!   the dedup window (score: time in ms).
//!
//! **Who numbers a name's deliveries.** Exactly one place at a time:
//! - the node that holds the name's claim (`sb:name:{name}`, set by the bus
//!   at the handshake) numbers from a block it leased with `INCRBY` when it
//!   took the name over ([`Read::Load`]), as a single node does; each of its
//!   appends runs a script that first checks the claim is still its own
//!   (a fence: a node that lost the name cannot store under stale seqs);
//! - while no node holds the name, the `ROUTE` script numbers with `INCR`
//!   and appends atomically; when a node holds it, the same script
//!   publishes the delivery to that node instead, in the same atomic step,
//!   so no delivery falls between "offline" and "online".
//!
//! The counter only grows, and leases and `INCR`s come from it, so seqs keep
//! rising across nodes; a client resuming on another node gets everything
//! above its last seq from the stream and then live traffic.
//!
//! One thread owns one connection, as for SQLite: operations are sent as
//! one pipeline per batch, in submission order. Redis's own persistence
//! (`appendonly`, `appendfsync`) decides what survives a Redis crash; see
//! docs/durability.md. Room history stays in each node's memory.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::{Client, Connection, Value};

use super::{next_command, Histories, RouteDone};
use crate::redis_keys::{
    bytes_key, inbox_key, name_key, room_key, rseq_key, sent_key, seq_key, NODE_PREFIX,
    ROOM_CHANNEL, ROOM_PREFIX,
};

use super::sqlite::guarded;
use super::{
    Cmd, Entry, InboxStats, Loaded, Name, Op, Read, Receipt, Record, RecordKind, RedisStoreOptions,
    RoomDone, RoomPublish, RoomRecord, RouteOutcome, RouteRequest, Shared, StoreConfig,
    StoreListener, LEASE_STEP,
};

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the thread waits before trying a Redis that refused it again
/// (meanwhile operations fail at once).
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Read and write timeout of a command.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle longer than this is checked (PING) before it is used.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How long a live append may be carried in memory (see [`Carry`]).
const CARRY_MAX_AGE: Duration = Duration::from_secs(1);
/// Most appends carried; beyond, they are all written.
const CARRY_MAX_ENTRIES: usize = 200_000;
/// Most rooms whose history is read back at once.
const MAX_HISTORY_SCAN: usize = 10_000;
/// Most client ids kept per sender.
const MAX_SENT_IDS: usize = 4096;

/// The Lua function both `APPEND` and `ROUTE` store an entry with, so the
/// record's layout and the limits' bookkeeping exist once. ARGV 3..16 are
/// the same in both scripts (3..10 from [`record_args`]). Returns the stream's error,
/// or nil once the entry, its bytes and its dedup id are stored.
macro_rules! store_entry_lua {
    () => {
        r"
local function store(inbox, bytes, sent, id)
  local f = {'k', ARGV[3], 'ts', ARGV[4], 't', ARGV[6], 'b', ARGV[9]}
  if ARGV[5] ~= '' then f[#f+1] = 'f'; f[#f+1] = ARGV[5] end
  if ARGV[7] == '1' then f[#f+1] = 'p'; f[#f+1] = ARGV[8] end
  if ARGV[10] ~= '' then f[#f+1] = 'r'; f[#f+1] = ARGV[10] end
  local added = redis.pcall('XADD', inbox, id, unpack(f))
  if type(added) == 'table' and added.err then return added.err end
  redis.call('INCRBY', bytes, ARGV[9])
  if ARGV[14] ~= '0' then
    redis.call('PEXPIRE', inbox, ARGV[14]); redis.call('PEXPIRE', bytes, ARGV[14])
  end
  if ARGV[11] ~= '' then
    redis.call('ZADD', sent, ARGV[12], ARGV[11])
    redis.call('ZREMRANGEBYSCORE', sent, '-inf', '(' .. ARGV[13])
    redis.call('ZREMRANGEBYRANK', sent, 0, -ARGV[16] - 1)
    redis.call('PEXPIRE', sent, ARGV[15])
  end
  return nil
end
"
    };
}

/// Stores a delivery numbered by the node holding the name, if it still
/// holds it. Returns 1, 0 when the claim is not ours, -1 when the stream
/// refused the id (a higher seq was stored meanwhile by someone else).
const APPEND: &str = concat!(
    store_entry_lua!(),
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if store(KEYS[2], KEYS[3], KEYS[4], ARGV[2]) then return -1 end
return 1
"
);

/// A delivery to a name this node does not hold: dedup, then forward to
/// the holder or number and store for the offline name. Returns a table
/// whose first element says which.
const ROUTE: &str = concat!(
    store_entry_lua!(),
    r"
if ARGV[11] ~= '' and redis.call('ZSCORE', KEYS[5], ARGV[11]) then return {'dup'} end
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  redis.call('PUBLISH', ARGV[18] .. owner, ARGV[17])
  return {'fwd', owner}
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'unknown'} end
local depth = redis.call('XLEN', KEYS[3])
if depth + 1 > tonumber(ARGV[19]) then return {'full', 'messages', depth} end
local bytes = tonumber(redis.call('GET', KEYS[4]) or '0')
if bytes + tonumber(ARGV[9]) > tonumber(ARGV[20]) then return {'full', 'bytes', bytes} end
local seq = redis.call('INCR', KEYS[2])
local err = store(KEYS[3], KEYS[4], KEYS[5], string.format('%d-1', seq))
if err then return {'err', err} end
return {'ok', seq}
"
);

/// Acknowledges entries up to a seq: returns {entries, bytes, receipts...}.
const ACK: &str = r"
local entries = redis.call('XRANGE', KEYS[1], '-', ARGV[1])
if #entries == 0 then return {0, 0} end
local out = {#entries, 0}
local bytes = 0
for _, e in ipairs(entries) do
  local f = e[2]
  for i = 1, #f, 2 do
    if f[i] == 'b' then bytes = bytes + tonumber(f[i+1])
    elseif f[i] == 'r' then out[#out+1] = f[i+1] end
  end
end
out[2] = bytes
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
if redis.call('DECRBY', KEYS[2], bytes) < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
return out
";

/// Raises the counter to at least ARGV[1] (a lease that ran low).
const LEASE: &str = r"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
";

/// Remembers a client id outside an append.
const SENT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -ARGV[5] - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Takes a name over: a fresh lease, the inbox size, the recent client ids.
const LOAD: &str = r"
local top = redis.call('INCRBY', KEYS[1], ARGV[1])
local depth = redis.call('XLEN', KEYS[2])
local bytes = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[2])
return {top, depth, bytes, redis.call('ZRANGE', KEYS[4], 0, -1)}
";

/// Numbers a room message with the room's counter, keeps it in the room's
/// capped stream and publishes `{rseq}\n{frame}` to every node, atomically:
/// every node sees the room's messages in rseq order. Returns the rseq.
const ROOM: &str = r"
local rseq = redis.call('INCR', KEYS[1])
local f = {'ts', ARGV[1], 't', ARGV[3]}
if ARGV[2] ~= '' then f[#f+1] = 'f'; f[#f+1] = ARGV[2] end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], string.format('%d-1', rseq), unpack(f))
redis.call('PUBLISH', ARGV[6], string.format('%d', rseq) .. '\n' .. ARGV[5])
return rseq
";

/// Empties an inbox: returns {entries, bytes}.
const PURGE: &str = r"
local depth = redis.call('XLEN', KEYS[1])
local bytes = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 0)
return {depth, bytes}
";

/// The scripts, loaded once per connection and called by SHA (`EVALSHA`),
/// so a batch does not carry their source once per operation.
const SCRIPTS: [&str; 8] = [APPEND, ROUTE, ACK, LEASE, SENT, LOAD, PURGE, ROOM];

#[derive(Clone, Copy)]
enum Script {
    Append = 0,
    Route = 1,
    Ack = 2,
    Lease = 3,
    Sent = 4,
    Load = 5,
    Purge = 6,
    Room = 7,
}

/// A connection with the SHAs of [`SCRIPTS`] loaded on it.
struct Session {
    conn: Connection,
    shas: Vec<String>,
    last_used: Instant,
}

/// The store thread with its Redis connection.
pub(super) struct Worker {
    client: Client,
    options: RedisStoreOptions,
    session: Option<Session>,
    /// After a failed connect, no new attempt before this.
    retry_at: Option<Instant>,
    rx: Receiver<Cmd>,
    shared: Arc<Shared>,
    listener: Arc<dyn StoreListener>,
    config: StoreConfig,
    /// Live appends held back (see [`Carry`]).
    carry: Carry,
    /// An operation a completion waits for failed since the last
    /// completion ran: the next completions report failure (they confirm
    /// everything before them).
    failed: bool,
    /// Seq leases Redis did not take: written first by the next pipeline,
    /// and until then no completion confirms (as in the SQLite store).
    owed_leases: Vec<Op>,
}

/// Appends to online recipients that nobody waits for, held in memory so
/// that the recipient's ack cancels them before they are ever written — the
/// common case for live traffic, which then costs Redis nothing. As in the
/// SQLite store (its `CARRY_MAX_AGE`): they are written once 1 s old, when a
/// batch carries a completion, a read or a route, when a later append for
/// the same name must be written, or before the node gives the name up
/// (the hub releases a claim only after a completion). What a node crash can
/// lose is the last second of live messages whose senders were never told
/// they were stored.
#[derive(Default)]
struct Carry {
    by_name: std::collections::HashMap<Name, std::collections::VecDeque<Op>>,
    entries: usize,
    since: Option<Instant>,
}

impl Carry {
    fn push(&mut self, op: Op) {
        let Op::Append { name, .. } = &op else { return };
        self.by_name.entry(name.clone()).or_default().push_back(op);
        self.entries += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + CARRY_MAX_AGE)
    }

    fn is_due(&self) -> bool {
        self.entries > CARRY_MAX_ENTRIES
            || self.deadline().is_some_and(|deadline| deadline <= Instant::now())
    }

    fn take_all(&mut self) -> Vec<Op> {
        self.entries = 0;
        self.since = None;
        self.by_name.drain().flat_map(|(_, ops)| ops).collect()
    }

    fn take(&mut self, name: &str) -> Vec<Op> {
        let ops: Vec<Op> = self.by_name.remove(name).map(Vec::from).unwrap_or_default();
        self.forget(ops.len());
        ops
    }

    /// Removes `name`'s carried appends with seq ≤ `upto`.
    fn cancel(&mut self, name: &str, upto: u64) -> Vec<Op> {
        let Some(ops) = self.by_name.get_mut(name) else { return Vec::new() };
        let mut cancelled = Vec::new();
        while ops.front().is_some_and(|op| matches!(op, Op::Append { seq, .. } if *seq <= upto)) {
            cancelled.extend(ops.pop_front());
        }
        if ops.is_empty() {
            self.by_name.remove(name);
        }
        self.forget(cancelled.len());
        cancelled
    }

    fn forget(&mut self, count: usize) {
        self.entries -= count;
        if self.entries == 0 {
            self.since = None;
        }
    }
}

/// One pipelined item of a batch, in submission order.
enum Item {
    Op(Op),
    Route(RouteRequest, RouteDone),
    Room(RoomPublish, RoomDone),
}

/// How to read one pipeline result.
enum Expect {
    /// A fenced append: 1 stored, else refused (and reported removed).
    Append { name: Name, seq: u64, size: u64 },
    /// A seq lease: owed until written.
    Lease { name: Name, upto: u64 },
    /// An ack: entries, bytes, receipts.
    Ack { name: Name },
    /// A purge: entries, bytes.
    Purge { name: Name },
    /// A route: its outcome goes to `done`.
    Route { to: Name, limits: (u64, u64), done: RouteDone },
    /// A room publish: its rseq goes to `done`.
    Room { done: RoomDone },
    /// Anything else: only errors matter, and only when a completion
    /// waits for the operation (a dedup id, not a last-seen mark).
    Plain { waited_for: bool },
}

impl Worker {
    pub(super) fn new(
        client: Client,
        options: RedisStoreOptions,
        rx: Receiver<Cmd>,
        shared: Arc<Shared>,
        listener: Arc<dyn StoreListener>,
        config: StoreConfig,
    ) -> Worker {
        Worker {
            client,
            options,
            session: None,
            retry_at: None,
            rx,
            shared,
            listener,
            config,
            carry: Carry::default(),
            failed: false,
            owed_leases: Vec::new(),
        }
    }

    /// Serves commands until every handle is gone. Operations and routes
    /// queued together go to Redis as one pipeline, in order; other reads
    /// end the batch.
    pub(super) fn run(mut self) {
        let max_batch = self.config.max_batch.max(1);
        loop {
            let Ok(first) = next_command(&self.rx, self.carry.deadline()) else { break };
            let Some(mut cmd) = first else {
                // Carried appends came of age: write them.
                if self.carry.deadline().is_some_and(|deadline| deadline <= Instant::now()) {
                    let kept = self.apply(Vec::new(), true);
                    self.failed |= !kept;
                }
                continue;
            };
            let mut items = Vec::new();
            let mut thens = Vec::new();
            let mut cost = 0usize;
            let mut read = None;
            loop {
                match cmd {
                    Cmd::Op { op, then, cost: c } => {
                        items.push(Item::Op(op));
                        thens.extend(then);
                        cost = cost.saturating_add(c);
                    }
                    Cmd::Read(Read::Route { request, done, cost: c }) => {
                        items.push(Item::Route(request, done));
                        cost = cost.saturating_add(c);
                    }
                    Cmd::Read(Read::RoomPublish { publish, done, cost: c }) => {
                        items.push(Item::Room(publish, done));
                        cost = cost.saturating_add(c);
                    }
                    Cmd::Read(r) => {
                        read = Some(r);
                        break;
                    }
                }
                if items.len() >= max_batch {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(next) => cmd = next,
                    Err(_) => break,
                }
            }
            // A waiting sender, a read or a route must see every append.
            let everything = read.is_some()
                || !thens.is_empty()
                || items.iter().any(|item| matches!(item, Item::Route(..)));
            let kept = self.apply(items, everything);
            self.shared.release(cost);
            // A completion confirms everything submitted before it: a
            // failure in an earlier batch without completions counts too.
            self.failed |= !kept;
            // A lease still owed is not in Redis yet: no completion confirms it.
            let confirmed = !self.failed && self.owed_leases.is_empty();
            if !thens.is_empty() {
                self.failed = false;
            }
            for then in thens {
                guarded("a completion", || then(confirmed));
            }
            self.shared.drained.notify_waiters();
            if let Some(read) = read {
                self.serve(read);
            }
        }
        // Closing: nothing stays in memory.
        self.apply(Vec::new(), true);
        self.shared.queued.store(0, std::sync::atomic::Ordering::Release);
        self.shared.drained.notify_waiters();
    }

    /// Decides what goes to Redis now: carried appends first when
    /// `everything` must be durable (or the carry is due); a live append
    /// nobody waits for is carried instead; an ack cancels the carried
    /// appends it covers (reported as removed, with their receipts).
    fn plan(&mut self, items: Vec<Item>, everything: bool) -> Vec<Item> {
        let everything = everything || self.carry.is_due();
        let mut out = Vec::with_capacity(items.len() + self.owed_leases.len());
        out.extend(self.owed_leases.drain(..).map(Item::Op));
        if everything {
            out.extend(self.carry.take_all().into_iter().map(Item::Op));
        }
        for item in items {
            match item {
                Item::Op(op @ Op::Append { live: true, .. }) if !everything => self.carry.push(op),
                Item::Op(Op::Append { ref name, .. }) => {
                    // Stream ids only grow: earlier carried seqs go first.
                    out.extend(self.carry.take(name).into_iter().map(Item::Op));
                    out.push(item);
                }
                Item::Op(Op::Ack { ref name, upto }) => {
                    let cancelled = self.carry.cancel(name, upto);
                    self.report_cancelled(name, cancelled);
                    out.push(item);
                }
                Item::Op(Op::Purge { ref name }) => {
                    let cancelled = self.carry.cancel(name, u64::MAX);
                    self.report_cancelled(name, cancelled);
                    out.push(item);
                }
                other => out.push(other),
            }
        }
        out
    }

    /// Carried appends that an ack or a purge removed before they were
    /// ever written: the listener hears of them as of any removal.
    fn report_cancelled(&self, name: &str, cancelled: Vec<Op>) {
        if cancelled.is_empty() {
            return;
        }
        let mut bytes = 0u64;
        let mut receipts = Vec::new();
        for op in &cancelled {
            if let Op::Append { record, client_id, receipt, .. } = op {
                bytes += record.size() as u64;
                if let (true, Some(from), Some(id)) = (*receipt, &record.from, client_id) {
                    receipts.push(Receipt {
                        sender: from.to_string(),
                        id: id.clone(),
                        to: name.to_owned(),
                    });
                }
            }
        }
        self.removed(name, cancelled.len() as u64, bytes);
        if !receipts.is_empty() {
            let listener = &self.listener;
            guarded("StoreListener::receipts", || listener.receipts(receipts));
        }
    }

    /// The session, (re)connecting when there is none (and the last failure
    /// is not too recent), or checking one idle for a while: it may point at
    /// a Redis that restarted meanwhile (without the scripts).
    fn session(&mut self) -> Result<&mut Session, String> {
        if let Some(session) = &mut self.session {
            if session.last_used.elapsed() > IDLE_CHECK
                && redis::cmd("PING").query::<String>(&mut session.conn).is_err()
            {
                self.session = None;
            }
        }
        if self.session.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err("Redis (the message store) is unreachable".to_owned());
            }
            match self.connect() {
                Ok(session) => {
                    self.retry_at = None;
                    self.session = Some(session);
                }
                Err(error) => {
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                    tracing::warn!(%error, "store: cannot reach Redis");
                    return Err(format!("Redis (the message store) is unreachable: {error}"));
                }
            }
        }
        let session = self.session.as_mut().ok_or_else(|| "no connection".to_owned())?;
        session.last_used = Instant::now();
        Ok(session)
    }

    fn connect(&self) -> redis::RedisResult<Session> {
        let mut conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut pipe = redis::pipe();
        for script in SCRIPTS {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script);
        }
        let shas: Vec<String> = pipe.query(&mut conn)?;
        Ok(Session { conn, shas, last_used: Instant::now() })
    }

    /// Runs `pipe`, dropping the connection on an I/O error.
    fn query(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, String> {
        let session = self.session()?;
        match pipe.query::<Vec<Value>>(&mut session.conn) {
            Ok(values) => Ok(values),
            Err(error) => {
                tracing::warn!(%error, "store: Redis command failed");
                self.session = None;
                Err(format!("message store (Redis): {error}"))
            }
        }
    }

    /// Starts an `EVALSHA` of `script` with `keys` in `pipe`; `shas` are
    /// the current session's (empty without one: the batch then fails).
    fn eval<'a>(
        pipe: &'a mut redis::Pipeline,
        shas: &[String],
        script: Script,
        keys: &[String],
    ) -> &'a mut redis::Pipeline {
        let sha = shas.get(script as usize).map_or("", String::as_str);
        pipe.cmd("EVALSHA").arg(sha).arg(keys.len());
        for key in keys {
            pipe.arg(key);
        }
        pipe
    }

    /// Applies `items` as one pipeline. Returns whether nothing a completion
    /// waits for was lost: routes and room publishes hear their own
    /// outcomes, a lease that fails is owed (written by the next pipeline),
    /// and a failed ack or last-seen mark loses nothing (the entries stay
    /// stored; the next ack deletes them). An append that fails is reported
    /// removed, since the hub counts it against the limits until then; so is
    /// one whose pipeline broke off, which Redis may have applied (it is
    /// then counted once too few until the recipient acknowledges it).
    fn apply(&mut self, items: Vec<Item>, everything: bool) -> bool {
        let items = self.plan(items, everything);
        if !items.iter().any(|item| match item {
            Item::Op(Op::RoomAppend { .. } | Op::Barrier) => false,
            Item::Op(_) | Item::Route(..) | Item::Room(..) => true,
        }) {
            return true;
        }
        let now = now_ms();
        let window = millis(self.config.dedup_window);
        let max_age = millis(self.config.max_age);
        // Connect first: the pipeline calls the scripts by this session's
        // SHAs (without a session, it is built to be failed item by item).
        let (shas, unreachable) = match self.session() {
            Ok(session) => (session.shas.clone(), None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let mut pipe = redis::pipe();
        let mut expect = Vec::new();
        for item in items {
            let op = match item {
                Item::Op(op) => op,
                Item::Room(publish, done) => {
                    let RoomPublish { room, ts, from, text, frame } = publish;
                    let keys = [rseq_key(&room), room_key(&room)];
                    Self::eval(&mut pipe, &shas, Script::Room, &keys)
                        .arg(ts)
                        .arg(from.as_deref().unwrap_or(""))
                        .arg(text)
                        .arg(self.config.room_history.max(1))
                        .arg(frame)
                        .arg(ROOM_CHANNEL);
                    expect.push(Expect::Room { done });
                    continue;
                }
                Item::Route(request, done) => {
                    let RouteRequest {
                        to,
                        record,
                        client_id,
                        receipt,
                        forward,
                        max_messages,
                        max_bytes,
                    } = request;
                    let rcpt = receipt_field(&record, client_id.as_deref(), receipt);
                    let from = record.from.as_deref().unwrap_or("");
                    let keys = [
                        name_key(&to),
                        seq_key(&to),
                        inbox_key(&to),
                        bytes_key(&to),
                        sent_key(from),
                    ];
                    Self::eval(&mut pipe, &shas, Script::Route, &keys)
                        .arg(&self.options.node_id)
                        .arg(""); // ARGV[2], the entry id in APPEND: ROUTE numbers itself
                    record_args(&mut pipe, &record, &rcpt);
                    pipe.arg(client_id.as_deref().unwrap_or(""))
                        .arg(now)
                        .arg(now.saturating_sub(window))
                        .arg(max_age)
                        .arg(window.max(1))
                        .arg(MAX_SENT_IDS)
                        .arg(forward)
                        .arg(NODE_PREFIX)
                        .arg(max_messages)
                        .arg(max_bytes);
                    expect.push(Expect::Route { to, limits: (max_messages, max_bytes), done });
                    continue;
                }
            };
            match op {
                Op::Touch { name } => {
                    pipe.cmd("SET").arg(seq_key(&name)).arg(0).arg("NX");
                    expect.push(Expect::Plain { waited_for: false });
                }
                Op::Append { name, seq, record, client_id, receipt, .. } => {
                    let size = record.size() as u64;
                    let rcpt = receipt_field(&record, client_id.as_deref(), receipt);
                    let from = record.from.as_deref().unwrap_or("");
                    let keys =
                        [name_key(&name), inbox_key(&name), bytes_key(&name), sent_key(from)];
                    Self::eval(&mut pipe, &shas, Script::Append, &keys)
                        .arg(&self.options.node_id)
                        .arg(format!("{seq}-1"));
                    record_args(&mut pipe, &record, &rcpt);
                    pipe.arg(client_id.as_deref().unwrap_or(""))
                        .arg(now)
                        .arg(now.saturating_sub(window))
                        .arg(max_age)
                        .arg(window.max(1))
                        .arg(MAX_SENT_IDS);
                    expect.push(Expect::Append { name, seq, size });
                }
                Op::Ack { name, upto } => {
                    Self::eval(
                        &mut pipe,
                        &shas,
                        Script::Ack,
                        &[inbox_key(&name), bytes_key(&name)],
                    )
                    .arg(format!("{upto}-1"))
                    .arg(format!("{}-0", upto.saturating_add(1)));
                    expect.push(Expect::Ack { name });
                }
                Op::Lease { name, upto } => {
                    Self::eval(&mut pipe, &shas, Script::Lease, &[seq_key(&name)]).arg(upto);
                    expect.push(Expect::Lease { name, upto });
                }
                Op::Sent { sender, id } => {
                    Self::eval(&mut pipe, &shas, Script::Sent, &[sent_key(&sender)])
                        .arg(id)
                        .arg(now)
                        .arg(now.saturating_sub(window))
                        .arg(window.max(1))
                        .arg(MAX_SENT_IDS);
                    expect.push(Expect::Plain { waited_for: true });
                }
                Op::Purge { name } => {
                    Self::eval(
                        &mut pipe,
                        &shas,
                        Script::Purge,
                        &[inbox_key(&name), bytes_key(&name)],
                    );
                    expect.push(Expect::Purge { name });
                }
                // Room history stays in each node's memory in cluster mode.
                Op::RoomAppend { .. } | Op::Barrier => {}
            }
        }
        if expect.is_empty() {
            return true;
        }
        let values = match unreachable.map_or_else(|| self.query(&pipe), Err) {
            Ok(values) => values,
            Err(error) => {
                let mut kept = true;
                for expect in expect {
                    kept &= !self.lose(expect, &error);
                }
                return kept;
            }
        };
        let mut kept = true;
        let mut receipts = Vec::new();
        for (expect, value) in expect.into_iter().zip(values) {
            if let Value::ServerError(error) = &value {
                tracing::error!(?error, "store: Redis refused an operation");
                if error.code() == "NOSCRIPT" {
                    // Redis restarted behind an open connection: reload next time.
                    self.session = None;
                }
                kept &= !self.lose(expect, &format!("message store (Redis): {error:?}"));
                continue;
            }
            match expect {
                Expect::Append { name, seq, size } => {
                    if int(&value) != Some(1) {
                        tracing::warn!(%name, seq, reply = ?value,
                            "store: append refused (this node no longer holds the name, \
                             or Redis refused the entry)");
                        kept &= !self.lose(Expect::Append { name, seq, size }, "append refused");
                    }
                }
                Expect::Ack { name } => {
                    let items = array(value);
                    let entries = items.first().and_then(int).unwrap_or(0);
                    let bytes = items.get(1).and_then(int).unwrap_or(0);
                    for item in items.iter().skip(2) {
                        if let Some((sender, id)) = text(item).and_then(|r| {
                            r.split_once('\t').map(|(s, i)| (s.to_owned(), i.to_owned()))
                        }) {
                            receipts.push(Receipt { sender, id, to: name.to_string() });
                        }
                    }
                    self.removed(&name, entries, bytes);
                }
                Expect::Purge { name } => {
                    let items = array(value);
                    let entries = items.first().and_then(int).unwrap_or(0);
                    let bytes = items.get(1).and_then(int).unwrap_or(0);
                    self.removed(&name, entries, bytes);
                }
                Expect::Route { to, limits, done } => {
                    let outcome = route_outcome(&to, limits, value);
                    guarded("a route completion", || done(outcome));
                }
                Expect::Room { done } => {
                    let rseq = int(&value).ok_or_else(|| "message store (Redis): bad rseq".into());
                    guarded("a room completion", || done(rseq));
                }
                Expect::Lease { .. } | Expect::Plain { .. } => {}
            }
        }
        if !receipts.is_empty() {
            let listener = &self.listener;
            guarded("StoreListener::receipts", || listener.receipts(receipts));
        }
        kept
    }

    /// An operation that was not applied, for the reason `why`: routes and
    /// room publishes hear it, an append is reported removed, a lease is
    /// owed. Returns whether it loses something a completion waits for.
    fn lose(&mut self, expect: Expect, why: &str) -> bool {
        match expect {
            Expect::Route { done, .. } => {
                guarded("a route completion", || done(RouteOutcome::Failed(why.to_owned())));
                false
            }
            Expect::Room { done } => {
                guarded("a room completion", || done(Err(why.to_owned())));
                false
            }
            Expect::Append { name, size, .. } => {
                self.removed(&name, 1, size);
                true
            }
            Expect::Lease { name, upto } => {
                // One per name: the highest (a lease only raises the counter).
                let owed = self.owed_leases.iter_mut().find_map(|op| match op {
                    Op::Lease { name: owed, upto } if *owed == name => Some(upto),
                    _ => None,
                });
                match owed {
                    Some(owed) => *owed = (*owed).max(upto),
                    None => self.owed_leases.push(Op::Lease { name, upto }),
                }
                false
            }
            Expect::Ack { .. } => false,
            Expect::Purge { .. } => true,
            Expect::Plain { waited_for } => waited_for,
        }
    }

    fn removed(&self, name: &str, entries: u64, bytes: u64) {
        if entries > 0 {
            let listener = &self.listener;
            guarded("StoreListener::removed", || listener.removed(name, entries, bytes));
        }
    }

    fn serve(&mut self, read: Read) {
        match read {
            Read::Replay { name, after, upto, ack_through_after, reply } => {
                if ack_through_after && after > 0 {
                    let ack = Op::Ack { name: Name::from(name.as_str()), upto: after };
                    let kept = self.apply(vec![Item::Op(ack)], true);
                    self.failed |= !kept;
                }
                let _ = reply.send(self.replay(&name, after, upto));
            }
            Read::Stats { name, reply } => {
                if let Some(stats) = self.stats(&name) {
                    let _ = reply.send(stats);
                }
            }
            Read::Sweep => {}
            Read::Load { name, reply } => {
                let _ = reply.send(self.load(&name));
            }
            Read::RoomPublish { publish, done, cost } => {
                self.apply(vec![Item::Room(publish, done)], false);
                self.shared.release(cost);
            }
            Read::Histories { reply } => {
                let _ = reply.send(self.histories());
            }
            // Batched by `run`; one arriving here alone is a batch of one.
            Read::Route { request, done, cost } => {
                self.apply(vec![Item::Route(request, done)], true);
                self.shared.release(cost);
            }
        }
    }

    fn replay(&mut self, name: &str, after: u64, upto: u64) -> Result<Vec<Entry>, String> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(inbox_key(name))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg(format!("{upto}-1"));
        let values = self.query(&pipe)?;
        let entries = values.into_iter().next().map(array).unwrap_or_default();
        // An entry that cannot be read fails the replay (its session closes
        // with 1011, docs/durability.md) rather than being skipped: the
        // client's next ack would cover its seq, an accepted message lost
        // without a word.
        entries
            .into_iter()
            .map(|value| {
                entry(value).map_err(|id| {
                    format!(
                        "entry {} of {name}'s inbox cannot be read",
                        id.as_deref().unwrap_or("?")
                    )
                })
            })
            .collect()
    }

    fn stats(&mut self, name: &str) -> Option<InboxStats> {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(inbox_key(name));
        pipe.cmd("GET").arg(bytes_key(name));
        pipe.cmd("XRANGE").arg(inbox_key(name)).arg("-").arg("+").arg("COUNT").arg(1);
        let values = self.query(&pipe).ok()?;
        let mut values = values.into_iter();
        let depth = values.next().as_ref().and_then(int).unwrap_or(0);
        let bytes = values.next().as_ref().and_then(int).unwrap_or(0);
        let first = values
            .next()
            .map(array)
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|value| entry(value).ok());
        Some(InboxStats {
            depth,
            bytes,
            oldest_ts: first.as_ref().map(|e| e.record.ts),
            first_seq: first.map(|e| e.seq),
        })
    }

    /// Every room's history: `SCAN` for the room streams, then the last
    /// entries of each (at most [`MAX_HISTORY_SCAN`] rooms).
    fn histories(&mut self) -> Result<Histories, String> {
        let keep = self.config.room_history;
        let mut rooms = Vec::new();
        if keep == 0 {
            return Ok(rooms);
        }
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let mut pipe = redis::pipe();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{ROOM_PREFIX}*"))
                .arg("COUNT")
                .arg(1000);
            let value = self.query(&pipe)?.into_iter().next().unwrap_or(Value::Nil);
            let mut parts = array(value).into_iter();
            cursor = parts.next().as_ref().and_then(int).unwrap_or(0);
            keys.extend(parts.next().map(array).unwrap_or_default().iter().filter_map(text));
            if cursor == 0 || keys.len() >= MAX_HISTORY_SCAN {
                break;
            }
        }
        keys.truncate(MAX_HISTORY_SCAN);
        for chunk in keys.chunks(100) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(keep);
            }
            let values = self.query(&pipe)?;
            for (key, value) in chunk.iter().zip(values) {
                let mut records: Vec<RoomRecord> =
                    array(value).into_iter().filter_map(room_record).collect();
                records.reverse();
                rooms.push((key.trim_start_matches(ROOM_PREFIX).to_owned(), records));
            }
        }
        Ok(rooms)
    }

    fn load(&mut self, name: &str) -> Result<Loaded, String> {
        let cutoff = now_ms().saturating_sub(millis(self.config.dedup_window));
        let shas = self.session()?.shas.clone();
        let mut pipe = redis::pipe();
        let keys = [seq_key(name), inbox_key(name), bytes_key(name), sent_key(name)];
        Self::eval(&mut pipe, &shas, Script::Load, &keys).arg(LEASE_STEP).arg(cutoff);
        let value = self.query(&pipe)?.into_iter().next().unwrap_or(Value::Nil);
        if let Value::ServerError(error) = &value {
            self.session = None;
            return Err(format!("message store (Redis): {error:?}"));
        }
        let items = array(value);
        let top = items.first().and_then(int).ok_or("message store (Redis): bad lease")?;
        Ok(Loaded {
            next_seq: top.saturating_sub(LEASE_STEP) + 1,
            leased: top,
            depth: items.get(1).and_then(int).unwrap_or(0),
            bytes: items.get(2).and_then(int).unwrap_or(0),
            recent_ids: items
                .into_iter()
                .nth(3)
                .map(array)
                .unwrap_or_default()
                .iter()
                .filter_map(text)
                .collect(),
        })
    }
}

/// What the `ROUTE` script's answer means.
fn route_outcome(to: &str, (max_messages, max_bytes): (u64, u64), value: Value) -> RouteOutcome {
    let items = array(value);
    let word = items.first().and_then(text).unwrap_or_default();
    match word.as_str() {
        "ok" => RouteOutcome::Stored(items.get(1).and_then(int).unwrap_or(0)),
        "fwd" => RouteOutcome::Forwarded(items.get(1).and_then(text).unwrap_or_default()),
        "dup" => RouteOutcome::Duplicate,
        "unknown" => RouteOutcome::Unknown,
        "full" => {
            let what = items.get(1).and_then(text).unwrap_or_default();
            let have = items.get(2).and_then(int).unwrap_or(0);
            let limit = if what == "bytes" { max_bytes } else { max_messages };
            RouteOutcome::Full(format!(
                "{to}'s inbox is full ({have} stored {what}; limit {limit}): \
                 it must connect and acknowledge first"
            ))
        }
        _ => RouteOutcome::Failed(format!(
            "message store (Redis) refused the message: {}",
            items.get(1).and_then(text).unwrap_or_default()
        )),
    }
}

/// The `r` field of an entry that owes its sender a receipt.
fn receipt_field(record: &Record, client_id: Option<&str>, receipt: bool) -> String {
    match (receipt, record.from.as_deref(), client_id) {
        (true, Some(from), Some(id)) => format!("{from}\t{id}"),
        _ => String::new(),
    }
}

/// ARGV 3..10 of `APPEND` and `ROUTE`: the record's fields.
fn record_args(pipe: &mut redis::Pipeline, record: &Record, rcpt: &str) {
    let payload = record.payload.as_deref();
    pipe.arg(record.kind.code())
        .arg(record.ts)
        .arg(record.from.as_deref().unwrap_or(""))
        .arg(&*record.text)
        .arg(if payload.is_some() { "1" } else { "0" })
        .arg(payload.unwrap_or(&[]))
        .arg(record.size())
        .arg(rcpt);
}

/// An `XRANGE` item as an inbox entry; when it is malformed, or of a kind
/// this build does not know, its stream id (if it has one) for the log.
fn entry(value: Value) -> Result<Entry, Option<String>> {
    let mut parts = array(value).into_iter();
    let id = parts.next().as_ref().and_then(text).ok_or(None)?;
    let Some(seq) = id.split_once('-').and_then(|(seq, _)| seq.parse().ok()) else {
        return Err(Some(id));
    };
    let fields = array(parts.next().ok_or_else(|| Some(id.clone()))?);
    let mut kind = None;
    let mut ts = 0;
    let mut from = None;
    let mut body: Arc<str> = Arc::from("");
    let mut payload = None;
    for pair in fields.chunks(2) {
        let [key, value] = pair else { continue };
        match text(key).as_deref() {
            Some("k") => {
                kind = text(value).and_then(|k| k.parse().ok()).and_then(RecordKind::from_code)
            }
            Some("ts") => ts = text(value).and_then(|t| t.parse().ok()).unwrap_or(0),
            Some("f") => from = text(value).map(|f| Name::from(f.as_str())),
            Some("t") => body = Arc::from(text(value).unwrap_or_default().as_str()),
            Some("p") => payload = Some(Bytes::from(bytes(value))),
            _ => {}
        }
    }
    let kind = kind.ok_or(Some(id))?;
    Ok(Entry { seq, record: Record { kind, ts, from, text: body, payload } })
}

/// An `XRANGE` item of a room stream as a history record.
fn room_record(value: Value) -> Option<RoomRecord> {
    let mut parts = array(value).into_iter();
    let id = text(&parts.next()?)?;
    let rseq = id.split_once('-')?.0.parse().ok()?;
    let fields = array(parts.next()?);
    let mut record = RoomRecord { rseq, ts: 0, from: None, text: String::new() };
    for pair in fields.chunks(2) {
        let [key, value] = pair else { continue };
        match text(key).as_deref() {
            Some("ts") => record.ts = text(value).and_then(|t| t.parse().ok()).unwrap_or(0),
            Some("f") => record.from = text(value),
            Some("t") => record.text = text(value).unwrap_or_default(),
            _ => {}
        }
    }
    Some(record)
}

fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b.clone(),
        _ => Vec::new(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}
