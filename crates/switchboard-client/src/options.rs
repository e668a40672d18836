//! Client options: the [`ReconnectPolicy`], the queue sizes and the extra
//! CA certificate for `wss://` ([`CaPem`]), gathered by [`ClientBuilder`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::Client;
use crate::error::ConnectError;
use crate::event::Events;

/// When and how often to reconnect after the connection is lost: exponential
/// backoff with jitter, so a restarted hub is not hit by every client at once.
///
/// Attempt `n` (from 1) waits `min(max_delay, initial_delay * multiplier^(n-1))`,
/// less a random share of up to `jitter` of it. A hub that refuses the
/// handshake with HTTP 4xx (invalid name; name taken, after a grace period of
/// 90 s in case the hub still holds our old session) or closes with 4000
/// (kicked) ends reconnection: retrying cannot help.
///
/// ```
/// use std::time::Duration;
/// use switchboard_client::ReconnectPolicy;
/// let policy = ReconnectPolicy::default().max_attempts(Some(5)).jitter(0.0);
/// assert_eq!(policy.delay(1), Duration::from_millis(250));
/// assert_eq!(policy.delay(2), Duration::from_millis(500));
/// assert!(ReconnectPolicy::disabled().delay(1) == Duration::ZERO);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    enabled: bool,
    initial_delay: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: f64,
    max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// 250 ms doubling up to 30 s, 30 % jitter, unlimited attempts.
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.3,
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: a lost connection closes the client.
    pub fn disabled() -> Self {
        ReconnectPolicy { enabled: false, ..ReconnectPolicy::default() }
    }

    /// Exponential backoff from `initial` up to `max` (other settings default).
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        ReconnectPolicy { initial_delay: initial, max_delay: max, ..ReconnectPolicy::default() }
    }

    /// The factor between two delays (at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// The largest share of a delay removed at random, from 0 (none) to 1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Give up after this many failed attempts in a row (`None`: never).
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// True unless built with [`ReconnectPolicy::disabled`].
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// True when attempt number `attempt` (from 1) may still be made.
    pub fn allows(&self, attempt: u32) -> bool {
        self.enabled && self.max_attempts.is_none_or(|max| attempt <= max)
    }

    /// The wait before attempt number `attempt` (from 1), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        if !self.enabled {
            return Duration::ZERO;
        }
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let base = base.min(self.max_delay.as_secs_f64());
        let cut = if self.jitter > 0.0 { rand::random::<f64>() * self.jitter } else { 0.0 };
        Duration::from_secs_f64(base * (1.0 - cut))
    }
}

/// A CA certificate (PEM) to trust for `wss://`, in addition to the system's
/// roots: a file to read, or the PEM text itself. For a hub with a
/// self-signed certificate, this is the certificate.
///
/// ```
/// use switchboard_client::CaPem;
/// let from_file = CaPem::from(std::path::Path::new("ca.pem"));
/// let from_bytes = CaPem::from(b"-----BEGIN CERTIFICATE-----...".to_vec());
/// assert_ne!(from_file, from_bytes);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaPem {
    /// A PEM file, read when connecting.
    File(PathBuf),
    /// PEM text (one or more `CERTIFICATE` blocks).
    Bytes(Vec<u8>),
}

impl CaPem {
    /// Where the certificate comes from, for error messages.
    pub(crate) fn origin(&self) -> String {
        match self {
            CaPem::File(path) => path.display().to_string(),
            CaPem::Bytes(_) => "(PEM bytes)".to_owned(),
        }
    }
}

impl From<PathBuf> for CaPem {
    fn from(path: PathBuf) -> Self {
        CaPem::File(path)
    }
}

impl From<&Path> for CaPem {
    fn from(path: &Path) -> Self {
        CaPem::File(path.to_owned())
    }
}

impl From<Vec<u8>> for CaPem {
    fn from(pem: Vec<u8>) -> Self {
        CaPem::Bytes(pem)
    }
}

impl From<&[u8]> for CaPem {
    fn from(pem: &[u8]) -> Self {
        CaPem::Bytes(pem.to_vec())
    }
}

