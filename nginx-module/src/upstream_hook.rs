//! FFI: the upstream balancer hook. `shift` wraps Nginx's own round robin: Nginx builds its
//! per-worker peer list as usual, and on each request this hook copies the shared table into it
//! if the table changed (one atomic load when it did not). Round robin then picks the peer —
//! smooth weighted, with max_fails, fail_timeout, backup servers and proxy_next_upstream retries
//! all as stock Nginx does them — and the hook counts the attempt in the shared table.

use std::ffi::c_void;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_event_free_peer_pt, ngx_event_get_peer_pt, ngx_event_save_peer_session_pt,
    ngx_event_set_peer_session_pt, ngx_http_request_t, ngx_http_upstream_rr_peer_data_t,
    ngx_http_upstream_rr_peers_t, ngx_http_upstream_server_t, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_msec_t, ngx_peer_connection_t, ngx_uint_t, NGX_LOG_EMERG, NGX_PEER_FAILED,
};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf, Request};
use ngx::log::DebugMask;
use ngx::{http_upstream_init_peer_pt, ngx_conf_log_error, ngx_log_debug};

use crate::conf::UpstreamConf;
use crate::ngx_module::Module;
use crate::peer_list::{ListHold, PeerList};
use crate::shm::{inflight, table_of};
use crate::steering::{self, ListView, Steering};
use shift_core::attached::Ticket;
use shift_core::directives::{duplicate_address, unknown_label_server};
use shift_core::table::{slot_of, PeerSlot};

/// `peer.init_upstream`: lets round robin build the peers, then takes over `peer.init`.
pub extern "C" fn init_upstream(
    cf: *mut ngx_conf_t,
    uscf: *mut ngx_http_upstream_srv_conf_t,
) -> ngx_int_t {
    // SAFETY: Nginx passes the upstream's own srv conf, valid for the configuration's life.
    let uscf = unsafe { &mut *uscf };
    let Some(conf) = Module::server_conf_mut(uscf) else {
        return Status::NGX_ERROR.0;
    };
    let Some(original) = conf.balancer.init_upstream else {
        return Status::NGX_ERROR.0;
    };
    // Names are looked up at run time by this module, not by round robin (which refuses them
    // without `zone`): they leave the `server` lines, and a standby placeholder keeps round
    // robin from finding no server at all.
    // SAFETY: `cf` is the configuration being parsed, `uscf` its upstream.
    if let Err(message) = unsafe { crate::resolver::take_names(cf, uscf, conf) } {
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{}", message);
        return Status::NGX_ERROR.0;
    }
    // SAFETY: round robin's init_upstream, called as Nginx would with the same arguments.
    if unsafe { original(cf, uscf) } != Status::NGX_OK.0 {
        return Status::NGX_ERROR.0;
    }
    // SAFETY: round robin parsed the `server` lines into `servers`.
    let lines = unsafe { server_lines(uscf) };
    let names: Vec<String> = conf.resolve.iter().map(|name| name.name_port()).collect();
    if let Some(label) = unknown_label_server(&conf.labels, &lines, &names) {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"shift_label\" names \"{}\", which is no \"server\" line, address or resolved \
             name of upstream \"{}\": write it as on its \"server\" line",
            label.server,
            uscf.host
        );
        return Status::NGX_ERROR.0;
    }
    if let Some((address, first, second)) = duplicate_address(&lines) {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "upstream \"{}\" has address {} twice, from \"server {}\" and \"server {}\": \
             a \"shift\" upstream needs one server line per address",
            uscf.host,
            address,
            first,
            second
        );
        return Status::NGX_ERROR.0;
    }
    if !uscf.shm_zone.is_null() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"shift\" cannot be used with \"zone\" in upstream \"{}\": \
             shift keeps its own shared state, remove \"zone\"",
            uscf.host
        );
        return Status::NGX_ERROR.0;
    }
    conf.balancer.init_peer = uscf.peer.init;
    uscf.peer.init = Some(init_peer);
    conf.balancer.hooked = true;
    Status::NGX_OK.0
}

/// Each `server` line's address text and the addresses it resolved to.
///
/// SAFETY: `uscf` is an upstream whose `server` lines were parsed (its `servers` array holds
/// `ngx_http_upstream_server_t`s, each with `naddrs` addresses).
unsafe fn server_lines(uscf: &ngx_http_upstream_srv_conf_t) -> Vec<(String, Vec<String>)> {
    if uscf.servers.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract.
    unsafe {
        let servers: &[ngx_http_upstream_server_t] = (*uscf.servers).as_slice();
        servers
            .iter()
            .map(|server| {
                let addresses = if server.addrs.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(server.addrs, server.naddrs)
                };
                (
                    server.name.to_string(),
                    addresses.iter().map(|addr| addr.name.to_string()).collect(),
                )
            })
            .collect()
    }
}

