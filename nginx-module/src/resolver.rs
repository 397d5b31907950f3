//! FFI: names resolved at run time. At configuration time `take_names` collects an upstream's
//! names (`shift_resolve`, and `server NAME resolve` on Nginx 1.27.3+) and its resolver; at run
//! time each worker's tick (`tick`) looks them up when they are due, one worker per upstream at
//! a time (`TableHeader::claim_lookup`), and the answers add and remove peers in the zone as the
//! API's POST and DELETE do (`shift_core::resolve` decides what changes). A failed lookup keeps
//! the last good set.

use std::collections::BTreeSet;
use std::ffi::{c_void, CStr};
use std::mem::size_of;
use std::net::IpAddr;
use std::ptr::{self, NonNull};

use ngx::ffi::{
    ngx_addr_t, ngx_array_push, ngx_conf_t, ngx_http_upstream_server_t,
    ngx_http_upstream_srv_conf_t, ngx_log_t, ngx_pcalloc, ngx_resolve_name, ngx_resolve_name_done,
    ngx_resolve_start, ngx_resolver_ctx_t, ngx_resolver_strerror, ngx_str_t, sockaddr, sockaddr_in,
    socklen_t, NGX_LOG_ERR, NGX_LOG_NOTICE, NGX_LOG_WARN,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};
use ngx::ngx_log_error;
use shift_core::api::save::{self, PendingSave, SaveError};
use shift_core::api::Membership;
use shift_core::directives::label_for;
use shift_core::history::Actor;
use shift_core::process::{own_token, token_alive};
use shift_core::resolve::{
    answer_peers, changes, earlier_places, joining_settings, next_lookup_in, settings_of,
    source_id, Settings,
};
use shift_core::state_file::SavedUpstream;
use shift_core::table::{Addition, PeerSlot, Table};
use shift_wire::PeerOrigin;

use crate::conf::{MainConf, UpstreamConf};

/// Moves the upstream's names out of round robin's way and finds its resolver. `server NAME
/// resolve` lines (1.27.3+) become names; when no primary `server` address is left, a standby
/// placeholder line is added (round robin wants one; it has no name, so it is no peer).
///
/// SAFETY: `cf` is the configuration being parsed and `uscf` one of its upstreams, before round
/// robin's `init_upstream` ran.
pub unsafe fn take_names(
    cf: *mut ngx_conf_t,
    uscf: &mut ngx_http_upstream_srv_conf_t,
    conf: &mut UpstreamConf,
) -> Result<(), String> {
    // SAFETY: per the contract; `servers` holds the upstream's parsed `server` lines.
    let servers: &mut [ngx_http_upstream_server_t] = unsafe {
        if uscf.servers.is_null() {
            &mut []
        } else {
            std::slice::from_raw_parts_mut((*uscf.servers).elts.cast(), (*uscf.servers).nelts)
        }
    };
    #[cfg(ngx_server_resolve)]
    for server in servers.iter_mut().filter(|server| server.host.len > 0) {
        let host = server.host.to_string();
        if server.backup() != 0 {
            return Err(format!(
                "\"server {host} resolve backup\" in upstream \"{}\" is not supported with \"shift\"",
                uscf.host
            ));
        }
        // SAFETY: a `resolve` line keeps its port in its one placeholder address.
        let port = unsafe { port_of(&*server.addrs) };
        let name = shift_core::directives::ResolvedName {
            host: host.to_ascii_lowercase(),
            port,
            weight: server.weight as u32,
            down: server.down != 0,
        };
        if !conf
            .resolve
            .iter()
            .any(|known| known.name_port() == name.name_port())
        {
            conf.resolve.push(name);
        }
        // Round robin takes it as a line without addresses.
        server.host.len = 0;
        server.naddrs = 0;
    }
    if conf.resolve.is_empty() {
        return Ok(());
    }
    let has_primary = servers
        .iter()
        .any(|server| server.naddrs > 0 && server.backup() == 0);
    // SAFETY: `cf` is valid, and so is its http-level core location conf.
    let cf_ref = unsafe { &mut *cf };
    if !has_primary {
        // SAFETY: as above.
        unsafe { add_placeholder(cf_ref, uscf)? };
    }
    // The http block's resolver; its location conf is not merged yet when upstreams are
    // initialised, so unset values are read as Nginx's defaults (no resolver, 30 s).
    let clcf = NgxHttpCoreModule::location_conf(cf_ref).ok_or("no http core conf")?;
    conf.resolver = set_or(clcf.resolver, ptr::null_mut());
    conf.resolver_timeout = set_or(clcf.resolver_timeout, DEFAULT_RESOLVER_TIMEOUT_MS);
    #[cfg(ngx_server_resolve)]
    if !set_or(uscf.resolver, ptr::null_mut()).is_null() {
        conf.resolver = uscf.resolver;
        conf.resolver_timeout = set_or(uscf.resolver_timeout, conf.resolver_timeout);
    }
    // SAFETY: a non-null resolver of this configuration.
    let usable = unsafe { conf.resolver.as_ref() }.is_some_and(|r| r.connections.nelts > 0);
    if !usable {
        return Err(format!(
            "no resolver defined to resolve \"{}\" in upstream \"{}\": add \"resolver ADDRESS \
             valid=30s;\" to the http block",
            conf.resolve[0].name_port(),
            uscf.host
        ));
    }
    Ok(())
}

