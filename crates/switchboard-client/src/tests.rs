//! The client's resume behaviour against a scripted fake hub on
//! 127.0.0.1:0: the `resume` parameter, cumulative acks, dropping repeated
//! deliveries, re-joining rooms from their last `rseq`, and re-sending
//! unanswered messages with their ids. The real hub is exercised by the
//! integration tests in `crates/switchboard/tests/it/client_resume.rs`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{AckStatus, Client, ClientBuilder, Event, Events, ReconnectPolicy, Since};

const WAIT: Duration = Duration::from_secs(10);

/// A listener standing in for the hub; each accepted connection is scripted by the test.
struct FakeHub {
    listener: TcpListener,
    url: String,
}

/// One accepted connection: its query string and socket.
struct Session {
    query: String,
    ws: WebSocketStream<TcpStream>,
}

impl FakeHub {
    async fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        FakeHub { listener, url }
    }

    fn builder(&self, name: &str) -> ClientBuilder {
        let policy =
            ReconnectPolicy::exponential(Duration::from_millis(10), Duration::from_millis(50));
        ClientBuilder::new(&self.url, name).reconnect(policy).keepalive(None)
    }

    /// Accepts the next connection, answers v1 and sends a welcome.
    async fn accept(&self) -> Session {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a connection")
            .expect("accept");
        let mut query = String::new();
        // The callback's error type is tungstenite's; it is never returned here.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            query = request.uri().query().unwrap_or_default().to_owned();
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("switchboard.v1"));
            Ok(response)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.expect("handshake");
        let mut session = Session { query, ws };
        session
            .send(json!({"type":"welcome","name":"alice","session":"1","version":"test","protocol":"1",
                "limits":{"max_message_bytes":1_048_576,"max_queued_bytes":4_194_304,
                "rate_messages_per_sec":0,"rate_bytes_per_sec":0}}))
            .await;
        session
    }
}

impl Session {
    async fn send(&mut self, value: Value) {
        self.ws.send(Message::text(value.to_string())).await.expect("send");
    }

    fn dm(seq: u64, text: &str) -> Value {
        json!({"type":"dm","seq":seq,"ts":1,"from":"bob","to":"alice","text":text})
    }

