//! FFI: the module's shared memory zone and the peer tables placed in it.
//!
//! The zone has a fixed name and size, so Nginx hands the same memory to the next configuration
//! on `nginx -s reload`. Each configuration load (an *epoch*) gets fresh tables, built in the
//! master before the new workers start; a table takes the runtime values of the previous epoch's
//! table of the same upstream, or of the state file on a fresh start. Old workers keep reading
//! their own epoch's tables while they finish, so a table is freed only `KEEP_EPOCHS` loads later.

use std::ffi::c_void;
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::atomic::Ordering;

use ngx::core::Status;
use ngx::ffi::{
    ngx_conf_t, ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t,
    ngx_http_upstream_srv_conf_t, ngx_int_t, ngx_log_t, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_shmtx_lock, ngx_shmtx_unlock, ngx_slab_calloc_locked, ngx_slab_free_locked,
    ngx_slab_pool_t, ngx_str_t, NGX_LOG_EMERG, NGX_LOG_NOTICE,
};
use ngx::http::HttpModuleServerConf;
use ngx::ngx_log_error;

use crate::ngx_module::{MainConf, Module, UpstreamConf};
use shift_core::state_file;
use shift_core::table::{
    CarriedPeer, CarryNote, CheckMode, PeerConfig, PeerSlot, Table, TableHeader,
};

/// Fixed, so that a reload reuses the zone (Nginx reuses a zone only at the same size).
pub const ZONE_SIZE: usize = 1024 * 1024;
const ZONE_NAME: &str = "nginx_shift";
/// Marks the zone's root; change it when the layout of the tables changes.
const ROOT_MAGIC: u64 = 0x7368_6966_745f_0001;
/// How many configuration loads a table outlives its own.
const KEEP_EPOCHS: u64 = 3;

#[repr(C)]
struct ZoneRoot {
    magic: u64,
    epoch: u64,
    /// Address of the newest table; tables link to older ones through `TableHeader::next`.
    tables: usize,
}

/// Registers the zone with the cycle being configured, once per configuration.
///
/// SAFETY: `cf` must be the configuration being parsed, and `main` this module's main conf in
/// it (it outlives the zone's init, which runs later in the same cycle).
pub unsafe fn add_zone(cf: *mut ngx_conf_t, main: &mut MainConf) -> Result<(), ()> {
    if !main.zone.is_null() {
        return Ok(());
    }
    let mut name = ngx_str_t {
        len: ZONE_NAME.len(),
        data: ZONE_NAME.as_ptr().cast_mut(),
    };
    // SAFETY: a valid cf; the tag is our module's static, as Nginx's own modules use theirs.
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            ZONE_SIZE,
            ptr::addr_of_mut!(crate::ngx_module::ngx_http_shift_module).cast(),
        )
    };
    if zone.is_null() {
        return Err(());
    }
    // SAFETY: ngx_shared_memory_add returned a valid zone of this cycle.
    unsafe {
        (*zone).init = Some(init_zone);
        (*zone).data = ptr::from_mut(main).cast();
    }
    main.zone = zone;
    Ok(())
}

/// The table of an upstream, once the zone was initialised.
pub fn table_of(conf: &UpstreamConf) -> Option<Table<'static>> {
    // SAFETY: `conf.table` is null or was set by `init_zone` to a header it wrote, followed by
    // `peer_count` initialised slots, in shared memory that stays mapped for the process's life
    // and is not freed while this configuration can still be in use (KEEP_EPOCHS).
    unsafe { (!conf.table.is_null()).then(|| table_at(conf.table)) }
}

/// The table whose header is at `header`.
///
/// SAFETY: `header` points to a header `place_table` wrote, followed by its initialised slots,
/// still allocated in the zone.
unsafe fn table_at(header: *mut TableHeader) -> Table<'static> {
    // SAFETY: per the contract; the slots start `slots_offset()` bytes after the header.
    unsafe {
        let slots = header.cast::<u8>().add(slots_offset()).cast::<PeerSlot>();
        Table::new(
            &*header,
            std::slice::from_raw_parts(slots, (*header).peer_count()),
        )
    }
}

const fn slots_offset() -> usize {
    size_of::<TableHeader>().next_multiple_of(align_of::<PeerSlot>())
}

extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, old_data: *mut c_void) -> ngx_int_t {
    // SAFETY: Nginx calls init with the zone `add_zone` registered (its `data` is our main
    // conf) after mapping it; `shm.addr` is the zone's slab pool. The master is the only process
    // that allocates in the zone, and it holds the pool's mutex while it does.
    unsafe {
        let zone = &mut *zone;
        let main = &mut *zone.data.cast::<MainConf>();
        let pool = zone.shm.addr.cast::<ngx_slab_pool_t>();
        let log = zone.shm.log;
        ngx_shmtx_lock(&mut (*pool).mutex);
        let result = build_tables(pool, old_data.is_null(), main, log);
        ngx_shmtx_unlock(&mut (*pool).mutex);
        match result {
            Ok(()) => Status::NGX_OK.0,
            Err(message) => {
                ngx_log_error!(NGX_LOG_EMERG, log, "shift: {}", message);
                Status::NGX_ERROR.0
            }
        }
    }
}