/// Nginx's `resolver_timeout` when none is set.
const DEFAULT_RESOLVER_TIMEOUT_MS: ngx::ffi::ngx_msec_t = 30_000;

/// A conf value, or `default` while it is `NGX_CONF_UNSET` (all bits set, for numbers and
/// pointers alike).
fn set_or<T: Copy + PartialEq + UnsetValue>(value: T, default: T) -> T {
    if value == T::UNSET {
        default
    } else {
        value
    }
}

trait UnsetValue {
    const UNSET: Self;
}

impl UnsetValue for ngx::ffi::ngx_msec_t {
    const UNSET: Self = Self::MAX;
}

impl UnsetValue for *mut ngx::ffi::ngx_resolver_t {
    const UNSET: Self = usize::MAX as *mut ngx::ffi::ngx_resolver_t;
}

/// The port of an IPv4 or IPv6 socket address.
///
/// SAFETY: `addr` holds a valid `sockaddr` of `socklen` bytes.
#[cfg(ngx_server_resolve)]
unsafe fn port_of(addr: &ngx_addr_t) -> u16 {
    // SAFETY: per the contract; both families keep the port at the same offset.
    let sin = unsafe { &*addr.sockaddr.cast::<sockaddr_in>() };
    u16::from_be(sin.sin_port)
}

/// Appends a standby `server` line without a name (0.0.0.0:0, down). `shift_resolve` adds it
/// while the block is parsed: Nginx refuses an upstream block without `server` lines.
///
/// SAFETY: `cf` is the configuration being parsed and `uscf` its upstream.
pub unsafe fn add_placeholder(
    cf: &mut ngx_conf_t,
    uscf: &mut ngx_http_upstream_srv_conf_t,
) -> Result<(), String> {
    let no_memory = || "cannot allocate the upstream's placeholder line".to_string();
    // SAFETY: per the contract; allocations in the configuration's pool, zeroed.
    unsafe {
        let sin = ngx_pcalloc(cf.pool, size_of::<sockaddr_in>()).cast::<sockaddr_in>();
        let addr = ngx_pcalloc(cf.pool, size_of::<ngx_addr_t>()).cast::<ngx_addr_t>();
        let server = ngx_array_push(uscf.servers).cast::<ngx_http_upstream_server_t>();
        if sin.is_null() || addr.is_null() || server.is_null() {
            return Err(no_memory());
        }
        (*sin).sin_family = nix::libc::AF_INET as _;
        (*addr).sockaddr = sin.cast::<sockaddr>();
        (*addr).socklen = size_of::<sockaddr_in>() as socklen_t;
        ptr::write_bytes(server, 0, 1);
        (*server).addrs = addr;
        (*server).naddrs = 1;
        (*server).weight = 1;
        (*server).max_fails = 1;
        (*server).fail_timeout = 10;
        (*server).down = 1;
    }
    Ok(())
}

