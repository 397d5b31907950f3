//! FFI: each worker's record in the zone, and binary-upgrade detection.
//!
//! A worker registers at its start with the load of its configuration and counts the requests
//! it has in flight there (`shift_core::inflight`); its record goes when it has exited (the
//! workers' housekeeping and the master's reclaim free it).

use std::mem::{align_of, size_of};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;

use ngx::core::slab::LockedSlabPool;
use ngx::core::CoreModuleMainConf;
use ngx::ffi::{ngx_cycle_t, ngx_shm_zone_t, NGX_LOG_ERR};
use ngx::ngx_log_error;

use super::load::LoadRecord;
use super::zone::{allocate_zeroed, push_front, unlink_where, Zone};
use crate::conf::MainConf;
use shift_core::inflight::InFlight;
use shift_core::process::ProcessId;
use shift_core::reclaim::{HeldCell, HeldEpochs};
use shift_core::table::TableHeader;

/// A worker (or helper process) of one load, followed in the same allocation by the epochs of
/// its peer lists, one cell per table of the load (`shift_core::reclaim::HeldCell`).
#[repr(C)]
pub struct WorkerRecord {
    pub next: AtomicUsize,
    pub process: ProcessId,
    /// Address of its load's record.
    pub load: usize,
    /// Its in-flight counts, one per position of the load: an allocation of their own, which
    /// the worker replaces by a larger one when its load grew (`cover_positions`). Both words
    /// change only under the zone's lock, and only the worker itself changes them.
    counts: AtomicUsize,
    count_len: AtomicUsize,
    /// How many held cells follow: the load's table count, or 0 when the zone had no room for
    /// them (the worker then never routes with a list of its own).
    held_len: usize,
}

impl WorkerRecord {
    fn held_offset() -> usize {
        size_of::<WorkerRecord>().next_multiple_of(align_of::<HeldCell>())
    }

    fn size(held_len: usize) -> usize {
        Self::held_offset() + size_of::<HeldCell>() * held_len
    }

    pub(super) fn counts(&self) -> &[AtomicU32] {
        let address = self.counts.load(Ordering::Acquire) as *const AtomicU32;
        if address.is_null() {
            return &[];
        }
        // SAFETY: `count_len` zeroed counts allocated by `register_worker` or
        // `cover_positions`, freed only with the record or when replaced (by the worker itself,
        // under the lock that every other reader holds).
        unsafe { std::slice::from_raw_parts(address, self.count_len.load(Ordering::Acquire)) }
    }

    /// The epochs of this worker's lists, one cell per table of its load.
    fn held_cells(&self) -> &[HeldCell] {
        // SAFETY: allocated by `register_worker` with `held_len` cells after the record, each
        // written by `HeldCell::new`.
        unsafe {
            let start = std::ptr::from_ref(self)
                .cast::<u8>()
                .add(Self::held_offset());
            std::slice::from_raw_parts(start.cast::<HeldCell>(), self.held_len)
        }
    }

    /// What this worker published for the load's table `table_index`: nothing when it has no
    /// cell (it then routes with its configuration's peers only).
    pub fn held(&self, table_index: usize) -> HeldEpochs {
        self.held_cells()
            .get(table_index)
            .map_or(HeldEpochs::NONE, HeldCell::load)
    }

    pub(super) fn load(&self) -> &LoadRecord {
        // SAFETY: a load is not freed while any worker record names it (the master's reclaim
        // counts the records left after it reaped exited workers' ones).
        unsafe { &*(self.load as *const LoadRecord) }
    }
}

/// This worker's record, once registered, and the zone it is in.
static OWN_RECORD: AtomicUsize = AtomicUsize::new(0);
static OWN_ZONE: AtomicPtr<ngx_shm_zone_t> = AtomicPtr::new(std::ptr::null_mut());
/// Where the pid file of an old binary is (`nginx.pid.oldbin`): if it names this worker's
/// master, a new binary took over.
static OLD_PID_FILE: OnceLock<PathBuf> = OnceLock::new();

