//! The workloads: `dm`, `fanout`, `idle`, `rtt` (alone, under a dm load,
//! with idle clients connected) and `churn`.
//!
//! Everything runs on one thread (a current-thread runtime in a
//! `LocalSet`), except the rtt pinger under load, which gets its own thread
//! so that the dm load's tasks do not queue in front of it. Every loop is
//! bounded by a count and by the context's deadline.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{Notify, Semaphore};
use tokio::task::spawn_local;
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, Encoder, HttpConn, Ident, Kind, Op, Target};
use crate::payload::{self, now_ns};
use crate::stats::{self, round, Latencies, Probe, Usage};

/// How long the idle workload waits after its last connect before it reads
/// the server's RSS: the steady state, not the handshakes' garbage. Switchboard
/// hands freed memory back to the OS once a second; read after one second,
/// the same binary measured anywhere from 4.3 to 5.4 KiB per connection,
/// depending on where that tick fell.
const RSS_SETTLE: Duration = Duration::from_millis(2500);

/// How long a client waits for the server's close after its own.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What every workload shares.
#[derive(Debug)]
pub struct Ctx {
    /// The server under test.
    pub target: Target,
    /// The name results are filed under (`switchboard`, `naive-hub`, ...).
    pub label: String,
    /// The server's PID, for CPU time and RSS.
    pub server_pid: Option<String>,
    /// Longest any one workload may run, in seconds.
    pub max_secs: f64,
    /// Payload bytes per message.
    pub size: usize,
    /// Cluster mode (issue 8): where `dm` receivers connect, so that every
    /// DM crosses nodes; `None` puts them on [`Ctx::target`] with the senders.
    pub receiver_target: Option<Target>,
    tag: String,
    next: AtomicU32,
}

impl Ctx {
    /// A context; names are made unique per generator process.
    pub fn new(
        target: Target,
        label: String,
        server_pid: Option<u32>,
        max_secs: f64,
        size: usize,
    ) -> Ctx {
        Ctx {
            target,
            label,
            server_pid: server_pid.map(|p| p.to_string()),
            max_secs,
            size,
            receiver_target: None,
            tag: format!("b{}x", std::process::id() % 100_000),
            next: AtomicU32::new(0),
        }
    }

    /// A fresh client identity.
    pub fn ident(&self) -> Ident {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ident { name: format!("{}{n}", self.tag), id: (n % 65_000 + 1) as u16 }
    }

    fn raw(&self) -> bool {
        self.target.kind == Kind::Raw
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs_f64(self.max_secs)
    }

    fn pid(&self) -> Option<&str> {
        self.server_pid.as_deref()
    }

    /// A result record: common fields, then the workload's own.
    fn record(&self, workload: &str, variant: &str, fields: Value) -> Value {
        let mut map = Map::new();
        map.insert("workload".into(), json!(workload));
        map.insert("variant".into(), json!(variant));
        map.insert("target".into(), json!(self.label));
        map.insert("kind".into(), json!(self.target.kind));
        if let Value::Object(fields) = fields {
            map.extend(fields);
        }
        Value::Object(map)
    }
}

/// Adds throughput and CPU figures for `ops` operations to `fields`.
fn usage_fields(fields: &mut Value, ops: u64, active_secs: f64, usage: &Usage) {
    let rate = if active_secs > 0.0 { ops as f64 / active_secs } else { 0.0 };
    fields["ops"] = json!(ops);
    fields["secs"] = json!(round(active_secs));
    fields["rate"] = json!(round(rate));
    if let Some(cpu) = usage.server_cpu {
        fields["server_cpu_s"] = json!(round(cpu));
        fields["server_cpu_util"] = json!(round(cpu / usage.wall));
        if ops > 0 {
            fields["server_cpu_us_per_op"] = json!(round(cpu * 1e6 / ops as f64));
        }
    }
    if let Some(cpu) = usage.gen_cpu {
        fields["gen_cpu_util"] = json!(round(cpu / usage.wall));
    }
}

fn latency_fields(fields: &mut Value, lat: &mut Latencies) {
    fields["samples"] = json!(lat.0.len());
    fields["p50_us"] = json!(lat.percentile_us(50.0).map(round));
    fields["p99_us"] = json!(lat.percentile_us(99.0).map(round));
    fields["max_us"] = json!(lat.max_us().map(round));
}

/// A progress line on stderr, redrawn twice a second until dropped.
struct Progress {
    done: Rc<Cell<u64>>,
    stop: CancellationToken,
}

impl Progress {
    fn new(label: String, total: u64) -> Progress {
        let done = Rc::new(Cell::new(0u64));
        let stop = CancellationToken::new();
        let (d, s) = (done.clone(), stop.clone());
        spawn_local(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r  {label}: {}/{total} in {secs:.1}s ({:.0}/s)      ",
                    d.get(),
                    d.get() as f64 / secs
                );
            }
        });
        Progress { done, stop }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
        eprintln!();
    }
}

