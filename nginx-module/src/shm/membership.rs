//! FFI: the zone's side of peers added and removed at run time.
//!
//! A new peer gets a slot in its table's list and a position in every live configuration load
//! that routes to the table (a load built by a reload not yet committed included), so that
//! every worker, of every generation, routes to it once it has built its peer list again. A
//! removed peer keeps its positions until no worker can start a request on it: every worker of
//! the load must route with a list built after the removal and have no request left on an
//! older one (`WorkerRecord::oldest_list_epoch`). The slot is freed when no position holds it.

use std::sync::atomic::Ordering;

use ngx::core::slab::LockedSlabPool;

use super::load::{place_slot, LoadRecord};
use super::reclaim::sweep;
use super::worker::WorkerRecord;
use super::zone::{slots_of, walk, Zone};
use shift_core::api::{Membership, PlaceError};
use shift_core::table::{Label, PeerConfig, PeerSlot, TableHeader};
use shift_wire::PeerOrigin;

/// What one `place` took, for `unplace`.
struct Placed {
    slot: &'static PeerSlot,
    positions: Vec<&'static std::sync::atomic::AtomicUsize>,
}

/// Adds and removes peers in the zone; lives while the API holds the zone's lock.
pub struct ZoneMembership<'a> {
    zone: Zone,
    locked: &'a LockedSlabPool,
    placed: Vec<Placed>,
}

impl<'a> ZoneMembership<'a> {
    pub fn new(zone: Zone, locked: &'a LockedSlabPool) -> ZoneMembership<'a> {
        ZoneMembership {
            zone,
            locked,
            placed: Vec::new(),
        }
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
        // Positions of peers removed earlier may be free by now.
        // SAFETY: the lock is held while `self` lives.
        unsafe { release_removed(self.zone, self.locked) };
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
                // SAFETY: as above.
                let slot = unsafe { place_slot(self.locked, table, &config) }
                    .map_err(PlaceError::ZoneFull)?;
                slot.set_origin(PeerOrigin::Api);
                slot
            }
        };
        let address = std::ptr::from_ref(slot) as usize;
        let mut placed = Placed {
            slot,
            positions: Vec::new(),
        };
        for load in self.loads() {
            let Some(range) = load.range_of(table) else {
                continue;
            };
            let positions = &load.positions()[range.first..range.first + range.len];
            if positions
                .iter()
                .any(|position| position.load(Ordering::Acquire) == address)
            {
                continue;
            }
            let Some(free) = positions
                .iter()
                .find(|position| position.load(Ordering::Acquire) == 0)
            else {
                self.placed.push(placed);
                self.unplace(slot);
                return Err(PlaceError::NoRoom {
                    upstream: table.name().to_string(),
                    limit: range.len,
                });
            };
            free.store(address, Ordering::Release);
            slot.refs.fetch_add(1, Ordering::Relaxed);
            placed.positions.push(free);
        }
        self.placed.push(placed);
        Ok(slot)
    }

    fn unplace(&mut self, slot: &'static PeerSlot) {
        let Some(index) = self
            .placed
            .iter()
            .position(|placed| std::ptr::eq(placed.slot, slot))
        else {
            return;
        };
        for position in self.placed.remove(index).positions {
            position.store(0, Ordering::Release);
            slot.refs.fetch_sub(1, Ordering::Relaxed);
        }
        // SAFETY: the lock is held; a slot no position holds and that is not current is used by
        // nobody.
        unsafe { sweep(self.zone, self.locked) };
    }

    fn next_epoch(&mut self) -> u64 {
        self.zone.root().next_members_epoch()
    }
}

/// Gives up the positions of peers removed at run time that no worker can route to any more,
/// and frees their slots when no position holds them.
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn release_removed(zone: Zone, locked: &LockedSlabPool) {
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
    for load in loads {
        let address = std::ptr::from_ref(load) as usize;
        let oldest = workers
            .iter()
            .filter(|worker| worker.load == address)
            .map(|worker| worker.oldest_list_epoch.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        for (position, slot) in load.positions().iter().zip(load.slots()) {
            let Some(slot) = slot else { continue };
            let removed = slot.removed_epoch();
            if slot.origin() == PeerOrigin::Api
                && !slot.is_current()
                && removed != 0
                && oldest >= removed
            {
                position.store(0, Ordering::Release);
                slot.refs.fetch_sub(1, Ordering::Relaxed);
                released = true;
            }
        }
    }
    if released {
        // SAFETY: per the contract.
        unsafe { sweep(zone, locked) };
    }
}

/// Calls `build` with the peers at positions `first..first + len` of this worker's load (each
/// with its position) and the zone's membership epoch, under the zone's lock; then, still under
/// it, says in the worker's record how old its oldest peer list is. A removal therefore either
/// comes before the read (and the new list leaves the peer out) or after the record says the
/// list exists (and the peer's slot waits for it).
pub fn with_load_positions<T>(
    main: &crate::conf::MainConf,
    first: usize,
    len: usize,
    build: impl FnOnce(&[(usize, &'static PeerSlot)], u64) -> T,
) -> Option<T> {
    let shm = std::ptr::NonNull::new(main.zone)?;
    // SAFETY: this worker's zone stays mapped while it runs.
    let zone = unsafe { Zone::at(shm) }?;
    // SAFETY: the load of this worker's configuration lives while the worker runs.
    let load = unsafe { main.load.as_ref() }?;
    let _locked = zone.lock();
    let members: Vec<(usize, &'static PeerSlot)> = load
        .slots()
        .into_iter()
        .enumerate()
        .skip(first)
        .take(len)
        .filter_map(|(position, slot)| Some((position, slot?)))
        .collect();
    let epoch = zone.root().members_epoch.load(Ordering::Acquire);
    let built = build(&members, epoch);
    super::worker::publish_oldest_list_epoch(crate::peer_list::oldest_epoch());
    Some(built)
}
