//! Access control at the handshake (issue 5): who the client is (a JWT),
//! where it connects from (the peer, or `X-Forwarded-For` from a trusted
//! proxy), which browser page opened the socket (the `Origin` allow-list),
//! and how many connections it already holds (the caps).
//!
//! [`Access`] is built once when the server starts, so a bad key file, a bad
//! proxy list or an operator API exposed without a token stops the server
//! before it serves anything, instead of failing at each handshake.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AuthConfig, Config, JwtAlgorithm};

/// The cookie a browser page can set to carry its token to the handshake.
pub(crate) const TOKEN_COOKIE: &str = "switchboard_token";

/// Why the server refuses to start with this access configuration.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Listening beyond loopback without an admin token would open the
    /// operator API to the network.
    #[error(
        "refusing to listen on {addr} without an admin token: the operator API (/api, /admin) \
         would be open to the network; set admin_token (--admin-token or SWITCHBOARD_ADMIN_TOKEN) \
         or listen on a loopback address"
    )]
    ExposedWithoutToken {
        /// The non-loopback address.
        addr: SocketAddr,
    },
    /// The public key file cannot be read.
    #[error("auth: cannot read public key {path}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is not a PEM key of the configured kind.
    #[error("auth: invalid {algorithm:?} key {what}")]
    BadKey {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// The file, or "secret".
        what: String,
        /// What the JWT library objected to.
        source: jsonwebtoken::errors::Error,
    },
    /// An option is malformed (proxy list, origin list, auth table).
    #[error("{0}")]
    Invalid(String),
}

impl From<AccessError> for std::io::Error {
    fn from(error: AccessError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
    }
}

/// Why a token was not accepted; the text is the body of the 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in any of the three places.
    #[error(
        "authentication required: send a token (Authorization: Bearer, ?token= or the \
         switchboard_token cookie)"
    )]
    MissingToken,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid (nbf is in the future)")]
    NotYetValid,
    /// `aud` does not name this server.
    #[error("token audience (aud) is not accepted here")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("token issuer (iss) is not accepted here")]
    WrongIssuer,
    /// The signature does not verify with the configured key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token is signed with another algorithm than the configured one.
    #[error("token algorithm is not the configured {0:?}")]
    WrongAlgorithm(JwtAlgorithm),
    /// A required claim is absent.
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    /// The token is not a well-formed JWT, or a claim has the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The requested name is not the token's subject.
    #[error("name {name:?} does not match the token's subject {sub:?}")]
    NameMismatch {
        /// The name asked for (`?name=` or `Origin`).
        name: String,
        /// The token's `sub`.
        sub: String,
    },
}

/// What a valid token grants.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The client's name (`sub`).
    pub(crate) sub: String,
    /// When the session must end: `exp` plus the leeway; `None` when that
    /// is beyond what the clock can represent (never, in practice).
    pub(crate) ends_at: Option<SystemTime>,
    /// The rooms it may join or watch, when the token restricts them.
    pub(crate) rooms: Option<Vec<String>>,
}

/// The claims Switchboard reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    // jsonwebtoken has already required a whole number here.
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

#[derive(Debug)]
struct Verifier {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
    leeway: Duration,
}

impl Verifier {
    fn new(config: &AuthConfig) -> Result<Verifier, AccessError> {
        // `run` may be given a Config that never went through `validate`.
        config.validate().map_err(|error| AccessError::Invalid(error.to_string()))?;
        let bad_key = |what: String| {
            move |source| AccessError::BadKey { algorithm: config.algorithm, what, source }
        };
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|source| AccessError::ReadKey { path: path.clone(), source })
        };
        let (algorithm, key) = match (config.algorithm, &config.secret, &config.public_key) {
            (JwtAlgorithm::Hs256, Some(secret), None) => {
                (Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes()))
            }
            (JwtAlgorithm::Rs256, None, Some(path)) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(&read(path)?)
                    .map_err(bad_key(path.display().to_string()))?,
            ),
            (JwtAlgorithm::EdDsa, None, Some(path)) => (
                Algorithm::EdDSA,
                DecodingKey::from_ed_pem(&read(path)?)
                    .map_err(bad_key(path.display().to_string()))?,
            ),
            // Ruled out by `validate` above.
            _ => {
                return Err(AccessError::Invalid(
                    "auth: HS256 needs `secret`; RS256 and EdDSA need `public_key`".into(),
                ))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if config.audience.is_empty() {
            // Nothing to compare with: a token meant for several services is fine.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
            required.push("aud");
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier {
            algorithm: config.algorithm,
            key,
            validation,
            leeway: Duration::from_secs(config.leeway_secs),
        })
    }

    fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| self.explain(error))?;
        let claims = data.claims;
        // Checked: `exp` is client input, and may be as large as u64::MAX.
        let ends_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .and_then(|exp| exp.checked_add(self.leeway));
        Ok(Grant { sub: claims.sub, ends_at, rooms: claims.rooms })
    }

    fn explain(&self, error: jsonwebtoken::errors::Error) -> AuthError {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm(self.algorithm),
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
            _ => AuthError::Malformed(error.to_string()),
        }
    }
}

