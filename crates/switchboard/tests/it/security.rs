//! Identity, access and limits against abuse (issue 5), through the real
//! server: JWT authentication at the handshake, the origin allow-list,
//! connection caps, X-Forwarded-For from trusted proxies only, rate limits,
//! idle and token-expiry disconnects, and refusing to start with the
//! operator API open to the network. After each refusal, the server still
//! serves other clients.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use switchboard::config::{AuthConfig, Config, JwtAlgorithm};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

/// A throwaway RSA key pair for these tests only (generated with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`).
const RSA_PRIVATE: &str = concat!(
    "-----BEGIN PRIVATE KEY-----\n",
    "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDkui2NaERngZIq\n",
    "nGoaz+hpM4RqxrpSVGXMPTcWLZZ2R5gWaUW9dJRl/zCI3hlSYGfyKPeUBmTMPM6I\n",
    "QUe2sQDCBMNNIqTT0n+BoTy2t1buY55Rx7S+dTDp0qi8fPcvk9/Qd9ktf+QQsKhV\n",
    "qASQ+5BWBB46N4A9CaBDOuQkAD2AKDHiDOQaBB0wM20CczWY8LC9tt2P1BtwTtLB\n",
    "lI2wU1GQJUbKY0Npt8PGDP35LPn6WqMu81kchC6uGBCTHWHXLFgErADXBUbF5IHr\n",
    "TFMmMWqDURgsiOszcSyt/tRIFIUxQ4U+x3PY6lLhVxKGz63MWh9sdLbWZOUNkGO0\n",
    "bHSN+4Y/AgMBAAECggEAFT3ZFyXUxyFjDVlYsplrsGwcDb0w9o5nTyVsOpS3QXrP\n",
    "/AeAy4x1GlfYY7hEn8Aw8cNY4sKz6mfHQnjVi846ZMpZHOPCbPhCkSuuiMV+vvA6\n",
    "IXGA2U3m4gAyCCHkOY3ryN990tpADZtqYVy+N9IKYIKiEAQG1nmmDDhUPFJYDnuq\n",
    "2bW5jHQ4UXjA9iuz6j17HjL7CPcZB5kMmqlXHPkxMVzK3pVB3GGjAcSucX9NjRLl\n",
    "sgTB3xhkkNWXZEYBBOWAMaDmY32yOdVNfx1y1NKPucnvNkTFWxh1JxbPTpR7HuZu\n",
    "YtSzq9NBgXNZjPixKrdjRALxbLqTzDvr7T8y/eb1QQKBgQD3JdaGjLhiiiHV4S7q\n",
    "Npae8swZda3AfZuV/oLDFDLoDaihuqtO+N+hUNHQadmq2N2lTMZv58wy8plW5W4F\n",
    "oTXZkcOUZ14XR4/H4Z/zmB6A0d7qn+pDmBBRtkv9lrxcqNeluYQwWjlzV5wx8+2q\n",
    "fxunZCEVOdPZZiBDbPF4+ZBJYQKBgQDs62/sM+zKvkBCpUw5+SAfLoAaNEdGjAny\n",
    "DxrbsAlwieeDXk/j4j/B90jE2O37JXOCc2FsG3wWi0Wf2CoY43yN0uqN0QWRvaOl\n",
    "7cn1b8JT/ujRuHn+MGVYcSGuk+kH0jO1hKf6zfc9+nJc/fYK13LZo+5mKh4HAdcA\n",
    "auelPMPTnwKBgDvEucmWNG0YLLCVoYvgobJU00kA7YEUn1C52ROmSd1WmEZsZ0tU\n",
    "4ngXnHYDczFe+tMj6wVbEEXt52ldWKsh3mz8VEkKanXEx5+2D8GQMyhCGN+yxquM\n",
    "Fb49EMmF742VA3m/kJlE6IndURe/fuVxkdV8YIfKkVIM4ZaMvSTdbahhAoGBAMDY\n",
    "T00DYw4QWDwnUmmp99SJxCoQPagV2w6V7vW9T6G0DqdmwD6s7drTjv7z2Jph/KjF\n",
    "hBo8MQAkszKOAI4rtTm34cY3yoG7zBYG/Snzo0k9p4L11w7pk8SuqYzxxm/gUMjC\n",
    "xvymZEalsisxaPGgN1MiVa4BQFnRzJEBc7aTRI7fAoGBAOPZPTX/hR7+bKOYSnze\n",
    "oOFUf/0tDnSRc00SizG/02n8fwexI63u8sD4WnxVHeRlTrIAtHPSFsYv0LR9IOC+\n",
    "dXcTiIg7TMGbXnECOLPdhrDi1zTFf57xBjhow/VWMOmRREZaAwx8I3reduB7dU8H\n",
    "RGsxWBNqkpGkgOF9p9iO1UZW\n",
    "-----END PRIVATE KEY-----\n",
);
const RSA_PUBLIC: &str = concat!(
    "-----BEGIN PUBLIC KEY-----\n",
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5LotjWhEZ4GSKpxqGs/o\n",
    "aTOEasa6UlRlzD03Fi2WdkeYFmlFvXSUZf8wiN4ZUmBn8ij3lAZkzDzOiEFHtrEA\n",
    "wgTDTSKk09J/gaE8trdW7mOeUce0vnUw6dKovHz3L5Pf0HfZLX/kELCoVagEkPuQ\n",
    "VgQeOjeAPQmgQzrkJAA9gCgx4gzkGgQdMDNtAnM1mPCwvbbdj9QbcE7SwZSNsFNR\n",
    "kCVGymNDabfDxgz9+Sz5+lqjLvNZHIQurhgQkx1h1yxYBKwA1wVGxeSB60xTJjFq\n",
    "g1EYLIjrM3Esrf7USBSFMUOFPsdz2OpS4VcShs+tzFofbHS21mTlDZBjtGx0jfuG\n",
    "PwIDAQAB\n",
    "-----END PUBLIC KEY-----\n",
);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// A token for `sub`, valid for an hour, with `extra` claims merged in.
fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({"sub": sub, "exp": now() + 3600});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}

fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn token(sub: &str) -> String {
    hs256(SECRET, &claims(sub, json!({})))
}

fn auth_config(auth: AuthConfig) -> Config {
    Config { auth: Some(auth), ..test_config() }
}

async fn auth_server() -> TestServer {
    TestServer::start_with(auth_config(AuthConfig::hs256(SECRET))).await
}

/// A request to the server's WebSocket endpoint with `query` and headers.
fn request(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Request {
    let mut request = format!("{}/{query}", server.base_ws()).into_client_request().expect("req");
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).expect("header value");
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .expect("header name");
        request.headers_mut().insert(name, value);
    }
    request
}

fn with_v1(mut request: Request) -> Request {
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("switchboard.v1"));
    request
}

async fn accepted(request: Request) -> WsClient {
    match handshake(request).await {
        Ok(client) => client,
        Err((status, body)) => panic!("refused with {status}: {body}"),
    }
}

async fn refused_with(request: Request) -> (u16, String) {
    match handshake(request).await {
        Ok(_) => panic!("handshake accepted"),
        Err(refusal) => refusal,
    }
}

/// Two fresh clients exchange a private message: the server still serves.
async fn still_served(server: &TestServer, a: &str, b: &str, token_for: bool) {
    let connect = |name: &str| {
        let headers: Vec<(String, String)> = if token_for {
            vec![("Authorization".into(), format!("Bearer {}", token(name)))]
        } else {
            Vec::new()
        };
        let query = format!("?name={}", urlencode(name));
        let refs: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        request(server, &query, &refs)
    };
    let mut x = accepted(connect(a)).await;
    let mut y = accepted(connect(b)).await;
    x.send(&json!({"dst": b, "msg": "still here"}).to_string()).await;
    assert_eq!(y.recv_json().await["msg"], "still here");
    x.close().await;
    y.close().await;
}

