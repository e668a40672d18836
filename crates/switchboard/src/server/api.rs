//! The operator HTTP API under `/api`: the tutorial's server window as JSON.
//!
//! Every handler is a thin client of [`Hub`]. Auth: with an admin token
//! configured, every request needs `Authorization: Bearer TOKEN`; without
//! one, only loopback peers are answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::Context;
use crate::hub::{Accepted, ClientInfo, EventKind, HubEvent, RoomInfo, RouteError};

/// An API failure: a status and a one-line message, as JSON `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The admin token is missing or wrong.
    #[error("missing or invalid admin token (send Authorization: Bearer TOKEN)")]
    Unauthorized,
    /// No token is configured and the peer is not on loopback.
    #[error("the operator API answers loopback clients only unless an admin token is configured")]
    Forbidden,
    /// The named client or room does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Cluster mode (issue 8): the target is on another node and the
    /// cluster bus is down; issue 7: the message store cannot take it now.
    #[error("{0}")]
    Unavailable(String),
    /// Issue 7: the recipient's inbox (or the store) is at its limit.
    #[error("{0}")]
    Full(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        };
        let mut response =
            (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::Offline(_)
            | RouteError::UnknownRecipient(_)
            | RouteError::NoSuchRoom(_)
            | RouteError::NotMember(_) => ApiError::NotFound(error.to_string()),
            RouteError::ClusterUnavailable | RouteError::StoreUnavailable(_) => {
                ApiError::Unavailable(error.to_string())
            }
            RouteError::InboxFull(_) => ApiError::Full(error.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

/// Where the server nests [`routes`].
pub(crate) const PREFIX: &str = "/api";

/// The `/api` routes, with the auth guard.
pub(crate) fn routes(ctx: Arc<Context>) -> Router<Arc<Context>> {
    Router::new()
        .route("/clients", get(list_clients))
        .route("/clients/{name}", get(get_client).delete(disconnect))
        .route("/clients/{name}/messages", post(send_to_client))
        .route("/clients/{name}/disconnect", post(disconnect))
        .route("/inboxes/{name}", get(get_inbox).delete(purge_inbox))
        .route("/broadcast", post(broadcast))
        .route("/rooms", get(list_rooms))
        .route("/rooms/{room}", get(get_room))
        .route("/rooms/{room}/messages", post(publish_to_room))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(ctx, require_operator))
        .layer(middleware::from_fn(errors_as_json))
}

/// The answer to a path under [`PREFIX`] that no route takes (the server's
/// fallback gives it: a nested router without one of its own defers there).
pub(crate) fn no_route(method: &Method, path: &str) -> ApiError {
    ApiError::NotFound(format!("no API route {method} {path}"))
}

/// Most bytes of an error body that [`errors_as_json`] reads: axum's own
/// rejections are one line.
const MAX_ERROR_BODY: usize = 4096;

/// Every error the API answers is JSON `{"error": ...}` with a one-line
/// message, like [`ApiError`]'s: also axum's own answers, which come as
/// plain text (a body that is not UTF-8 or over the size limit, a path
/// segment that is not UTF-8) or empty (a method the route does not take;
/// a path no route takes is the server's fallback's, [`no_route`]). A
/// client then reads every failure the same way.
async fn errors_as_json(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The router is nested: its requests' paths come without the prefix.
    let path = format!("{PREFIX}{}", request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let error = match status {
        _ if !text.is_empty() => text,
        // axum adds the `Allow` header after this layer has run.
        StatusCode::METHOD_NOT_ALLOWED => {
            format!(
                "{method} is not allowed on {path}; the Allow header lists the methods it takes"
            )
        }
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    let body = serde_json::json!({ "error": error }).to_string();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The operator's guard, for `/api` and `/metrics`: the admin token when
/// one is configured, else loopback clients only.
pub(crate) async fn require_operator(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &ctx.config.admin_token {
        Some(token) => {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                return Err(ApiError::Unauthorized);
            }
        }
        // Behind a trusted proxy the peer is the proxy, so judge the client
        // it forwarded for (issue 5). A server listening beyond loopback
        // always has a token: it refuses to start without one.
        None if !is_loopback(ctx.access.client_addr(peer, request.headers())) => {
            return Err(ApiError::Forbidden)
        }
        None => {}
    }
    Ok(next.run(request).await)
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Compares secrets without leaking the position of the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A client as the API shows it.
#[derive(Debug, Serialize)]
struct ClientView {
    name: String,
    session: String,
    addr: String,
    protocol: &'static str,
    /// RFC 3339, UTC.
    connected_since: String,
    /// Milliseconds since the Unix epoch.
    connected_since_ms: u64,
    rooms: Vec<String>,
    messages_in: u64,
    messages_out: u64,
    queued_bytes: usize,
    /// Stored messages not yet acknowledged (issue 7).
    inbox_depth: u64,
}

impl From<ClientInfo> for ClientView {
    fn from(info: ClientInfo) -> Self {
        ClientView {
            name: info.name.to_string(),
            session: info.session.to_string(),
            addr: info.addr.to_string(),
            protocol: info.protocol.as_str(),
            connected_since: humantime::format_rfc3339_seconds(info.connected_at).to_string(),
            connected_since_ms: millis(info.connected_at),
            rooms: info.rooms.iter().map(|r| r.to_string()).collect(),
            messages_in: info.messages_in,
            messages_out: info.messages_out,
            queued_bytes: info.queued_bytes,
            inbox_depth: info.inbox_depth,
        }
    }
}

#[derive(Debug, Serialize)]
struct RoomView {
    name: String,
    members: Vec<String>,
}

impl From<RoomInfo> for RoomView {
    fn from(info: RoomInfo) -> Self {
        RoomView {
            name: info.name.to_string(),
            members: info.members.iter().map(|m| m.to_string()).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Delivered {
    delivered: usize,
}

async fn list_clients(State(ctx): State<Arc<Context>>) -> Json<Vec<ClientView>> {
    Json(ctx.hub.clients().into_iter().map(ClientView::from).collect())
}

async fn get_client(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
) -> Result<Json<ClientView>, ApiError> {
    ctx.hub
        .client(&name)
        .map(|c| Json(c.into()))
        .ok_or_else(|| ApiError::NotFound(format!("{name} is not online")))
}

/// The answer to a message for one client: queued live, or stored for a
/// known client that is offline (issue 7).
#[derive(Debug, Serialize)]
struct SentTo {
    delivered: usize,
    status: &'static str,
}

async fn send_to_client(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
    body: String,
) -> Result<Json<SentTo>, ApiError> {
    // Issue 7: answered once the message is durable.
    let status = match ctx.hub.send_to(&name, body).await? {
        Accepted::Stored => "stored",
        Accepted::Live | Accepted::Duplicate => "live",
    };
    Ok(Json(SentTo { delivered: 1, status }))
}

/// A name's inbox (issue 7).
#[derive(Debug, Serialize)]
struct InboxView {
    name: String,
    online: bool,
    /// The seq the name's next delivery gets.
    next_seq: u64,
    /// Stored messages not yet acknowledged.
    depth: u64,
    bytes: u64,
    /// The oldest stored message's time, ms since the Unix epoch.
    oldest_ts_ms: Option<u64>,
    /// Its age in milliseconds.
    oldest_age_ms: Option<u64>,
}

async fn get_inbox(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
) -> Result<Json<InboxView>, ApiError> {
    let info = ctx.hub.inbox_info(&name).await.ok_or_else(|| {
        ApiError::NotFound(format!("{name} has no inbox: it has never connected"))
    })?;
    let now = millis(SystemTime::now());
    Ok(Json(InboxView {
        name: info.name.to_string(),
        online: info.online,
        next_seq: info.next_seq,
        depth: info.depth,
        bytes: info.bytes,
        oldest_ts_ms: info.oldest_ts,
        oldest_age_ms: info.oldest_ts.map(|ts| now.saturating_sub(ts)),
    }))
}

async fn purge_inbox(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    ctx.hub.purge(&name)?;
    Ok(Json(serde_json::json!({ "purged": name })))
}

#[derive(Debug, Deserialize)]
struct ReasonQuery {
    #[serde(default)]
    reason: Option<String>,
}

async fn disconnect(
    State(ctx): State<Arc<Context>>,
    Path(name): Path<String>,
    Query(query): Query<ReasonQuery>,
    body: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reason = query.reason.unwrap_or(body).trim().to_owned();
    ctx.hub.disconnect(&name, reason)?;
    Ok(Json(serde_json::json!({ "disconnected": name })))
}

/// Answers once the message is queued to every connected client. Unlike a
/// message to one client, it does not wait for the store: forcing a
/// thousand recipients' copies to disk per broadcast cost ~4x the
/// broadcast's CPU (docs/performance.md); the copies the recipients have
/// not acknowledged are written within about a second (docs/durability.md).
async fn broadcast(State(ctx): State<Arc<Context>>, body: String) -> Json<Delivered> {
    Json(Delivered { delivered: ctx.hub.broadcast(body) })
}

async fn list_rooms(State(ctx): State<Arc<Context>>) -> Json<Vec<RoomView>> {
    Json(ctx.hub.rooms().into_iter().map(RoomView::from).collect())
}

async fn get_room(
    State(ctx): State<Arc<Context>>,
    Path(room): Path<String>,
) -> Result<Json<RoomView>, ApiError> {
    ctx.hub
        .room(&room)
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no room named {room}")))
}

async fn publish_to_room(
    State(ctx): State<Arc<Context>>,
    Path(room): Path<String>,
    body: String,
) -> Result<Json<Delivered>, ApiError> {
    Ok(Json(Delivered { delivered: ctx.hub.publish_as_server(&room, body)? }))
}

/// An event as the SSE feed shows it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventView {
    Join { at: u64, name: String, addr: String, protocol: &'static str },
    Leave { at: u64, name: String, code: Option<u16>, reason: String },
    Message { at: u64, from: String, text: String },
    RoomJoin { at: u64, name: String, room: String },
    RoomLeave { at: u64, name: String, room: String },
    Error { at: u64, name: Option<String>, message: String },
    Lagged { at: u64, missed: u64 },
}

impl From<HubEvent> for EventView {
    fn from(event: HubEvent) -> Self {
        let at = millis(event.at);
        match event.kind {
            EventKind::Joined { name, addr, protocol } => EventView::Join {
                at,
                name: name.to_string(),
                addr: addr.to_string(),
                protocol: protocol.as_str(),
            },
            EventKind::Left { name, code, reason } => {
                EventView::Leave { at, name: name.to_string(), code, reason }
            }
            EventKind::ToServer { from, text } => {
                EventView::Message { at, from: from.to_string(), text }
            }
            EventKind::RoomJoined { name, room } => {
                EventView::RoomJoin { at, name: name.to_string(), room: room.to_string() }
            }
            EventKind::RoomLeft { name, room } => {
                EventView::RoomLeave { at, name: name.to_string(), room: room.to_string() }
            }
            EventKind::Error { name, message } => {
                EventView::Error { at, name: name.map(|n| n.to_string()), message }
            }
        }
    }
}

fn sse_event(view: &EventView) -> Event {
    let kind = match view {
        EventView::Join { .. } => "join",
        EventView::Leave { .. } => "leave",
        EventView::Message { .. } => "message",
        EventView::RoomJoin { .. } => "room_join",
        EventView::RoomLeave { .. } => "room_leave",
        EventView::Error { .. } => "error",
        EventView::Lagged { .. } => "lagged",
    };
    Event::default().event(kind).data(serde_json::to_string(view).unwrap_or_default())
}

/// `GET /api/events`: hub events as Server-Sent Events. A subscriber that
/// falls behind gets a `lagged` event saying how many it missed.
async fn events(
    State(ctx): State<Arc<Context>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = BroadcastStream::new(ctx.hub.subscribe_events())
        .map(|item| {
            let view = match item {
                Ok(event) => EventView::from(event),
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    EventView::Lagged { at: millis(SystemTime::now()), missed }
                }
            };
            Ok(sse_event(&view))
        })
        // End the stream at shutdown so the HTTP connection can close.
        .take_until(ctx.shutdown.clone().cancelled_owned());
    // An initial comment so clients see the stream is open before any event.
    let opened = futures_util::stream::once(std::future::ready(Ok(
        Event::default().comment("switchboard events")
    )));
    Sse::new(opened.chain(stream)).keep_alive(KeepAlive::default())
}
