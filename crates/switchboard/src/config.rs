//! Configuration: defaults, the TOML file, and command-line overrides.
//!
//! Every limit the server enforces lives here, with its default. `serve
//! --config FILE` reads the same keys as the flags (underscores for dashes);
//! flags win over the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::hub::HubLimits;
use crate::store::SyncPolicy;

/// Everything the server needs to know; see README.md for each option.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token required on /api and /metrics; without one, both answer loopback peers only.
    pub admin_token: Option<String>,
    /// Largest message (frame) accepted, in bytes; larger closes with 1009.
    pub max_message_bytes: usize,
    /// Bytes a client's outgoing queue may hold before it is disconnected (1008).
    pub max_queued_bytes: usize,
    /// Longest client or room name, in characters.
    pub max_name_chars: usize,
    /// Rooms one client may join.
    pub max_rooms_per_client: usize,
    /// Members one room may hold.
    pub max_members_per_room: usize,
    /// Sustained messages per second per connection (0: unlimited).
    pub rate_messages_per_sec: u32,
    /// Sustained bytes per second per connection (0: unlimited).
    pub rate_bytes_per_sec: u64,
    /// Refused messages in a row after which a client is disconnected (1008).
    pub rate_strikes: u32,
    /// Most simultaneous connections (HTTP and WebSocket); more wait in the accept queue.
    pub max_connections: usize,
    /// Seconds of silence after which the server pings a client.
    pub ping_interval_secs: u64,
    /// Seconds after a ping without any answer before the client is dropped (4001).
    pub pong_timeout_secs: u64,
    /// Seconds a client has to complete the HTTP handshake.
    pub handshake_timeout_secs: u64,
    /// Seconds shutdown waits for queues to drain before closing anyway.
    pub drain_timeout_secs: u64,
    /// TCP accept backlog.
    pub backlog: u32,

    // --- cluster (issue 8) ---
    /// Redis URL (`redis://HOST:PORT`) of the cluster to join; unset, the
    /// hub is a single in-memory node.
    pub cluster: Option<String>,
    /// This node's id in the cluster, unique among nodes; random when unset.
    pub cluster_node_id: Option<String>,
    /// Seconds a node's names stay claimed without a heartbeat: a node that
    /// dies (kill -9) frees its names, and its clients leave, within this time.
    pub cluster_ttl_secs: u64,

    // --- TLS and conformance (issue 5) ---
    /// PEM certificate chain; with [`Config::tls_key`], the port speaks only
    /// TLS (https and wss). Both or neither must be set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for [`Config::tls_cert`].
    pub tls_key: Option<PathBuf>,
    /// Path of a plain WebSocket echo endpoint (e.g. `/echo`) for the
    /// RFC 6455 conformance suite; unset (the default), there is none.
    pub echo_path: Option<String>,

    // --- access control (issue 5) ---
    /// JWT authentication (the `[auth]` table); unset (the default), any
    /// client may take any free name.
    pub auth: Option<AuthConfig>,
    /// Browser origins (`scheme://host[:port]`) allowed to open a WebSocket,
    /// besides the server's own (the request's `Host`); `"*"` allows any.
    /// A non-URL `Origin` (a classic client's name) is never checked.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (IP addresses or CIDR blocks) whose `X-Forwarded-For`
    /// header is believed; from anyone else it is ignored.
    pub trusted_proxies: Vec<String>,
    /// Most WebSocket clients at once; the handshake answers 503 beyond it.
    /// Keep it below `max_connections`, which also counts HTTP requests.
    pub max_clients: usize,
    /// Most WebSocket clients per remote address (0: unlimited); the
    /// handshake answers 429 beyond it.
    pub max_clients_per_ip: usize,
    /// Seconds without a data frame from a client before it is closed with
    /// 4003 (0: never). Pings and pongs do not count as data.
    pub idle_timeout_secs: u64,

    // --- durability (issue 7) ---
    /// Directory of the durable store (`switchboard.db`), created if missing.
    pub data_dir: PathBuf,
    /// Keep nothing on disk: messages to offline clients are refused, as
    /// before the durable store existed.
    pub ephemeral: bool,
    /// When store commits are fsynced: `full` (every group commit), `normal`
    /// (at WAL checkpoints: survives kill -9, not power loss) or `off`.
    pub sync: SyncPolicy,
    /// Stored, unacknowledged messages one client's inbox may hold.
    pub inbox_max_messages: u64,
    /// Bytes one client's inbox may hold.
    pub inbox_max_bytes: u64,
    /// Hours a stored message is kept before retention removes it.
    pub inbox_max_age_hours: u64,
    /// Bytes all inboxes together may hold.
    pub store_max_bytes: u64,
    /// Bytes of writes that may wait for the store's disk (a stall longer
    /// than this absorbs refuses stored sends until the disk catches up).
    pub store_queue_bytes: usize,
    /// Names the hub keeps inboxes for (a name is known once it connected).
    pub max_known_names: usize,
    /// Messages each room keeps for joins with `since` (0: no history).
    pub room_history: usize,
    /// Seconds a sender's message ids are remembered to drop retried sends.
    pub dedup_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        let limits = HubLimits::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8888)),
            admin_token: None,
            max_message_bytes: 1024 * 1024,
            max_queued_bytes: limits.max_queued_bytes,
            max_name_chars: limits.max_name_chars,
            max_rooms_per_client: limits.max_rooms_per_client,
            max_members_per_room: limits.max_members_per_room,
            rate_messages_per_sec: 10_000,
            rate_bytes_per_sec: 16 * 1024 * 1024,
            rate_strikes: 100,
            max_connections: 20_000,
            ping_interval_secs: 30,
            pong_timeout_secs: 30,
            handshake_timeout_secs: 5,
            drain_timeout_secs: 5,
            backlog: 4096,
            // --- cluster (issue 8) ---
            cluster: None,
            cluster_node_id: None,
            cluster_ttl_secs: 10,
            // --- TLS and conformance (issue 5) ---
            tls_cert: None,
            tls_key: None,
            echo_path: None,
            // --- access control (issue 5) ---
            auth: None,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_clients: 16_000,
            max_clients_per_ip: 0,
            idle_timeout_secs: 0,
            // --- durability (issue 7) ---
            data_dir: PathBuf::from("switchboard-data"),
            ephemeral: false,
            sync: SyncPolicy::Full,
            inbox_max_messages: limits.inbox_max_messages,
            inbox_max_bytes: limits.inbox_max_bytes,
            inbox_max_age_hours: 7 * 24,
            store_max_bytes: limits.store_max_bytes,
            store_queue_bytes: 64 * 1024 * 1024,
            max_known_names: limits.max_known_names,
            room_history: limits.room_history,
            dedup_window_secs: limits.dedup_window.as_secs(),
        }
    }
}

