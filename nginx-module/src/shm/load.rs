//! FFI: configuration loads. At the zone's init (inside `ngx_init_cycle`, before the reload can
//! still fail) a load is *built* (here; `commit.rs` commits it): every upstream and peer of the configuration gets its table
//! header and slot, found by name and address or placed new, and the worker confs point at
//! them, but nothing anyone reads changes. When Nginx commits the configuration (`init_module`,
//! called only once nothing can fail any more) the load is *committed*: config-driven changes
//! apply, new tables take a state file or a replaced zone's state, and what is not in the
//! configuration stops being listed. Loads that were never committed, and older loads whose
//! processes have all exited, are freed, with the slots and headers only they used
//! (`shift_core::lifecycle`).

use std::ffi::c_void;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use ngx::core::slab::LockedSlabPool;
use ngx::core::CoreModuleMainConf;
use ngx::core::{SlabPool, Status};
use ngx::ffi::{
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_http_upstream_srv_conf_t,
    ngx_int_t, ngx_log_t, ngx_shm_zone_t, NGX_LOG_EMERG, NGX_LOG_WARN,
};
use ngx::http::HttpModuleServerConf;
use ngx::ngx_log_error;

use super::reclaim::{reclaim, sweep};
use super::zone::{allocate, allocate_zeroed, foreign_root, push_front, slots_of, Zone};
use crate::conf::{MainConf, UpstreamConf};
use crate::ngx_module::Module;
use shift_core::directives::{label_for, LabelLine, DEFAULT_HISTORY};
use shift_core::reclaim::PositionKind;
use shift_core::state_file;
use shift_core::table::{CheckMode, PeerConfig, PeerSlot, TableHeader};
use shift_wire::PeerOrigin;

/// One configuration load, followed in the same allocation by its *positions* (each upstream's
/// range of slot addresses: its config peers in round-robin order, its run-time peers, then
/// room for more, 0 where empty), the addresses of its table headers, each table's range of
/// positions, and the tables' indexes sorted by name (the API finds an upstream by binary
/// search there, without walking the zone). Workers count in-flight requests by position, so a position's slot changes only
/// once no worker can route to it (see `membership.rs`). It may grow by blocks of run-time
/// positions (`positions.rs`).
#[repr(C)]
pub struct LoadRecord {
    pub next: AtomicUsize,
    pub id: u64,
    pub committed: AtomicBool,
    slot_count: usize,
    table_count: usize,
    /// The blocks it grew by (`positions::PositionBlock`), and its positions with theirs.
    pub(super) blocks: AtomicUsize,
    pub(super) position_count: AtomicUsize,
}

/// The positions of one upstream in a load: `configs` positions of its `server` lines (kept
/// for the load's life), then its run-time peers and room for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Range {
    pub first: usize,
    pub configs: usize,
    pub len: usize,
}

impl Range {
    /// What kind of position `position` (an index into the load's positions) is.
    pub fn kind_of(&self, position: usize) -> PositionKind {
        if position < self.first + self.configs {
            PositionKind::Config
        } else {
            PositionKind::Runtime
        }
    }

    pub fn positions(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.len
    }
}

impl LoadRecord {
    fn size(slots: usize, tables: usize) -> usize {
        size_of::<LoadRecord>().next_multiple_of(align_of::<usize>())
            + size_of::<usize>() * (slots + tables)
            + size_of::<Range>() * tables
            + size_of::<u32>() * tables
    }

    fn addresses(&self) -> *mut usize {
        let start = std::ptr::from_ref(self).cast::<u8>();
        // SAFETY: the record was allocated with `size`, so its addresses follow it.
        unsafe {
            start
                .add(size_of::<LoadRecord>().next_multiple_of(align_of::<usize>()))
                .cast::<usize>()
                .cast_mut()
        }
    }

    /// The positions it was built with (its blocks' follow them): slot addresses, 0 where
    /// empty. Written under the zone's lock.
    pub(super) fn base_positions(&self) -> &[AtomicUsize] {
        // SAFETY: the record was allocated with `size` and zeroed; an `AtomicUsize` has the
        // layout of a `usize`.
        unsafe {
            std::slice::from_raw_parts(self.addresses().cast::<AtomicUsize>(), self.slot_count)
        }
    }

