//! Store tests against real database files in temporary directories.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::*;

#[derive(Default)]
struct Recorder {
    removed: Mutex<HashMap<String, (u64, u64)>>,
    receipts: Mutex<Vec<Receipt>>,
}

impl StoreListener for Recorder {
    fn removed(&self, name: &str, entries: u64, bytes: u64) {
        let mut removed = self.removed.lock().unwrap();
        let slot = removed.entry(name.to_owned()).or_default();
        slot.0 += entries;
        slot.1 += bytes;
    }
    fn receipts(&self, receipts: Vec<Receipt>) {
        self.receipts.lock().unwrap().extend(receipts);
    }
}

impl Recorder {
    fn removed(&self, name: &str) -> (u64, u64) {
        self.removed.lock().unwrap().get(name).copied().unwrap_or_default()
    }
    fn receipts(&self) -> Vec<Receipt> {
        self.receipts.lock().unwrap().clone()
    }
}

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.join("data"),
        sync: SyncPolicy::Off,
        max_batch: 1024,
        queue_limit_bytes: 1 << 20,
        max_age: Duration::from_secs(3600),
        dedup_window: Duration::from_secs(600),
        room_history: 3,
    }
}

fn open(config: StoreConfig) -> (Store, Snapshot, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let (store, snapshot) = Store::open(config, recorder.clone()).unwrap();
    (store, snapshot, recorder)
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

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

/// An append for bob while he is online (the carry holds it).
fn live_to_bob(seq: u64) -> Op {
    Op::Append {
        name: "bob".into(),
        seq,
        record: record("live").into(),
        client_id: None,
        receipt: false,
        live: true,
    }
}

fn ack(name: &str, upto: u64) -> Op {
    Op::Ack { name: name.into(), upto }
}

/// Stats after everything queued before (the thread has also reported to
/// the listener by then).
fn stats(store: &Store, name: &str) -> InboxStats {
    store.inbox_stats(name).blocking_recv().unwrap()
}

fn replay(store: &Store, name: &str, after: u64, upto: u64) -> Vec<Entry> {
    store.replay(name, after, upto, false).blocking_recv().unwrap().unwrap()
}

/// The seqs of every entry stored for `name`.
fn stored_seqs(store: &Store, name: &str) -> Vec<u64> {
    replay(store, name, 0, u64::MAX).iter().map(|e| e.seq).collect()
}

/// Parks the store thread inside a completion until the returned sender is
/// dropped, so that what is submitted meanwhile lands in one batch.
fn hold(store: &Store) -> std_mpsc::Sender<()> {
    let (release, wait) = std_mpsc::channel::<()>();
    let (entered, parked) = std_mpsc::channel::<()>();
    let then: Completion = Box::new(move |_| {
        let _ = entered.send(());
        let _ = wait.recv();
    });
    store.submit_then(Op::Touch { name: "hold".into() }, Some(then)).unwrap();
    parked.recv().unwrap();
    release
}

#[test]
fn append_then_replay_in_order_with_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = open(config(dir.path()));
    let mut binary = record("");
    binary.kind = RecordKind::Binary;
    binary.payload = Some(Bytes::from_static(b"\x00\x01\xff"));
    store.submit(append("bob", 2, binary.clone())).unwrap();
    store.submit(append("bob", 1, record("one"))).unwrap();
    store.submit(append("bob", 3, record("three"))).unwrap();
    store.submit(append("carol", 1, record("other"))).unwrap();

    let entries = replay(&store, "bob", 0, 10);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(entries[0].record, record("one").with_ts(entries[0].record.ts));
    assert_eq!(entries[1].record, binary);
    assert_eq!(replay(&store, "bob", 1, 2).len(), 1);
    assert!(replay(&store, "bob", 3, 3).is_empty());

    let s = stats(&store, "bob");
    assert_eq!(s.depth, 3);
    assert_eq!(s.first_seq, Some(1));
    assert_eq!(s.bytes as usize, record("one").size() + binary.size() + record("three").size());
    assert_eq!(stats(&store, "nobody"), InboxStats::default());
    store.close();
}

impl Record {
    fn with_ts(mut self, ts: u64) -> Self {
        self.ts = ts;
        self
    }
}