/// Why the configuration could not be loaded. The cause of a file that
/// cannot be read or parsed is its `source()`, not part of its message:
/// printed as a chain (`{:#}` with anyhow, as the binary does), it appears
/// once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys not in the file keep their defaults.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or a value is invalid.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let config = Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// When the text is not valid TOML for this schema.
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the option.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_queued_bytes", self.max_queued_bytes as u64),
            ("max_name_chars", self.max_name_chars as u64),
            ("max_connections", self.max_connections as u64),
            ("ping_interval_secs", self.ping_interval_secs),
            ("pong_timeout_secs", self.pong_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("backlog", u64::from(self.backlog)),
            ("inbox_max_messages", self.inbox_max_messages),
            ("inbox_max_bytes", self.inbox_max_bytes),
            ("inbox_max_age_hours", self.inbox_max_age_hours),
            ("store_max_bytes", self.store_max_bytes),
            ("store_queue_bytes", self.store_queue_bytes as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be greater than 0")));
            }
        }
        if self.max_queued_bytes < self.max_message_bytes {
            return Err(ConfigError::Invalid(
                "max_queued_bytes must be at least max_message_bytes".into(),
            ));
        }
        if !self.ephemeral && self.store_queue_bytes < self.max_message_bytes {
            // A message larger than the queue could never be stored.
            return Err(ConfigError::Invalid(
                "store_queue_bytes must be at least max_message_bytes".into(),
            ));
        }
        if matches!(&self.admin_token, Some(token) if token.is_empty()) {
            return Err(ConfigError::Invalid("admin_token must not be empty".into()));
        }
        // --- cluster (issue 8) ---
        if self.cluster_ttl_secs == 0 {
            return Err(ConfigError::Invalid("cluster_ttl_secs must be greater than 0".into()));
        }
        if let Some(url) = &self.cluster {
            if let Err(error) = redis::Client::open(url.as_str()) {
                return Err(ConfigError::Invalid(format!("cluster {url:?}: {error}")));
            }
        }
        if matches!(&self.cluster_node_id, Some(id) if id.is_empty() || id.contains(char::is_whitespace))
        {
            return Err(ConfigError::Invalid("cluster_node_id must be a non-empty word".into()));
        }
        // --- TLS and conformance (issue 5) ---
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key must be given together (or neither)".into(),
            ));
        }
        if let Some(path) = &self.echo_path {
            // Matched literally against the request path, so it must look like one.
            if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#']) {
                return Err(ConfigError::Invalid(format!(
                    "echo_path must be a path such as /echo, got {path:?}"
                )));
            }
        }
        // --- access control (issue 5) ---
        if self.max_clients == 0 {
            return Err(ConfigError::Invalid("max_clients must be greater than 0".into()));
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        for origin in &self.allowed_origins {
            crate::server::auth::parse_allowed_origin(origin).map_err(ConfigError::Invalid)?;
        }
        for proxy in &self.trusted_proxies {
            crate::server::auth::Cidr::parse(proxy).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The hub's share of the configuration.
    pub fn hub_limits(&self) -> HubLimits {
        HubLimits {
            max_queued_bytes: self.max_queued_bytes,
            max_name_chars: self.max_name_chars,
            max_rooms_per_client: self.max_rooms_per_client,
            max_members_per_room: self.max_members_per_room,
            inbox_max_messages: self.inbox_max_messages,
            inbox_max_bytes: self.inbox_max_bytes,
            store_max_bytes: self.store_max_bytes,
            max_known_names: self.max_known_names,
            room_history: self.room_history,
            max_history_rooms: HubLimits::default().max_history_rooms,
            dedup_window: Duration::from_secs(self.dedup_window_secs),
        }
    }

    /// Issue 7: how to open the durable store, or `None` with `ephemeral`.
    pub fn store_config(&self) -> Option<crate::store::StoreConfig> {
        (!self.ephemeral).then(|| crate::store::StoreConfig {
            data_dir: self.data_dir.clone(),
            sync: self.sync,
            max_batch: 4096,
            queue_limit_bytes: self.store_queue_bytes,
            max_age: Duration::from_secs(self.inbox_max_age_hours.saturating_mul(3600)),
            dedup_window: Duration::from_secs(self.dedup_window_secs),
            room_history: self.room_history,
        })
    }

    /// Cluster mode (issue 8): how to join, or `None` on a single node. The
    /// node id is drawn at random when not configured.
    pub fn cluster_options(&self) -> Option<crate::cluster::ClusterOptions> {
        let url = self.cluster.clone()?;
        let node_id = self
            .cluster_node_id
            .clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        Some(crate::cluster::ClusterOptions {
            url,
            node_id,
            ttl: Duration::from_secs(self.cluster_ttl_secs),
        })
    }

    /// Ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
    /// Pong timeout as a duration.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_secs)
    }
    /// Handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    /// Drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

// --- access control (issue 5) ---

/// The `[auth]` table: how client tokens (JWTs) are verified.
///
/// One algorithm per server, so a token can never pick a weaker one (the
/// "alg confusion" attack). Claims: `sub` is the client's name, `exp` is
/// required, `nbf` is honoured, `aud`/`iss` are checked when configured, and
/// an optional `rooms` list limits the rooms the client may join or watch.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (shared secret), `RS256` or `EdDSA` (public key).
    pub algorithm: JwtAlgorithm,
    /// The HS256 shared secret, at least 32 bytes.
    pub secret: Option<String>,
    /// PEM file with the RS256 or EdDSA public key (SPKI, or PKCS#1 for RSA).
    pub public_key: Option<PathBuf>,
    /// Accepted `aud` values; when empty, `aud` is not checked.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Required `iss`; when unset, `iss` is not checked.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "AuthConfig::default_leeway")]
    pub leeway_secs: u64,
}

