//! What a client's frame means: parsed frames become hub calls and replies.
//!
//! This module is the only place that maps protocol requests onto [`Hub`]
//! methods, for both wire protocols. It does no I/O: replies are pushed into
//! the client's own outbox, behind anything already queued for it.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::v1::{self, AckStatus, ErrorCode, Reply, Request};
use switchboard_protocol::{binary, classic};

use crate::hub::{
    Accepted, Client, DmText, Hub, OnCommit, Outgoing, RecipientCache, RouteError, SendMeta,
};

/// Handles one text frame from a classic client, read at `ts` (ms since the
/// Unix epoch: the time its message is stamped with).
pub(crate) fn classic_text(
    hub: &Hub,
    client: &Client,
    text: &str,
    ts: u64,
    recipient: &mut RecipientCache,
) {
    match classic::parse_direct(text) {
        Some(dm) => {
            // The recipient's frame, spliced from the sender's own JSON
            // string (src stamped by the hub); a found recipient's name is
            // `dst` exactly, as the registry is keyed by name.
            let frame = classic::encode_direct_raw(client.name().as_str(), &dm.dst, &dm.msg_json);
            // The text is kept apart only when the frame does not hold it
            // as it is (issue 6: one allocation and copy less per DM).
            let msg = classic::text_in_frame(&dm, frame.len())
                .and_then(DmText::in_classic_frame)
                .unwrap_or_else(|| DmText::from(&*dm.msg));
            // Classic has no acks; a refusal known only later (cluster mode,
            // shared inboxes) still gets its notice. Elsewhere every refusal
            // is known at once: no closure on the hot path.
            let on_commit = hub.shares_inboxes().then(|| {
                let outbox = client.outbox().clone();
                Box::new(move |outcome: Result<_, RouteError>| {
                    if let Err(error) = outcome {
                        let _ = outbox.push(Outgoing::Text(classic_notice(&error)));
                    }
                }) as OnCommit
            });
            let meta = SendMeta { on_commit, ts: Some(ts), ..SendMeta::default() };
            let sent = hub.send_direct_encoded(client, &dm.dst, msg, Some(frame), meta, recipient);
            if let Err(error) = sent {
                reply_text(client, classic_notice(&error));
            }
        }
        None => hub.to_server(client, text.to_owned()),
    }
}

/// Handles one text frame from a v1 client, read at `ts`.
pub(crate) fn v1_text(
    hub: &Hub,
    client: &Client,
    text: &str,
    ts: u64,
    recipient: &mut RecipientCache,
) {
    // The hot request first, its strings borrowed from the frame (issue 6).
    if let Some(dm) = v1::parse_dm(text) {
        return v1_dm(hub, client, dm, ts, recipient);
    }
    let request = match v1::parse_request(text) {
        Ok(request) => request,
        Err(error) => {
            reply(client, Reply::error(error.id.as_deref(), error.code, error.message));
            return;
        }
    };
    let id = request.id().map(str::to_owned);
    let outcome: Result<Option<Reply>, RouteError> = match request {
        // `parse_dm` above takes every DM the general parser does; this
        // arm only keeps the match whole.
        Request::Dm { to, text, receipt, .. } => {
            let (id, to, text) = (id.map(Cow::Owned), Cow::Owned(to), Cow::Owned(text));
            return v1_dm(hub, client, v1::DmRequest { id, to, text, receipt }, ts, recipient);
        }
        Request::Publish { room, text, echo, .. } => {
            let meta = send_meta(client, id.as_deref(), false, false, ts);
            if let Err(error) = hub.publish(client, &room, text, echo, meta) {
                reply(client, Reply::error(id.as_deref(), error_code(&error), error.to_string()));
            }
            return;
        }
        Request::Ack { seq, .. } => {
            hub.ack(client, seq);
            Ok(None)
        }
        Request::Server { text, .. } => {
            hub.to_server(client, text);
            Ok(None)
        }
        Request::Join { room, since, .. } => hub.join(client, &room, since).map(|_| None),
        Request::Leave { room, .. } => hub.leave(client, &room).map(|()| None),
        Request::Members { room, .. } => match hub.room(&room) {
            Some(info) => Ok(Some(Reply::Members {
                id: id.clone(),
                room: Some(room),
                members: info.members.iter().map(|n| n.to_string()).collect(),
            })),
            None => {
                Ok(Some(Reply::Members { id: id.clone(), room: Some(room), members: Vec::new() }))
            }
        },
        Request::Who { .. } => Ok(Some(Reply::Clients {
            id: id.clone(),
            clients: hub.online().iter().map(|n| n.to_string()).collect(),
        })),
        Request::Subscribe { room, .. } => hub.watch(client, room.as_deref()).map(|members| {
            Some(Reply::Members {
                id: id.clone(),
                room,
                members: members.iter().map(|n| n.to_string()).collect(),
            })
        }),
        Request::Unsubscribe { room, .. } => {
            hub.unwatch(client, room.as_deref());
            Ok(None)
        }
        Request::Ping { .. } => Ok(Some(Reply::Pong { id: id.clone() })),
    };
    answer(client, id.as_deref(), outcome);
}

/// Sends a v1 DM. Durable sends are acknowledged by `on_commit`, after the
/// store commit; a refusal known at once is answered here.
fn v1_dm(
    hub: &Hub,
    client: &Client,
    dm: v1::DmRequest<'_>,
    ts: u64,
    recipient: &mut RecipientCache,
) {
    let id = dm.id.as_deref();
    let meta = send_meta(client, id, dm.receipt, true, ts);
    let text = DmText::from(&*dm.text);
    if let Err(error) = hub.send_direct_encoded(client, &dm.to, text, None, meta, recipient) {
        reply(client, Reply::error(id, error_code(&error), error.to_string()));
    }
}

