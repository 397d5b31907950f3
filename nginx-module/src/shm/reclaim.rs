//! FFI: freeing what no live process can touch any more: records of exited workers, loads that
//! were never committed or whose processes have all exited (`shift_core::lifecycle` decides
//! which), and the slots and headers only such loads used. Runs in the master, which knows its
//! children, at every build and commit; and each worker's housekeeping, once a second, frees
//! exited workers' records and releases removed peers, so that no API request pays for it.

use std::sync::atomic::Ordering;

use ngx::core::slab::LockedSlabPool;

use super::load::LoadRecord;
use super::worker::WorkerRecord;
use super::zone::{unlink_where, walk, Zone};
use shift_core::lifecycle::{loads_to_free, LoadStatus};
use shift_core::process::children_of;
use shift_core::reclaim::may_free_slot;
use shift_core::table::{PeerSlot, TableHeader};

/// How long after the last housekeeping another runs, whichever worker does it: a little under
/// the tick, so that a worker whose timer fires a few milliseconds early does not skip a whole
/// second.
const HOUSEKEEPING_MS: u64 = 900;

/// Frees what no live process can touch: records of exited workers, loads that were never
/// committed or whose processes have all exited, and the slots and headers that only such loads
/// used. Runs in the master, which knows its children.
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn reclaim(zone: Zone, locked: &LockedSlabPool) {
    // SAFETY: per the contract.
    unsafe {
        let root = &*zone.root;
        super::worker::reap_exited(zone, locked);
        let workers: Vec<&WorkerRecord> =
            walk(root.workers.load(Ordering::Acquire), |w: &WorkerRecord| {
                &w.next
            })
            .collect();
        let loads: Vec<&LoadRecord> =
            walk(root.loads.load(Ordering::Acquire), |load: &LoadRecord| {
                &load.next
            })
            .collect();
        let statuses: Vec<LoadStatus> = loads
            .iter()
            .map(|load| LoadStatus {
                id: load.id,
                committed: load.committed.load(Ordering::Acquire),
                running_workers: workers
                    .iter()
                    .filter(|w| w.load == std::ptr::from_ref(*load) as usize)
                    .count(),
            })
            .collect();
        let registered: Vec<u32> = workers.iter().map(|w| w.process.pid).collect();
        let unregistered = children_of(std::process::id())
            .iter()
            .any(|pid| !registered.contains(pid));
        let free = loads_to_free(&statuses, root.current_load, None, unregistered);
        unlink_where(
            locked,
            &root.loads,
            |load: &LoadRecord| &load.next,
            |load| {
                if !free.contains(&load.id) {
                    return false;
                }
                for slot in load.slots().into_iter().flatten() {
                    slot.refs.fetch_sub(1, Ordering::Relaxed);
                }
                for header in load.tables() {
                    header.refs.fetch_sub(1, Ordering::Relaxed);
                }
                load.free_blocks(locked);
                true
            },
        );
        super::membership::release_removed(zone, locked);
        sweep(zone, locked);
    }
}

/// Frees slots and headers that no load uses and that are not current.
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn sweep(zone: Zone, locked: &LockedSlabPool) {
    let unused_slot =
        |slot: &PeerSlot| may_free_slot(slot.refs.load(Ordering::Relaxed), slot.is_current());
    // SAFETY: per the contract; an unused slot or header is reachable by nobody: workers reach
    // them only through their load, and the API only under the lock and only current ones.
    unsafe {
        for header in zone.tables() {
            unlink_where(
                locked,
                &header.peers,
                |slot: &PeerSlot| &slot.next,
                unused_slot,
            );
        }
        unlink_where(
            locked,
            &(*zone.root).tables,
            |h: &TableHeader| &h.next,
            |header| {
                let unused = header.refs.load(Ordering::Relaxed) == 0
                    && !header.is_current()
                    && header.peers.load(Ordering::Acquire) == 0;
                if unused {
                    let [address, _] = &header.state_path;
                    super::zone::free(locked, address.load(Ordering::Acquire) as *mut u8);
                    super::history::forget(locked, header);
                }
                unused
            },
        );
    }
}

/// The zone's housekeeping, from each worker's 1 s tick, done by one worker a second (the first
/// whose tick comes once a second has passed): frees the records of workers that have exited (a
/// `/proc` read each), and releases removed peers' positions when any is waiting
/// (`membership::release_removed`, skipped while nothing was removed since it last found none).
/// `now_ms` is the system's monotonic clock, the same in every process.
pub fn housekeeping(main: &crate::conf::MainConf, now_ms: u64) {
    let Some(shm) = std::ptr::NonNull::new(main.zone) else {
        return;
    };
    // SAFETY: this worker's zone stays mapped while it runs.
    let Some(zone) = (unsafe { Zone::at(shm) }) else {
        return;
    };
    let locked = zone.lock();
    let last = &zone.root().housekeeping_ms;
    if now_ms < last.load(Ordering::Acquire).saturating_add(HOUSEKEEPING_MS) {
        return;
    }
    last.store(now_ms, Ordering::Release);
    // SAFETY: the zone's lock is held.
    unsafe {
        super::worker::reap_exited(zone, &locked);
        super::membership::release_removed(zone, &locked);
    }
}
