//! The `switchboard-client` library's resume behaviour (issue 7) against the
//! real server: reconnecting in the middle of a 10,000-message stream
//! without gap or duplicate, re-sending unanswered messages without double
//! delivery, delivery receipts, and room history across a reconnect.
//!
//! Connections are dropped by a TCP relay in front of the server rather
//! than by an operator kick: a kicked client (close 4000) does not
//! reconnect, by design.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{test_config, TestServer, WAIT};
use switchboard::config::Config;
use switchboard_client::{
    AckStatus, Client, ClientBuilder, Event, Events, ReconnectPolicy, Since, State,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Reads events until one matches; panics after `wait`.
async fn expect_within(
    events: &mut Events,
    wait: Duration,
    what: &str,
    mut check: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if check(&event) => return event,
            Ok(Some(Event::Error { id, code, message })) => {
                panic!("unexpected error while waiting for {what}: {id:?} {code:?} {message}")
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("events ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

async fn expect(events: &mut Events, what: &str, check: impl FnMut(&Event) -> bool) -> Event {
    expect_within(events, WAIT, what, check).await
}

/// Fast reconnection, no client keepalive (the relay never goes silent).
fn builder(url: &str, name: &str) -> ClientBuilder {
    let policy =
        ReconnectPolicy::exponential(Duration::from_millis(20), Duration::from_millis(200));
    ClientBuilder::new(url, name).reconnect(policy).keepalive(None)
}

/// No rate limit and room for a whole stream in one inbox.
fn roomy_config() -> Config {
    Config {
        rate_messages_per_sec: 0,
        rate_bytes_per_sec: 0,
        inbox_max_messages: 100_000,
        ..test_config()
    }
}

/// A TCP relay in front of the server. `cut` drops every connection made
/// so far (both sockets closed, as when a network path fails); `hold_replies`
/// stops passing the server's bytes to the client on the connections made
/// so far (the client's still reach the server), until they are cut.
struct Relay {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Piped>>>,
}

struct Piped {
    tasks: [JoinHandle<()>; 2],
    hold: Arc<AtomicBool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(Mutex::new(Vec::<Piped>::new()));
        let list = connections.clone();
        tokio::spawn(async move {
            // A test makes a handful of connections; the bound is generous.
            for _ in 0..1000 {
                let Ok((inbound, _)) = listener.accept().await else { return };
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let hold = Arc::new(AtomicBool::new(false));
                let up = tokio::spawn(pipe(in_read, out_write, Arc::new(AtomicBool::new(false))));
                let down = tokio::spawn(pipe(out_read, in_write, hold.clone()));
                list.lock().expect("lock").push(Piped { tasks: [up, down], hold });
            }
        });
        Relay { addr, connections }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Drops every connection made so far; new ones pass.
    fn cut(&self) {
        for piped in self.connections.lock().expect("lock").drain(..) {
            for task in piped.tasks {
                task.abort();
            }
        }
    }

    /// The server's bytes stop reaching the client on every current connection.
    fn hold_replies(&self) {
        for piped in self.connections.lock().expect("lock").iter() {
            piped.hold.store(true, Ordering::SeqCst);
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hold: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if hold.load(Ordering::SeqCst) {
            // Swallow it: this connection is about to be cut.
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// (a) A stream of 10,000 DMs; the recipient's connection is dropped in the
/// middle. The client library resumes after the last seq it got and the
/// recipient sees every message exactly once, in order.
#[tokio::test]
async fn a_dropped_connection_mid_stream_loses_and_repeats_nothing() {
    const COUNT: usize = 10_000;
    let server = TestServer::start_with(roomy_config()).await;
    let relay = Relay::start(server.addr).await;
    let (bob, mut bob_events) = builder(&relay.url(), "bob").connect().await.expect("bob");
    let (alice, mut alice_events) =
        builder(&server.base_ws(), "alice").connect().await.expect("alice");

    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            let message = switchboard_client::Outbound::direct("bob", format!("m{i}"));
            alice.send(message).await.expect("send");
        }
        tokio::time::timeout(Duration::from_secs(60), alice.flush())
            .await
            .expect("every send answered")
            .expect("open");
        alice.close().await;
    });
    // Alice's events are read all along: a consumer that stops reading
    // stops its client.
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while let Some(event) = alice_events.recv().await {
            match event {
                Event::Ack { status, .. } => {
                    assert!(
                        matches!(status, Some(AckStatus::Live | AckStatus::Stored)),
                        "{status:?}"
                    );
                    acked += 1;
                }
                Event::Error { .. } | Event::Lost { .. } => panic!("{event:?}"),
                _ => {}
            }
        }
        acked
    });

    let mut texts = Vec::with_capacity(COUNT);
    let mut last_seq = 0;
    let mut cut = false;
    let mut reconnected = false;
    while texts.len() < COUNT {
        let event = expect_within(&mut bob_events, Duration::from_secs(60), "the stream", |e| {
            matches!(e, Event::Direct { .. } | Event::Connected(_))
        })
        .await;
        match event {
            Event::Direct { seq, from, text, .. } => {
                assert!(seq > last_seq, "seq {seq} after {last_seq}");
                last_seq = seq;
                assert_eq!(from, "alice");
                texts.push(text);
                if texts.len() == COUNT / 3 && !cut {
                    relay.cut();
                    cut = true;
                }
            }
            Event::Connected(_) => reconnected = cut,
            _ => {}
        }
    }
    assert!(reconnected, "bob reconnected during the stream");
    let expected: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    if texts != expected {
        let duplicates = texts.len() - texts.iter().collect::<HashSet<_>>().len();
        let first_wrong = texts.iter().zip(&expected).position(|(got, want)| got != want);
        panic!("{duplicates} duplicates; first difference at {first_wrong:?}");
    }
    assert_eq!(bob.last_seq(), last_seq);

    sender.await.expect("sender");
    // Every send was acknowledged: none lost, none refused.
    assert_eq!(acks.await.expect("alice's events"), COUNT);
    // Nothing more arrives for bob.
    let id = bob.ping().expect("ping");
    let event = expect(&mut bob_events, "pong", |e| !matches!(e, Event::StateChanged(_))).await;
    assert!(matches!(&event, Event::Pong { id: Some(got) } if *got == id), "{event:?}");
    bob.close().await;
}

/// (b) Messages the hub accepted but whose acks never reached the sender
/// are re-sent with the same ids after the reconnect; the hub answers
/// "duplicate" and the recipient gets each exactly once.
#[tokio::test]
async fn retried_sends_after_a_reconnect_are_not_delivered_twice() {
    const BATCH: usize = 200;
    let server = TestServer::start_with(roomy_config()).await;
    let relay = Relay::start(server.addr).await;
    let (bob, mut bob_events) = builder(&server.base_ws(), "bob").connect().await.expect("bob");
    let (alice, mut alice_events) = builder(&relay.url(), "alice").connect().await.expect("alice");

    // The hub's answers stop reaching alice; her messages still reach the hub.
    relay.hold_replies();
    let mut ids = Vec::new();
    for i in 0..BATCH {
        ids.push(alice.send_direct("bob", &format!("b{i}")).expect("queue"));
    }
    let mut texts = Vec::new();
    while texts.len() < BATCH {
        if let Event::Direct { text, .. } =
            expect(&mut bob_events, "the batch", |e| matches!(e, Event::Direct { .. })).await
        {
            texts.push(text);
        }
    }
    // All accepted by the hub, none acknowledged to alice: drop her connection.
    relay.cut();
    let mut duplicates = HashSet::new();
    while duplicates.len() < BATCH {
        let event = expect(&mut alice_events, "the answers to the retries", |e| {
            matches!(e, Event::Ack { .. } | Event::Lost { .. })
        })
        .await;
        match event {
            Event::Ack { id, status: Some(AckStatus::Duplicate) } => {
                assert!(duplicates.insert(id.clone()), "{id} answered twice");
            }
            other => panic!("expected a duplicate ack, got {other:?}"),
        }
    }
    assert_eq!(duplicates, ids.iter().cloned().collect::<HashSet<_>>());
    tokio::time::timeout(WAIT, alice.flush()).await.expect("flush").expect("open");

    // Bob got each exactly once, in order, and nothing since.
    let expected: Vec<String> = (0..BATCH).map(|i| format!("b{i}")).collect();
    assert_eq!(texts, expected);
    let id = bob.ping().expect("ping");
    let event = expect(&mut bob_events, "pong", |e| !matches!(e, Event::StateChanged(_))).await;
    assert!(matches!(&event, Event::Pong { id: Some(got) } if *got == id), "{event:?}");

    // After the retries, new messages flow as usual.
    let id = alice.send_direct("bob", "after").expect("send");
    let event = expect(&mut alice_events, "ack", |e| e.request_id() == Some(id.as_str())).await;
    assert!(matches!(event, Event::Ack { status: Some(AckStatus::Live), .. }), "{event:?}");
    let event = expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await;
    assert!(matches!(&event, Event::Direct { text, .. } if text == "after"), "{event:?}");
    alice.close().await;
    bob.close().await;
}

/// (c) Receipts: a DM with a receipt, to a recipient online and to one
/// offline (stored, then delivered when it connects), names its id in an
/// `Event::Delivered` once the recipient's client acknowledged it.
#[tokio::test]
async fn receipts_name_the_message_once_the_recipient_acknowledged_it() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = builder(&server.base_ws(), "alice").connect().await.expect("a");
    let (bob, mut bob_events) = builder(&server.base_ws(), "bob").connect().await.expect("b");

    let id = alice.send_direct_with_receipt("bob", "live one").expect("send");
    let event = expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await;
    assert!(matches!(&event, Event::Direct { text, .. } if text == "live one"), "{event:?}");
    let event =
        expect(&mut alice_events, "receipt", |e| matches!(e, Event::Delivered { .. })).await;
    assert!(
        matches!(&event, Event::Delivered { id: got, to, .. } if *got == id && to == "bob"),
        "{event:?}"
    );

    // Bob leaves; the next one is stored and its receipt comes when he is back.
    bob.close().await;
    drop(bob_events);
    crate::common::eventually("bob offline", || server.hub.client("bob").is_none()).await;
    let id = alice.send_direct_with_receipt("bob", "stored one").expect("send");
    let event = expect(&mut alice_events, "ack", |e| e.request_id() == Some(id.as_str())).await;
    assert!(matches!(event, Event::Ack { status: Some(AckStatus::Stored), .. }), "{event:?}");
    let (bob, mut bob_events) = builder(&server.base_ws(), "bob").connect().await.expect("b");
    let event = expect(&mut bob_events, "stored dm", |e| matches!(e, Event::Direct { .. })).await;
    assert!(matches!(&event, Event::Direct { text, .. } if text == "stored one"), "{event:?}");
    let event =
        expect(&mut alice_events, "receipt", |e| matches!(e, Event::Delivered { .. })).await;
    assert!(
        matches!(&event, Event::Delivered { id: got, to, .. } if *got == id && to == "bob"),
        "{event:?}"
    );
    // No receipt without asking.
    let plain = alice.send_direct("bob", "no receipt").expect("send");
    expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await;
    let id = alice.ping().expect("ping");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let event = expect(&mut alice_events, "pong", |e| {
        assert!(!matches!(e, Event::Delivered { id, .. } if *id == plain), "{e:?}");
        e.request_id() == Some(id.as_str()) && matches!(e, Event::Pong { .. })
    })
    .await;
    assert!(matches!(event, Event::Pong { .. }));
    alice.close().await;
    bob.close().await;
}

/// Room history across a reconnect: the client re-joins from the last
/// `rseq` it saw, so the messages published while it was away arrive and
/// none it had is repeated.
#[tokio::test]
async fn rooms_are_rejoined_from_the_last_rseq_seen() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.addr).await;
    let (alice, mut alice_events) = builder(&server.base_ws(), "alice").connect().await.expect("a");
    let (bob, mut bob_events) = builder(&relay.url(), "bob").connect().await.expect("b");
    for (client, events) in [(&alice, &mut alice_events), (&bob, &mut bob_events)] {
        let id = client.join("lobby").expect("join");
        expect(events, "join ack", |e| e.request_id() == Some(id.as_str())).await;
    }
    let mut seen = Vec::new();
    for i in 0..5 {
        alice.publish("lobby", &format!("r{i}")).expect("publish");
    }
    while seen.len() < 5 {
        if let Event::Room { text, rseq, .. } =
            expect(&mut bob_events, "room", |e| matches!(e, Event::Room { .. })).await
        {
            assert!(rseq.is_some(), "the room keeps history by default");
            seen.push(text);
        }
    }

    relay.cut();
    expect(&mut bob_events, "disconnected", |e| matches!(e, Event::Disconnected { .. })).await;
    // Published while bob is away (his old session may linger for a moment).
    for i in 5..10 {
        let id = alice.publish("lobby", &format!("r{i}")).expect("publish");
        expect(&mut alice_events, "publish ack", |e| e.request_id() == Some(id.as_str())).await;
    }
    expect(&mut bob_events, "reconnected", |e| matches!(e, Event::Connected(_))).await;
    let mut last_rseq = 0;
    while seen.len() < 10 {
        if let Event::Room { text, rseq, .. } =
            expect(&mut bob_events, "room", |e| matches!(e, Event::Room { .. })).await
        {
            let rseq = rseq.expect("rseq");
            assert!(rseq > last_rseq, "{rseq} after {last_rseq}");
            last_rseq = rseq;
            seen.push(text);
        }
    }
    // Messages bob's old session still got before the hub noticed the cut
    // were lost with it; the history brought them back, each once.
    let expected: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    assert_eq!(seen, expected);
    let id = bob.ping().expect("ping");
    let event = expect(&mut bob_events, "pong", |e| {
        assert!(!matches!(e, Event::Room { .. }), "repeated: {e:?}");
        matches!(e, Event::Pong { .. })
    })
    .await;
    assert_eq!(event.request_id(), Some(id.as_str()));

    // An explicit join from a point replays the history after it.
    let id = bob.join_since("lobby", Since::Rseq(last_rseq - 2)).expect("join");
    let mut replayed = Vec::new();
    loop {
        let event = expect(&mut bob_events, "replay", |e| {
            matches!(e, Event::Room { .. }) || e.request_id() == Some(id.as_str())
        })
        .await;
        match event {
            Event::Room { text, .. } => replayed.push(text),
            _ => break,
        }
    }
    assert_eq!(replayed, ["r8", "r9"]);
    assert_eq!(bob.state(), State::Connected);
    alice.close().await;
    bob.close().await;
}

