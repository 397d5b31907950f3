//! FFI: `shift_api threads=N`. The API server's Unix-socket listeners are taken out of each
//! worker's event loop and served by N threads of that worker, each one connection at a time
//! (`shift_core::api::http1`). An API request then never waits for a turn of an event loop
//! busy with traffic, and a large answer never holds one up.
//!
//! What the threads share with the event loop is the zone, under the same locks as any other
//! process (Nginx's zone mutex, which spins or sleeps on another thread of its own pid as on
//! another process, and each table's write lock, which never takes over from a holder that is
//! alive). They touch nothing else of Nginx: no pool, no event, no log. What they would log is
//! left in a queue the worker's tick writes to the error log (`log_pending`); Nginx's slab
//! allocator stays silent when the zone is full (`log_nomem` is off), as the API says so itself.
//! Signals are blocked in them, so that Nginx's handlers run on the event loop's thread, whose
//! `epoll_wait` they interrupt.
//!
//! A worker that is told to stop (reload, quit) stops its threads' accepting within
//! `STOP_POLL_MS`, as an event loop stops accepting when it closes its listeners. When the
//! worker exits, `stop` waits for the requests being answered and lets no other start: Nginx
//! frees the configuration, which the threads read, right after.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ngx::ffi::{
    ngx_cycle_t, ngx_event_actions, ngx_free_connection, ngx_listening_t, ngx_log_t, NGX_LOG_ERR,
    NGX_LOG_WARN,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::conf::{ApiServer, MainConf};
use crate::ngx_module::Module;
use shift_core::api::http1::{self, Timeouts};
use shift_core::api::{self, Access, ApiRequest};

/// How often an idle thread looks whether its worker is stopping.
const STOP_POLL_MS: u16 = 100;

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

/// What the threads of one listener share.
struct Served {
    listener: UnixListener,
    prefix: String,
    access: Access,
    timeouts: Timeouts,
    main: ConfRef,
}

/// The worker's main conf, as its threads reach it.
struct ConfRef(*const MainConf);

// SAFETY: the threads read the main conf only while they hold `ANSWERING` for reading; nothing
// writes it once the workers run, and `stop` holds `ANSWERING` for writing, for good, before
// Nginx frees it at the worker's exit.
unsafe impl Send for ConfRef {}
// SAFETY: as above.
unsafe impl Sync for ConfRef {}

/// Set by `stop`: the worker is exiting.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Held for reading while a thread answers a request; `stop` holds it for writing until the
/// process exits.
static ANSWERING: RwLock<()> = RwLock::new(());

