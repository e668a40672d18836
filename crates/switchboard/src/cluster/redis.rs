//! The cluster bus over Redis.
//!
//! Keys and channels (all under `sb:`):
//! - `sb:name:{name}` = node id, set with `NX PX ttl` at handshake (a second
//!   claim anywhere gets 409), refreshed by the owning node's heartbeat,
//!   deleted (only if still ours) when the client leaves. A node killed with
//!   -9 stops refreshing, so its names expire after the TTL.
//! - `sb:node:{id}` = liveness key of a node, refreshed by its heartbeat.
//!   When it is gone, the other nodes drop that node's clients from their
//!   directories and emit leave events for them.
//! - channel `sb:node:{id}`: deliveries to clients on that node.
//! - channel `sb:all`: broadcasts, room publishes, events, hello/snapshot.
//!
//! One task per node owns both connections: a multiplexed connection for
//! commands and a pub/sub connection. Everything the hub hands over goes
//! through one bounded queue into that task, which sends it in order as a
//! pipeline; so one sender's messages reach Redis, and hence every other
//! node, in the order sent. Frames carry their origin node, and a node
//! ignores its own (Redis echoes `sb:all` to the publisher), so nothing is
//! delivered twice.
//!
//! When Redis is unreachable the bus is *degraded*: [`Bus::healthy`] is
//! false (so `/readyz` answers 503), sends to clients not on this node are
//! refused with [`RouteError::ClusterUnavailable`], local traffic goes on,
//! and the task reconnects with capped exponential backoff. On reconnect it
//! re-claims its names (kicking a local client whose name another node took
//! meanwhile) and exchanges snapshots with the other nodes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisResult, Value};
use switchboard_protocol::v1::PresenceEvent;
use switchboard_protocol::{ClientName, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    envelope_for, envelope_kept, wire_event, Bus, ClaimFuture, ClusterError, ClusterOptions,
    Directory, Envelope, Frame, Kept, RemoteClient, WireClient, WireEvent,
};
use crate::hub::{
    Accepted, Body, ClientInfo, EventKind, Hub, HubEvent, Message, OnCommit, RegisterError,
    RouteError,
};
use crate::redis_keys::{name_key, node_key, ALL, NAME_PREFIX, ROOM_CHANNEL};

/// Commands queued for the bus task; more than this and sends are refused
/// rather than buffered without bound.
const QUEUE: usize = 65_536;
/// Most commands sent in one pipeline.
const BATCH: usize = 512;
/// Names refreshed per heartbeat script call.
const REFRESH_CHUNK: usize = 500;
/// Connect and response timeout for Redis.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Most forwarded sends waiting for an answer; beyond, sends are refused.
const MAX_AWAITED: usize = 65_536;
/// How long a forwarded send waits for the holder's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Deletes a name only if this node still holds it: a name freed by expiry
/// and taken by another node must not be deleted by a late leave.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";

/// Refreshes this node's names; re-claims those that expired (Redis
/// restarted) and returns the keys another node holds now.
const REFRESH: &str = "local taken = {} \
    for _, key in ipairs(KEYS) do \
      local v = redis.call('GET', key) \
      if v == false or v == ARGV[1] then redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) \
      else table.insert(taken, key) end \
    end \
    return taken";

#[derive(Debug)]
enum Command {
    Publish { channel: String, frame: Vec<u8> },
    Claim { name: String, reply: oneshot::Sender<bool> },
    Release { name: String },
}

