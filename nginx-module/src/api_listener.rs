//! FFI: a cap on the connections each worker keeps open on the Unix-socket listeners of servers
//! that serve `shift_api` (`shift_api connections=N`). The API shares the workers' connections
//! with the traffic: without a cap, a local user who can reach the socket could hold every
//! connection with half-sent headers (which `limit_conn` never sees, as it runs after them)
//! and starve the data path. A connection over the cap is closed as soon as it is accepted.
//!
//! An admitted connection is read at once, as Nginx reads one accepted with `deferred` on a
//! TCP listener: a client of the API writes its request right after it connects, so the request
//! is usually there already, and reading it now answers it in the same turn of the event loop
//! instead of after the next one (under load, a turn is every connection's events). When it is
//! not there yet, Nginx waits for it as usual.

use std::cell::RefCell;
use std::ffi::c_void;

use ngx::ffi::{
    ngx_connection_t, ngx_cycle_t, ngx_http_close_connection, ngx_http_in_addr_t,
    ngx_http_init_connection, ngx_http_port_t, ngx_listening_t, ngx_pool_cleanup_add, NGX_LOG_WARN,
};
use ngx::ngx_log_error;

use crate::conf::ApiServer;

/// One capped listener of this process.
struct Capped {
    listening: *const ngx_listening_t,
    limit: u32,
    open: u32,
    /// Whether the cap was reached since the count was last under it (logged once per spell).
    reported: bool,
}

thread_local! {
    // A worker is single-threaded; the master fills this before it forks the workers.
    static CAPPED: RefCell<Vec<Capped>> = const { RefCell::new(Vec::new()) };
}

/// The Unix-socket HTTP listeners of `cycle` whose default server is one of `api_servers`, each
/// with that server, and whether other servers share it by name (`server_name`).
///
/// SAFETY: `cycle` is a cycle whose configuration is parsed; its listeners are HTTP listeners of
/// this configuration, and `api_servers` are server confs of it.
pub unsafe fn api_listeners(
    cycle: *mut ngx_cycle_t,
    api_servers: &[ApiServer],
) -> Vec<(*mut ngx_listening_t, &ApiServer, bool)> {
    let mut found = Vec::new();
    // SAFETY: per the contract; an HTTP listener's `servers` is its `ngx_http_port_t`, with
    // `ngx_http_in_addr_t` addresses for every family but AF_INET6.
    unsafe {
        let listening: &mut [ngx_listening_t] = (*cycle).listening.as_slice_mut();
        for ls in listening {
            let unix =
                !ls.sockaddr.is_null() && (*ls.sockaddr).sa_family == nix::libc::AF_UNIX as u16;
            // HTTP's own listeners only (not a stream or mail one, whose `servers` differ).
            let http = ls.handler.is_some_and(|handler| {
                std::ptr::fn_addr_eq(
                    handler,
                    ngx_http_init_connection as unsafe extern "C" fn(*mut ngx_connection_t),
                )
            });
            if !unix || !http || ls.servers.is_null() {
                continue;
            }
            let port = &*ls.servers.cast::<ngx_http_port_t>();
            let addrs =
                std::slice::from_raw_parts(port.addrs.cast::<ngx_http_in_addr_t>(), port.naddrs);
            let server = addrs.iter().find_map(|addr| {
                api_servers
                    .iter()
                    .find(|api| api.server == addr.conf.default_server)
            });
            let shared = addrs.iter().any(|addr| !addr.conf.virtual_names.is_null());
            if let Some(server) = server {
                found.push((std::ptr::from_mut(ls), server, shared));
            }
        }
    }
    found
}

/// Caps the Unix-socket listeners whose default server is one of `api_servers` (with its
/// `connections=`): what the event loop serves of them, a listener with `threads=` too when it
/// stays with the event loop (`api_thread`); from `init_module`, once the configuration's
/// listeners exist.
///
/// SAFETY: as for `api_listeners`, with the cycle being committed.
pub unsafe fn cap(cycle: *mut ngx_cycle_t, api_servers: &[ApiServer]) {
    // SAFETY: per the contract.
    let capped: Vec<Capped> = unsafe { api_listeners(cycle, api_servers) }
        .into_iter()
        .map(|(listening, server, _)| Capped {
            listening,
            limit: server.connections,
            open: 0,
            reported: false,
        })
        .collect();
    for entry in &capped {
        // SAFETY: a listener of the cycle, not yet listening in any worker.
        unsafe { (*entry.listening.cast_mut()).handler = Some(accept) };
    }
    CAPPED.with(|all| *all.borrow_mut() = capped);
}

/// The capped listeners' accept handler.
extern "C" fn accept(c: *mut ngx_connection_t) {
    // SAFETY: Nginx calls a listener's handler with the connection it accepted, whose pool and
    // log are set up.
    unsafe {
        let listening = (*c).listening.cast_const();
        let admitted = CAPPED.with(|all| {
            let mut all = all.borrow_mut();
            let entry = all.iter_mut().find(|entry| entry.listening == listening)?;
            if entry.open >= entry.limit {
                if !entry.reported {
                    entry.reported = true;
                    ngx_log_error!(
                        NGX_LOG_WARN,
                        (*c).log,
                        "shift: this worker has {} API connections open, the most \
                         \"shift_api connections=\" allows; closing new ones until one ends",
                        entry.open
                    );
                }
                return Some(false);
            }
            entry.open += 1;
            Some(true)
        });
        match admitted {
            Some(false) => return ngx_http_close_connection(c),
            Some(true) => {
                let cleanup = ngx_pool_cleanup_add((*c).pool, 0);
                if cleanup.is_null() {
                    closed(listening.cast_mut().cast());
                    return ngx_http_close_connection(c);
                }
                (*cleanup).handler = Some(closed);
                (*cleanup).data = listening.cast_mut().cast();
            }
            None => {}
        }
        // Read at once (see above), with what a deferred accept sets: `ready`, and
        // `available` (with EPOLLRDHUP, Nginx's recv otherwise waits for the next event).
        let read = &mut *(*c).read;
        read.set_ready(1);
        read.available = 1;
        ngx_http_init_connection(c);
    }
}

/// A capped connection's pool is destroyed: it no longer counts.
unsafe extern "C" fn closed(data: *mut c_void) {
    let listening = data.cast_const().cast::<ngx_listening_t>();
    CAPPED.with(|all| {
        if let Some(entry) = all
            .borrow_mut()
            .iter_mut()
            .find(|entry| entry.listening == listening)
        {
            entry.open = entry.open.saturating_sub(1);
            if entry.open < entry.limit {
                entry.reported = false;
            }
        }
    });
}
