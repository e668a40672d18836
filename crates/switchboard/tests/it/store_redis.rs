//! The Redis backend of the durable store (cluster mode) against a real
//! `redis-server`, one per test: leases, the claim fence on appends, routing
//! to offline names and to the claim holder, limits, acks with receipts, and
//! reconnection after Redis restarts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::redis::Redis;
use crate::common::WAIT;
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard::store::{
    Entry, InboxStats, Op, Receipt, Record, RecordKind, RedisStoreOptions, RouteOutcome,
    RouteRequest, Store, StoreConfig, StoreListener, SyncPolicy, LEASE_STEP,
};
use tokio::sync::oneshot;

/// Records what the store reports to its listener.
#[derive(Default)]
struct Recorder {
    removed: Mutex<Vec<(String, u64, u64)>>,
    receipts: Mutex<Vec<Receipt>>,
}

impl StoreListener for Recorder {
    fn removed(&self, name: &str, entries: u64, bytes: u64) {
        self.removed.lock().unwrap().push((name.to_owned(), entries, bytes));
    }
    fn receipts(&self, receipts: Vec<Receipt>) {
        self.receipts.lock().unwrap().extend(receipts);
    }
}

impl Recorder {
    fn removed(&self) -> Vec<(String, u64, u64)> {
        self.removed.lock().unwrap().clone()
    }
    fn receipts(&self) -> Vec<Receipt> {
        self.receipts.lock().unwrap().clone()
    }
}

/// A store on `redis`'s Redis, as node `node_id`.
fn open(redis: &Redis, node_id: &str) -> (Store, Arc<Recorder>) {
    let config = StoreConfig {
        data_dir: PathBuf::from("unused-by-the-redis-store"),
        sync: SyncPolicy::Off,
        max_batch: 1024,
        queue_limit_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        dedup_window: Duration::from_secs(600),
        room_history: 0,
    };
    let options = RedisStoreOptions { url: redis.url(), node_id: node_id.to_owned() };
    let recorder = Arc::new(Recorder::default());
    let store = Store::open_redis(config, options, recorder.clone()).unwrap();
    (store, recorder)
}

/// A store as node n1 holding bob's claim, as after bob's handshake there,
/// with bob's next seq.
async fn open_holding_bob(redis: &Redis) -> (Store, Arc<Recorder>, u64) {
    let (store, recorder) = open(redis, "n1");
    set_claim(redis, "bob", "n1").await;
    let seq = within(store.load("bob")).await.unwrap().next_seq;
    (store, recorder, seq)
}

/// Awaits `future`, failing the test after [`WAIT`].
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future).await.expect("the store did not answer in time")
}

