//! FFI: the zone's side of peers added and removed at run time.
//!
//! A new peer gets a slot in its table's list and a position in every live configuration load
//! that routes to the table (a load built by a reload not yet committed included), so that
//! every worker, of every generation, routes to it once it has built its peer list again. A
//! removed peer keeps its run-time positions until no list of any worker of the load can hold
//! it, and the slot is freed when no position holds it: `shift_core::reclaim` decides both,
//! from the epochs each worker publishes for its lists (`worker::publish_held`).

use std::sync::atomic::{AtomicUsize, Ordering};

use ngx::core::slab::LockedSlabPool;

use super::load::{place_slot, LoadRecord, MIN_SPARE_POSITIONS};
use super::reclaim::sweep;
use super::worker::WorkerRecord;
use super::zone::{slots_of, walk, Zone};
use shift_core::api::{Membership, PlaceError};
use shift_core::reclaim::{
    may_give_up, release_pass_due, released_through, HeldEpochs, PositionKind, RELEASE_PENDING,
};
use shift_core::table::{Label, PeerConfig, PeerSlot, TableHeader};
use shift_wire::PeerOrigin;

/// Adds and removes peers in the zone; lives while the API holds the zone's lock.
pub struct ZoneMembership<'a> {
    zone: Zone,
    locked: &'a LockedSlabPool,
}

impl<'a> ZoneMembership<'a> {
    pub fn new(zone: Zone, locked: &'a LockedSlabPool) -> ZoneMembership<'a> {
        ZoneMembership { zone, locked }
    }

    fn loads(&self) -> impl Iterator<Item = &'static LoadRecord> {
        // SAFETY: the lock is held while `self` lives, which keeps every load allocated.
        unsafe {
            walk(
                self.zone.root().loads.load(Ordering::Acquire),
                |load: &LoadRecord| &load.next,
            )
        }
    }
}

impl Membership for ZoneMembership<'_> {
    fn place(
        &mut self,
        table: &TableHeader,
        server: &str,
    ) -> Result<&'static PeerSlot, PlaceError> {
        // Positions of this table's peers removed earlier may be free by now (the other
        // tables' wait for the housekeeping: this request reads this table only).
        // SAFETY: the lock is held while `self` lives.
        unsafe { release_removed_of(self.zone, self.locked, Some(table)) };
        // SAFETY: as above.
        let existing = unsafe { slots_of(table) }.find(|slot| slot.server() == server);
        let slot = match existing {
            Some(slot) => slot,
            None => {
                let config = PeerConfig {
                    server: server.to_string(),
                    weight: 1,
                    down: false,
                    backup: false,
                    label: Label::NONE,
                };
                let epoch = self.zone.root().members_epoch.load(Ordering::Acquire);
                // SAFETY: as above.
                let slot = unsafe { place_slot(self.locked, table, &config, epoch) }
                    .map_err(PlaceError::ZoneFull)?;
                slot.set_origin(PeerOrigin::Api);
                slot
            }
        };
        let address = std::ptr::from_ref(slot) as usize;
        let mut taken: Vec<&'static AtomicUsize> = Vec::new();
        for load in self.loads() {
            let Some(table_index) = load.index_of(table) else {
                continue;
            };
            let positions = load.positions_of(table_index);
            if positions
                .iter()
                .any(|position| position.cell.load(Ordering::Acquire) == address)
            {
                continue;
            }
            let free = positions.iter().find(|position| {
                position.kind == PositionKind::Runtime && position.cell.load(Ordering::Acquire) == 0
            });
            let cell = match free {
                Some(position) => position.cell,
                None => {
                    // No room left: the load grows by as many run-time positions as it has for
                    // the upstream (the zone's memory is the only limit).
                    let runtime = positions
                        .iter()
                        .filter(|position| position.kind == PositionKind::Runtime)
                        .count();
                    match load.grow(self.locked, table_index, runtime.max(MIN_SPARE_POSITIONS)) {
                        Ok(position) => position.cell,
                        Err(full) => {
                            // What this place took goes back; a new slot no position holds,
                            // and that is not current, is used by nobody.
                            for cell in taken {
                                cell.store(0, Ordering::Release);
                                slot.refs.fetch_sub(1, Ordering::Relaxed);
                            }
                            // SAFETY: the lock is held while `self` lives.
                            unsafe { sweep(self.zone, self.locked) };
                            return Err(PlaceError::ZoneFull(full));
                        }
                    }
                }
            };
            // The reference first: a process killed between the two leaves one too many (a
            // slot kept), never one too few (a slot freed while a position holds it).
            slot.refs.fetch_add(1, Ordering::Relaxed);
            cell.store(address, Ordering::Release);
            taken.push(cell);
            // The slot is not current until the change takes a new epoch: if the process dies
            // first, its positions wait for a release pass that the epoch alone would skip.
            self.zone
                .root()
                .released_at_epoch
                .store(RELEASE_PENDING, Ordering::Release);
        }
        Ok(slot)
    }

    fn next_epoch(&mut self) -> u64 {
        self.zone.root().next_members_epoch()
    }
}

