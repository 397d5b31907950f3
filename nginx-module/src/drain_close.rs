//! FFI: closing what a drain leaves (`shift_core::drain_close`). Each attempt is attached to
//! its peer in this worker's record when it picks the peer and detached when it ends (or when
//! its request's pool goes, whichever is first). A timer looks at the peers the record holds:
//! once a peer's deadline passed, it closes this worker's share of its requests due by now.
//!
//! To close one, it shuts down the upstream connection's socket. The worker's event loop then
//! sees the connection end as if the peer had closed it, and Nginx's own upstream code does the
//! rest (a WebSocket's client connection closed, a streamed response cut, a request waiting for
//! its response tried on the next peer): nothing is finalized from here, in a timer, behind the
//! back of the request's handlers.

use std::cell::RefCell;

use ngx::ffi::{ngx_cycle_t, ngx_event_t, ngx_http_request_t, ngx_log_t, NGX_LOG_WARN};
use ngx::ngx_log_error;
use nix::sys::socket::{shutdown, Shutdown};

use shift_core::attached::{Attached, Ticket};
use shift_core::drain_close::Closer;
use shift_core::table::PeerSlot;

/// How often the timer looks while a peer it carries requests on has a deadline (the spread's
/// resolution), and otherwise.
const BUSY_MS: usize = 100;
const IDLE_MS: usize = 1000;

/// An attempt in the record: its peer and its request.
#[derive(Clone, Copy)]
struct Carried {
    slot: &'static PeerSlot,
    request: *mut ngx_http_request_t,
}

thread_local! {
    // A worker is one thread: these are its own, touched by its event loop only, and never
    // borrowed across a call back into Nginx.
    static ATTACHED: RefCell<Attached<Carried>> = RefCell::new(Attached::default());
    static CLOSER: RefCell<Closer> = RefCell::new(Closer::default());
}

/// An attempt of `request` picked `slot`.
///
/// The request must stay alive until the ticket is detached: `upstream_hook` detaches it when
/// the attempt ends and when the request's pool is destroyed.
pub fn attach(slot: &'static PeerSlot, request: *mut ngx_http_request_t) -> Ticket {
    let key = std::ptr::from_ref(slot) as usize;
    ATTACHED.with(|attached| attached.borrow_mut().attach(key, Carried { slot, request }))
}

/// The attempt `ticket` names ended (nothing when the closer took it already).
pub fn detach(ticket: Ticket) {
    ATTACHED.with(|attached| attached.borrow_mut().detach(ticket));
}

/// Starts this worker's timer; from `init_process`. A graceful shutdown does not wait for it;
/// an old worker keeps closing what it carries while it lives, since a drain's deadline is
/// meant for its requests too.
///
/// SAFETY: `cycle` is the worker's cycle, as Nginx passes it to `init_process`.
pub unsafe fn start(cycle: *mut ngx_cycle_t) {
    // SAFETY: per the contract.
    unsafe { crate::worker_tick::start_timer(cycle, on_look, IDLE_MS) };
}

unsafe extern "C" fn on_look(event: *mut ngx_event_t) {
    // SAFETY: the event `start` leaked, alive for the worker's life.
    let log = unsafe { (*event).log };
    let busy = look(crate::clock::unix_ms(), log);
    let after = if busy { BUSY_MS } else { IDLE_MS };
    // SAFETY: as in `start`.
    unsafe { ngx::ffi::ngx_add_timer(event, after) };
}

/// Closes what is due at `now_ms`; whether some peer carried has a deadline.
fn look(now_ms: u64, log: *mut ngx_log_t) -> bool {
    let groups = ATTACHED.with(|attached| attached.borrow().groups());
    let mut busy = false;
    CLOSER.with(|closer| {
        let mut closer = closer.borrow_mut();
        let keys: Vec<usize> = groups.iter().map(|(key, _, _)| *key).collect();
        closer.keep_only(&keys);
        for (key, carried, sample) in groups {
            let (close_at_ms, spread_ms) = sample.slot.close_deadline().unwrap_or((0, 0));
            // Looked at often only from shortly before a deadline: one hours away costs nothing
            // meanwhile.
            busy |= close_at_ms != 0 && close_at_ms <= now_ms + IDLE_MS as u64;
            let due = closer.due(key, close_at_ms, spread_ms, now_ms, carried);
            if due == 0 {
                continue;
            }
            let taken = ATTACHED.with(|attached| attached.borrow_mut().take(key, due));
            let closed = taken
                .iter()
                .filter(|carried| close(carried.request))
                .count();
            sample.slot.record_closed_by_drain(closed as u64);
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "shift: peer {} closed {} of its requests at the deadline of its drain \
                 (close_after), {} left in this worker",
                sample.slot.server(),
                closed,
                carried - taken.len()
            );
        }
    });
    busy
}

/// Shuts down the socket of `request`'s upstream connection; false when it has none.
fn close(request: *mut ngx_http_request_t) -> bool {
    // SAFETY: an attached request is alive (it is detached before its pool goes); its upstream
    // and that upstream's connection are null-checked, and belong to the attempt attached (the
    // attempt is detached before Nginx closes its connection).
    let fd = unsafe {
        let upstream = (*request).upstream;
        if upstream.is_null() || (*upstream).peer.connection.is_null() {
            return false;
        }
        (*(*upstream).peer.connection).fd
    };
    fd != -1 && shutdown(fd, Shutdown::Both).is_ok()
}
