//! FFI: a GET of every upstream (`upstreams`, `metrics`) served a page per event-loop turn. Each
//! page locks the zone, reads a bounded number of peers (`shift_core::api::Listing`), unlocks,
//! and posts the next page to the *next* turn (`ngx_posted_next_events`), so that the worker
//! handles its other connections in between: a zone of 10,000 peers is listed without holding
//! traffic up for the whole answer. The metrics' text is then rendered a part per turn, without
//! the lock.
//!
//! A worker that is shutting down gracefully leaves once no timer is left, and a request waiting
//! for its next turn has none of its own: the run keeps one armed while it lasts, so that an old
//! worker finishes the listing before it exits.
//!
//! The request stays alive between pages the way a request body read keeps it:
//! `ngx_http_read_client_request_body` counts a reference, and `ngx_http_finalize_request` after
//! the last page gives it back (this module writes no bit field of the request, see
//! `api_handler`). The run lives in the request's pool, whose cleanup drops it: a request
//! closed before the last page takes its posted event and its timer with it. A page run from
//! the event loop (not from Nginx's own request handling) runs the connection's posted requests
//! afterwards, as Nginx's handlers do: that is where a request finalized with an error (a client
//! gone mid-listing) is closed.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr::{addr_of_mut, NonNull};

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_delete_posted_event, ngx_event_t, ngx_http_finalize_request,
    ngx_http_read_client_request_body, ngx_http_request_empty_handler, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_int_t, ngx_pool_cleanup_add, ngx_post_event,
    ngx_posted_next_events, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::Request;

use crate::api_reply::send;
use crate::conf::MainConf;
use crate::shm::{api_view, NotServing};
use shift_core::api::{self, Listing};

/// The timer a run keeps armed so that a worker shutting down waits for it; it never fires while
/// the run makes progress (each page arms it again), and firing only runs the next page.
const KEEP_WORKER_MS: ngx::ffi::ngx_msec_t = 60_000;

/// A listing under way: its event for the next page, its request, and what is read so far.
struct ListingRun {
    event: ngx_event_t,
    request: *mut ngx_http_request_t,
    main: *const MainConf,
    listing: Option<Listing>,
}

impl ListingRun {
    /// Takes the run's event out of the timer tree and the posted queue: nothing may run it
    /// once the request is finalized.
    fn disarm(&mut self) {
        if self.event.timer_set() != 0 {
            // SAFETY: armed by `next_page` in this worker's timer tree.
            unsafe { ngx_del_timer(&mut self.event) };
        }
        if self.event.posted() != 0 {
            // SAFETY: the event is on a posted queue of this worker (`next_page` put it there),
            // which outlives the request.
            unsafe { ngx_delete_posted_event(&mut self.event) };
        }
    }
}

