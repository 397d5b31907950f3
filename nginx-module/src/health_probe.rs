//! FFI: active health checks, run on each worker's own event loop (no threads, no blocking I/O).
//!
//! Every worker keeps a timer per checked peer that ticks a few times per interval. At a tick,
//! the worker tries to claim the check that is due through the shared table
//! (`Table::claim_check`): exactly one worker wins each interval, so a peer sees one probe per
//! interval however many workers there are, and if the winner dies, another worker wins the
//! next interval. The winner connects with `ngx_event_connect_peer`, sends the HTTP request (or,
//! for `type=tcp`, only connects), reads the answer until the peer closes, and records the
//! result; a health change updates routing in every worker at once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::ptr;

use ngx::core::Status;
use ngx::ffi::{
    ngx_close_connection, ngx_connection_log_error_e_NGX_ERROR_ERR, ngx_connection_t, ngx_cycle_t,
    ngx_event_connect_peer, ngx_event_get_peer, ngx_event_t, ngx_handle_read_event,
    ngx_handle_write_event, ngx_int_t, ngx_log_t, ngx_peer_connection_t, ngx_socket_errno,
    ngx_str_t, sockaddr, NGX_LOG_CRIT, NGX_LOG_ERR, NGX_LOG_WARN,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};
use ngx::log::DebugMask;
use ngx::{ngx_log_debug, ngx_log_error};
use nix::sys::socket::{getsockopt, sockopt::SocketError};

use crate::conf::UpstreamConf;
use crate::ngx_module::Module;
use crate::shm::table_of;
use nix::sys::socket::SockaddrLike;
use shift_core::directives::{CheckArgs, CheckKind};
use shift_core::health::{http_request, judge_http, with_port, ProbeError, MAX_RESPONSE_BYTES};
use shift_core::history::Actor;
use shift_core::process::{own_token, token_alive};
use shift_core::table::{PeerSlot, Table, TableHeader};
use shift_wire::PeerOrigin;

/// One peer's prober in this worker. A configuration peer's lives as long as the worker; a
/// run-time peer's is stopped and freed when the worker's new peer list leaves the peer out
/// (before the slot can be freed: see `shm::membership`).
struct Probe {
    tick: ngx_event_t,
    deadline: ngx_event_t,
    header: &'static TableHeader,
    slot: &'static PeerSlot,
    check: *const CheckArgs,
    tick_ms: usize,
    /// The address probed: the peer's, with `port=` applied.
    address: Vec<u8>,
    name: ngx_str_t,
    request: Vec<u8>,
    sent: usize,
    response: Vec<u8>,
    connection: *mut ngx_connection_t,
    /// The peer's instance (`joined_ms`) when this check was claimed: a result for an instance
    /// that has left is dropped (`Table::record_check`).
    instance: u64,
    /// The cycle's log with its level capped, so that a refused connect every interval does not
    /// flood the error log (the result is in the API, and transitions are logged).
    quiet_log: ngx_log_t,
}

impl Probe {
    fn check(&self) -> &CheckArgs {
        // SAFETY: `check` is the upstream's parsed `shift_check`, alive as long as the worker's
        // cycle, which outlives its probes.
        unsafe { &*self.check }
    }

    /// The table, viewed through this probe's one peer (index 0).
    fn table(&self) -> Table<'_> {
        Table::new(self.header, std::slice::from_ref(&self.slot))
    }
}

thread_local! {
    /// This worker's probes of run-time peers, by slot address.
    static RUNTIME_PROBES: RefCell<HashMap<usize, *mut Probe>> = RefCell::new(HashMap::new());
}

/// The connection an event of a probe belongs to, and its probe.
///
/// SAFETY: `event` is the read or write event of a probe's connection (whose `data` is the
/// probe), as `start` set them up.
unsafe fn probe_of<'a>(event: *mut ngx_event_t) -> (*mut ngx_connection_t, &'a mut Probe) {
    // SAFETY: per the contract.
    unsafe {
        let connection = (*event).data.cast::<ngx_connection_t>();
        (connection, &mut *(*connection).data.cast::<Probe>())
    }
}

