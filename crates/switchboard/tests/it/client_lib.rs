//! The `switchboard-client` library against the real server: DMs and acks,
//! rooms, presence, binary, errors, the bounded send queue, and reconnection
//! after a server restart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{pseudo_random, test_config, TestServer, WAIT};
use switchboard::config::Config;
use switchboard_client::{
    Client, ClientBuilder, ConnectError, ErrorCode, Event, Events, Outbound, PresenceEvent,
    ReconnectPolicy, SendError, State,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most events a test looks through for the one it expects.
const MAX_EVENTS: usize = 100_000;

/// Reads events until one matches; panics after [`WAIT`] or [`MAX_EVENTS`].
async fn expect(events: &mut Events, what: &str, mut check: impl FnMut(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    for _ in 0..MAX_EVENTS {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if check(&event) => return event,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("events ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
    panic!("no {what} within {MAX_EVENTS} events");
}

/// The next delivery or reply, skipping connection bookkeeping.
async fn next_message(events: &mut Events) -> Event {
    expect(events, "a message", |event| {
        !matches!(event, Event::Connected(_) | Event::StateChanged(_))
    })
    .await
}

async fn expect_ack(events: &mut Events, id: &str) {
    let event = expect(events, &format!("answer to {id}"), |e| e.request_id() == Some(id)).await;
    assert!(matches!(event, Event::Ack { .. }), "expected an ack for {id}, got {event:?}");
}

async fn connect(server: &TestServer, name: &str) -> (Client, Events) {
    Client::connect(server.base_ws(), name).await.expect("connect")
}

/// A checksum for payload comparisons (FNV-1a, 64 bits).
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[tokio::test]
async fn direct_messages_are_delivered_and_acked() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = connect(&server, "alice").await;
    let (bob, mut bob_events) = connect(&server, "bob").await;
    assert_eq!(alice.state(), State::Connected);
    assert_eq!(alice.name(), "alice");
    let Event::Connected(welcome) =
        expect(&mut alice_events, "welcome", |e| matches!(e, Event::Connected(_))).await
    else {
        unreachable!()
    };
    assert_eq!(welcome.name, "alice");

    let id = alice.send_direct("bob", "hi bob").expect("send");
    let event = next_message(&mut bob_events).await;
    let Event::Direct { from, to, text, seq, .. } = event else { panic!("{event:?}") };
    assert_eq!((from.as_str(), to.as_str(), text.as_str(), seq), ("alice", "bob", "hi bob", 1));
    expect_ack(&mut alice_events, &id).await;

    let id =
        bob.send(Outbound::direct("alice", "hi alice").with_id("reply-1")).await.expect("send");
    assert_eq!(id, "reply-1");
    let event = next_message(&mut alice_events).await;
    assert!(
        matches!(&event, Event::Direct { from, text, .. } if from == "bob" && text == "hi alice"),
        "{event:?}"
    );
    expect_ack(&mut bob_events, "reply-1").await;

    // Ids are generated in order when the caller gives none.
    let first: u64 = alice.send_to_server("one").expect("send").parse().expect("number");
    let second: u64 = alice.ping().expect("send").parse().expect("number");
    assert!(second > first);
    expect_ack(&mut alice_events, &first.to_string()).await;
    let pong = expect(&mut alice_events, "pong", |e| matches!(e, Event::Pong { .. })).await;
    assert_eq!(pong.request_id(), Some(second.to_string().as_str()));

    alice.close().await;
    assert_eq!(alice.state(), State::Closed);
    assert_eq!(alice.send_direct("bob", "late"), Err(SendError::Closed));
    bob.close().await;
}

#[tokio::test]
async fn room_of_100_members_all_receive() {
    let server = TestServer::start().await;
    let mut members = Vec::new();
    for i in 0..100 {
        let (client, mut events) = connect(&server, &format!("member-{i}")).await;
        let id = client.join("big").expect("join");
        expect_ack(&mut events, &id).await;
        members.push((client, events));
    }
    assert_eq!(server.hub.room("big").map(|room| room.members.len()), Some(100));

    let (publisher, publisher_events) = &mut members[0];
    let id = publisher.publish("big", "quote 42").expect("publish");
    expect_ack(publisher_events, &id).await;
    let (members_id, count) = {
        let id = publisher.members("big").expect("members");
        let event = expect(publisher_events, "members", |e| e.request_id() == Some(&id)).await;
        let Event::Members { members, .. } = event else { panic!("{event:?}") };
        (id, members.len())
    };
    assert_eq!(count, 100, "members reply {members_id}");

    for (client, events) in members.iter_mut().skip(1) {
        let event = next_message(events).await;
        assert!(
            matches!(&event, Event::Room { room, from: Some(from), text, .. }
                if room == "big" && from == "member-0" && text == "quote 42"),
            "{}: {event:?}",
            client.name()
        );
    }
    for (client, _) in &members {
        client.close().await;
    }
}

#[tokio::test]
async fn presence_is_opt_in() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = connect(&server, "alice").await;
    let (_carol, mut carol_events) = connect(&server, "carol").await;
    let id = alice.subscribe_presence(None).expect("subscribe");
    let event = expect(&mut alice_events, "subscription", |e| e.request_id() == Some(&id)).await;
    assert!(
        matches!(&event, Event::Members { members, .. } if members.contains(&"carol".to_owned())),
        "{event:?}"
    );

    let (bob, mut bob_events) = connect(&server, "bob").await;
    let event = next_message(&mut alice_events).await;
    assert!(
        matches!(&event, Event::Presence { room: None, name, event: PresenceEvent::Join, .. } if name == "bob"),
        "{event:?}"
    );

    // Carol did not subscribe: the DM sent after bob's arrival is the first
    // thing she receives (one outbox, FIFO: a presence event would be first).
    let id = bob.send_direct("carol", "sentinel").expect("dm");
    expect_ack(&mut bob_events, &id).await;
    let event = next_message(&mut carol_events).await;
    assert!(matches!(&event, Event::Direct { text, .. } if text == "sentinel"), "{event:?}");

    bob.close().await;
    let event = next_message(&mut alice_events).await;
    assert!(
        matches!(&event, Event::Presence { name, event: PresenceEvent::Leave, .. } if name == "bob"),
        "{event:?}"
    );
}

#[tokio::test]
async fn binary_512_kib_round_trip_with_checksum() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = connect(&server, "alice").await;
    let (bob, mut bob_events) = connect(&server, "bob").await;
    let payload = pseudo_random(512 * 1024, 0x2545_f491_4f6c_dd1d);
    let sum = checksum(&payload);

    let id = alice.send_binary("bob", payload.clone()).expect("send");
    let event = next_message(&mut bob_events).await;
    let Event::Binary { from, room, payload: received, .. } = event else { panic!("{event:?}") };
    assert_eq!((from.as_str(), room), ("alice", None));
    assert_eq!(received.len(), payload.len());
    assert_eq!(checksum(&received), sum);
    expect_ack(&mut alice_events, &id).await;

    // And back, through a room.
    for (client, events) in [(&alice, &mut alice_events), (&bob, &mut bob_events)] {
        let id = client.join("files").expect("join");
        expect_ack(events, &id).await;
    }
    let id = bob.publish_binary("files", received.clone()).expect("send");
    let event = next_message(&mut alice_events).await;
    let Event::Binary { from, room, payload: back, .. } = event else { panic!("{event:?}") };
    assert_eq!((from.as_str(), room.as_deref()), ("bob", Some("files")));
    assert_eq!(checksum(&back), sum);
    expect_ack(&mut bob_events, &id).await;
}

#[tokio::test]
async fn refusals_name_their_request_ids() {
    let config = Config { max_message_bytes: 4096, ..test_config() };
    let server = TestServer::start_with(config).await;
    let (alice, mut events) = connect(&server, "alice").await;

    let cases: Vec<(Outbound, ErrorCode)> = vec![
        (Outbound::direct("nobody", "hello?"), ErrorCode::UnknownRecipient),
        (Outbound::publish("not-joined", "x", false).with_id("mine"), ErrorCode::NotMember),
        (Outbound::binary_to("nobody", vec![1u8, 2, 3]), ErrorCode::UnknownRecipient),
        (Outbound::join(" bad room"), ErrorCode::InvalidName),
        // Refused locally from the welcome's limit, not sent: the hub would close with 1009.
        (Outbound::server("x".repeat(5000)), ErrorCode::TooLarge),
    ];
    for (message, code) in cases {
        let id = alice.try_send(message).expect("queue");
        let event =
            expect(&mut events, &format!("answer to {id}"), |e| e.request_id() == Some(&id)).await;
        assert!(
            matches!(&event, Event::Error { code: got, .. } if *got == code),
            "{id}: {event:?}"
        );
    }
    // Still connected and working.
    let id = alice.who().expect("who");
    let event = expect(&mut events, "who", |e| e.request_id() == Some(&id)).await;
    assert!(
        matches!(&event, Event::Clients { clients, .. } if clients == &["alice".to_owned()]),
        "{event:?}"
    );
    assert_eq!(alice.state(), State::Connected);
}

// A current-thread runtime: the background task cannot run between the
// sends below, so the queue fills deterministically.
#[tokio::test(flavor = "current_thread")]
async fn a_full_send_queue_is_a_typed_error() {
    let server = TestServer::start().await;
    let (_bob, _bob_events) = connect(&server, "bob").await;
    let (alice, mut events) = ClientBuilder::new(server.base_ws(), "alice")
        .send_queue_capacity(4)
        .connect()
        .await
        .expect("connect");
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(alice.send_direct("bob", &format!("message {i}")).expect("room in the queue"));
    }
    let full = alice.send_direct("bob", "one too many");
    assert_eq!(full, Err(SendError::QueueFull { capacity: 4 }));
    assert!(full.unwrap_err().to_string().contains("send queue is full"));

    tokio::time::timeout(WAIT, alice.flush()).await.expect("flush in time").expect("flush");
    for id in &ids {
        expect_ack(&mut events, id).await;
    }
    alice.send_direct("bob", "room again").expect("queue drained");
}

