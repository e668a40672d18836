//! Load generator and reference peers for measuring Switchboard (issue 6).
//!
//! - [`conn`]: a minimal, cheap client for the three targets — a WebSocket
//!   client (classic or v1) that writes many frames per syscall and parses
//!   server frames straight from its read buffer, and the raw relay's
//!   length-prefixed framing. The generator runs on one core, so its own cost
//!   per message must stay well below the server's.
//! - [`payload`]: the sequence number and send timestamp inside each message.
//! - [`stats`]: percentiles and `/proc` readings (server CPU time and RSS).
//! - [`workloads`]: `dm`, `fanout`, `idle`, `rtt` and `churn`.
//! - [`report`]: turns result lines into the tables of docs/performance.md.
//!
//! The binaries are `switchboard-bench` (the generator), `naive-hub`
//! (reference 1) and `raw-relay` (reference 2).

pub mod conn;
pub mod payload;
pub mod report;
pub mod stats;
pub mod workloads;
