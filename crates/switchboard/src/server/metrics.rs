//! `GET /metrics`: the hub's counters in the Prometheus text exposition
//! format (OpenMetrics 1.0, which Prometheus scrapes natively), through
//! `prometheus-client`.
//!
//! Cheap on the hot path (issue 6): every counter is one relaxed atomic,
//! pre-resolved at start (no label lookup per message); sessions count in
//! local variables and add them here once per write batch or every
//! [`FLUSH_EVERY`] frames read; the routing latency histogram (which takes a
//! lock) sees one frame in [`SAMPLE_EVERY`]. Queued bytes are summed over
//! the clients at scrape time, not tracked per push.
//!
//! The registry is process-wide: several servers in one process (tests)
//! add up their counts.

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Context;
use crate::hub::CloseReason;

/// A session adds its local counts to the shared counters every this many
/// frames read (and when it ends).
pub(crate) const FLUSH_EVERY: u32 = 64;

/// One routed frame in this many is timed for the latency histogram.
pub(crate) const SAMPLE_EVERY: u32 = 64;

type Labels = Vec<(&'static str, &'static str)>;

/// What a client sent, for `switchboard_messages_in_total{kind}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InKind {
    /// A classic text frame (a DM or a message to the server).
    ClassicText,
    /// A classic binary frame (refused).
    ClassicBinary,
    /// A v1 request.
    V1Text,
    /// A v1 binary frame.
    V1Binary,
}

const IN_KINDS: [&str; 4] = ["classic_text", "classic_binary", "v1_text", "v1_binary"];

/// What the hub wrote to a client, for `switchboard_messages_out_total{kind}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OutKind {
    /// A routed message (DM, room, operator, presence, binary).
    Delivery,
    /// A reply or notice to the client's own request.
    Reply,
}

const OUT_KINDS: [&str; 2] = ["delivery", "reply"];

/// The process's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connections: Gauge,
    connections_total: Counter,
    messages_in: [Counter; 4],
    messages_out: [Counter; 2],
    bytes_in: Counter,
    bytes_out: Counter,
    queued_bytes: Gauge,
    store_queued_bytes: Gauge,
    stored_bytes: Gauge,
    disconnects: Family<Labels, Counter>,
    route_seconds: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub(crate) fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let connections = Gauge::default();
        registry.register("open_connections", "WebSocket sessions open now", connections.clone());
        let connections_total = Counter::default();
        registry.register(
            "connections",
            "WebSocket sessions opened since start",
            connections_total.clone(),
        );
        let messages_in_family = Family::<Labels, Counter>::default();
        registry.register(
            "messages_in",
            "Data frames received from clients, by kind",
            messages_in_family.clone(),
        );
        let messages_in =
            IN_KINDS.map(|kind| messages_in_family.get_or_create(&vec![("kind", kind)]).clone());
        let messages_out_family = Family::<Labels, Counter>::default();
        registry.register(
            "messages_out",
            "Frames written to clients, by kind",
            messages_out_family.clone(),
        );
        let messages_out =
            OUT_KINDS.map(|kind| messages_out_family.get_or_create(&vec![("kind", kind)]).clone());
        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Payload bytes of data frames received",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register("sent_bytes", "Payload bytes of frames written", bytes_out.clone());
        let queued_bytes = Gauge::default();
        registry.register(
            "queued_bytes",
            "Bytes waiting in client outboxes (summed at scrape time)",
            queued_bytes.clone(),
        );
        let store_queued_bytes = Gauge::default();
        registry.register(
            "store_queued_bytes",
            "Bytes of operations waiting for the message store's thread; at its 64 MiB limit, \
             messages that must be stored are refused (read at scrape time)",
            store_queued_bytes.clone(),
        );
        let stored_bytes = Gauge::default();
        registry.register(
            "stored_bytes",
            "Bytes of stored, unacknowledged messages, counted against store_max_bytes \
             (read at scrape time)",
            stored_bytes.clone(),
        );
        let disconnects = Family::<Labels, Counter>::default();
        registry.register("disconnects", "Sessions ended, by reason", disconnects.clone());
        // 100 ns .. ~13 ms: a frame typically routes in well under 1 µs.
        let route_seconds = Histogram::new(exponential_buckets(1e-7, 2.0, 18));
        registry.register(
            "route_seconds",
            "Time to parse and route one client frame into the recipients' outboxes (1 frame in 64 sampled)",
            route_seconds.clone(),
        );
        Metrics {
            registry,
            connections,
            connections_total,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            queued_bytes,
            store_queued_bytes,
            stored_bytes,
            disconnects,
            route_seconds,
        }
    }

    /// A session started.
    pub(crate) fn connected(&self) {
        self.connections.inc();
        self.connections_total.inc();
    }

    /// A session ended with `reason`.
    pub(crate) fn disconnected(&self, reason: &CloseReason) {
        self.connections.dec();
        self.disconnects.get_or_create(&vec![("reason", reason_label(reason))]).inc();
    }

    /// Adds a session's local counts of frames read.
    pub(crate) fn add_in(&self, counts: &mut InCounts) {
        for (counter, n) in self.messages_in.iter().zip(counts.frames.iter_mut()) {
            if *n > 0 {
                counter.inc_by(u64::from(std::mem::take(n)));
            }
        }
        if counts.bytes > 0 {
            self.bytes_in.inc_by(std::mem::take(&mut counts.bytes));
        }
        counts.pending = 0;
    }

    /// Adds one write batch's counts.
    pub(crate) fn add_out(&self, counts: &OutCounts) {
        for (counter, n) in self.messages_out.iter().zip(counts.frames) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        if counts.bytes > 0 {
            self.bytes_out.inc_by(counts.bytes);
        }
    }

    /// Records one sampled routing time.
    pub(crate) fn observe_route(&self, seconds: f64) {
        self.route_seconds.observe(seconds);
    }
}

