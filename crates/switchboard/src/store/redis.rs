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

use super::sqlite::guarded;
use super::{
    Cmd, Entry, InboxStats, Loaded, Name, Op, Read, Receipt, Record, RecordKind, RedisStoreOptions,
    RouteOutcome, RouteRequest, Shared, StoreConfig, StoreListener, LEASE_STEP,
};

/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the thread waits before trying a Redis that refused it again
/// (meanwhile operations fail at once).
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// Read and write timeout of a command.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle longer than this is checked before it is used.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Most client ids kept per sender.
const MAX_SENT_IDS: usize = 4096;

/// Stores a delivery numbered by the node holding the name, if it still
/// holds it. Returns 1, 0 when the claim is not ours, -1 when the stream
/// refused the id (a higher seq was stored meanwhile by someone else).
const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local f = {'k', ARGV[3], 'ts', ARGV[4], 't', ARGV[6], 'b', ARGV[9]}
if ARGV[5] ~= '' then f[#f+1] = 'f'; f[#f+1] = ARGV[5] end
if ARGV[7] == '1' then f[#f+1] = 'p'; f[#f+1] = ARGV[8] end
if ARGV[10] ~= '' then f[#f+1] = 'r'; f[#f+1] = ARGV[10] end
local added = redis.pcall('XADD', KEYS[2], ARGV[2], unpack(f))
if type(added) == 'table' and added.err then return -1 end
redis.call('INCRBY', KEYS[3], ARGV[9])
if ARGV[14] ~= '0' then
  redis.call('PEXPIRE', KEYS[2], ARGV[14]); redis.call('PEXPIRE', KEYS[3], ARGV[14])
end
if ARGV[11] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[12], ARGV[11])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[13])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -ARGV[16] - 1)
  redis.call('PEXPIRE', KEYS[4], ARGV[15])
end
return 1
";

/// A delivery to a name this node does not hold: dedup, then forward to
/// the holder or number and store for the offline name. Returns a table
/// whose first element says which.
const ROUTE: &str = r"
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
local f = {'k', ARGV[3], 'ts', ARGV[4], 't', ARGV[6], 'b', ARGV[9]}
if ARGV[5] ~= '' then f[#f+1] = 'f'; f[#f+1] = ARGV[5] end
if ARGV[7] == '1' then f[#f+1] = 'p'; f[#f+1] = ARGV[8] end
if ARGV[10] ~= '' then f[#f+1] = 'r'; f[#f+1] = ARGV[10] end
local added = redis.pcall('XADD', KEYS[3], string.format('%d-1', seq), unpack(f))
if type(added) == 'table' and added.err then return {'err', added.err} end
redis.call('INCRBY', KEYS[4], ARGV[9])
if ARGV[14] ~= '0' then
  redis.call('PEXPIRE', KEYS[3], ARGV[14]); redis.call('PEXPIRE', KEYS[4], ARGV[14])
end
if ARGV[11] ~= '' then
  redis.call('ZADD', KEYS[5], ARGV[12], ARGV[11])
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. ARGV[13])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -ARGV[16] - 1)
  redis.call('PEXPIRE', KEYS[5], ARGV[15])
end
return {'ok', seq}
";

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

/// Empties an inbox: returns {entries, bytes}.
const PURGE: &str = r"
local depth = redis.call('XLEN', KEYS[1])
local bytes = tonumber(redis.call('GET', KEYS[2]) or '0')
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 0)
return {depth, bytes}
";

fn seq_key(name: &str) -> String {
    format!("sb:seq:{name}")
}
fn inbox_key(name: &str) -> String {
    format!("sb:inbox:{name}")
}
fn bytes_key(name: &str) -> String {
    format!("sb:ibytes:{name}")
}
fn sent_key(name: &str) -> String {
    format!("sb:sent:{name}")
}
fn claim_key(name: &str) -> String {
    format!("sb:name:{name}")
}

/// The store thread with its Redis connection.
pub(super) struct Worker {
    client: Client,
    options: RedisStoreOptions,
    conn: Option<Connection>,
    /// After a failed connect, no new attempt before this.
    retry_at: Option<Instant>,
    /// When the connection last carried a command.
    last_used: Instant,
    rx: Receiver<Cmd>,
    shared: Arc<Shared>,
    listener: Arc<dyn StoreListener>,
    config: StoreConfig,
}