    /// The next text frame from the client, as JSON.
    async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame from the client")
                .expect("open")
                .expect("frame");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
                Message::Binary(_) => panic!("unexpected binary frame"),
                _ => continue,
            }
        }
    }

    /// Nothing from the client for `wait`.
    async fn silence(&mut self, wait: Duration) {
        if let Ok(Some(Ok(frame))) = tokio::time::timeout(wait, self.ws.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Reads until the client's close frame (tungstenite answers it).
    async fn until_closed(mut self) -> Vec<Value> {
        let mut texts = Vec::new();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, self.ws.next()).await {
            if let Message::Text(text) = frame {
                texts.push(serde_json::from_str(&text).expect("JSON"));
            }
        }
        texts
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The next event that is not connection bookkeeping.
async fn next_message(events: &mut Events) -> Event {
    loop {
        let event =
            tokio::time::timeout(WAIT, events.recv()).await.expect("an event").expect("open");
        if !matches!(
            event,
            Event::StateChanged(_) | Event::Connected(_) | Event::Reconnecting { .. }
        ) {
            return event;
        }
    }
}

#[tokio::test]
async fn resumes_acks_and_retries_across_a_dropped_connection() {
    let hub = FakeHub::start().await;
    let (connected, mut first) = tokio::join!(hub.builder("alice").connect(), hub.accept());
    let (client, mut events) = connected.expect("connect");
    assert_eq!(query_param(&first.query, "name").as_deref(), Some("alice"));
    assert_eq!(query_param(&first.query, "resume").as_deref(), Some("0"), "{}", first.query);

    // 70 deliveries: one ack at 64 (count), one for 70 after the 50 ms delay.
    for seq in 1..=70 {
        first.send(Session::dm(seq, &format!("m{seq}"))).await;
    }
    assert_eq!(first.recv().await, json!({"type":"ack","seq":64}));
    assert_eq!(first.recv().await, json!({"type":"ack","seq":70}));
    first.silence(Duration::from_millis(150)).await;
    for seq in 1..=70 {
        let event = next_message(&mut events).await;
        assert!(matches!(&event, Event::Direct { seq: got, .. } if *got == seq), "{event:?}");
    }
    assert_eq!(client.last_seq(), 70);

    // A room joined from a time; a history message gives it an rseq.
    let join = client.join_since("lobby", Since::Ts(5)).expect("join");
    assert_eq!(
        first.recv().await,
        json!({"type":"join","id":join,"room":"lobby","since":{"ts":5}})
    );
    first.send(json!({"type":"ack","id":join})).await;
    first
        .send(
            json!({"type":"room","seq":71,"ts":2,"room":"lobby","rseq":12,"from":"bob","text":"r"}),
        )
        .await;
    let event = next_message(&mut events).await;
    assert!(matches!(event, Event::Ack { status: None, .. }), "{event:?}");
    let event = next_message(&mut events).await;
    assert!(matches!(&event, Event::Room { seq: 71, rseq: Some(12), .. }), "{event:?}");
    assert_eq!(first.recv().await, json!({"type":"ack","seq":71}));

    // Sends the hub does not answer before the connection drops.
    let dm = client.send_direct_with_receipt("bob", "one").expect("dm");
    let publish = client.publish("lobby", "two").expect("publish");
    let who = client.who().expect("who");
    let server = client.send_to_server("three").expect("server");
    assert_eq!(
        first.recv().await,
        json!({"type":"dm","id":dm,"to":"bob","text":"one","receipt":true})
    );
    assert_eq!(
        first.recv().await,
        json!({"type":"publish","id":publish,"room":"lobby","text":"two"})
    );
    assert_eq!(first.recv().await["type"], "who");
    assert_eq!(first.recv().await["type"], "server");
    drop(first);

    // Requests that are not retried are reported lost, in order; the
    // messages are not.
    let mut lost = Vec::new();
    loop {
        match next_message(&mut events).await {
            Event::Lost { id } => lost.push(id),
            Event::Disconnected { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lost, [who, server]);

    let mut second = hub.accept().await;
    assert_eq!(query_param(&second.query, "resume").as_deref(), Some("71"), "{}", second.query);
    // Rooms first, from the last rseq seen; then the unanswered messages, same ids, in order.
    assert_eq!(second.recv().await, json!({"type":"join","room":"lobby","since":{"rseq":12}}));
    assert_eq!(
        second.recv().await,
        json!({"type":"dm","id":dm,"to":"bob","text":"one","receipt":true})
    );
    assert_eq!(
        second.recv().await,
        json!({"type":"publish","id":publish,"room":"lobby","text":"two"})
    );

    // A repeated delivery is dropped; answers may come out of order.
    second.send(Session::dm(70, "again")).await;
    second.send(Session::dm(73, "new")).await;
    second.send(json!({"type":"ack","id":publish})).await;
    second.send(json!({"type":"ack","id":dm,"status":"duplicate"})).await;
    second.send(json!({"type":"delivered","seq":75,"ts":3,"id":dm,"to":"bob"})).await;
    let mut acked = 0;
    while acked < 75 {
        let ack = second.recv().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        acked = ack["seq"].as_u64().expect("seq");
        assert!(acked == 73 || acked == 75, "{ack}");
    }
    let event = next_message(&mut events).await;
    assert!(matches!(&event, Event::Direct { seq: 73, text, .. } if text == "new"), "{event:?}");
    let event = next_message(&mut events).await;
    assert!(matches!(&event, Event::Ack { id, status: None } if *id == publish), "{event:?}");
    let event = next_message(&mut events).await;
    assert!(
        matches!(&event, Event::Ack { id, status: Some(AckStatus::Duplicate) } if *id == dm),
        "{event:?}"
    );
    let event = next_message(&mut events).await;
    assert!(
        matches!(&event, Event::Delivered { seq: 75, id, to, .. } if *id == dm && to == "bob"),
        "{event:?}"
    );

    // Everything answered: flush returns at once. A close acknowledges first.
    tokio::time::timeout(WAIT, client.flush()).await.expect("flush").expect("open");
    second.send(Session::dm(76, "last")).await;
    let event = next_message(&mut events).await;
    assert!(matches!(&event, Event::Direct { seq: 76, .. }), "{event:?}");
    let (_, frames) = tokio::join!(client.close(), second.until_closed());
    assert_eq!(frames, [json!({"type":"ack","seq":76})]);
}

#[tokio::test]
async fn without_acks_there_is_no_resume_and_no_ack() {
    let hub = FakeHub::start().await;
    let (connected, mut first) =
        tokio::join!(hub.builder("alice").acks(false).retry_sends(false).connect(), hub.accept());
    let (client, mut events) = connected.expect("connect");
    assert_eq!(query_param(&first.query, "resume"), None, "{}", first.query);
    for seq in 1..=100 {
        first.send(Session::dm(seq, "x")).await;
    }
    for seq in 1..=100 {
        let event = next_message(&mut events).await;
        assert!(matches!(&event, Event::Direct { seq: got, .. } if *got == seq), "{event:?}");
    }
    first.silence(Duration::from_millis(150)).await;
    let dm = client.send_direct("bob", "hi").expect("dm");
    assert_eq!(first.recv().await["id"], dm.as_str());
    drop(first);
    // Not retried: lost at once.
    let event = next_message(&mut events).await;
    assert!(matches!(&event, Event::Lost { id } if *id == dm), "{event:?}");

    // A new session may start numbering anew (a hub before resume did).
    let mut second = hub.accept().await;
    assert_eq!(query_param(&second.query, "resume"), None, "{}", second.query);
    second.silence(Duration::from_millis(100)).await;
    second.send(Session::dm(1, "fresh")).await;
    let event = loop {
        match next_message(&mut events).await {
            Event::Disconnected { .. } => continue,
            other => break other,
        }
    };
    assert!(matches!(&event, Event::Direct { seq: 1, .. }), "{event:?}");
    let (_, frames) = tokio::join!(client.close(), second.until_closed());
    assert!(frames.is_empty(), "{frames:?}");
}

#[tokio::test]
async fn a_hub_that_does_not_know_acks_turns_resume_off() {
    let hub = FakeHub::start().await;
    let (connected, mut first) = tokio::join!(hub.builder("alice").connect(), hub.accept());
    let (_client, mut events) = connected.expect("connect");
    first.send(Session::dm(1, "x")).await;
    assert_eq!(first.recv().await, json!({"type":"ack","seq":1}));
    // What a hub before issue 7 answers.
    first
        .send(
            json!({"type":"error","code":"unknown_type","message":"unknown request type \"ack\""}),
        )
        .await;
    first.send(Session::dm(2, "y")).await;
    first.silence(Duration::from_millis(150)).await;
    drop(first);
    let mut second = hub.accept().await;
    assert_eq!(query_param(&second.query, "resume"), None, "{}", second.query);
    // Such a hub starts every session at seq 1: it is not dropped.
    second.send(Session::dm(1, "z")).await;
    let mut texts = Vec::new();
    while texts.len() < 3 {
        if let Event::Direct { text, .. } = next_message(&mut events).await {
            texts.push(text);
        }
    }
    assert_eq!(texts, ["x", "y", "z"]);
}

#[test]
fn generated_ids_grow_across_clients() {
    // The counter starts from the clock, so a restarted program does not
    // reuse ids the hub remembers for deduplication.
    let a = crate::client::first_id();
    std::thread::sleep(Duration::from_millis(2));
    let b = crate::client::first_id();
    assert!(b > a + 1000, "{a} {b}");
    let _ = Client::builder("ws://127.0.0.1:1", "x");
}
