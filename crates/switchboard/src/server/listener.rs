//! The accept loop: one task per TCP connection, HTTP/1.1 served by hyper
//! with upgrades enabled, a cap on concurrent connections, and a header
//! timeout against slow-loris handshakes. With TLS configured, each
//! connection first completes a rustls handshake (bounded by the same
//! handshake timeout) and hyper serves the decrypted stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::{tls, Context};

/// Accepts until the shutdown token fires. Failed accepts (e.g. out of file
/// descriptors) are retried with backoff instead of ending the server.
/// With `tls`, every connection must complete a TLS handshake first.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    ctx: Arc<Context>,
    tls: Option<TlsAcceptor>,
) {
    let permits = Arc::new(Semaphore::new(ctx.config.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        // Wait for a free slot before accepting: excess connects queue in the backlog.
        let permit = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let app = app.clone();
                let ctx2 = ctx.clone();
                let tls = tls.clone();
                ctx.tracker.spawn(async move {
                    serve_connection(stream, peer, app, ctx2, tls).await;
                    drop(permit);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    ctx: Arc<Context>,
    tls: Option<TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = tls else {
        return serve_http(stream, peer, app, ctx).await;
    };
    // The handshake timeout covers TLS as well as the HTTP headers, so a
    // client that connects and stalls holds its permit only that long.
    let timeout = ctx.config.handshake_timeout();
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(timeout, tls::accept(&acceptor, stream, peer)) => handshake,
        () = ctx.shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Some(stream)) => serve_http(stream, peer, app, ctx).await,
        Ok(None) => {}
        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP/1.1 (with upgrades) on a plain or TLS stream until it ends.
async fn serve_http<I>(io: I, peer: SocketAddr, app: Router, ctx: Arc<Context>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(ctx.config.handshake_timeout());
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "http connection ended with an error");
            }
        }
        () = ctx.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection).await;
        }
    }
}
