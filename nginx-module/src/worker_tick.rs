//! FFI: a timer in each worker that looks up the upstreams' names when they are due
//! (`resolver`), and follows peer changes made at run time even while the worker routes no
//! request through an upstream. A worker otherwise builds its new peer list
//! on its next request there; an idle one would keep an old list, and with it the slot of a
//! removed peer (see `shm::membership`), for as long as it stays idle. It also does the zone's
//! housekeeping (`shm::housekeeping`), which the admin API used to do on every request.

use std::mem::MaybeUninit;

use ngx::ffi::{ngx_cycle_t, ngx_event_t};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};

use crate::ngx_module::Module;

/// How often an idle worker looks.
const TICK_MS: usize = 1000;

/// Starts this worker's tick; from `init_process`.
///
/// SAFETY: `cycle` is the worker's cycle, as Nginx passes it to `init_process`.
pub unsafe fn start(cycle: *mut ngx_cycle_t) {
    // SAFETY: per the contract.
    unsafe { start_timer(cycle, on_tick, TICK_MS) };
}

/// Starts a timer of this worker that calls `handler` after `after_ms`, with the cycle as its
/// event's data, if the configuration has `shift` upstreams. Cancelable: a graceful shutdown
/// does not wait for it (it still fires while the worker lives). The handler adds it again.
///
/// SAFETY: `cycle` is the worker's cycle, as Nginx passes it to `init_process`.
pub unsafe fn start_timer(
    cycle: *mut ngx_cycle_t,
    handler: unsafe extern "C" fn(*mut ngx_event_t),
    after_ms: usize,
) {
    // SAFETY: per the contract.
    let cycle = unsafe { &*cycle };
    if Module::main_conf(cycle).is_none_or(|main| main.upstreams.is_empty()) {
        return;
    }
    // SAFETY: an all-zero event (no handler, no timer yet) is valid, as Nginx zeroes its own.
    let event: &mut ngx_event_t =
        Box::leak(Box::new(unsafe { MaybeUninit::zeroed().assume_init() }));
    event.handler = Some(handler);
    event.data = std::ptr::from_ref(cycle).cast_mut().cast();
    event.log = cycle.log;
    event.set_cancelable(1);
    // SAFETY: a timer of this worker's event loop, on its own thread.
    unsafe { ngx::ffi::ngx_add_timer(event, after_ms) };
}

unsafe extern "C" fn on_tick(event: *mut ngx_event_t) {
    // SAFETY: process-wide flags, written by this worker's own signal handling.
    let stopping = unsafe {
        ngx::ffi::ngx_exiting != 0 || ngx::ffi::ngx_quit != 0 || ngx::ffi::ngx_terminate != 0
    };
    if stopping {
        return;
    }
    // SAFETY: the tick's data is the worker's cycle, alive while the worker runs.
    let cycle = unsafe { &*(*event).data.cast::<ngx_cycle_t>() };
    crate::api_thread::log_pending(cycle.log);
    if let Some(main) = Module::main_conf(cycle) {
        for &uscf in &main.upstreams {
            // SAFETY: the upstream confs live as long as the cycle; this worker's copy is
            // touched only by this (single-threaded) worker.
            let uscf = unsafe { &mut *uscf };
            if let Some(conf) = Module::server_conf_mut(uscf) {
                crate::resolver::tick(conf, main, cycle.log, crate::clock::monotonic_ms());
                crate::worker_routes::follow_if_changed(conf, main, uscf, cycle.log);
                crate::ejection::tick(conf, cycle.log);
            }
        }
        crate::shm::housekeeping(main, crate::clock::monotonic_ms());
    }
    // SAFETY: as in `start`.
    unsafe { ngx::ffi::ngx_add_timer(event, TICK_MS) };
}
