//! A message on its way to one or more recipients.
//!
//! A [`Message`] is built once by whoever sends it and shared (`Arc`) by every
//! recipient's outbox. Its wire encodings are computed at most once per wire
//! shape, by the first writer that needs them, and reused by all the others:
//! a broadcast to 10,000 clients is serialised once, not 10,000 times.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
// `OnceCell::with_value` builds a cell already set: no atomic write. A
// preset std `OnceLock` goes through `set`, the `Once`'s slow path.
use once_cell::sync::OnceCell;
// A refcounted UTF-8 buffer (not a socket type): the classic frame is
// encoded once and each recipient's writer clones a reference to it.
use switchboard_protocol::v1::{self, EncodedDelivery, PresenceEvent};
use switchboard_protocol::{binary, classic, ClientName, RoomName};
use tungstenite::Utf8Bytes;

/// A private message's text.
#[derive(Debug)]
pub enum DmText {
    /// The text, shared with the durable store's record of it.
    Shared(Arc<str>),
    /// The bytes `start..end` of the message's classic frame (issue 6): a
    /// classic DM whose `msg` was a string literal without escapes is
    /// spliced into its recipient's frame as it is, so the text is there
    /// and is not copied apart ([`classic::text_in_frame`]).
    InClassicFrame {
        /// Where the text starts in the frame.
        start: u32,
        /// Where it ends.
        end: u32,
    },
}

impl DmText {
    /// The text at `range` of its message's classic frame; `None` when the
    /// frame is too large for the range to be kept in 32 bits.
    pub fn in_classic_frame(range: std::ops::Range<usize>) -> Option<DmText> {
        let start = u32::try_from(range.start).ok()?;
        let end = u32::try_from(range.end).ok()?;
        Some(DmText::InClassicFrame { start, end })
    }

    /// The text's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            DmText::Shared(text) => text.len(),
            DmText::InClassicFrame { start, end } => end.saturating_sub(*start) as usize,
        }
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Arc<str>> for DmText {
    fn from(text: Arc<str>) -> DmText {
        DmText::Shared(text)
    }
}

impl From<&str> for DmText {
    fn from(text: &str) -> DmText {
        DmText::Shared(text.into())
    }
}

impl From<String> for DmText {
    fn from(text: String) -> DmText {
        DmText::Shared(text.into())
    }
}

/// What a message says and who it is from; the sender is always the hub's
/// record of who sent it, never what the client claimed.
#[derive(Debug)]
pub enum Body {
    /// A private message.
    Direct {
        /// The sender.
        from: ClientName,
        /// The recipient.
        to: ClientName,
        /// The text: read it with [`Message::dm_text`].
        text: DmText,
    },
    /// A message published to a room.
    Room {
        /// The room.
        room: RoomName,
        /// The sender; `None` when the operator published.
        from: Option<ClientName>,
        /// The text.
        text: String,
        /// The room's own sequence number, when the room keeps history.
        rseq: Option<u64>,
    },
    /// A message from the operator (HTTP API).
    Server {
        /// The text.
        text: String,
        /// Sent to every client.
        broadcast: bool,
    },
    /// A presence change, for subscribers.
    Presence {
        /// The room, or `None` for global presence.
        room: Option<RoomName>,
        /// Who.
        name: ClientName,
        /// Joined or left.
        event: PresenceEvent,
    },
    /// A binary payload to a client or a room.
    Binary {
        /// The sender.
        from: ClientName,
        /// The room, when published to one.
        room: Option<RoomName>,
        /// The payload, shared by every recipient.
        payload: Bytes,
    },
    /// A delivery receipt (issue 7): `to` acknowledged the message the
    /// recipient sent with client id `id`.
    Receipt {
        /// The sender's client id of the acknowledged message.
        id: String,
        /// Who acknowledged it.
        to: ClientName,
    },
}

