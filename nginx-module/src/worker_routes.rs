//! FFI: a worker's copy of an upstream's routes. Each request (and the worker's tick, for an
//! idle worker) compares the table's `seq` with the one the worker copied last, and on a change
//! copies weights and eligibility into round robin's peers, after building a new peer list
//! when peers were added or removed (`peer_list`).

use ngx::ffi::{ngx_http_upstream_srv_conf_t, ngx_log_t, NGX_LOG_ERR};
use ngx::log::DebugMask;
use ngx::{ngx_log_debug, ngx_log_error};

use crate::conf::{MainConf, UpstreamConf};
use crate::peer_list::{Member, PeerList};
use shift_core::table::{PeerSlot, Table, TableHeader};

/// Copies weights and eligibility from the shared table into this worker's round-robin peers
/// when the table's `seq` moved since the last copy (one atomic load when it did not), after
/// building a new peer list first when peers were added or removed.
pub fn copy_routes_if_changed<'a>(
    conf: &mut UpstreamConf,
    // Looked up only when the peers changed: not on the per-request path.
    main: impl Fn() -> Option<&'a MainConf>,
    uscf: &mut ngx_http_upstream_srv_conf_t,
    log: *mut ngx_log_t,
) {
    // SAFETY: as in `shm::table_of`.
    let Some(header) = (unsafe { conf.placement.table.as_ref() }) else {
        return;
    };
    // The list is built under the zone's lock and the routes read after it: another worker's
    // DELETE or lookup between the two leaves routes of a newer `seq` on an older list, which
    // the per-request check (the `seq` alone) would then trust, sending requests to a removed
    // peer. So the members are looked at again, and the list built again when they moved.
    for _ in 0..MEMBER_RACES {
        if Table::new(header, &[]).seq() == conf.routing.seen_seq {
            // A clock read only while a slow start runs: nothing on the data path otherwise.
            if !conf.routing.ramping.is_empty() {
                crate::ramp::follow(conf, header, crate::clock::unix_ms());
            }
            return;
        }
        let changed = header.members() != conf.routing.members_seen;
        if let Some(main) = changed.then(&main).flatten() {
            follow_members(conf, main, uscf, log);
            crate::shm::pause_after_list();
        }
        copy_routes(conf, header, log);
        if header.members() == conf.routing.members_seen {
            return;
        }
        // Not taken: the next round (or the next request) reads the table again.
        conf.routing.seen_seq = u64::MAX;
    }
}

/// How many times a request builds its worker's list again when the members keep moving while
/// it does (each time another worker changed them within microseconds); after that the next
/// request tries again.
const MEMBER_RACES: usize = 3;