    pub fn tables(&self) -> &[&'static TableHeader] {
        // SAFETY: as `positions`, for the headers after them, written by `place_load`.
        unsafe {
            std::slice::from_raw_parts(
                self.addresses().add(self.slot_count).cast::<&TableHeader>(),
                self.table_count,
            )
        }
    }

    /// Each table's positions, in the order of `tables`.
    pub fn ranges(&self) -> &[Range] {
        // SAFETY: as `tables`, for the ranges after them.
        unsafe {
            std::slice::from_raw_parts(
                self.addresses()
                    .add(self.slot_count + self.table_count)
                    .cast::<Range>(),
                self.table_count,
            )
        }
    }

    pub fn table_count(&self) -> usize {
        self.table_count
    }

    /// The tables' indexes in the order of their names.
    pub fn by_name(&self) -> &[u32] {
        // SAFETY: as `tables`, for the sorted indexes after the ranges, written by `place_load`.
        unsafe {
            std::slice::from_raw_parts(
                self.addresses()
                    .add(self.slot_count + self.table_count)
                    .cast::<Range>()
                    .add(self.table_count)
                    .cast::<u32>(),
                self.table_count,
            )
        }
    }

    /// The table at `rank` in name order, with its index in `tables`.
    pub fn table_by_rank(&self, rank: usize) -> Option<(usize, &'static TableHeader)> {
        let index = *self.by_name().get(rank)? as usize;
        Some((index, self.tables()[index]))
    }

    /// The index in `tables` of the table named `name`: a binary search by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        let tables = self.tables();
        let by_name = self.by_name();
        by_name
            .binary_search_by(|&index| tables[index as usize].name().cmp(name))
            .ok()
            .map(|rank| by_name[rank] as usize)
    }
}

/// The zone of the last committed configuration, in the master: when a reload changes the
/// zone's size, Nginx gives the new configuration a new zone, and this one hands its state over.
pub(super) static COMMITTED_ZONE: AtomicPtr<ngx_shm_zone_t> = AtomicPtr::new(std::ptr::null_mut());

/// The zone's `init`: builds this configuration's load.
pub extern "C" fn init_zone(shm: *mut ngx_shm_zone_t, old_data: *mut c_void) -> ngx_int_t {
    let Some(shm) = NonNull::new(shm) else {
        return Status::NGX_ERROR.0;
    };
    // SAFETY: Nginx calls init with the zone `add_zone` registered (its `data` is our main
    // conf, alive for this cycle) after mapping it and initialising its slab pool. Only
    // processes of our module use the zone, and they take its lock.
    unsafe {
        let main = &mut *shm.as_ref().data.cast::<MainConf>();
        let log = shm.as_ref().shm.log;
        let fresh = old_data.is_null();
        let result = if fresh {
            // A new zone: no other process has it yet.
            let locked = SlabPool::from_shm_zone(shm.as_ref())
                .expect("a mapped zone")
                .lock();
            Zone::create(shm, &locked).and_then(|zone| build_view(zone, &locked, main, log))
        } else {
            Zone::at(shm)
                .ok_or_else(foreign_root)
                .and_then(|zone| build_view(zone, &zone.lock(), main, log))
        };
        match result {
            Ok(()) => Status::NGX_OK.0,
            Err(message) => {
                ngx_log_error!(NGX_LOG_EMERG, log, "shift: {}", message);
                Status::NGX_ERROR.0
            }
        }
    }
}

/// Builds the load of the configuration `main`: finds or places each upstream's header and each
/// peer's slot, records them in a new uncommitted load, and points the worker confs at them.
/// On failure (the zone is full) everything placed for it is freed again.
///
/// SAFETY: the caller holds the zone's lock; `main`'s upstreams are this cycle's, with their
/// round-robin peers built.
pub unsafe fn build_view(
    zone: Zone,
    locked: &LockedSlabPool,
    main: &mut MainConf,
    log: *mut ngx_log_t,
) -> Result<(), String> {
    // SAFETY: per the contract.
    unsafe {
        check_state_directories(main)?;
        reclaim(zone, locked);
        let root = &mut *zone.root;
        let id = root.next_load_id;
        root.next_load_id += 1;
        let result = place_views(zone, locked, main, id, log);
        if result.is_err() {
            sweep(zone, locked);
        }
        result
    }
}

/// Room for peers added at run time in each load, beyond the ones it starts with (it grows
/// when that is not enough, by at least as many: `positions.rs`): as many as
/// the config has, and at least this many.
pub(super) const MIN_SPARE_POSITIONS: usize = 32;