#[test]
fn ack_deletes_and_reports_removed_and_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, rec) = open(config(dir.path()));
    for seq in 1..=3 {
        store
            .submit(Op::Append {
                name: "bob".into(),
                seq,
                record: record("hi").into(),
                client_id: Some(format!("m{seq}")),
                receipt: seq != 2,
                live: false,
            })
            .unwrap();
    }
    assert_eq!(stats(&store, "bob").depth, 3); // committed in an earlier batch
    let (done, committed) = std_mpsc::channel();
    store.submit_then(ack("bob", 2), Some(Box::new(move |ok| done.send(ok).unwrap()))).unwrap();
    assert!(committed.recv().unwrap());
    assert_eq!(stats(&store, "bob").first_seq, Some(3));
    assert_eq!(rec.removed("bob"), (2, 2 * record("hi").size() as u64));
    let to_bob =
        |id: &str| Receipt { sender: "alice".into(), id: id.to_owned(), to: "bob".to_owned() };
    assert_eq!(rec.receipts(), [to_bob("m1")]);

    // replay with ack_through_after acks like an Ack
    let rest = store.replay("bob", 3, 5, true).blocking_recv().unwrap().unwrap();
    assert!(rest.is_empty());
    assert_eq!(stats(&store, "bob").depth, 0);
    assert_eq!(rec.receipts(), [to_bob("m1"), to_bob("m3")]);
    assert_eq!(rec.removed("bob").0, 3);
    store.close();
}

/// Creates the database in `cfg`'s directory with an audit trigger that
/// records every row ever inserted into the inbox; returns a connection to read it.
fn audited(cfg: &StoreConfig) -> rusqlite::Connection {
    let (store, _, _) = open(cfg.clone());
    store.close();
    let db = raw_db(cfg);
    db.execute_batch(
        "CREATE TABLE audit (name TEXT, seq INTEGER);
         CREATE TRIGGER audit_inbox AFTER INSERT ON inbox
         BEGIN INSERT INTO audit VALUES (new.name, new.seq); END;",
    )
    .unwrap();
    db
}