/// SAFETY: `pool` is the zone's slab pool, locked by the caller; `main`'s upstreams are this
/// cycle's, with round-robin peers already built.
unsafe fn build_tables(
    pool: *mut ngx_slab_pool_t,
    fresh: bool,
    main: &MainConf,
    log: *mut ngx_log_t,
) -> Result<(), String> {
    // SAFETY: per this function's contract.
    unsafe {
        let root = if fresh {
            let root = ngx_slab_calloc_locked(pool, size_of::<ZoneRoot>()).cast::<ZoneRoot>();
            if root.is_null() {
                return Err(zone_full());
            }
            root.write(ZoneRoot {
                magic: ROOT_MAGIC,
                epoch: 0,
                tables: 0,
            });
            (*pool).data = root.cast();
            root
        } else {
            (*pool).data.cast::<ZoneRoot>()
        };
        if root.is_null() || (*root).magic != ROOT_MAGIC {
            return Err(format!(
                "shared zone \"{ZONE_NAME}\" holds data of another module version; \
                 restart Nginx instead of reloading it"
            ));
        }
        let previous_epoch = (*root).epoch;
        let epoch = previous_epoch + 1;

        for &uscf in &main.upstreams {
            let conf = Module::server_conf_mut(&*uscf).ok_or("no shift conf for an upstream")?;
            let name = (*uscf).host.to_string();
            let (configs, rr_peers) = round_robin_peers(&*uscf);
            let checks = match &conf.check {
                None => CheckMode::Off,
                Some(check) if check.mandatory => CheckMode::Mandatory,
                Some(_) => CheckMode::On,
            };
            let header = place_table(pool, &name, epoch, checks, &configs)?;
            conf.table = header;
            conf.rr_peers = rr_peers;
            let table = table_of(conf).ok_or("table just placed is missing")?;

            let previous = find_table(root, &name, previous_epoch);
            let (carried, generation, source) = if let Some(previous) = previous {
                (
                    previous.carried(),
                    previous.generation(),
                    "the running configuration".to_string(),
                )
            } else if let Some(path) = &conf.state_path {
                match state_file::load(path)? {
                    Some(saved) => (
                        saved.carried(),
                        saved.generation,
                        format!("\"{}\"", path.display()),
                    ),
                    None => (Vec::<CarriedPeer>::new(), 0, String::new()),
                }
            } else {
                (Vec::new(), 0, String::new())
            };
            if !carried.is_empty() {
                let guard = table
                    .lock(std::process::id(), |_| true)
                    .map_err(|err| err.to_string())?;
                let notes = guard.carry_over(&carried, generation);
                drop(guard);
                log_carry_notes(log, &name, &source, &notes);
            }

            (*header).next.store((*root).tables, Ordering::Release);
            (*root).tables = header as usize;
        }
        (*root).epoch = epoch;
        free_old_tables(pool, root, epoch);
    }
    Ok(())
}

/// The round-robin peers of an upstream in table order (primary, then backup), with what the
/// config says about each.
///
/// SAFETY: round robin's init_upstream has run for `uscf`, so `peer.data` is its peer list.
unsafe fn round_robin_peers(
    uscf: &ngx_http_upstream_srv_conf_t,
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
                configs.push(PeerConfig {
                    server: (*peer).name.to_string(),
                    weight: (*peer).weight as u32,
                    down: (*peer).down != 0,
                    backup,
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

/// Allocates and initialises a table for `configs`.
///
/// SAFETY: `pool` is the zone's slab pool, locked by the caller.
unsafe fn place_table(
    pool: *mut ngx_slab_pool_t,
    name: &str,
    epoch: u64,
    checks: CheckMode,
    configs: &[PeerConfig],
) -> Result<*mut TableHeader, String> {
    let header_value =
        TableHeader::new(name, epoch, configs.len(), checks).map_err(|err| err.to_string())?;
    let slots: Vec<PeerSlot> = configs
        .iter()
        .map(PeerSlot::new)
        .collect::<Result<_, _>>()
        .map_err(|err| err.to_string())?;
    let size = slots_offset() + size_of::<PeerSlot>() * slots.len();
    // SAFETY: per this function's contract; slab allocations are aligned to at least 8 bytes,
    // enough for both types, and `size` covers the header and every slot.
    unsafe {
        let memory = ngx_slab_calloc_locked(pool, size).cast::<u8>();
        if memory.is_null() {
            return Err(zone_full());
        }
        let header = memory.cast::<TableHeader>();
        header.write(header_value);
        let first_slot = memory.add(slots_offset()).cast::<PeerSlot>();
        for (index, slot) in slots.into_iter().enumerate() {
            first_slot.add(index).write(slot);
        }
        Ok(header)
    }
}

/// SAFETY: `root` is the zone's valid root; the caller holds the pool's lock.
unsafe fn find_table(root: *mut ZoneRoot, name: &str, epoch: u64) -> Option<Table<'static>> {
    // SAFETY: every address in the list was written by `build_tables` and is still allocated.
    unsafe {
        let mut address = (*root).tables;
        while address != 0 {
            let header = address as *mut TableHeader;
            if (*header).epoch == epoch && (*header).name() == name {
                return Some(table_at(header));
            }
            address = (*header).next.load(Ordering::Acquire);
        }
    }
    None
}

/// SAFETY: as `find_table`, and no process still uses tables older than `KEEP_EPOCHS` loads.
unsafe fn free_old_tables(pool: *mut ngx_slab_pool_t, root: *mut ZoneRoot, epoch: u64) {
    // SAFETY: per this function's contract.
    unsafe {
        let mut link: *mut usize = &mut (*root).tables;
        while *link != 0 {
            let header = *link as *mut TableHeader;
            let next = (*header).next.load(Ordering::Acquire);
            if (*header).epoch + KEEP_EPOCHS <= epoch {
                *link = next;
                ngx_slab_free_locked(pool, header.cast());
            } else {
                link = (*header).next.as_ptr();
            }
        }
    }
}

fn log_carry_notes(log: *mut ngx_log_t, upstream: &str, source: &str, notes: &[CarryNote]) {
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

fn zone_full() -> String {
    format!("shared zone \"{ZONE_NAME}\" ({ZONE_SIZE} bytes) is full: too many shift peers")
}