impl AuthConfig {
    fn default_leeway() -> u64 {
        5
    }

    /// An HS256 configuration with `secret` (for tests and embedding).
    pub fn hs256(secret: impl Into<String>) -> AuthConfig {
        AuthConfig {
            algorithm: JwtAlgorithm::Hs256,
            secret: Some(secret.into()),
            public_key: None,
            audience: Vec::new(),
            issuer: None,
            leeway_secs: AuthConfig::default_leeway(),
        }
    }

    /// Checks the table's consistency (also done when the server starts).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] saying what is missing or wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(format!("auth: {message}")));
        if self.leeway_secs > 3600 {
            return invalid("leeway_secs must be at most 3600");
        }
        match (self.algorithm, &self.secret, &self.public_key) {
            (JwtAlgorithm::Hs256, Some(secret), None) if secret.len() >= 32 => Ok(()),
            (JwtAlgorithm::Hs256, Some(_), None) => {
                invalid("the HS256 secret must be at least 32 bytes (256 bits)")
            }
            (JwtAlgorithm::Hs256, _, _) => invalid("HS256 needs `secret` and no `public_key`"),
            (_, None, Some(_)) => Ok(()),
            (algorithm, _, _) => {
                invalid(&format!("{algorithm:?} needs `public_key` (a PEM file) and no `secret`"))
            }
        }
    }
}

// Hand-written so that logging the configuration never prints the secret.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key", &self.public_key)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// The signature algorithm client tokens must use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// Ed25519 and its public key.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_override_defaults() {
        let config = Config::from_toml("listen = \"127.0.0.1:9000\"\nmax_message_bytes = 2048\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.max_message_bytes, 2048);
        assert_eq!(config.ping_interval_secs, Config::default().ping_interval_secs);
        let queue =
            Config::from_toml("store_queue_bytes = 268435456\n").unwrap_or_else(|e| panic!("{e}"));
        let store = queue.store_config().unwrap_or_else(|| panic!("durable by default"));
        assert_eq!(store.queue_limit_bytes, 256 << 20);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let unknown = Config::from_toml("lisen = \"x\"").map(|_| ()).unwrap_err().to_string();
        assert!(unknown.contains("lisen"), "{unknown}");
        let typed =
            Config::from_toml("max_message_bytes = \"big\"").map(|_| ()).unwrap_err().to_string();
        assert!(typed.contains("max_message_bytes"), "{typed}");
        let zero = Config { ping_interval_secs: 0, ..Config::default() };
        assert!(zero.validate().unwrap_err().to_string().contains("ping_interval_secs"));
        let small = Config { store_queue_bytes: 1000, ..Config::default() };
        assert!(small.validate().unwrap_err().to_string().contains("store_queue_bytes"));
    }
}
