//! FFI: `shift_api threads=N`. The API server's Unix-socket listeners are taken out of each
//! worker's event loop and served by N threads of that worker, each one connection at a time
//! (`shift_core::api::http1`). An API request then never waits for a turn of an event loop
//! busy with traffic (or stalled), and a large answer never holds one up.
//!
//! What the threads share with the event loop is the zone, under the same locks as any other
//! process (Nginx's zone mutex, which spins or sleeps on another thread of its own pid as on
//! another process, and each table's write lock, which never takes over from a holder that is
//! alive). They touch nothing else of Nginx: no pool, no event, no log. What they would log is
//! left in a queue the worker's tick writes to the error log (`log_pending`); Nginx's slab
//! allocator stays silent when the zone is full (`log_nomem` is off), as the API says so itself
//! (a `--with-debug` build still writes its lock's debug lines, at `debug` level only). Signals
//! are blocked in them, so that Nginx's handlers run on the event loop's thread, whose
//! `epoll_wait` they interrupt.
//!
//! The threads serve the whole socket, so the location must be a prefix location alone in its
//! server, with none inside it (`nginx -t` says so, `not_alone`), and a socket other servers
//! share by name stays with the event loop. A worker that is told to stop (reload, quit) stops its threads' accepting within
//! `STOP_POLL_MS`, as an event loop stops accepting when it closes its listeners. When the
//! worker exits, `stop` lets the connections in service finish (a graceful stop waits up to
//! `STOP_WAIT` for them) and lets no other request start: Nginx frees the configuration, which
//! the threads read, right after. A single process (`master_process off`) reloads in place and
//! keeps the event loop serving the socket.
//!
//! This file is how threads come and go (`claim`, `start`, the listener's handover); what a
//! thread does and how the worker's exit stops it is `serve.rs`.

mod serve;

use std::cell::RefCell;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use ngx::ffi::{
    ngx_cycle_t, ngx_event_actions, ngx_free_connection, ngx_listening_t, NGX_LOG_ERR, NGX_LOG_WARN,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use crate::conf::ApiServer;
use crate::ngx_module::Module;
use serve::{accept_loop, ask_for_short_slice, ConfRef, Served};
use shift_core::api::http1::Timeouts;
use shift_core::api::Access;

pub use serve::{log_pending, stop};

/// A listener the master found for threads, with what they serve it with.
struct Claimed {
    listening: *mut ngx_listening_t,
    threads: u32,
    prefix: String,
    access: Access,
    timeouts: Timeouts,
}

thread_local! {
    // The master fills this before it forks the workers, which read their copy.
    static CLAIMED: RefCell<Vec<Claimed>> = const { RefCell::new(Vec::new()) };
}

/// Finds the listeners of `api_servers` with `threads=`; from `init_module`, in the master.
///
/// SAFETY: `cycle` is the cycle being committed; its listeners are HTTP listeners of this
/// configuration, and `api_servers` are server confs of it, merged.
pub unsafe fn claim(cycle: *mut ngx_cycle_t, api_servers: &[ApiServer]) {
    // SAFETY: per the contract.
    let listeners = unsafe { crate::api_listener::api_listeners(cycle, api_servers) };
    for (_, server, _) in listeners
        .iter()
        .filter(|(_, server, shared)| server.threads > 0 && *shared)
    {
        // SAFETY: the cycle's log, valid while it is committed.
        unsafe {
            ngx_log_error!(
                NGX_LOG_WARN,
                (*cycle).log,
                "shift: the API location \"{}\" is served by the event loop, not by threads: other \
                 servers share its socket by name",
                server.prefix
            );
        }
    }
    let claimed: Vec<Claimed> = listeners
        .iter()
        .filter(|(_, server, shared)| server.threads > 0 && !shared)
        .map(|&(listening, server, _)| {
            // SAFETY: per the contract; both confs are merged and live as long as the cycle.
            let (header, body, send) = unsafe {
                (
                    (*server.server).client_header_timeout,
                    (*server.location).client_body_timeout,
                    (*server.location).send_timeout,
                )
            };
            Claimed {
                listening,
                threads: server.threads,
                prefix: server.prefix.clone(),
                access: server.access.clone(),
                timeouts: Timeouts {
                    head: Duration::from_millis(header as u64),
                    body: Duration::from_millis(body as u64),
                    send: Duration::from_millis(send as u64),
                },
            }
        })
        .collect();
    for server in api_servers.iter().filter(|server| server.threads > 0) {
        let listened = listeners
            .iter()
            .any(|(_, found, _)| std::ptr::eq(*found, server));
        if !listened {
            // SAFETY: the cycle's log, valid while it is committed.
            unsafe {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    (*cycle).log,
                    "shift: \"shift_api threads={}\" in location \"{}\" serves only a \
                     \"listen unix:\" socket of its server, and its server has none",
                    server.threads,
                    server.prefix
                );
            }
        }
    }
    CLAIMED.with(|all| *all.borrow_mut() = claimed);
}

