//! Criterion micro-benchmarks for the hot path (issue 6): classic JSON
//! routing, v1 envelope encode/decode (the DM parsed with its strings
//! borrowed, its one-recipient frame, the ack), a registry lookup plus outbox push
//! through [`Hub::send_direct`], and the hub's side of a broadcast to 1,000
//! clients with the cache cold (without and with the durable store). Run with `cargo bench --workspace`; CI only
//! checks that they compile (`cargo bench --no-run`). docs/performance.md
//! has the end-to-end figures from `scripts/bench.sh`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_main, Criterion, Throughput};
use switchboard::config::Config;
use switchboard::hub::{Body, Hub, HubLimits, Message, Outgoing, Protocol, SendMeta};
use switchboard::store::Store;
use switchboard_protocol::{classic, v1};

/// A classic DM as the load generator sends it: ~100 bytes.
const CLASSIC_DM: &str = r##"{"dst":"receiver42","msg":"#s=123456;t=987654321;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"##;

/// The same DM in protocol v1.
const V1_DM: &str = r##"{"type":"dm","to":"receiver42","text":"#s=123456;t=987654321;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"##;

const TEXT: &str =
    "#s=123456;t=987654321;xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

fn classic_routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("classic");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_dm", |b| b.iter(|| classic::parse(black_box(CLASSIC_DM))));
    group.bench_function("encode_direct", |b| {
        b.iter(|| {
            classic::encode_direct(black_box("sender42"), black_box("receiver42"), black_box(TEXT))
        })
    });
    group.bench_function("parse_and_encode", |b| {
        b.iter(|| match classic::parse(black_box(CLASSIC_DM)) {
            classic::Inbound::Direct { dst, msg } => classic::encode_direct("sender42", &dst, &msg),
            classic::Inbound::ToServer(text) => text,
        })
    });
    // What the session does per classic DM since issue 6's tuning: a borrowed
    // parse and the recipient's frame spliced from the sender's JSON string.
    group.bench_function("parse_direct_raw", |b| {
        b.iter(|| classic::parse_direct(black_box(CLASSIC_DM)).map(|dm| dm.msg_json.len()))
    });
    group.bench_function("parse_and_splice", |b| {
        b.iter(|| match classic::parse_direct(black_box(CLASSIC_DM)) {
            Some(dm) => {
                let frame = classic::encode_direct_raw("sender42", &dm.dst, &dm.msg_json);
                (frame, dm.msg.into_owned())
            }
            None => (String::new(), String::new()),
        })
    });
    group.finish();
}

fn v1_envelopes(c: &mut Criterion) {
    let mut group = c.benchmark_group("v1");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_request_dm", |b| b.iter(|| v1::parse_request(black_box(V1_DM))));
    // What the hub's dispatch uses: the strings stay borrowed from the frame.
    group.bench_function("parse_dm_borrowed", |b| b.iter(|| v1::parse_dm(black_box(V1_DM))));
    let delivery = v1::Delivery::Dm { from: "sender42", to: "receiver42", text: TEXT };
    group.bench_function("encode_tail_dm", |b| {
        b.iter(|| black_box(&delivery).encode_tail(1_700_000_000_000))
    });
    group.bench_function("encode_frame_dm", |b| {
        b.iter(|| black_box(&delivery).encode_frame(1_700_000_000_000, black_box(12345)))
    });
    group.bench_function("encode_ack", |b| {
        let ack = v1::Reply::ack_with("m-123456", v1::AckStatus::Live);
        b.iter(|| black_box(&ack).encode())
    });
    let tail = delivery.encode_tail(1_700_000_000_000);
    group.bench_function("frame_per_recipient", |b| {
        b.iter(|| v1::frame(black_box(&tail), black_box(12345)))
    });
    group.finish();
}

