//! Integration tests: the real server on 127.0.0.1:0 (or the real binary),
//! real clients over loopback. One test binary, one module per area: each
//! integration-test binary links the whole server, so one binary instead of
//! two dozen saves gigabytes of disk and most of the link time.

mod common;

mod api;
mod api_rooms;
mod autobahn;
mod classic;
mod cli;
mod client_lib;
mod client_resume;
mod cluster;
mod cluster_durability;
mod config_file;
mod crash;
mod durability;
mod fuzz_regressions;
mod limits;
mod properties;
mod protocol_v1;
mod qt_interop;
mod security;
mod shutdown;
mod spec_examples;
mod store_redis;
mod tls;
