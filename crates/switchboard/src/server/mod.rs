//! The network edge: the only module that knows HTTP, axum and sockets.
//!
//! [`run`] takes a bound listener and a shutdown trigger (as mini-redis's
//! `server::run` does), so tests bind port 0 and stop the server themselves.
//! One port serves everything: the WebSocket endpoint and the page at `/`,
//! the operator API under `/api`, and health checks.
//!
//! Shutdown is explicit, because hyper's graceful shutdown does not cover
//! upgraded connections: the [`CancellationToken`] tells every session to
//! flush its queue and close with 1001, and the [`TaskTracker`] lets [`run`]
//! wait for them, bounded by the drain timeout.

mod api;
pub(crate) mod auth;
mod contention;
mod dispatch;
mod echo;
mod frame_clock;
mod handshake;
mod keepalive;
mod listener;
mod metrics;
mod read_ahead;
mod session;
pub mod tls;
mod web;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::ApiError;
pub use auth::{AccessError, AuthError, CapError};
pub use handshake::HandshakeError;

use crate::config::Config;
use crate::hub::{CloseReason, Hub};

/// Shared by every handler: the hub, the configuration and the shutdown wiring.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) hub: Hub,
    pub(crate) config: Config,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Access control (issue 5): tokens, origins, forwarded addresses, caps.
    pub(crate) access: auth::Access,
    /// One copy for every session, not one per session (issue 6, idle memory).
    pub(crate) session_settings: Arc<session::SessionSettings>,
}

/// Binds `addr` with the configured accept backlog, so a burst of connects
/// waits in the kernel's queue instead of being dropped.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves the hub on `listener` until `shutdown` resolves, then closes every
/// session gracefully and returns.
///
/// # Errors
/// If the listener's address cannot be read, or the server must not start
/// with this configuration ([`AccessError`], `InvalidInput`: e.g. a
/// non-loopback address without an admin token); accept errors are retried.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let hub = Hub::new(config.hub_limits());
    run_with_hub(listener, config, hub, shutdown).await
}