/// SAFETY: as `build_view`.
unsafe fn place_views(
    zone: Zone,
    locked: &LockedSlabPool,
    main: &mut MainConf,
    id: u64,
    log: *mut ngx_log_t,
) -> Result<(), String> {
    let mut positions: Vec<Option<&'static PeerSlot>> = Vec::new();
    let mut tables: Vec<(&'static TableHeader, Range)> = Vec::new();
    for &uscf in &main.upstreams {
        // SAFETY: per the contract; the upstream confs live as long as this cycle.
        let uscf = unsafe { &*uscf };
        let conf = Module::server_conf_mut(uscf).ok_or("no shift conf for an upstream")?;
        let name = uscf.host.to_string();
        // SAFETY: round robin built this upstream's peers.
        let (configs, rr_peers) = unsafe { round_robin_peers(uscf, &conf.labels) };
        // SAFETY: the caller holds the zone's lock (for this and what follows).
        let found = unsafe { zone.tables() }.find(|header| header.name() == name);
        let (header, created) = match found {
            Some(header) => (header, false),
            // SAFETY: as above.
            None => (
                unsafe { place_table(zone, locked, &name, check_mode(conf))? },
                true,
            ),
        };
        let history = conf.history.unwrap_or(DEFAULT_HISTORY);
        // SAFETY: as above. The history is no reason to refuse a configuration: without room
        // for it (a `shift_zone` sized before there was one), or with a writer holding the
        // table, the upstream keeps the ring it had until a configuration can size it.
        if let Err(why) = unsafe { super::history::place(locked, header, history) } {
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "shift: upstream \"{}\" keeps {} changes in its history, not {}: {}",
                name,
                // SAFETY: as above.
                unsafe { super::history::ring_of(header) }.map_or(0, |ring| ring.capacity()),
                history,
                why
            );
        }
        let epoch = zone.root().members_epoch.load(Ordering::Acquire);
        let mut view = Vec::with_capacity(configs.len());
        for config in &configs {
            // SAFETY: as above.
            let slot = match unsafe { slots_of(header) }.find(|slot| slot.server() == config.server)
            {
                Some(slot) => slot,
                // SAFETY: as above.
                None => unsafe { place_slot(locked, header, config, epoch)? },
            };
            view.push(slot);
        }
        // Peers added at run time come along: the table's current ones, or, for a table new
        // in this zone, the ones the replaced zone or the state file had.
        let runtime: Vec<&'static PeerSlot> = if created {
            let mut placed = Vec::new();
            for config in runtime_peers_before(zone, &name, conf) {
                if view.iter().any(|slot| slot.server() == config.server) {
                    continue; // now a line of the config, which owns it
                }
                // SAFETY: as above.
                placed.push(unsafe { place_slot(locked, header, &config, epoch)? });
            }
            placed
        } else {
            // SAFETY: as above.
            unsafe { slots_of(header) }
                .filter(|slot| slot.is_current() && slot.origin() != PeerOrigin::Config)
                .filter(|slot| !view.iter().any(|own| std::ptr::eq(*own, *slot)))
                .collect()
        };
        let spare = configs.len().max(MIN_SPARE_POSITIONS);
        let range = Range {
            first: positions.len(),
            configs: view.len(),
            len: view.len() + runtime.len() + spare,
        };
        positions.extend(view.iter().map(|slot| Some(*slot)));
        positions.extend(runtime.iter().map(|slot| Some(*slot)));
        positions.extend(std::iter::repeat_n(None, spare));
        conf.placement.table = std::ptr::from_ref(header).cast_mut();
        conf.placement.table_index = tables.len();
        conf.placement.new_table = created;
        conf.placement.first_slot = range.first;
        conf.placement.configs = configs;
        conf.placement.rr_peers = rr_peers;
        conf.placement.slots = view;
        conf.placement.runtime = if created { runtime } else { Vec::new() };
        tables.push((header, range));
    }
    // SAFETY: as above; every slot and header was just found or placed.
    main.load = unsafe { place_load(zone, locked, id, &positions, &tables)? };
    Ok(())
}