/// A v1 request; returns the reply.
async fn ask(client: &mut WsClient, request: Value) -> Value {
    client.send_json(request).await;
    client.recv_json().await
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("switchboard-security-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

// --- authentication -------------------------------------------------------

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_the_reason() {
    let server = TestServer::start_with(auth_config(AuthConfig {
        audience: vec!["switchboard".into()],
        issuer: Some("https://issuer.example".into()),
        ..AuthConfig::hs256(SECRET)
    }))
    .await;
    let good = json!({"aud": "switchboard", "iss": "https://issuer.example"});
    let with = |extra: Value| {
        let mut merged = good.clone();
        if let (Some(m), Some(e)) = (merged.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        claims("alice", merged)
    };
    let cases = [
        ("forged", hs256("another-secret-of-at-least-32-bytes!!", &with(json!({}))), "signature"),
        ("expired", hs256(SECRET, &with(json!({"exp": now() - 120}))), "expired"),
        ("not yet valid", hs256(SECRET, &with(json!({"nbf": now() + 120}))), "not yet valid"),
        ("wrong audience", hs256(SECRET, &with(json!({"aud": "other-service"}))), "audience"),
        (
            "no audience",
            hs256(SECRET, &claims("alice", json!({"iss": "https://issuer.example"}))),
            "aud",
        ),
        ("wrong issuer", hs256(SECRET, &with(json!({"iss": "https://evil.example"}))), "issuer"),
        (
            "no exp",
            hs256(
                SECRET,
                &json!({"sub": "alice", "aud": "switchboard", "iss": "https://issuer.example"}),
            ),
            "exp",
        ),
        ("garbage", "not.a.jwt".to_owned(), "malformed"),
    ];
    for (what, token, reason) in cases {
        let bearer = format!("Bearer {token}");
        let (status, body) =
            refused_with(request(&server, "?name=alice", &[("Authorization", &bearer)])).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
    }
    let (status, body) = refused_with(request(&server, "?name=alice", &[])).await;
    assert_eq!(status, 401);
    assert!(body.contains("authentication required"), "{body}");
    // A valid token still works, for alice and for others.
    let bearer = format!("Bearer {}", hs256(SECRET, &with(json!({}))));
    let alice = accepted(request(&server, "?name=alice", &[("Authorization", &bearer)])).await;
    alice.close().await;
    let bob = hs256(SECRET, &claims("bob", good.clone()));
    let carol = hs256(SECRET, &claims("carol", good.clone()));
    let mut bob = accepted(request(&server, &format!("?token={bob}"), &[])).await;
    let mut carol = accepted(request(&server, &format!("?token={carol}"), &[])).await;
    bob.send(&json!({"dst": "carol", "msg": "hi"}).to_string()).await;
    assert_eq!(carol.recv_json().await["src"], "bob");
}

#[tokio::test]
async fn valid_tokens_are_accepted_from_header_query_and_cookie() {
    let server = auth_server().await;
    // Header, with the name only in the token.
    let bearer = format!("Bearer {}", token("alice"));
    let mut alice = accepted(with_v1(request(&server, "", &[("Authorization", &bearer)]))).await;
    let welcome = alice.recv_json().await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["name"].as_str()),
        (Some("welcome"), Some("alice"))
    );
    // Query parameter, with a matching ?name=.
    let query = format!("?name=bob&token={}", token("bob"));
    let mut bob = accepted(request(&server, &query, &[])).await;
    // Cookie, as a browser page would send it.
    let cookie = format!("theme=dark; switchboard_token={}", token("carol"));
    let mut carol = accepted(request(&server, "", &[("Cookie", &cookie)])).await;

    // An expiry at the end of time is accepted without overflowing a clock.
    let forever = hs256(SECRET, &json!({"sub": "dave", "exp": u64::MAX}));
    let dave = accepted(request(&server, &format!("?token={forever}"), &[])).await;
    dave.close().await;
    eventually("dave left", || server.hub.client("dave").is_none()).await;
    let names: Vec<String> = server.hub.online().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    bob.send(&json!({"dst": "carol", "msg": "from bob"}).to_string()).await;
    assert_eq!(carol.recv_json().await["msg"], "from bob");
    carol.send(&json!({"dst": "alice", "msg": "from carol"}).to_string()).await;
    let dm = alice.recv_json().await;
    assert_eq!((dm["from"].as_str(), dm["text"].as_str()), (Some("carol"), Some("from carol")));
}

#[tokio::test]
async fn a_name_other_than_the_tokens_subject_is_refused() {
    let server = auth_server().await;
    let bearer = format!("Bearer {}", token("alice"));
    let (status, body) =
        refused_with(request(&server, "?name=mallory", &[("Authorization", &bearer)])).await;
    assert_eq!(status, 401);
    assert!(body.contains("does not match") && body.contains("alice"), "{body}");
    // The tutorial's name-in-Origin is held to the same rule.
    let (status, body) =
        refused_with(request(&server, "", &[("Authorization", &bearer), ("Origin", "mallory")]))
            .await;
    assert_eq!(status, 401, "{body}");
    // The rightful owner is not blocked by the attempts.
    let alice = accepted(request(&server, "?name=alice", &[("Authorization", &bearer)])).await;
    alice.close().await;
    still_served(&server, "x", "y", true).await;
}

#[tokio::test]
async fn the_rooms_claim_limits_which_rooms_a_client_may_join_or_watch() {
    let server = auth_server().await;
    let limited = hs256(SECRET, &claims("guest", json!({"rooms": ["lobby", "help"]})));
    let mut guest = accepted(with_v1(request(&server, &format!("?token={limited}"), &[]))).await;
    assert_eq!(guest.recv_json().await["type"], "welcome");
    let join = |id: &str, room: &str| json!({"type": "join", "id": id, "room": room});
    assert_eq!(ask(&mut guest, join("1", "lobby")).await, json!({"type": "ack", "id": "1"}));
    let refused = ask(&mut guest, join("2", "staff")).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("limit_reached")),
        "{refused}"
    );
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("not allowed")), "{refused}");
    let watch = ask(&mut guest, json!({"type": "subscribe", "id": "3", "room": "staff"})).await;
    assert_eq!(watch["code"], "limit_reached", "{watch}");
    assert_eq!(ask(&mut guest, join("4", "help")).await, json!({"type": "ack", "id": "4"}));
    // A token without the claim may join any room.
    let mut admin =
        accepted(with_v1(request(&server, &format!("?token={}", token("admin")), &[]))).await;
    assert_eq!(admin.recv_json().await["type"], "welcome");
    assert_eq!(ask(&mut admin, join("5", "staff")).await, json!({"type": "ack", "id": "5"}));
    let info = server.hub.client("guest").expect("guest online");
    let rooms: Vec<String> = info.rooms.iter().map(|r| r.to_string()).collect();
    assert_eq!(rooms, ["help", "lobby"]);
}

