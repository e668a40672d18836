//! The pages served to browsers: the chat client at `/` and the operator
//! console at `/admin`.
//!
//! Every asset is compiled into the binary (`include_str!`), so the hub needs
//! no files, no CDN and no node at run time. The pages are plain HTML, CSS
//! and JavaScript modules without a build step; they live in `web/` next to
//! this crate's `src/`.
//!
//! Every response carries a Content-Security-Policy that allows scripts,
//! styles and connections from this origin only and forbids inline script,
//! so a message that smuggles markup could not run even if a page ever
//! rendered it as HTML (the pages render message text with `textContent`).

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::Context;

/// The policy for every page and asset: same-origin only, no inline script,
/// no plugins, no framing. `connect-src 'self'` also covers the page's own
/// `ws://` / `wss://` endpoint (CSP level 3, every current browser).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'; object-src 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// Files under `/assets/`.
const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: JS, body: include_str!("../../web/app.js") },
    Asset { name: "admin.js", content_type: JS, body: include_str!("../../web/admin.js") },
    Asset { name: "common.js", content_type: JS, body: include_str!("../../web/common.js") },
    Asset { name: "style.css", content_type: CSS, body: include_str!("../../web/style.css") },
    Asset { name: "icon.svg", content_type: SVG, body: include_str!("../../web/icon.svg") },
];

const INDEX_HTML: &str = include_str!("../../web/index.html");
const ADMIN_HTML: &str = include_str!("../../web/admin.html");

/// Routes for browser assets other than `/` (which `server::root` shares
/// with the WebSocket upgrade).
pub(crate) fn routes() -> Router<Arc<Context>> {
    Router::new()
        .route("/admin", get(|| async { page(ADMIN_HTML) }))
        .route("/admin/", get(|| async { page(ADMIN_HTML) }))
        .route("/assets/{file}", get(asset))
        .route("/favicon.ico", get(|| async { asset(Path("icon.svg".to_owned())).await }))
}

/// `GET /` without an upgrade: the chat client.
pub(crate) fn index() -> Response {
    page(INDEX_HTML)
}

fn page(body: &'static str) -> Response {
    respond(HTML, body)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => respond(asset.content_type, asset.body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

fn respond(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The assets change with the binary; revalidation is cheap on loopback.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_reference_only_embedded_assets() {
        for page in [INDEX_HTML, ADMIN_HTML] {
            for piece in page.split("/assets/").skip(1) {
                let name: String =
                    piece.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
                assert!(ASSETS.iter().any(|a| a.name == name), "missing asset {name}");
            }
            assert!(!page.contains("<script>"), "inline script would be blocked by the CSP");
            assert!(!has_inline_handler(page), "inline event handlers would be blocked by the CSP");
        }
    }

    /// True when `page` has an attribute like ` onclick=`.
    fn has_inline_handler(page: &str) -> bool {
        page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let word = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            word > 0 && rest[word..].starts_with('=')
        })
    }

    #[test]
    fn scripts_never_use_inner_html() {
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            assert!(!asset.body.contains("innerHTML"), "{} uses innerHTML", asset.name);
            assert!(!asset.body.contains("insertAdjacentHTML"), "{}", asset.name);
            assert!(!asset.body.contains("document.write"), "{}", asset.name);
        }
    }
}