/// Registers this worker with its configuration's load; from `init_process`.
///
/// SAFETY: `cycle` is this worker's cycle and `main` its http main conf.
pub unsafe fn register_worker(cycle: *mut ngx_cycle_t, main: &MainConf) {
    // SAFETY: per the contract.
    unsafe {
        if let Some(core) = ngx::core::NgxCoreModule::main_conf(&*cycle) {
            // Nginx counts the terminating NUL in `oldpid`'s length.
            let path = core.oldpid.to_string();
            let _ = OLD_PID_FILE.set(PathBuf::from(path.trim_end_matches('\0')));
        }
        let (Some(shm), Some(load)) = (NonNull::new(main.zone), main.load.as_ref()) else {
            return;
        };
        let Some(zone) = Zone::at(shm) else { return };
        let log = (*cycle).log;
        if test_hooks_skip_registration(log) {
            return;
        }
        let Some(process) = ProcessId::current() else {
            ngx_log_error!(NGX_LOG_ERR, log, "shift: cannot read /proc/self/stat");
            return;
        };
        let locked = zone.lock();
        let mut count_len = load.position_count();
        let mut held_len = load.table_count();
        // Without room for its counts and held cells a worker still registers, so that the
        // master knows which configuration it belongs to; it then routes with its
        // configuration's peers only (it could not say which run-time peers it holds).
        let mut counts = allocate_zeroed::<AtomicU32>(&locked, count_len).ok();
        let record =
            counts.and_then(|_| allocate_zeroed::<u8>(&locked, WorkerRecord::size(held_len)).ok());
        let memory = match record {
            Some(memory) => memory,
            None => {
                ngx_log_error!(
                    NGX_LOG_ERR,
                    log,
                    "shift: {}; this worker's requests in flight are not counted and it routes \
                     to no peer added at run time",
                    super::zone::zone_full()
                );
                if let Some(counts) = counts.take() {
                    super::zone::free(&locked, counts);
                }
                (count_len, held_len) = (0, 0);
                match allocate_zeroed::<u8>(&locked, WorkerRecord::size(0)) {
                    Ok(memory) => memory,
                    Err(_) => return,
                }
            }
        };
        let counts = counts.unwrap_or(std::ptr::null_mut());
        let record = memory.cast::<WorkerRecord>();
        record.write(WorkerRecord {
            next: AtomicUsize::new(0),
            process,
            load: std::ptr::from_ref(load) as usize,
            counts: AtomicUsize::new(counts as usize),
            count_len: AtomicUsize::new(count_len),
            held_len,
        });
        let cells = memory.add(WorkerRecord::held_offset()).cast::<HeldCell>();
        for index in 0..held_len {
            cells.add(index).write(HeldCell::new());
        }
        push_front(&zone.root().workers, &(*record).next, record as usize);
        OWN_RECORD.store(record as usize, Ordering::Release);
        OWN_ZONE.store(shm.as_ptr(), Ordering::Release);
    }
}