#[tokio::test]
async fn handshake_refusals_are_typed() {
    let server = TestServer::start().await;
    let (_alice, _events) = connect(&server, "alice").await;
    let error = Client::connect(server.base_ws(), "alice").await.expect_err("duplicate name");
    assert!(matches!(&error, ConnectError::Rejected { status: 409, .. }), "{error:?}");
    assert!(error.to_string().contains("already online"), "{error}");
    assert!(error.is_permanent());

    let error = Client::connect(server.base_ws(), "bad\u{1}name").await.expect_err("bad name");
    assert!(matches!(&error, ConnectError::Rejected { status: 400, .. }), "{error:?}");

    let error = Client::connect("http://127.0.0.1:1", "x").await.expect_err("bad scheme");
    assert!(matches!(&error, ConnectError::InvalidUrl { .. }), "{error:?}");

    let closed = closed_port().await;
    let error = Client::connect(format!("ws://{closed}"), "x").await.expect_err("closed port");
    assert!(matches!(&error, ConnectError::Io(_)), "{error:?}");
    assert!(!error.is_permanent());
}

/// An address nothing listens on: bound, then released.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test]
async fn reconnects_after_a_server_restart_and_rejoins_rooms() {
    let first = TestServer::start_at("127.0.0.1:0".parse().expect("addr"), test_config());
    let addr = first.addr;
    let url = format!("ws://{addr}");
    let policy =
        ReconnectPolicy::exponential(Duration::from_millis(50), Duration::from_millis(500));
    let (alice, mut events) =
        ClientBuilder::new(&url, "alice").reconnect(policy).connect().await.expect("connect");
    let id = alice.join("quotes").expect("join");
    expect_ack(&mut events, &id).await;
    let id = alice.subscribe_presence(Some("quotes")).expect("subscribe");
    expect(&mut events, "subscription", |e| e.request_id() == Some(&id)).await;
    assert!(first.hub.room("quotes").is_some());

    first.stop().await;
    let event =
        expect(&mut events, "disconnect", |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(matches!(event, Event::Disconnected { code: Some(1001), .. }), "{event:?}");
    expect(&mut events, "reconnecting", |e| matches!(e, Event::Reconnecting { .. })).await;

    let second = TestServer::start_at(addr, test_config());
    assert_eq!(second.addr, addr);
    expect(&mut events, "reconnected", |e| matches!(e, Event::Connected(_))).await;
    assert_eq!(alice.state(), State::Connected);
    crate::common::eventually("alice back in quotes", || {
        second
            .hub
            .room("quotes")
            .is_some_and(|room| room.members.iter().any(|m| m.as_str() == "alice"))
    })
    .await;

    let (bob, mut bob_events) = ClientBuilder::new(&url, "bob").connect().await.expect("bob");
    let id = bob.join("quotes").expect("join");
    expect_ack(&mut bob_events, &id).await;
    // The renewed room subscription reports bob's arrival before his message.
    let event = expect(&mut events, "bob's join", |e| matches!(e, Event::Presence { .. })).await;
    assert!(
        matches!(&event, Event::Presence { name, event: PresenceEvent::Join, .. } if name == "bob"),
        "{event:?}"
    );
    bob.publish("quotes", "EURUSD 1.09").expect("publish");
    let event = expect(&mut events, "room message", |e| matches!(e, Event::Room { .. })).await;
    assert!(
        matches!(&event, Event::Room { text, from: Some(from), .. } if text == "EURUSD 1.09" && from == "bob"),
        "{event:?}"
    );

    alice.close().await;
    bob.close().await;
    second.stop().await;
}

#[tokio::test]
async fn without_reconnect_a_lost_connection_closes_the_client() {
    let server = TestServer::start().await;
    let (alice, mut events) = ClientBuilder::new(server.base_ws(), "alice")
        .reconnect(ReconnectPolicy::disabled())
        .connect()
        .await
        .expect("connect");
    server.stop().await;
    expect(&mut events, "closed", |e| matches!(e, Event::StateChanged(State::Closed))).await;
    assert!(tokio::time::timeout(WAIT, events.recv()).await.expect("end").is_none());
    tokio::time::timeout(WAIT, alice.closed()).await.expect("closed");
    assert_eq!(alice.flush().await, Err(SendError::Closed));
}

#[tokio::test]
async fn a_kicked_client_does_not_reconnect() {
    let server = TestServer::start().await;
    let policy = ReconnectPolicy::exponential(Duration::from_millis(10), Duration::from_millis(50));
    let (alice, mut events) = ClientBuilder::new(server.base_ws(), "alice")
        .reconnect(policy)
        .connect()
        .await
        .expect("connect");
    server.hub.disconnect("alice", "spamming".into()).expect("kick");
    let event =
        expect(&mut events, "disconnect", |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        matches!(&event, Event::Disconnected { code: Some(4000), reason } if reason.contains("spamming")),
        "{event:?}"
    );
    expect(&mut events, "closed", |e| {
        assert!(!matches!(e, Event::Reconnecting { .. }), "{e:?}");
        matches!(e, Event::StateChanged(State::Closed))
    })
    .await;
    tokio::time::timeout(WAIT, alice.closed()).await.expect("closed");
    // Nothing after the end: no reconnection attempt.
    for _ in 0..MAX_EVENTS {
        let Some(event) = tokio::time::timeout(WAIT, events.recv()).await.expect("end") else {
            break;
        };
        assert!(!matches!(event, Event::Reconnecting { .. } | Event::Connected(_)), "{event:?}");
    }
}

/// A TCP relay in front of the server whose existing connections can go
/// silent without closing, like a network that drops every packet.
struct Relay {
    addr: SocketAddr,
    /// Connections numbered below this pass nothing any more.
    frozen_below: Arc<AtomicUsize>,
    next_id: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let next_id = Arc::new(AtomicUsize::new(0));
        let (frozen, ids) = (frozen_below.clone(), next_id.clone());
        tokio::spawn(async move {
            // A test makes a handful of connections; the bound is generous.
            for _ in 0..100 {
                let Ok((inbound, _)) = listener.accept().await else { return };
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let id = ids.fetch_add(1, Ordering::SeqCst);
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(forward(in_read, out_write, id, frozen.clone()));
                tokio::spawn(forward(out_read, in_write, id, frozen.clone()));
            }
        });
        Relay { addr, frozen_below, next_id }
    }

    /// Silences every connection made so far; new ones pass.
    fn freeze(&self) {
        self.frozen_below.store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: usize,
    frozen_below: Arc<AtomicUsize>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    // Ends when either socket closes; the count is only a backstop.
    for _ in 0..1_000_000 {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if id < frozen_below.load(Ordering::SeqCst) {
            // Hold both sockets open and pass nothing, until the test ends.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn keepalive_notices_a_silent_connection_and_reconnects() {
    // The hub drops the silent session within about 2 s; until then a
    // reconnect is refused with 409, which the client rides out.
    let config = Config { ping_interval_secs: 1, pong_timeout_secs: 1, ..test_config() };
    let server = TestServer::start_with(config).await;
    let relay = Relay::start(server.addr).await;
    let policy =
        ReconnectPolicy::exponential(Duration::from_millis(100), Duration::from_millis(500));
    let (alice, mut events) = ClientBuilder::new(format!("ws://{}", relay.addr), "alice")
        .keepalive(Some(Duration::from_millis(300)))
        .reconnect(policy)
        .connect()
        .await
        .expect("connect");
    let id = alice.join("r").expect("join");
    expect_ack(&mut events, &id).await;

    relay.freeze();
    let event =
        expect(&mut events, "disconnect", |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        matches!(&event, Event::Disconnected { code: None, reason } if reason.contains("no answer")),
        "{event:?}"
    );
    expect(&mut events, "reconnected", |e| matches!(e, Event::Connected(_))).await;
    crate::common::eventually("alice back in r", || {
        server.hub.room("r").is_some_and(|room| room.members.iter().any(|m| m.as_str() == "alice"))
    })
    .await;
    let id = alice.ping().expect("ping");
    let event = expect(&mut events, "pong", |e| e.request_id() == Some(&id)).await;
    assert!(matches!(event, Event::Pong { .. }), "{event:?}");
    alice.close().await;
}