/// One name's lookup in flight in this worker.
struct Lookup {
    conf: *mut UpstreamConf,
    main: *const MainConf,
    index: usize,
    log: *mut ngx_log_t,
}

/// From the worker's tick: looks the upstream's names up if they are due and this worker
/// claims them.
pub fn tick(conf: &mut UpstreamConf, main: &MainConf, log: *mut ngx_log_t, now_ms: u64) {
    if conf.resolve.is_empty() || conf.routing.lookups_pending > 0 {
        return;
    }
    // SAFETY: as in `shm::table_of`.
    let Some(header) = (unsafe { conf.placement.table.as_ref() }) else {
        return;
    };
    if !header.claim_lookup(now_ms, (conf.resolver_timeout as u64).saturating_add(1_000)) {
        return;
    }
    conf.routing.next_lookup_ms = u64::MAX;
    conf.routing.lookups_pending = conf.resolve.len();
    for index in 0..conf.resolve.len() {
        start(conf, main, log, index);
    }
}

fn start(conf: &mut UpstreamConf, main: &MainConf, log: *mut ngx_log_t, index: usize) {
    let lookup = Box::into_raw(Box::new(Lookup {
        conf,
        main,
        index,
        log,
    }));
    // SAFETY: the upstream's resolver, alive for the cycle; NULL asks for a name lookup.
    let ctx = unsafe { ngx_resolve_start(conf.resolver, ptr::null_mut()) };
    if ctx.is_null() || ctx as isize == -1 {
        // SAFETY: made just above, not handed to anyone.
        drop(unsafe { Box::from_raw(lookup) });
        finish(conf, None);
        return;
    }
    let host = &conf.resolve[index].host;
    // SAFETY: a fresh context; the name lives in the conf, alive for the cycle.
    let rc = unsafe {
        (*ctx).name = ngx_str_t {
            len: host.len(),
            data: host.as_ptr().cast_mut(),
        };
        (*ctx).handler = Some(on_answer);
        (*ctx).data = lookup.cast::<c_void>();
        (*ctx).timeout = conf.resolver_timeout;
        ngx_resolve_name(ctx)
    };
    if rc != 0 {
        // The resolver freed the context and will not call back.
        // SAFETY: as above.
        drop(unsafe { Box::from_raw(lookup) });
        finish(conf, None);
    }
}

unsafe extern "C" fn on_answer(ctx: *mut ngx_resolver_ctx_t) {
    // SAFETY: Nginx's resolver calls back with the context `start` set up, once.
    let (lookup, state, valid, addresses) = unsafe {
        let ctx = &*ctx;
        let lookup = Box::from_raw(ctx.data.cast::<Lookup>());
        let addresses: Vec<IpAddr> = if ctx.addrs.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(ctx.addrs, ctx.naddrs)
                .iter()
                .filter_map(|addr| ip_of(addr.sockaddr))
                .collect()
        };
        (lookup, ctx.state, ctx.valid, addresses)
    };
    // SAFETY: as above; the context is not used after this.
    unsafe { ngx_resolve_name_done(ctx) };
    // SAFETY: the conf and main conf of this worker's cycle, which outlives its lookups; the
    // worker is single-threaded.
    let (conf, main) = unsafe { (&mut *lookup.conf, &*lookup.main) };
    let name = conf.resolve[lookup.index].clone();
    if state != 0 || addresses.is_empty() {
        // SAFETY: Nginx's static error strings.
        let why = unsafe { CStr::from_ptr(ngx_resolver_strerror(state)) }.to_string_lossy();
        ngx_log_error!(
            NGX_LOG_WARN,
            lookup.log,
            "shift: upstream \"{}\": \"{}\" could not be resolved ({}); its peers stay as they are",
            upstream_name(conf),
            name.name_port(),
            if state != 0 {
                why.as_ref()
            } else {
                "no address"
            }
        );
        finish(conf, None);
        return;
    }
    let now = ngx::ffi::ngx_time();
    let valid_ms = (valid - now).max(0) as u64 * 1000;
    apply(
        conf,
        main,
        &name,
        &answer_peers(&addresses, name.port),
        lookup.log,
    );
    finish(conf, Some(valid_ms));
}