/// A client that closes acknowledges what it got: a new client for the
/// same name is not sent it again, but gets what arrived while it was away.
#[tokio::test]
async fn a_closed_client_is_not_sent_again_what_it_acknowledged() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = builder(&server.base_ws(), "alice").connect().await.expect("a");
    let (bob, mut bob_events) = builder(&server.base_ws(), "bob").connect().await.expect("b");
    for i in 0..3 {
        alice.send_direct("bob", &format!("d{i}")).expect("send");
    }
    for _ in 0..3 {
        expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await;
    }
    bob.close().await;
    crate::common::eventually("bob offline", || server.hub.client("bob").is_none()).await;
    let id = alice.send_direct("bob", "while away").expect("send");
    let event = expect(&mut alice_events, "ack", |e| e.request_id() == Some(id.as_str())).await;
    assert!(matches!(event, Event::Ack { status: Some(AckStatus::Stored), .. }), "{event:?}");

    let (bob, mut bob_events) = Client::connect(server.base_ws(), "bob").await.expect("b again");
    let event = expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await;
    assert!(matches!(&event, Event::Direct { text, .. } if text == "while away"), "{event:?}");
    let id = bob.ping().expect("ping");
    let event = expect(&mut bob_events, "pong", |e| {
        assert!(!matches!(e, Event::Direct { .. }), "sent again: {e:?}");
        matches!(e, Event::Pong { .. })
    })
    .await;
    assert_eq!(event.request_id(), Some(id.as_str()));
    alice.close().await;
    bob.close().await;
}

