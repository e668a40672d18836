//! The WebSocket handshake: the last point where a connection can be refused
//! with an HTTP status and a readable body.
//!
//! A connection's name comes from `?name=`, or else from the `Origin` header
//! (the tutorial's Qt clients put their name there). The name is validated
//! and reserved in the hub *before* the 101 response, so a duplicate gets a
//! 409 instead of a socket that is closed right after opening.
//!
//! Access control (issue 5, [`super::auth`]) runs in between, in this order:
//! a browser `Origin` outside the allow-list gets 403, a full server 503, an
//! address over its cap 429, and a missing or bad token 401. With auth on, a
//! token whose `exp` passes while connected ends the session with 4002; with
//! an idle timeout, a client silent for that long is closed with 4003.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use switchboard_protocol::v1::{Limits, Reply, PROTOCOL_VERSION};
use switchboard_protocol::{NameError, SUBPROTOCOL_V1};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::auth::{Admission, AuthError, CapError};
use super::read_ahead::ReadAhead;
use super::session::{self, SessionSettings};
use super::Context;
use crate::hub::{
    Client, CloseReason, EventKind, OutboxReceiver, Outgoing, Protocol, RegisterError, Registration,
};

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
    /// Auth is on and the token is missing, invalid, or for another name.
    #[error("{0}")]
    Unauthorized(AuthError),
    /// A browser page from an origin outside the allow-list.
    #[error("{0}")]
    OriginRefused(String),
    /// A connection cap is reached.
    #[error("{0}")]
    Capped(CapError),
    /// `?resume=` is not a sequence number, or is given to a classic client.
    #[error("invalid resume parameter: {0}")]
    InvalidResume(&'static str),
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let status = match &self {
            HandshakeError::NotWebSocket(_)
            | HandshakeError::MissingName
            | HandshakeError::InvalidName(_)
            | HandshakeError::InvalidResume(_) => StatusCode::BAD_REQUEST,
            HandshakeError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::NameTaken(RegisterError::NameTaken(_)) => StatusCode::CONFLICT,
            HandshakeError::NameTaken(
                RegisterError::Unavailable(_) | RegisterError::ShuttingDown,
            ) => StatusCode::SERVICE_UNAVAILABLE,
            HandshakeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HandshakeError::OriginRefused(_) => StatusCode::FORBIDDEN,
            HandshakeError::Capped(CapError::Full(_)) => StatusCode::SERVICE_UNAVAILABLE,
            HandshakeError::Capped(CapError::PerAddress { .. }) => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if matches!(self, HandshakeError::UnsupportedVersion) {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        if matches!(self, HandshakeError::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
    // beyond Latin-1 arrive as '?', see tests/it/qt_interop.rs).
    let origin = match std::str::from_utf8(origin.as_bytes()) {
        Ok(utf8) => utf8.to_owned(),
        Err(_) => origin.as_bytes().iter().map(|&b| char::from(b)).collect(),
    };
    let origin = origin.trim();
    // A browser's Origin is a URL (or "null"); it names a site, not a client.
    (!super::auth::is_browser_origin(origin) && !origin.is_empty()).then(|| origin.to_owned())
}

/// Issue 7: `?resume=SEQ`, a v1 session that acknowledges deliveries itself
/// and has every delivery up to SEQ already.
fn requested_resume<B>(request: &Request<B>) -> Result<Option<u64>, HandshakeError> {
    let Some(query) = request.uri().query() else { return Ok(None) };
    let Some((_, value)) =
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "resume")
    else {
        return Ok(None);
    };
    value
        .parse::<u64>()
        .map(Some)
        .map_err(|_| HandshakeError::InvalidResume("expected ?resume=SEQ, a non-negative integer"))
}

fn wants_v1(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL_V1)
}

/// Validates the upgrade, registers the client and answers 101; the session
/// itself runs in a task tracked for graceful shutdown.
pub(crate) async fn upgrade<B>(
    ctx: &Context,
    peer: SocketAddr,
    mut request: Request<B>,
) -> Response {
    match accept(ctx, peer, &mut request).await {
        Ok(response) => response,
        Err(error) => {
            let client = ctx.access.client_addr(peer, request.headers());
            tracing::warn!(%peer, %client, %error, "handshake refused");
            ctx.hub.emit(EventKind::Error {
                name: None,
                message: format!("handshake from {peer} refused: {error}"),
            });
            error.into_response()
        }
    }
}

async fn accept<B>(
    ctx: &Context,
    peer: SocketAddr,
    request: &mut Request<B>,
) -> Result<Response, HandshakeError> {
    let key = validate_upgrade(request.method(), request.headers())?;
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(HandshakeError::NotWebSocket("connection cannot be upgraded"));
    };
    let requested = requested_name(request);
    // With auth on, the token's subject names the client when nothing else does.
    if requested.is_none() && !ctx.access.auth_enabled() {
        return Err(HandshakeError::MissingName);
    }
    if let Some(raw) = &requested {
        ctx.hub.client_name(raw).map_err(HandshakeError::InvalidName)?;
    }
    // --- access control (issue 5) ---
    ctx.access.check_origin(request.headers()).map_err(HandshakeError::OriginRefused)?;
    let addr = ctx.access.client_addr(peer, request.headers());
    // Held by the session task: the place is freed when the session ends.
    let admission = ctx.access.admit(addr.ip()).map_err(HandshakeError::Capped)?;
    let grant = ctx
        .access
        .authenticate(request.headers(), request.uri().query(), requested.as_deref())
        .map_err(HandshakeError::Unauthorized)?;
    let raw_name = match (&grant, requested) {
        (_, Some(name)) => name,
        (Some(grant), None) => grant.sub.clone(),
        (None, None) => return Err(HandshakeError::MissingName),
    };
    let name = ctx.hub.client_name(&raw_name).map_err(HandshakeError::InvalidName)?;
    let protocol = if wants_v1(request.headers()) { Protocol::V1 } else { Protocol::Classic };
    let resume = requested_resume(request)?;
    if resume.is_some() && protocol == Protocol::Classic {
        return Err(HandshakeError::InvalidResume(
            "resume needs protocol v1 (Sec-WebSocket-Protocol: switchboard.v1)",
        ));
    }
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
    // Cluster mode (issue 8): claim the name on every node first, so a name
    // online on another node gets 409 too. Immediately before registering,
    // so no refusal can come between the two and leave the claim dangling
    // (a refusal at shutdown gives the claim back).
    ctx.hub.claim(&name).await.map_err(HandshakeError::NameTaken)?;
    let (registration, outbox) = ctx
        .hub
        .register_session(name.clone(), addr, protocol, resume, welcome)
        .map_err(HandshakeError::NameTaken)?;
    if let Some(rooms) = grant.as_ref().and_then(|grant| grant.rooms.clone()) {
        // Before the 101: the client cannot send a join until the upgrade.
        registration.client().restrict_rooms(rooms);
    }
    let watch = Watch {
        client: registration.client().clone(),
        ends_at: grant.and_then(|grant| grant.ends_at),
        idle: (ctx.config.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(ctx.config.idle_timeout_secs)),
    };

    // Everything the session task needs once the upgrade completes, in one
    // box: the task's future keeps its captures for its whole life, so
    // capturing them one by one would keep a dead copy of each beside the
    // running session (issue 6, idle memory).
    let start = Box::new(SessionStart {
        registration,
        outbox,
        settings: ctx.session_settings.clone(),
        watch,
        admission,
        max_message_bytes: ctx.config.max_message_bytes,
        tracker: ctx.tracker.clone(),
    });
    ctx.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => start.run(upgraded).await,
            Err(error) => {
                tracing::warn!(%error, "upgrade failed after handshake");
                drop(start);
            }
        }
    });

    Ok(switching_protocols(key.as_bytes(), (protocol == Protocol::V1).then_some(SUBPROTOCOL_V1)))
}

