//! FFI: committing a configuration's load, from `init_module` (Nginx calls it only once the
//! configuration can no longer fail): config-driven changes apply, a table new in this zone
//! takes the replaced zone's or the state file's state, and what the configuration dropped
//! stops being current.

use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use ngx::core::slab::LockedSlabPool;
use ngx::ffi::{ngx_cycle_t, ngx_log_t, NGX_LOG_ALERT, NGX_LOG_ERR, NGX_LOG_NOTICE};
use ngx::http::{HttpModuleMainConf, HttpModuleServerConf};
use ngx::ngx_log_error;
use shift_wire::PeerOrigin;

use super::history::{members, record_since, ring_of};
use super::load::{check_mode, COMMITTED_ZONE};
use super::reclaim::reclaim;
use super::zone::{allocate_zeroed, slots_of, Zone};
use crate::conf::{MainConf, UpstreamConf};
use crate::ngx_module::Module;
use shift_core::history::{Actor, Change};
use shift_core::process::{own_token, token_alive};
use shift_core::state_file::{self, SavedUpstream};
use shift_core::table::{CarryNote, CheckMode, PeerSlot, Table, TableHeader};

/// Commits the load this configuration built; from `init_module`, which Nginx calls once the
/// configuration can no longer fail.
///
/// SAFETY: `cycle` is the cycle being committed.
pub unsafe fn commit_cycle(cycle: *mut ngx_cycle_t) {
    // SAFETY: Nginx passes the cycle being committed; its confs and zone are initialised.
    unsafe {
        let shm =
            Module::main_conf(&*cycle).and_then(|main| Some((main, NonNull::new(main.zone)?)));
        let Some((main, shm)) = shm else {
            // No shift upstream in this configuration: no zone to hand over to a later one
            // (the old configuration's zone struct goes with it).
            COMMITTED_ZONE.store(std::ptr::null_mut(), Ordering::Release);
            return;
        };
        let log = (*cycle).log;
        // An error here would make Nginx exit: say what is wrong and go on uncommitted instead
        // (the zone's init just checked the zone, so this does not happen).
        let (Some(zone), false) = (Zone::at(shm), main.load.is_null()) else {
            ngx_log_error!(
                NGX_LOG_ALERT,
                log,
                "shift: the configuration was not committed"
            );
            return;
        };
        commit(zone, main, log);
        COMMITTED_ZONE.store(shm.as_ptr(), Ordering::Release);
    }
}

