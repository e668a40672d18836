//! `switchboard connect`: the tutorial's client window as a terminal tool,
//! built on `switchboard-client` and protocol v1.
//!
//! Reads stdin lines (`@DST text`, `#ROOM text`, `/join ROOM`, `/leave ROOM`,
//! `/who`, `/members ROOM`, `/send-file DST PATH`; anything else goes to the
//! server) and prints every event on one line of stdout, as text or JSON.
//! At stdin EOF it waits (bounded) until every request was answered, closes
//! with 1000 and exits 0. Failing to connect is an error with a one-line
//! reason; so is losing the connection for good.

mod line;
mod print;

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use switchboard_client::{
    Client, ClientBuilder, Event, Events, Outbound, ReconnectPolicy, SendError,
};
use tokio::sync::mpsc;

use line::Line;

/// Lines read ahead of sending; the reader thread waits beyond this.
const STDIN_BACKLOG: usize = 64;

/// Options of `switchboard connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server URL, e.g. ws://127.0.0.1:8888 or wss://hub.example:8888
    pub url: String,
    /// Client name.
    #[arg(long)]
    pub name: String,
    /// Print one JSON object per received event.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait at end of input for every message to be acknowledged.
    #[arg(long, default_value_t = 10)]
    pub flush_timeout_secs: u64,
    /// Do not reconnect when the connection is lost.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Reconnection attempts in a row before giving up.
    #[arg(long, default_value_t = 20)]
    pub reconnect_attempts: u32,
    /// Also trust this CA certificate (PEM) for wss:// URLs, e.g. a hub's self-signed one.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<std::path::PathBuf>,
}

/// Runs the client until stdin ends or the connection is lost for good.
///
/// # Errors
/// When the connection fails (refused, name taken, bad name), when it is
/// lost and cannot be re-established, or when messages are still
/// unacknowledged after the flush timeout.
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let policy = if args.no_reconnect {
        ReconnectPolicy::disabled()
    } else {
        ReconnectPolicy::exponential(Duration::from_millis(500), Duration::from_secs(10))
            .max_attempts(Some(args.reconnect_attempts))
    };
    let mut builder = ClientBuilder::new(&args.url, &args.name).reconnect(policy);
    if let Some(ca) = &args.ca {
        builder = builder.ca_pem(ca.as_path());
    }
    let (client, events) =
        builder.connect().await.with_context(|| format!("cannot connect to {}", args.url))?;
    let printer = tokio::spawn(print_events(events, args.json));

    let mut lines = stdin_lines();
    loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(line) => send_line(&client, &line.context("cannot read stdin")?).await?,
                None => break,
            },
            () = client.closed() => {
                let reason = printer.await.unwrap_or_default();
                return Err(lost(&args.url, reason));
            }
        }
    }

    let timeout = Duration::from_secs(args.flush_timeout_secs);
    let flushed = tokio::time::timeout(timeout, client.flush()).await;
    client.close().await;
    let reason = printer.await.unwrap_or_default();
    match flushed {
        Ok(Ok(())) => Ok(()),
        // The client closed before everything was answered: the connection is gone.
        Ok(Err(_)) => Err(lost(&args.url, reason)),
        Err(_) => anyhow::bail!(
            "not every message was acknowledged within {}s; some may be lost",
            timeout.as_secs()
        ),
    }
}

fn lost(url: &str, reason: Option<String>) -> anyhow::Error {
    anyhow::anyhow!("connection to {url} lost: {}", reason.unwrap_or_else(|| "closed".into()))
}

/// Stdin lines from a plain thread: a read blocked in tokio's blocking pool
/// would keep the runtime (and so the process) alive after the connection
/// is lost. Invalid UTF-8 is replaced rather than fatal; CRLF is accepted.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (sender, receiver) = mpsc::channel(STDIN_BACKLOG);
    let spawned = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let line = match stdin.read_until(b'\n', &mut buffer) {
                Ok(0) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buffer);
                    Ok(line.trim_end_matches('\n').trim_end_matches('\r').to_owned())
                }
                Err(error) => Err(error),
            };
            let failed = line.is_err();
            if sender.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    if let Err(error) = spawned {
        // Without the thread, the receiver reports end of input at once.
        eprintln!("switchboard: cannot read stdin: {error}");
    }
    receiver
}

/// Sends what `line` asks for; local mistakes (usage, unreadable file) are
/// reported on stderr and do not end the session.
async fn send_line(client: &Client, line: &str) -> anyhow::Result<()> {
    let message = match line::parse(line) {
        Line::Direct { to, text } => Outbound::direct(to, text),
        Line::Publish { room, text } => Outbound::publish(room, text, false),
        Line::Join(room) => Outbound::join(room),
        Line::Leave(room) => Outbound::leave(room),
        Line::Who => Outbound::who(),
        Line::Members(room) => Outbound::members(room),
        Line::Server(text) => Outbound::server(text),
        Line::SendFile { to, path } => match tokio::fs::read(path).await {
            Ok(data) => match to.strip_prefix('#') {
                Some(room) => Outbound::binary_room(room, data),
                None => Outbound::binary_to(to, data),
            },
            Err(error) => {
                eprintln!("error: cannot read {path}: {error}");
                return Ok(());
            }
        },
        Line::Usage(usage) => {
            eprintln!("usage: {usage}");
            return Ok(());
        }
        Line::Empty => return Ok(()),
    };
    match client.send(message).await {
        // A closed client is reported by the caller, with the reason.
        Ok(_) | Err(SendError::Closed) => Ok(()),
        Err(error) => {
            eprintln!("error: {error}");
            Ok(())
        }
    }
}

/// Prints every event until the client closes; returns the last reason the
/// connection went down, for the exit message.
async fn print_events(mut events: Events, json: bool) -> Option<String> {
    let mut last_reason = None;
    while let Some(event) = events.recv().await {
        match &event {
            Event::Disconnected { reason, .. } => last_reason = Some(reason.clone()),
            Event::ConnectFailed { error, .. } => last_reason = Some(error.clone()),
            _ => {}
        }
        let line = if json {
            print::json(&event).map(|value| value.to_string())
        } else {
            print::text(&event)
        };
        if let Some(line) = line {
            let mut out = std::io::stdout().lock();
            // A closed stdout (e.g. `| head`) must not kill the session.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
    last_reason
}