/// A plain connection to the test's Redis, for what the bus would do.
async fn plain(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Makes `node` the holder of `name`'s claim, as the bus does at the handshake.
async fn set_claim(redis: &Redis, name: &str, node: &str) {
    let mut conn = plain(redis).await;
    redis::cmd("SET")
        .arg(format!("sb:name:{name}"))
        .arg(node)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// Submits `op` and waits for its completion: true when it was applied.
async fn commit(store: &Store, op: Op) -> bool {
    let (tx, rx) = oneshot::channel();
    store
        .submit_then(
            op,
            Some(Box::new(move |ok| {
                let _ = tx.send(ok);
            })),
        )
        .unwrap();
    within(rx).await.unwrap()
}

async fn route(store: &Store, request: RouteRequest) -> RouteOutcome {
    let (tx, rx) = oneshot::channel();
    store.route(
        request,
        Box::new(move |outcome| {
            let _ = tx.send(outcome);
        }),
    );
    within(rx).await.unwrap()
}

/// Every stored entry of `name`'s inbox.
async fn replay(store: &Store, name: &str) -> Vec<Entry> {
    within(store.replay(name, 0, u64::MAX, false)).await.unwrap().unwrap()
}

async fn stats(store: &Store, name: &str) -> InboxStats {
    within(store.inbox_stats(name)).await.unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// A direct message from alice.
fn record(text: &str) -> Record {
    Record {
        kind: RecordKind::Direct,
        ts: now_ms(),
        from: Some("alice".into()),
        text: text.into(),
        payload: None,
    }
}

fn append(name: &str, seq: u64, record: Record) -> Op {
    Op::append(name, seq, record)
}

/// A delivery from alice to `to`, with generous limits and nothing to forward.
fn request(to: &str, record: Record, client_id: Option<&str>) -> RouteRequest {
    RouteRequest {
        to: to.into(),
        record,
        client_id: client_id.map(str::to_owned),
        receipt: false,
        forward: Vec::new(),
        max_messages: 100,
        max_bytes: 1 << 20,
    }
}

/// Each takeover leases a fresh block above every seq handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_leases_blocks_above_every_seq() {
    let redis = Redis::start().await;
    let (store, _) = open(&redis, "n1");
    let first = within(store.load("bob")).await.unwrap();
    let second = within(store.load("bob")).await.unwrap();
    assert_eq!(first.leased - first.next_seq + 1, LEASE_STEP);
    assert!(second.next_seq > first.leased, "{first:?} then {second:?}");
    assert_eq!((second.depth, second.bytes), (0, 0));
}

/// An append stores only while this node holds the name's claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_fenced_by_the_claim() {
    let redis = Redis::start().await;
    let (store, _, seq) = open_holding_bob(&redis).await;
    let mut binary = record("");
    binary.kind = RecordKind::Binary;
    binary.payload = Some(Bytes::from_static(b"\x00\x01\xff"));

    assert!(commit(&store, append("bob", seq, binary.clone())).await);
    assert!(commit(&store, Op::Barrier).await);
    assert_eq!(replay(&store, "bob").await, [Entry { seq, record: binary.clone() }]);

    set_claim(&redis, "bob", "n2").await;
    assert!(!commit(&store, append("bob", seq + 1, record("stale"))).await);
    assert_eq!(replay(&store, "bob").await, [Entry { seq, record: binary }]);
}

/// With no claim held, a known name's delivery is numbered and stored; an
/// unknown name's is refused, a repeated client id is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_stores_for_offline_known_names_and_refuses_unknown_ones() {
    let redis = Redis::start().await;
    let (store, _) = open(&redis, "n1");
    assert_eq!(
        route(&store, request("bob", record("hi"), Some("m1"))).await,
        RouteOutcome::Unknown
    );

    let loaded = within(store.load("bob")).await.unwrap();
    let hi = record("hi");
    let outcome = route(&store, request("bob", hi.clone(), Some("m1"))).await;
    let RouteOutcome::Stored(seq) = outcome else { panic!("not stored: {outcome:?}") };
    assert!(seq > loaded.leased, "seq {seq} inside the block {loaded:?}");
    assert_eq!(replay(&store, "bob").await, [Entry { seq, record: hi }]);

    let again = route(&store, request("bob", record("hi"), Some("m1"))).await;
    assert_eq!(again, RouteOutcome::Duplicate);
    assert_eq!(replay(&store, "bob").await.len(), 1);
}

/// A delivery to a name another node holds is published to that node, as
/// given, and not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_forwards_to_the_claim_holder() {
    let redis = Redis::start().await;
    let (store, _) = open(&redis, "n1");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("sb:node:n2").await.unwrap();
    let mut messages = pubsub.into_on_message();
    within(store.load("bob")).await.unwrap();
    set_claim(&redis, "bob", "n2").await;

    let frame = b"\x00a cluster frame\xff".to_vec();
    let outcome = route(
        &store,
        RouteRequest { forward: frame.clone(), ..request("bob", record("hi"), None) },
    )
    .await;
    assert_eq!(outcome, RouteOutcome::Forwarded("n2".to_owned()));
    let message = within(messages.next()).await.unwrap();
    assert_eq!(message.get_payload_bytes(), frame);
    assert_eq!(stats(&store, "bob").await.depth, 0);
}

/// An offline inbox at its message or byte limit refuses with `Full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_refuses_with_full_at_the_inbox_limit() {
    let redis = Redis::start().await;
    let (store, _) = open(&redis, "n1");
    within(store.load("bob")).await.unwrap();
    let limited = || RouteRequest { max_messages: 2, ..request("bob", record("hi"), None) };
    assert!(matches!(route(&store, limited()).await, RouteOutcome::Stored(_)));
    assert!(matches!(route(&store, limited()).await, RouteOutcome::Stored(_)));
    let full = route(&store, limited()).await;
    assert!(matches!(&full, RouteOutcome::Full(why) if why.contains("messages")), "{full:?}");
    assert_eq!(stats(&store, "bob").await.depth, 2);

    within(store.load("carol")).await.unwrap();
    let small = RouteRequest { max_bytes: 10, ..request("carol", record("hi"), None) };
    let full = route(&store, small).await;
    assert!(matches!(&full, RouteOutcome::Full(why) if why.contains("bytes")), "{full:?}");
}