/// Connects `n` clients with at most `concurrency` handshakes in flight.
/// Returns the connections, each connect's latency (ns) in completion
/// order, and the errors.
async fn connect_many(
    ctx: &Arc<Ctx>,
    n: usize,
    v1: bool,
    concurrency: usize,
) -> (Vec<(Ident, Conn)>, Vec<u64>, Vec<String>) {
    connect_many_to(ctx, &ctx.target, n, v1, concurrency).await
}

async fn connect_many_to(
    ctx: &Arc<Ctx>,
    target: &Target,
    n: usize,
    v1: bool,
    concurrency: usize,
) -> (Vec<(Ident, Conn)>, Vec<u64>, Vec<String>) {
    let permits = Rc::new(Semaphore::new(concurrency.max(1)));
    let deadline = ctx.deadline();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let ident = ctx.ident();
        let target = target.clone();
        let permits = permits.clone();
        handles.push(spawn_local(async move {
            let _permit = permits.acquire().await;
            let t = now_ns();
            let conn = tokio::time::timeout_at(deadline, Conn::connect(&target, &ident, v1))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            (ident, conn, now_ns() - t)
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for handle in handles {
        match handle.await {
            Ok((ident, Ok(conn), ns)) => {
                conns.push((ident, conn));
                latencies.push(ns);
            }
            Ok((_, Err(e), _)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (conns, latencies, errors)
}

async fn connect_all(ctx: &Arc<Ctx>, n: usize, v1: bool) -> anyhow::Result<Vec<(Ident, Conn)>> {
    connect_all_to(ctx, &ctx.target, n, v1).await
}

async fn connect_all_to(
    ctx: &Arc<Ctx>,
    target: &Target,
    n: usize,
    v1: bool,
) -> anyhow::Result<Vec<(Ident, Conn)>> {
    let (conns, _, errors) = connect_many_to(ctx, target, n, v1, 256).await;
    if let Some(first) = errors.first() {
        anyhow::bail!("{} of {n} connects failed; first: {first}", errors.len());
    }
    Ok(conns)
}

/// Order and loss bookkeeping for one receiver of one ordered stream.
#[derive(Debug, Default)]
struct Ordered {
    expected: u64,
    received: u64,
    dup: u64,
    reorder: u64,
    other: u64,
}

impl Ordered {
    /// Accounts one message; true when it is new.
    fn accept(&mut self, seq: u64) -> bool {
        if seq == self.expected {
            self.expected += 1;
            self.received += 1;
            true
        } else if seq < self.expected {
            self.dup += 1;
            false
        } else {
            self.reorder += 1;
            self.received += 1;
            self.expected = seq + 1;
            true
        }
    }
}

// ---------------------------------------------------------------- dm

/// Parameters of the `dm` workload.
#[derive(Debug, Clone, clap::Args)]
pub struct DmParams {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 16)]
    pub pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 500_000)]
    pub messages: u64,
    /// Messages a sender may have in flight (sent, not yet received).
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Senders stop sending after this many seconds (whatever the count).
    #[arg(long, default_value_t = 3.0)]
    pub send_secs: f64,
    /// The protocol of senders and receivers: classic (what the references
    /// speak), or v1 with an id per message, so that every send is
    /// acknowledged (stored first, when durable) and the sender reads acks.
    #[arg(id = "dm_protocol", long = "protocol", value_enum, default_value_t = Protocol::Classic)]
    pub protocol: Protocol,
}

/// Which protocol the `dm` workload speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Classic `{"dst","msg"}` frames, no acks.
    Classic,
    /// v1 `dm` envelopes with ids; each is acknowledged to its sender.
    V1,
}

#[derive(Debug, Default)]
struct PairResult {
    sent: u64,
    /// v1: acks the sender received, and how many said `stored`.
    acks: u64,
    stored: u64,
    order: Ordered,
    lat: Vec<u64>,
    error: Option<String>,
}

struct PairIo {
    raw: bool,
    v1: bool,
    size: usize,
    to: Ident,
    messages: u64,
    window: u64,
    deadline: tokio::time::Instant,
    send_until: Instant,
    progress: Rc<Cell<u64>>,
    last: Rc<Cell<u64>>,
}

async fn dm_pair(mut io: PairIo, mut tx: Conn, mut rx: Conn) -> (PairResult, [Conn; 2]) {
    let mut enc = Encoder::default();
    let mut out = Vec::with_capacity(io.window as usize * (io.size + 64));
    let mut sent = 0u64;
    let mut r = PairResult {
        lat: Vec::with_capacity(io.messages.min(1 << 18) as usize),
        ..Default::default()
    };
    while r.order.received < io.messages || (io.v1 && r.acks < sent) {
        let inflight = sent - r.order.received.min(sent);
        if sent < io.messages && Instant::now() >= io.send_until {
            // Time is up: stop sending, wait for what is in flight.
            io.messages = sent;
            continue;
        }
        if sent < io.messages && inflight < io.window {
            let n = (io.window - inflight).min(io.messages - sent);
            out.clear();
            let t = now_ns();
            for i in 0..n {
                let op = if io.v1 { Op::V1Dm(&io.to) } else { Op::Dm(&io.to) };
                enc.frame(&mut out, io.raw, op, sent + i, t, io.size);
            }
            if let Err(e) = tx.send(&out).await {
                r.error = Some(format!("send: {e}"));
                break;
            }
            sent += n;
        }
        // A v1 sender reads its acks too; otherwise the hub's queue to it
        // would fill and the hub would cut it off.
        let read = async {
            if io.v1 {
                tokio::select! {
                    read = rx.read_some() => read.map_err(|e| format!("receive: {e}")),
                    read = tx.read_some() => read.map_err(|e| format!("read acks: {e}")),
                }
            } else {
                rx.read_some().await.map_err(|e| format!("receive: {e}"))
            }
        };
        match tokio::time::timeout_at(io.deadline, read).await {
            Err(_) => {
                r.error = Some("deadline reached".into());
                break;
            }
            Ok(Err(e)) => {
                r.error = Some(e);
                break;
            }
            Ok(Ok(_)) => {}
        }
        while let Some((_, frame)) = tx.next_frame() {
            if memchr::memmem::find(frame, b"\"type\":\"ack\"").is_some() {
                r.acks += 1;
                r.stored += u64::from(memchr::memmem::find(frame, b"\"stored\"").is_some());
            } else if memchr::memmem::find(frame, b"\"type\":\"error\"").is_some() {
                r.error = Some(format!("refused: {}", String::from_utf8_lossy(frame)));
            }
        }
        if r.error.is_some() {
            break;
        }
        let now = now_ns();
        let before = r.order.received;
        while let Some((opcode, frame)) = rx.next_frame() {
            if opcode == 8 {
                r.error = Some("server closed the receiver".into());
                break;
            }
            match payload::parse(frame) {
                Some((seq, t)) => {
                    if r.order.accept(seq) {
                        r.lat.push(now.saturating_sub(t));
                    }
                }
                None => r.order.other += 1,
            }
        }
        if r.error.is_some() {
            break;
        }
        io.progress.set(io.progress.get() + r.order.received - before);
        io.last.set(now);
    }
    r.sent = sent;
    (r, [tx, rx])
}

/// Closes connections politely, all at once.
async fn close_all(conns: impl IntoIterator<Item = Conn>) {
    let handles: Vec<_> = conns.into_iter().map(|c| spawn_local(c.close(CLOSE_LINGER))).collect();
    for handle in handles {
        let _ = handle.await;
    }
}

/// Runs the `dm` workload and returns its record.
///
/// # Errors
/// When the clients cannot connect.
pub async fn dm(ctx: &Arc<Ctx>, p: &DmParams, variant: &str) -> anyhow::Result<Value> {
    let v1 = p.protocol == Protocol::V1;
    let receivers =
        connect_all_to(ctx, ctx.receiver_target.as_ref().unwrap_or(&ctx.target), p.pairs, v1)
            .await?;
    let senders = connect_all(ctx, p.pairs, v1).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let total = p.pairs as u64 * p.messages;
    let progress = Progress::new(format!("dm[{}] delivered", ctx.label), total);
    let last = Rc::new(Cell::new(0u64));
    let deadline = ctx.deadline();
    let send_until = Instant::now() + Duration::from_secs_f64(p.send_secs.min(ctx.max_secs));
    let probe = Probe::start(ctx.pid());
    let t0 = now_ns();
    let mut handles = Vec::new();
    for ((_, tx), (to, rx)) in senders.into_iter().zip(receivers) {
        let io = PairIo {
            raw: ctx.raw(),
            v1,
            size: ctx.size,
            to,
            messages: p.messages,
            window: p.window,
            deadline,
            send_until,
            progress: progress.done.clone(),
            last: last.clone(),
        };
        handles.push(spawn_local(dm_pair(io, tx, rx)));
    }
    let mut lat = Latencies::default();
    let (mut sent, mut received, mut dup, mut reorder, mut other) = (0, 0, 0, 0, 0);
    let (mut acks, mut stored) = (0, 0);
    let mut errors = Vec::new();
    let mut conns = Vec::new();
    for handle in handles {
        let (r, pair) = handle.await?;
        conns.extend(pair);
        sent += r.sent;
        acks += r.acks;
        stored += r.stored;
        received += r.order.received;
        dup += r.order.dup;
        reorder += r.order.reorder;
        other += r.order.other;
        lat.0.extend(r.lat);
        errors.extend(r.error);
    }
    let usage = probe.finish();
    drop(progress);
    close_all(conns).await;
    let active = last.get().saturating_sub(t0) as f64 / 1e9;
    let mut fields = json!({
        "unit": "msg/s",
        "pairs": p.pairs, "messages_per_pair": p.messages, "window": p.window,
        "payload_bytes": ctx.size,
        "planned": total, "sent": sent, "lost": sent - received.min(sent), "dup": dup,
        "out_of_order": reorder, "other_frames": other, "send_secs": p.send_secs,
        "errors": errors.len(), "first_error": errors.first(),
        "protocol": if v1 { "v1" } else { "classic" },
        "acks": acks, "acks_stored": stored,
        "ok": received == sent && dup == 0 && reorder == 0 && errors.is_empty()
            && (!v1 || acks == sent),
    });
    usage_fields(&mut fields, received, active, &usage);
    latency_fields(&mut fields, &mut lat);
    Ok(ctx.record("dm", variant, fields))
}

// ---------------------------------------------------------------- fanout

/// How broadcasts are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `POST /api/broadcast` (switchboard).
    Api,
    /// A v1 room publish (switchboard).
    Room,
    /// A "send to everyone" message (naive hub `"dst":"*"`, raw relay id 0xFFFF).
    Msg,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Room => "room",
            Via::Msg => "msg",
        }
    }
}