/// Copies the table's routes (weights, eligibility) into this worker's round-robin peers, in
/// its current list's order, and notes the `seq` they are of.
fn copy_routes(conf: &mut UpstreamConf, header: &TableHeader, log: *mut ngx_log_t) {
    // The fields are borrowed apart so that `routes` can be filled from a view of the slots.
    // SAFETY: a non-null list is this worker's current one, alive while it is.
    let (slots, rr_peers) = match unsafe { conf.routing.list.as_ref() } {
        Some(list) => (&list.slots, &list.rr_peers),
        None => (&conf.placement.slots, &conf.placement.rr_peers),
    };
    let table = Table::new(header, slots);
    let Some(seq) = table.routes_if_changed(conf.routing.seen_seq, &mut conf.routing.routes) else {
        return;
    };
    conf.routing.hashes.clear();
    conf.routing.hashes.extend(
        slots
            .iter()
            .map(|slot| shift_core::sticky::hash(slot.server().as_bytes())),
    );
    for (&peer, route) in rr_peers.iter().zip(&conf.routing.routes) {
        // SAFETY: the list's or the configuration's round-robin peers, alive while this worker
        // routes with them and touched only by this (single-threaded) worker.
        let peer = unsafe { &mut *peer };
        if route.eligible {
            peer.down = 0;
            peer.weight = route.weight as isize;
            peer.effective_weight = route.weight as isize;
        } else {
            peer.down = 1;
        }
        // Start the smooth weighted round robin afresh on the new weights.
        peer.current_weight = 0;
    }
    conf.routing.seen_seq = seq;
    ngx_log_debug!(
        mask: DebugMask::Http,
        log,
        "shift: upstream \"{}\" takes the table at seq {}: {}",
        header.name(),
        seq,
        slots
            .iter()
            .zip(&conf.routing.routes)
            .map(|(slot, route)| format!(
                "{} weight={}{}",
                slot.server(),
                route.weight,
                if route.eligible { "" } else { " (no new requests)" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    crate::ramp::start(conf, header, crate::clock::unix_ms());
}

/// Follows a change of the table's peers if there was one (from the worker's tick).
pub fn follow_if_changed(
    conf: &mut UpstreamConf,
    main: &MainConf,
    uscf: &mut ngx_http_upstream_srv_conf_t,
    log: *mut ngx_log_t,
) {
    // SAFETY: as in `shm::table_of`.
    let changed = unsafe { conf.placement.table.as_ref() }
        .is_some_and(|header| header.members() != conf.routing.members_seen);
    if changed {
        copy_routes_if_changed(conf, || Some(main), uscf, log);
    }
}

/// Builds this worker's peer list again from its load's positions: the configuration's peers
/// and the current run-time ones, in the table's order. New requests take it; running ones
/// keep theirs.
fn follow_members(
    conf: &mut UpstreamConf,
    main: &MainConf,
    uscf: &mut ngx_http_upstream_srv_conf_t,
    log: *mut ngx_log_t,
) {
    if conf.routing.original.is_null() {
        conf.routing.original = uscf.peer.data.cast();
    }
    // SAFETY: round robin's list of this configuration, alive for its cycle.
    let Some(original) = (unsafe { conf.routing.original.as_ref() }) else {
        return;
    };
    // SAFETY: as in `shm::table_of`.
    let Some(header) = (unsafe { conf.placement.table.as_ref() }) else {
        return;
    };
    let placement = &conf.placement;
    let had_list = !conf.routing.list.is_null();
    let built = crate::shm::with_load_positions(
        main,
        placement.table_index,
        |members, epoch| {
            // Read under the zone's lock with the positions: a later change is seen next time.
            let members_now = header.members();
            let list = list_members(placement, members, had_list)
                .map(|members| PeerList::build(original, &members, epoch, placement.table_index));
            (list, members_now)
        },
        || crate::peer_list::held_epochs(placement.table_index),
    );
    let Some((list, members_now)) = built else {
        if !NO_LIST_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "shift: this worker has no record in the shared zone (see the error at its \
                 start): it routes to the \"server\" lines of upstream \"{}\" only, not to \
                 peers added at run time",
                uscf.host
            );
        }
        conf.routing.members_seen = header.members();
        return;
    };
    conf.routing.members_seen = members_now;
    if let Some(list) = list {
        if had_list {
            PeerList::retire(conf.routing.list);
        }
        conf.routing.list = list;
        // SAFETY: just built; it lives while it is this upstream's current list.
        uscf.peer.data = unsafe { std::ptr::addr_of_mut!((*list).peers) }.cast();
        conf.routing.seen_seq = u64::MAX;
        // The ramps noted were of the old list's order; the next copy notes them again.
        conf.routing.ramping.clear();
        conf.routing.ramp_scaled = false;
        // Run-time peers are checked like the others (a `mandatory` check keeps a new one
        // out of traffic until it passes).
        // SAFETY: as above.
        let slots = unsafe { &(*list).slots };
        crate::health_probe::follow(conf, &uscf.host.to_string(), slots);
    }
}

/// Whether this worker said once that it cannot route to run-time peers.
static NO_LIST_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a new list holds: the configuration's peers (primary ones copied, backup ones kept),
/// then the current run-time peers in the table's order. `None` when the configuration's own
/// list still fits (no run-time peers, and none before).
fn list_members(
    placement: &crate::upstream_state::Placement,
    members: &[(usize, &'static PeerSlot)],
    had_list: bool,
) -> Option<Vec<(Member, &'static PeerSlot, usize)>> {
    let configs = placement.configs.len();
    let mut runtime: Vec<(usize, &'static PeerSlot)> = members
        .iter()
        .filter(|(position, slot)| *position >= placement.first_slot + configs && slot.is_current())
        .copied()
        .collect();
    if runtime.is_empty() && !had_list {
        return None;
    }
    runtime.sort_by_key(|(_, slot)| slot.order());
    let mut list = Vec::with_capacity(configs + runtime.len());
    for (index, (&slot, &rr_peer)) in placement.slots.iter().zip(&placement.rr_peers).enumerate() {
        let member = if placement.configs[index].backup {
            Member::Backup(rr_peer)
        } else {
            Member::Config(rr_peer)
        };
        list.push((member, slot, placement.first_slot + index));
    }
    list.extend(
        runtime
            .into_iter()
            .map(|(position, slot)| (Member::Runtime, slot, position)),
    );
    Some(list)
}