/// Commits `main`'s load: it becomes the current one, each of its upstreams takes its config
/// (a new table first takes the replaced zone's or the state file's state), and tables and
/// peers the configuration dropped stop being current.
///
/// SAFETY: `main` is the configuration that built its load (not null) in `zone`.
pub unsafe fn commit(zone: Zone, main: &MainConf, log: *mut ngx_log_t) {
    // SAFETY: per the contract.
    unsafe {
        // When the zone was replaced by one of another size, the old zone's workers stop
        // serving the API first, and any change they were making is finished, so that nothing
        // they acknowledged is missed by the copy below.
        // (Each configuration registers its own zone struct; the memory is what tells.)
        let previous = NonNull::new(COMMITTED_ZONE.load(Ordering::Acquire))
            .and_then(|previous| Zone::at(previous))
            .filter(|previous| previous.root != zone.root);
        let _previous_lock = previous.map(|previous| {
            previous.root().superseded.store(1, Ordering::Release);
            previous.lock()
        });
        let locked = zone.lock();
        // Peers that become current for the first time in this commit all join now.
        let now_ms = crate::clock::unix_ms();
        let root = &mut *zone.root;
        let load = &*main.load;
        load.committed.store(true, Ordering::Release);
        root.current_load = load.id;
        root.current_load_record
            .store(std::ptr::from_ref(load) as usize, Ordering::Release);
        for &uscf in &main.upstreams {
            let Some(conf) = Module::server_conf(&*uscf) else {
                continue;
            };
            let Some(header) = conf.placement.table.as_ref() else {
                continue;
            };
            let name = header.name();
            // A table new in this zone takes back the peers it had added at run time, with
            // their state, beside its config peers.
            let restored: Vec<&PeerSlot> = conf
                .placement
                .slots
                .iter()
                .chain(&conf.placement.runtime)
                .copied()
                .collect();
            let table = Table::new(header, &restored);
            let Ok(guard) = table.lock(own_token(), token_alive) else {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "shift: upstream \"{}\" stays locked",
                    name
                );
                continue;
            };
            // A table's first configuration is its start, not a change.
            let members_before = (!conf.placement.new_table).then(|| members(header));
            let state_before = if conf.placement.new_table {
                restore(previous, &guard, conf, log)
            } else {
                None
            };
            // Peers added at run time stay until they are removed; the config owns its lines.
            let removed: Vec<&PeerSlot> = slots_of(header)
                .filter(|slot| slot.is_current() && slot.origin() == PeerOrigin::Config)
                .filter(|slot| {
                    !conf
                        .placement
                        .slots
                        .iter()
                        .any(|own| std::ptr::eq(*own, *slot))
                })
                .collect();
            // Removed as the API removes a peer: at a new epoch, so that every worker's list
            // leaves it out and its run-time positions in older loads can be given up.
            let epoch = if removed.is_empty() {
                0
            } else {
                root.next_members_epoch()
            };
            let checks = check_mode(conf);
            let notes = guard.commit(checks, &conf.placement.configs, &removed, epoch, now_ms);
            let current: Vec<&PeerSlot> =
                slots_of(header).filter(|slot| slot.is_current()).collect();
            guard.end_finished_ramps(&current, header.slow_start(), now_ms);
            header.set_slow_start(conf.slow_start);
            if checks == CheckMode::Off {
                // Nothing probes them any more: an unhealthy peer would stay out for good.
                let current: Vec<&PeerSlot> =
                    slots_of(header).filter(|slot| slot.is_current()).collect();
                guard.forget_health(&current);
            }
            // Addresses of names the configuration no longer has go (they stay while it does:
            // its workers look the names up again).
            let names: Vec<u64> = conf
                .resolve
                .iter()
                .map(|name| shift_core::resolve::source_id(&name.name_port()))
                .collect();
            for slot in slots_of(header).filter(|slot| {
                slot.is_current()
                    && slot.origin() == PeerOrigin::Resolved
                    && !names.contains(&slot.source())
            }) {
                guard.remove_peer(slot, root.next_members_epoch());
            }
            if !conf.placement.runtime.is_empty() {
                let epoch = root.next_members_epoch();
                let first_order = conf.placement.configs.len() as u32;
                guard.keep_runtime_peers(&conf.placement.runtime, first_order, epoch, now_ms);
            }
            if let Some(before) = &members_before {
                record_since(header, Actor::Reload, before);
            }
            drop(guard);
            log_notes(log, name, "the running state", &notes);
            set_state_path(&locked, header, conf.state_path.as_deref());
            // For this configuration's workers, forked after the commit (`resolver`).
            if let Some(conf) = Module::server_conf_mut(&*uscf) {
                conf.placement.state_before = state_before;
            }
        }
        for header in zone.tables() {
            if !load.tables().iter().any(|own| std::ptr::eq(*own, header)) {
                drop_table(header, root.next_members_epoch());
            }
        }
        reclaim(zone, &locked);
    }
}

/// A table the committed configuration no longer has stops being current. Its run-time peers
/// are removed at `epoch`, as a DELETE removes one, so that their places in older loads are
/// given up once those loads' workers no longer hold them; its config peers go with the loads
/// that have them.
///
/// SAFETY: the caller holds the zone's lock, which keeps the table's slots.
unsafe fn drop_table(header: &TableHeader, epoch: u64) {
    header.set_current(false);
    // SAFETY: per the contract.
    let slots: Vec<&PeerSlot> = unsafe { slots_of(header) }.collect();
    // Held by a writer that cannot finish anything on a table that is not current: the peers
    // still stop being current below, and their places wait for their loads.
    if let Ok(guard) = Table::new(header, &[]).lock(own_token(), token_alive) {
        for slot in &slots {
            if slot.is_current() && slot.origin() != PeerOrigin::Config {
                guard.remove_peer(slot, epoch);
            }
        }
    }
    slots.iter().for_each(|slot| slot.set_current(false, 0));
}