/// Debug builds only, the tests' hooks (set through Nginx's `env` directive), each said in the
/// log; true when this worker must not register: with `SHIFT_TEST_UNREGISTERED_WORKER=N`, worker number N does not register, as a worker
/// that found the zone full would not (it must then stay away from peers added at run time);
/// `SHIFT_TEST_HIDE_PROC=1` (read in `shift_core::process`) hides other processes' `/proc`;
/// `SHIFT_TEST_PAUSE_AFTER_LIST_MS=N` stops the worker for N ms after each peer list it builds
/// (`pause_after_list`), so that another worker's change falls between the list and its routes;
/// `SHIFT_TEST_HOLD_ZONE_WHILE=FILE` makes the API's changes wait with the zone locked while FILE
/// exists (`hold_zone_while_flagged`), so that a test can kill a worker holding the lock.
#[cfg(debug_assertions)]
fn test_hooks_skip_registration(log: *mut ngx::ffi::ngx_log_t) -> bool {
    let pause = std::env::var("SHIFT_TEST_PAUSE_AFTER_LIST_MS")
        .ok()
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(ms) = pause {
        PAUSE_AFTER_LIST_MS.store(ms, Ordering::Relaxed);
        ngx_log_error!(
            ngx::ffi::NGX_LOG_NOTICE,
            log,
            "shift: test hook: this worker pauses {} ms after each peer list it builds",
            ms
        );
    }
    let wanted = std::env::var("SHIFT_TEST_UNREGISTERED_WORKER")
        .ok()
        .and_then(|value| value.parse::<ngx::ffi::ngx_uint_t>().ok());
    if std::env::var_os("SHIFT_TEST_HIDE_PROC").is_some_and(|value| value == "1") {
        ngx_log_error!(
            ngx::ffi::NGX_LOG_NOTICE,
            log,
            "shift: test hook: other processes' /proc entries are hidden from this worker"
        );
    }
    // SAFETY: set once by the master before it forks this worker.
    let skip = wanted == Some(unsafe { ngx::ffi::ngx_worker });
    if skip {
        ngx_log_error!(
            ngx::ffi::NGX_LOG_NOTICE,
            log,
            "shift: test hook: worker {} does not register",
            wanted.unwrap_or_default()
        );
    }
    skip
}

#[cfg(not(debug_assertions))]
fn test_hooks_skip_registration(_log: *mut ngx::ffi::ngx_log_t) -> bool {
    false
}

/// `SHIFT_TEST_PAUSE_AFTER_LIST_MS` as this worker read it (debug builds; 0: no pause).
#[cfg(debug_assertions)]
static PAUSE_AFTER_LIST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The test hook's pause after a peer list is built (debug builds only; see above).
pub fn pause_after_list() {
    #[cfg(debug_assertions)]
    match PAUSE_AFTER_LIST_MS.load(Ordering::Relaxed) {
        0 => {}
        ms => std::thread::sleep(std::time::Duration::from_millis(ms)),
    }
}

