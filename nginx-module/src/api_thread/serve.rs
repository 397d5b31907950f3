//! What an API thread does (`shift_api threads=N`, see `mod.rs`): waits for a connection, serves
//! it with the zone, and stops answering when its worker exits; what it would log waits here
//! for the worker's tick.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ngx::ffi::{ngx_log_t, NGX_LOG_ERR};
use ngx::ngx_log_error;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::conf::MainConf;
use shift_core::api::http1::{self, Timeouts};
use shift_core::api::{self, Access, ApiRequest};

/// How often an idle thread looks whether its worker is stopping.
const STOP_POLL_MS: u16 = 100;

/// What the threads of one listener share.
pub(super) struct Served {
    pub(super) listener: UnixListener,
    pub(super) prefix: String,
    pub(super) access: Access,
    pub(super) timeouts: Timeouts,
    pub(super) main: ConfRef,
}

/// The worker's main conf, as its threads reach it.
pub(super) struct ConfRef(pub(super) *const MainConf);

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

/// Asks the kernel for a short time slice for this thread (EEVDF's latency hint, Linux 6.12
/// and later): woken for a connection on a busy host, it then runs ahead of the traffic's
/// longer slices for the moment its answer takes. An older kernel refuses or ignores it, and
/// the thread runs as any other; its policy and nice value (`worker_priority`) are kept.
pub(super) fn ask_for_short_slice() {
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
pub(super) fn accept_loop(served: &Served) {
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
    let (uid, pid) = crate::api_answer::peer_credentials(stream).unzip();
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
