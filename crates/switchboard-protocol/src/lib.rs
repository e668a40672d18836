//! Wire shapes of the Switchboard messaging hub.
//!
//! This crate is pure: it turns bytes into typed values and typed values into
//! bytes, and never does I/O, never panics on input and knows nothing about
//! tokio, sockets or the hub's state. Both the server and the client library
//! depend on it, so the two sides cannot drift apart.
//!
//! # Layout
//! - [`name`]: validated client and room names ([`ClientName`], [`RoomName`]).
//! - [`classic`]: the Qt tutorial's protocol — plain text plus `{"src","dst","msg"}`.
//! - [`v1`]: the structured protocol negotiated with the `switchboard.v1` subprotocol.
//! - [`binary`]: the small header in front of binary payloads (v1 only).
//! - [`close`]: the close codes the hub uses and what they mean.

pub mod binary;
mod borrowed;
pub mod classic;
pub mod close;
mod json_text;
pub mod name;
pub mod v1;

pub use name::{ClientName, NameError, RoomName};

/// The WebSocket subprotocol that selects protocol v1.
pub const SUBPROTOCOL_V1: &str = "switchboard.v1";