fn hub_routing(c: &mut Criterion) {
    let hub = Hub::new(HubLimits::default());
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
    let mut keep = Vec::new();
    for i in 0..10_000 {
        let name = hub.client_name(&format!("client{i}")).unwrap_or_else(|e| panic!("{e}"));
        keep.push(hub.register(name, addr, Protocol::Classic).unwrap_or_else(|e| panic!("{e}")));
    }
    let sender = keep[0].0.client().clone();
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send_direct_among_10k", |b| {
        b.iter(|| {
            let _ = hub.send_direct(
                &sender,
                black_box("client4242"),
                TEXT.to_owned(),
                SendMeta::default(),
            );
            // Drain so the outbox never reaches its byte limit.
            let _ = keep[4242].1.try_recv();
        })
    });
    group.bench_function("message_classic_text", |b| {
        b.iter(|| {
            let message = Message::new(Body::Direct {
                from: hub.client_name("sender42").unwrap_or_else(|e| panic!("{e}")),
                to: hub.client_name("receiver42").unwrap_or_else(|e| panic!("{e}")),
                text: TEXT.into(),
            });
            message.classic_text().map(str::len)
        })
    });
    group.finish();
}

/// An operator broadcast to 1,000 classic clients, timed alone: each
/// iteration first pushes the hub's state out of the core's L2 cache (as
/// the 1,000 writers and the kernel do between two broadcasts on a real
/// server), and drains the outboxes afterwards, untimed. Twice: without a
/// store (`--ephemeral`) and with one (the default: each delivery is held
/// by the recipient's inbox until the writer reports it written, which
/// the drain does here).
fn hub_broadcast(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(RECEIVERS as u64));
    broadcast_cold(&mut group, "broadcast_to_1000_cold", &Hub::new(HubLimits::default()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (hub, _store) = durable_hub(dir.path());
    broadcast_cold(&mut group, "broadcast_to_1000_cold_durable", &hub);
    group.finish();
}

const RECEIVERS: usize = 1000;

fn broadcast_cold(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    hub: &Hub,
) {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
    let mut keep = Vec::new();
    for i in 0..RECEIVERS {
        let name = hub.client_name(&format!("client{i}")).unwrap_or_else(|e| panic!("{e}"));
        keep.push(hub.register(name, addr, Protocol::Classic).unwrap_or_else(|e| panic!("{e}")));
    }
    // Larger than the L2 cache of the machines this runs on (2-4 MiB).
    let mut evict = vec![0u8; 16 << 20];
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for i in 0..iters {
                for line in evict.chunks_mut(64) {
                    line[0] = line[0].wrapping_add(1);
                }
                let started = std::time::Instant::now();
                black_box(hub.broadcast(TEXT.to_owned()));
                total += started.elapsed();
                for (registration, outbox) in &mut keep {
                    while let Some(item) = outbox.try_recv() {
                        if let Outgoing::Deliver { seq, stored: true, .. } = item {
                            hub.written(registration.client(), seq);
                        }
                    }
                }
                black_box(i);
            }
            black_box(&evict);
            total
        })
    });
}

/// A hub on a fresh SQLite store in `dir`, configured as `serve` opens it
/// by default.
fn durable_hub(dir: &std::path::Path) -> (Hub, Store) {
    let config = Config { data_dir: dir.join("data"), ..Config::default() };
    let hub = Hub::new(config.hub_limits());
    let store_config = config.store_config().unwrap_or_else(|| unreachable!("durable by default"));
    let (store, snapshot) =
        Store::open(store_config, hub.store_listener()).unwrap_or_else(|e| panic!("{e}"));
    assert!(hub.attach_store(store.clone(), snapshot));
    (hub, store)
}

/// Every group, with Criterion's command-line configuration (as
/// `criterion_group!` would generate, minus its undocumented `pub fn`).
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    classic_routing(&mut c);
    v1_envelopes(&mut c);
    hub_routing(&mut c);
    hub_broadcast(&mut c);
}

criterion_main!(benches);