#[tokio::test]
async fn a_token_that_expires_while_connected_ends_the_session_with_4002() {
    let server = TestServer::start_with(auth_config(AuthConfig {
        leeway_secs: 0,
        ..AuthConfig::hs256(SECRET)
    }))
    .await;
    let mut events = server.hub.subscribe_events();
    let short = hs256(SECRET, &json!({"sub": "brief", "exp": now() + 2}));
    let mut brief = accepted(request(&server, &format!("?token={short}"), &[])).await;
    let lasting = accepted(request(&server, &format!("?token={}", token("lasting")), &[])).await;
    let (code, reason) = brief.expect_close().await;
    assert_eq!((code, reason.as_str()), (4002, "token expired"));
    // The leave event records why.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("leave event")
            .expect("event");
        if let switchboard::hub::EventKind::Left { name, code, .. } = &event.kind {
            if name.as_str() == "brief" {
                assert_eq!(*code, Some(4002));
                break;
            }
        }
    }
    lasting.close().await;
    still_served(&server, "x", "y", true).await;
}

#[tokio::test]
async fn rs256_and_eddsa_tokens_are_verified_with_public_keys() {
    // RS256, with the key pair above.
    let public = temp_file("rsa.pub.pem", RSA_PUBLIC);
    let server = TestServer::start_with(auth_config(AuthConfig {
        algorithm: JwtAlgorithm::Rs256,
        secret: None,
        public_key: Some(public.clone()),
        ..AuthConfig::hs256("")
    }))
    .await;
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key");
    let signed =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims("rsa", json!({})), &key)
            .expect("sign");
    let client = accepted(request(&server, &format!("?token={signed}"), &[])).await;
    client.close().await;
    // An HS256 token, even one "signed" with the public key, is refused.
    let confused = hs256(RSA_PUBLIC, &claims("rsa", json!({})));
    let (status, body) = refused_with(request(&server, &format!("?token={confused}"), &[])).await;
    assert_eq!(status, 401);
    assert!(body.contains("algorithm"), "{body}");
    server.stop().await;
    let _ = std::fs::remove_file(public);

    // EdDSA, with a key pair made now.
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let public = temp_file("ed.pub.pem", &pair.public_key_pem());
    let server = TestServer::start_with(auth_config(AuthConfig {
        algorithm: JwtAlgorithm::EdDsa,
        secret: None,
        public_key: Some(public.clone()),
        ..AuthConfig::hs256("")
    }))
    .await;
    let key = EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("ed key");
    let signed =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims("ed", json!({})), &key)
            .expect("sign");
    let client = accepted(request(&server, &format!("?token={signed}"), &[])).await;
    client.close().await;
    // Signed by another Ed25519 key: forged.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let other = EncodingKey::from_ed_pem(other.serialize_pem().as_bytes()).expect("ed key");
    let forged =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims("ed", json!({})), &other)
            .expect("sign");
    let (status, body) = refused_with(request(&server, &format!("?token={forged}"), &[])).await;
    assert_eq!(status, 401);
    assert!(body.contains("signature"), "{body}");
    server.stop().await;
    let _ = std::fs::remove_file(public);
}

