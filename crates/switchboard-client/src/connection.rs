//! Opening one session: URL with `?name=` (and `&resume=SEQ` in client-ack
//! mode), the v1 subprotocol, TLS for `wss://`, and the welcome.
//!
//! TLS is rustls with the `ring` provider, set per connection rather than
//! process-wide, trusting the system's roots plus an optional extra CA
//! ([`ClientBuilder::ca_pem`](crate::ClientBuilder::ca_pem)) for hubs with a
//! self-signed or private certificate.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use switchboard_protocol::v1::{Incoming, RESUME_PARAM};
use switchboard_protocol::SUBPROTOCOL_V1;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::ConnectError;
use crate::event::Welcome;
use crate::options::CaPem;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where to connect: the session URL and, for `wss://`, the TLS settings,
/// built once and reused by every reconnection.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: url::Url,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// The endpoint for `url` as `name`; `ca` is trusted in addition to the
    /// system's roots (it is only read for `wss://`).
    pub(crate) fn new(url: &str, name: &str, ca: Option<&CaPem>) -> Result<Endpoint, ConnectError> {
        let url = session_url(url, name)?;
        let tls = match url.scheme() {
            "wss" => Some(tls_config(ca)?),
            _ => None,
        };
        Ok(Endpoint { url, tls })
    }
}

/// The client TLS configuration: the system's roots plus `ca`.
fn tls_config(ca: Option<&CaPem>) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the extra CA may be all we need.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        let invalid = |reason: String| ConnectError::Ca { origin: ca.origin(), reason };
        let certs = match ca {
            CaPem::File(path) => CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(e.to_string()))?
                .collect::<Result<Vec<_>, _>>(),
            CaPem::Bytes(bytes) => CertificateDer::pem_slice_iter(bytes).collect(),
        }
        .map_err(|e| invalid(e.to_string()))?;
        if certs.is_empty() {
            return Err(invalid("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| invalid(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `url` with the `name` query parameter set (replacing any already there)
/// and any `resume` parameter removed: the task sets it per connection.
pub(crate) fn session_url(url: &str, name: &str) -> Result<url::Url, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { url: url.to_owned(), reason };
    let mut parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "ws" | "wss") {
        return Err(invalid("the scheme must be ws:// or wss://".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .into_owned()
        .filter(|(key, _)| key != "name" && key != RESUME_PARAM)
        .collect();
    parsed.query_pairs_mut().clear().extend_pairs(kept).append_pair("name", name);
    Ok(parsed)
}

/// The URL of one connection: the endpoint's, plus `resume=SEQ` when resuming.
pub(crate) fn connection_url(endpoint: &Endpoint, resume: Option<u64>) -> url::Url {
    let mut url = endpoint.url.clone();
    if let Some(seq) = resume {
        url.query_pairs_mut().append_pair(RESUME_PARAM, &seq.to_string());
    }
    url
}

/// Connects, negotiates v1 and reads the welcome, all within `timeout`;
/// with `resume`, in client-ack mode after that delivery `seq`.
pub(crate) async fn open(
    endpoint: &Endpoint,
    timeout: Duration,
    resume: Option<u64>,
) -> Result<(Socket, Welcome), ConnectError> {
    tokio::time::timeout(timeout, open_inner(endpoint, resume))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

async fn open_inner(
    endpoint: &Endpoint,
    resume: Option<u64>,
) -> Result<(Socket, Welcome), ConnectError> {
    let mut request = connection_url(endpoint, resume)
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL_V1));
    // Always pass our connector for wss://: tokio-tungstenite's own would need
    // a process-wide rustls provider and would not know the extra CA.
    let connector = endpoint.tls.clone().map(Connector::Rustls);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
            .await
            .map_err(handshake_error)?;
    // The hub queues the welcome before anything else, so it is the first data frame.
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                return match Incoming::parse(&text) {
                    Ok(Incoming::Welcome { name, session, version, protocol, limits }) => {
                        Ok((socket, Welcome { name, session, version, protocol, limits }))
                    }
                    _ => Err(ConnectError::Handshake(format!(
                        "expected a welcome, got {:?}",
                        text.chars().take(80).collect::<String>()
                    ))),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason));
                return Err(ConnectError::Handshake(format!(
                    "closed before the welcome: {}",
                    reason.unwrap_or_else(|| "no reason".into())
                )));
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(handshake_error(error)),
            None => return Err(ConnectError::Handshake("closed before the welcome".into())),
        }
    }
}

fn handshake_error(error: WsError) -> ConnectError {
    match error {
        // tokio-rustls reports a refused certificate as an I/O error around
        // rustls's own error; name it, since it is not a network failure.
        WsError::Io(error) if error.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            ConnectError::Tls(error.to_string())
        }
        WsError::Io(error) => ConnectError::Io(error),
        WsError::Tls(error) => ConnectError::Tls(error.to_string()),
        WsError::Http(response) => {
            let reason = response
                .body()
                .as_deref()
                .map(|body| String::from_utf8_lossy(body).trim().to_owned())
                .filter(|body| !body.is_empty())
                .unwrap_or_else(|| {
                    response.status().canonical_reason().unwrap_or("refused").to_owned()
                });
            ConnectError::Rejected { status: response.status().as_u16(), reason }
        }
        WsError::Url(error) => ConnectError::Handshake(error.to_string()),
        other => ConnectError::Handshake(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_name() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("ws://127.0.0.1:1", "alice", Some("ws://127.0.0.1:1/?name=alice")),
            ("ws://h:1/?name=x&k=v", "a b", Some("ws://h:1/?k=v&name=a+b")),
            ("ws://h:1/?resume=9&k=v", "a", Some("ws://h:1/?k=v&name=a")),
            ("ws://h:1/path", "C1我", Some("ws://h:1/path?name=C1%E6%88%91")),
            ("http://h:1", "a", None),
            ("wss://h:1", "a", Some("wss://h:1/?name=a")),
            ("not a url", "a", None),
        ];
        for (url, name, expected) in cases {
            let got = session_url(url, name).ok().map(String::from);
            assert_eq!(got.as_deref(), *expected, "{url}");
        }
    }

    #[test]
    fn resuming_connections_carry_the_last_seq() {
        let endpoint = Endpoint::new("ws://h:1/?k=v", "alice", None).expect("endpoint");
        assert_eq!(connection_url(&endpoint, None).as_str(), "ws://h:1/?k=v&name=alice");
        assert_eq!(
            connection_url(&endpoint, Some(0)).as_str(),
            "ws://h:1/?k=v&name=alice&resume=0"
        );
        assert_eq!(
            connection_url(&endpoint, Some(u64::MAX)).as_str(),
            "ws://h:1/?k=v&name=alice&resume=18446744073709551615"
        );
        // The endpoint itself is unchanged: every attempt starts from it.
        assert_eq!(endpoint.url.as_str(), "ws://h:1/?k=v&name=alice");
    }
}
