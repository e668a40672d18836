//! Quote push: a backend publishes prices to a room over the operator HTTP
//! API (`POST /api/rooms/quotes/messages`), and N subscribers receive them.
//!
//! ```text
//! cargo run --example quotes                             # in-process hub, 5 subscribers
//! cargo run --example quotes -- 127.0.0.1:8888 20        # a running hub, 20 subscribers
//! ```

use std::time::Duration;

use switchboard_client::{Client, Event};

const ROOM: &str = "quotes";
const PRICES: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = match args.next() {
        Some(addr) => addr,
        None => start_hub()?,
    };
    let subscribers: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5);

    // Subscribers join the room and count what they receive.
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let (client, mut events) =
            Client::connect(format!("ws://{addr}"), format!("sub-{i}")).await?;
        let join = client.join(ROOM)?;
        while let Some(event) = events.recv().await {
            if event.request_id() == Some(join.as_str()) {
                break;
            }
        }
        tasks.push(tokio::spawn(async move {
            let mut received = 0;
            while received < PRICES {
                match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                    Ok(Some(Event::Room { text, .. })) => {
                        received += 1;
                        if i == 0 {
                            println!("sub-0 got {text}");
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            client.close().await;
            received
        }));
    }

    // The backend: plain HTTP, no WebSocket.
    let http = reqwest::Client::new();
    for tick in 0..PRICES {
        let price = format!("EURUSD {:.4}", 1.0850 + tick as f64 * 0.0001);
        let reply = http
            .post(format!("http://{addr}/api/rooms/{ROOM}/messages"))
            .body(price)
            .send()
            .await?
            .error_for_status()?;
        let delivered: serde_json::Value = reply.json().await?;
        println!("published tick {tick}: {delivered}");
    }

    let mut total = 0;
    for task in tasks {
        total += task.await?;
    }
    println!("{subscribers} subscribers received {total} of {} prices", subscribers * PRICES);
    Ok(())
}

/// Starts a hub in this process on a free loopback port; returns its address.
fn start_hub() -> anyhow::Result<String> {
    let listener = switchboard::server::bind("127.0.0.1:0".parse()?, 1024)?;
    let addr = listener.local_addr()?;
    let config = switchboard::config::Config::default();
    tokio::spawn(switchboard::server::run(listener, config, std::future::pending()));
    Ok(addr.to_string())
}