/// The peers a table new in this zone had added at run time before: in the zone this one
/// replaces (a reload that resized it), else in the upstream's state file (a start, or a binary
/// upgrade). The file is read here once, under its directory's lock, and kept for the commit
/// (`conf.placement.saved_state`): an old binary's worker saves under the same lock, and stops
/// acknowledging changes once the new binary runs, so no change falls between two reads.
fn runtime_peers_before(zone: Zone, name: &str, conf: &mut UpstreamConf) -> Vec<PeerConfig> {
    // Each configuration registers its own zone struct; the memory tells whether the zone was
    // replaced (and this one, locked by the caller, must not be locked again).
    let previous = NonNull::new(COMMITTED_ZONE.load(Ordering::Acquire))
        // SAFETY: the committed zone stays mapped in the master until this cycle is committed.
        .and_then(|previous| unsafe { Zone::at(previous) })
        .filter(|previous| previous.root != zone.root);
    if let Some(previous) = previous {
        let _locked = previous.lock();
        // SAFETY: the previous zone is locked.
        let old = unsafe { previous.tables() }.find(|header| header.name() == name);
        if let Some(old) = old {
            // SAFETY: as above.
            return unsafe { slots_of(old) }
                .filter(|slot| slot.is_current() && slot.origin() == PeerOrigin::Api)
                .map(|slot| slot.config())
                .collect();
        }
    }
    let Some(path) = conf.state_path.clone() else {
        return Vec::new();
    };
    let _dir_lock = state_file::lock_dir(&path);
    // A file that fails its checks is reported, and set aside, when the configuration is
    // committed.
    let read = state_file::load(&path, name).map_err(|err| err.to_string());
    let runtime = match &read {
        Ok(Some(saved)) => saved
            .carried()
            .into_iter()
            .filter(|peer| peer.origin == PeerOrigin::Api)
            .map(|peer| peer.config)
            .collect(),
        _ => Vec::new(),
    };
    conf.placement.saved_state = read.transpose();
    runtime
}

/// Says before any change is made when a state file's directory is missing (an error: every
/// change would fail) or looks closed to the worker user (a warning).
///
/// SAFETY: `main.cycle` is the cycle being initialised, whose core conf is complete.
unsafe fn check_state_directories(main: &MainConf) -> Result<(), String> {
    // SAFETY: per the contract.
    let (core, log) = unsafe {
        let cycle = &*main.cycle;
        (ngx::core::NgxCoreModule::main_conf(cycle), cycle.log)
    };
    // Without `user` (and not run as root) the workers run as whoever runs Nginx.
    let uid = core
        .map(|core| core.user)
        .filter(|&uid| uid != u32::MAX)
        .unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    let gid = core
        .map(|core| core.group)
        .filter(|&gid| gid != u32::MAX)
        .unwrap_or_else(|| nix::unistd::getegid().as_raw());
    for &uscf in &main.upstreams {
        // SAFETY: the upstream confs live as long as this cycle.
        let conf = unsafe { Module::server_conf(&*uscf) };
        let Some(path) = conf.and_then(|conf| conf.state_path.as_deref()) else {
            continue;
        };
        if let Some(warning) = state_file::check_directory(path, uid, gid)? {
            ngx_log_error!(NGX_LOG_WARN, log, "shift: {}", warning);
        }
    }
    Ok(())
}

pub(super) fn check_mode(conf: &UpstreamConf) -> CheckMode {
    match &conf.check {
        None => CheckMode::Off,
        Some(check) if check.mandatory => CheckMode::Mandatory,
        Some(_) => CheckMode::On,
    }
}

/// SAFETY: the caller holds the zone's lock.
unsafe fn place_table(
    zone: Zone,
    locked: &LockedSlabPool,
    name: &str,
    checks: CheckMode,
) -> Result<&'static TableHeader, String> {
    let header = allocate(
        locked,
        TableHeader::new(name, checks).map_err(|err| err.to_string())?,
    )?;
    // SAFETY: just placed; linked under the caller's lock.
    unsafe {
        push_front(&(*zone.root).tables, &(*header).next, header as usize);
        Ok(&*header)
    }
}

/// Places a new slot for `config` in `header`'s list, placed at membership `epoch` (the zone's
/// current one: no worker's list is older than it can hold the slot).
///
/// SAFETY: the caller holds the zone's lock.
pub(super) unsafe fn place_slot(
    locked: &LockedSlabPool,
    header: &TableHeader,
    config: &PeerConfig,
    epoch: u64,
) -> Result<&'static PeerSlot, String> {
    let new = PeerSlot::new(config).map_err(|err| err.to_string())?;
    new.mark_placed(epoch);
    let slot = allocate(locked, new)?;
    // SAFETY: just placed; linked under the caller's lock.
    unsafe {
        push_front(&header.peers, &(*slot).next, slot as usize);
        Ok(&*slot)
    }
}

