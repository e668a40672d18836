//! TLS for the one port: with `tls_cert` and `tls_key` set, every connection
//! is a TLS connection (https for the pages and the API, wss for WebSocket),
//! terminated here with rustls before hyper sees a byte.
//!
//! The certificate and key are read once at start, so a bad file stops the
//! server with a message instead of failing each handshake. ALPN offers
//! HTTP/1.1 only: the WebSocket upgrade needs it, and hyper serves nothing else.
//! The `ring` provider is chosen explicitly, so nothing depends on a
//! process-wide default provider being installed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no PEM certificate.
    #[error("cannot load TLS certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key file is unreadable or holds no PEM private key.
    #[error("cannot load TLS private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("invalid TLS certificate or key")]
    Rustls(#[from] rustls::Error),
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, error)
    }
}

/// The acceptor for `config`, or `None` when TLS is not configured.
///
/// # Errors
/// When the files cannot be read or do not form a usable certificate and key.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => load(cert, key).map(Some),
        // `Config::validate` refuses one without the other.
        _ => Ok(None),
    }
}

/// Builds an acceptor from a PEM certificate chain and a PEM private key.
///
/// # Errors
/// As [`acceptor`].
pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate { path: cert_path.to_owned(), reason };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| TlsError::Key { path: key_path.to_owned(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Runs the TLS handshake on a fresh connection. A client that speaks plain
/// HTTP gets a readable 400 instead; both that and a failed handshake are
/// logged and give `None`. The caller bounds the time this may take.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match starts_with_tls(&stream).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(%peer, "plain HTTP on the TLS port refused");
            refuse_plaintext(stream).await;
            return None;
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "connection closed before the TLS handshake");
            return None;
        }
    }
    match acceptor.accept(stream).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::info!(%peer, %error, "TLS handshake failed");
            None
        }
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// True when the client's first byte can start a TLS handshake. Peeks, so
/// nothing is consumed; `Ok(false)` means the client spoke something else
/// (typically plain HTTP to a TLS port).
///
/// # Errors
/// When the socket fails or closes before sending anything.
pub(crate) async fn starts_with_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(first[0] == TLS_HANDSHAKE_RECORD)
}

/// Answers a plain-HTTP request on the TLS port with a readable 400, so the
/// mistake is explained rather than shown as a reset connection.
pub(crate) async fn refuse_plaintext(mut stream: TcpStream) {
    const BODY: &str = "this port speaks TLS: use https:// or wss://\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read what the client sent before closing: closing with unread bytes
    // makes the kernel send a reset, which can destroy the answer in flight.
    // Bounded in time and size; the caller's deadline bounds it as well.
    let mut sink = [0u8; 4096];
    let drain = async {
        for _ in 0..16 {
            if matches!(stream.read(&mut sink).await, Ok(0) | Err(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