/// An `--ephemeral` hub forgets a name's numbering when it disconnects; a
/// client that resumes must still see `seq` increase (the hub numbers above
/// the resume point), or the client library would drop the new messages as
/// repeats.
#[tokio::test]
async fn an_ephemeral_hub_numbers_a_resumed_session_above_its_resume_point() {
    let server = TestServer::start_with(Config { ephemeral: true, ..test_config() }).await;
    let relay = Relay::start(server.addr).await;
    let (alice, mut alice_events) = builder(&server.base_ws(), "alice").connect().await.expect("a");
    let (bob, mut bob_events) = builder(&relay.url(), "bob").connect().await.expect("b");
    let mut texts = Vec::new();
    for i in 0..5 {
        alice.send_direct("bob", &format!("e{i}")).expect("send");
    }
    while texts.len() < 5 {
        if let Event::Direct { text, .. } =
            expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await
        {
            texts.push(text);
        }
    }
    let before = bob.last_seq();
    relay.cut();
    expect(&mut bob_events, "reconnected", |e| matches!(e, Event::Connected(_))).await;
    crate::common::eventually("bob back", || server.hub.client("bob").is_some()).await;
    for i in 5..10 {
        let id = alice.send_direct("bob", &format!("e{i}")).expect("send");
        let event = expect(&mut alice_events, "ack", |e| e.request_id() == Some(id.as_str())).await;
        assert!(matches!(event, Event::Ack { .. }), "{event:?}");
    }
    while texts.len() < 10 {
        let event = expect(&mut bob_events, "dm", |e| matches!(e, Event::Direct { .. })).await;
        if let Event::Direct { seq, text, .. } = event {
            assert!(seq > before, "seq {seq} not above the resume point {before}");
            texts.push(text);
        }
    }
    let expected: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    assert_eq!(texts, expected);
    alice.close().await;
    bob.close().await;
}