impl Drop for ListingRun {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The request pool's cleanup: drops the run.
unsafe extern "C" fn drop_run(data: *mut c_void) {
    // SAFETY: `start` registered this with its run, written in the pool and dropped only here.
    unsafe { std::ptr::drop_in_place(data.cast::<ListingRun>()) };
}

/// The run `start` stored as this module's context of the request `r`, or null.
///
/// SAFETY: `r` is a live request of a location of this module.
unsafe fn run_of(r: *mut ngx_http_request_t) -> *mut ListingRun {
    // SAFETY: per the contract; `ctx` has a slot per HTTP module, ours at our `ctx_index`.
    unsafe {
        let index = (*addr_of_mut!(crate::ngx_module::ngx_http_shift_module)).ctx_index;
        (*(*r).ctx.add(index)).cast::<ListingRun>()
    }
}

/// Serves `listing` for the request `request` of the configuration `main`; returns what the
/// content handler returns.
pub fn start(request: &mut Request, main: &MainConf, listing: Listing) -> ngx_int_t {
    let r: *mut ngx_http_request_t = std::ptr::from_mut(request).cast();
    // SAFETY: an all-zero event (no handler, not posted) is valid, as Nginx zeroes its own.
    let mut event: ngx_event_t = unsafe { MaybeUninit::zeroed().assume_init() };
    event.handler = Some(on_next_page);
    // SAFETY: the request's connection and its log live as long as the request.
    event.log = unsafe { (*request.connection()).log };
    let pool = request.pool();
    let memory = pool
        .alloc(std::mem::size_of::<ListingRun>())
        .cast::<ListingRun>();
    let Some(run) = NonNull::new(memory) else {
        return ngx::core::Status::NGX_ERROR.0;
    };
    // SAFETY: the pool's cleanup list, alive as long as the request.
    let cleanup = unsafe { ngx_pool_cleanup_add(pool.as_ptr(), 0) };
    if cleanup.is_null() {
        return ngx::core::Status::NGX_ERROR.0;
    }
    // SAFETY: `run` is fresh pool memory, word-aligned and as large as a `ListingRun`; once
    // written, the cleanup drops it when the pool goes (never before: the request holds it).
    // `ctx` has a slot per HTTP module; `write_event_handler` is a plain field.
    unsafe {
        run.as_ptr().write(ListingRun {
            event,
            request: r,
            main,
            listing: Some(listing),
        });
        (*run.as_ptr()).event.data = run.as_ptr().cast::<c_void>();
        (*cleanup).handler = Some(drop_run);
        (*cleanup).data = run.as_ptr().cast();
        let index = (*addr_of_mut!(crate::ngx_module::ngx_http_shift_module)).ctx_index;
        *(*r).ctx.add(index) = run.as_ptr().cast();
        // A write event (the answer draining) must not run the content phase again.
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
    }
    // The body of a GET, if any, is read and ignored; this counts the reference that keeps the
    // request alive until `finish`.
    // SAFETY: `r` is the valid request; `first_page` is called with it once read.
    let rc = unsafe { ngx_http_read_client_request_body(r, Some(first_page)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    ngx::core::Status::NGX_DONE.0
}

/// The read-body handler: the first page, from within Nginx's request handling.
extern "C" fn first_page(r: *mut ngx_http_request_t) {
    // SAFETY: Nginx calls this with the request `start` set the context of.
    let run = unsafe { run_of(r) };
    if run.is_null() {
        // SAFETY: the request is live and its handler is done with it.
        unsafe { ngx_http_finalize_request(r, ngx::core::Status::NGX_ERROR.0) };
        return;
    }
    // SAFETY: the run lives in the request's pool until the request ends, which only
    // `next_page` makes it do; nothing else refers to it now.
    unsafe { next_page(run) };
}

/// The run's event: a later page, posted by the one before it (or its timer, which only runs
/// the next page early), from the event loop.
unsafe extern "C" fn on_next_page(event: *mut ngx_event_t) {
    // SAFETY: the event's data is its run (`start`), alive while its event is posted or its
    // timer armed (`Drop` disarms both); its request is not finalized while either is.
    unsafe {
        let run = (*event).data.cast::<ListingRun>();
        let connection = (*(*run).request).connection;
        next_page(run);
        // As Nginx's own handlers do after an event: a request finalized meanwhile (with an
        // error, or its answer sent) is closed here; a destroyed connection is left alone.
        ngx_http_run_posted_requests(connection);
    }
}

/// Reads one page under the zone's lock, or renders one part once all is read; then either
/// posts the next one or sends the answer and finalizes the request (after which `run` is
/// gone).
///
/// SAFETY: `run` is a live run whose request has not been finalized.
unsafe fn next_page(run: *mut ListingRun) {
    // SAFETY: per the contract.
    let (r, main) = unsafe { ((*run).request, &*(*run).main) };
    // SAFETY: the run's request is alive until it is finalized below.
    let request = unsafe { Request::from_ngx_http_request(r) };
    // SAFETY: per the contract; nothing else refers to the listing now.
    let listing = unsafe { &mut (*run).listing };
    let Some(page) = listing.as_mut() else { return };
    let ready = if page.is_read() {
        page.render_step()
    } else {
        match api_view(main) {
            Ok(view) => {
                let read = page.step(&view, Some(view.usage()));
                // Unlocked as soon as the page is read; for `GET upstreams` the answer is then
                // ready, for the metrics this renders their first part.
                drop(view);
                read && page.render_step()
            }
            Err(NotServing::Superseded(why)) => {
                listing.take();
                // SAFETY: per the contract.
                unsafe { (*run).disarm() };
                let rc = send(request, &api::superseded_reply(why));
                // SAFETY: as below.
                unsafe { ngx_http_finalize_request(r, rc) };
                return;
            }
            Err(NotServing::NoZone) => {
                listing.take();
                // SAFETY: per the contract; the request and its handler are done, and the run
                // goes with its pool.
                unsafe {
                    (*run).disarm();
                    ngx_http_finalize_request(r, ngx::core::Status::NGX_ERROR.0);
                }
                return;
            }
        }
    };
    if !ready {
        // SAFETY: the run's event, handled by `on_next_page` on a later turn; its timer keeps
        // a worker that is shutting down from leaving before the last page.
        unsafe {
            ngx_post_event(&mut (*run).event, addr_of_mut!(ngx_posted_next_events));
            ngx_add_timer(&mut (*run).event, KEEP_WORKER_MS);
        }
        return;
    }
    let Some(done) = listing.take() else { return };
    // SAFETY: per the contract; the run stays until the request's pool goes.
    unsafe { (*run).disarm() };
    let reply = done.finish();
    let rc = send(request, &reply);
    // SAFETY: as above; nothing touches the run after this.
    unsafe { ngx_http_finalize_request(r, rc) };
}
