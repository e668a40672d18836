//! Opening one session: URL with `?name=`, the v1 subprotocol, and the welcome.

use std::time::Duration;

use futures_util::StreamExt;
use switchboard_protocol::v1::Incoming;
use switchboard_protocol::SUBPROTOCOL_V1;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ConnectError;
use crate::event::Welcome;

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `url` with the `name` query parameter set (replacing any already there).
pub(crate) fn session_url(url: &str, name: &str) -> Result<url::Url, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { url: url.to_owned(), reason };
    let mut parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if parsed.scheme() != "ws" {
        return Err(invalid("the scheme must be ws:// (wss:// is not supported)".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    let kept: Vec<(String, String)> =
        parsed.query_pairs().into_owned().filter(|(key, _)| key != "name").collect();
    parsed.query_pairs_mut().clear().extend_pairs(kept).append_pair("name", name);
    Ok(parsed)
}

/// Connects, negotiates v1 and reads the welcome, all within `timeout`.
pub(crate) async fn open(
    url: &url::Url,
    timeout: Duration,
) -> Result<(Socket, Welcome), ConnectError> {
    tokio::time::timeout(timeout, open_inner(url))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

async fn open_inner(url: &url::Url) -> Result<(Socket, Welcome), ConnectError> {
    let mut request =
        url.as_str().into_client_request().map_err(|e| ConnectError::Handshake(e.to_string()))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL_V1));
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
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
        WsError::Io(error) => ConnectError::Io(error),
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
            ("ws://h:1/path", "C1我", Some("ws://h:1/path?name=C1%E6%88%91")),
            ("http://h:1", "a", None),
            ("wss://h:1", "a", None),
            ("not a url", "a", None),
        ];
        for (url, name, expected) in cases {
            let got = session_url(url, name).ok().map(String::from);
            assert_eq!(got.as_deref(), *expected, "{url}");
        }
    }
}