/// The Redis implementation of [`Bus`]; see the module docs.
pub struct RedisBus {
    options: ClusterOptions,
    tx: mpsc::Sender<Command>,
    healthy: AtomicBool,
    directory: Mutex<Directory>,
    /// Messages that could not be handed to Redis (refused or lost in flight).
    dropped: AtomicU64,
    /// Times the bus went from healthy to degraded.
    outages: AtomicU64,
    /// Issue 7: sends forwarded to the node holding their recipient, waiting
    /// for its answer, by token.
    answers: Mutex<HashMap<u64, (Instant, OnCommit)>>,
    next_token: AtomicU64,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").field("node", &self.options.node_id).finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects `hub` to the cluster: attaches the bus to the hub and spawns
    /// the task that talks to Redis until `shutdown` is cancelled. Redis need
    /// not be up yet: the node starts degraded and connects when it can.
    ///
    /// # Errors
    /// [`ClusterError::InvalidUrl`] when the URL cannot be used.
    pub fn start(
        hub: &Hub,
        options: ClusterOptions,
        shutdown: CancellationToken,
    ) -> Result<(Arc<RedisBus>, JoinHandle<()>), ClusterError> {
        let client = Client::open(options.url.as_str())
            .map_err(|source| ClusterError::InvalidUrl { url: options.url.clone(), source })?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let bus = Arc::new(RedisBus {
            options,
            tx,
            healthy: AtomicBool::new(false),
            directory: Mutex::default(),
            dropped: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            answers: Mutex::default(),
            next_token: AtomicU64::new(1),
        });
        hub.attach_bus(bus.clone());
        let task = Task { bus: bus.clone(), hub: hub.clone(), client, rx, shutdown };
        let handle = tokio::spawn(task.run());
        Ok((bus, handle))
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.options.node_id
    }

    /// Messages that could not be handed to Redis since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Times the bus lost Redis since start.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    fn directory(&self) -> MutexGuard<'_, Directory> {
        self.directory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queue(&self, command: Command) -> Result<(), RouteError> {
        if !self.healthy() {
            return Err(RouteError::ClusterUnavailable);
        }
        self.tx.try_send(command).map_err(|_| {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            RouteError::ClusterUnavailable
        })
    }

    fn publish(
        &self,
        channel: String,
        envelope: Envelope,
        payload: &[u8],
    ) -> Result<(), RouteError> {
        let frame = Frame::encode(&self.options.node_id, envelope, payload);
        self.queue(Command::Publish { channel, frame })
    }

    /// The node a remote client is on.
    fn owner(&self, name: &str) -> Option<String> {
        self.directory().clients.get(name).map(|c| c.node.clone())
    }

    fn route_to_owner(
        &self,
        to: &str,
        envelope: Envelope,
        payload: &[u8],
    ) -> Result<(), RouteError> {
        match self.owner(to) {
            Some(node) => self.publish(node_key(&node), envelope, payload),
            // While degraded the directory may be stale: say so rather than "offline".
            None if !self.healthy() => Err(RouteError::ClusterUnavailable),
            None => Err(RouteError::Offline(to.to_owned())),
        }
    }
}