#[tokio::test]
async fn auth_settings_are_checked_when_the_server_starts() {
    let table = "[auth]\nalgorithm = \"HS256\"\nsecret = \"short\"\n";
    let config = Config::from_toml(table).expect("parses");
    let error = config.validate().expect_err("short secret").to_string();
    assert!(error.contains("32 bytes"), "{error}");
    let table = "[auth]\nalgorithm = \"RS256\"\n";
    let error =
        Config::from_toml(table).expect("parses").validate().expect_err("no key").to_string();
    assert!(error.contains("public_key"), "{error}");
    let table =
        format!("[auth]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\naudience = [\"sb\"]\n");
    Config::from_toml(&table).expect("parses").validate().expect("valid");
    // A missing key file stops `run` before it serves anything.
    let listener =
        switchboard::server::bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind");
    let config = auth_config(AuthConfig {
        algorithm: JwtAlgorithm::EdDsa,
        secret: None,
        public_key: Some(PathBuf::from("/nonexistent/key.pem")),
        ..AuthConfig::hs256("")
    });
    let error = switchboard::server::run(listener, config, std::future::pending())
        .await
        .expect_err("refused")
        .to_string();
    assert!(error.contains("/nonexistent/key.pem"), "{error}");
}

// --- origins ---------------------------------------------------------------

#[tokio::test]
async fn a_cross_origin_browser_handshake_is_refused_with_403() {
    let server = TestServer::start().await;
    let (status, body) =
        refused_with(request(&server, "?name=eve", &[("Origin", "http://evil.example")])).await;
    assert_eq!(status, 403);
    assert!(body.contains("cross-origin") && body.contains("http://evil.example"), "{body}");
    let (status, body) = refused_with(request(&server, "?name=eve", &[("Origin", "null")])).await;
    assert_eq!(status, 403, "{body}");
    // The server's own page (same origin), a name-in-Origin client and a
    // client without Origin pass.
    let own = format!("http://{}", server.addr);
    let page = accepted(request(&server, "?name=page", &[("Origin", &own)])).await;
    let mut qt = classic_by_origin(&server, "qt-client").await;
    let mut plain = classic(&server, "plain").await;
    plain.send(&json!({"dst": "qt-client", "msg": "hello"}).to_string()).await;
    assert_eq!(qt.recv_json().await["msg"], "hello");
    page.close().await;
    still_served(&server, "x", "y", false).await;
}