/// A browser origin the operator allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AllowedOrigin {
    /// `*`: any origin (turns the check off).
    Any,
    /// `null`: sandboxed frames and `file://` pages.
    Null,
    /// `scheme://host[:port]`, normalised.
    Exact(String),
}

/// Parses one `allowed_origins` entry.
///
/// # Errors
/// A message naming the entry when it is not `*`, `null` or `scheme://host[:port]`.
pub(crate) fn parse_allowed_origin(raw: &str) -> Result<AllowedOrigin, String> {
    match raw.trim() {
        "*" => Ok(AllowedOrigin::Any),
        "null" => Ok(AllowedOrigin::Null),
        other => normalise_origin(other).map(AllowedOrigin::Exact).ok_or_else(|| {
            format!("allowed_origins: {raw:?} is not an origin such as https://chat.example.com")
        }),
    }
}

/// `scheme://host[:port]` in lower case without a default port, or `None`
/// when the text is not an origin.
fn normalise_origin(raw: &str) -> Option<String> {
    let raw = raw.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = raw.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    Some(format!("{scheme}://{}", strip_default_port(scheme, authority)))
}

fn strip_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority,
    };
    authority.strip_suffix(default).unwrap_or(authority)
}

/// An IP address or CIDR block, for `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    ///
    /// # Errors
    /// A message naming the entry.
    pub(crate) fn parse(raw: &str) -> Result<Cidr, String> {
        let error = || format!("trusted_proxies: {raw:?} is not an IP address or CIDR block");
        let (addr, prefix) = match raw.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw.trim(), None),
        };
        let network = canonical(addr.parse::<IpAddr>().map_err(|_| error())?);
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(error)?,
            None => bits,
        };
        Ok(Cidr { network, prefix })
    }

    /// True when `ip` is inside the block.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of IPv4 peers)
/// compare as the IPv4 addresses they are.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Why the caps refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// `max_clients` reached.
    #[error("server full: {0} clients connected; try again later")]
    Full(usize),
    /// `max_clients_per_ip` reached for this address.
    #[error("too many connections from {ip} (at most {max}); close one first")]
    PerAddress {
        /// The client's address.
        ip: IpAddr,
        /// The cap.
        max: usize,
    },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One WebSocket client's place in the counts; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Admission {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Access control for one server: built from the configuration at start.
#[derive(Debug)]
pub(crate) struct Access {
    verifier: Option<Verifier>,
    origins: Vec<AllowedOrigin>,
    proxies: Vec<Cidr>,
    max_clients: usize,
    max_clients_per_ip: usize,
    counts: Arc<Mutex<Counts>>,
}

impl Access {
    /// Reads keys and lists, and refuses an operator API exposed without a
    /// token (`local` is the address actually bound, so `0.0.0.0:0` counts).
    ///
    /// # Errors
    /// [`AccessError`] saying what to fix.
    pub(crate) fn new(config: &Config, local: SocketAddr) -> Result<Access, AccessError> {
        if !canonical(local.ip()).is_loopback() && config.admin_token.is_none() {
            return Err(AccessError::ExposedWithoutToken { addr: local });
        }
        let verifier = config.auth.as_ref().map(Verifier::new).transpose()?;
        let origins = config
            .allowed_origins
            .iter()
            .map(|o| parse_allowed_origin(o))
            .collect::<Result<_, _>>()
            .map_err(AccessError::Invalid)?;
        let proxies = config
            .trusted_proxies
            .iter()
            .map(|p| Cidr::parse(p))
            .collect::<Result<_, _>>()
            .map_err(AccessError::Invalid)?;
        Ok(Access {
            verifier,
            origins,
            proxies,
            max_clients: config.max_clients,
            max_clients_per_ip: config.max_clients_per_ip,
            counts: Arc::default(),
        })
    }