/// Parameters of the `fanout` workload.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutParams {
    /// Receiving clients.
    #[arg(long, default_value_t = 1000)]
    pub receivers: usize,
    /// Broadcasts sent.
    #[arg(long, default_value_t = 1000)]
    pub broadcasts: u64,
    /// Broadcasts in flight (not yet delivered to every receiver).
    #[arg(id = "fanout_window", long = "fanout-window", default_value_t = 32)]
    pub window: u64,
    /// HTTP connections posting to /api/broadcast.
    #[arg(long, default_value_t = 4)]
    pub http_conns: usize,
}

#[derive(Debug, Default)]
struct FanShared {
    delivered: Cell<u64>,
    /// Deliveries the server said it did not make (the operator API's
    /// answer counts the clients a broadcast was queued for): not waited for.
    refused: Cell<u64>,
    last: Cell<u64>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct FanResult {
    received: u64,
    dup: u64,
    reorder: u64,
    lat: Vec<u64>,
    error: Option<String>,
}

async fn fan_receiver(
    mut conn: Conn,
    broadcasts: u64,
    ordered: bool,
    stop: CancellationToken,
    shared: Rc<FanShared>,
) -> (FanResult, Conn) {
    let mut seen = vec![0u64; broadcasts.div_ceil(64) as usize];
    let mut r = FanResult { lat: Vec::with_capacity(broadcasts as usize), ..Default::default() };
    let mut next = 0u64;
    while r.received < broadcasts {
        tokio::select! {
            biased;
            read = conn.read_some() => if let Err(e) = read {
                r.error = Some(e.to_string());
                break;
            },
            () = stop.cancelled() => break,
        }
        let now = now_ns();
        let before = r.received;
        while let Some((_, frame)) = conn.next_frame() {
            let Some((seq, t)) = payload::parse(frame) else { continue };
            let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if seq >= broadcasts || seen[word] & bit != 0 {
                r.dup += 1;
                continue;
            }
            seen[word] |= bit;
            if ordered && seq != next {
                r.reorder += 1;
            }
            next = seq + 1;
            r.received += 1;
            r.lat.push(now.saturating_sub(t));
        }
        if r.received > before {
            shared.delivered.set(shared.delivered.get() + r.received - before);
            shared.last.set(now);
            shared.notify.notify_one();
        }
    }
    (r, conn)
}

/// Waits until fewer than `window` broadcasts are undelivered.
async fn fan_wait(
    shared: &FanShared,
    sent: u64,
    c: u64,
    window: u64,
    deadline: tokio::time::Instant,
) -> bool {
    while sent * c > shared.delivered.get() + shared.refused.get() + window * c {
        if tokio::time::timeout_at(deadline, shared.notify.notified()).await.is_err() {
            return false;
        }
    }
    true
}

async fn join_room(conn: &mut Conn, room: &str) -> anyhow::Result<()> {
    let mut out = Vec::new();
    crate::conn::ws_text(
        &mut out,
        format!(r#"{{"type":"join","id":"j","room":"{room}"}}"#).as_bytes(),
    );
    conn.send(&out).await?;
    loop {
        while let Some((_, frame)) = conn.next_frame() {
            if memchr::memmem::find(frame, br#""type":"ack""#).is_some() {
                return Ok(());
            }
            if memchr::memmem::find(frame, br#""type":"error""#).is_some() {
                anyhow::bail!("join refused: {}", String::from_utf8_lossy(frame));
            }
        }
        tokio::time::timeout(Duration::from_secs(5), conn.read_some()).await??;
    }
}

/// Runs the `fanout` workload once per way of broadcasting.
///
/// # Errors
/// When the clients cannot connect or join.
pub async fn fanout(ctx: &Arc<Ctx>, p: &FanoutParams, via: Via) -> anyhow::Result<Value> {
    let v1 = via == Via::Room;
    let mut receivers = connect_all(ctx, p.receivers, v1).await?;
    let mut publisher = match via {
        Via::Api => None,
        Via::Room | Via::Msg => Some(connect_all(ctx, 1, v1).await?.remove(0).1),
    };
    let room = format!("{}room", ctx.ident().name);
    if via == Via::Room {
        for (_, conn) in &mut receivers {
            join_room(conn, &room).await?;
        }
        if let Some(conn) = &mut publisher {
            join_room(conn, &room).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = receivers.len() as u64;
    let total = c * p.broadcasts;
    let progress =
        Progress::new(format!("fanout[{}/{}] delivered", ctx.label, via.as_str()), total);
    let shared = Rc::new(FanShared::default());
    let stop = CancellationToken::new();
    let deadline = ctx.deadline();
    let probe = Probe::start(ctx.pid());
    let t0 = now_ns();
    let ordered = via != Via::Api;
    let mut handles = Vec::new();
    for (_, conn) in receivers {
        handles.push(spawn_local(fan_receiver(
            conn,
            p.broadcasts,
            ordered,
            stop.clone(),
            shared.clone(),
        )));
    }
    let ticker = {
        let (shared, done) = (shared.clone(), progress.done.clone());
        let stop = stop.clone();
        spawn_local(async move {
            while !stop.is_cancelled() {
                done.set(shared.delivered.get());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut publish_errors: Vec<String> = Vec::new();
    match via {
        Via::Api => {
            let next = Rc::new(Cell::new(0u64));
            let errors = Rc::new(RefCell::new(Vec::new()));
            let mut posters = Vec::new();
            for _ in 0..p.http_conns.max(1) {
                let mut http = HttpConn::connect(&ctx.target).await?;
                let (next, errors, shared) = (next.clone(), errors.clone(), shared.clone());
                let (b, window, size) = (p.broadcasts, p.window, ctx.size);
                posters.push(spawn_local(async move {
                    let mut body = Vec::new();
                    loop {
                        let seq = next.get();
                        if seq >= b {
                            break;
                        }
                        next.set(seq + 1);
                        if !fan_wait(&shared, seq, c, window, deadline).await {
                            errors.borrow_mut().push("deadline reached".to_string());
                            break;
                        }
                        body.clear();
                        payload::write(&mut body, seq, now_ns(), size);
                        match http.post("/api/broadcast", &body).await {
                            Ok(200) => {
                                // A durable server refuses deliveries it cannot
                                // store (its queue to the disk is full): count
                                // them rather than wait for them.
                                let queued =
                                    serde_json::from_slice::<serde_json::Value>(http.body())
                                        .ok()
                                        .and_then(|v| v["delivered"].as_u64());
                                if let Some(queued) = queued.filter(|&n| n < c) {
                                    shared.refused.set(shared.refused.get() + (c - queued));
                                    shared.notify.notify_waiters();
                                }
                            }
                            Ok(status) => errors.borrow_mut().push(format!("HTTP {status}")),
                            Err(e) => {
                                errors.borrow_mut().push(e.to_string());
                                break;
                            }
                        }
                    }
                }));
            }
            for poster in posters {
                poster.await?;
            }
            publish_errors.extend(errors.borrow().iter().cloned());
        }
        Via::Room | Via::Msg => {
            let mut conn = publisher.take().ok_or_else(|| anyhow::anyhow!("no publisher"))?;
            let mut enc = Encoder::default();
            let mut out = Vec::new();
            let op = if via == Via::Room { Op::Publish(&room) } else { Op::Everyone };
            let mut seq = 0;
            while seq < p.broadcasts {
                if !fan_wait(&shared, seq, c, p.window, deadline).await {
                    publish_errors.push("deadline reached".into());
                    break;
                }
                // Top the window up in one write.
                let room_left = (seq * c).saturating_sub(shared.delivered.get());
                let free = p.window.saturating_sub(room_left / c.max(1)).max(1);
                let n = free.min(p.broadcasts - seq);
                out.clear();
                let t = now_ns();
                for i in 0..n {
                    enc.frame(&mut out, ctx.raw(), op, seq + i, t, ctx.size);
                }
                if let Err(e) = conn.send(&out).await {
                    publish_errors.push(e.to_string());
                    break;
                }
                seq += n;
            }
            publisher = Some(conn);
        }
    }
    // Wait for the last deliveries: until all arrived, 2 s without progress, or the deadline.
    let mut seen = shared.delivered.get();
    let mut quiet_since = Instant::now();
    while shared.delivered.get() + shared.refused.get() < total
        && quiet_since.elapsed() < Duration::from_secs(2)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if shared.delivered.get() != seen {
            seen = shared.delivered.get();
            quiet_since = Instant::now();
        }
    }
    let usage = probe.finish();
    stop.cancel();
    let _ = ticker.await;
    let mut lat = Latencies::default();
    let (mut received, mut dup, mut reorder) = (0, 0, 0);
    let mut errors = publish_errors;
    let refused = shared.refused.get();
    if refused > 0 {
        errors.push(format!("the server refused {refused} deliveries (its API answers said so)"));
    }
    let mut conns = Vec::new();
    for handle in handles {
        let (r, conn) = handle.await?;
        conns.push(conn);
        received += r.received;
        dup += r.dup;
        reorder += r.reorder;
        lat.0.extend(r.lat);
        errors.extend(r.error);
    }
    drop(progress);
    conns.extend(publisher);
    close_all(conns).await;
    let active = shared.last.get().saturating_sub(t0) as f64 / 1e9;
    let mut fields = json!({
        "unit": "deliveries/s",
        "via": via.as_str(),
        "receivers": c, "broadcasts": p.broadcasts, "window": p.window,
        "payload_bytes": ctx.size,
        "expected": total, "lost": total.saturating_sub(received + refused), "refused": refused,
        "dup": dup,
        "out_of_order": reorder,
        "errors": errors.len(), "first_error": errors.first(),
        "ok": received == total && refused == 0 && dup == 0 && reorder == 0,
    });
    usage_fields(&mut fields, received, active, &usage);
    if let Some(cpu) = usage.server_cpu {
        fields["server_cpu_us_per_broadcast"] = json!(round(cpu * 1e6 / p.broadcasts as f64));
    }
    latency_fields(&mut fields, &mut lat);
    Ok(ctx.record("fanout", via.as_str(), fields))
}

// ---------------------------------------------------------------- rtt

/// Parameters of the `rtt` workload.
#[derive(Debug, Clone, clap::Args)]
pub struct RttParams {
    /// Round trips measured.
    #[arg(long, default_value_t = 2000)]
    pub pings: u64,
    /// Pause between round trips, in microseconds (a low, steady rate).
    #[arg(long, default_value_t = 1000)]
    pub interval_us: u64,
}

/// One pair ping-ponging: `a` sends to `b`, `b` echoes to `a`.
/// Stops after `pings`, at the deadline, or when `stop` is set.
async fn rtt_run(
    ctx: &Arc<Ctx>,
    p: &RttParams,
    stop: Option<Arc<AtomicBool>>,
) -> anyhow::Result<(Latencies, u64)> {
    let mut conns = connect_all(ctx, 2, false).await?;
    let (b_ident, mut b) = conns.pop().ok_or_else(|| anyhow::anyhow!("no client"))?;
    let (a_ident, mut a) = conns.pop().ok_or_else(|| anyhow::anyhow!("no client"))?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (raw, size) = (ctx.raw(), ctx.size);
    let echo = spawn_local(async move {
        let mut enc = Encoder::default();
        let mut out = Vec::new();
        while b.read_some().await.is_ok() {
            out.clear();
            while let Some((_, frame)) = b.next_frame() {
                if let Some((seq, t)) = payload::parse(frame) {
                    enc.frame(&mut out, raw, Op::Dm(&a_ident), seq, t, size);
                }
            }
            if !out.is_empty() && b.send(&out).await.is_err() {
                break;
            }
        }
    });
    let deadline = ctx.deadline();
    let mut enc = Encoder::default();
    let mut out = Vec::new();
    let mut lat = Latencies::default();
    let mut lost = 0;
    let mut pace = tokio::time::interval(Duration::from_micros(p.interval_us.max(1)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'pings: for seq in 0..p.pings {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
            || tokio::time::Instant::now() >= deadline
        {
            break;
        }
        pace.tick().await;
        out.clear();
        enc.frame(&mut out, raw, Op::Dm(&b_ident), seq, now_ns(), size);
        a.send(&out).await?;
        let wait_until = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            while let Some((_, frame)) = a.next_frame() {
                if payload::parse(frame).is_some_and(|(s, _)| s == seq) {
                    let (_, t) = payload::parse(frame).unwrap_or_default();
                    lat.0.push(now_ns().saturating_sub(t));
                    continue 'pings;
                }
            }
            match tokio::time::timeout_at(wait_until, a.read_some()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    lost += 1;
                    continue 'pings;
                }
            }
        }
    }
    echo.abort();
    a.close(CLOSE_LINGER).await;
    Ok((lat, lost))
}

fn rtt_record(ctx: &Ctx, variant: &str, mut lat: Latencies, lost: u64, extra: Value) -> Value {
    let mut fields = json!({ "unit": "round trips", "lost": lost, "ok": lost == 0 });
    latency_fields(&mut fields, &mut lat);
    if let (Value::Object(f), Value::Object(e)) = (&mut fields, extra) {
        f.extend(e);
    }
    ctx.record("rtt", variant, fields)
}

/// Runs `rtt` alone.
///
/// # Errors
/// When the pair cannot connect.
pub async fn rtt(ctx: &Arc<Ctx>, p: &RttParams) -> anyhow::Result<Value> {
    eprintln!("  rtt[{}] alone: {} pings", ctx.label, p.pings);
    let (lat, lost) = rtt_run(ctx, p, None).await?;
    Ok(rtt_record(ctx, "alone", lat, lost, json!({})))
}

/// Runs `rtt` on its own thread while a `dm` load runs here; returns the
/// rtt record and the dm record.
///
/// # Errors
/// When clients cannot connect.
pub async fn rtt_under_dm(
    ctx: &Arc<Ctx>,
    p: &RttParams,
    dm_params: &DmParams,
) -> anyhow::Result<Vec<Value>> {
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let (ctx, p, stop) = (ctx.clone(), p.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<(Latencies, u64)> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            tokio::task::LocalSet::new().block_on(&runtime, async move {
                // Let the dm load ramp up first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                rtt_run(&ctx, &p, Some(stop)).await
            })
        })
    };
    let dm_record = dm(ctx, dm_params, "with_rtt").await;
    stop.store(true, Ordering::Relaxed);
    let (lat, lost) = pinger.join().map_err(|_| anyhow::anyhow!("rtt thread panicked"))??;
    let dm_record = dm_record?;
    let extra = json!({ "dm_rate": dm_record["rate"], "dm_pairs": dm_params.pairs });
    Ok(vec![rtt_record(ctx, "under_dm", lat, lost, extra), dm_record])
}

// ---------------------------------------------------------------- idle

/// Parameters of the `idle` workload.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleParams {
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connects in flight at once (the first batch is a simultaneous burst).
    #[arg(long, default_value_t = 1000)]
    pub burst: usize,
    /// Round trips measured while the idle clients are connected (0: skip).
    #[arg(long, default_value_t = 2000)]
    pub rtt_pings: u64,
}

/// Opens and holds idle connections; measures connect rate, server RSS per
/// connection, listen-queue drops, and rtt with the idle clients present.
///
/// # Errors
/// Never for connect failures (they are counted); for rtt failures.
pub async fn idle(
    ctx: &Arc<Ctx>,
    p: &IdleParams,
    rtt_params: &RttParams,
) -> anyhow::Result<Vec<Value>> {
    let rss0 = ctx.pid().and_then(stats::rss_kib);
    let drops0 = stats::listen_drops();
    eprintln!("  idle[{}]: connecting {} clients, {} at a time", ctx.label, p.connections, p.burst);
    let probe = Probe::start(ctx.pid());
    let t0 = Instant::now();
    let (mut conns, latencies, errors) = connect_many(ctx, p.connections, false, p.burst).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    let usage = probe.finish();
    for (_, conn) in &mut conns {
        conn.release();
    }
    tokio::time::sleep(RSS_SETTLE).await;
    let rss1 = ctx.pid().and_then(stats::rss_kib);
    let drops1 = stats::listen_drops();
    let n = conns.len() as u64;
    let burst: Vec<u64> = latencies.iter().take(p.burst).copied().collect();
    let mut burst_lat = Latencies(burst.clone());
    let mut fields = json!({
        "unit": "connects/s",
        "connections": n, "requested": p.connections, "burst": p.burst,
        "errors": errors.len(), "first_error": errors.first(),
        "rss_before_kib": rss0, "rss_after_kib": rss1,
        "listen_drops": drops0.zip(drops1).map(|(a, b)| b.saturating_sub(a)),
        "burst_connect_p99_ms": burst_lat.percentile_us(99.0).map(|u| round(u / 1000.0)),
        "burst_connect_max_ms": burst_lat.max_us().map(|u| round(u / 1000.0)),
        "burst_connects_over_900ms": burst.iter().filter(|&&ns| ns > 900_000_000).count(),
        "ok": errors.is_empty(),
    });
    if let (Some(a), Some(b)) = (rss0, rss1) {
        if n > 0 {
            fields["rss_per_conn_kib"] = json!(round(b.saturating_sub(a) as f64 / n as f64));
        }
    }
    usage_fields(&mut fields, n, connect_secs, &usage);
    let mut records = vec![ctx.record("idle", &p.connections.to_string(), fields)];
    if p.rtt_pings > 0 && !conns.is_empty() {
        let rp = RttParams { pings: p.rtt_pings, ..rtt_params.clone() };
        eprintln!("  rtt[{}] with {n} idle clients: {} pings", ctx.label, rp.pings);
        let (lat, lost) = rtt_run(ctx, &rp, None).await?;
        records.push(rtt_record(ctx, "with_idle", lat, lost, json!({ "idle_clients": n })));
    }
    eprintln!("  idle[{}]: closing {n} clients", ctx.label);
    close_all(conns.into_iter().map(|(_, c)| c)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(records)
}

// ---------------------------------------------------------------- churn

/// Parameters of the `churn` workload.
#[derive(Debug, Clone, clap::Args)]
pub struct ChurnParams {
    /// Clients connecting, sending and disconnecting concurrently.
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Most connections in total.
    #[arg(long, default_value_t = 20_000)]
    pub max_connects: u64,
    /// Most seconds to run.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
}

/// Clients connect, send one DM to a sink, and disconnect, continuously.
///
/// # Errors
/// When the sink cannot connect.
pub async fn churn(ctx: &Arc<Ctx>, p: &ChurnParams) -> anyhow::Result<Value> {
    let (sink_ident, mut sink) = connect_all(ctx, 1, false).await?.remove(0);
    let sunk = Rc::new(Cell::new(0u64));
    let sink_task = {
        let sunk = sunk.clone();
        spawn_local(async move {
            while sink.read_some().await.is_ok() {
                while let Some((_, frame)) = sink.next_frame() {
                    if payload::parse(frame).is_some() {
                        sunk.set(sunk.get() + 1);
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let progress = Progress::new(format!("churn[{}] connects", ctx.label), p.max_connects);
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(p.secs.min(ctx.max_secs));
    let started = Rc::new(Cell::new(0u64));
    let errors = Rc::new(RefCell::new(Vec::<String>::new()));
    let probe = Probe::start(ctx.pid());
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..p.workers.max(1) {
        let (ctx, started, errors, done) =
            (ctx.clone(), started.clone(), errors.clone(), progress.done.clone());
        let (sink_ident, max) = (sink_ident.clone(), p.max_connects);
        workers.push(spawn_local(async move {
            let mut enc = Encoder::default();
            let mut out = Vec::new();
            while started.get() < max && tokio::time::Instant::now() < until {
                let seq = started.get();
                started.set(seq + 1);
                let ident = ctx.ident();
                let attempt = async {
                    let mut conn = Conn::connect(&ctx.target, &ident, false).await?;
                    out.clear();
                    enc.frame(&mut out, ctx.raw(), Op::Dm(&sink_ident), seq, now_ns(), ctx.size);
                    conn.send(&out).await?;
                    conn.close(CLOSE_LINGER).await;
                    Ok::<(), std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Ok(())) => done.set(done.get() + 1),
                    Ok(Err(e)) => errors.borrow_mut().push(e.to_string()),
                    Err(_) => errors.borrow_mut().push("timed out".into()),
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage = probe.finish();
    let completed = progress.done.get();
    drop(progress);
    // Give the last DMs time to reach the sink.
    let wait_until = Instant::now() + Duration::from_secs(2);
    while sunk.get() < completed && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink_task.abort();
    let errors = errors.borrow();
    let mut fields = json!({
        "unit": "connects/s",
        "workers": p.workers, "connects": completed,
        "errors": errors.len(), "first_error": errors.first(),
        "delivered_to_sink": sunk.get(),
        "lost": completed.saturating_sub(sunk.get()),
        "ok": errors.is_empty() && sunk.get() >= completed,
    });
    usage_fields(&mut fields, completed, secs, &usage);
    Ok(ctx.record("churn", &p.workers.to_string(), fields))
}

#[cfg(test)]
mod tests {
    use super::Ordered;

    #[test]
    fn ordered_counts_duplicates_and_gaps() {
        let mut o = Ordered::default();
        for seq in [0, 1, 1, 3, 4, 2] {
            o.accept(seq);
        }
        assert_eq!((o.received, o.dup, o.reorder, o.expected), (4, 2, 1, 5));
    }
}