/// The RFC 6455 section 4.2.1 checks; returns the `Sec-WebSocket-Key`.
///
/// # Errors
/// The first check that fails, as the handshake error to answer with.
pub(crate) fn validate_upgrade(
    method: &Method,
    headers: &HeaderMap,
) -> Result<HeaderValue, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::NotWebSocket("method must be GET"));
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::NotWebSocket("missing Upgrade: websocket"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::NotWebSocket("missing Connection: upgrade"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or(HandshakeError::NotWebSocket("missing Sec-WebSocket-Key"))
}

/// The 101 answer to a validated upgrade with `key`, naming `subprotocol` if any.
pub(crate) fn switching_protocols(key: &[u8], subprotocol: Option<&'static str>) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(subprotocol) = subprotocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(subprotocol));
    }
    response
}

/// The server side of an upgraded connection, with the hub's tungstenite settings.
pub(crate) async fn server_socket(
    upgraded: hyper::upgrade::Upgraded,
    max_message_bytes: usize,
) -> WebSocketStream<ReadAhead<TokioIo<hyper::upgrade::Upgraded>>> {
    WebSocketStream::from_raw_socket(
        ReadAhead::new(TokioIo::new(upgraded)),
        Role::Server,
        Some(websocket_config(max_message_bytes)),
    )
    .await
}