/// What the threads leave for the error log.
static PENDING_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Finds the listeners of `api_servers` with `threads=`; from `init_module`, in the master.
///
/// SAFETY: `cycle` is the cycle being committed; its listeners are HTTP listeners of this
/// configuration, and `api_servers` are server confs of it, merged.
pub unsafe fn claim(cycle: *mut ngx_cycle_t, api_servers: &[ApiServer]) {
    // SAFETY: per the contract.
    let listeners = unsafe { crate::api_listener::api_listeners(cycle, api_servers) };
    let claimed: Vec<Claimed> = listeners
        .iter()
        .filter(|(_, server)| server.threads > 0)
        .map(|&(listening, server)| {
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
            .any(|(_, found)| std::ptr::eq(*found, server));
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

/// Takes this worker's claimed listeners out of its event loop and starts their threads; from
/// `init_process`, after the event module set up the listeners.
///
/// SAFETY: `cycle` is the worker's cycle, as Nginx passes it to `init_process`.
pub unsafe fn start(cycle: *mut ngx_cycle_t) {
    // SAFETY: per the contract.
    let (cycle, log) = unsafe { (&*cycle, (*cycle).log) };
    let Some(main) = Module::main_conf(cycle) else {
        return;
    };
    CLAIMED.with(|all| {
        for claim in all.borrow().iter() {
            // SAFETY: a listener of this configuration, claimed by the master that forked us.
            let fd = match unsafe { take_from_event_loop(claim.listening) } {
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
            if let Err(why) = spawn_threads(&served, claim.threads) {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "shift: cannot start the API threads of location \"{}\": {why}",
                    claim.prefix
                );
            }
        }
    });
}

/// Removes `listening` from this worker's event loop (and from the accept mutex's, which adds
/// only listeners that have a connection); returns a descriptor of its socket of our own.
///
/// SAFETY: `listening` is a listener of this worker's cycle, whose event module's
/// `init_process` has run.
unsafe fn take_from_event_loop(listening: *mut ngx_listening_t) -> Result<OwnedFd, String> {
    // SAFETY: per the contract.
    let ls = unsafe { &mut *listening };
    let fd = fcntl(ls.fd, FcntlArg::F_DUPFD_CLOEXEC(0))
        .map_err(|errno| format!("dup() of the listener failed: {errno}"))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor, ours alone.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let c = ls.connection;
    if c.is_null() {
        return Ok(fd);
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
    Ok(fd)
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

/// Whether the worker is stopping: `stop` ran, or Nginx was told to quit, exit or reload.
fn stopping() -> bool {
    // SAFETY: aligned words of this process that its signal handlers set; a stale read only
    // delays the stop by one poll.
    let told = unsafe {
        std::ptr::read_volatile(&raw const ngx::ffi::ngx_quit) != 0
            || std::ptr::read_volatile(&raw const ngx::ffi::ngx_terminate) != 0
            || std::ptr::read_volatile(&raw const ngx::ffi::ngx_exiting) != 0
    };
    told || STOPPING.load(Ordering::Acquire)
}

/// One thread: waits for a connection, serves it, and again, until the worker stops.
fn accept_loop(served: &Served) {
    while !stopping() {
        let mut ready = [PollFd::new(served.listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut ready, PollTimeout::from(STOP_POLL_MS)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(errno) => {
                leave_log(format!(
                    "shift: an API thread cannot poll its listener: {errno}"
                ));
                std::thread::sleep(Duration::from_millis(STOP_POLL_MS.into()));
                continue;
            }
        }
        if stopping() {
            return;
        }
        // The listener is non-blocking (Nginx made it so): the threads of every worker race
        // for each connection, and the losers find none.
        match served.listener.accept() {
            Ok((stream, _)) => serve(served, &stream),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionAborted
                ) => {}
            Err(error) => {
                // Out of descriptors, most likely: wait rather than spin.
                leave_log(format!(
                    "shift: an API thread cannot accept a connection: {error}"
                ));
                std::thread::sleep(Duration::from_millis(STOP_POLL_MS.into()));
            }
        }
    }
}

/// Serves one connection: its caller from the socket's credentials, its request answered with
/// the zone.
fn serve(served: &Served, stream: &UnixStream) {
    let credentials = getsockopt(stream, PeerCredentials).ok();
    let uid = credentials.map(|credentials| credentials.uid());
    let pid = credentials.map(|credentials| credentials.pid() as u32);
    let caller = served.access.caller(uid);
    // A client that left or stalled gets no answer, as from the event loop.
    let _ = http1::serve(stream, &served.prefix, &served.timeouts, |line, body| {
        let _answering = ANSWERING.read().unwrap_or_else(PoisonError::into_inner);
        let request = ApiRequest {
            method: line.method,
            path: line.path,
            args: line.args,
            body,
            caller,
            received_ms: crate::clock::unix_ms(),
            pid,
        };
        // SAFETY: read under `ANSWERING` (see `ConfRef`).
        let main = unsafe { &*served.main.0 };
        crate::api_answer::answer_whole(main, &request).unwrap_or_else(api::no_zone_reply)
    });
}

/// Lets the requests being answered finish and no other start; from `exit_process`, as the
/// worker exits.
pub fn stop() {
    STOPPING.store(true, Ordering::Release);
    let held = ANSWERING.write().unwrap_or_else(PoisonError::into_inner);
    // Held until the process exits: a thread that still reads a request waits for it forever.
    std::mem::forget(held);
}

fn leave_log(message: String) {
    let mut pending = PENDING_LOG.lock().unwrap_or_else(PoisonError::into_inner);
    // A thread that fails at once on every connection must not fill the memory.
    if pending.len() < 64 {
        pending.push(message);
    }
}

/// Writes what the threads left for the error log; from the worker's tick.
pub fn log_pending(log: *mut ngx_log_t) {
    let pending = std::mem::take(&mut *PENDING_LOG.lock().unwrap_or_else(PoisonError::into_inner));
    for message in pending {
        // On the event loop's thread, the one that may log.
        ngx_log_error!(NGX_LOG_ERR, log, "{}", message);
    }
}
