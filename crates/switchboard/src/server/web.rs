//! The pages served at `/` to browsers; assets are compiled into the binary.

use axum::response::{Html, IntoResponse, Response};

/// `GET /` without an upgrade.
pub(crate) fn index() -> Response {
    Html(INDEX).into_response()
}

const INDEX: &str = "<!doctype html><meta charset=utf-8><title>Switchboard</title>\
<h1>Switchboard</h1><p>This is a Switchboard messaging hub. Connect a WebSocket client to this address \
with <code>?name=NAME</code>.</p>";