/// Starts the probers of this worker; from `init_process`.
///
/// SAFETY: `cycle` is the worker's cycle, as Nginx passes it to `init_process`.
pub unsafe fn start_probes(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: per the contract; the cycle outlives the worker's probes.
    let cycle = unsafe { &*cycle };
    let Some(main) = Module::main_conf(cycle) else {
        return Status::NGX_OK.0; // no http block
    };
    for &uscf in &main.upstreams {
        // SAFETY: the upstream confs live as long as the cycle.
        let uscf = unsafe { &*uscf };
        let Some(conf) = Module::server_conf(uscf) else {
            continue;
        };
        let Some(check) = &conf.check else { continue };
        if table_of(conf).is_none() {
            continue;
        }
        // SAFETY: as in `follow`.
        let Some(header) = (unsafe { conf.placement.table.as_ref::<'static>() }) else {
            continue;
        };
        let host = uscf.host.to_string();
        for (&peer, &slot) in conf.placement.rr_peers.iter().zip(&conf.placement.slots) {
            // SAFETY: round robin's peers live as long as the cycle, each with `socklen` bytes
            // of address at `sockaddr`.
            let peer = unsafe { &*peer };
            // SAFETY: as above.
            let address = unsafe {
                std::slice::from_raw_parts(peer.sockaddr.cast::<u8>(), peer.socklen as usize)
            }
            .to_vec();
            spawn(cycle.log, check, &host, header, slot, address, peer.name);
        }
    }
    Status::NGX_OK.0
}

/// Starts a probe of `slot` at `address` (a sockaddr), named `name` in the log.
fn spawn(
    log: *mut ngx_log_t,
    check: &CheckArgs,
    host: &str,
    header: &'static TableHeader,
    slot: &'static PeerSlot,
    mut address: Vec<u8>,
    name: ngx_str_t,
) -> *mut Probe {
    if let Some(port) = check.port {
        with_port(&mut address, port);
    }
    let tick_ms = (check.interval_ms / 5).clamp(20, 1000) as usize;
    // SAFETY: the cycle's log is valid for its life.
    let mut quiet_log = unsafe { *log };
    quiet_log.log_level = quiet_log.log_level.min(NGX_LOG_CRIT as usize);
    let probe = Box::leak(Box::new(Probe {
        tick: idle_event(),
        deadline: idle_event(),
        header,
        slot,
        check,
        tick_ms,
        address,
        name,
        request: http_request(check, host),
        sent: 0,
        response: Vec::new(),
        connection: ptr::null_mut(),
        instance: 0,
        quiet_log,
    }));
    let data: *mut Probe = probe;
    for (event, handler) in [
        (
            &mut probe.tick,
            on_tick as unsafe extern "C" fn(*mut ngx_event_t),
        ),
        (&mut probe.deadline, on_deadline),
    ] {
        event.handler = Some(handler);
        event.data = data.cast();
        event.log = log;
        // Do not hold up a graceful shutdown.
        event.set_cancelable(1);
    }
    // Spread the workers' ticks over the tick period.
    // SAFETY: the worker's random generator and timers, on its own thread.
    unsafe {
        let offset = ngx::ffi::ngx_random() as usize % tick_ms;
        ngx::ffi::ngx_add_timer(&mut probe.tick, offset);
    }
    data
}

/// Makes this worker probe exactly the run-time peers of its new list `slots` (addresses from
/// their names): new ones get a probe, and probes of peers the list left out stop.
pub fn follow(conf: &UpstreamConf, host: &str, slots: &[&'static PeerSlot]) {
    let Some(check) = &conf.check else {
        return;
    };
    // SAFETY: the header this worker's load references, allocated while the worker runs.
    let Some(header) = (unsafe { conf.placement.table.as_ref::<'static>() }) else {
        return;
    };
    let log = ngx::log::ngx_cycle_log().as_ptr();
    RUNTIME_PROBES.with(|probes| {
        let mut probes = probes.borrow_mut();
        let wanted: Vec<&'static PeerSlot> = slots
            .iter()
            .copied()
            .filter(|slot| slot.origin() != PeerOrigin::Config)
            .collect();
        probes.retain(|&address, &mut probe| {
            // SAFETY: a registered probe is alive until it is stopped here.
            let ours = std::ptr::eq(unsafe { (*probe).header }, header);
            let keep = !ours
                || wanted
                    .iter()
                    .any(|slot| std::ptr::from_ref(*slot) as usize == address);
            if !keep {
                stop(probe);
            }
            keep
        });
        for slot in wanted {
            let address = std::ptr::from_ref(slot) as usize;
            if probes.contains_key(&address) {
                continue;
            }
            let Some((storage, socklen)) = crate::peer_list::socket_address(slot.server()) else {
                continue;
            };
            // SAFETY: `storage` holds at least `socklen` bytes of address.
            let bytes = unsafe {
                std::slice::from_raw_parts(storage.as_ptr().cast::<u8>(), socklen as usize)
            }
            .to_vec();
            // The name lives in the slot, which outlives the probe.
            let name = ngx_str_t {
                len: slot.server().len(),
                data: slot.server().as_ptr().cast_mut(),
            };
            probes.insert(address, spawn(log, check, host, header, slot, bytes, name));
        }
    });
}

/// Stops a run-time peer's probe and frees it.
fn stop(probe: *mut Probe) {
    // SAFETY: a registered probe, alive until now; its timers and connection are this worker's.
    unsafe {
        let probe = &mut *probe;
        for event in [&mut probe.tick, &mut probe.deadline] {
            if event.timer_set() != 0 {
                ngx::ffi::ngx_del_timer(event);
            }
        }
        if !probe.connection.is_null() {
            ngx_close_connection(probe.connection);
            probe.connection = ptr::null_mut();
        }
    }
    // SAFETY: leaked by `spawn`; no timer or connection refers to it any more.
    drop(unsafe { Box::from_raw(probe) });
}

/// An event with no handler and no timer yet, as Nginx's own code zeroes them.
fn idle_event() -> ngx_event_t {
    // SAFETY: an all-zero `ngx_event_t` (null pointers, cleared flags) is valid.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

unsafe extern "C" fn on_tick(event: *mut ngx_event_t) {
    // SAFETY: the tick's data is its leaked Probe; the worker is single-threaded.
    let probe = unsafe { &mut *(*event).data.cast::<Probe>() };
    // SAFETY: process-wide flags, written by this worker's own signal handling.
    let stopping = unsafe {
        ngx::ffi::ngx_exiting != 0 || ngx::ffi::ngx_quit != 0 || ngx::ffi::ngx_terminate != 0
    };
    if stopping {
        return;
    }
    // SAFETY: `event` is the probe's tick, a timer of this worker.
    unsafe { ngx::ffi::ngx_add_timer(event, probe.tick_ms) };
    if !probe.connection.is_null() {
        return;
    }
    let table = probe.table();
    if table.claim_check(0, crate::clock::monotonic_ms(), probe.check().interval_ms) {
        probe.instance = probe.slot.joined_ms();
        // SAFETY: the probe is idle (no connection), checked above.
        unsafe { start(probe) };
    }
}

/// SAFETY: `probe` is idle (no connection) and its fields are valid.
unsafe fn start(probe: &mut Probe) {
    // SAFETY: per the contract; the peer connection struct only needs to outlive the call.
    unsafe {
        let mut pc: ngx_peer_connection_t = MaybeUninit::zeroed().assume_init();
        pc.sockaddr = probe.address.as_mut_ptr().cast::<sockaddr>();
        pc.socklen = probe.address.len() as _;
        pc.name = &mut probe.name;
        pc.get = Some(ngx_event_get_peer);
        pc.log = &mut probe.quiet_log;
        pc.set_log_error(ngx_connection_log_error_e_NGX_ERROR_ERR);
        let rc = ngx_event_connect_peer(&mut pc);
        if rc == Status::NGX_ERROR.0 || rc == Status::NGX_BUSY.0 || rc == Status::NGX_DECLINED.0 {
            let errno = ngx_socket_errno();
            if !pc.connection.is_null() {
                ngx_close_connection(pc.connection);
            }
            finish(probe, Err(connect_error(errno)));
            return;
        }
        let connection = pc.connection;
        (*connection).data = ptr::from_mut(probe).cast();
        (*(*connection).read).handler = Some(on_read);
        (*(*connection).write).handler = Some(on_write);
        probe.connection = connection;
        probe.sent = 0;
        probe.response.clear();
        ngx::ffi::ngx_add_timer(&mut probe.deadline, (*probe.check).timeout_ms as usize);
        if rc == Status::NGX_OK.0 {
            on_write((*connection).write);
        }
    }
}

fn connect_error(errno: i32) -> ProbeError {
    ProbeError::from_socket_errno(errno, true)
}

fn io_error() -> ProbeError {
    ProbeError::from_socket_errno(ngx_socket_errno(), false)
}

/// The pending error of a connecting socket, if any.
///
/// SAFETY: `connection` is open.
unsafe fn pending_error(connection: *mut ngx_connection_t) -> Option<ProbeError> {
    // SAFETY: per the contract, its fd is open.
    let fd = unsafe { BorrowedFd::borrow_raw((*connection).fd) };
    match getsockopt(&fd, SocketError) {
        Ok(0) => None,
        Ok(errno) => Some(connect_error(errno)),
        Err(errno) => Some(ProbeError::ConnectFailed(errno as i32)),
    }
}

unsafe extern "C" fn on_write(event: *mut ngx_event_t) {
    // SAFETY: Nginx calls a probe connection's write handler with its write event.
    let (connection, probe) = unsafe { probe_of(event) };
    // SAFETY: the connection is open while its handlers run.
    if let Some(error) = unsafe { pending_error(connection) } {
        return finish(probe, Err(error));
    }
    if probe.check().kind == CheckKind::Tcp {
        return finish(probe, Ok(()));
    }
    // SAFETY: as above.
    let Some(send) = (unsafe { (*connection).send }) else {
        return finish(probe, Err(ProbeError::Io(0)));
    };
    while probe.sent < probe.request.len() {
        let rest = &mut probe.request[probe.sent..];
        // SAFETY: the connection's own send, with a buffer of `rest.len()` bytes.
        let sent = unsafe { send(connection, rest.as_mut_ptr(), rest.len()) };
        if sent == Status::NGX_AGAIN.0 {
            // SAFETY: `event` is the connection's write event.
            if unsafe { ngx_handle_write_event(event, 0) } != Status::NGX_OK.0 {
                finish(probe, Err(io_error()));
            }
            return;
        }
        if sent <= 0 {
            return finish(probe, Err(io_error()));
        }
        probe.sent += sent as usize;
    }
    // SAFETY: the event and the connection's read event are valid while it is open.
    unsafe {
        (*event).handler = Some(ignore_event);
        if (*(*connection).read).ready() != 0 {
            on_read((*connection).read);
        }
    }
}

unsafe extern "C" fn on_read(event: *mut ngx_event_t) {
    // SAFETY: Nginx calls a probe connection's read handler with its read event.
    let (connection, probe) = unsafe { probe_of(event) };
    // SAFETY: the connection is open while its handlers run.
    if let Some(error) = unsafe { pending_error(connection) } {
        return finish(probe, Err(error));
    }
    if probe.sent < probe.request.len() {
        return; // the answer can only come after the request
    }
    // SAFETY: as above.
    let Some(recv) = (unsafe { (*connection).recv }) else {
        return finish(probe, Err(ProbeError::Io(0)));
    };
    let mut chunk = [0u8; 4096];
    loop {
        let room = chunk.len().min(MAX_RESPONSE_BYTES - probe.response.len());
        // SAFETY: the connection's own recv, into `chunk`'s first `room` bytes.
        let read = unsafe { recv(connection, chunk.as_mut_ptr(), room) };
        if read > 0 {
            probe.response.extend_from_slice(&chunk[..read as usize]);
            let full = probe.response.len() >= MAX_RESPONSE_BYTES;
            if let Some(result) = judge_http(&probe.response, full, probe.check()) {
                return finish(probe, result);
            }
            continue;
        }
        if read == 0 {
            let result =
                judge_http(&probe.response, true, probe.check()).unwrap_or(Err(ProbeError::Closed));
            return finish(probe, result);
        }
        if read == Status::NGX_AGAIN.0 {
            // SAFETY: `event` is the connection's read event.
            if unsafe { ngx_handle_read_event(event, 0) } != Status::NGX_OK.0 {
                finish(probe, Err(io_error()));
            }
            return;
        }
        return finish(probe, Err(io_error()));
    }
}

unsafe extern "C" fn ignore_event(_event: *mut ngx_event_t) {}

unsafe extern "C" fn on_deadline(event: *mut ngx_event_t) {
    // SAFETY: the deadline's data is its Probe.
    let probe = unsafe { &mut *(*event).data.cast::<Probe>() };
    if !probe.connection.is_null() {
        finish(probe, Err(ProbeError::Timeout));
    }
}

/// Closes the probe's connection, if open, and records its result.
fn finish(probe: &mut Probe, result: Result<(), ProbeError>) {
    probe.slot.verify();
    if probe.deadline.timer_set() != 0 {
        // SAFETY: the deadline is a timer of this worker's event loop.
        unsafe { ngx::ffi::ngx_del_timer(&mut probe.deadline) };
    }
    if !probe.connection.is_null() {
        // SAFETY: the probe's connection is open until closed here.
        unsafe { ngx_close_connection(probe.connection) };
        probe.connection = ptr::null_mut();
    }
    let table = probe.table();
    let check = probe.check();
    let log = ngx::log::ngx_cycle_log().as_ptr();
    ngx_log_debug!(
        mask: DebugMask::Event,
        log,
        "shift: check of upstream \"{}\" peer {}: {}",
        table.name(),
        probe.slot.server(),
        result.map_or_else(ProbeError::describe, |()| "passed".to_string())
    );
    match table.record_check(
        0,
        probe.instance,
        result,
        check.fails,
        check.passes,
        crate::clock::unix_ms(),
        own_token(),
        token_alive,
    ) {
        Ok(Some(transition)) => {
            crate::shm::record_history(
                probe.header,
                Actor::Health,
                vec![(
                    transition.server.clone(),
                    "health",
                    transition.from.as_str().to_string(),
                    transition.to.as_str().to_string(),
                )],
            );
            let reason = transition.error.map(ProbeError::describe);
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "shift: upstream \"{}\" peer {} is {} (was {}){}{}",
                table.name(),
                transition.server,
                transition.to.as_str(),
                transition.from.as_str(),
                if reason.is_some() { ": " } else { "" },
                reason.unwrap_or_default()
            );
        }
        Ok(None) => {}
        Err(err) => {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "shift: health of peer not recorded: {}",
                err
            );
        }
    }
}