/// A message and its cached encodings.
#[derive(Debug)]
pub struct Message {
    /// Hub time when the message was accepted, ms since the Unix epoch.
    ts: u64,
    /// The content.
    body: Body,
    /// The classic text frame; `None` for messages classic clients never get.
    classic: OnceCell<Option<Utf8Bytes>>,
    /// The v1 frame minus `seq`.
    v1: OnceLock<EncodedDelivery>,
    /// The text as kept by the durable store (issue 7), made once and shared
    /// by every recipient's inbox entry (a DM's text is shared already).
    stored_text: OnceLock<Arc<str>>,
}

/// Milliseconds since the Unix epoch, by the hub's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Message {
    /// Stamps `body` with the current time.
    pub fn new(body: Body) -> Message {
        Message::at(now_ms(), body)
    }

    /// A message accepted at `ts` (ms since the Unix epoch): a stored one,
    /// replayed with its original time.
    pub fn at(ts: u64, body: Body) -> Message {
        Message {
            ts,
            body,
            classic: OnceCell::new(),
            v1: OnceLock::new(),
            stored_text: OnceLock::new(),
        }
    }

    /// As [`Message::at`], with the classic frame already encoded by the
    /// caller (a classic sender's DM, spliced from its own JSON by
    /// `classic::encode_direct_raw`), so the recipient's writer does not
    /// encode it again. `classic` must be what [`Message::classic_text`]
    /// would produce for `body`, up to JSON string escaping; a body whose
    /// text is [`DmText::InClassicFrame`] comes with the frame it points into.
    pub fn with_classic(ts: u64, body: Body, classic: Option<String>) -> Message {
        let mut message = Message::at(ts, body);
        if let Some(text) = classic {
            // Built set (issue 6): setting a cell after costs two atomic
            // writes, ~2% of a classic DM's CPU.
            message.classic = OnceCell::with_value(Some(Utf8Bytes::from(text)));
        }
        message
    }

    /// The content.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Hub time at acceptance.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// A private message's text; `None` for any other message.
    pub fn dm_text(&self) -> Option<&str> {
        match &self.body {
            Body::Direct { text: DmText::Shared(text), .. } => Some(text),
            Body::Direct { text: DmText::InClassicFrame { start, end }, .. } => {
                // Never through `classic_encoded`: its cell's initialiser
                // reads the text. A message built with its text in the
                // frame is built with the frame (`with_classic`), and the
                // frame leaves it only with the last reference.
                let text = self
                    .classic
                    .get()
                    .and_then(Option::as_ref)
                    .and_then(|frame| frame.as_str().get(*start as usize..*end as usize));
                debug_assert!(text.is_some(), "a DM's text points into a frame it lacks");
                text
            }
            _ => None,
        }
    }

    /// A size estimate used to charge the recipient's outbox.
    pub fn approximate_size(&self) -> usize {
        match &self.body {
            Body::Direct { text, .. } => text.len() + 96,
            Body::Room { text, .. } | Body::Server { text, .. } => text.len() + 96,
            Body::Presence { .. } => 128,
            Body::Receipt { id, .. } => id.len() + 128,
            Body::Binary { payload, .. } => payload.len() + 96,
        }
    }

    /// The text a classic client receives, encoded once and shared.
    /// `None` for presence events and binary payloads.
    pub fn classic_text(&self) -> Option<&str> {
        self.classic_encoded().map(Utf8Bytes::as_str)
    }

    /// The classic text frame as a shared buffer: cloning it is a refcount,
    /// not a copy, whatever the number of recipients.
    pub fn classic_frame(&self) -> Option<Utf8Bytes> {
        self.classic_encoded().cloned()
    }

    /// As [`Message::classic_frame`], for a writer that owns a reference:
    /// the last recipient (the only one, for a DM) takes the buffer out
    /// instead of cloning it, or encodes it without caching it.
    pub fn into_classic_frame(mut self: Arc<Self>) -> Option<Utf8Bytes> {
        // `get_mut`, not `try_unwrap`: the buffer is taken out in place
        // instead of moving the whole message out of its allocation first.
        match Arc::get_mut(&mut self) {
            Some(message) => match message.classic.take() {
                Some(frame) => frame,
                None => message.encode_classic(),
            },
            None => self.classic_frame(),
        }
    }

    fn classic_encoded(&self) -> Option<&Utf8Bytes> {
        self.classic.get_or_init(|| self.encode_classic()).as_ref()
    }

    fn encode_classic(&self) -> Option<Utf8Bytes> {
        match &self.body {
            Body::Direct { from, to, .. } => {
                Some(classic::encode_direct(from.as_str(), to.as_str(), self.dm_text()?))
            }
            Body::Room { room, from, text, .. } => Some(classic::encode_room(
                room.as_str(),
                from.as_ref().map_or("server", ClientName::as_str),
                text,
            )),
            Body::Server { text, .. } => Some(text.clone()),
            Body::Presence { .. } | Body::Binary { .. } | Body::Receipt { .. } => None,
        }
        .map(Utf8Bytes::from)
    }

    /// The text the durable store keeps for this message (the text, or a
    /// receipt's id), shared: cloning it is a reference count.
    pub fn stored_text(&self) -> Arc<str> {
        let text = match &self.body {
            // Already shared: no copy and no cache.
            Body::Direct { text: DmText::Shared(text), .. } => return Arc::clone(text),
            Body::Direct { .. } => self.dm_text().unwrap_or_default(),
            Body::Room { text, .. } | Body::Server { text, .. } => text.as_str(),
            Body::Receipt { id, .. } => id.as_str(),
            Body::Presence { .. } | Body::Binary { .. } => "",
        };
        self.stored_text.get_or_init(|| Arc::from(text)).clone()
    }

    /// The v1 text frame for the recipient's `seq`. `None` for binary payloads.
    pub fn v1_text(&self, seq: u64) -> Option<String> {
        let delivery = match &self.body {
            Body::Binary { .. } => return None,
            _ => self.v1.get_or_init(|| self.delivery().encode_tail(self.ts)),
        };
        Some(v1::frame(delivery, seq))
    }

    /// As [`Message::v1_text`], for a writer that owns a reference: the
    /// only recipient left encodes without caching (issue 6: filling the
    /// cache costs two atomic writes, for a DM that nobody reads again).
    pub fn into_v1_text(self: Arc<Self>, seq: u64) -> Option<String> {
        if matches!(self.body, Body::Binary { .. }) {
            return None;
        }
        match (Arc::strong_count(&self), self.v1.get()) {
            (1, None) => Some(self.delivery().encode_frame(self.ts, seq)),
            _ => self.v1_text(seq),
        }
    }

    /// The v1 binary frame for the recipient's `seq`, or `None` for text messages.
    pub fn v1_binary(&self, seq: u64) -> Option<Bytes> {
        match &self.body {
            Body::Binary { from, room, payload } => Some(binary::encode_incoming(
                seq,
                self.ts,
                from.as_str(),
                room.as_ref().map(RoomName::as_str),
                payload,
            )),
            _ => None,
        }
    }

    /// The payload a classic client gets for a binary message: the bytes alone.
    pub fn classic_binary(&self) -> Option<Bytes> {
        match &self.body {
            Body::Binary { payload, .. } => Some(payload.clone()),
            _ => None,
        }
    }

    fn delivery(&self) -> v1::Delivery<'_> {
        match &self.body {
            Body::Direct { from, to, .. } => v1::Delivery::Dm {
                from: from.as_str(),
                to: to.as_str(),
                text: self.dm_text().unwrap_or_default(),
            },
            Body::Room { room, from, text, rseq } => v1::Delivery::Room {
                room: room.as_str(),
                from: from.as_ref().map(ClientName::as_str),
                text,
                rseq: *rseq,
            },
            Body::Receipt { id, to } => v1::Delivery::Receipt { id, to: to.as_str() },
            Body::Server { text, broadcast } => {
                v1::Delivery::Server { text, broadcast: *broadcast }
            }
            Body::Presence { room, name, event } => v1::Delivery::Presence {
                room: room.as_ref().map(RoomName::as_str),
                name: name.as_str(),
                event: *event,
            },
            // Callers handle binary before asking for a text delivery.
            Body::Binary { .. } => v1::Delivery::Server { text: "", broadcast: false },
        }
    }
}
