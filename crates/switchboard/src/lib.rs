//! Switchboard: a real-time messaging hub over WebSocket.
//!
//! Named clients connect; the hub knows who is online, routes private
//! messages, room publishes and operator messages, and logs joins, leaves and
//! messages to the server. It speaks the Qt tutorial's protocol ("classic")
//! and the structured protocol v1 on one port.
//!
//! # Layout
//! - [`config`]: every option and limit, from defaults, TOML and flags.
//! - [`hub`]: routing semantics and shared state; no I/O, no HTTP.
//! - [`server`]: the network edge — accept loop, handshake, sessions,
//!   operator API, shutdown.
//! - [`cli`]: the `switchboard connect` terminal client.
//! - [`cluster`]: cluster mode (issue 8), the bus between nodes over Redis.
//! - [`store`]: the durable store (issue 7): inboxes and room history in
//!   an embedded SQLite database, written by one group-commit thread, or
//!   in the cluster's Redis in cluster mode.
//! - [`idle`]: what the crate's threads do when they run out of work
//!   (the binary hands freed memory back to the OS).
//! - [`redis_keys`]: every Redis key and channel of the bus and the store.
//! - wire shapes live in the `switchboard-protocol` crate; the async client
//!   in `switchboard-client`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let config = switchboard::config::Config::default();
//! let listener = switchboard::server::bind("127.0.0.1:0".parse().unwrap(), 1024)?;
//! switchboard::server::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod cli;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod idle;
pub mod redis_keys;
pub mod server;
pub mod store;
