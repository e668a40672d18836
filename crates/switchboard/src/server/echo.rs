//! A plain WebSocket echo endpoint, for the RFC 6455 conformance suite
//! (Autobahn's fuzzingclient cases, see docs/conformance.md).
//!
//! It exists only when `echo_path` is configured. It is served by the same
//! listener (connection cap, handshake timeout, TLS) and frames with the same
//! tungstenite settings as the hub ([`handshake::websocket_config`]), so what
//! the suite proves about framing, UTF-8 checks, limits and the closing
//! handshake holds for hub sessions too. It echoes every text and binary
//! message, and fails the connection with the same close codes as a hub
//! session: 1007 for invalid UTF-8, 1009 for an oversized message, 1002 for
//! any other protocol violation.
//!
//! It is matched by a middleware before routing rather than added as a route:
//! a route whose path collides with another panics in axum, and a config value
//! must never be able to crash the server.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::OnUpgrade;
use switchboard_protocol::close;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use super::handshake::{self, HandshakeError};
use super::Context;

/// How long sending our close frame may take before the socket is dropped.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long we wait for the peer's close reply (then the stream's end) after
/// our own close frame: long enough for a live peer, short enough to free the
/// connection permit soon.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Middleware: a request for the echo path is answered here; any other goes on
/// to the router.
pub(crate) async fn intercept(
    State(ctx): State<Arc<Context>>,
    request: Request,
    next: Next,
) -> Response {
    match &ctx.config.echo_path {
        Some(path) if request.uri().path() == path => upgrade(&ctx, request),
        _ => next.run(request).await,
    }
}

/// Validates the upgrade, answers 101 and echoes on the upgraded socket in a
/// task tracked for graceful shutdown.
fn upgrade(ctx: &Context, mut request: Request) -> Response {
    let key = match handshake::validate_upgrade(request.method(), request.headers()) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return HandshakeError::NotWebSocket("connection cannot be upgraded").into_response();
    };
    let max_message_bytes = ctx.config.max_message_bytes;
    let shutdown = ctx.shutdown.clone();
    ctx.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                echo(handshake::server_socket(upgraded, max_message_bytes).await, shutdown).await
            }
            Err(error) => tracing::debug!(%error, "echo upgrade failed after handshake"),
        }
    });
    handshake::switching_protocols(key.as_bytes(), None)
}

/// Echoes until the peer closes, the input is invalid, or the server shuts down.
async fn echo<S>(mut socket: WebSocketStream<S>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                return fail(socket, close::GOING_AWAY, "server shutting down").await;
            }
            next = socket.next() => next,
        };
        match next {
            // tungstenite has already queued the reply to a close or a ping;
            // the next read flushes it, and after a close the stream ends.
            None => return,
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                let Some((code, reason)) = close_for(&error) else { return };
                tracing::debug!(%error, code, "echo: failing the connection");
                return fail(socket, code, reason).await;
            }
        }
    }
}

/// The close code for a read error, as a hub session would send it; `None`
/// when the connection is gone and no close frame can be sent.
fn close_for(error: &tungstenite::Error) -> Option<(u16, &'static str)> {
    use tungstenite::error::{CapacityError, Error};
    match error {
        Error::Utf8(_) => Some((close::INVALID_PAYLOAD, "invalid UTF-8 in a text message")),
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some((close::MESSAGE_TOO_BIG, "message too big"))
        }
        Error::Capacity(_) | Error::Protocol(_) => {
            Some((close::PROTOCOL_ERROR, "WebSocket protocol error"))
        }
        _ => None,
    }
}

/// Sends a close frame, then reads (discarding) until the peer's reply ends
/// the stream; both steps are bounded in time.
async fn fail<S>(mut socket: WebSocketStream<S>, code: u16, reason: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
    if tokio::time::timeout(CLOSE_SEND_TIMEOUT, socket.close(Some(frame))).await.is_err() {
        return;
    }
    let linger = async { while let Some(Ok(_)) = socket.next().await {} };
    let _ = tokio::time::timeout(CLOSE_LINGER, linger).await;
}
