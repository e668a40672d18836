//! An interactive chat client on `switchboard-client`.
//!
//! ```text
//! cargo run --example chat -- ws://127.0.0.1:8888 alice
//! ```
//!
//! Type `@NAME text` for a private message, `/join ROOM`, `#ROOM text` to
//! publish, `/who`, or any other line for the server. Ctrl-D quits.

use switchboard_client::{Client, Event, Outbound};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8888".into());
    let name = args.next().unwrap_or_else(|| "guest".into());
    let (client, mut events) = Client::connect(&url, &name).await?;

    // Events are printed as they come, while stdin is read below.
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                Event::Connected(welcome) => println!("* connected as {}", welcome.name),
                Event::Direct { from, text, .. } => println!("[{from}] {text}"),
                Event::Room { room, from, text, .. } => {
                    println!("[#{room} {}] {text}", from.as_deref().unwrap_or("server"))
                }
                Event::Server { text, .. } => println!("[server] {text}"),
                Event::Presence { name, event, .. } => println!("* {name} {event:?}"),
                Event::Clients { clients, .. } => println!("online: {}", clients.join(", ")),
                Event::Error { message, .. } => println!("error: {message}"),
                Event::Disconnected { reason, .. } => println!("* disconnected: {reason}"),
                Event::Reconnecting { delay, .. } => println!("* reconnecting in {delay:?}"),
                _ => {}
            }
        }
    });
    client.subscribe_presence(None)?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let message = if let Some((to, text)) =
            line.strip_prefix('@').and_then(|r| r.split_once(' '))
        {
            Outbound::direct(to, text)
        } else if let Some((room, text)) = line.strip_prefix('#').and_then(|r| r.split_once(' ')) {
            Outbound::publish(room, text, false)
        } else if let Some(room) = line.strip_prefix("/join ") {
            Outbound::join(room.trim())
        } else if line == "/who" {
            Outbound::who()
        } else {
            Outbound::server(line)
        };
        client.send(message).await?;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.flush()).await;
    client.close().await;
    let _ = printer.await;
    Ok(())
}
