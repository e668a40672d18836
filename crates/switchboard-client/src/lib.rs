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
//! - **Resume (client-ack mode, the default).** The client keeps the highest
//!   delivery `seq` it has put in the event queue ([`Client::last_seq`]),
//!   connects with `?resume=SEQ` (0 the first time) and acknowledges
//!   deliveries with cumulative `ack`s: after every 64 deliveries, within
//!   50 ms of a delivery, and before a requested close. The hub keeps every
//!   stored delivery (private messages, operator messages, receipts) until
//!   acknowledged and replays the rest, with their original `seq`, when the
//!   client reconnects: no gap, no duplicate. A delivery whose `seq` is not
//!   above the last one is dropped, whatever the hub does. `seq` increases
//!   across sessions but may skip numbers (presence and room messages are
//!   not kept for an absent client). A delivery counts as received once it
//!   is in the event queue: events not yet read when the program dies are
//!   not replayed. [`ClientBuilder::acks`] turns this off.
//! - **Retried sends.** Messages the hub deduplicates (private messages,
//!   text or binary, and room publishes) stay in the in-flight window, which
//!   [`ClientBuilder::max_in_flight`] bounds, with their encoded frame until
//!   the hub answers. After a reconnect, once
//!   rooms are re-joined, the unanswered ones are re-sent with the same ids
//!   in their original order; the hub recognises the ids and answers a
//!   retry of an accepted message with [`AckStatus::Duplicate`] instead of
//!   delivering it twice. Generated ids start from the creation time in
//!   microseconds so a restarted program does not reuse ids the hub still
//!   remembers. Other requests in flight (messages to the server, binary
//!   room payloads, joins, listings) are reported as [`Event::Lost`].
//!   The hub may answer durable sends out of request order (an ack follows
//!   the store's commit); answers are matched by id.
//! - **Room history.** [`Client::join_since`] replays what a room keeps after
//!   a room sequence number or a time; after a reconnect each room is
//!   re-joined from the last `rseq` seen in it (or the original `since`).
//! - **Receipts.** [`Client::send_direct_with_receipt`] asks the hub for an
//!   [`Event::Delivered`] once the recipient has acknowledged the message.
//! - Every queue is bounded: the send queue, the event queue, the in-flight
//!   window (which holds the frames to re-send) and the hub's own.
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
#[cfg(test)]
mod tests;

pub use client::Client;
pub use error::{ConnectError, SendError};
pub use event::{Event, Events, State, Welcome};
pub use options::{CaPem, ClientBuilder, ReconnectPolicy};
pub use outbound::{Outbound, Target};
pub use switchboard_protocol::v1::{AckStatus, ErrorCode, Limits, PresenceEvent, Since};
