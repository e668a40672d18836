//! Routing semantics, without sockets.

use super::durable::KeptRecord;
use super::*;
use std::net::{Ipv4Addr, SocketAddr};
use switchboard_protocol::classic;

fn addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 1))
}

fn join(hub: &Hub, name: &str) -> (Registration, OutboxReceiver) {
    let name = hub.client_name(name).unwrap_or_else(|e| panic!("{e}"));
    hub.register(name, addr(), Protocol::V1).unwrap_or_else(|e| panic!("{e}"))
}

fn next_body(rx: &mut OutboxReceiver) -> Option<String> {
    match rx.try_recv()? {
        Outgoing::Deliver { message, seq, .. } => message.v1_text(seq),
        Outgoing::Replay(_) => Some("<replay>".into()),
        Outgoing::Text(text) => Some(text),
        Outgoing::Binary(_) => Some("<binary>".into()),
        Outgoing::Ping => Some("<ping>".into()),
    }
}

#[test]
fn names_are_unique_and_freed_on_leave() {
    let hub = Hub::new(HubLimits::default());
    let (alice, _rx) = join(&hub, "alice");
    let name = hub.client_name("alice").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        hub.register(name.clone(), addr(), Protocol::Classic).map(|_| ()).unwrap_err(),
        RegisterError::NameTaken("alice".into())
    );
    drop(alice);
    assert!(hub.register(name, addr(), Protocol::Classic).is_ok());
}

#[test]
fn close_all_closes_every_client_and_refuses_new_ones() {
    let hub = Hub::new(HubLimits::default());
    let (alice, _a) = join(&hub, "alice");
    hub.close_all(CloseReason::Shutdown);
    assert!(matches!(alice.client().outbox().closer().reason(), Some(CloseReason::Shutdown)));
    let bob = hub.client_name("bob").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        hub.register(bob, addr(), Protocol::V1).map(|_| ()).unwrap_err(),
        RegisterError::ShuttingDown
    );
    // A name still online is reported as taken, as before.
    let alice_again = hub.client_name("alice").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        hub.register(alice_again, addr(), Protocol::V1).map(|_| ()),
        Err(RegisterError::NameTaken(_))
    ));
}