/// Handles one binary frame from a v1 client, read at `ts`.
pub(crate) fn v1_binary(hub: &Hub, client: &Client, frame: &Bytes, ts: u64) {
    let parsed = match binary::parse_outgoing(frame) {
        Ok(parsed) => parsed,
        Err(error) => {
            reply(client, Reply::error(None, ErrorCode::BadRequest, error.to_string()));
            return;
        }
    };
    // Share the payload with the frame's allocation instead of copying it.
    let payload = frame.slice_ref(parsed.payload);
    let id = (!parsed.id.is_empty()).then_some(parsed.id);
    let outcome = match parsed.target {
        binary::Target::Client(to) => {
            let meta = send_meta(client, id, false, true, ts);
            if let Err(error) = hub.send_binary(client, to, payload, meta) {
                reply(client, Reply::error(id, error_code(&error), error.to_string()));
            }
            return;
        }
        binary::Target::Room(room) => hub.publish_binary(client, room, payload).map(|_| None),
    };
    answer(client, id, outcome);
}

/// Handles a binary frame from a classic client: the tutorial's protocol has
/// no destination for binary data, so it is refused with a notice.
pub(crate) fn classic_binary(client: &Client) {
    reply_text(client, classic::error_notice("binary messages need protocol v1 (switchboard.v1)"));
}

/// Tells the client its message was refused by the rate limit.
/// `refused` is the refused frame: text, or the bytes of a binary frame.
pub(crate) fn rate_limited(client: &Client, refused: Result<&str, &[u8]>, limit: &str) {
    let message = format!("rate limit exceeded ({limit}); message refused");
    match client.protocol() {
        crate::hub::Protocol::Classic => reply_text(client, classic::error_notice(&message)),
        crate::hub::Protocol::V1 => {
            let id = match refused {
                Ok(text) => request_id(text),
                Err(bytes) => binary::parse_outgoing(bytes)
                    .ok()
                    .filter(|frame| !frame.id.is_empty())
                    .map(|frame| frame.id.to_owned()),
            };
            reply(client, Reply::error(id.as_deref(), ErrorCode::RateLimited, message));
        }
    }
}

/// The classic notice for a refused DM.
fn classic_notice(error: &RouteError) -> String {
    match error {
        RouteError::Offline(dst) | RouteError::UnknownRecipient(dst) => {
            classic::offline_notice(dst)
        }
        other => classic::error_notice(&other.to_string()),
    }
}

/// Best-effort id of a refused request, only on the slow path.
fn request_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// The hub's side of a client's send: its id (for deduplication and
/// receipts) and, when it has one, the ack to push once the send is durable.
/// `with_status` adds whether it went live or was stored (sends to one client).
fn send_meta(
    client: &Client,
    id: Option<&str>,
    receipt: bool,
    with_status: bool,
    ts: u64,
) -> SendMeta {
    // One copy of the id, shared by the hub and the answer (issue 6).
    let id: Option<Arc<str>> = id.map(Arc::from);
    let on_commit = id.clone().map(|id| -> OnCommit {
        let outbox = client.outbox().clone();
        Box::new(move |outcome| {
            let frame = match outcome {
                Ok(accepted) => Reply::ack_frame(
                    &id,
                    match accepted {
                        Accepted::Duplicate => Some(AckStatus::Duplicate),
                        _ if !with_status => None,
                        Accepted::Live => Some(AckStatus::Live),
                        Accepted::Stored => Some(AckStatus::Stored),
                    },
                ),
                Err(error) => {
                    Reply::error(Some(&id), error_code(&error), error.to_string()).encode()
                }
            };
            // A full outbox closes the client; the ack is lost with the connection.
            let _ = outbox.push(Outgoing::Text(frame));
        })
    });
    SendMeta { id, receipt, on_commit, ts: Some(ts) }
}

fn answer(client: &Client, id: Option<&str>, outcome: Result<Option<Reply>, RouteError>) {
    match outcome {
        Ok(Some(answer)) => reply(client, answer),
        Ok(None) => {
            if let Some(id) = id {
                reply(client, Reply::Ack { id: id.to_owned(), status: None });
            }
        }
        Err(error) => reply(client, Reply::error(id, error_code(&error), error.to_string())),
    }
}

/// The wire error code for a routing failure.
pub(crate) fn error_code(error: &RouteError) -> ErrorCode {
    match error {
        RouteError::Offline(_) | RouteError::RecipientOverflow(_) => ErrorCode::RecipientOffline,
        RouteError::InvalidName { .. } => ErrorCode::InvalidName,
        RouteError::NotMember(_) | RouteError::NoSuchRoom(_) => ErrorCode::NotMember,
        RouteError::LimitReached(_) => ErrorCode::LimitReached,
        RouteError::UnknownRecipient(_) => ErrorCode::UnknownRecipient,
        RouteError::InboxFull(_) => ErrorCode::InboxFull,
        RouteError::ClusterUnavailable | RouteError::StoreUnavailable(_) => ErrorCode::Unavailable,
    }
}

fn reply(client: &Client, reply: Reply) {
    reply_text(client, reply.encode());
}

fn reply_text(client: &Client, text: String) {
    // A full outbox closes the client; the reply is lost with the connection.
    let _ = client.outbox().push(Outgoing::Text(text));
}