/// An ack trims the inbox, reports what left it and the receipts owed for
/// the acknowledged entries only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_trim_and_report_receipts() {
    let redis = Redis::start().await;
    let (store, recorder, first) = open_holding_bob(&redis).await;
    for (i, receipt) in [true, false, true].into_iter().enumerate() {
        let op = Op::Append {
            name: "bob".into(),
            seq: first + i as u64,
            record: record("hey").into(),
            client_id: Some(format!("m{i}")),
            receipt,
            live: false,
        };
        assert!(commit(&store, op).await);
    }
    let size = record("hey").size() as u64;

    assert!(commit(&store, Op::Ack { name: "bob".into(), upto: first + 1 }).await);
    let receipt = |id: &str| Receipt { sender: "alice".into(), id: id.into(), to: "bob".into() };
    assert_eq!(recorder.receipts(), [receipt("m0")]);
    assert_eq!(recorder.removed(), [("bob".to_owned(), 2, 2 * size)]);
    let left = stats(&store, "bob").await;
    assert_eq!((left.depth, left.bytes, left.first_seq), (1, size, Some(first + 2)));

    assert!(commit(&store, Op::Ack { name: "bob".into(), upto: first + 2 }).await);
    assert_eq!(recorder.receipts(), [receipt("m0"), receipt("m2")]);
    assert_eq!(stats(&store, "bob").await, InboxStats::default());
}

/// A barrier reports the failure of an append submitted before it: the hub
/// submits a delivery's append without a completion and answers its sender
/// on the barrier that follows. The refused entry is reported removed: the
/// hub counted it against the inbox and the store's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_reports_a_refused_append_before_it() {
    let redis = Redis::start().await;
    let (store, recorder) = open(&redis, "n1");
    set_claim(&redis, "bob", "n2").await;
    store.submit(append("bob", 1, record("fenced"))).unwrap();
    // A read ends the batch, so the barrier lands in a batch of its own (as
    // it does by chance when the store thread wakes between the two).
    stats(&store, "bob").await;
    assert!(replay(&store, "bob").await.is_empty());
    assert!(!commit(&store, Op::Barrier).await, "the refused append was confirmed");
    let size = record("fenced").size() as u64;
    assert_eq!(recorder.removed(), [("bob".to_owned(), 1, size)]);
}

/// Makes the test's Redis refuse every write (`maxmemory` below what it
/// uses, with the default `noeviction` policy: writes fail with `OOM`, as
/// they do on a Redis out of memory), or accept them again.
async fn refuse_writes(redis: &Redis, refuse: bool) {
    let mut conn = plain(redis).await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(if refuse { "1" } else { "0" })
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
}

/// Appends a Redis refused, and appends submitted while it was unreachable,
/// are reported removed: the hub counts every append against the inbox and
/// the store's byte limit until the store reports it gone, so an outage
/// would otherwise leave the node refusing deliveries ("the message store
/// is full") until it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_redis_refused_or_never_saw_are_reported_removed() {
    let mut redis = Redis::start().await;
    let (store, recorder, seq) = open_holding_bob(&redis).await;
    let size = record("refused").size() as u64;

    refuse_writes(&redis, true).await;
    store.submit(append("bob", seq, record("refused"))).unwrap();
    assert!(!commit(&store, Op::Barrier).await, "the refused append was confirmed");
    assert_eq!(recorder.removed(), [("bob".to_owned(), 1, size)]);
    refuse_writes(&redis, false).await;
    assert!(replay(&store, "bob").await.is_empty());

    redis.stop().await;
    store.submit(append("bob", seq + 1, record("refused"))).unwrap();
    assert!(!commit(&store, Op::Barrier).await, "the lost append was confirmed");
    assert_eq!(recorder.removed(), [("bob".to_owned(), 1, size), ("bob".to_owned(), 1, size)]);
}

