//! FFI: the zone itself: registration with Nginx, its root, its lock, allocation in it, and
//! walking the lists it keeps.

use std::alloc::Layout;
use std::mem::size_of;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use ngx::allocator::Allocator;
use ngx::core::slab::LockedSlabPool;
use ngx::core::SlabPool;
use ngx::ffi::{
    ngx_conf_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_shmtx_force_unlock, ngx_slab_pool_t,
    ngx_str_t,
};

use crate::conf::{MainConf, UpstreamConf};
use shift_core::process::process_alive;
use shift_core::table::{PeerSlot, Table, TableHeader, FREED_BYTE};

pub const ZONE_NAME: &str = "nginx_shift";
/// Marks the zone's root; change it when the layout of anything in the zone changes.
const ROOT_MAGIC: u64 = 0x7368_6966_745f_000b;

/// The zone's root, at the slab pool's `data`.
#[repr(C)]
pub struct ZoneRoot {
    magic: u64,
    /// Address of the newest table header; headers link through `TableHeader::next`.
    pub tables: AtomicUsize,
    /// Address of the newest load record (`load::LoadRecord`).
    pub loads: AtomicUsize,
    /// Address of the newest worker record (`worker::WorkerRecord`).
    pub workers: AtomicUsize,
    pub next_load_id: u64,
    /// The last committed load.
    pub current_load: u64,
    /// Its record's address (`load::LoadRecord`): its tables are the current ones, and its
    /// index by name is where the API finds an upstream.
    pub current_load_record: AtomicUsize,
    /// Set when a reload replaced this zone by one of another size: its workers then refuse API
    /// requests, which the new zone's workers answer.
    pub superseded: AtomicU32,
    /// Grows by one at every change of any table's current peers at run time (see
    /// `shift_core::table::membership`); workers stamp the peer lists they build with it.
    pub members_epoch: AtomicU64,
    /// The membership epoch at which a pass of `membership::release_removed` last found no
    /// removed peer left holding a position: until the epoch moves, the workers' housekeeping
    /// has nothing to release and skips the pass.
    pub released_at_epoch: AtomicU64,
    /// When a worker last did the zone's housekeeping (`reclaim::housekeeping`), in
    /// milliseconds of the system's monotonic clock: one worker does it each second, not each.
    pub housekeeping_ms: AtomicU64,
}

/// Registers the zone with the cycle being configured, once per configuration; its size is set
/// once the whole configuration is known (`set_zone_size`).
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
    // The size is a placeholder until `set_zone_size`.
    let zone = unsafe {
        ngx_shared_memory_add(
            cf,
            &mut name,
            shift_core::lifecycle::ZONE_MIN_BYTES,
            ptr::addr_of_mut!(crate::ngx_module::ngx_http_shift_module).cast(),
        )
    };
    if zone.is_null() {
        return Err(());
    }
    // SAFETY: ngx_shared_memory_add returned a valid zone of this cycle.
    unsafe {
        (*zone).init = Some(crate::shm::load::init_zone);
        (*zone).data = ptr::from_mut(main).cast();
    }
    main.zone = zone;
    Ok(())
}

/// Sets the zone's size; Nginx allocates it after the configuration is parsed.
pub fn set_zone_size(main: &MainConf, size: usize) {
    // SAFETY: `main.zone` was registered by `add_zone` in this configuration and is not
    // allocated before the configuration is parsed.
    unsafe { (*main.zone).shm.size = size };
}

/// The zone (as Nginx registered it with a cycle) and its root.
#[derive(Clone, Copy)]
pub struct Zone {
    shm: NonNull<ngx_shm_zone_t>,
    pub root: *mut ZoneRoot,
}

impl Zone {
    /// A new zone's root.
    ///
    /// SAFETY: `zone` is a new, mapped zone whose slab pool Nginx has initialised, locked by the
    /// caller.
    pub unsafe fn create(
        zone: NonNull<ngx_shm_zone_t>,
        locked: &LockedSlabPool,
    ) -> Result<Zone, String> {
        // SAFETY: per the contract.
        unsafe {
            let pool = zone.as_ref().shm.addr.cast::<ngx_slab_pool_t>();
            let root = allocate(
                locked,
                ZoneRoot {
                    magic: ROOT_MAGIC,
                    tables: AtomicUsize::new(0),
                    loads: AtomicUsize::new(0),
                    workers: AtomicUsize::new(0),
                    next_load_id: 1,
                    current_load: 0,
                    current_load_record: AtomicUsize::new(0),
                    superseded: AtomicU32::new(0),
                    members_epoch: AtomicU64::new(1),
                    released_at_epoch: AtomicU64::new(0),
                    housekeeping_ms: AtomicU64::new(0),
                },
            )?;
            (*pool).data = root.cast();
            // No "ngx_slab_alloc() failed" from Nginx when the zone is full: what allocates says
            // so in its own words, and the API's threads (`api_thread`) must not log.
            (*pool).set_log_nomem(0);
            Zone::at(zone).ok_or_else(foreign_root)
        }
    }

