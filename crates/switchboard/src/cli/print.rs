//! How `switchboard connect` shows events: one line each, as text or JSON.

use serde_json::json;
use switchboard_client::{AckStatus, Event, PresenceEvent};

/// Keeps an event on one line: line breaks and other control characters are escaped.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

fn presence_word(event: PresenceEvent) -> &'static str {
    match event {
        PresenceEvent::Join => "joined",
        PresenceEvent::Leave => "left",
    }
}

/// The text line for `event`, or `None` for events not worth a line (most
/// acks, state changes).
pub(crate) fn text(event: &Event) -> Option<String> {
    let line = match event {
        Event::Connected(welcome) => {
            format!("* connected as {} (session {})", one_line(&welcome.name), welcome.session)
        }
        Event::Disconnected { code: Some(code), reason } => {
            format!("* disconnected ({code}): {}", one_line(reason))
        }
        Event::Disconnected { code: None, reason } => {
            format!("* disconnected: {}", one_line(reason))
        }
        Event::Reconnecting { attempt, delay } => {
            format!("* reconnecting in {:.1}s (attempt {attempt})", delay.as_secs_f64())
        }
        Event::ConnectFailed { attempt, error } => {
            format!("* reconnect attempt {attempt} failed: {}", one_line(error))
        }
        Event::Direct { from, text, .. } => format!("[{}] {}", one_line(from), one_line(text)),
        Event::Room { room, from: Some(from), text, .. } => {
            format!("[#{} {}] {}", one_line(room), one_line(from), one_line(text))
        }
        Event::Room { room, from: None, text, .. } => {
            format!("[#{}] {}", one_line(room), one_line(text))
        }
        Event::Server { text, .. } => format!("[server] {}", one_line(text)),
        Event::Binary { from, room: None, payload, .. } => {
            format!("[{}] <binary, {} bytes>", one_line(from), payload.len())
        }
        Event::Binary { from, room: Some(room), payload, .. } => {
            format!("[#{} {}] <binary, {} bytes>", one_line(room), one_line(from), payload.len())
        }
        Event::Presence { room: None, name, event, .. } => {
            format!("* {} {}", one_line(name), presence_word(*event))
        }
        Event::Presence { room: Some(room), name, event, .. } => {
            format!("* {} {} #{}", one_line(name), presence_word(*event), one_line(room))
        }
        Event::Error { id, code, message } => {
            let id = id.as_deref().map(|id| format!(", message {id}")).unwrap_or_default();
            format!("error: {} ({}{id})", one_line(message), code.as_str())
        }
        Event::Lost { id } => {
            format!("error: message {id} may not have been delivered (connection lost)")
        }
        Event::Clients { clients, .. } => format!("online: {}", one_line(&clients.join(", "))),
        Event::Members { room: Some(room), members, .. } => {
            format!("members of #{}: {}", one_line(room), one_line(&members.join(", ")))
        }
        Event::Members { room: None, members, .. } => {
            format!("online: {}", one_line(&members.join(", ")))
        }
        Event::Pong { .. } => "pong".to_owned(),
        // Issue 7: say when the recipient was offline and the hub kept it.
        Event::Ack { id, status: Some(AckStatus::Stored) } => {
            format!("* message {id} stored: the recipient is offline and gets it on reconnect")
        }
        Event::Delivered { id, to, .. } => format!("* message {id} delivered to {}", one_line(to)),
        _ => return None,
    };
    Some(line)
}

/// The JSON object for `event` (one per line with `--json`); every event has one.
pub(crate) fn json(event: &Event) -> Option<serde_json::Value> {
    let value = match event {
        Event::Connected(w) => json!({
            "type": "connected", "name": w.name, "session": w.session,
            "version": w.version, "protocol": w.protocol,
        }),
        Event::Disconnected { code, reason } => {
            json!({ "type": "disconnected", "code": code, "reason": reason })
        }
        Event::Reconnecting { attempt, delay } => {
            json!({ "type": "reconnecting", "attempt": attempt, "delay_ms": delay.as_millis() as u64 })
        }
        Event::ConnectFailed { attempt, error } => {
            json!({ "type": "connect_failed", "attempt": attempt, "error": error })
        }
        Event::StateChanged(state) => json!({ "type": "state", "state": state.as_str() }),
        Event::Direct { seq, ts, from, to, text } => {
            json!({ "type": "dm", "seq": seq, "ts": ts, "from": from, "to": to, "text": text })
        }
        Event::Room { seq, ts, room, rseq, from, text } => json!({
            "type": "room", "seq": seq, "ts": ts, "room": room, "rseq": rseq, "from": from,
            "text": text,
        }),
        Event::Server { seq, ts, text, broadcast } => {
            json!({ "type": "server", "seq": seq, "ts": ts, "text": text, "broadcast": broadcast })
        }
        Event::Binary { seq, ts, from, room, payload } => json!({
            "type": "binary", "seq": seq, "ts": ts, "from": from, "room": room,
            "bytes": payload.len(),
        }),
        Event::Presence { seq, ts, room, name, event } => json!({
            "type": "presence", "seq": seq, "ts": ts, "room": room, "name": name,
            "event": presence_word(*event),
        }),
        Event::Ack { id, status } => {
            json!({ "type": "ack", "id": id, "status": status.map(|s| s.as_str()) })
        }
        Event::Error { id, code, message } => {
            json!({ "type": "error", "id": id, "code": code.as_str(), "message": message })
        }
        Event::Lost { id } => json!({ "type": "lost", "id": id }),
        Event::Clients { id, clients } => {
            json!({ "type": "clients", "id": id, "clients": clients })
        }
        Event::Members { id, room, members } => {
            json!({ "type": "members", "id": id, "room": room, "members": members })
        }
        Event::Pong { id } => json!({ "type": "pong", "id": id }),
        _ => return None,
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines() {
        let cases: Vec<(Event, Option<&str>)> = vec![
            (
                Event::Direct {
                    seq: 1,
                    ts: 2,
                    from: "alice".into(),
                    to: "bob".into(),
                    text: "hi\nthere".into(),
                },
                Some("[alice] hi\\nthere"),
            ),
            (
                Event::Room {
                    seq: 1,
                    ts: 2,
                    room: "r".into(),
                    rseq: Some(3),
                    from: Some("a".into()),
                    text: "x".into(),
                },
                Some("[#r a] x"),
            ),
            (
                Event::Room {
                    seq: 1,
                    ts: 2,
                    room: "r".into(),
                    rseq: None,
                    from: None,
                    text: "x".into(),
                },
                Some("[#r] x"),
            ),
            (
                Event::Server { seq: 1, ts: 2, text: "notice".into(), broadcast: true },
                Some("[server] notice"),
            ),
            (Event::Ack { id: "1".into(), status: None }, None),
        ];
        for (event, expected) in cases {
            assert_eq!(text(&event).as_deref(), expected, "{event:?}");
            assert!(json(&event).is_some(), "{event:?}");
        }
    }
}