/// Gives a table that is new in this zone the state it had before: from the zone this one
/// replaces, or from the upstream's state file.
///
/// SAFETY: `previous`, if any, is the replaced zone, locked by the caller.
unsafe fn restore(
    previous: Option<Zone>,
    guard: &shift_core::table::WriteGuard,
    conf: &UpstreamConf,
    log: *mut ngx_log_t,
) -> Option<SavedUpstream> {
    let name = guard.table().name();
    // SAFETY: per the contract.
    let old = previous.and_then(|previous| unsafe { previous.tables() }.find(|h| h.name() == name));
    if let Some(old) = old {
        // SAFETY: the previous zone is locked, which keeps its slots.
        let slots: Vec<&PeerSlot> = unsafe { slots_of(old) }
            .filter(|slot| slot.is_current())
            .collect();
        let table = Table::new(old, &slots);
        let carried = table.carried();
        let notes = guard.carry_over(&carried, table.generation());
        log_notes(log, name, "the replaced zone", &notes);
        // Its history comes along, read under the old table's lock (old workers may still
        // record there) into the new one, whose lock the caller holds.
        if let Ok(old_guard) = Table::new(old, &[]).lock(own_token(), token_alive) {
            // SAFETY: both zones are locked, and both tables.
            let rings = unsafe { (ring_of(old), ring_of(guard.table().header())) };
            if let (Some(from), Some(to)) = rings {
                from.copy_into(&to);
            }
            drop(old_guard);
        }
        // Its names are looked up afresh in this zone: their new addresses take the places
        // the names had in the replaced one.
        return Some(SavedUpstream::new(name, table.generation(), &carried));
    }
    // The state file as the zone's init read it (once, under its directory's lock).
    let (Some(path), Some(read)) = (&conf.state_path, &conf.placement.saved_state) else {
        return None;
    };
    match read {
        Ok(saved) => {
            let notes = guard.carry_over(&saved.carried(), saved.generation);
            log_notes(log, name, &format!("\"{}\"", path.display()), &notes);
            // SAFETY: the zone's lock and the table's are held.
            if let Some(ring) = unsafe { ring_of(guard.table().header()) } {
                for change in saved.history.iter().filter_map(Change::from_wire) {
                    ring.append(&change);
                }
            }
            Some(saved.clone())
        }
        Err(reason) => {
            reject_state_file(path, name, reason, log);
            None
        }
    }
}

/// A state file that fails its checks is not applied: the upstream starts from its
/// configuration, and the file is moved aside (not under `nginx -t`) for the operator to read.
fn reject_state_file(path: &Path, upstream: &str, reason: &str, log: *mut ngx_log_t) {
    // SAFETY: a process global Nginx sets once from the command line.
    let testing = unsafe { ngx::ffi::ngx_test_config } != 0;
    let rejected = state_file::rejected_path(path);
    let outcome = if testing {
        format!("nginx will move it to \"{}\" on start", rejected.display())
    } else {
        match std::fs::rename(path, &rejected) {
            Ok(()) => format!("moved to \"{}\"", rejected.display()),
            Err(err) => format!("could not move it aside: {err}"),
        }
    };
    ngx_log_error!(
        NGX_LOG_ERR,
        log,
        "shift: {}; upstream \"{}\" starts from its configuration ({})",
        reason,
        upstream,
        outcome
    );
}

/// Stores the committed `state=` path in the zone, so that every worker saves to it.
///
/// SAFETY: the caller holds the zone's lock.
unsafe fn set_state_path(locked: &LockedSlabPool, header: &TableHeader, path: Option<&Path>) {
    let bytes = path.map(|path| path.as_os_str().as_encoded_bytes());
    // SAFETY: per the contract; the API reads the path only under the lock.
    unsafe {
        if super::worker::state_path(header).as_deref() == path {
            return;
        }
        let [address, len] = &header.state_path;
        super::zone::free(locked, address.swap(0, Ordering::AcqRel) as *mut u8);
        len.store(0, Ordering::Release);
        if let Some(bytes) = bytes {
            if let Ok(copy) = allocate_zeroed::<u8>(locked, bytes.len()) {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
                len.store(bytes.len(), Ordering::Release);
                address.store(copy as usize, Ordering::Release);
            }
        }
    }
}

fn log_notes(log: *mut ngx_log_t, upstream: &str, source: &str, notes: &[CarryNote]) {
    for note in notes {
        match note {
            CarryNote::Kept {
                server,
                weight,
                state,
            } => {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    log,
                    "shift: upstream \"{}\" peer {} keeps weight={} state={} from {}",
                    upstream,
                    server,
                    weight,
                    state,
                    source
                );
            }
            CarryNote::ConfigChanged { server } => {
                ngx_log_error!(
                    NGX_LOG_NOTICE,
                    log,
                    "shift: upstream \"{}\" peer {} changed in the config, takes the config's \
                     weight and state",
                    upstream,
                    server
                );
            }
        }
    }
}