/// Options for a [`Client`]; [`Client::connect`] uses the defaults.
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_client::{ClientBuilder, ReconnectPolicy};
/// # async fn demo() -> Result<(), switchboard_client::ConnectError> {
/// let (client, mut events) = ClientBuilder::new("ws://127.0.0.1:8888", "alice")
///     .reconnect(ReconnectPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5)))
///     .send_queue_capacity(256)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) name: String,
    pub(crate) reconnect: ReconnectPolicy,
    pub(crate) send_queue_capacity: usize,
    pub(crate) event_capacity: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) ca: Option<CaPem>,
    pub(crate) acks: bool,
    pub(crate) retry_sends: bool,
}

impl ClientBuilder {
    /// Options for connecting to `url` (`ws://HOST:PORT` or `wss://HOST:PORT`,
    /// any path) as `name`.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            name: name.into(),
            reconnect: ReconnectPolicy::default(),
            send_queue_capacity: 1024,
            event_capacity: 1024,
            max_in_flight: 1024,
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(30)),
            ca: None,
            acks: true,
            retry_sends: true,
        }
    }

    /// Client-ack mode (default on): connect with `?resume=SEQ`, the last
    /// delivery `seq` received, and acknowledge deliveries to the hub, which
    /// keeps each stored message (private messages, messages from the
    /// operator, receipts) until acknowledged and replays what we have not
    /// acknowledged when we reconnect, so none is lost or repeated across
    /// reconnects. Acks are cumulative and cheap: one after every 64
    /// deliveries, within 50 ms of a delivery, and before a requested close.
    ///
    /// Off, the client connects without `resume` and sends no acks: the hub
    /// counts a stored message as delivered once it has written it to the
    /// socket, so one in flight when the connection drops is lost. Use it
    /// for hubs that predate resume (the client also falls back by itself
    /// when the hub does not know the `ack` request).
    pub fn acks(mut self, enabled: bool) -> Self {
        self.acks = enabled;
        self
    }

    /// Re-send private messages (text or binary) and room publishes the hub
    /// had not answered when the connection dropped, with their ids, after
    /// reconnecting and re-joining rooms (default on). The hub deduplicates
    /// them by id, so a message it had accepted is not delivered twice. Off, such messages are reported as
    /// [`Event::Lost`](crate::Event::Lost) at once.
    pub fn retry_sends(mut self, enabled: bool) -> Self {
        self.retry_sends = enabled;
        self
    }

    /// Also trust this CA certificate for `wss://` (a file path or PEM bytes),
    /// e.g. a hub's self-signed certificate; the system's roots stay trusted.
    /// A CA that cannot be loaded fails [`connect`](ClientBuilder::connect)
    /// with [`ConnectError::Ca`]. Not used for `ws://`.
    pub fn ca_pem(mut self, ca: impl Into<CaPem>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    /// How to reconnect after the connection is lost (default: on, see [`ReconnectPolicy`]).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Messages that may wait to be sent (default 1024); more get [`SendError::QueueFull`](crate::SendError::QueueFull).
    pub fn send_queue_capacity(mut self, capacity: usize) -> Self {
        self.send_queue_capacity = capacity.max(1);
        self
    }

    /// Events that may wait to be read from [`Events`] (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Requests sent but not yet answered by the hub (default 1024); while
    /// this many are outstanding, the send queue is not drained.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests.max(1);
        self
    }

    /// How long one connection attempt may take, welcome included (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After this long without hearing from the hub, ping it; after twice
    /// this long, consider the connection lost and reconnect (default 30 s;
    /// `None` relies on the operating system to notice a dead connection).
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval.filter(|interval| !interval.is_zero());
        self
    }

    /// Connects and waits for the hub's welcome.
    ///
    /// # Errors
    /// When this first attempt fails; reconnection only applies to a
    /// connection that was established once.
    pub async fn connect(self) -> Result<(Client, Events), ConnectError> {
        Client::start(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_jitter_only_shortens() {
        let policy =
            ReconnectPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
                .jitter(0.5)
                .max_attempts(Some(20));
        for attempt in 1..=20 {
            let base = (100.0 * 2f64.powi(attempt as i32 - 1)).min(1000.0);
            for _ in 0..50 {
                let delay = policy.delay(attempt).as_secs_f64() * 1000.0;
                assert!(delay <= base + 1e-6 && delay >= base * 0.5 - 1e-6, "{attempt}: {delay}");
            }
        }
        assert!(policy.allows(20));
        assert!(!policy.allows(21));
        assert!(!ReconnectPolicy::disabled().allows(1));
        assert!(ReconnectPolicy::default().allows(u32::MAX));
        assert!(policy.delay(u32::MAX) <= Duration::from_secs(1));
    }
}