/// Why `server`'s `shift_api threads=` location cannot have its socket to itself: its server
/// has other locations, which the threads would not serve; from `postconfiguration`, once
/// Nginx built the servers' location trees.
///
/// SAFETY: `server` is an API server of the configuration being parsed, whose location trees
/// are built.
pub unsafe fn not_alone(server: &ApiServer) -> Option<String> {
    // SAFETY: per the contract: a server's conf context has a location conf per HTTP module,
    // the core module's at its index, and the tree's nodes live as long as the configuration.
    let alone = unsafe {
        let index = ngx::ffi::ngx_http_core_module.ctx_index;
        let root = (*(*(*server.server).ctx).loc_conf.add(index))
            .cast::<ngx::ffi::ngx_http_core_loc_conf_t>();
        let tree = (*root).static_locations;
        let location = &*server.location;
        // One node, of this prefix location alone: an exact location of the same name would
        // share it (`exact`), and nested locations live in the location's own trees.
        !tree.is_null()
            && (*root).regex_locations.is_null()
            && (*tree).left.is_null()
            && (*tree).right.is_null()
            && (*tree).tree.is_null()
            && (*tree).exact.is_null()
            && (*tree).inclusive == server.location
            && location.static_locations.is_null()
            && location.regex_locations.is_null()
    };
    (!alone).then(|| {
        format!(
            "\"shift_api threads={}\" in location \"{}\" serves its server's socket alone: it \
             must be a prefix location, with no other location in its server or inside it; move \
             those to a server that listens elsewhere, or leave \"threads=\" out",
            server.threads, server.prefix
        )
    })
}

/// Starts this worker's threads for its claimed listeners and takes those out of its event loop;
/// from `init_process`, after the event module set up the listeners. Only in a worker of a
/// master: a single process (`master_process off`) reloads in place, and would free what its
/// threads read.
///
/// SAFETY: `cycle` is the worker's cycle, as Nginx passes it to `init_process`.
pub unsafe fn start(cycle: *mut ngx_cycle_t) {
    // SAFETY: per the contract.
    let (cycle, log) = unsafe { (&*cycle, (*cycle).log) };
    let Some(main) = Module::main_conf(cycle) else {
        return;
    };
    // SAFETY: set by Nginx before any module's `init_process`.
    let worker =
        unsafe { ngx::ffi::ngx_process } == ngx::ffi::NGX_PROCESS_WORKER as ngx::ffi::ngx_uint_t;
    CLAIMED.with(|all| {
        for claim in all.borrow().iter() {
            if !worker {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "shift: the API location \"{}\" is served by the event loop, not by threads: \
                     threads need \"master_process on\"",
                    claim.prefix
                );
                continue;
            }
            // SAFETY: a listener of this configuration, claimed by the master that forked us.
            let fd = match unsafe { dup_listener(claim.listening) } {
                Ok(fd) => fd,
                Err(why) => {
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        log,
                        "shift: the API location \"{}\" is served by the event loop, not by \
                         threads: {why}",
                        claim.prefix
                    );
                    continue;
                }
            };
            let served = Arc::new(Served {
                listener: UnixListener::from(fd),
                prefix: claim.prefix.clone(),
                access: claim.access.clone(),
                timeouts: claim.timeouts,
                main: ConfRef(std::ptr::from_ref(main)),
            });
            // Threads first: should the event loop keep the listener, both serve it.
            if let Err(why) = spawn_threads(&served, claim.threads) {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "shift: the API location \"{}\" is served by the event loop, not by threads: \
                     {why}",
                    claim.prefix
                );
                continue;
            }
            // SAFETY: as above.
            if let Err(why) = unsafe { take_from_event_loop(claim.listening) } {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "shift: the event loop also serves the API location \"{}\": {why}",
                    claim.prefix
                );
            }
        }
    });
}

/// A descriptor of `listening`'s socket of our own.
///
/// SAFETY: `listening` is a listener of this worker's cycle.
unsafe fn dup_listener(listening: *mut ngx_listening_t) -> Result<OwnedFd, String> {
    // SAFETY: per the contract; its socket is open while the worker runs.
    let fd = fcntl(unsafe { (*listening).fd }, FcntlArg::F_DUPFD_CLOEXEC(0))
        .map_err(|errno| format!("dup() of the listener failed: {errno}"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor, ours alone.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Removes `listening` from this worker's event loop (and from the accept mutex's, which adds
/// only listeners that have a connection).
///
/// SAFETY: `listening` is a listener of this worker's cycle, whose event module's
/// `init_process` has run.
unsafe fn take_from_event_loop(listening: *mut ngx_listening_t) -> Result<(), String> {
    // SAFETY: per the contract.
    let ls = unsafe { &mut *listening };
    let c = ls.connection;
    if c.is_null() {
        return Ok(());
    }
    // SAFETY: the listener's connection and its read event were set up by the event module in
    // this worker; `ngx_event_actions` is this worker's event method.
    unsafe {
        if (*(*c).read).active() != 0 {
            let Some(del_conn) = ngx_event_actions.del_conn else {
                return Err("the event method cannot remove a listener (use epoll)".into());
            };
            if del_conn(c, 0) != 0 {
                return Err("epoll_ctl() could not remove the listener".into());
            }
        }
        ngx_free_connection(c);
        (*c).fd = -1;
    }
    ls.connection = std::ptr::null_mut();
    Ok(())
}

/// Starts `count` threads serving `served`, with every signal blocked in them.
fn spawn_threads(served: &Arc<Served>, count: u32) -> Result<(), String> {
    let mut previous = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_BLOCK,
        Some(&SigSet::all()),
        Some(&mut previous),
    )
    .map_err(|errno| format!("pthread_sigmask() failed: {errno}"))?;
    let spawned = (0..count).try_for_each(|_| {
        let served = Arc::clone(served);
        std::thread::Builder::new()
            .name("shift-api".into())
            .spawn(move || {
                ask_for_short_slice();
                // A panic here is a bug, as it is in the event loop, where it aborts the worker.
                if std::panic::catch_unwind(|| accept_loop(&served)).is_err() {
                    std::process::abort();
                }
            })
            .map(drop)
            .map_err(|error| error.to_string())
    });
    // The event loop's thread gets its signals back whatever happened.
    let restored = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    spawned?;
    restored.map_err(|errno| format!("pthread_sigmask() failed: {errno}"))
}
