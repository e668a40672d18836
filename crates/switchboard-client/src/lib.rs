//! An async Rust client for the Switchboard messaging hub, protocol v1.
//!
//! The shape follows Qt's `QWebSocket`: a [`Client`] with methods to send
//! (direct messages, messages to the server, rooms, presence, binary) and a
//! stream of [`Event`]s standing in for signals (connected, disconnected,
//! messages, acks, errors, state changes).
//!
//! # Design
//! - One background task owns the socket. [`Client`] handles talk to it
//!   through a bounded send queue; [`Events`] is a bounded channel back. A
//!   full send queue is a typed error ([`SendError::QueueFull`]), never
//!   unbounded memory.
//! - Every request gets an id (yours, or a per-client counter) that the
//!   hub's [`Event::Ack`] or [`Event::Error`] names.
//! - When the connection drops, the client reconnects with exponential
//!   backoff and jitter ([`ReconnectPolicy`]), re-joins its rooms and renews
//!   its presence subscriptions. A hub that refuses the handshake with an
//!   HTTP 4xx status (name taken, invalid name) ends it: retrying cannot help.
//!   A keepalive notices a connection that died silently.
//! - Wire shapes come from `switchboard-protocol`; framing from tungstenite.
//!
//! # Example
//! ```no_run
//! use switchboard_client::{Client, Event};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = Client::connect("ws://127.0.0.1:8888", "alice").await?;
//! client.join("lobby")?;
//! client.send_direct("bob", "hi")?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Direct { from, text, .. } => println!("[{from}] {text}"),
//!         Event::Room { room, from, text, .. } => {
//!             println!("[#{room} {}] {text}", from.as_deref().unwrap_or("server"))
//!         }
//!         Event::Disconnected { code, reason } => eprintln!("lost ({code:?}): {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod client;
mod connection;
mod error;
mod event;
mod options;
mod outbound;
mod task;

pub use client::Client;
pub use error::{ConnectError, SendError};
pub use event::{Event, Events, State, Welcome};
pub use options::{CaPem, ClientBuilder, ReconnectPolicy};
pub use outbound::{Outbound, Target};
pub use switchboard_protocol::v1::{ErrorCode, Limits, PresenceEvent};
