//! FFI: each upstream's history ring in the zone (`shift_core::history`), placed beside its
//! table header (`TableHeader::history`) with the capacity `shift_history` gives it.
//!
//! Its address changes only under both the zone's lock and the table's write lock (a
//! configuration that changes the capacity), and is followed only under one of them: the API
//! holds the zone's lock for its whole request, the other writers (health checks, ejections,
//! the resolver) the table's write lock. So a ring is freed when nobody can be using it.

use std::sync::atomic::Ordering;

use ngx::core::slab::LockedSlabPool;

use super::zone::{allocate_words, free};
use shift_core::history::{differences, Actor, Member, RecordCell, Ring, RingHead, Snapshot};
use shift_core::process::{own_token, token_alive};
use shift_core::table::{Table, TableHeader};

/// The ring `header` points at, if it keeps one.
///
/// SAFETY: the caller holds the zone's lock or the table's write lock (see the module's doc).
pub unsafe fn ring_of(header: &TableHeader) -> Option<Ring<'static>> {
    // SAFETY: per the contract, the address is 0 or a ring `place` placed, still allocated.
    unsafe { ring_at(header.history.load(Ordering::Acquire)) }
}

/// The ring at `address` (none for 0).
///
/// SAFETY: `address` is 0, or a ring `place` placed that stays allocated while it is used.
unsafe fn ring_at(address: usize) -> Option<Ring<'static>> {
    if address == 0 {
        return None;
    }
    // SAFETY: per the contract: a `RingHead` followed by `capacity` records of `u64` words,
    // aligned for them; any bits are a valid word (`zone::allocate_words`).
    unsafe {
        let head = &*(address as *const RingHead);
        let capacity = head.capacity.load(Ordering::Relaxed) as usize;
        let records = std::slice::from_raw_parts(
            (address + size_of::<RingHead>()) as *const RecordCell,
            capacity,
        );
        Some(Ring {
            written: &head.written,
            records,
        })
    }
}

/// Gives `header` a ring of `capacity` records (none for 0), keeping the latest records of the
/// one it had. On an error (no room in the zone, or the table's write lock held by a writer
/// that does not let go) the table keeps the ring it had.
///
/// SAFETY: the caller holds the zone's lock.
pub unsafe fn place(
    locked: &LockedSlabPool,
    header: &TableHeader,
    capacity: usize,
) -> Result<(), String> {
    // SAFETY: the zone's lock is held.
    let old = unsafe { ring_of(header) };
    if old.map_or(0, |ring| ring.capacity()) == capacity {
        return Ok(());
    }
    let new = if capacity == 0 {
        0
    } else {
        let words = RingHead::bytes(capacity) / size_of::<u64>();
        let memory = allocate_words(locked, words)
            .map_err(|_| "the zone has no room for it (see shift_zone)".to_string())?;
        // SAFETY: memory for a `RingHead` and its records, aligned for `u64`s, not linked
        // anywhere yet. Only the head is written: a record is read only once written
        // (`Ring::since` stops at `written`), so its pages are touched as the ring fills.
        unsafe {
            let head = &*memory.cast::<RingHead>();
            head.capacity.store(capacity as u64, Ordering::Relaxed);
            head.written.store(0, Ordering::Relaxed);
        }
        memory as usize
    };
    let table = Table::new(header, &[]);
    let guard = match table.lock(own_token(), token_alive) {
        Ok(guard) => guard,
        Err(err) => {
            // SAFETY: the new ring was never linked: nobody else knows it.
            unsafe { free(locked, new as *mut u64) };
            return Err(err.to_string());
        }
    };
    // SAFETY: placed above and not linked yet; the old one is followed under the locks held.
    if let (Some(old), Some(new)) = (old, unsafe { ring_at(new) }) {
        old.copy_into(&new);
    }
    let previous = header.history.swap(new, Ordering::AcqRel);
    drop(guard);
    // SAFETY: unlinked under both locks: nobody follows it any more.
    unsafe { free(locked, previous as *mut u64) };
    Ok(())
}

/// Frees the ring of a header that is being freed.
///
/// SAFETY: the caller holds the zone's lock, and no load uses the header any more.
pub unsafe fn forget(locked: &LockedSlabPool, header: &TableHeader) {
    let previous = header.history.swap(0, Ordering::AcqRel);
    // SAFETY: per the contract nobody follows it.
    unsafe { free(locked, previous as *mut u64) };
}

/// Records `changes` (peer, field, old, new) that `actor` made to `header`'s table just now, at
/// the table's generation (health and ejections make none of their own), under the table's
/// write lock, taken here. A table whose lock stays taken loses the entry, not the change.
pub fn record(header: &TableHeader, actor: Actor, changes: Vec<(String, &str, String, String)>) {
    if changes.is_empty() {
        return;
    }
    let table = Table::new(header, &[]);
    let Ok(guard) = table.lock(own_token(), token_alive) else {
        return;
    };
    // SAFETY: the table's write lock is held.
    if let Some(ring) = unsafe { ring_of(header) } {
        ring.record(
            (actor, table.generation(), crate::clock::unix_ms()),
            changes,
        );
    }
    drop(guard);
}

/// Every peer slot of `header`'s table as a whole-table change compares them
/// (`shift_core::history::differences`); nothing when the table keeps no history.
///
/// SAFETY: the caller holds the zone's lock, which keeps the slots.
pub unsafe fn members(header: &TableHeader) -> Vec<Member> {
    // SAFETY: per the contract.
    if unsafe { ring_of(header) }.is_none() {
        return Vec::new();
    }
    // SAFETY: per the contract.
    unsafe { super::slots_of(header) }
        .map(|slot| {
            (
                slot.server().to_string(),
                slot.is_current(),
                Snapshot::of(slot),
            )
        })
        .collect()
}

/// Records what differs between `before` and the table's peers now, as `actor`'s change at
/// the table's generation now.
///
/// SAFETY: the caller holds the zone's lock and the table's write lock.
pub unsafe fn record_since(header: &TableHeader, actor: Actor, before: &[Member]) {
    // SAFETY: per the contract.
    if let Some(ring) = unsafe { ring_of(header) } {
        // SAFETY: as above.
        let after = unsafe { members(header) };
        let generation = Table::new(header, &[]).generation();
        ring.record(
            (actor, generation, crate::clock::unix_ms()),
            differences(before, &after),
        );
    }
}