/// The test hook that holds the zone's lock (debug builds only; see above): called by the API
/// with the zone locked, before a change is decided. While FILE exists it writes this worker's
/// pid to FILE.holder and waits, at most 20 s.
#[cfg(debug_assertions)]
pub fn hold_zone_while_flagged() {
    let Some(flag) = std::env::var_os("SHIFT_TEST_HOLD_ZONE_WHILE").map(PathBuf::from) else {
        return;
    };
    if !flag.exists() {
        return;
    }
    let holder = flag.with_extension("holder");
    let written = holder.with_extension("holder.new");
    if std::fs::write(&written, std::process::id().to_string()).is_ok() {
        let _ = std::fs::rename(&written, &holder);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while flag.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Whether this worker may route with peer lists of its own: only when its record can say
/// which run-time peers they hold (`publish_held`).
pub fn can_publish_held() -> bool {
    own_record().is_some_and(|record| record.held_len > 0)
}

/// Says in this worker's record which lists it holds for its load's table `table_index`.
/// Call with the zone's lock held.
pub fn publish_held_locked(table_index: usize, held: &HeldEpochs) {
    if let Some(cell) = own_record().and_then(|record| record.held_cells().get(table_index)) {
        cell.store(held);
    }
}

/// As `publish_held_locked`, taking the zone's lock: for lists freed when their last request
/// ended. What it publishes only shrinks, so a reclaimer that read the older value merely kept
/// a position longer.
pub fn publish_held(table_index: usize, held: &HeldEpochs) {
    let Some(shm) = NonNull::new(OWN_ZONE.load(Ordering::Acquire)) else {
        return;
    };
    // SAFETY: the zone this worker registered in stays mapped while it runs.
    let Some(zone) = (unsafe { Zone::at(shm) }) else {
        return;
    };
    let _locked = zone.lock();
    publish_held_locked(table_index, held);
}

/// Makes this worker's in-flight counts cover `positions` positions of its load, which may
/// have grown since it registered: a larger zeroed allocation takes the counts so far. Call
/// with the zone's lock held (`locked`); without room, positions past the old ones are not
/// counted.
pub fn cover_positions(locked: &LockedSlabPool, positions: usize) {
    let Some(record) = own_record() else {
        return;
    };
    let old = record.counts();
    if positions <= old.len() || record.held_len == 0 {
        return;
    }
    let Ok(new) = allocate_zeroed::<AtomicU32>(locked, positions) else {
        return;
    };
    // SAFETY: just allocated with `positions` zeroed counts.
    let counts = unsafe { std::slice::from_raw_parts(new.cast_const(), positions) };
    for (count, value) in counts.iter().zip(old) {
        count.store(value.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    let previous = record.counts.swap(new as usize, Ordering::AcqRel);
    record.count_len.store(positions, Ordering::Release);
    // SAFETY: the old counts' only other readers hold the lock held here; this worker reads
    // its own through `inflight()`, which looks the new ones up from now on.
    unsafe { super::zone::free(locked, previous as *mut AtomicU32) };
}

/// This worker's record, once registered.
fn own_record() -> Option<&'static WorkerRecord> {
    // SAFETY: set once by `register_worker` to this worker's record, which stays allocated while
    // this worker runs.
    unsafe { (OWN_RECORD.load(Ordering::Acquire) as *const WorkerRecord).as_ref() }
}

/// This worker's in-flight counts, by the flat position index of its load: to count one
/// attempt at once, never to keep (`cover_positions` replaces them when the load grew).
pub fn inflight() -> Option<InFlight<'static>> {
    // The record stays allocated while this worker runs; its counts until this worker replaces
    // them, which it does only between two of its own calls of this.
    Some(InFlight::new(own_record()?.counts()))
}

/// Frees the records of workers that have exited.
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn reap_exited(zone: Zone, locked: &LockedSlabPool) {
    // SAFETY: per the contract; an exited worker uses nothing.
    unsafe {
        unlink_where(
            locked,
            &zone.root().workers,
            |worker: &WorkerRecord| &worker.next,
            |worker| {
                let exited = !worker.process.is_running();
                if exited {
                    super::zone::free(
                        locked,
                        worker.counts.swap(0, Ordering::AcqRel) as *mut AtomicU32,
                    );
                }
                exited
            },
        );
    }
}

/// The committed `state=` path of a table.
///
/// SAFETY: the caller holds the zone's lock (the path changes only under it).
pub unsafe fn state_path(header: &TableHeader) -> Option<PathBuf> {
    let [address, len] = &header.state_path;
    let address = address.load(Ordering::Acquire) as *const u8;
    if address.is_null() {
        return None;
    }
    // SAFETY: per the contract, `set_state_path` wrote `len` bytes at `address`, taken from an
    // OsStr's encoded bytes.
    unsafe {
        let bytes = std::slice::from_raw_parts(address, len.load(Ordering::Acquire));
        Some(PathBuf::from(
            std::ffi::OsStr::from_encoded_bytes_unchecked(bytes),
        ))
    }
}

/// Whether this worker may still acknowledge changes: no new binary took over. Asked under a
/// state file directory's lock, which the new master takes to read the files: every change
/// saved before it read is in its state, and none is acknowledged after.
pub fn still_serving() -> bool {
    !new_binary_took_over()
}

/// Whether this worker's master is now the old one of a binary upgrade: Nginx renames its pid
/// file to `oldpid` (`nginx.pid.oldbin`) before it starts the new binary.
pub(super) fn new_binary_took_over() -> bool {
    let Some(path) = OLD_PID_FILE.get() else {
        return false;
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let master = nix::unistd::getppid().as_raw() as u32;
    text.trim().parse::<u32>() == Ok(master)
}