/// A reader's counts not yet added to the shared counters.
#[derive(Debug, Default)]
pub(crate) struct InCounts {
    /// Per [`InKind`]; `u32`, as they are added every [`FLUSH_EVERY`]
    /// frames (a smaller reader task, issue 6).
    frames: [u32; 4],
    bytes: u64,
    pending: u32,
}

impl InCounts {
    /// Counts one frame; returns true when it is time to [`Metrics::add_in`].
    pub(crate) fn count(&mut self, kind: InKind, bytes: usize) -> bool {
        self.frames[kind as usize] += 1;
        self.bytes += bytes as u64;
        self.pending += 1;
        self.pending >= FLUSH_EVERY
    }
}

/// One write batch's counts.
#[derive(Debug, Default)]
pub(crate) struct OutCounts {
    frames: [u64; 2],
    bytes: u64,
}

impl OutCounts {
    /// Counts one frame written.
    pub(crate) fn count(&mut self, kind: OutKind, bytes: usize) {
        self.frames[kind as usize] += 1;
        self.bytes += bytes as u64;
    }

    /// Messages among the frames counted (not replies or control frames).
    pub(crate) fn deliveries(&self) -> u64 {
        self.frames[OutKind::Delivery as usize]
    }
}

fn reason_label(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Shutdown => "shutdown",
        CloseReason::InvalidUtf8 => "invalid_utf8",
        CloseReason::TooBig { .. } => "too_big",
        CloseReason::ProtocolError(_) => "protocol_error",
        CloseReason::SlowConsumer { .. } => "slow_consumer",
        CloseReason::Kicked(_) => "kicked",
        CloseReason::KeepaliveTimeout => "keepalive_timeout",
        CloseReason::RateLimited => "rate_limited",
        CloseReason::PeerClosed { .. } => "peer_closed",
        CloseReason::Dropped(_) => "dropped",
        CloseReason::TokenExpired => "token_expired",
        CloseReason::IdleTimeout { .. } => "idle_timeout",
        CloseReason::Internal(_) => "internal",
    }
}

/// `GET /metrics`.
pub(crate) async fn handler(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    let metrics = global();
    metrics.queued_bytes.set(i64::try_from(ctx.hub.queued_bytes()).unwrap_or(i64::MAX));
    let store_queued = ctx.hub.store().map_or(0, crate::store::Store::queued_bytes);
    metrics.store_queued_bytes.set(i64::try_from(store_queued).unwrap_or(i64::MAX));
    metrics.stored_bytes.set(i64::try_from(ctx.hub.stored_bytes()).unwrap_or(i64::MAX));
    let mut body = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = encode(&mut body, &metrics.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reach_the_exposition() {
        let metrics = global();
        let mut counts = InCounts::default();
        let flush = (0..FLUSH_EVERY).map(|_| counts.count(InKind::ClassicText, 10)).last();
        assert_eq!(flush, Some(true));
        metrics.add_in(&mut counts);
        let mut out = OutCounts::default();
        out.count(OutKind::Delivery, 7);
        metrics.add_out(&out);
        metrics.connected();
        metrics.disconnected(&CloseReason::SlowConsumer { limit: 1 });
        metrics.observe_route(3e-6);
        let mut text = String::new();
        encode(&mut text, &metrics.registry).unwrap_or_default();
        for line in [
            "# TYPE switchboard_messages_in counter",
            "switchboard_messages_in_total{kind=\"classic_text\"}",
            "switchboard_messages_out_total{kind=\"delivery\"}",
            "switchboard_received_bytes_total",
            "switchboard_sent_bytes_total",
            "switchboard_open_connections",
            "switchboard_connections_total",
            "switchboard_queued_bytes",
            "switchboard_store_queued_bytes",
            "switchboard_stored_bytes",
            "switchboard_disconnects_total{reason=\"slow_consumer\"}",
            "switchboard_route_seconds_bucket{le=",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