/// SAFETY: the caller holds the zone's lock; the slots and headers are live.
unsafe fn place_load(
    zone: Zone,
    locked: &LockedSlabPool,
    id: u64,
    positions: &[Option<&'static PeerSlot>],
    tables: &[(&'static TableHeader, Range)],
) -> Result<*mut LoadRecord, String> {
    let record = allocate_zeroed::<u8>(locked, LoadRecord::size(positions.len(), tables.len()))?
        .cast::<LoadRecord>();
    // SAFETY: zeroed memory of the record's full size, aligned for it by the slab allocator.
    unsafe {
        record.write(LoadRecord {
            next: AtomicUsize::new(0),
            id,
            committed: AtomicBool::new(false),
            slot_count: positions.len(),
            table_count: tables.len(),
            blocks: AtomicUsize::new(0),
            position_count: AtomicUsize::new(positions.len()),
        });
        let addresses = (*record).addresses();
        for (index, slot) in positions.iter().enumerate() {
            if let Some(slot) = slot {
                addresses
                    .add(index)
                    .write(std::ptr::from_ref(*slot) as usize);
                slot.refs.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (index, (header, range)) in tables.iter().enumerate() {
            addresses
                .add(positions.len() + index)
                .write(std::ptr::from_ref(*header) as usize);
            header.refs.fetch_add(1, Ordering::Relaxed);
            addresses
                .add(positions.len() + tables.len())
                .cast::<Range>()
                .add(index)
                .write(*range);
        }
        let mut by_name: Vec<u32> = (0..tables.len() as u32).collect();
        by_name.sort_by(|&a, &b| tables[a as usize].0.name().cmp(tables[b as usize].0.name()));
        let sorted = addresses
            .add(positions.len() + tables.len())
            .cast::<Range>()
            .add(tables.len())
            .cast::<u32>();
        for (rank, index) in by_name.into_iter().enumerate() {
            sorted.add(rank).write(index);
        }
        push_front(&(*zone.root).loads, &(*record).next, record as usize);
    }
    Ok(record)
}

/// The round-robin peers of an upstream in table order (primary, then backup), with what the
/// config says about each (`labels`: its `shift_label` lines).
///
/// SAFETY: round robin's init_upstream has run for `uscf`, so `peer.data` is its peer list.
unsafe fn round_robin_peers(
    uscf: &ngx_http_upstream_srv_conf_t,
    labels: &[LabelLine],
) -> (Vec<PeerConfig>, Vec<*mut ngx_http_upstream_rr_peer_t>) {
    let mut configs = Vec::new();
    let mut pointers = Vec::new();
    // SAFETY: per this function's contract; the lists are null-terminated.
    unsafe {
        let mut list = uscf.peer.data.cast::<ngx_http_upstream_rr_peers_t>();
        let mut backup = false;
        while !list.is_null() {
            let mut peer = (*list).peer;
            while !peer.is_null() {
                // The placeholder of an upstream whose peers all come from names (see
                // `resolver::take_names`) has no name: it is no peer of the table.
                if (*peer).name.len == 0 {
                    peer = (*peer).next;
                    continue;
                }
                let server = (*peer).name.to_string();
                let label = label_for(labels, &(*peer).server.to_string(), &server);
                configs.push(PeerConfig {
                    server,
                    weight: (*peer).weight as u32,
                    down: (*peer).down != 0,
                    backup,
                    label,
                });
                pointers.push(peer);
                peer = (*peer).next;
            }
            list = (*list).next;
            backup = true;
        }
    }
    (configs, pointers)
}

/// How many round-robin peers the upstreams have, for sizing the zone.
///
/// SAFETY: as `round_robin_peers`, for each of `upstreams`.
pub unsafe fn peer_count(upstreams: &[*mut ngx_http_upstream_srv_conf_t]) -> usize {
    upstreams
        .iter()
        // SAFETY: per the contract.
        .map(|&uscf| unsafe { round_robin_peers(&*uscf, &[]) }.0.len())
        .sum()
}
