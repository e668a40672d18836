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
mod dispatch;
mod handshake;
mod listener;
mod session;
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
pub use handshake::HandshakeError;

use crate::config::Config;
use crate::hub::Hub;

/// Shared by every handler: the hub, the configuration and the shutdown wiring.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) hub: Hub,
    pub(crate) config: Config,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
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
/// Only if the listener's address cannot be read; accept errors are retried.
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
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let drain = config.drain_timeout();
    let ctx = Arc::new(Context { hub, config, shutdown: token.clone(), tracker: tracker.clone() });
    let app = router(ctx.clone());
    tracing::info!(addr = %local, "switchboard listening");

    let accepting = listener::accept_loop(listener, app, ctx.clone());
    tokio::select! {
        () = accepting => {}
        () = shutdown => {}
    }
    tracing::info!("shutting down: flushing queues and closing sessions with 1001");
    token.cancel();
    tracker.close();
    // Sessions drain within `drain`, then wait briefly for the close handshake.
    if tokio::time::timeout(drain + Duration::from_secs(3), tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .nest("/api", api::routes(ctx.clone()))
        .merge(web::routes())
        .layer(axum::extract::DefaultBodyLimit::max(ctx.config.max_message_bytes))
        .with_state(ctx)
}

/// `GET /`: a WebSocket upgrade, or the browser page.
async fn root(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    if handshake::is_upgrade(&request) {
        handshake::upgrade(&ctx, peer, request)
    } else {
        web::index()
    }
}
