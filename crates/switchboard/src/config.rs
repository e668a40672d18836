//! Configuration: defaults, the TOML file, and command-line overrides.
//!
//! Every limit the server enforces lives here, with its default. `serve
//! --config FILE` reads the same keys as the flags (underscores for dashes);
//! flags win over the file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::hub::HubLimits;

/// Everything the server needs to know; see README.md for each option.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token required on /api; without one, /api answers loopback peers only.
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
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
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
        if matches!(&self.admin_token, Some(token) if token.is_empty()) {
            return Err(ConfigError::Invalid("admin_token must not be empty".into()));
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
        }
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
    }
}