#[tokio::test]
async fn allowed_origins_extend_the_same_origin_default() {
    let server = TestServer::start_with(Config {
        allowed_origins: vec!["https://chat.example.com".into(), "null".into()],
        ..test_config()
    })
    .await;
    for origin in ["https://chat.example.com", "HTTPS://CHAT.EXAMPLE.COM:443", "null"] {
        let client = accepted(request(&server, "?name=web", &[("Origin", origin)])).await;
        client.close().await;
        eventually("web left", || server.hub.client("web").is_none()).await;
    }
    let (status, _) =
        refused_with(request(&server, "?name=web", &[("Origin", "http://chat.example.com")])).await;
    assert_eq!(status, 403, "another scheme is another origin");
    let open =
        TestServer::start_with(Config { allowed_origins: vec!["*".into()], ..test_config() }).await;
    let client = accepted(request(&open, "?name=any", &[("Origin", "http://evil.example")])).await;
    client.close().await;
}

// --- caps --------------------------------------------------------------------

/// Retries a handshake until the previous session's place is freed (it is
/// freed when the session task ends, just after the close handshake).
async fn accepted_eventually(make: impl Fn() -> Request) -> WsClient {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match handshake(make()).await {
            Ok(client) => return client,
            Err((status, body)) => {
                assert!(tokio::time::Instant::now() < deadline, "still refused: {status} {body}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_total_cap_answers_503_and_the_per_address_cap_429() {
    let server = TestServer::start_with(Config { max_clients: 2, ..test_config() }).await;
    let a = classic(&server, "a").await;
    let mut b = classic(&server, "b").await;
    let (status, body) = refused_with(request(&server, "?name=c", &[])).await;
    assert_eq!(status, 503);
    assert!(body.contains("server full"), "{body}");
    // The API is not a WebSocket client and still answers.
    let clients: Value =
        reqwest::get(server.http("/api/clients")).await.expect("api").json().await.expect("json");
    assert_eq!(clients.as_array().map(Vec::len), Some(2));
    a.close().await;
    let mut c = accepted_eventually(|| request(&server, "?name=c", &[])).await;
    c.send(&json!({"dst": "b", "msg": "made it"}).to_string()).await;
    assert_eq!(b.recv_json().await["msg"], "made it");

    let server = TestServer::start_with(Config { max_clients_per_ip: 2, ..test_config() }).await;
    let first = classic(&server, "first").await;
    let _second = classic(&server, "second").await;
    let (status, body) = refused_with(request(&server, "?name=third", &[])).await;
    assert_eq!(status, 429);
    assert!(body.contains("too many connections from 127.0.0.1"), "{body}");
    first.close().await;
    let third = accepted_eventually(|| request(&server, "?name=third", &[])).await;
    third.close().await;
}

#[tokio::test]
async fn rooms_and_members_are_capped_at_their_limits() {
    let server = TestServer::start_with(Config {
        max_rooms_per_client: 2,
        max_members_per_room: 2,
        ..test_config()
    })
    .await;
    let join = |id: &str, room: &str| json!({"type": "join", "id": id, "room": room});
    let mut alice = v1(&server, "alice").await;
    assert_eq!(ask(&mut alice, join("1", "one")).await["type"], "ack");
    assert_eq!(ask(&mut alice, join("2", "two")).await["type"], "ack");
    let third = ask(&mut alice, join("3", "three")).await;
    assert_eq!(third["code"], "limit_reached", "{third}");
    assert!(third["message"].as_str().is_some_and(|m| m.contains("at most 2 rooms")), "{third}");
    let mut bob = v1(&server, "bob").await;
    assert_eq!(ask(&mut bob, join("4", "one")).await["type"], "ack");
    let mut carol = v1(&server, "carol").await;
    let full = ask(&mut carol, join("5", "one")).await;
    assert_eq!(full["code"], "limit_reached", "{full}");
    assert!(full["message"].as_str().is_some_and(|m| m.contains("full")), "{full}");
    // Members still talk in the full room.
    let published =
        ask(&mut alice, json!({"type": "publish", "id": "6", "room": "one", "text": "hi"})).await;
    assert_eq!(published["type"], "ack");
    assert_eq!(bob.recv_json().await["text"], "hi");
}

#[tokio::test]
async fn rate_limits_answer_with_an_error_then_disconnect_with_1008() {
    let server = TestServer::start_with(Config {
        rate_messages_per_sec: 5,
        rate_strikes: 3,
        ..test_config()
    })
    .await;
    let mut flood = v1(&server, "flood").await;
    let mut calm = v1(&server, "calm").await;
    for i in 0..20 {
        flood
            .send_json(json!({"type": "dm", "id": i.to_string(), "to": "calm", "text": "x"}))
            .await;
    }
    let mut errors = 0;
    let (code, reason) = loop {
        match tokio::time::timeout(WAIT, flood.socket.next()).await.expect("frame") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                let reply: Value = serde_json::from_str(&text).expect("json");
                if reply["type"] == "error" {
                    assert_eq!(reply["code"], "rate_limited", "{reply}");
                    let message = reply["message"].as_str().unwrap_or_default();
                    assert!(message.contains("(5 messages/s)"), "names the limit: {reply}");
                    errors += 1;
                }
            }
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
                break (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert!(errors >= 1, "an error preceded the disconnect");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("rate limit"), "{reason}");
    // The messages within the limit were delivered.
    assert_eq!(calm.recv_json().await["type"], "dm");
    still_served(&server, "x", "y", false).await;
}

/// A client that keeps to its rate is never refused: the bucket refills
/// while the client is quiet (the session reads its clock again after each
/// wait, issue 6), so a second full burst a second later is accepted.
#[tokio::test]
async fn a_client_within_its_rate_is_never_refused() {
    let server = TestServer::start_with(Config { rate_messages_per_sec: 5, ..test_config() }).await;
    let mut pace = v1(&server, "pace").await;
    let _calm = v1(&server, "calm").await;
    for burst in 0..2 {
        for i in 0..5 {
            let id = format!("{burst}-{i}");
            pace.send_json(json!({"type": "dm", "id": id, "to": "calm", "text": "x"})).await;
        }
        for i in 0..5 {
            let reply = pace.recv_json().await;
            assert_eq!(reply["type"], "ack", "burst {burst}, message {i}: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

// --- reverse proxies ---------------------------------------------------------

async fn client_addr(server: &TestServer, name: &str) -> String {
    let clients: Value =
        reqwest::get(server.http("/api/clients")).await.expect("api").json().await.expect("json");
    clients
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .and_then(|c| c["addr"].as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {clients}"))
        .to_owned()
}

#[tokio::test]
async fn x_forwarded_for_is_honoured_only_from_a_trusted_proxy() {
    let proxied = TestServer::start_with(Config {
        trusted_proxies: vec!["127.0.0.0/8".into(), "10.0.0.0/8".into()],
        max_clients_per_ip: 1,
        ..test_config()
    })
    .await;
    let xff = |value: &'static str| [("X-Forwarded-For", value)];
    let _one = accepted(request(&proxied, "?name=one", &xff("203.0.113.5"))).await;
    assert_eq!(client_addr(&proxied, "one").await, "203.0.113.5:0");
    // The per-address cap applies to the forwarded address, not the proxy's.
    let (status, body) = refused_with(request(&proxied, "?name=two", &xff("203.0.113.5"))).await;
    assert_eq!(status, 429);
    assert!(body.contains("203.0.113.5"), "{body}");
    // A client cannot dodge it by prepending addresses: only the right-most
    // untrusted entry counts (10.1.2.3 is another trusted proxy hop).
    let (status, _) =
        refused_with(request(&proxied, "?name=two", &xff("198.51.100.1, 203.0.113.5, 10.1.2.3")))
            .await;
    assert_eq!(status, 429);
    let _two = accepted(request(&proxied, "?name=two", &xff("203.0.113.6"))).await;
    assert_eq!(client_addr(&proxied, "two").await, "203.0.113.6:0");
    // The operator's loopback rule (`/api`, `/metrics`) judges the forwarded client.
    assert_eq!(get_forwarded_for(&proxied, "/api/clients", "203.0.113.9").await, 403);
    assert_eq!(get_forwarded_for(&proxied, "/metrics", "203.0.113.9").await, 403);
    assert_eq!(get_forwarded_for(&proxied, "/api/clients", "127.0.0.1").await, 200);

    // Without trusted proxies, the header is the client's word and ignored.
    let direct = TestServer::start_with(Config { max_clients_per_ip: 1, ..test_config() }).await;
    let _one = accepted(request(&direct, "?name=one", &xff("203.0.113.5"))).await;
    assert!(client_addr(&direct, "one").await.starts_with("127.0.0.1:"));
    let (status, _) = refused_with(request(&direct, "?name=two", &xff("203.0.113.77"))).await;
    assert_eq!(status, 429, "a forged header does not buy another address");
    assert_eq!(get_forwarded_for(&direct, "/api/clients", "203.0.113.9").await, 200);
}

/// `GET path` with an `X-Forwarded-For` header: the status.
async fn get_forwarded_for(server: &TestServer, path: &str, forwarded_for: &str) -> u16 {
    let response = reqwest::Client::new()
        .get(server.http(path))
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    response.status().as_u16()
}

// --- idle timeout --------------------------------------------------------------

#[tokio::test]
async fn idle_clients_are_closed_with_4003_and_busy_ones_stay() {
    let server = TestServer::start_with(Config { idle_timeout_secs: 2, ..test_config() }).await;
    let mut idle = classic(&server, "idle").await;
    let mut busy = classic(&server, "busy").await;
    let chatter = tokio::spawn(async move {
        // Far more often than the timeout, for longer than it.
        for _ in 0..20 {
            busy.send(&json!({"dst": "nobody", "msg": "tick"}).to_string()).await;
            let _ = busy.recv_text().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        busy
    });
    let (code, reason) = idle.expect_close().await;
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains("idle"), "{reason}");
    let busy = chatter.await.expect("chatter");
    assert!(server.hub.client("busy").is_some(), "the busy client is still connected");
    busy.close().await;
}

// --- exposure --------------------------------------------------------------------

#[tokio::test]
async fn listening_beyond_loopback_without_an_admin_token_is_refused() {
    let listener = switchboard::server::bind("0.0.0.0:0".parse().expect("addr"), 16).expect("bind");
    let config =
        Config { listen: "0.0.0.0:0".parse().expect("addr"), admin_token: None, ..test_config() };
    let error = switchboard::server::run(listener, config, std::future::pending())
        .await
        .expect_err("refused to start")
        .to_string();
    assert!(error.contains("without an admin token") && error.contains("0.0.0.0"), "{error}");

    // The binary says so in one line and exits non-zero.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("SWITCHBOARD_ADMIN_TOKEN")
        .env("RUST_LOG", "off")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, output).await.expect("exits").expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("admin token"), "{stderr}");
}

#[tokio::test]
async fn the_binary_takes_the_access_flags() {
    let server = crate::common::process::ServerProcess::start(&[
        "--max-clients",
        "1",
        "--idle-timeout-secs",
        "30",
    ])
    .await;
    let (_first, _) =
        tokio_tungstenite::connect_async(server.ws_url("first")).await.expect("first");
    let (status, body) = refused(&server.ws_url("second"), None).await;
    assert_eq!(status, 503, "{body}");
}