/// What this module keeps per request: round robin's own callbacks and data, and the table slot
/// of the peer the current attempt uses.
struct Attempt {
    rr_data: *mut c_void,
    rr_get: ngx_event_get_peer_pt,
    rr_free: ngx_event_free_peer_pt,
    rr_set_session: ngx_event_set_peer_session_pt,
    rr_save_session: ngx_event_save_peer_session_pt,
    conf: *const UpstreamConf,
    request: *mut ngx_http_request_t,
    /// The worker's peer list the request started with; null for its configuration's own.
    list: *mut PeerList,
    /// The slot and load position of the peer the current attempt uses, and when it began
    /// (Nginx's cached clock, as its own `$upstream_response_time` reads it).
    slot: Option<(&'static PeerSlot, usize)>,
    /// The current attempt in the worker's record of who uses which peer (`drain_close`).
    carried: Option<Ticket>,
    started_ms: ngx_msec_t,
    /// Its `shift_sticky` and `shift_pin` values, and round robin's primary list when it
    /// started (steering stops once round robin goes on to the backups).
    steering: Steering,
    primary: *mut ngx_http_upstream_rr_peers_t,
}

// `peer.init`, once per request.
http_upstream_init_peer_pt!(init_peer, init_request_peer);

fn init_request_peer(request: &mut Request, uscf: *mut ngx_http_upstream_srv_conf_t) -> Status {
    // SAFETY: Nginx passes the upstream's srv conf. This worker is single-threaded, so mutating
    // its own (copy-on-write) conf and peers is unshared.
    let Some(conf) = Module::server_conf_mut(unsafe { &*uscf }) else {
        return Status::NGX_ERROR;
    };
    // SAFETY: as above; the worker's copy of the upstream, read and written only by this worker.
    let uscf_mut = unsafe { &mut *uscf };
    let log = request.log();
    crate::worker_routes::copy_routes_if_changed(
        conf,
        || Module::main_conf(&*request),
        uscf_mut,
        log,
    );
    let Some(original) = conf.balancer.init_peer else {
        return Status::NGX_ERROR;
    };
    let r: *mut ngx_http_request_t = (&mut *request).into();
    // SAFETY: round robin's init_peer, called as Nginx would with the same arguments.
    let rc = unsafe { original(r, uscf) };
    if rc != Status::NGX_OK.0 {
        return Status(rc);
    }
    let list = conf.routing.list;
    if !list.is_null() && crate::pool_value::place(&request.pool(), ListHold::new(list)).is_null() {
        return Status::NGX_ERROR;
    }
    let Some(upstream) = request.upstream() else {
        return Status::NGX_ERROR;
    };
    // SAFETY: the request is being proxied, so its upstream is set, and round robin's init
    // just filled its peer connection.
    let peer = unsafe { &mut (*upstream).peer };
    // SAFETY: round robin's init left its own data in `peer.data`.
    let primary = unsafe { (*peer.data.cast::<ngx_http_upstream_rr_peer_data_t>()).peers };
    let steering = Steering::of(request, conf);
    // Dropped when the pool goes (`Drop`): it leaves no pointer to the request behind.
    let attempt = crate::pool_value::place(
        &request.pool(),
        Attempt {
            rr_data: peer.data,
            rr_get: peer.get,
            rr_free: peer.free,
            rr_set_session: peer.set_session,
            rr_save_session: peer.save_session,
            conf,
            request: r,
            list,
            slot: None,
            carried: None,
            started_ms: 0,
            steering,
            primary,
        },
    );
    if attempt.is_null() {
        return Status::NGX_ERROR;
    }
    peer.data = attempt.cast();
    peer.get = Some(get_peer);
    peer.free = Some(free_peer);
    if peer.set_session.is_some() {
        peer.set_session = Some(set_session);
    }
    if peer.save_session.is_some() {
        peer.save_session = Some(save_session);
    }
    Status::NGX_OK
}

unsafe extern "C" fn get_peer(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `data` is the Attempt init_peer installed, in the request's pool.
    let attempt = unsafe { &mut *data.cast::<Attempt>() };
    let Some(rr_get) = attempt.rr_get else {
        return Status::NGX_ERROR.0;
    };
    // SAFETY: `conf` outlives the request.
    let conf = unsafe { &*attempt.conf };
    // SAFETY: round robin's get, with its own data, steered or not.
    let rc = unsafe { steered_get(attempt, conf, pc, rr_get) }
        // SAFETY: as above.
        .unwrap_or_else(|| unsafe { rr_get(pc, attempt.rr_data) });
    if rc != Status::NGX_OK.0 {
        return rc;
    }
    // SAFETY: round robin's data is its peer data.
    let current = unsafe { (*attempt.rr_data.cast::<ngx_http_upstream_rr_peer_data_t>()).current };
    // SAFETY: a non-null list is held by this request until it ends.
    attempt.slot = match unsafe { attempt.list.as_ref() } {
        Some(list) => list.find(current),
        None => slot_of(&conf.placement.rr_peers, &current).map(|index| {
            (
                conf.placement.slots[index],
                conf.placement.first_slot + index,
            )
        }),
    };
    if let Some((slot, position)) = attempt.slot {
        slot.verify();
        ngx_log_debug!(
            mask: DebugMask::Http,
            // SAFETY: Nginx passes a valid peer connection.
            unsafe { (*pc).log },
            "shift: upstream \"{}\" picked peer {}",
            table_of(conf).map_or("", |table| table.name()),
            slot.server()
        );
        slot.record_request();
        if let Some(ticket) = attempt
            .carried
            .replace(crate::drain_close::attach(slot, attempt.request))
        {
            crate::drain_close::detach(ticket);
        }
        attempt.started_ms = current_msec();
        if let Some(inflight) = inflight() {
            inflight.started(position);
        }
    }
    rc
}

/// Round robin's get, steered to the peer the request's `shift_pin` or `shift_sticky` chooses;
/// `None` when it is not steered (no value, or a list that is no longer the worker's current
/// one, whose routes this worker no longer keeps).
///
/// SAFETY: `attempt` is the request's own, with round robin's data and `get`.
unsafe fn steered_get(
    attempt: &mut Attempt,
    conf: &UpstreamConf,
    pc: *mut ngx_peer_connection_t,
    rr_get: unsafe extern "C" fn(*mut ngx_peer_connection_t, *mut c_void) -> ngx_int_t,
) -> Option<ngx_int_t> {
    if !attempt.steering.is_steered() || attempt.list != conf.routing.list {
        return None;
    }
    // SAFETY: as in `shm::table_of`.
    let header = unsafe { conf.placement.table.as_ref() }?;
    // SAFETY: a non-null list is held by this request until it ends.
    let (slots, rr_peers) = match unsafe { attempt.list.as_ref() } {
        Some(list) => (&list.slots, &list.rr_peers),
        None => (&conf.placement.slots, &conf.placement.rr_peers),
    };
    let view = ListView {
        header,
        slots,
        rr_peers,
        routes: &conf.routing.routes,
        hashes: &conf.routing.hashes,
    };
    let rrp = attempt.rr_data.cast::<ngx_http_upstream_rr_peer_data_t>();
    // SAFETY: per the contract; `primary` was round robin's list when the request started.
    unsafe {
        steering::get(
            &mut attempt.steering,
            &view,
            rrp,
            attempt.primary,
            pc,
            rr_get,
        )
    }
}

unsafe extern "C" fn free_peer(
    pc: *mut ngx_peer_connection_t,
    data: *mut c_void,
    state: ngx_uint_t,
) {
    // SAFETY: as in get_peer.
    let attempt = unsafe { &mut *data.cast::<Attempt>() };
    attempt.end_carrying();
    if let Some((slot, position)) = attempt.slot.take() {
        slot.verify();
        // SAFETY: the request outlives its upstream attempts; `upstream` and its `state` are
        // null-checked.
        let (status, header_ms) = unsafe {
            let upstream = (*attempt.request).upstream;
            if upstream.is_null() || (*upstream).state.is_null() {
                (None, None)
            } else {
                let state = &*(*upstream).state;
                let status = Some(state.status as u16).filter(|&status| status != 0);
                // Nginx keeps -1 until the header came.
                let header_ms = Some(state.header_time).filter(|&ms| ms != ngx_msec_t::MAX);
                (status, header_ms)
            }
        };
        let failed = state & NGX_PEER_FAILED as ngx_uint_t != 0;
        slot.record_finish(failed, status);
        // SAFETY: `conf` outlives the request; Nginx passes a valid peer connection.
        let (conf, log) = unsafe { (&*attempt.conf, (*pc).log) };
        crate::ejection::after_attempt(conf, attempt.list, slot, failed, status, log);
        let response_ms = current_msec().wrapping_sub(attempt.started_ms);
        slot.record_times(response_ms as u64, header_ms.map(|ms| ms as u64));
        if let Some(inflight) = inflight() {
            inflight.finished(position);
        }
    }
    if let Some(rr_free) = attempt.rr_free {
        // SAFETY: round robin's free, with its own data.
        unsafe { rr_free(pc, attempt.rr_data, state) };
    }
}

impl Attempt {
    fn end_carrying(&mut self) {
        if let Some(ticket) = self.carried.take() {
            crate::drain_close::detach(ticket);
        }
    }
}

/// Runs when the request's pool goes, before its memory does: an attempt that Nginx never
/// freed (none should be) leaves no pointer to the request in the worker's record.
impl Drop for Attempt {
    fn drop(&mut self) {
        self.end_carrying();
    }
}

/// Nginx's cached clock in milliseconds, updated by the worker's event loop.
fn current_msec() -> ngx_msec_t {
    // SAFETY: a plain read of a value only this (single-threaded) worker writes.
    unsafe { ngx::ffi::ngx_current_msec }
}

unsafe extern "C" fn set_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: installed only when round robin had this callback; it gets its own data back.
    unsafe {
        let attempt = &*data.cast::<Attempt>();
        match attempt.rr_set_session {
            Some(rr_set_session) => rr_set_session(pc, attempt.rr_data),
            None => Status::NGX_OK.0,
        }
    }
}

unsafe extern "C" fn save_session(pc: *mut ngx_peer_connection_t, data: *mut c_void) {
    // SAFETY: as in set_session.
    unsafe {
        let attempt = &*data.cast::<Attempt>();
        if let Some(rr_save_session) = attempt.rr_save_session {
            rr_save_session(pc, attempt.rr_data);
        }
    }
}