/// As [`run`], with a hub the caller keeps a handle to (tests, embedding).
///
/// # Errors
/// As [`run`].
pub async fn run_with_hub(
    listener: TcpListener,
    config: Config,
    hub: Hub,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    // --- access control (issue 5): refuse to start with the operator API
    // open to the network, or with unreadable keys, before serving anything.
    let access = auth::Access::new(&config, local)?;
    // Read the certificate before serving anything: a bad file is fatal now,
    // not a failure at each client's handshake.
    let tls = tls::acceptor(&config)?;
    // --- durability (issue 7): open the store (and restore the hub's state
    // from it) before serving anything; a store that cannot open is fatal.
    let cluster = config.cluster_options();
    let store = match config.store_config() {
        // Cluster mode: the inboxes live in the cluster's Redis, so that a
        // client resumes on any node (issue 7); nothing is loaded at start.
        Some(store_config) if cluster.is_some() => {
            let options = cluster.as_ref().map(|c| crate::store::RedisStoreOptions {
                url: c.url.clone(),
                node_id: c.node_id.clone(),
            });
            let options = options.ok_or_else(|| io::Error::other("cluster options"))?;
            let store =
                crate::store::Store::open_redis(store_config, options, hub.store_listener())
                    .map_err(|e| io::Error::other(format!("cannot open the message store: {e}")))?;
            tracing::info!("message store: shared inboxes in the cluster's Redis");
            hub.attach_store(store.clone(), crate::store::Snapshot::default());
            Some(store)
        }
        Some(store_config) => {
            let dir = store_config.data_dir.display().to_string();
            let listener = hub.store_listener();
            let (store, snapshot) = tokio::task::spawn_blocking(move || {
                crate::store::Store::open(store_config, listener)
            })
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("cannot open the message store: {e}")))?;
            tracing::info!(data_dir = %dir, names = snapshot.names.len(), "message store open");
            hub.attach_store(store.clone(), snapshot);
            Some(store)
        }
        None => None,
    };
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let drain = config.drain_timeout();
    // --- cluster (issue 8): the bus outlives the sessions, so that their
    // leaves still reach the other nodes during shutdown.
    let bus_token = CancellationToken::new();
    let bus_task = match cluster {
        Some(options) => {
            let (_, task) =
                crate::cluster::redis::RedisBus::start(&hub, options, bus_token.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Some(task)
        }
        None => None,
    };
    let session_settings = Arc::new(session::SessionSettings::from_config(&config));
    let ctx = Arc::new(Context {
        hub,
        config,
        session_settings,
        shutdown: token.clone(),
        tracker: tracker.clone(),
        access,
    });
    tracker.spawn(keepalive::run(ctx.hub.clone(), ctx.session_settings.clone(), token.clone()));
    if ctx.hub.is_durable() {
        tracker.spawn(save_unsaved(ctx.hub.clone(), token.clone()));
    }
    let app = router(ctx.clone());
    tracing::info!(addr = %local, tls = tls.is_some(), "switchboard listening");

    let accepting = listener::accept_loop(listener, app, ctx.clone(), tls);
    tokio::select! {
        () = accepting => {}
        () = shutdown => {}
    }
    tracing::info!("shutting down: flushing queues and closing sessions with 1001");
    token.cancel();
    // Sessions learn of the shutdown through their close signal, like any
    // other close; registrations are refused from here on.
    ctx.hub.close_all(CloseReason::Shutdown);
    tracker.close();
    // Sessions drain within `drain`, then wait briefly for the close handshake.
    if tokio::time::timeout(drain + Duration::from_secs(3), tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    // Live deliveries the hub still holds for sessions that did not finish.
    ctx.hub.save_unsaved(true);
    if let Some(task) = bus_task {
        // Shared inboxes (issue 7): the left sessions' names are released
        // once their appends are in Redis; let that happen before the bus stops.
        if ctx.hub.shares_inboxes() {
            let _ = tokio::time::timeout(Duration::from_secs(5), ctx.hub.committed()).await;
        }
        bus_token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // --- durability (issue 7): commit what is queued, then stop the thread.
    if let Some(store) = store {
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Issue 6: hands the live deliveries the hub holds for their ack to the
/// store once they have waited a sweep period, until `shutdown` fires.
async fn save_unsaved(hub: Hub, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(crate::hub::UNSAVED_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => hub.save_unsaved(false),
            () = shutdown.cancelled() => return,
        }
    }
}

fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // Operator-only, like `/api`: a scrape walks every client under the
        // hub's lock, and the figures are the operator's business.
        .route(
            "/metrics",
            get(metrics::handler).route_layer(axum::middleware::from_fn_with_state(
                ctx.clone(),
                api::require_operator,
            )),
        )
        .nest(api::PREFIX, api::routes(ctx.clone()))
        .merge(web::routes())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(ctx.config.max_message_bytes))
        // --- TLS and conformance (issue 5): the echo endpoint, only when configured.
        .layer(tower::util::option_layer(
            ctx.config
                .echo_path
                .is_some()
                .then(|| axum::middleware::from_fn_with_state(ctx.clone(), echo::intercept)),
        ))
        .with_state(ctx)
}

/// `GET /readyz`: ready to take clients. In cluster mode (issue 8), 503
/// while the cluster bus is unreachable, so a load balancer sends new
/// clients to healthy nodes; `/healthz` stays "process up".
async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    use axum::response::IntoResponse;
    if ctx.hub.bus().healthy() {
        "ready\n".into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: cluster bus (Redis) unreachable; serving connected clients locally\n",
        )
            .into_response()
    }
}

/// `GET /`: a WebSocket upgrade, or the browser page.
/// A path nothing serves: a one-line answer, in JSON for what looks like
/// an API call (the `/api` router has no fallback of its own, so its
/// unknown paths end up here too).
async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    use axum::response::IntoResponse;
    let path = uri.path();
    if path.strip_prefix(api::PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) {
        return api::no_route(&method, path).into_response();
    }
    (axum::http::StatusCode::NOT_FOUND, format!("nothing is served at {path}\n")).into_response()
}

async fn root(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if handshake::is_upgrade(&request) {
        handshake::upgrade(&ctx, peer, request).await
    } else {
        web::index()
    }
}
