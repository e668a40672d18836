//! [`Outbound`]: one message for the hub, a v1 request or a binary payload,
//! before it gets its id and is queued.

use bytes::Bytes;
use switchboard_protocol::v1::{Request, Since};

/// Where a binary payload goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// To the named client.
    Client(String),
    /// To every member of the named room but us.
    Room(String),
}

/// A message for the hub. Build one with the constructors, optionally give it
/// an id with [`Outbound::with_id`] (otherwise the client numbers it), and
/// queue it with [`Client::send`](crate::Client::send) or
/// [`Client::try_send`](crate::Client::try_send).
///
/// ```
/// use switchboard_client::Outbound;
/// let message = Outbound::direct("bob", "hi").with_id("greeting-1");
/// assert_eq!(message.id(), Some("greeting-1"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A protocol v1 request (text frame).
    Request(Request),
    /// A binary payload (binary frame).
    Binary {
        /// Id for the ack; `None` until numbered.
        id: Option<String>,
        /// Destination.
        target: Target,
        /// The bytes.
        payload: Bytes,
    },
}

impl Outbound {
    /// A private message to the client `to`.
    pub fn direct(to: impl Into<String>, text: impl Into<String>) -> Self {
        Outbound::Request(Request::Dm {
            id: None,
            to: to.into(),
            text: text.into(),
            receipt: false,
        })
    }

    /// A message to the server (the operator's event log).
    pub fn server(text: impl Into<String>) -> Self {
        Outbound::Request(Request::Server { id: None, text: text.into() })
    }

    /// Join `room`, creating it if needed; it is re-joined after every reconnect.
    pub fn join(room: impl Into<String>) -> Self {
        Outbound::Request(Request::Join { id: None, room: room.into(), since: None })
    }

    /// Join `room` and first get the messages its history keeps after `since`
    /// (a room sequence number or a hub time); re-joined after every reconnect.
    ///
    /// ```
    /// use switchboard_client::{Outbound, Since};
    /// let join = Outbound::join_since("lobby", Since::Rseq(41));
    /// assert!(matches!(join, Outbound::Request(_)));
    /// ```
    pub fn join_since(room: impl Into<String>, since: Since) -> Self {
        Outbound::Request(Request::Join { id: None, room: room.into(), since: Some(since) })
    }

    /// Leave `room`.
    pub fn leave(room: impl Into<String>) -> Self {
        Outbound::Request(Request::Leave { id: None, room: room.into() })
    }

    /// Publish `text` to `room` (which we must have joined); `echo` delivers it to us too.
    pub fn publish(room: impl Into<String>, text: impl Into<String>, echo: bool) -> Self {
        Outbound::Request(Request::Publish { id: None, room: room.into(), text: text.into(), echo })
    }

    /// Ask for `room`'s members (answered by [`Event::Members`](crate::Event::Members)).
    pub fn members(room: impl Into<String>) -> Self {
        Outbound::Request(Request::Members { id: None, room: room.into() })
    }

    /// Ask who is online (answered by [`Event::Clients`](crate::Event::Clients)).
    pub fn who() -> Self {
        Outbound::Request(Request::Who { id: None })
    }

    /// Subscribe to presence, globally (`None`) or for a room; renewed after every reconnect.
    pub fn subscribe(room: Option<&str>) -> Self {
        Outbound::Request(Request::Subscribe { id: None, room: room.map(str::to_owned) })
    }

    /// End a presence subscription.
    pub fn unsubscribe(room: Option<&str>) -> Self {
        Outbound::Request(Request::Unsubscribe { id: None, room: room.map(str::to_owned) })
    }

    /// An application-level ping (answered by [`Event::Pong`](crate::Event::Pong)).
    pub fn ping() -> Self {
        Outbound::Request(Request::Ping { id: None })
    }

    /// A binary payload for the client `to`.
    pub fn binary_to(to: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Outbound::Binary { id: None, target: Target::Client(to.into()), payload: payload.into() }
    }

    /// A binary payload for every other member of `room`.
    pub fn binary_room(room: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Outbound::Binary { id: None, target: Target::Room(room.into()), payload: payload.into() }
    }

    /// Asks for a delivery receipt ([`Event::Delivered`](crate::Event::Delivered))
    /// once the recipient acknowledges this message. Only private text
    /// messages ([`Outbound::direct`]) have receipts; other messages are
    /// returned unchanged.
    ///
    /// ```
    /// use switchboard_client::Outbound;
    /// let message = Outbound::direct("bob", "hi").with_receipt().with_id("m-1");
    /// assert!(message.wants_receipt());
    /// assert!(!Outbound::server("hi").with_receipt().wants_receipt());
    /// ```
    pub fn with_receipt(mut self) -> Self {
        if let Outbound::Request(Request::Dm { receipt, .. }) = &mut self {
            *receipt = true;
        }
        self
    }

    /// True for a private message that asks for a receipt.
    pub fn wants_receipt(&self) -> bool {
        matches!(self, Outbound::Request(Request::Dm { receipt: true, .. }))
    }

    /// True for messages the client re-sends, with the same id, when the
    /// connection drops before the hub answered them: the ones the hub
    /// deduplicates by id (private messages, text or binary, and room
    /// publishes), so a message it had accepted is not delivered twice.
    pub(crate) fn is_retried(&self) -> bool {
        matches!(
            self,
            Outbound::Request(Request::Dm { .. } | Request::Publish { .. })
                | Outbound::Binary { target: Target::Client(_), .. }
        )
    }

    /// Sets the id echoed in the ack or error.
    ///
    /// For private messages (text or binary) and room publishes the id is
    /// also how the hub recognises a retry: a second message from this name with an id
    /// it saw within its deduplication window (10 minutes by default) is
    /// acknowledged as a duplicate and not delivered. Keep ids unique per
    /// name, across restarts of the program too; the generated ones are.
    pub fn with_id(mut self, new_id: impl Into<String>) -> Self {
        *self.id_slot() = Some(new_id.into());
        self
    }

    /// The id, if one was set.
    pub fn id(&self) -> Option<&str> {
        match self {
            Outbound::Request(request) => request.id(),
            Outbound::Binary { id, .. } => id.as_deref(),
        }
    }

    pub(crate) fn id_slot(&mut self) -> &mut Option<String> {
        match self {
            Outbound::Request(
                Request::Dm { id, .. }
                | Request::Server { id, .. }
                | Request::Join { id, .. }
                | Request::Leave { id, .. }
                | Request::Publish { id, .. }
                | Request::Members { id, .. }
                | Request::Who { id }
                | Request::Subscribe { id, .. }
                | Request::Unsubscribe { id, .. }
                | Request::Ping { id }
                | Request::Ack { id, .. },
            ) => id,
            Outbound::Binary { id, .. } => id,
        }
    }
}