    /// True when clients must present a token.
    pub(crate) fn auth_enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// The client's address: the peer, or — only when the peer is a trusted
    /// proxy — the right-most `X-Forwarded-For` entry that is not a trusted
    /// proxy itself (entries to its left are client-supplied and could be
    /// forged). Forwarded addresses carry port 0: the proxy does not pass
    /// the client's port on.
    pub(crate) fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        let trusted = |ip: IpAddr| self.proxies.iter().any(|cidr| cidr.contains(ip));
        if !trusted(peer.ip()) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let mut client = None;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded(entry) else {
                // Garbage in the chain: stop at the last hop we could read.
                break;
            };
            client = Some(ip);
            if !trusted(ip) {
                break;
            }
        }
        client.map_or(peer, |ip| SocketAddr::new(canonical(ip), 0))
    }

    /// Checks a browser's `Origin` against the allow-list; non-browser
    /// clients (no `Origin`, or a name in it) pass.
    ///
    /// # Errors
    /// The reason, for the 403 body.
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            // Absent, or not ASCII: a Qt client's Latin-1 name, not a browser.
            return Ok(());
        };
        let origin = origin.trim();
        if !is_browser_origin(origin) || self.origins.contains(&AllowedOrigin::Any) {
            return Ok(());
        }
        if origin == "null" {
            return if self.origins.contains(&AllowedOrigin::Null) {
                Ok(())
            } else {
                Err("WebSocket from an opaque origin (\"null\") refused; allow it with \
                     allowed_origins = [\"null\"]"
                    .into())
            };
        }
        let Some(normalised) = normalise_origin(origin) else {
            return Err(format!("malformed Origin {origin:?} refused"));
        };
        if same_origin(&normalised, headers)
            || self.origins.contains(&AllowedOrigin::Exact(normalised))
        {
            return Ok(());
        }
        Err(format!(
            "cross-origin WebSocket from {origin} refused: add it to allowed_origins to allow it"
        ))
    }

    /// Takes a place for a client at `ip`, or says which cap is reached.
    ///
    /// # Errors
    /// [`CapError`] naming the cap.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Admission, CapError> {
        let ip = canonical(ip);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_clients {
            return Err(CapError::Full(counts.total));
        }
        let here = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_clients_per_ip > 0 && here >= self.max_clients_per_ip {
            return Err(CapError::PerAddress { ip, max: self.max_clients_per_ip });
        }
        counts.total += 1;
        counts.per_ip.insert(ip, here + 1);
        drop(counts);
        Ok(Admission { counts: self.counts.clone(), ip })
    }

    /// Verifies the request's token, when auth is on, and checks that the
    /// requested name (if any) is its subject. `None` when auth is off.
    ///
    /// # Errors
    /// [`AuthError`] with the reason for the 401.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        name: Option<&str>,
    ) -> Result<Option<Grant>, AuthError> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let token = find_token(headers, query).ok_or(AuthError::MissingToken)?;
        let grant = verifier.verify(&token)?;
        if let Some(name) = name.filter(|name| *name != grant.sub) {
            return Err(AuthError::NameMismatch { name: name.to_owned(), sub: grant.sub });
        }
        Ok(Some(grant))
    }
}

/// A browser's `Origin` is a URL (or "null"); anything else is a client's
/// name in the tutorial's style. Any scheme counts, since extensions and
/// apps run in browsers too.
pub(crate) fn is_browser_origin(origin: &str) -> bool {
    origin.contains("://") || origin == "null"
}

/// True when an http(s) origin names the host the request was sent to.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    ["http", "https"].iter().any(|scheme| {
        origin.strip_prefix(scheme).and_then(|rest| rest.strip_prefix("://"))
            == Some(strip_default_port(scheme, &host))
    })
}

fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// The token from `Authorization: Bearer`, `?token=`, or the cookie, in
/// that order.
fn find_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let from_query = || {
        form_urlencoded::parse(query?.as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value.into_owned())
    };
    let from_cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v: &HeaderValue| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == TOKEN_COOKIE).then(|| value.trim_matches('"').to_owned())
            })
    };
    bearer.or_else(from_query).or_else(from_cookie).filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_their_addresses_only() {
        let block = Cidr::parse("10.1.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(block.contains("10.1.200.3".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!block.contains("10.2.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        let single = Cidr::parse("::1").unwrap_or_else(|e| panic!("{e}"));
        assert!(single.contains("::1".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!single.contains("127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"))));
        let all = Cidr::parse("0.0.0.0/0").unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains("203.0.113.7".parse().unwrap_or_else(|e| panic!("{e}"))));
        for bad in ["10.0.0.0/33", "banana", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_are_normalised() {
        assert_eq!(
            normalise_origin("HTTPS://Chat.Example.com:443/").as_deref(),
            Some("https://chat.example.com")
        );
        assert_eq!(
            normalise_origin("http://a.example:8080").as_deref(),
            Some("http://a.example:8080")
        );
        assert_eq!(normalise_origin("alice"), None);
        assert_eq!(normalise_origin("http://a.example/path"), None);
        assert_eq!(parse_allowed_origin("*"), Ok(AllowedOrigin::Any));
        assert!(parse_allowed_origin("example.com").is_err());
    }

    #[test]
    fn tokens_are_found_in_header_query_and_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(find_token(&headers, Some("name=a&token=q")).as_deref(), Some("q"));
        headers.insert(header::COOKIE, HeaderValue::from_static("x=1; switchboard_token=c"));
        assert_eq!(find_token(&headers, Some("name=a")).as_deref(), Some("c"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer h"));
        assert_eq!(find_token(&headers, Some("token=q")).as_deref(), Some("h"));
    }
}
