//! The keepalive: one task for the whole server, not a timer per session.
//!
//! Every tick (half the shorter of ping interval and pong timeout, at least
//! 100 ms) it looks at each connected client's [`Liveness`]: a client
//! silent for the ping interval gets one ping (queued in its outbox like
//! any frame, so the writer sends it in order), and one still silent a
//! pong timeout later is closed with [`CloseReason::KeepaliveTimeout`].
//! Any frame from the client, a pong included, counts as being heard from.
//!
//! The tick also clears every writer's busy mark (`contention`): a flow
//! that stopped stops counting as busy by the next tick; a busy one is
//! marked again by its next batch.
//!
//! Why one sweeper: a timer per session cost ~100 bytes per idle
//! connection and one wake-up of every session's writer per tick; a sweep
//! over 10,000 clients is a snapshot of their handles and a few atomic
//! operations each (issue 6, idle memory).
//!
//! [`Liveness`]: crate::hub::Liveness

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::contention;
use super::session::SessionSettings;
use crate::hub::{CloseReason, Hub, Keepalive, Outgoing};

/// How often the sweeper looks: half the shorter of ping interval and pong
/// timeout, so that a ping or a close comes at most half a period late.
fn period(settings: &SessionSettings) -> Duration {
    (settings.ping_interval.min(settings.pong_timeout) / 2).max(Duration::from_millis(100))
}

/// Sweeps until `shutdown` fires.
pub(crate) async fn run(hub: Hub, settings: Arc<SessionSettings>, shutdown: CancellationToken) {
    let (ping_interval, pong_timeout) = (settings.ping_interval, settings.pong_timeout);
    let mut ticks = tokio::time::interval(period(&settings));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for client in hub.local_sessions() {
            let liveness = client.liveness();
            contention::set_busy(liveness, false);
            match liveness.check(ping_interval, pong_timeout) {
                Keepalive::Nothing => {}
                // A full outbox closes the client already (slow consumer).
                Keepalive::Ping => {
                    let _ = client.outbox().push(Outgoing::Ping);
                }
                Keepalive::TimedOut => {
                    client.outbox().closer().close(CloseReason::KeepaliveTimeout);
                }
            }
        }
    }
}