#[test]
fn direct_messages_carry_the_real_sender_in_order() {
    let hub = Hub::new(HubLimits::default());
    let (alice, _a) = join(&hub, "alice");
    let (_bob, mut b) = join(&hub, "bob");
    for i in 0..100 {
        hub.send_direct(alice.client(), "bob", format!("m{i}"), SendMeta::default())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for i in 0..100 {
        let frame = next_body(&mut b).unwrap_or_default();
        assert!(frame.contains(r#""from":"alice""#), "{frame}");
        assert!(frame.contains(&format!(r#""text":"m{i}""#)), "{frame}");
    }
    assert_eq!(
        hub.send_direct(alice.client(), "carol", "x".into(), SendMeta::default()),
        Err(RouteError::Offline("carol".into()))
    );
}

#[test]
fn rooms_are_created_on_join_and_vanish_when_empty() {
    let hub = Hub::new(HubLimits::default());
    let (alice, mut a) = join(&hub, "alice");
    let (mut bob, mut b) = join(&hub, "bob");
    hub.join(alice.client(), "lobby", None).unwrap_or_else(|e| panic!("{e}"));
    let members = hub.join(bob.client(), "lobby", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(members.len(), 2);
    assert_eq!(
        hub.publish(alice.client(), "lobby", "hi".into(), false, SendMeta::default()),
        Ok(1)
    );
    assert!(next_body(&mut b).is_some_and(|f| f.contains(r#""room":"lobby""#)));
    assert!(next_body(&mut a).is_none(), "no echo unless asked");
    assert_eq!(hub.publish(alice.client(), "lobby", "hi".into(), true, SendMeta::default()), Ok(2));
    bob.leave(&CloseReason::Dropped("test".into()));
    hub.leave(alice.client(), "lobby").unwrap_or_else(|e| panic!("{e}"));
    assert!(hub.rooms().is_empty());
    assert_eq!(
        hub.publish(alice.client(), "lobby", "x".into(), false, SendMeta::default()),
        Err(RouteError::NotMember("lobby".into()))
    );
}

/// Past the prefetch distance (`prefetch.rs`), each member still gets a
/// room publish once, in the order published, and the sender none.
#[test]
fn a_publish_reaches_each_other_member_of_a_large_room_once() {
    let hub = Hub::new(HubLimits::default());
    let mut members: Vec<_> = (0..20).map(|i| join(&hub, &format!("m{i}"))).collect();
    for (registration, _) in &members {
        hub.join(registration.client(), "big", None).unwrap_or_else(|e| panic!("{e}"));
    }
    let sender = members[7].0.client().clone();
    for text in ["one", "two"] {
        let published = hub.publish(&sender, "big", text.into(), false, SendMeta::default());
        assert_eq!(published, Ok(19));
    }
    for (i, (_, rx)) in members.iter_mut().enumerate() {
        let bodies: Vec<String> = std::iter::from_fn(|| next_body(rx))
            .filter(|body| body.contains(r#""type":"room""#))
            .collect();
        match i {
            7 => assert!(bodies.is_empty(), "the sender got {bodies:?}"),
            _ => {
                assert_eq!(bodies.len(), 2, "member {i} got {bodies:?}");
                assert!(bodies[0].contains("one") && bodies[1].contains("two"), "{bodies:?}");
            }
        }
    }
}

#[test]
fn presence_is_opt_in() {
    let hub = Hub::new(HubLimits::default());
    let (alice, mut a) = join(&hub, "alice");
    let (_bob, mut b) = join(&hub, "bob");
    assert!(next_body(&mut a).is_none());
    hub.watch(alice.client(), None).unwrap_or_else(|e| panic!("{e}"));
    let (carol, _c) = join(&hub, "carol");
    assert!(
        next_body(&mut a).is_some_and(|f| f.contains(r#""event":"join""#) && f.contains("carol"))
    );
    drop(carol);
    assert!(next_body(&mut a).is_some_and(|f| f.contains(r#""event":"leave""#)));
    assert!(next_body(&mut b).is_none(), "bob did not subscribe");
}

#[test]
fn room_limits_are_enforced() {
    let limits =
        HubLimits { max_rooms_per_client: 1, max_members_per_room: 1, ..HubLimits::default() };
    let hub = Hub::new(limits);
    let (alice, _a) = join(&hub, "alice");
    let (bob, _b) = join(&hub, "bob");
    hub.join(alice.client(), "one", None).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(hub.join(alice.client(), "two", None), Err(RouteError::LimitReached(_))));
    assert!(matches!(hub.join(bob.client(), "one", None), Err(RouteError::LimitReached(_))));
    assert!(matches!(
        hub.join(bob.client(), "bad\nroom", None),
        Err(RouteError::InvalidName { .. })
    ));
}

#[test]
fn a_broadcast_is_encoded_once_for_all_recipients() {
    let hub = Hub::new(HubLimits::default());
    let mut receivers: Vec<_> = (0..10).map(|i| join(&hub, &format!("c{i}"))).collect();
    assert_eq!(hub.broadcast("hello".into()), 10);
    let mut first: Option<Arc<Message>> = None;
    for (_, rx) in &mut receivers {
        let Some(Outgoing::Deliver { message, .. }) = rx.try_recv() else { panic!("no delivery") };
        if let Some(first) = &first {
            assert!(Arc::ptr_eq(first, &message), "recipients share one message");
        }
        assert_eq!(message.classic_text(), Some("hello"));
        first = Some(message);
    }
}

/// A durable hub on a fresh SQLite store in `dir`.
fn durable_hub(dir: &std::path::Path) -> (Hub, Store) {
    let hub = Hub::new(HubLimits::default());
    let config = crate::store::StoreConfig {
        data_dir: dir.join("data"),
        sync: crate::store::SyncPolicy::Off,
        max_batch: 1024,
        queue_limit_bytes: 1 << 20,
        max_age: std::time::Duration::from_secs(3600),
        dedup_window: std::time::Duration::from_secs(600),
        room_history: 3,
    };
    let (store, snapshot) =
        Store::open(config, hub.store_listener()).unwrap_or_else(|e| panic!("{e}"));
    assert!(hub.attach_store(store.clone(), snapshot));
    (hub, store)
}

/// The seqs and texts of `name`'s entries in the store, after everything
/// submitted before (a read sees every earlier operation).
fn stored(store: &Store, name: &str) -> Vec<(u64, String)> {
    let entries = store.replay(name, 0, u64::MAX, false).blocking_recv();
    let entries = entries.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("{e}"));
    entries.into_iter().map(|entry| (entry.seq, entry.record.text.to_string())).collect()
}

/// The seqs of the deliveries queued for a client, in order.
fn delivered_seqs(rx: &mut OutboxReceiver) -> Vec<u64> {
    std::iter::from_fn(|| rx.try_recv())
        .filter_map(|item| match item {
            Outgoing::Deliver { seq, .. } => Some(seq),
            _ => None,
        })
        .collect()
}

#[test]
fn live_deliveries_are_held_until_acknowledged_swept_or_the_session_ends() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (hub, store) = durable_hub(dir.path());
    let (alice, _a) = join(&hub, "alice");
    let (bob, mut bob_rx) = join(&hub, "bob");
    let dm = |text: &str, meta: SendMeta| {
        hub.send_direct(alice.client(), "bob", text.into(), meta).unwrap_or_else(|e| panic!("{e}"))
    };
    let inbox = hub.inbox_of("bob").unwrap_or_else(|| panic!("bob has an inbox"));
    let depth = || inbox.lock().depth;

    // Live, nobody waits: held by the inbox, not in the store, yet counted.
    assert_eq!(dm("one", SendMeta::default()), Accepted::Live);
    assert_eq!(dm("two", SendMeta::default()), Accepted::Live);
    assert!(stored(&store, "bob").is_empty(), "held, not stored");
    assert_eq!(depth(), 2);
    assert!(hub.stored_bytes() > 0);
    let seqs = delivered_seqs(&mut bob_rx);
    assert_eq!(seqs.len(), 2);

    // Unacknowledged: the first sweep marks them, the second saves them.
    hub.save_unsaved(false);
    assert!(stored(&store, "bob").is_empty(), "not aged yet");
    hub.save_unsaved(false);
    assert_eq!(stored(&store, "bob"), vec![(seqs[0], "one".into()), (seqs[1], "two".into())]);

    // A held delivery goes to the store ahead of one that is stored at
    // once (its sender asked for a receipt).
    dm("three", SendMeta::default());
    dm("four", SendMeta { id: Some("x".into()), receipt: true, ..SendMeta::default() });
    let later = delivered_seqs(&mut bob_rx);
    assert_eq!(
        stored(&store, "bob").into_iter().map(|(_, text)| text).collect::<Vec<_>>(),
        ["one", "two", "three", "four"],
        "in seq order"
    );

    // Acknowledged: gone from the store, and nothing counted.
    hub.ack(bob.client(), later[1]);
    assert!(stored(&store, "bob").is_empty());
    assert_eq!((depth(), inbox.lock().bytes), (0, 0));

    // Held and acknowledged at once: the store never sees it.
    dm("five", SendMeta::default());
    let five = delivered_seqs(&mut bob_rx)[0];
    assert_eq!(depth(), 1);
    hub.ack(bob.client(), five);
    hub.save_unsaved(false);
    hub.save_unsaved(false);
    assert!(stored(&store, "bob").is_empty());
    assert_eq!(depth(), 0);

    // A send whose sender waits (an id, no receipt) is held too.
    dm("five-b", SendMeta { id: Some("y".into()), ..SendMeta::default() });
    let held = delivered_seqs(&mut bob_rx)[0];
    assert!(stored(&store, "bob").is_empty(), "held with its answer");
    hub.ack(bob.client(), held);
    assert_eq!(depth(), 0);

    // The operator's purge drops held ones too.
    dm("six", SendMeta::default());
    hub.purge("bob").unwrap_or_else(|e| panic!("{e}"));
    assert!(stored(&store, "bob").is_empty());
    assert_eq!(depth(), 0);

    // A session that ends hands what it held to the store for the next one.
    dm("seven", SendMeta::default());
    assert!(stored(&store, "bob").is_empty());
    drop(bob);
    assert_eq!(
        stored(&store, "bob").into_iter().map(|(_, text)| text).collect::<Vec<_>>(),
        ["seven"]
    );
    // Wait for the store's report of the earlier acks before the last count.
    let _ = stored(&store, "bob");
    // alice's inbox holds the receipt for "four".
    let alice_inbox = hub.inbox_of("alice").unwrap_or_else(|| panic!("alice has an inbox"));
    assert_eq!(hub.stored_bytes(), inbox.lock().bytes + alice_inbox.lock().bytes);
    store.close();
}

#[test]
fn a_kept_record_is_charged_what_the_record_built_later_weighs() {
    let name = |raw: &str| ClientName::parse(raw).unwrap_or_else(|e| panic!("{e}"));
    let room = RoomName::parse("lobby").unwrap_or_else(|e| panic!("{e}"));
    let bodies = [
        Body::Direct { from: name("alice"), to: name("bob"), text: "hello there".into() },
        Body::Server { text: "to one".into(), broadcast: false },
        Body::Server { text: "to all".into(), broadcast: true },
        Body::Binary { from: name("alice"), room: None, payload: Bytes::from_static(b"\x01\x02") },
        Body::Receipt { id: "m17".into(), to: name("bob") },
    ];
    for body in bodies {
        let message = Message::new(body);
        let kept = KeptRecord::new(&message, true);
        let size = kept.size.unwrap_or_else(|| panic!("{message:?} is kept"));
        assert_eq!(size, kept.record(&message).size() as u64, "{message:?}");
        assert_eq!(KeptRecord::new(&message, false).size, None, "ephemeral: nothing kept");
    }
    for body in [
        Body::Room { room: room.clone(), from: None, text: "hi".into(), rseq: Some(1) },
        Body::Binary { from: name("alice"), room: Some(room), payload: Bytes::new() },
    ] {
        assert_eq!(KeptRecord::new(&Message::new(body), true).size, None, "room traffic");
    }
}

/// A classic DM's text left in its frame (issue 6) reads as the text kept
/// apart would, in every shape: v1, stored, cluster, size.
#[test]
fn a_dm_text_in_its_classic_frame_reads_as_a_text_kept_apart() {
    let hub = Hub::new(HubLimits::default());
    let name = |n: &str| hub.client_name(n).unwrap_or_else(|e| panic!("{e}"));
    for sent in [r#"{"dst":"bob","msg":"hi bob, 5 > 4 ✓"}"#, r#"{"dst":"bob"}"#] {
        let dm = classic::parse_direct(sent).expect("a DM");
        let frame = classic::encode_direct_raw("alice", &dm.dst, &dm.msg_json);
        let range = classic::text_in_frame(&dm, frame.len()).expect("verbatim");
        let body = |text| Body::Direct { from: name("alice"), to: name("bob"), text };
        let apart = Message::with_classic(7, body(DmText::from(&*dm.msg)), Some(frame.clone()));
        let in_frame = DmText::in_classic_frame(range).expect("a small frame");
        let inside = Message::with_classic(7, body(in_frame), Some(frame));
        assert_eq!(inside.dm_text(), Some(&*dm.msg));
        assert_eq!(inside.dm_text(), apart.dm_text());
        assert_eq!(inside.v1_text(3), apart.v1_text(3));
        assert_eq!(inside.classic_text(), apart.classic_text());
        assert_eq!(inside.stored_text(), apart.stored_text());
        assert_eq!(inside.approximate_size(), apart.approximate_size());
        assert_eq!(
            crate::cluster::envelope_for(&inside, Some("bob")).map(|(_, bytes)| bytes),
            crate::cluster::envelope_for(&apart, Some("bob")).map(|(_, bytes)| bytes)
        );
    }
}

#[test]
fn a_writer_with_the_last_reference_gets_the_frames_the_cache_would_give() {
    let hub = Hub::new(HubLimits::default());
    let name = |n: &str| hub.client_name(n).unwrap_or_else(|e| panic!("{e}"));
    let body = || Body::Direct { from: name("alice"), to: name("bob"), text: "hi \"bob\"".into() };
    let reference = Message::at(7, body());
    let classic = reference.classic_text().map(str::to_owned);
    let v1 = reference.v1_text(42);
    for preset in [None, classic.clone()] {
        // The only reference: taken out, or encoded without filling the cache.
        let only = Arc::new(Message::with_classic(now_ms(), body(), preset.clone()));
        assert_eq!(only.into_classic_frame().map(|f| f.as_str().to_owned()), classic);
        let only = Arc::new(Message::at(7, body()));
        assert_eq!(only.into_v1_text(42), v1);
        // Shared: the cached frame, still there for the other reference.
        let shared = Arc::new(Message::with_classic(now_ms(), body(), preset));
        let other = Arc::clone(&shared);
        assert_eq!(shared.into_classic_frame().map(|f| f.as_str().to_owned()), classic);
        assert_eq!(other.classic_text().map(str::to_owned), classic);
        let shared = Arc::new(Message::at(7, body()));
        let other = Arc::clone(&shared);
        assert_eq!(shared.into_v1_text(42), v1);
        assert_eq!(other.v1_text(42), v1);
    }
}
