//! FFI: the admin API's view of the zone. Any worker of any live generation locks the zone and
//! reads the committed load's tables, so it sees exactly what was last committed and every
//! change acknowledged since. An upstream is found in that load's index by name, and only its
//! own slots and positions are read: a request about one upstream costs the same in a zone of
//! 10,000 peers as in one of ten. Bookkeeping that is not about the request (freeing exited
//! workers' records, releasing removed peers) is the workers' housekeeping (`reclaim.rs`).

use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use ngx::core::slab::LockedSlabPool;

use super::load::LoadRecord;
use super::worker::{new_binary_took_over, state_path, WorkerRecord};
use super::zone::{slots_of, walk, Zone};
use crate::conf::MainConf;
use shift_core::api::{UpstreamData, Upstreams};
use shift_core::inflight::{self, InFlight};
use shift_core::table::{PeerSlot, TableHeader};

/// The zone as the API sees it, under the zone's lock until dropped.
pub struct ApiView {
    zone: Zone,
    locked: LockedSlabPool,
    /// The committed load: its tables are the current ones.
    load: &'static LoadRecord,
    /// The records of workers that may still run (a pid the kernel no longer has is left out
    /// at once; the housekeeping frees its record within a second).
    workers: Vec<&'static WorkerRecord>,
}

/// Why this worker does not serve the API.
pub enum NotServing {
    /// A newer binary or a resized zone took over; the newer workers serve it.
    Superseded(&'static str),
    /// The zone cannot be read (no `shift` upstream, or no configuration committed in it).
    NoZone,
}

/// Locks the zone for the API.
pub fn api_view(main: &MainConf) -> Result<ApiView, NotServing> {
    let shm = NonNull::new(main.zone).ok_or(NotServing::NoZone)?;
    // SAFETY: this worker's zone stays mapped while it runs.
    let zone = unsafe { Zone::at(shm) }.ok_or(NotServing::NoZone)?;
    // One failed open(2) while no upgrade runs, and before the lock (the state file's save asks
    // again, under its directory's lock, before a change is acknowledged).
    if new_binary_took_over() {
        return Err(NotServing::Superseded("a new Nginx binary took over"));
    }
    let locked = zone.lock();
    let root = zone.root();
    if root.superseded.load(Ordering::Acquire) != 0 {
        return Err(NotServing::Superseded(
            "a reload replaced the shared zone with one of another size",
        ));
    }
    // SAFETY: the committed load is never freed while it is current, and the lock is held.
    let load =
        unsafe { (root.current_load_record.load(Ordering::Acquire) as *const LoadRecord).as_ref() }
            .ok_or(NotServing::NoZone)?;
    // SAFETY: the lock keeps every record in the list allocated.
    let workers = unsafe {
        walk(
            root.workers.load(Ordering::Acquire),
            |worker: &WorkerRecord| &worker.next,
        )
    }
    .filter(|worker| worker.process.may_be_running())
    .collect();
    Ok(ApiView {
        zone,
        locked,
        load,
        workers,
    })
}

impl ApiView {
    /// The zone's side of adding and removing peers, under this view's lock.
    pub fn membership(&self) -> super::membership::ZoneMembership<'_> {
        super::membership::ZoneMembership::new(self.zone, &self.locked)
    }

    /// How full the zone is.
    pub fn usage(&self) -> shift_core::metrics::ZoneUsage {
        self.zone.usage()
    }

    /// One current upstream: its current slots in the committed order, and each one's
    /// requests in flight, summed over the workers whose load routes to the table.
    fn data(&self, header: &'static TableHeader) -> UpstreamData<'static> {
        // SAFETY: the view holds the zone's lock, which keeps the table's slots allocated.
        let mut peers: Vec<&'static PeerSlot> = unsafe { slots_of(header) }
            .filter(|slot| slot.is_current())
            .collect();
        peers.iter().for_each(|slot| slot.verify());
        peers.sort_by_key(|slot| slot.order());
        let positions: Vec<(Vec<(usize, &PeerSlot)>, InFlight)> = self
            .workers
            .iter()
            .filter_map(|worker| {
                let load = worker.load();
                let table_index = load.index_of(header)?;
                let held: Vec<(usize, &PeerSlot)> = load
                    .positions_of(table_index)
                    .iter()
                    .filter_map(|position| Some((position.index, position.slot()?)))
                    .collect();
                Some((held, InFlight::new(worker.counts())))
            })
            .collect();
        let active = inflight::active(
            &peers,
            positions
                .iter()
                .map(|(held, counts)| (held.as_slice(), *counts)),
        );
        UpstreamData {
            header,
            peers,
            active,
            // SAFETY: the lock is held.
            state_path: unsafe { state_path(header) },
            // SAFETY: the zone's lock is held for as long as the view lives.
            history: unsafe { super::history::ring_of(header) },
        }
    }
}

impl Upstreams for ApiView {
    fn count(&self) -> usize {
        self.load.table_count()
    }

    fn find(&self, name: &str) -> Option<UpstreamData<'_>> {
        let index = self.load.find(name)?;
        Some(self.data(self.load.tables()[index]))
    }

    fn at(&self, rank: usize) -> Option<UpstreamData<'_>> {
        let (_, header) = self.load.table_by_rank(rank)?;
        Some(self.data(header))
    }

    fn name_at(&self, rank: usize) -> Option<&str> {
        let (_, header) = self.load.table_by_rank(rank)?;
        Some(header.name())
    }
}
