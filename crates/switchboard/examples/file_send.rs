//! Binary file transfer between two clients, checked with a checksum.
//!
//! ```text
//! cargo run --example file_send                           # in-process hub, 512 KiB of test data
//! cargo run --example file_send -- 127.0.0.1:8888 ./photo.jpg
//! ```

use std::time::Duration;

use switchboard_client::{Client, Event};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = match args.next() {
        Some(addr) => addr,
        None => start_hub()?,
    };
    let data = match args.next() {
        Some(path) => std::fs::read(path)?,
        None => (0..512 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect(),
    };

    let url = format!("ws://{addr}");
    let (sender, mut sender_events) = Client::connect(&url, "file-sender").await?;
    let (receiver, mut receiver_events) = Client::connect(&url, "file-receiver").await?;

    let id = sender.send_binary("file-receiver", data.clone())?;
    println!("sent {} bytes, checksum {:016x}", data.len(), checksum(&data));

    let received = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = receiver_events.recv().await {
            if let Event::Binary { from, payload, .. } = event {
                return Some((from, payload));
            }
        }
        None
    })
    .await?;
    let Some((from, payload)) = received else { anyhow::bail!("receiver closed") };
    println!("received {} bytes from {from}, checksum {:016x}", payload.len(), checksum(&payload));
    anyhow::ensure!(payload == data, "checksum mismatch");

    while let Some(event) = sender_events.recv().await {
        match event {
            Event::Ack { id: acked, .. } if acked == id => break,
            Event::Error { message, .. } => anyhow::bail!("refused: {message}"),
            _ => {}
        }
    }
    println!("acked; transfer verified");
    sender.close().await;
    receiver.close().await;
    Ok(())
}

/// FNV-1a, 64 bits: enough to catch a corrupted transfer.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Starts a hub in this process on a free loopback port; returns its address.
fn start_hub() -> anyhow::Result<String> {
    let listener = switchboard::server::bind("127.0.0.1:0".parse()?, 1024)?;
    let addr = listener.local_addr()?;
    let config = switchboard::config::Config::default();
    tokio::spawn(switchboard::server::run(listener, config, std::future::pending()));
    Ok(addr.to_string())
}
