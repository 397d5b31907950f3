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
//! The threads serve the whole socket, so its server may have no other location (`nginx -t`
//! refuses it, `not_alone`), and a socket other servers share by name stays with the event
//! loop. A worker that is told to stop (reload, quit) stops its threads' accepting within
//! `STOP_POLL_MS`, as an event loop stops accepting when it closes its listeners. When the
//! worker exits, `stop` lets the connections in service finish (a graceful stop waits up to
//! `STOP_WAIT` for them) and lets no other request start: Nginx frees the configuration, which
//! the threads read, right after. A single process (`master_process off`) reloads in place and
//! keeps the event loop serving the socket.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_cycle_t, ngx_event_actions, ngx_free_connection, ngx_listening_t, ngx_log_t, NGX_LOG_ERR,
    NGX_LOG_WARN,
};
use ngx::http::HttpModuleMainConf;
use ngx::ngx_log_error;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
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

/// Connections accepted and not yet closed: a worker that stops gracefully waits for them.
static IN_SERVICE: AtomicUsize = AtomicUsize::new(0);

/// The longest a graceful stop waits for connections in service.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What the threads leave for the error log.
static PENDING_LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

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
                    ngx_log_error!(NGX_LOG_WARN, log, "shift: the API location \"{}\" is served by the event loop, not by threads: {why}", claim.prefix);
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

/// Asks the kernel for a short time slice for this thread (EEVDF's latency hint, Linux 6.12
/// and later): woken for a connection on a busy host, it then runs ahead of the traffic's
/// longer slices for the moment its answer takes. An older kernel refuses or ignores it, and
/// the thread runs as any other; its policy and nice value (`worker_priority`) are kept.
fn ask_for_short_slice() {
    /// `struct sched_attr` as `sched_setattr(2)` first defined it.
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime_ns: u64,
        deadline_ns: u64,
        period_ns: u64,
    }
    /// The shortest slice the kernel grants.
    const SLICE_NS: u64 = 100_000;
    // SAFETY: reads the calling thread's policy.
    let policy = unsafe { nix::libc::sched_getscheduler(0) } & !nix::libc::SCHED_RESET_ON_FORK;
    if policy != nix::libc::SCHED_OTHER && policy != nix::libc::SCHED_BATCH {
        // A real-time or idle policy the operator chose stays as it is.
        return;
    }
    // SAFETY: reads the calling thread's nice value.
    let nice = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime_ns: SLICE_NS,
        deadline_ns: 0,
        period_ns: 0,
    };
    // SAFETY: `attr` is a valid `sched_attr` of the size it says, for the calling thread (0).
    let _refused = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_sched_setattr,
            0,
            std::ptr::from_ref(&attr),
            0,
        )
    };
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

/// One thread: waits for a connection, serves it, and again, until the worker stops. It waits
/// in an epoll of its own with `EPOLLEXCLUSIVE`, so that a connection wakes one of the threads
/// of all workers, not each (on a busy host, waking them all costs the answer more than it
/// saves).
fn accept_loop(served: &Served) {
    let waiting = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).and_then(|epoll| {
        let interest = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE, 0);
        epoll.add(served.listener.as_fd(), interest).map(|()| epoll)
    });
    let epoll = match waiting {
        Ok(epoll) => epoll,
        Err(errno) => {
            leave_log(format!(
                "shift: an API thread cannot wait for connections: {errno}"
            ));
            return;
        }
    };
    let mut ready = [EpollEvent::empty()];
    while !stopping() {
        match epoll.wait(&mut ready, STOP_POLL_MS) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(errno) => {
                leave_log(format!(
                    "shift: an API thread cannot wait for connections: {errno}"
                ));
                std::thread::sleep(Duration::from_millis(STOP_POLL_MS.into()));
                continue;
            }
        }
        // Served even when the worker is stopping: `EPOLLEXCLUSIVE` woke this thread alone,
        // and a connection left in the backlog would wait for the next one. The listener is
        // non-blocking (Nginx made it so): a thread woken for a connection another took finds
        // none. Counted from before the accept, so that an exit waits for it.
        IN_SERVICE.fetch_add(1, Ordering::AcqRel);
        let served_one = served
            .listener
            .accept()
            .map(|(stream, _)| serve(served, &stream));
        IN_SERVICE.fetch_sub(1, Ordering::AcqRel);
        match served_one {
            Ok(()) => {}
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
    if let Some(refusal) = api::refusal_before_reading(caller) {
        // Answered before its request is read: who may not read cannot hold a thread either.
        let _ = http1::refuse_unread(stream, &served.timeouts, &refusal);
        return;
    }
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

/// Lets the connections in service finish (for up to `STOP_WAIT`, in a graceful stop) and no
/// other request start; from `exit_process`, as the worker exits.
pub fn stop() {
    STOPPING.store(true, Ordering::Release);
    // A fast stop (SIGTERM, now or while this waits) waits for nothing.
    // SAFETY: a word of this process, written by its own signal handling on this thread.
    let fast = || unsafe { std::ptr::read_volatile(&raw const ngx::ffi::ngx_terminate) } != 0;
    let deadline = Instant::now() + STOP_WAIT;
    while !fast() && IN_SERVICE.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
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