    /// The zone `shm`, if it is mapped and its root is ours.
    ///
    /// SAFETY: `shm` is a zone of a live cycle whose memory, if mapped, holds an initialised
    /// slab pool.
    pub unsafe fn at(shm: NonNull<ngx_shm_zone_t>) -> Option<Zone> {
        // SAFETY: per the contract.
        let pool = unsafe { shm.as_ref() }.shm.addr.cast::<ngx_slab_pool_t>();
        let pool = NonNull::new(pool)?;
        // SAFETY: per the contract.
        let root = unsafe { (*pool.as_ptr()).data.cast::<ZoneRoot>() };
        // SAFETY: a non-null `data` of our zone is the root written by `open`.
        let ours = !root.is_null() && unsafe { (*root).magic } == ROOT_MAGIC;
        ours.then_some(Zone { shm, root })
    }

    fn pool(&self) -> *mut ngx_slab_pool_t {
        // SAFETY: `at` checked that the zone is mapped.
        unsafe { self.shm.as_ref() }.shm.addr.cast()
    }

    /// How full the zone is. Call with the lock held.
    pub fn usage(&self) -> shift_core::metrics::ZoneUsage {
        // SAFETY: the zone is mapped (`at`); `pfree` and the size change only under its lock.
        unsafe {
            let size = self.shm.as_ref().shm.size;
            let free_pages = (*self.pool()).pfree;
            shift_core::metrics::ZoneUsage {
                size_bytes: size as u64,
                free_bytes: (free_pages * ngx::ffi::ngx_pagesize) as u64,
            }
        }
    }

    pub fn root(&self) -> &ZoneRoot {
        // SAFETY: `at` checked the root; it is never freed while the zone is mapped.
        unsafe { &*self.root }
    }

    /// Locks the zone. A lock left by a process that died holding it is taken over first: the
    /// master would free it when it reaps that process, but the master may be the one waiting.
    pub fn lock(&self) -> LockedSlabPool {
        // SAFETY: the pool is mapped for the life of this process (or, in the master, of this
        // configuration), and its mutex was created by Nginx's slab init.
        unsafe {
            let mutex = ptr::addr_of_mut!((*self.pool()).mutex);
            let holder = *(*mutex).lock as u32;
            if holder != 0 && !process_alive(holder) {
                ngx_shmtx_force_unlock(mutex, holder as _);
            }
            SlabPool::from_shm_zone(self.shm.as_ref())
                .expect("a mapped zone")
                .lock()
        }
    }

    /// The table headers, newest first.
    ///
    /// SAFETY: the caller holds the zone's lock, which keeps every header in the list allocated.
    pub unsafe fn tables(&self) -> impl Iterator<Item = &'static TableHeader> {
        // SAFETY: per the contract; every address in the list is a header `load` wrote.
        unsafe {
            walk(
                (*self.root).tables.load(Ordering::Acquire),
                |header: &TableHeader| &header.next,
            )
        }
    }
}

impl ZoneRoot {
    /// A new membership epoch. Call with the zone's lock held.
    pub fn next_members_epoch(&self) -> u64 {
        self.members_epoch.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The slots of one table, newest first.
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn slots_of(header: &TableHeader) -> impl Iterator<Item = &'static PeerSlot> {
    // SAFETY: per the contract; every address in the list is a slot `load` wrote.
    unsafe {
        walk(header.peers.load(Ordering::Acquire), |slot: &PeerSlot| {
            &slot.next
        })
    }
}

/// Follows a list of `T` linked through `next`.
///
/// SAFETY: `first` and every link are 0 or the address of a live `T` that stays allocated while
/// the iterator runs.
pub unsafe fn walk<T: 'static>(
    first: usize,
    next: fn(&T) -> &AtomicUsize,
) -> impl Iterator<Item = &'static T> {
    let mut address = first;
    std::iter::from_fn(move || {
        // SAFETY: per the contract.
        let item = unsafe { (address as *const T).as_ref()? };
        address = next(item).load(Ordering::Acquire);
        Some(item)
    })
}