/// One name's lookup ended (`valid_ms` when it answered); the last one sets when the names are
/// due again.
fn finish(conf: &mut UpstreamConf, valid_ms: Option<u64>) {
    let next = next_lookup_in(valid_ms);
    conf.routing.next_lookup_ms = conf.routing.next_lookup_ms.min(next);
    conf.routing.lookups_pending = conf.routing.lookups_pending.saturating_sub(1);
    if conf.routing.lookups_pending > 0 {
        return;
    }
    // SAFETY: as in `shm::table_of`.
    if let Some(header) = unsafe { conf.placement.table.as_ref() } {
        header.lookup_done(crate::clock::monotonic_ms() + conf.routing.next_lookup_ms);
    }
}

/// Makes the name's peers in the zone the answer's addresses.
fn apply(
    conf: &UpstreamConf,
    main: &MainConf,
    name: &shift_core::directives::ResolvedName,
    answer: &std::collections::BTreeSet<String>,
    log: *mut ngx_log_t,
) {
    // SAFETY: as in `shm::table_of`.
    let Some(header) = (unsafe { conf.placement.table.as_ref() }) else {
        return;
    };
    let Some(shm) = NonNull::new(main.zone) else {
        return;
    };
    // SAFETY: this worker's zone stays mapped while it runs.
    let Some(zone) = (unsafe { crate::shm::Zone::at(shm) }) else {
        return;
    };
    let locked = zone.lock();
    let source = source_id(&name.name_port());
    // SAFETY: the zone's lock is held.
    let all: Vec<&'static PeerSlot> = unsafe { crate::shm::slots_of(header) }.collect();
    let current: Vec<&'static PeerSlot> = all
        .iter()
        .copied()
        .filter(|slot| slot.is_current() && slot.origin() == PeerOrigin::Resolved)
        .filter(|slot| slot.source() == source)
        .collect();
    // Every answer, changed or not, vouches for the addresses it gives.
    let answered_ms = crate::clock::unix_ms();
    for slot in current.iter().filter(|slot| answer.contains(slot.server())) {
        slot.note_resolved(answered_ms);
    }
    let (add, remove) = changes(&current, answer);
    if add.is_empty() && remove.is_empty() {
        return;
    }
    let Ok(guard) = Table::new(header, &[]).lock(own_token(), token_alive) else {
        return; // another change holds it; the next lookup tries again
    };
    // SAFETY: the zone's lock is held.
    let members_before = unsafe { crate::shm::members(header) };
    let mut membership = crate::shm::ZoneMembership::new(zone, &locked);
    let mut order = all
        .iter()
        .filter(|slot| slot.is_current())
        .map(|slot| slot.order() + 1)
        .max()
        .unwrap_or(0);
    // Copied before the first `place`: placing may free slots that are not current, which `all`
    // still lists.
    let taken: BTreeSet<String> = all
        .iter()
        .filter(|slot| slot.is_current())
        .map(|slot| slot.server().to_string())
        .collect();
    let line = Settings::of_line(name.weight, name.down);
    // Read under the table's lock (PATCHes also take the zone's): where the name's peers stand,
    // and where they stood before this zone (a restart's state file, or the zone a resizing
    // reload replaced), for a name that has none yet.
    let places: Vec<Settings> = current.iter().map(|slot| settings_of(slot)).collect();
    let before = conf
        .placement
        .state_before
        .as_ref()
        .map_or_else(Vec::new, |saved| {
            earlier_places(saved, source, answer, line)
        });
    let (joining, from) = joining_settings(&places, &before, line);
    let mut added = Vec::new();
    let mut refused = false;
    for server in &add {
        if taken.contains(server) {
            continue; // a config or API peer has the address already
        }
        match membership.place(header, server) {
            Ok(slot) => {
                let epoch = membership.next_epoch();
                let addition = Addition {
                    weight: joining.weight,
                    state: joining.state,
                    line_weight: name.weight,
                    line_down: name.down,
                    label: label_for(&conf.labels, &name.name_port(), server),
                    origin: PeerOrigin::Resolved,
                    source,
                    at_ms: answered_ms,
                    slow_start_ms: None,
                };
                guard.add_peer(slot, &addition, order, epoch);
                order += 1;
                // With what it joined, and why: an operator reading the log sees why a new
                // container is standby, or live.
                added.push(format!(
                    "{server} (weight={} state={}, {})",
                    joining.weight,
                    joining.state.as_str(),
                    from.describe()
                ));
            }
            Err(err) => {
                refused = true;
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "shift: upstream \"{}\": {} from \"{}\" not added: {}; the addresses \
                     it replaces stay until it can be",
                    header.name(),
                    server,
                    name.name_port(),
                    err
                );
            }
        }
    }
    // An answer that cannot be applied whole never takes the old addresses away: they may be
    // all that still serves.
    let remove = if refused { Vec::new() } else { remove };
    for slot in &remove {
        let epoch = membership.next_epoch();
        guard.remove_peer(slot, epoch);
    }
    // SAFETY: the zone's lock and the table's write lock are held.
    unsafe { crate::shm::record_since(header, Actor::Resolver, &members_before) };
    // For the state file below, read under the table's lock.
    // SAFETY: as above.
    let history =
        unsafe { crate::shm::ring_of(header) }.map_or_else(Vec::new, |ring| ring.since(0));
    drop(guard);
    let removed: Vec<&str> = remove.iter().map(|slot| slot.server()).collect();
    // The state file follows, so that a restart finds the name's place (`earlier_places`):
    // a snapshot now, written once the zone is unlocked, as the API does.
    // SAFETY: the zone's lock is held, which keeps the path and the slots.
    let pending = unsafe { crate::shm::state_path(header) }.map(|path| {
        // SAFETY: as above.
        let slots: Vec<&PeerSlot> = unsafe { crate::shm::slots_of(header) }
            .filter(|slot| slot.is_current())
            .collect();
        let table = Table::new(header, &slots);
        let mut saved = SavedUpstream::new(header.name(), table.generation(), &table.carried());
        saved.history = history.iter().map(|change| change.to_wire()).collect();
        PendingSave { path, saved }
    });
    ngx_log_error!(
        NGX_LOG_NOTICE,
        log,
        "shift: upstream \"{}\": \"{}\" resolves to {}{}{}",
        header.name(),
        name.name_port(),
        answer.iter().cloned().collect::<Vec<_>>().join(", "),
        if added.is_empty() {
            String::new()
        } else {
            format!("; added {}", added.join(", "))
        },
        if removed.is_empty() {
            String::new()
        } else {
            format!("; removed {}", removed.join(", "))
        }
    );
    drop(locked);
    if let Some(pending) = pending {
        // A new binary that took over looks the names up itself.
        if let Err(SaveError::NotSaved(err)) = save::write(&pending, crate::shm::still_serving) {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "shift: upstream \"{}\": state file \"{}\" not saved after a lookup: {}; \
                 the next change that saves writes it",
                pending.saved.upstream,
                pending.path.display(),
                err
            );
        }
    }
}

fn upstream_name(conf: &UpstreamConf) -> String {
    // SAFETY: as in `shm::table_of`.
    unsafe { conf.placement.table.as_ref() }
        .map_or_else(String::new, |header| header.name().to_string())
}

/// The IP address of an IPv4 or IPv6 socket address.
fn ip_of(address: *const sockaddr) -> Option<IpAddr> {
    // SAFETY: the resolver's answer addresses are valid sockaddrs of their family.
    unsafe {
        match i32::from((*address).sa_family) {
            nix::libc::AF_INET => {
                let sin = &*address.cast::<nix::libc::sockaddr_in>();
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            nix::libc::AF_INET6 => {
                let sin6 = &*address.cast::<nix::libc::sockaddr_in6>();
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}