/// How to read one pipeline result.
enum Expect {
    /// A fenced append: 1 stored, else refused.
    Append { name: Name, seq: u64 },
    /// An ack: entries, bytes, receipts.
    Ack { name: Name },
    /// A purge: entries, bytes.
    Purge { name: Name },
    /// Anything else: only errors matter.
    Plain,
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
            conn: None,
            retry_at: None,
            last_used: Instant::now(),
            rx,
            shared,
            listener,
            config,
        }
    }

    /// Serves commands until every handle is gone.
    pub(super) fn run(mut self) {
        let max_batch = self.config.max_batch.max(1);
        while let Ok(mut cmd) = self.rx.recv() {
            let mut ops = Vec::new();
            let mut thens = Vec::new();
            let mut cost = 0usize;
            let mut read = None;
            loop {
                match cmd {
                    Cmd::Op { op, then, cost: c } => {
                        ops.push(op);
                        thens.extend(then);
                        cost = cost.saturating_add(c);
                    }
                    Cmd::Read(r) => {
                        read = Some(r);
                        break;
                    }
                }
                if ops.len() >= max_batch {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(next) => cmd = next,
                    Err(_) => break,
                }
            }
            let ok = self.apply(ops);
            self.shared.release(cost);
            for then in thens {
                guarded("a completion", || then(ok));
            }
            self.shared.drained.notify_waiters();
            if let Some(read) = read {
                self.serve(read);
            }
        }
        self.shared.queued.store(0, std::sync::atomic::Ordering::Release);
        self.shared.drained.notify_waiters();
    }

    /// The connection, (re)connecting when there is none and the last
    /// failure is not too recent.
    fn connection(&mut self) -> Result<&mut Connection, String> {
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                return Err("Redis (the message store) is unreachable".to_owned());
            }
            let connected =
                self.client.get_connection_with_timeout(CONNECT_TIMEOUT).and_then(|c| {
                    c.set_read_timeout(Some(IO_TIMEOUT))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    Ok(c)
                });
            match connected {
                Ok(conn) => {
                    self.retry_at = None;
                    self.conn = Some(conn);
                }
                Err(error) => {
                    self.retry_at = Some(Instant::now() + RETRY_AFTER);
                    tracing::warn!(%error, "store: cannot reach Redis");
                    return Err(format!("Redis (the message store) is unreachable: {error}"));
                }
            }
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Runs `pipe`, dropping the connection on an I/O error.
    fn query(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, String> {
        // A connection idle for a while may point at a Redis that restarted
        // meanwhile: find out with a PING (harmless to repeat) rather than
        // with the batch (a failed batch is refused to its senders).
        if self.conn.is_some() && self.last_used.elapsed() > IDLE_CHECK {
            let alive = self
                .conn
                .as_mut()
                .is_some_and(|conn| redis::cmd("PING").query::<String>(conn).is_ok());
            if !alive {
                self.conn = None;
            }
        }
        self.last_used = Instant::now();
        let conn = self.connection()?;
        match pipe.query::<Vec<Value>>(conn) {
            Ok(values) => Ok(values),
            Err(error) => {
                tracing::warn!(%error, "store: Redis command failed");
                self.conn = None;
                Err(format!("message store (Redis): {error}"))
            }
        }
    }

    /// Applies `ops` as one pipeline; false when anything failed.
    fn apply(&mut self, ops: Vec<Op>) -> bool {
        let now = now_ms();
        let window = millis(self.config.dedup_window);
        let mut pipe = redis::pipe();
        let mut expect = Vec::new();
        for op in ops {
            match op {
                Op::Touch { name } => {
                    pipe.cmd("SET").arg(seq_key(&name)).arg(0).arg("NX");
                    expect.push(Expect::Plain);
                }
                Op::Append { name, seq, record, client_id, receipt, .. } => {
                    let rcpt = receipt_field(&record, client_id.as_deref(), receipt);
                    let from = record.from.as_deref().unwrap_or("");
                    pipe.cmd("EVAL")
                        .arg(APPEND)
                        .arg(4)
                        .arg(claim_key(&name))
                        .arg(inbox_key(&name))
                        .arg(bytes_key(&name))
                        .arg(sent_key(from))
                        .arg(&self.options.node_id)
                        .arg(format!("{seq}-1"));
                    record_args(&mut pipe, &record, &rcpt);
                    pipe.arg(client_id.as_deref().unwrap_or(""))
                        .arg(now)
                        .arg(now.saturating_sub(window))
                        .arg(millis(self.config.max_age))
                        .arg(window.max(1))
                        .arg(MAX_SENT_IDS);
                    expect.push(Expect::Append { name, seq });
                }
                Op::Ack { name, upto } => {
                    pipe.cmd("EVAL")
                        .arg(ACK)
                        .arg(2)
                        .arg(inbox_key(&name))
                        .arg(bytes_key(&name))
                        .arg(format!("{upto}-1"))
                        .arg(format!("{}-0", upto.saturating_add(1)));
                    expect.push(Expect::Ack { name });
                }
                Op::Lease { name, upto } => {
                    pipe.cmd("EVAL").arg(LEASE).arg(1).arg(seq_key(&name)).arg(upto);
                    expect.push(Expect::Plain);
                }
                Op::Sent { sender, id } => {
                    pipe.cmd("EVAL")
                        .arg(SENT)
                        .arg(1)
                        .arg(sent_key(&sender))
                        .arg(id)
                        .arg(now)
                        .arg(now.saturating_sub(window))
                        .arg(window.max(1))
                        .arg(MAX_SENT_IDS);
                    expect.push(Expect::Plain);
                }
                Op::Purge { name } => {
                    pipe.cmd("EVAL").arg(PURGE).arg(2).arg(inbox_key(&name)).arg(bytes_key(&name));
                    expect.push(Expect::Purge { name });
                }
                // Room history stays in each node's memory in cluster mode.
                Op::RoomAppend { .. } | Op::Barrier => {}
            }
        }
        if expect.is_empty() {
            return true;
        }
        let values = match self.query(&pipe) {
            Ok(values) => values,
            Err(_) => return false,
        };
        let mut ok = true;
        let mut receipts = Vec::new();
        for (expect, value) in expect.into_iter().zip(values) {
            if let Value::ServerError(error) = &value {
                tracing::error!(?error, "store: Redis refused an operation");
                ok = false;
                continue;
            }
            match expect {
                Expect::Append { name, seq } => {
                    if int(&value) != Some(1) {
                        tracing::warn!(%name, seq,
                            "store: append refused: this node no longer holds the name");
                        ok = false;
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
                Expect::Plain => {}
            }
        }
        if !receipts.is_empty() {
            let listener = &self.listener;
            guarded("StoreListener::receipts", || listener.receipts(receipts));
        }
        ok
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
                    self.apply(vec![ack]);
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
            Read::Route { request, done } => {
                let outcome = self.route(request);
                guarded("a route completion", || done(outcome));
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
        Ok(entries.into_iter().filter_map(entry).collect())
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
        let first = values.next().map(array).unwrap_or_default().into_iter().next().and_then(entry);
        Some(InboxStats {
            depth,
            bytes,
            oldest_ts: first.as_ref().map(|e| e.record.ts),
            first_seq: first.map(|e| e.seq),
        })
    }

    fn load(&mut self, name: &str) -> Result<Loaded, String> {
        let cutoff = now_ms().saturating_sub(millis(self.config.dedup_window));
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(LOAD)
            .arg(4)
            .arg(seq_key(name))
            .arg(inbox_key(name))
            .arg(bytes_key(name))
            .arg(sent_key(name))
            .arg(LEASE_STEP)
            .arg(cutoff);
        let value = self.query(&pipe)?.into_iter().next().unwrap_or(Value::Nil);
        if let Value::ServerError(error) = &value {
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

    fn route(&mut self, request: RouteRequest) -> RouteOutcome {
        let now = now_ms();
        let window = millis(self.config.dedup_window);
        let RouteRequest { to, record, client_id, receipt, forward, max_messages, max_bytes } =
            request;
        let rcpt = receipt_field(&record, client_id.as_deref(), receipt);
        let from = record.from.as_deref().unwrap_or("");
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(ROUTE)
            .arg(5)
            .arg(claim_key(&to))
            .arg(seq_key(&to))
            .arg(inbox_key(&to))
            .arg(bytes_key(&to))
            .arg(sent_key(from))
            .arg(&self.options.node_id)
            .arg(""); // ARGV[2], the entry id in APPEND: ROUTE numbers itself
        record_args(&mut pipe, &record, &rcpt);
        pipe.arg(client_id.as_deref().unwrap_or(""))
            .arg(now)
            .arg(now.saturating_sub(window))
            .arg(millis(self.config.max_age))
            .arg(window.max(1))
            .arg(MAX_SENT_IDS)
            .arg(forward)
            .arg("sb:node:")
            .arg(max_messages)
            .arg(max_bytes);
        let value = match self.query(&pipe) {
            Ok(values) => values.into_iter().next().unwrap_or(Value::Nil),
            Err(error) => return RouteOutcome::Failed(error),
        };
        if let Value::ServerError(error) = &value {
            return RouteOutcome::Failed(format!("message store (Redis): {error:?}"));
        }
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

/// An `XRANGE` item as an inbox entry.
fn entry(value: Value) -> Option<Entry> {
    let mut parts = array(value).into_iter();
    let id = text(&parts.next()?)?;
    let seq = id.split_once('-')?.0.parse().ok()?;
    let fields = array(parts.next()?);
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
    Some(Entry { seq, record: Record { kind: kind?, ts, from, text: body, payload } })
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
