//! [`Client`]: the cheap, cloneable handle. It numbers requests and puts them
//! in the bounded send queue; the background task does all socket work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_protocol::v1::Since;
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::{open, Endpoint};
use crate::error::{ConnectError, SendError};
use crate::event::{Events, State};
use crate::options::ClientBuilder;
use crate::outbound::{Outbound, Target};
use crate::task::{Command, Task};

/// The longest id or binary target the binary header can carry, in bytes.
const MAX_HEADER_FIELD: usize = 255;

/// State shared by every handle and the background task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The current connection state; the task writes it.
    pub(crate) state: watch::Sender<State>,
    /// Set to true to ask the task to close; never reset.
    pub(crate) close: watch::Sender<bool>,
    /// The next auto-generated request id.
    next_id: AtomicU64,
    /// The highest delivery `seq` handed to the consumer; the task writes it.
    pub(crate) last_seq: AtomicU64,
    /// The send queue's capacity, for [`SendError::QueueFull`].
    capacity: usize,
    /// Our name, as given to the builder.
    name: String,
}

/// A connection to a Switchboard hub speaking protocol v1, with automatic
/// reconnection. Like a `QWebSocket`, it has methods to send and a stream of
/// [`Event`](crate::Event)s (the signals); unlike it, sending never blocks on
/// the network: messages go into a bounded queue that one background task
/// drains.
///
/// Every sending method returns the request's id — the caller's (see
/// [`Outbound::with_id`]) or a number from a per-client counter — which the
/// hub's [`Event::Ack`](crate::Event::Ack) or [`Event::Error`](crate::Event::Error) names.
/// The counter starts at the client's creation time in microseconds, so a
/// restarted program does not reuse ids the hub still remembers (it would
/// take them for retries and not deliver them).
///
/// Cloning is cheap; all clones share the connection. When every clone is
/// dropped, the queue is drained and the connection closed.
///
/// ```no_run
/// use switchboard_client::{Client, Event};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, mut events) = Client::connect("ws://127.0.0.1:8888", "alice").await?;
/// client.join("lobby")?;
/// client.publish("lobby", "hello, room")?;
/// let id = client.send_direct("bob", "hi bob")?;
/// while let Some(event) = events.recv().await {
///     match event {
///         Event::Ack { id: acked, .. } if acked == id => break,
///         Event::Error { message, .. } => eprintln!("refused: {message}"),
///         other => println!("{other:?}"),
///     }
/// }
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Client {
    /// Connects to `url` as `name` with default options (see [`ClientBuilder`]).
    ///
    /// # Errors
    /// When the connection, handshake or welcome fails; e.g.
    /// [`ConnectError::Rejected`] with status 409 when `name` is online already.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), switchboard_client::ConnectError> {
    /// let (client, events) = switchboard_client::Client::connect("ws://127.0.0.1:8888", "alice").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        url: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<(Client, Events), ConnectError> {
        ClientBuilder::new(url, name).connect().await
    }

    /// Options for a connection to `url` as `name`.
    pub fn builder(url: impl Into<String>, name: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url, name)
    }

    pub(crate) async fn start(options: ClientBuilder) -> Result<(Client, Events), ConnectError> {
        let endpoint = Endpoint::new(&options.url, &options.name, options.ca.as_ref())?;
        // Client-ack mode from the start: nothing received yet, so resume after 0.
        let resume = options.acks.then_some(0);
        let (socket, welcome) = open(&endpoint, options.connect_timeout, resume).await?;
        let (commands, command_receiver) = mpsc::channel(options.send_queue_capacity);
        let (event_sender, receiver) = mpsc::channel(options.event_capacity);
        let shared = Arc::new(Shared {
            state: watch::Sender::new(State::Connected),
            close: watch::Sender::new(false),
            next_id: AtomicU64::new(first_id()),
            last_seq: AtomicU64::new(0),
            capacity: options.send_queue_capacity,
            name: options.name.clone(),
        });
        let task = Task::new(endpoint, &options, command_receiver, event_sender, shared.clone());
        tokio::spawn(task.run(socket, welcome));
        Ok((Client { commands, shared }, Events { receiver }))
    }

    /// Our name, as given when connecting.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The connection's current state.
    pub fn state(&self) -> State {
        *self.shared.state.borrow()
    }

    /// The highest delivery `seq` put in the event queue so far: in
    /// client-ack mode (the default) since the client was created, and what
    /// the next reconnect resumes after; otherwise since the current
    /// session started.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Relaxed)
    }

    /// Gives `message` an id if it has none and checks what the binary header can carry.
    fn number(&self, message: &mut Outbound) -> Result<String, SendError> {
        let slot = message.id_slot();
        let id = match slot {
            Some(id) => id.clone(),
            None => {
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed).to_string();
                *slot = Some(id.clone());
                id
            }
        };
        if let Outbound::Binary { target: Target::Client(name) | Target::Room(name), .. } = message
        {
            if id.len() > MAX_HEADER_FIELD || name.len() > MAX_HEADER_FIELD {
                return Err(SendError::Invalid(format!(
                    "binary ids and targets are at most {MAX_HEADER_FIELD} bytes"
                )));
            }
        }
        Ok(id)
    }

    /// Queues `message` without waiting and returns its id.
    ///
    /// # Errors
    /// [`SendError::QueueFull`] when the send queue is full (nothing is
    /// queued), [`SendError::Closed`] after the client closed.
    ///
    /// ```no_run
    /// use switchboard_client::{Outbound, SendError};
    /// # fn demo(client: &switchboard_client::Client) {
    /// match client.try_send(Outbound::direct("bob", "hi")) {
    ///     Ok(id) => println!("queued as {id}"),
    ///     Err(SendError::QueueFull { capacity }) => eprintln!("{capacity} messages waiting; retry later"),
    ///     Err(other) => eprintln!("{other}"),
    /// }
    /// # }
    /// ```
    pub fn try_send(&self, mut message: Outbound) -> Result<String, SendError> {
        let id = self.number(&mut message)?;
        self.commands.try_send(Command::Send(message)).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                SendError::QueueFull { capacity: self.shared.capacity }
            }
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })?;
        Ok(id)
    }

    /// Queues `message`, waiting while the send queue is full, and returns its id.
    ///
    /// # Errors
    /// [`SendError::Closed`] after the client closed.
    ///
    /// ```no_run
    /// # async fn demo(client: &switchboard_client::Client) -> Result<(), switchboard_client::SendError> {
    /// let id = client.send(switchboard_client::Outbound::server("hello, operator")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, mut message: Outbound) -> Result<String, SendError> {
        let id = self.number(&mut message)?;
        self.commands.send(Command::Send(message)).await.map_err(|_| SendError::Closed)?;
        Ok(id)
    }

    /// Sends a private message to the client `to`; see [`Client::try_send`].
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn send_direct(&self, to: &str, text: &str) -> Result<String, SendError> {
        self.try_send(Outbound::direct(to, text))
    }

    /// Sends a private message and asks for a receipt: once `to` has
    /// acknowledged it, an [`Event::Delivered`](crate::Event::Delivered)
    /// names the returned id. Otherwise as [`Client::send_direct`].
    ///
    /// # Errors
    /// As [`Client::try_send`].
    ///
    /// ```no_run
    /// use switchboard_client::Event;
    /// # async fn demo(client: &switchboard_client::Client, events: &mut switchboard_client::Events) -> Result<(), switchboard_client::SendError> {
    /// let id = client.send_direct_with_receipt("bob", "did you get this?")?;
    /// while let Some(event) = events.recv().await {
    ///     if let Event::Delivered { id: delivered, to, .. } = event {
    ///         if delivered == id {
    ///             println!("{to} has it");
    ///             break;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn send_direct_with_receipt(&self, to: &str, text: &str) -> Result<String, SendError> {
        self.try_send(Outbound::direct(to, text).with_receipt())
    }

    /// Sends a message to the server (the operator's event log).
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn send_to_server(&self, text: &str) -> Result<String, SendError> {
        self.try_send(Outbound::server(text))
    }

    /// Joins `room`; the client re-joins it after every reconnect until [`Client::leave`].
    ///
    /// # Errors
    /// As [`Client::try_send`].
    ///
    /// ```no_run
    /// # fn demo(client: &switchboard_client::Client) -> Result<(), switchboard_client::SendError> {
    /// client.join("lobby")?;
    /// client.publish("lobby", "hello, everyone")?;
    /// client.leave("lobby")?;
    /// # Ok(()) }
    /// ```
    pub fn join(&self, room: &str) -> Result<String, SendError> {
        self.try_send(Outbound::join(room))
    }

    /// Joins `room` and first gets what its history keeps after `since`: a
    /// room sequence number ([`Since::Rseq`], as in
    /// [`Event::Room`](crate::Event::Room)'s `rseq`) or a hub time in ms
    /// since the Unix epoch ([`Since::Ts`]). After a reconnect the client
    /// re-joins from the last `rseq` it saw in the room, so history messages
    /// are neither missed nor repeated.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    ///
    /// ```no_run
    /// use switchboard_client::Since;
    /// # fn demo(client: &switchboard_client::Client) -> Result<(), switchboard_client::SendError> {
    /// client.join_since("lobby", Since::Rseq(0))?; // everything the room keeps
    /// # Ok(()) }
    /// ```
    pub fn join_since(&self, room: &str, since: Since) -> Result<String, SendError> {
        self.try_send(Outbound::join_since(room, since))
    }

    /// Leaves `room`.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn leave(&self, room: &str) -> Result<String, SendError> {
        self.try_send(Outbound::leave(room))
    }

    /// Publishes `text` to `room` (joined before); not echoed back to us.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn publish(&self, room: &str, text: &str) -> Result<String, SendError> {
        self.try_send(Outbound::publish(room, text, false))
    }

    /// Asks for `room`'s members; the answer is an [`Event::Members`](crate::Event::Members).
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn members(&self, room: &str) -> Result<String, SendError> {
        self.try_send(Outbound::members(room))
    }

    /// Asks who is online; the answer is an [`Event::Clients`](crate::Event::Clients).
    ///
    /// # Errors
    /// As [`Client::try_send`].
    ///
    /// ```no_run
    /// use switchboard_client::Event;
    /// # async fn demo(client: &switchboard_client::Client, events: &mut switchboard_client::Events) -> Result<(), switchboard_client::SendError> {
    /// let id = client.who()?;
    /// while let Some(event) = events.recv().await {
    ///     if let Event::Clients { id: Some(answer), clients } = event {
    ///         if answer == id {
    ///             println!("online: {}", clients.join(", "));
    ///             break;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn who(&self) -> Result<String, SendError> {
        self.try_send(Outbound::who())
    }

    /// Subscribes to presence, globally (`None`) or for one room; the answer
    /// is an [`Event::Members`](crate::Event::Members) with the current
    /// list, then [`Event::Presence`](crate::Event::Presence) for each change.
    /// Renewed after every reconnect.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    ///
    /// ```no_run
    /// # fn demo(client: &switchboard_client::Client) -> Result<(), switchboard_client::SendError> {
    /// client.subscribe_presence(None)?; // everyone online
    /// client.subscribe_presence(Some("lobby"))?; // one room
    /// # Ok(()) }
    /// ```
    pub fn subscribe_presence(&self, room: Option<&str>) -> Result<String, SendError> {
        self.try_send(Outbound::subscribe(room))
    }

    /// Ends a presence subscription.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn unsubscribe_presence(&self, room: Option<&str>) -> Result<String, SendError> {
        self.try_send(Outbound::unsubscribe(room))
    }

    /// Sends an application-level ping; the answer is an [`Event::Pong`](crate::Event::Pong).
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn ping(&self) -> Result<String, SendError> {
        self.try_send(Outbound::ping())
    }

    /// Sends a binary payload to the client `to`.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    ///
    /// ```no_run
    /// # fn demo(client: &switchboard_client::Client) -> Result<(), switchboard_client::SendError> {
    /// client.send_binary("bob", vec![0u8, 1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    pub fn send_binary(&self, to: &str, payload: impl Into<Bytes>) -> Result<String, SendError> {
        self.try_send(Outbound::binary_to(to, payload))
    }

    /// Sends a binary payload to every other member of `room`.
    ///
    /// # Errors
    /// As [`Client::try_send`].
    pub fn publish_binary(
        &self,
        room: &str,
        payload: impl Into<Bytes>,
    ) -> Result<String, SendError> {
        self.try_send(Outbound::binary_room(room, payload))
    }

    /// Waits until everything queued before this call was sent and every
    /// request sent was answered by the hub (acked, refused, or lost with
    /// the connection; messages that are re-sent after a reconnect are
    /// waited for). Bound it with a timeout: while the connection is down,
    /// it waits for the reconnect.
    ///
    /// # Errors
    /// [`SendError::Closed`] when the client closed first.
    ///
    /// ```no_run
    /// # async fn demo(client: &switchboard_client::Client) {
    /// let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.flush()).await;
    /// client.close().await;
    /// # }
    /// ```
    pub async fn flush(&self) -> Result<(), SendError> {
        let (done, wait) = oneshot::channel();
        self.commands.send(Command::Flush(done)).await.map_err(|_| SendError::Closed)?;
        wait.await.map_err(|_| SendError::Closed)
    }

    /// Closes the connection (close code 1000) and waits until the client is
    /// [`State::Closed`]. Messages still queued are discarded: call
    /// [`Client::flush`] first to deliver them. In client-ack mode the
    /// deliveries received so far are acknowledged first. Stops reconnection.
    pub async fn close(&self) {
        self.shared.close.send_replace(true);
        let mut state = self.shared.state.subscribe();
        let _ = state.wait_for(|state| *state == State::Closed).await;
    }

    /// Waits until the client is [`State::Closed`], whoever closed it.
    pub async fn closed(&self) {
        let mut state = self.shared.state.subscribe();
        let _ = state.wait_for(|state| *state == State::Closed).await;
    }
}

/// The first auto-generated id: the current time in microseconds, so ids
/// keep increasing across restarts of the program.
pub(crate) fn first_id() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
}
