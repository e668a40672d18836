//! Streams of DMs with ids, read back with their seqs (issue 7 tests).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::{WsClient, WAIT};

/// A delivery's seq.
pub fn seq_of(delivery: &Value) -> u64 {
    delivery["seq"].as_u64().unwrap_or_else(|| panic!("delivery without seq: {delivery}"))
}

/// What alice's streaming task saw: the ack status of each message, by index.
pub type Statuses = Vec<Option<String>>;

/// Streams `total` DMs "s0".. (texts "0"..) from `alice` to `to`, at most
/// `window` unacknowledged; after the first `pause_at` it waits for `gate`.
pub fn stream_dms(
    alice: WsClient,
    to: &'static str,
    total: usize,
    pause_at: usize,
    gate: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Statuses> {
    let (mut sink, mut stream) = alice.socket.split();
    let window = Arc::new(Semaphore::new(256));
    let permits = window.clone();
    let writer = tokio::spawn(async move {
        let mut gate = Some(gate);
        for i in 0..total {
            if i == pause_at {
                if let Some(gate) = gate.take() {
                    tokio::time::timeout(WAIT, gate).await.expect("gate in time").expect("gate");
                }
            }
            let permit = tokio::time::timeout(WAIT, permits.clone().acquire_owned())
                .await
                .expect("acks keep coming")
                .expect("semaphore");
            permit.forget();
            let frame =
                json!({"type": "dm", "id": format!("s{i}"), "to": to, "text": i.to_string()});
            sink.send(Message::text(frame.to_string())).await.expect("send");
        }
        sink
    });
    tokio::spawn(async move {
        let mut statuses: Statuses = vec![None; total];
        let mut count = 0;
        while count < total {
            let frame = tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap_or_else(|_| panic!("sender: timed out after {count} acks"))
                .expect("sender stream ended")
                .expect("sender read error");
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(&text).expect("json");
            assert!(
                reply["type"] == "ack" || reply["type"] == "error",
                "the sender got something else than an answer: {reply}"
            );
            let index: usize = reply["id"]
                .as_str()
                .and_then(|id| id.strip_prefix('s'))
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("ack for an id never sent: {reply}"));
            let status = match reply["code"].as_str() {
                Some(code) => format!("error:{code}"),
                None => reply["status"].as_str().unwrap_or("<none>").to_owned(),
            };
            assert!(statuses[index].replace(status).is_none(), "acked twice: {reply}");
            count += 1;
            window.add_permits(1);
        }
        let _sink = writer.await.expect("writer");
        statuses
    })
}

/// Reads bob's deliveries, checking each is the next text of the stream
/// with a higher seq; acks every 500 in client-ack mode. Stops after
/// `until` texts have been processed in total, or at the end of the socket
/// when `until` is None. Returns the last processed seq.
pub async fn read_stream(
    bob: &mut WsClient,
    next_text: &mut usize,
    last_seq: &mut u64,
    until: Option<usize>,
) {
    read_stream_skipping(bob, next_text, last_seq, until, &HashSet::new()).await;
}

/// As [`read_stream`], where the texts in `refused` were refused to the
/// sender (cluster mode, a recipient moving between nodes) and never come.
pub async fn read_stream_skipping(
    bob: &mut WsClient,
    next_text: &mut usize,
    last_seq: &mut u64,
    until: Option<usize>,
    refused: &HashSet<usize>,
) {
    for _ in 0..20_000 {
        while refused.contains(next_text) {
            *next_text += 1;
        }
        if until.is_some_and(|until| *next_text >= until) {
            return;
        }
        let frame = tokio::time::timeout(WAIT, bob.socket.next())
            .await
            .unwrap_or_else(|_| panic!("bob: timed out waiting for text {next_text}"));
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) if until.is_none() => return,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("bob: unexpected {other:?} while waiting for text {next_text}"),
        };
        let got: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(got["type"], "dm", "{got}");
        assert_eq!(
            got["text"],
            next_text.to_string(),
            "gap or duplicate: expected text {next_text}, got {got}"
        );
        assert!(seq_of(&got) > *last_seq, "seq not increasing: {got} after seq {last_seq}");
        *last_seq = seq_of(&got);
        *next_text += 1;
        if *next_text % 500 == 0 {
            // Not fatal: after an operator kick the socket may be closing.
            let ack = json!({"type": "ack", "seq": *last_seq}).to_string();
            let _ = bob.socket.send(Message::text(ack)).await;
        }
    }
    panic!("bob: too many frames");
}

/// Joins `room` with `since` and returns the replayed deliveries (those
/// before the join's ack).
pub async fn join_since(client: &mut WsClient, room: &str, since: Value) -> Vec<Value> {
    client.send_json(json!({"type": "join", "id": "j", "room": room, "since": since})).await;
    let mut replayed = Vec::new();
    for _ in 0..1_000 {
        let frame = client.recv_json().await;
        if frame["type"] == "ack" {
            assert_eq!(frame["id"], "j", "{frame}");
            return replayed;
        }
        assert_eq!((&frame["type"], &frame["room"]), (&json!("room"), &json!(room)), "{frame}");
        replayed.push(frame);
    }
    panic!("no ack for the join");
}

/// The texts of deliveries.
pub fn texts(deliveries: &[Value]) -> Vec<&str> {
    deliveries.iter().map(|d| d["text"].as_str().unwrap_or("<none>")).collect()
}

/// A room delivery's rseq.
pub fn rseq_of(delivery: &Value) -> u64 {
    delivery["rseq"].as_u64().unwrap_or_else(|| panic!("no rseq: {delivery}"))
}