impl Bus for RedisBus {
    fn is_clustered(&self) -> bool {
        true
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn claim(&self, name: &ClientName) -> ClaimFuture {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue(Command::Claim { name: name.to_string(), reply });
        let name = name.to_string();
        Box::pin(async move {
            if queued.is_err() {
                // Degraded: names are unique on this node only until Redis is
                // back; the heartbeat then resolves conflicts.
                return Ok(());
            }
            match tokio::time::timeout(REDIS_TIMEOUT * 2, answer).await {
                Ok(Ok(false)) => Err(RegisterError::NameTaken(name)),
                _ => Ok(()),
            }
        })
    }

    fn release(&self, name: &ClientName) {
        // While degraded the claim expires by itself after the TTL.
        let _ = self.queue(Command::Release { name: name.to_string() });
    }

    fn announce(&self, event: &HubEvent) {
        if let Some(event) = wire_event(&event.kind) {
            let at = super::millis(event_time(&event, &self.options));
            let _ = self.publish(ALL.to_owned(), Envelope::Event { at, event }, &[]);
        }
    }

    fn send_direct(&self, to: &str, message: &Message) -> Result<(), RouteError> {
        let Some((envelope, payload)) = envelope_for(message, Some(to)) else {
            return Err(RouteError::Offline(to.to_owned()));
        };
        self.route_to_owner(to, envelope, &payload)
    }

    fn kick(&self, name: &str, reason: &str) -> Result<(), RouteError> {
        let envelope = Envelope::Kick { name: name.to_owned(), reason: reason.to_owned() };
        self.route_to_owner(name, envelope, &[])
    }

    fn publish_all(&self, message: &Message) -> Result<usize, RouteError> {
        let remote = {
            let directory = self.directory();
            match message.body() {
                Body::Room { room, .. } | Body::Binary { room: Some(room), .. } => {
                    directory.room_members(room.as_str())
                }
                _ => directory.clients.len(),
            }
        };
        let Some((envelope, payload)) = envelope_for(message, None) else { return Ok(0) };
        match self.publish(ALL.to_owned(), envelope, &payload) {
            Ok(()) => Ok(remote),
            // Nobody remote to miss it.
            Err(_) if remote == 0 => Ok(0),
            Err(error) => Err(error),
        }
    }

    fn remote_clients(&self) -> Vec<ClientInfo> {
        self.directory().infos()
    }

    fn remote_rooms(&self) -> HashMap<RoomName, Vec<ClientName>> {
        self.directory().rooms()
    }

    fn node_id(&self) -> &str {
        &self.options.node_id
    }

    fn expect_answer(&self, answer: OnCommit) -> Result<u64, OnCommit> {
        let mut answers = self.answers();
        if answers.len() >= MAX_AWAITED {
            return Err(answer);
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        answers.insert(token, (Instant::now() + ANSWER_TIMEOUT, answer));
        Ok(token)
    }

    fn take_answer(&self, token: u64) -> Option<OnCommit> {
        self.answers().remove(&token).map(|(_, answer)| answer)
    }

    fn answer(&self, node: &str, token: u64, outcome: Result<Accepted, RouteError>) {
        if node == self.options.node_id {
            if let Some(answer) = self.take_answer(token) {
                answer(outcome);
            }
            return;
        }
        let envelope = Envelope::Answer { token, outcome: outcome.into() };
        if let Err(error) = self.publish(node_key(node), envelope, &[]) {
            tracing::warn!(%node, %error, "cannot answer a forwarded send; the sender will time out and retry");
        }
    }

    fn room_frame(&self, message: &Message, echo: bool) -> Vec<u8> {
        let Body::Room { room, from, text, .. } = message.body() else { return Vec::new() };
        let envelope = Envelope::RoomKept {
            room: room.to_string(),
            from: from.as_ref().map(ToString::to_string),
            text: text.clone(),
            echo,
            ts: message.ts(),
        };
        Frame::encode(&self.options.node_id, envelope, &[])
    }

    fn direct_frame(
        &self,
        to: &str,
        message: &Message,
        id: Option<&str>,
        receipt: bool,
        reply: Option<(&str, u64)>,
    ) -> Vec<u8> {
        let kept = Kept {
            id: id.map(str::to_owned),
            receipt,
            reply_node: reply.map(|(node, _)| node.to_owned()),
            reply_token: reply.map(|(_, token)| token),
        };
        match envelope_kept(message, Some(to), kept) {
            Some((envelope, payload)) => Frame::encode(&self.options.node_id, envelope, &payload),
            None => Vec::new(),
        }
    }
}

impl RedisBus {
    fn answers(&self) -> MutexGuard<'_, HashMap<u64, (Instant, OnCommit)>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the sends whose holder never answered (it crashed, or the
    /// bus lost the answer): the sender retries, deduplicated by its id.
    fn expire_answers(&self) {
        let now = Instant::now();
        let expired: Vec<OnCommit> = {
            let mut answers = self.answers();
            let tokens: Vec<u64> =
                answers.iter().filter(|(_, (at, _))| *at <= now).map(|(t, _)| *t).collect();
            tokens.into_iter().filter_map(|t| answers.remove(&t)).map(|(_, a)| a).collect()
        };
        for answer in expired {
            answer(Err(RouteError::StoreUnavailable(
                "no answer from the node holding the recipient; retry".into(),
            )));
        }
    }
}

/// The event's own time: `Joined` carries "now" in its client record.
fn event_time(event: &WireEvent, _options: &ClusterOptions) -> SystemTime {
    match event {
        WireEvent::Joined { client } => UNIX_EPOCH + Duration::from_millis(client.since),
        _ => SystemTime::now(),
    }
}

/// What the directory changed; applied to the hub after the directory lock
/// is released (the hub's lock and the directory's are never held together).
#[derive(Debug, Default)]
struct Effects {
    events: Vec<(SystemTime, EventKind)>,
    presence: Vec<(Option<RoomName>, ClientName, PresenceEvent)>,
}

impl Effects {
    fn apply(self, hub: &Hub) {
        for (room, name, event) in self.presence {
            hub.remote_presence(room.as_ref(), &name, event);
        }
        for (at, kind) in self.events {
            hub.emit_local(HubEvent { at, kind });
        }
    }

    fn joined(&mut self, at: SystemTime, name: &ClientName, remote: &RemoteClient) {
        self.presence.push((None, name.clone(), PresenceEvent::Join));
        self.events.push((
            at,
            EventKind::Joined { name: name.clone(), addr: remote.addr, protocol: remote.protocol },
        ));
        for room in &remote.rooms {
            self.room(at, name, room, true);
        }
    }

    fn left(&mut self, at: SystemTime, name: &ClientName, remote: &RemoteClient, reason: Left) {
        for room in &remote.rooms {
            self.room(at, name, room, false);
        }
        self.presence.push((None, name.clone(), PresenceEvent::Leave));
        self.events
            .push((at, EventKind::Left { name: name.clone(), code: reason.0, reason: reason.1 }));
    }

    fn room(&mut self, at: SystemTime, name: &ClientName, room: &RoomName, joined: bool) {
        let (presence, kind) = if joined {
            (PresenceEvent::Join, EventKind::RoomJoined { name: name.clone(), room: room.clone() })
        } else {
            (PresenceEvent::Leave, EventKind::RoomLeft { name: name.clone(), room: room.clone() })
        };
        self.presence.push((Some(room.clone()), name.clone(), presence));
        self.events.push((at, kind));
    }
}

/// A leave's close code and reason.
#[derive(Debug)]
struct Left(Option<u16>, String);

struct Task {
    bus: Arc<RedisBus>,
    hub: Hub,
    client: Client,
    rx: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("node", &self.bus.options.node_id).finish_non_exhaustive()
    }
}

impl Task {
    async fn run(mut self) {
        let node = self.bus.options.node_id.clone();
        tracing::info!(node = %node, url = %self.bus.options.url, "joining cluster");
        let mut backoff = Duration::from_millis(100);
        let mut was_up = true;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            let error = match self.connect().await {
                Ok((conn, pubsub)) => {
                    backoff = Duration::from_millis(100);
                    was_up = true;
                    match self.connected(conn, pubsub).await {
                        Ok(()) => break,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            if self.bus.healthy.swap(false, Ordering::AcqRel) || was_up {
                was_up = false;
                self.bus.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, %error,
                    "cluster bus unavailable: serving local clients only, cross-node sends refused; reconnecting");
                self.hub.emit_local(HubEvent {
                    at: SystemTime::now(),
                    kind: EventKind::Error {
                        name: None,
                        message: format!("cluster bus unavailable: {error}"),
                    },
                });
            }
            self.fail_pending();
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.bus.healthy.store(false, Ordering::Release);
        tracing::info!(node = %node, "left cluster");
    }

    async fn connect(&self) -> RedisResult<(MultiplexedConnection, redis::aio::PubSub)> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT));
        let conn = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        let pubsub = tokio::time::timeout(REDIS_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| timeout_error())??;
        Ok((conn, pubsub))
    }