/// A failed ack loses nothing anyone waits for (the entries stay stored and
/// the next ack deletes them): it fails no completion after it. It failed
/// the next sender, whose message was stored: told `unavailable`, that
/// sender retries, and the message is delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ack_fails_no_sender_after_it() {
    let mut redis = Redis::start().await;
    let (store, _) = open(&redis, "n1");
    redis.stop().await;
    store.submit(Op::Ack { name: "bob".into(), upto: 1 }).unwrap();
    // A read ends the batch: the ack fails in a batch without completions.
    assert!(within(store.load("bob")).await.is_err());

    redis.spawn().await;
    set_claim(&redis, "bob", "n1").await;
    let seq = load_once_back(&store, "bob").await;
    assert!(commit(&store, append("bob", seq, record("stored"))).await, "a stored append failed");
    assert_eq!(replay(&store, "bob").await.len(), 1);
}

/// A seq lease Redis refused is written by the next pipeline, and no
/// completion confirms before it is: a lost lease lets the node that takes
/// the name over next number new deliveries at or below seqs the client has
/// already acknowledged, and the client's resume then skips them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_redis_refused_is_written_by_the_next_pipeline() {
    let redis = Redis::start().await;
    let (store, _) = open(&redis, "n1");
    set_claim(&redis, "bob", "n1").await;
    let loaded = within(store.load("bob")).await.unwrap();
    let upto = loaded.leased + LEASE_STEP;

    refuse_writes(&redis, true).await;
    store.submit(Op::Lease { name: "bob".into(), upto }).unwrap();
    assert!(!commit(&store, Op::Barrier).await, "a refused lease was confirmed");
    refuse_writes(&redis, false).await;
    assert!(commit(&store, Op::Barrier).await);
    let mut conn = plain(&redis).await;
    let counter: u64 = redis::cmd("GET").arg("sb:seq:bob").query_async(&mut conn).await.unwrap();
    assert_eq!(counter, upto, "the refused lease was never written");
    let next = within(store.load("bob")).await.unwrap();
    assert!(next.next_seq > upto, "{next:?} reuses seqs up to {upto}");
}

/// Loads `name` once the store has reconnected to a Redis that was down:
/// its next seq.
async fn load_once_back(store: &Store, name: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match within(store.load(name)).await {
            Ok(loaded) => return loaded.next_seq,
            Err(error) => assert!(tokio::time::Instant::now() < deadline, "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Operations fail while Redis is down and succeed again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_reconnected() {
    let mut redis = Redis::start().await;
    let (store, _, seq) = open_holding_bob(&redis).await;
    assert!(commit(&store, append("bob", seq, record("before"))).await);

    redis.stop().await;
    assert!(!commit(&store, append("bob", seq + 1, record("down"))).await);
    let outcome = route(&store, request("carol", record("down"), None)).await;
    assert!(matches!(outcome, RouteOutcome::Failed(_)), "{outcome:?}");
    assert!(within(store.load("bob")).await.is_err());
    assert!(within(store.replay("bob", 0, u64::MAX, false)).await.unwrap().is_err());

    // Nothing was persisted: the claim and the counter start over.
    redis.spawn().await;
    set_claim(&redis, "bob", "n1").await;
    let seq = load_once_back(&store, "bob").await;
    let after = record("after");
    assert!(commit(&store, append("bob", seq, after.clone())).await);
    assert_eq!(replay(&store, "bob").await, [Entry { seq, record: after }]);
}

/// An inbox entry the store cannot read (here: a record kind this build does
/// not know) fails the replay rather than being skipped: skipped, its seq
/// would be covered by the client's next ack, a message lost without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_over_an_unreadable_entry_fails_instead_of_skipping_it() {
    let redis = Redis::start().await;
    let (store, _, seq) = open_holding_bob(&redis).await;
    assert!(commit(&store, append("bob", seq, record("good"))).await);
    let mut conn = plain(&redis).await;
    redis::cmd("XADD")
        .arg("sb:inbox:bob")
        .arg(format!("{}-0", seq + 1))
        .arg(&["k", "99", "ts", "1", "t", "from a newer build"])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let replayed = within(store.replay("bob", 0, u64::MAX, false)).await.unwrap();
    let error = replayed.expect_err("the unreadable entry was skipped");
    assert!(error.contains(&format!("entry {}-0 of bob's inbox", seq + 1)), "{error}");
    // Up to the entry before it, the replay reads as before.
    let before = within(store.replay("bob", 0, seq, false)).await.unwrap().unwrap();
    assert_eq!(
        before.iter().map(|e| (e.seq, &*e.record.text)).collect::<Vec<_>>(),
        [(seq, "good")]
    );
}