/// Gives up the run-time positions of removed peers that no worker's list can hold any more,
/// and frees their slots when no position holds them (`shift_core::reclaim::may_give_up`).
/// When none is left waiting, the zone records the membership epoch, and later calls skip the
/// walk until a peer is removed or a position taken again (`shift_core::reclaim`, which the
/// model test drives with the same rule).
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn release_removed(zone: Zone, locked: &LockedSlabPool) {
    let root = zone.root();
    let epoch = root.members_epoch.load(Ordering::Acquire);
    if !release_pass_due(epoch, root.released_at_epoch.load(Ordering::Acquire)) {
        return;
    }
    // SAFETY: per the contract.
    let waiting = unsafe { release_removed_of(zone, locked, None) };
    root.released_at_epoch
        .store(released_through(epoch, waiting), Ordering::Release);
}

/// As `release_removed`, for the table `only` (every table when `None`), without the epoch's
/// shortcut; returns how many removed peers' positions must still wait for workers' lists.
///
/// SAFETY: the caller holds the zone's lock.
unsafe fn release_removed_of(
    zone: Zone,
    locked: &LockedSlabPool,
    only: Option<&TableHeader>,
) -> usize {
    // SAFETY: per the contract, the lists stay allocated while they are walked.
    let (workers, loads) = unsafe {
        let workers: Vec<&WorkerRecord> = walk(
            zone.root().workers.load(Ordering::Acquire),
            |worker: &WorkerRecord| &worker.next,
        )
        .collect();
        let loads: Vec<&LoadRecord> = walk(
            zone.root().loads.load(Ordering::Acquire),
            |load: &LoadRecord| &load.next,
        )
        .collect();
        (workers, loads)
    };
    let mut released = false;
    let mut waiting = 0;
    for load in loads {
        let address = std::ptr::from_ref(load) as usize;
        let own: Vec<&WorkerRecord> = workers
            .iter()
            .copied()
            .filter(|worker| worker.load == address)
            .collect();
        let committed = load.committed.load(Ordering::Acquire);
        let tables = match only {
            Some(header) => load.index_of(header).map_or(0..0, |index| index..index + 1),
            None => 0..load.table_count(),
        };
        for table_index in tables {
            let holders: Vec<HeldEpochs> =
                own.iter().map(|worker| worker.held(table_index)).collect();
            for position in load.positions_of(table_index) {
                let Some(slot) = position.slot() else {
                    continue;
                };
                slot.verify();
                let life = slot.life();
                if may_give_up(committed, position.kind, life, holders.iter().copied()) {
                    position.cell.store(0, Ordering::Release);
                    slot.refs.fetch_sub(1, Ordering::Relaxed);
                    released = true;
                } else if position.kind == PositionKind::Runtime && !slot.is_current() {
                    waiting += 1;
                }
            }
        }
    }
    if released {
        // SAFETY: per the contract.
        unsafe { sweep(zone, locked) };
    }
    waiting
}

/// Calls `build` with the peers at the positions of the load's table `table_index` in this
/// worker's load (each with its flat position, config ones first) and the zone's membership
/// epoch, under the zone's lock; then, still under
/// it, publishes in the worker's record the epochs of its lists for the load's table
/// `table_index` (`held`, asked after the build). A removal therefore either comes before the
/// read (and the new list leaves the peer out) or after the record shows the list (and the
/// peer's position waits for it). `None` when this worker cannot publish (no record, or none
/// with room for it): it must then route with its configuration's peers only.
pub fn with_load_positions<T>(
    main: &crate::conf::MainConf,
    table_index: usize,
    build: impl FnOnce(&[(usize, &'static PeerSlot)], u64) -> T,
    held: impl FnOnce() -> HeldEpochs,
) -> Option<T> {
    if !super::worker::can_publish_held() {
        return None;
    }
    let shm = std::ptr::NonNull::new(main.zone)?;
    // SAFETY: this worker's zone stays mapped while it runs.
    let zone = unsafe { Zone::at(shm) }?;
    // SAFETY: the load of this worker's configuration lives while the worker runs.
    let load = unsafe { main.load.as_ref() }?;
    let locked = zone.lock();
    let members: Vec<(usize, &'static PeerSlot)> = load
        .positions_of(table_index)
        .iter()
        .filter_map(|position| Some((position.index, position.slot()?)))
        .collect();
    // The load may have grown: this worker's in-flight counts cover every position it lists.
    super::worker::cover_positions(&locked, load.position_count());
    let epoch = zone.root().members_epoch.load(Ordering::Acquire);
    let built = build(&members, epoch);
    super::worker::publish_held_locked(table_index, &held());
    Some(built)
}