/// Removes the items for which `remove` says so from a list linked through `next`, and frees
/// them.
///
/// SAFETY: as `walk`, `head` is the list's head link, the caller holds the zone's lock, and no
/// process can still use a removed item.
pub unsafe fn unlink_where<T>(
    locked: &LockedSlabPool,
    head: &AtomicUsize,
    next: fn(&T) -> &AtomicUsize,
    mut remove: impl FnMut(&T) -> bool,
) {
    let mut link = head;
    loop {
        let address = link.load(Ordering::Acquire);
        // SAFETY: per the contract.
        let Some(item) = (unsafe { (address as *const T).as_ref() }) else {
            return;
        };
        if remove(item) {
            link.store(next(item).load(Ordering::Acquire), Ordering::Release);
            // SAFETY: unlinked, and per the contract nobody uses it.
            unsafe { free(locked, address as *mut T) };
        } else {
            link = next(item);
        }
    }
}

/// Puts the item at `address` at the head of the list whose head link is `head`.
///
/// SAFETY: the caller holds the zone's lock; `next` is the item's own link.
pub fn push_front(head: &AtomicUsize, next: &AtomicUsize, address: usize) {
    next.store(head.load(Ordering::Acquire), Ordering::Release);
    head.store(address, Ordering::Release);
}

/// Moves `value` into the zone.
pub fn allocate<T>(locked: &LockedSlabPool, value: T) -> Result<*mut T, String> {
    ngx::allocator::allocate(value, locked)
        .map(NonNull::as_ptr)
        .map_err(|_| zone_full())
}

/// A zeroed array of `count` `T`s in the zone.
pub fn allocate_zeroed<T>(locked: &LockedSlabPool, count: usize) -> Result<*mut T, String> {
    let layout = Layout::array::<T>(count.max(1)).map_err(|_| zone_full())?;
    locked
        .allocate_zeroed(layout)
        .map(|memory| memory.cast::<T>().as_ptr())
        .map_err(|_| zone_full())
}

/// An array of `count` `u64`s in the zone, left as the zone had them: its pages are touched
/// only as they are written (a history ring fills over weeks; zeroing it would take its whole
/// size in memory at once). Every byte of the zone has a value (the kernel's zeros, or what an
/// earlier allocation wrote), so any `u64` read from it is a valid one.
pub fn allocate_words(locked: &LockedSlabPool, count: usize) -> Result<*mut u64, String> {
    let layout = Layout::array::<u64>(count.max(1)).map_err(|_| zone_full())?;
    locked
        .allocate(layout)
        .map(|memory| memory.cast::<u64>().as_ptr())
        .map_err(|_| zone_full())
}

/// Frees what `allocate`, `allocate_zeroed` or `allocate_words` returned. Debug builds fill the `T` with
/// `FREED_BYTE` first, so that a slot used after this fails its check (`PeerSlot::verify`).
///
/// SAFETY: `item` came from this zone's allocator and nothing uses it any more.
pub unsafe fn free<T>(locked: &LockedSlabPool, item: *mut T) {
    if let Some(item) = NonNull::new(item) {
        if cfg!(debug_assertions) {
            // SAFETY: per the contract; the allocation holds at least a `T`.
            unsafe {
                ptr::write_bytes(item.as_ptr().cast::<u8>(), FREED_BYTE, size_of::<T>());
            }
        }
        // SAFETY: per the contract; the slab allocator frees by address alone.
        unsafe { locked.deallocate(item.cast(), Layout::new::<u8>()) };
    }
}

/// A reused zone whose root is not this module version's.
pub fn foreign_root() -> String {
    format!(
        "shared zone \"{ZONE_NAME}\" holds data of another module version; restart Nginx \
         instead of reloading it"
    )
}

pub fn zone_full() -> String {
    format!(
        "shared zone \"{ZONE_NAME}\" is full: set \"shift_zone\" larger in the http block \
         (docs/directives.md has the sizes)"
    )
}

/// The table this worker's configuration gives an upstream, viewed through its own peers.
pub fn table_of(conf: &UpstreamConf) -> Option<Table<'_>> {
    // SAFETY: `conf.placement.table` is null or a header `load::build_view` placed, which stays allocated
    // while this configuration's load is live (it references the header), as do `conf.placement.slots`.
    let header = unsafe { conf.placement.table.as_ref()? };
    Some(Table::new(header, &conf.placement.slots))
}