/// Every (name, seq) ever inserted into the inbox, sorted.
fn inserted(db: &rusqlite::Connection) -> Vec<(String, i64)> {
    db.prepare("SELECT name, seq FROM audit ORDER BY name, seq")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn append_and_ack_in_one_batch_never_touch_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = audited(&cfg);

    let (store, _, rec) = open(cfg.clone());
    let held = hold(&store);
    for seq in 1..=4 {
        store
            .submit(Op::Append {
                name: "bob".into(),
                seq,
                record: record("live").into(),
                client_id: Some(format!("m{seq}")),
                receipt: true,
                live: false,
            })
            .unwrap();
    }
    store.submit(ack("bob", 3)).unwrap();
    store.submit(append("bob", 5, record("after the ack"))).unwrap();
    store.submit(append("carol", 1, record("purged"))).unwrap();
    store.submit(Op::Purge { name: "carol".into() }).unwrap();
    drop(held);

    assert_eq!(replay(&store, "bob", 0, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(stats(&store, "carol").depth, 0);
    assert_eq!(rec.removed("bob"), (3, 3 * record("live").size() as u64));
    assert_eq!(rec.removed("carol"), (1, record("purged").size() as u64));
    assert_eq!(
        rec.receipts().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    store.close();

    assert_eq!(inserted(&db), [("bob".to_owned(), 4), ("bob".to_owned(), 5)]);
}

#[test]
fn reopen_loads_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.sync = SyncPolicy::Full;
    let (store, snapshot, _) = open(cfg.clone());
    assert!(
        snapshot.names.is_empty() && snapshot.rooms.is_empty() && snapshot.recent_ids.is_empty()
    );
    for seq in 1..=3 {
        store.submit(append("bob", seq, record("x"))).unwrap();
    }
    store.submit(Op::Lease { name: "bob".into(), upto: 10 }).unwrap();
    store.submit(Op::Lease { name: "bob".into(), upto: 7 }).unwrap(); // never lowers
    store.submit(append("carol", 5, record("yy"))).unwrap();
    store.submit(Op::Lease { name: "carol".into(), upto: 2 }).unwrap();
    store.submit(Op::Touch { name: "dave".into() }).unwrap();
    store.submit(Op::Sent { sender: "alice".into(), id: "m1".to_owned() }).unwrap();
    for rseq in 1..=5 {
        let text = format!("r{rseq}");
        let record =
            RoomRecord { rseq, ts: now_ms(), from: (rseq != 2).then(|| "alice".to_owned()), text };
        store.submit(Op::RoomAppend { room: "lobby".to_owned(), record }).unwrap();
    }
    store.close();
    store.close(); // idempotent
    assert!(matches!(store.submit(Op::Touch { name: "x".into() }), Err(StoreError::Closed)));
    assert!(store.replay("bob", 0, 1, false).blocking_recv().unwrap().is_err());
    assert!(store.inbox_stats("bob").blocking_recv().is_err());

    // A dedup id past the window is not loaded.
    let db = raw_db(&cfg);
    db.execute("INSERT INTO sent_ids VALUES (1, '[[\"alice\",\"old\"]]')", []).unwrap();
    drop(db);

    let (store, snapshot, _) = open(cfg.clone());
    let x = record("x").size() as u64;
    let name = |name: &str, next_seq, depth, bytes| NameState {
        name: name.into(),
        next_seq,
        depth,
        bytes,
    };
    assert_eq!(
        snapshot.names,
        [
            name("bob", 11, 3, 3 * x),
            name("carol", 6, 1, record("yy").size() as u64),
            name("dave", 1, 0, 0),
        ]
    );
    assert_eq!(snapshot.rooms.len(), 1);
    let (room, history) = &snapshot.rooms[0];
    assert_eq!(room, "lobby");
    assert_eq!(history.iter().map(|r| r.rseq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(history[0].text, "r3");
    assert_eq!(snapshot.recent_ids, [("alice".to_owned(), "m1".to_owned())]);
    store.close();

    // No room history configured: none returned.
    cfg.room_history = 0;
    let (store, snapshot, _) = open(cfg);
    assert!(snapshot.rooms.is_empty());
    store.close();
}

/// Opens the database file of `cfg` directly, as another program would,
/// creating the data directory first.
fn raw_db(cfg: &StoreConfig) -> rusqlite::Connection {
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    rusqlite::Connection::open(cfg.data_dir.join(DB_FILE)).unwrap()
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = raw_db(&cfg);
    db.pragma_update(None, "user_version", 99).unwrap();
    drop(db);
    match Store::open(cfg, Arc::new(Recorder::default())) {
        Err(StoreError::Database(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a database error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn unusable_data_dir_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let mut cfg = config(dir.path());
    cfg.data_dir = file.join("data");
    assert!(matches!(Store::open(cfg, Arc::new(Recorder::default())), Err(StoreError::Io { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_and_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.queue_limit_bytes = 2000;
    let (store, _, _) = open(cfg);
    let big = record(&"x".repeat(3000));
    assert!(matches!(store.submit(append("bob", 1, big)), Err(StoreError::Overloaded)));

    let held = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || hold(&store)).await.unwrap()
    };
    let mut accepted = 0;
    let refused = loop {
        match store.submit(append("bob", accepted + 1, record(&"y".repeat(100)))) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(refused, StoreError::Overloaded));
    assert!(accepted >= 5);
    // Work the hub already accepted (a held delivery) is taken even now.
    let held_delivery = || append("bob", accepted + 1, record(&"y".repeat(100)));
    assert!(matches!(store.submit(held_delivery()), Err(StoreError::Overloaded)));
    store.hand_over(held_delivery()).unwrap();
    accepted += 1;
    assert!(store.congested());
    let waiter = tokio::spawn({
        let store = store.clone();
        async move { store.uncongested().await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert!(!store.congested());
    assert_eq!(store.inbox_stats("bob").await.unwrap().depth, accepted);
    tokio::task::spawn_blocking(move || store.close()).await.unwrap();
}

#[test]
fn sweep_removes_expired_entries_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (store, _, rec) = open(cfg.clone());
    let old = record("old").with_ts(now_ms() - 2 * 3600 * 1000);
    store.submit(append("bob", 1, old.clone())).unwrap();
    store.submit(append("bob", 2, old.clone())).unwrap();
    store.submit(append("bob", 3, record("fresh"))).unwrap();
    store.submit(Op::Sent { sender: "alice".into(), id: "m1".to_owned() }).unwrap();
    store.sweep_now();
    assert_eq!(stats(&store, "bob").first_seq, Some(3));
    assert_eq!(rec.removed("bob"), (2, 2 * old.size() as u64));
    store.close();

    let db = raw_db(&cfg);
    let sent = |db: &rusqlite::Connection| -> i64 {
        db.query_row("SELECT COUNT(*) FROM sent_ids", [], |r| r.get(0)).unwrap()
    };
    assert_eq!(sent(&db), 1); // within the window
    db.execute("UPDATE sent_ids SET ts = 1", []).unwrap();
    // An id sent later, still in the window, is kept: the sweep deletes the
    // expired prefix of the log only.
    db.execute("INSERT INTO sent_ids VALUES (?1, '[[\"alice\",\"fresh\"]]')", [now_ms() as i64])
        .unwrap();
    // Expired at open: neither loaded nor kept.
    db.execute("UPDATE inbox SET ts = 1", []).unwrap();
    let (store, snapshot, _) = open(cfg);
    assert_eq!(snapshot.recent_ids, [("alice".to_owned(), "fresh".to_owned())]);
    assert!(snapshot.names.is_empty()); // bob was only known by its entries
    assert_eq!(sent(&db), 1);
    store.close();
}

#[test]
fn dropping_every_handle_stops_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _, _) = open(config(dir.path()));
    let handle = store.inner.thread.lock().unwrap().take().unwrap();
    store.submit(append("bob", 1, record("kept"))).unwrap();
    drop(store);
    handle.join().unwrap();
    let (store, snapshot, _) = open(config(dir.path()));
    assert_eq!(snapshot.names[0].depth, 1);
    store.close();
}

#[test]
fn live_appends_are_carried_until_acked_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = audited(&cfg);

    let (store, _, rec) = open(cfg.clone());
    // Separate batches: the live appends are carried, the offline one is written.
    store.submit(live_to_bob(1)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store.submit(live_to_bob(2)).unwrap();
    store.submit(append("carol", 1, record("offline"))).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    store.submit(ack("bob", 2)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rec.removed("bob"), (2, 2 * record("live").size() as u64));
    // A read writes what is carried: bob has nothing left, carol her entry.
    assert!(replay(&store, "bob", 0, 10).is_empty());
    assert_eq!(replay(&store, "carol", 0, 10).len(), 1);
    store.submit(live_to_bob(3)).unwrap();
    store.close(); // closing writes the carried append
    assert_eq!(inserted(&db), [("bob".to_owned(), 3), ("carol".to_owned(), 1)]);
}

#[test]
fn a_carried_append_is_written_once_it_comes_of_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = audited(&cfg);

    let (store, _, _) = open(cfg.clone());
    // The ack empties the carry; the next append starts its age afresh and
    // nothing but its age writes it (no read, no close, no offline append).
    store.submit(live_to_bob(1)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store.submit(ack("bob", 1)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    store.submit(live_to_bob(2)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while inserted(&db).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(inserted(&db), [("bob".to_owned(), 2)]);
    store.close();
}

#[cfg(unix)]
#[test]
fn a_data_dir_the_store_creates_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("nested").join("data"));
    let (store, _, _) = open(cfg.clone());
    store.close();
    let mode = std::fs::metadata(&cfg.data_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
}

/// The writer thread of an idle store calls the idle hook, so that the
/// binary can hand the thread's freed memory back (`crate::idle`). The
/// hook is process-wide: this is the only test that sets it.
#[test]
fn an_idle_writer_thread_calls_the_idle_hook() {
    use std::sync::atomic::{AtomicU32, Ordering};
    static STORE_THREAD_CALLS: AtomicU32 = AtomicU32::new(0);
    fn hook() {
        if std::thread::current().name().is_some_and(|name| name == "switchboard-store") {
            STORE_THREAD_CALLS.fetch_add(1, Ordering::Relaxed);
        }
    }
    assert!(crate::idle::set_thread_idle_hook(hook), "another test set the idle hook");
    let dir = tempfile::tempdir().unwrap();
    let (store, _snapshot, _recorder) = open(config(dir.path()));
    let deadline = std::time::Instant::now() + crate::idle::IDLE_AFTER * 5;
    while STORE_THREAD_CALLS.load(Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "the idle store never called the hook");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(store);
}

/// A waiting sender hears back only once its message is on disk (or was
/// acknowledged first): its completion waits for the commit after its own
/// batch, which writes a live append no ack cancelled.
#[test]
fn a_completion_runs_once_its_live_append_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let db = config.data_dir.join("switchboard.db");
    let (store, _, _) = open(config);
    let (tx, rx) = std_mpsc::channel();
    store.submit(live_to_bob(1)).unwrap();
    let then: Completion = Box::new(move |ok| {
        let reader = rusqlite::Connection::open(&db).unwrap();
        let rows: i64 =
            reader.query_row("SELECT COUNT(*) FROM inbox", [], |row| row.get(0)).unwrap();
        tx.send((ok, rows)).unwrap();
    });
    store.submit_then(Op::Barrier, Some(then)).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (true, 1));
    store.close();
}

/// A data directory written by the first schema (dedup ids keyed by sender
/// and id) opens with its ids, now in the append-only `sent` log.
/// The dedup ids of a database, in log order.
fn logged_ids(cfg: &StoreConfig) -> (i64, Vec<Vec<(String, String)>>) {
    let db = raw_db(cfg);
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let rows = db
        .prepare("SELECT ids FROM sent_ids ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|json| serde_json::from_str(&json.unwrap()).unwrap())
        .collect();
    (version, rows)
}

fn pair(sender: &str, id: &str) -> (String, String) {
    (sender.to_owned(), id.to_owned())
}

#[test]
fn older_databases_are_migrated_with_their_dedup_ids() {
    let version_1 = "CREATE TABLE sent (sender TEXT NOT NULL, client_id TEXT NOT NULL,
             ts INTEGER NOT NULL, PRIMARY KEY (sender, client_id)) WITHOUT ROWID;
         CREATE INDEX sent_ts ON sent (ts);
         PRAGMA user_version = 1;";
    let version_2 = "CREATE TABLE sent (sender TEXT NOT NULL, client_id TEXT NOT NULL,
             ts INTEGER NOT NULL);
         PRAGMA user_version = 2;";
    for schema in [version_1, version_2] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let db = raw_db(&cfg);
        db.execute_batch(schema).unwrap();
        let now = now_ms() as i64;
        db.execute(
            "INSERT INTO sent VALUES ('alice', 'b', ?1), ('alice', 'a', ?2), ('bob', 'c', ?2)",
            [now, now - 5],
        )
        .unwrap();
        drop(db);

        let (store, snapshot, _) = open(cfg.clone());
        let mut ids = snapshot.recent_ids.clone();
        ids.sort();
        assert_eq!(ids, [pair("alice", "a"), pair("alice", "b"), pair("bob", "c")]);
        store.submit(Op::Sent { sender: "carol".into(), id: "d".to_owned() }).unwrap();
        store.close();

        // One row per timestamp, in time order, then the new commit's.
        let (version, mut rows) = logged_ids(&cfg);
        rows[0].sort();
        assert_eq!(
            (version, rows),
            (
                3,
                vec![
                    vec![pair("alice", "a"), pair("bob", "c")],
                    vec![pair("alice", "b")],
                    vec![pair("carol", "d")]
                ]
            )
        );
    }
}

#[test]
fn a_group_commit_writes_its_dedup_ids_in_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (store, _, _) = open(cfg.clone());
    for n in 0..100 {
        let mut op = append("bob", n + 1, record("hi"));
        if let Op::Append { client_id, .. } = &mut op {
            *client_id = Some(format!("m{n}"));
        }
        store.submit(op).unwrap();
        // The hub's `Sent` for the same id: listed once when it comes in
        // the append's batch (as it does here, but for a batch boundary).
        store.submit(Op::Sent { sender: "alice".into(), id: format!("m{n}") }).unwrap();
    }
    store.submit(Op::Sent { sender: "carol".into(), id: "x".to_owned() }).unwrap();
    store.close();

    let (_, rows) = logged_ids(&cfg);
    // Queued in well under a batch's nap: a few commits, not one per id.
    assert!(rows.len() < 10, "{} rows", rows.len());
    let mut logged: Vec<_> = rows.concat();
    logged.dedup();
    let mut expected: Vec<_> = (0..100).map(|n| pair("alice", &format!("m{n}"))).collect();
    expected.push(pair("carol", "x"));
    assert_eq!(logged, expected);
    let (store, snapshot, _) = open(cfg);
    assert_eq!(snapshot.recent_ids.len(), rows.iter().map(Vec::len).sum::<usize>());
    store.close();
}

/// Submits `op` with a completion and waits for its outcome.
fn committed(store: &Store, op: Op) -> bool {
    let (tx, rx) = std_mpsc::channel();
    let then: Completion = Box::new(move |ok| tx.send(ok).unwrap());
    store.submit_then(op, Some(then)).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

/// A store, and a second connection to its database to break it with.
struct Breakable {
    store: Store,
    recorder: Arc<Recorder>,
    db: rusqlite::Connection,
    cfg: StoreConfig,
    _dir: tempfile::TempDir,
}

fn breakable() -> Breakable {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (store, _, recorder) = open(cfg.clone());
    let db = raw_db(&cfg);
    Breakable { store, recorder, db, cfg, _dir: dir }
}

impl Breakable {
    /// Makes every `event` (`INSERT`, `DELETE`) on `table` fail inside its
    /// transaction, as a full disk or an I/O error would, until
    /// [`Breakable::allow`].
    fn refuse(&self, event: &str, table: &str) {
        self.db
            .execute_batch(&format!(
                "CREATE TRIGGER refuse_{event}_{table} BEFORE {event} ON {table}
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;"
            ))
            .unwrap();
    }

    fn allow(&self, event: &str, table: &str) {
        self.db.execute_batch(&format!("DROP TRIGGER refuse_{event}_{table}")).unwrap();
    }

    /// Every insert into `table` fails, until [`Breakable::disk_freed`].
    fn disk_full(&self, table: &str) {
        self.refuse("INSERT", table);
    }

    fn disk_freed(&self, table: &str) {
        self.allow("INSERT", table);
    }
}

/// A commit the database refuses loses what it was writing for good: its
/// appends are reported removed (the hub's counts go back) and a later
/// commit does not write them (their senders heard `unavailable` and
/// retry: a late first copy would be a second delivery).
#[test]
fn a_failed_commit_reports_its_appends_removed_and_never_writes_them_later() {
    let broken = breakable();
    let (store, recorder) = (&broken.store, &broken.recorder);
    // Carried (bob is online), then written with an offline append that fails.
    store.submit(live_to_bob(1)).unwrap();
    broken.disk_full("inbox");
    assert!(!committed(store, append("bob", 2, record("refused"))));
    let lost = (record("live").size() + record("refused").size()) as u64;
    assert_eq!(recorder.removed("bob"), (2, lost));

    broken.disk_freed("inbox");
    assert!(committed(store, append("bob", 3, record("stored"))));
    assert_eq!(stored_seqs(store, "bob"), [3]);
    assert_eq!(stats(store, "bob").depth, 1);
    store.close();
}

/// A failed commit that only wrote the last batch's appends is reported to
/// that batch's completions, and to them only: the next sender, whose own
/// message is committed, is not told it failed (it would retry, and its
/// message would be stored twice).
#[test]
fn a_failure_told_to_the_waiting_senders_is_not_told_to_the_next_one() {
    let broken = breakable();
    let (store, recorder) = (&broken.store, &broken.recorder);
    let (tx, rx) = std_mpsc::channel();
    let release = hold(store);
    // One batch: a live append (carried past its own commit) and a sender
    // waiting for it, answered after the next commit writes it.
    store.submit(live_to_bob(1)).unwrap();
    let then: Completion = Box::new(move |ok| tx.send(ok).unwrap());
    store.submit_then(Op::Barrier, Some(then)).unwrap();
    broken.disk_full("inbox");
    drop(release);
    assert!(!rx.recv_timeout(Duration::from_secs(5)).unwrap(), "the append was not written");
    assert_eq!(recorder.removed("bob"), (1, record("live").size() as u64));

    broken.disk_freed("inbox");
    assert!(committed(store, append("bob", 2, record("stored"))));
    assert_eq!(stored_seqs(store, "bob"), [2]);
    store.close();
}

/// A failed commit that loses no message (it wrote only carried `Touch`es,
/// last-seen times) fails no sender, before or after it.
#[test]
fn a_failed_commit_of_last_seen_times_alone_fails_no_sender() {
    let broken = breakable();
    let store = &broken.store;
    broken.disk_full("names");
    store.submit(Op::Touch { name: "carol".into() }).unwrap();
    // The read writes everything carried first: the `Touch` fails.
    assert_eq!(stats(store, "bob").depth, 0);
    broken.disk_freed("names");
    assert!(committed(store, append("bob", 1, record("stored"))));
    store.close();
}

/// An ack that cancels a carried append does so in memory, whatever becomes
/// of the transaction it came in: the receipt its sender asked for goes out
/// even when that transaction fails.
#[test]
fn an_ack_in_a_failed_commit_still_sends_the_receipts_of_what_it_cancelled() {
    let broken = breakable();
    let (store, recorder) = (&broken.store, &broken.recorder);
    let asked = Op::Append {
        name: "bob".into(),
        seq: 1,
        record: record("with receipt").into(),
        client_id: Some("r1".into()),
        receipt: true,
        live: true,
    };
    let release = hold(store);
    // One batch: the live append, the ack that cancels it in memory, and an
    // offline append whose insert fails.
    store.submit(asked).unwrap();
    store.submit(ack("bob", 1)).unwrap();
    let (tx, rx) = std_mpsc::channel();
    let then: Completion = Box::new(move |ok| tx.send(ok).unwrap());
    store.submit_then(append("bob", 2, record("refused")), Some(then)).unwrap();
    broken.disk_full("inbox");
    drop(release);
    assert!(!rx.recv_timeout(Duration::from_secs(5)).unwrap());
    let receipt = Receipt { sender: "alice".into(), id: "r1".into(), to: "bob".into() };
    assert_eq!(recorder.receipts(), [receipt]);
    let both = (record("with receipt").size() + record("refused").size()) as u64;
    assert_eq!(recorder.removed("bob"), (2, both));
    store.close();
}

/// A seq lease a failed commit did not write is written by the next one:
/// the hub has handed out seqs under it, and a restart must number above.
#[test]
fn a_lease_a_failed_commit_did_not_write_is_written_by_the_next_one() {
    let broken = breakable();
    let store = &broken.store;
    broken.disk_full("names");
    assert!(!committed(store, Op::Lease { name: "bob".into(), upto: 100 }));
    broken.disk_freed("names");
    assert!(committed(store, Op::Barrier));
    store.close();
    let (store, snapshot, _) = open(broken.cfg.clone());
    let bob = snapshot.names.iter().find(|n| &*n.name == "bob").expect("bob is known");
    assert_eq!(bob.next_seq, 101);
    store.close();
}

/// A failed ack loses nothing a sender waits for (its entries stay stored,
/// and the next ack deletes them): it fails no sender after it.
#[test]
fn a_failed_ack_fails_no_sender_and_the_next_ack_deletes_its_entries() {
    let broken = breakable();
    let (store, recorder) = (&broken.store, &broken.recorder);
    assert!(committed(store, append("bob", 1, record("first"))));
    broken.refuse("DELETE", "inbox");
    store.submit(ack("bob", 1)).unwrap();
    // The read commits the ack first: its delete fails.
    assert_eq!(stats(store, "bob").depth, 1);
    broken.allow("DELETE", "inbox");
    assert!(committed(store, append("bob", 2, record("second"))));
    assert_eq!(stored_seqs(store, "bob"), [1, 2]);
    store.submit(ack("bob", 2)).unwrap();
    assert_eq!(stats(store, "bob").depth, 0);
    let both = (record("first").size() + record("second").size()) as u64;
    assert_eq!(recorder.removed("bob"), (2, both));
    store.close();
}
