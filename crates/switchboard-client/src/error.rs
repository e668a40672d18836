//! The client's typed errors: why a connection failed, why a send was refused.

/// Why connecting (or reconnecting) to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be used (not `ws://` or `wss://`, no host, unparsable).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection failed (refused, unreachable, reset).
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    /// The hub answered the handshake with an HTTP error status.
    #[error("{reason} (HTTP {status})")]
    Rejected {
        /// The HTTP status, e.g. 409 when the name is online already.
        status: u16,
        /// The hub's one-line explanation (the response body).
        reason: String,
    },
    /// The WebSocket handshake or the welcome failed for another reason.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The hub did not complete the handshake and welcome in time.
    #[error("no welcome from the hub within {0:?}")]
    Timeout(std::time::Duration),
    /// The extra CA certificate ([`ClientBuilder::ca_pem`](crate::ClientBuilder::ca_pem))
    /// cannot be used: unreadable, or no valid PEM certificate in it.
    #[error("cannot load CA certificate {origin}: {reason}")]
    Ca {
        /// The file, or "(PEM bytes)".
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS handshake failed, e.g. the hub's certificate is not trusted
    /// (pass its CA with [`ClientBuilder::ca_pem`](crate::ClientBuilder::ca_pem)).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

impl ConnectError {
    /// The message with its causes, on one line (`connection failed: Connection refused`).
    pub(crate) fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// True when retrying cannot help: the hub refused this request with an
    /// HTTP 4xx status (name taken, invalid name), the URL is unusable, or the
    /// extra CA certificate cannot be loaded.
    ///
    /// ```
    /// use switchboard_client::ConnectError;
    /// let taken = ConnectError::Rejected { status: 409, reason: "name taken".into() };
    /// assert!(taken.is_permanent());
    /// let refused = ConnectError::Io(std::io::ErrorKind::ConnectionRefused.into());
    /// assert!(!refused.is_permanent());
    /// ```
    pub fn is_permanent(&self) -> bool {
        match self {
            ConnectError::InvalidUrl { .. } | ConnectError::Ca { .. } => true,
            // 408 and 429 say "later", not "never".
            ConnectError::Rejected { status, .. } => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            _ => false,
        }
    }
}

/// Why a message was not queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send queue holds `capacity` messages already; nothing was queued.
    /// Slow down, wait with [`Client::send`](crate::Client::send), or raise
    /// [`ClientBuilder::send_queue_capacity`](crate::ClientBuilder::send_queue_capacity).
    #[error("send queue is full ({capacity} messages waiting); message not queued")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The client was closed (or gave up reconnecting); nothing more can be sent.
    #[error("client is closed; message not queued")]
    Closed,
    /// The message cannot be encoded (an id or binary target over 255 bytes).
    #[error("invalid message: {0}")]
    Invalid(String),
}