    /// Commands queued while the connection failed: claims are answered
    /// "go ahead" (degraded), messages are counted as dropped.
    fn fail_pending(&mut self) {
        self.bus.expire_answers();
        let mut lost = 0u64;
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Claim { reply, .. } => {
                    let _ = reply.send(true);
                }
                Command::Publish { .. } => lost += 1,
                Command::Release { .. } => {}
            }
        }
        if lost > 0 {
            self.bus.dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(lost, "cluster messages lost when the bus failed");
        }
    }

    /// Serves one Redis connection until it fails (`Err`) or shutdown (`Ok`).
    async fn connected(
        &mut self,
        mut conn: MultiplexedConnection,
        mut pubsub: redis::aio::PubSub,
    ) -> RedisResult<()> {
        let node = self.bus.options.node_id.clone();
        tokio::time::timeout(REDIS_TIMEOUT, pubsub.subscribe(&[ALL, node_key(&node).as_str()]))
            .await
            .map_err(|_| timeout_error())??;
        // Issue 7: room messages kept in Redis come on their own channel.
        if self.hub.shares_inboxes() {
            tokio::time::timeout(REDIS_TIMEOUT, pubsub.subscribe(ROOM_CHANNEL))
                .await
                .map_err(|_| timeout_error())??;
            // Fill (or refresh) this node's copy of the rooms' histories, now
            // that later messages arrive on the channel.
            let hub = self.hub.clone();
            tokio::spawn(async move { hub.reload_room_histories().await });
        }
        let mut messages = pubsub.into_on_message();
        self.heartbeat(&mut conn, false).await?;
        self.bus.healthy.store(true, Ordering::Release);
        tracing::info!(node = %node, "cluster bus connected");
        // Ask the others for their clients, and tell them ours.
        self.send_now(&mut conn, ALL, Envelope::Hello).await?;
        self.send_snapshot(&mut conn).await?;
        // Give the other nodes one TTL to refresh their keys before their
        // absence is taken as death (after a Redis restart every key is gone).
        let grace = Instant::now() + self.bus.options.ttl;
        let mut tick = tokio::time::interval(self.bus.options.heartbeat());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.flush(&mut conn).await;
                    return Ok(());
                }
                command = self.rx.recv() => {
                    let Some(command) = command else { return Ok(()) };
                    self.send_batch(&mut conn, command).await?;
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "pub/sub connection closed",
                        )));
                    };
                    if message.get_channel_name() == ROOM_CHANNEL {
                        self.on_room(message.get_payload_bytes());
                    } else {
                        self.on_message(&mut conn, message.get_payload_bytes()).await?;
                    }
                }
                _ = tick.tick() => {
                    self.bus.expire_answers();
                    self.heartbeat(&mut conn, Instant::now() >= grace).await?;
                }
            }
        }
    }

    async fn send_now(
        &self,
        conn: &mut MultiplexedConnection,
        channel: &str,
        envelope: Envelope,
    ) -> RedisResult<()> {
        let frame = Frame::encode(&self.bus.options.node_id, envelope, &[]);
        redis::cmd("PUBLISH").arg(channel).arg(frame).query_async::<()>(conn).await
    }

    async fn send_snapshot(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let clients = self
            .hub
            .local_clients()
            .into_iter()
            .map(|info| WireClient {
                name: info.name.to_string(),
                addr: info.addr.to_string(),
                protocol: info.protocol.as_str().to_owned(),
                since: super::millis(info.connected_at),
                rooms: info.rooms.iter().map(ToString::to_string).collect(),
            })
            .collect();
        self.send_now(conn, ALL, Envelope::Snapshot { clients }).await
    }

    /// Sends `first` and whatever else is queued as one pipeline, in order.
    async fn send_batch(
        &mut self,
        conn: &mut MultiplexedConnection,
        first: Command,
    ) -> RedisResult<()> {
        let node = &self.bus.options.node_id;
        let ttl_ms = self.bus.options.ttl.as_millis() as u64;
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match self.rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for command in &batch {
            match command {
                Command::Publish { channel, frame } => {
                    pipe.cmd("PUBLISH").arg(channel).arg(frame.as_slice());
                }
                Command::Claim { name, .. } => {
                    pipe.cmd("SET").arg(name_key(name)).arg(node).arg("NX").arg("PX").arg(ttl_ms);
                }
                Command::Release { name } => {
                    pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(name_key(name)).arg(node);
                }
            }
        }
        match pipe.query_async::<Vec<Value>>(conn).await {
            Ok(values) => {
                for (command, value) in batch.into_iter().zip(values) {
                    if let Command::Claim { reply, .. } = command {
                        let _ = reply.send(!matches!(value, Value::Nil));
                    }
                }
                Ok(())
            }
            Err(error) => {
                let mut lost = 0;
                for command in batch {
                    match command {
                        Command::Claim { reply, .. } => {
                            let _ = reply.send(true);
                        }
                        Command::Publish { .. } => lost += 1,
                        Command::Release { .. } => {}
                    }
                }
                self.bus.dropped.fetch_add(lost, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Refreshes this node's liveness key and names; kicks local clients
    /// whose name another node holds; drops nodes whose key expired.
    async fn heartbeat(
        &self,
        conn: &mut MultiplexedConnection,
        check_nodes: bool,
    ) -> RedisResult<()> {
        let node = &self.bus.options.node_id;
        let ttl_ms = self.bus.options.ttl.as_millis() as u64;
        redis::cmd("SET")
            .arg(node_key(node))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(conn)
            .await?;
        let names = self.hub.local_names();
        for chunk in names.chunks(REFRESH_CHUNK) {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(REFRESH).arg(chunk.len());
            for name in chunk {
                cmd.arg(name_key(name.as_str()));
            }
            cmd.arg(node).arg(ttl_ms);
            let taken: Vec<String> = cmd.query_async(conn).await?;
            for key in taken {
                let name = key.trim_start_matches(NAME_PREFIX);
                tracing::warn!(%name, "name is held by another node: disconnecting the local client");
                self.hub.kick_from_cluster(
                    name,
                    "the name is online on another node of the cluster".into(),
                );
            }
        }
        if check_nodes {
            let nodes: Vec<String> = {
                let directory = self.bus.directory();
                let set: BTreeSet<&String> = directory.clients.values().map(|c| &c.node).collect();
                set.into_iter().cloned().collect()
            };
            for other in nodes {
                let alive: bool =
                    redis::cmd("EXISTS").arg(node_key(&other)).query_async(conn).await?;
                if !alive {
                    tracing::warn!(node = %other, "cluster node stopped heartbeating: its clients left");
                    self.drop_node(&other, "node stopped heartbeating");
                }
            }
        }
        Ok(())
    }

    /// Forgets every client of `node`, with leave events and presence.
    fn drop_node(&self, node: &str, why: &str) {
        let mut effects = Effects::default();
        {
            let mut directory = self.bus.directory();
            let gone: Vec<ClientName> = directory
                .clients
                .iter()
                .filter(|(_, c)| c.node == node)
                .map(|(n, _)| n.clone())
                .collect();
            for name in gone {
                if let Some(remote) = directory.clients.remove(&name) {
                    let reason = Left(None, format!("connection lost: {why} ({node})"));
                    effects.left(SystemTime::now(), &name, &remote, reason);
                }
            }
        }
        effects.apply(&self.hub);
    }

    /// Before leaving: send what is queued, then drop this node's keys.
    async fn flush(&mut self, conn: &mut MultiplexedConnection) {
        while let Ok(command) = self.rx.try_recv() {
            if self.send_batch(conn, command).await.is_err() {
                return;
            }
        }
        let _ = redis::cmd("DEL")
            .arg(node_key(&self.bus.options.node_id))
            .query_async::<()>(conn)
            .await;
    }

    /// A room message from the `ROOM` script: `{rseq}\n{frame}`. Every node
    /// takes it, the origin too (it delivers only from here).
    fn on_room(&self, bytes: &[u8]) {
        let parsed = bytes.iter().position(|b| *b == b'\n').and_then(|at| {
            let rseq = std::str::from_utf8(&bytes[..at]).ok()?.parse::<u64>().ok()?;
            Some((rseq, Frame::decode(&bytes[at + 1..]).ok()?))
        });
        let Some((rseq, frame)) = parsed else {
            tracing::warn!("ignoring unreadable room frame");
            return;
        };
        if let Envelope::RoomKept { room, from, text, echo, ts } = frame.envelope {
            let from = from.and_then(|f| self.hub.client_name(&f).ok());
            if let Ok(room) = self.hub.room_name(&room) {
                self.hub.room_kept(room, from, text, echo, ts, rseq);
            }
        }
    }

    async fn on_message(&self, conn: &mut MultiplexedConnection, bytes: &[u8]) -> RedisResult<()> {
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "ignoring unreadable cluster frame");
                return Ok(());
            }
        };
        if frame.origin == self.bus.options.node_id {
            return Ok(());
        }
        let hub = &self.hub;
        let origin = frame.origin;
        match frame.envelope {
            Envelope::Direct { from, to, text, kept } => {
                if let (Ok(from), Ok(to_name)) = (hub.client_name(&from), hub.client_name(&to)) {
                    deliver(hub, &to, Body::Direct { from, to: to_name, text: text.into() }, kept);
                }
            }
            Envelope::Binary { from, to, room, kept } => {
                let Ok(from) = hub.client_name(&from) else { return Ok(()) };
                let payload: Bytes = frame.payload;
                match (to, room) {
                    (Some(to), _) => {
                        deliver(hub, &to, Body::Binary { from, room: None, payload }, kept);
                    }
                    (None, Some(room)) => {
                        if let Ok(room_name) = hub.room_name(&room) {
                            hub.room_from_cluster(
                                &room,
                                Body::Binary { from, room: Some(room_name), payload },
                            );
                        }
                    }
                    (None, None) => {}
                }
            }
            Envelope::Room { room, from, text } => {
                let from = from.and_then(|f| hub.client_name(&f).ok());
                if let Ok(room_name) = hub.room_name(&room) {
                    hub.room_from_cluster(
                        &room,
                        Body::Room { room: room_name, from, text, rseq: None },
                    );
                }
            }
            Envelope::Server { to: Some(to), text, kept } => {
                deliver(hub, &to, Body::Server { text, broadcast: false }, kept);
            }
            Envelope::Receipt { to, id, by } => {
                if let Ok(by) = hub.client_name(&by) {
                    deliver(hub, &to, Body::Receipt { id, to: by }, Kept::default());
                }
            }
            // Only on the room channel (see `on_room`).
            Envelope::RoomKept { .. } => {}
            Envelope::Answer { token, outcome } => {
                if let Some(answer) = self.bus.take_answer(token) {
                    answer(outcome.into());
                }
            }
            Envelope::Server { to: None, text, .. } => {
                hub.broadcast_from_cluster(Body::Server { text, broadcast: true });
            }
            Envelope::Kick { name, reason } => hub.kick_from_cluster(&name, reason),
            Envelope::Event { at, event } => self.on_event(&origin, at, event),
            Envelope::Hello => self.send_snapshot(conn).await?,
            Envelope::Snapshot { clients } => self.on_snapshot(&origin, &clients),
        }
        Ok(())
    }

    fn on_event(&self, origin: &str, at: u64, event: WireEvent) {
        let at = UNIX_EPOCH + Duration::from_millis(at);
        let hub = &self.hub;
        let mut effects = Effects::default();
        {
            let mut directory = self.bus.directory();
            match event {
                WireEvent::Joined { client } => {
                    if let Ok(name) = hub.client_name(&client.name) {
                        // A snapshot may have told us already (it is sent
                        // ahead of the queue): no second join event then.
                        let known = directory.clients.get(&name).is_some_and(|c| c.node == origin);
                        if !known {
                            let remote = RemoteClient::from_wire(origin, &client);
                            effects.joined(at, &name, &remote);
                            directory.clients.insert(name, remote);
                        }
                    }
                }
                WireEvent::Left { name, code, reason } => {
                    if let Some((name, remote)) = directory.clients.remove_entry(name.as_str()) {
                        effects.left(at, &name, &remote, Left(code, reason));
                    }
                }
                WireEvent::RoomJoined { name, room } => {
                    if let (Ok(name), Ok(room)) = (hub.client_name(&name), hub.room_name(&room)) {
                        let Some(remote) = directory.clients.get_mut(&name) else { return };
                        if remote.rooms.insert(room.clone()) {
                            effects.room(at, &name, &room, true);
                        }
                    }
                }
                WireEvent::RoomLeft { name, room } => {
                    if let Ok(name) = hub.client_name(&name) {
                        let Some(remote) = directory.clients.get_mut(&name) else { return };
                        if let Some(room) = remote.rooms.take(room.as_str()) {
                            effects.room(at, &name, &room, false);
                        }
                    }
                }
                WireEvent::ToServer { from, text } => {
                    if let Ok(from) = hub.client_name(&from) {
                        effects.events.push((at, EventKind::ToServer { from, text }));
                    }
                }
                WireEvent::Error { name, message } => {
                    let name = name.and_then(|n| hub.client_name(&n).ok());
                    effects.events.push((
                        at,
                        EventKind::Error { name, message: format!("on node {origin}: {message}") },
                    ));
                }
            }
        }
        effects.apply(hub);
    }

    /// Replaces what this node knows of `origin`'s clients with its snapshot.
    fn on_snapshot(&self, origin: &str, clients: &[WireClient]) {
        let now = SystemTime::now();
        let mut effects = Effects::default();
        {
            let mut directory = self.bus.directory();
            let mut fresh = HashSet::new();
            for client in clients {
                let Ok(name) = self.hub.client_name(&client.name) else { continue };
                let remote = RemoteClient::from_wire(origin, client);
                match directory.clients.get_mut(&name) {
                    Some(known) if known.node == origin => {
                        for room in remote.rooms.difference(&known.rooms) {
                            effects.room(now, &name, room, true);
                        }
                        for room in known.rooms.difference(&remote.rooms) {
                            effects.room(now, &name, room, false);
                        }
                        known.rooms = remote.rooms;
                    }
                    _ => {
                        effects.joined(now, &name, &remote);
                        directory.clients.insert(name.clone(), remote);
                    }
                }
                fresh.insert(name);
            }
            let stale: Vec<ClientName> = directory
                .clients
                .iter()
                .filter(|(name, c)| c.node == origin && !fresh.contains(*name))
                .map(|(name, _)| name.clone())
                .collect();
            for name in stale {
                if let Some(remote) = directory.clients.remove(&name) {
                    let reason = Left(None, format!("no longer on node {origin}"));
                    effects.left(now, &name, &remote, reason);
                }
            }
        }
        effects.apply(&self.hub);
    }
}

/// A delivery for one local client from another node: with shared inboxes
/// (issue 7) stored and answered; otherwise live only, as in issue 8.
fn deliver(hub: &Hub, to: &str, body: Body, kept: Kept) {
    if hub.shares_inboxes() {
        let reply = kept.reply();
        hub.deliver_forwarded(to, body, kept.id, kept.receipt, reply);
    } else {
        hub.deliver_from_cluster(to, body);
    }
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out talking to Redis"))
}
