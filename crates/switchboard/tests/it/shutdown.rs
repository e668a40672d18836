//! Graceful shutdown: queued messages are flushed, then every client gets 1001.

use crate::common::process::ServerProcess;
use crate::common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn shutdown_flushes_queues_then_closes_with_1001() {
    let server = TestServer::start().await;
    let mut alice = classic(&server, "alice").await;
    let mut bob = v1(&server, "bob").await;
    for i in 0..1000 {
        server.hub.broadcast(format!("m{i}"));
    }
    let hub = server.hub.clone();
    server.stop().await;
    for client in [&mut alice, &mut bob] {
        let mut received = 0;
        loop {
            match client.recv().await {
                Message::Text(_) => received += 1,
                Message::Close(Some(frame)) => {
                    assert_eq!(u16::from(frame.code), 1001);
                    assert!(frame.reason.contains("shutting down"), "{}", frame.reason);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(received, 1000, "every queued message arrives before the close");
    }
    assert_eq!(hub.client_count(), 0);
}

#[tokio::test]
async fn sigterm_and_sigint_shut_the_binary_down_gracefully() {
    // The second client never answers the close: the server must not wait
    // for it beyond the close handshake's linger.
    for (signal, answers_close) in [("TERM", true), ("INT", false)] {
        let server = ServerProcess::start(&[]).await;
        let (mut client, _) =
            tokio_tungstenite::connect_async(server.ws_url("alice")).await.expect("connect");
        server.signal(signal).await;
        let close = tokio::time::timeout(WAIT, async {
            while let Some(Ok(frame)) = client.next().await {
                if let Message::Close(frame) = frame {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await
        .expect("close in time");
        assert_eq!(close, Some(1001), "SIG{signal}");
        if answers_close {
            // Reading on sends tungstenite's reply to the close and sees the end.
            tokio::time::timeout(WAIT, async { while client.next().await.is_some() {} })
                .await
                .expect("the server ends the connection after the close handshake");
        }
        assert_eq!(server.wait().await, Some(0), "SIG{signal} exits cleanly");
    }
}
