//! What a thread does when it runs out of work.
//!
//! The binary's allocator (mimalloc) hands freed pages back to the OS
//! lazily, on later allocator calls. A thread that goes quiet after a burst
//! keeps them resident for good: a runtime worker after a wave of
//! handshakes, or the store's writer after a wave of connects. That was
//! ~0.5 KiB per idle connection for the store's thread alone (issue 6).
//!
//! So the threads this crate runs call [`thread_idle`] once they have
//! waited [`IDLE_AFTER`] with nothing to do. The binary registers what to
//! do then ([`set_thread_idle_hook`]) and gives the runtime's workers the
//! same hook when they park. A library user with another allocator
//! registers nothing; the call is then one atomic load.

use std::sync::OnceLock;
use std::time::Duration;

/// How long a thread of this crate waits for work before it counts as idle.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets what a thread does when it goes idle; the first call wins.
/// Returns whether this call set it.
///
/// The hook runs on the idle thread, possibly often (a runtime worker
/// parks many times a second), so it must be cheap or rate-limit itself.
pub fn set_thread_idle_hook(hook: fn()) -> bool {
    HOOK.set(hook).is_ok()
}

/// Called by a thread that has nothing to do.
pub fn thread_idle() {
    if let Some(hook) = HOOK.get() {
        hook();
    }
}
