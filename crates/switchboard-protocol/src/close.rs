//! The close codes the hub sends, in one place.
//!
//! Codes below 4000 are RFC 6455's; codes from 4000 are Switchboard's own and
//! are listed in docs/protocol.md.

/// Normal closure: the client asked to close, or the hub finished a clean close.
pub const NORMAL: u16 = 1000;
/// The server is shutting down (queued messages were flushed first).
pub const GOING_AWAY: u16 = 1001;
/// The peer broke the WebSocket protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame was not valid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// The client broke a policy: its outgoing queue overflowed, or it kept exceeding the rate limit.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message was larger than the maximum message size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server hit an unexpected condition.
pub const INTERNAL_ERROR: u16 = 1011;
/// An operator disconnected the client (the reason says why).
pub const KICKED: u16 = 4000;
/// The client did not answer pings within the keepalive timeout.
pub const KEEPALIVE_TIMEOUT: u16 = 4001;
/// The client's access token expired while it was connected (issue 5);
/// reconnect with a fresh token.
pub const TOKEN_EXPIRED: u16 = 4002;
/// The client sent no data frame within the idle timeout (issue 5).
pub const IDLE_TIMEOUT: u16 = 4003;
