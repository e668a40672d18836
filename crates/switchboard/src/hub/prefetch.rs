//! Software prefetch for the fanout loops (issue 6).
//!
//! A broadcast to 1,000 clients touches each recipient's client, inbox and
//! outbox once, and none of them is in the cache. Each delivery takes
//! locks, and a locked instruction waits for the loads before it, so the
//! misses of consecutive recipients cannot overlap by themselves: the loop
//! runs at one memory latency per line. Prefetching the recipients a few
//! steps ahead lets those misses overlap with the deliveries before them
//! (a prefetch is not ordered with locked instructions).

use std::sync::Arc;

use super::Client;

/// How many recipients ahead the inbox and outbox are prefetched; the
/// client itself (which holds the pointers to them) twice as far ahead.
const DISTANCE: usize = 4;

/// Asks the CPU to bring the cache line at `p` (and the next one) into the
/// cache. Never faults, whatever `p` points at; a no-op off x86-64.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = p.cast::<i8>();
        // SAFETY: a prefetch is a hint; it reads nothing the program sees
        // and does not fault on any address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Calls `deliver` for each of `clients` in order, prefetching the state
/// of the ones a few steps ahead.
pub(super) fn for_each_client<'a>(
    clients: impl Iterator<Item = &'a Arc<Client>> + Clone,
    mut deliver: impl FnMut(&'a Arc<Client>),
) {
    let mut far = clients.clone().skip(2 * DISTANCE);
    let mut near = clients.clone().skip(DISTANCE);
    for client in clients {
        if let Some(ahead) = far.next() {
            prefetch(Arc::as_ptr(ahead));
        }
        if let Some(ahead) = near.next() {
            prefetch(Arc::as_ptr(&ahead.inbox));
            prefetch(ahead.outbox.shared_ptr());
        }
        deliver(client);
    }
}
