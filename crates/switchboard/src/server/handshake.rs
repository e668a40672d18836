//! The WebSocket handshake: the last point where a connection can be refused
//! with an HTTP status and a readable body.
//!
//! A connection's name comes from `?name=`, or else from the `Origin` header
//! (the tutorial's Qt clients put their name there). The name is validated
//! and reserved in the hub *before* the 101 response, so a duplicate gets a
//! 409 instead of a socket that is closed right after opening.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use switchboard_protocol::v1::{Limits, Reply, PROTOCOL_VERSION};
use switchboard_protocol::{NameError, SUBPROTOCOL_V1};
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::session::{self, SessionSettings};
use super::Context;
use crate::hub::{Client, EventKind, Outgoing, Protocol, RegisterError};

/// Why a handshake was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not a WebSocket upgrade request.
    #[error("expected a WebSocket upgrade request: {0}")]
    NotWebSocket(&'static str),
    /// The WebSocket version is not 13.
    #[error("unsupported WebSocket version (this server speaks version 13)")]
    UnsupportedVersion,
    /// Neither `?name=` nor a name-bearing `Origin` was given.
    #[error("no client name: connect with ?name=NAME (or a name in the Origin header)")]
    MissingName,
    /// The name breaks a naming rule.
    #[error("invalid client name: {0}")]
    InvalidName(NameError),
    /// The name is online already.
    #[error("{0}")]
    NameTaken(RegisterError),
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let status = match &self {
            HandshakeError::NotWebSocket(_)
            | HandshakeError::MissingName
            | HandshakeError::InvalidName(_) => StatusCode::BAD_REQUEST,
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::NameTaken(_) => StatusCode::CONFLICT,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if matches!(self, HandshakeError::UnsupportedVersion) {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// True when the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade<B>(request: &Request<B>) -> bool {
    header_has_token(request.headers(), header::UPGRADE, "websocket")
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The client's name: `?name=`, else a non-URL `Origin`.
fn requested_name<B>(request: &Request<B>) -> Option<String> {
    let from_query = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "name")
            .map(|(_, value)| value.into_owned())
    });
    if from_query.is_some() {
        return from_query;
    }
    let origin = request.headers().get(header::ORIGIN)?;
    // HeaderValue::to_str only accepts ASCII, so decode the raw bytes: as
    // UTF-8 when valid (most clients), else as Latin-1, which is how Qt 5's
    // QWebSocket writes its handshake ("José" arrives as 4 bytes; characters
    // beyond Latin-1 arrive as '?', see tests/qt_interop.rs).
    let origin = match std::str::from_utf8(origin.as_bytes()) {
        Ok(utf8) => utf8.to_owned(),
        Err(_) => origin.as_bytes().iter().map(|&b| char::from(b)).collect(),
    };
    let origin = origin.trim();
    // A browser's Origin is a URL (or "null"); it names a site, not a client.
    let is_url = origin.contains("://") || origin == "null";
    (!is_url && !origin.is_empty()).then(|| origin.to_owned())
}

fn wants_v1(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL_V1)
}

/// Validates the upgrade, registers the client and answers 101; the session
/// itself runs in a task tracked for graceful shutdown.
pub(crate) fn upgrade<B>(ctx: &Context, peer: SocketAddr, mut request: Request<B>) -> Response {
    match accept(ctx, peer, &mut request) {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%peer, %error, "handshake refused");
            ctx.hub.emit(EventKind::Error {
                name: None,
                message: format!("handshake from {peer} refused: {error}"),
            });
            error.into_response()
        }
    }
}

fn accept<B>(
    ctx: &Context,
    peer: SocketAddr,
    request: &mut Request<B>,
) -> Result<Response, HandshakeError> {
    if request.method() != Method::GET {
        return Err(HandshakeError::NotWebSocket("method must be GET"));
    }
    if !header_has_token(request.headers(), header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotWebSocket("missing Connection: upgrade"));
    }
    if request.headers().get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(HandshakeError::NotWebSocket("missing Sec-WebSocket-Key"));
    };
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(HandshakeError::NotWebSocket("connection cannot be upgraded"));
    };
    let raw_name = requested_name(request).ok_or(HandshakeError::MissingName)?;
    let name = ctx.hub.client_name(&raw_name).map_err(HandshakeError::InvalidName)?;
    let protocol = if wants_v1(request.headers()) { Protocol::V1 } else { Protocol::Classic };
    // The welcome is queued before the name becomes visible to senders, so it
    // precedes anything routed to the client.
    let welcome = |client: &Client| {
        (protocol == Protocol::V1).then(|| {
            let welcome = Reply::Welcome {
                name: client.name().to_string(),
                session: client.session().to_string(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: PROTOCOL_VERSION.to_owned(),
                limits: Limits {
                    max_message_bytes: ctx.config.max_message_bytes,
                    max_queued_bytes: ctx.config.max_queued_bytes,
                    rate_messages_per_sec: ctx.config.rate_messages_per_sec,
                    rate_bytes_per_sec: ctx.config.rate_bytes_per_sec,
                },
            };
            Outgoing::Text(welcome.encode())
        })
    };
    let (registration, outbox) = ctx
        .hub
        .register_with(name.clone(), peer, protocol, welcome)
        .map_err(HandshakeError::NameTaken)?;

    let ws_config = websocket_config(ctx.config.max_message_bytes);
    let settings = SessionSettings::from_config(&ctx.config);
    let shutdown = ctx.shutdown.clone();
    ctx.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                session::run(socket, registration, outbox, settings, shutdown).await;
            }
            Err(error) => {
                tracing::warn!(%error, "upgrade failed after handshake");
                drop(registration);
            }
        }
    });

    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if protocol == Protocol::V1 {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL_V1));
    }
    Ok(response)
}

/// tungstenite settings: the size limit, and small buffers so an idle
/// connection costs little (the default read buffer is 128 KiB).
pub(crate) fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_write_buffer_size(max_message_bytes.saturating_mul(2).max(1 << 20))
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}