/// tungstenite's read buffer per connection: a few small frames. Bigger
/// frames grow it as needed.
const READ_BUFFER_BYTES: usize = 256;

/// A session accepted by the handshake, waiting for hyper to hand over the
/// upgraded connection.
struct SessionStart {
    registration: Registration,
    outbox: OutboxReceiver,
    settings: Arc<SessionSettings>,
    watch: Watch,
    /// Holds the client's place under the connection caps until the end.
    admission: Admission,
    max_message_bytes: usize,
    /// Where the session's own task is spawned (shutdown waits for it).
    tracker: TaskTracker,
}

impl SessionStart {
    /// Builds the socket and hands the session to a task of its own.
    ///
    /// Why a second task: this one's future holds hyper's upgrade and the
    /// socket under construction, and rustc keeps such slots, and the
    /// moved-from copies of the session future, for the future's whole
    /// life. Run here, a session cost 2,064 bytes of task for its 680-byte
    /// reader (issue 6, idle memory). Spawned as a plain combinator (no
    /// `async` block), the session's task is the reader and the admission,
    /// nothing else.
    async fn run(self: Box<Self>, upgraded: hyper::upgrade::Upgraded) {
        let socket = server_socket(upgraded, self.max_message_bytes).await;
        let start = *self;
        let run = session::run(socket, start.registration, start.outbox, start.settings);
        let admission = start.admission;
        match start.watch.needed() {
            None => {
                start.tracker.spawn(run.map(move |()| drop(admission)));
            }
            // The watchdog only asks the session to close; the session then
            // runs on to send the close frame and clean up. Most sessions
            // have nothing to watch and carry no watchdog state at all.
            Some(watch) => {
                start.tracker.spawn(async move {
                    let mut run = Box::pin(run);
                    let mut watch = Box::pin(watch.run());
                    tokio::select! {
                        () = &mut run => {}
                        () = &mut watch => run.await,
                    }
                    drop(admission);
                });
            }
        }
    }
}

/// Ends a session when its token expires (4002) or it idles too long (4003).
struct Watch {
    client: Arc<Client>,
    ends_at: Option<SystemTime>,
    idle: Option<Duration>,
}

impl Watch {
    /// The watch, if there is anything to watch.
    fn needed(self) -> Option<Watch> {
        (self.ends_at.is_some() || self.idle.is_some()).then_some(self)
    }

    /// Returns after asking the session to close; pending forever when there
    /// is nothing to watch. Idleness is sampled every quarter of the
    /// timeout, so a silent client is closed between 1 and 1.25 timeouts
    /// after its last message.
    async fn run(self) {
        use tokio::time::{sleep_until, Instant};
        // An expiry too far away for the monotonic clock is no expiry.
        let expiry = self.ends_at.and_then(|at| {
            Instant::now().checked_add(at.duration_since(SystemTime::now()).unwrap_or_default())
        });
        let tick = self.idle.map(|idle| (idle / 4).max(Duration::from_millis(100)));
        let mut seen = self.client.messages_in();
        let mut last_active = Instant::now();
        loop {
            let next_tick = tick.map(|tick| Instant::now() + tick);
            let wake = match (expiry, next_tick) {
                (Some(a), Some(b)) => a.min(b),
                (Some(at), None) | (None, Some(at)) => at,
                (None, None) => return std::future::pending().await,
            };
            sleep_until(wake).await;
            let now = Instant::now();
            if expiry.is_some_and(|at| now >= at) {
                self.client.outbox().closer().close(CloseReason::TokenExpired);
                return;
            }
            if let Some(idle) = self.idle {
                let count = self.client.messages_in();
                if count != seen {
                    seen = count;
                    last_active = now;
                } else if now.duration_since(last_active) >= idle {
                    let secs = idle.as_secs();
                    self.client.outbox().closer().close(CloseReason::IdleTimeout { secs });
                    return;
                }
            }
        }
    }
}

/// tungstenite settings: the size limit, and small buffers so an idle
/// connection costs little (the default read buffer is 128 KiB). The read
/// buffer is kept for the connection's life; [`ReadAhead`] underneath makes
/// each syscall read far more than this.
pub(crate) fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_write_buffer_size(max_message_bytes.saturating_mul(2).max(1 << 20))
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}
