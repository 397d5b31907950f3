//! FFI: a load's positions, and the blocks a load grows by. A load is built with a range of
//! positions per upstream (its `server` lines, its run-time peers, room for more); when an
//! upstream has more run-time peers at once than that room, the load grows by a block of
//! run-time positions for it, as large as all it had (so a few blocks serve any number). Every
//! position has a flat index, which workers' lists and in-flight counts use: a block's indexes
//! follow the last one's, and a block stays, emptied and reused, until its load is freed.

use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicUsize, Ordering};

use ngx::core::slab::LockedSlabPool;

use super::load::LoadRecord;
use super::zone::{allocate_zeroed, free, push_front, walk};
use shift_core::reclaim::PositionKind;
use shift_core::table::{PeerSlot, TableHeader};

/// Run-time positions a load added for one upstream, followed in the same allocation by the
/// positions (slot addresses, 0 where empty).
#[repr(C)]
pub struct PositionBlock {
    next: AtomicUsize,
    table_index: usize,
    /// The flat index of its first position.
    first: usize,
    len: usize,
}

impl PositionBlock {
    fn offset() -> usize {
        size_of::<PositionBlock>().next_multiple_of(align_of::<AtomicUsize>())
    }

    fn positions(&self) -> &[AtomicUsize] {
        // SAFETY: allocated by `grow`, zeroed, with `len` positions after the block.
        unsafe {
            let start = std::ptr::from_ref(self).cast::<u8>().add(Self::offset());
            std::slice::from_raw_parts(start.cast::<AtomicUsize>(), self.len)
        }
    }
}

/// One position of a load.
pub struct Position<'a> {
    /// Its flat index in the load.
    pub index: usize,
    pub cell: &'a AtomicUsize,
    pub kind: PositionKind,
}

impl Position<'_> {
    /// The slot it holds. Call with the zone's lock held.
    pub fn slot(&self) -> Option<&'static PeerSlot> {
        // SAFETY: a non-zero position holds a live slot: the position's reference keeps it.
        unsafe { (self.cell.load(Ordering::Acquire) as *const PeerSlot).as_ref() }
    }
}

impl LoadRecord {
    /// The blocks this load grew by, newest first. Call with the zone's lock held.
    fn blocks(&self) -> impl Iterator<Item = &'static PositionBlock> {
        // SAFETY: the lock keeps the blocks, which live as long as their load.
        unsafe {
            walk(
                self.blocks.load(Ordering::Acquire),
                |block: &PositionBlock| &block.next,
            )
        }
    }

    /// How many positions the load has, its blocks' included.
    pub fn position_count(&self) -> usize {
        self.position_count.load(Ordering::Acquire)
    }

    /// The index of `header` among the load's tables, if it routes to it: found by name.
    pub fn index_of(&self, header: &TableHeader) -> Option<usize> {
        self.find(header.name())
            .filter(|&index| std::ptr::eq(self.tables()[index], header))
    }

    /// Every position of the table at `table_index`: its range (config positions first), then
    /// its blocks'. Call with the zone's lock held.
    pub fn positions_of(&self, table_index: usize) -> Vec<Position<'_>> {
        let range = self.ranges()[table_index];
        let base = self.base_positions();
        let mut positions: Vec<Position> = range
            .positions()
            .map(|index| Position {
                index,
                cell: &base[index],
                kind: range.kind_of(index),
            })
            .collect();
        for block in self
            .blocks()
            .filter(|block| block.table_index == table_index)
        {
            positions.extend(
                block
                    .positions()
                    .iter()
                    .enumerate()
                    .map(|(offset, cell)| Position {
                        index: block.first + offset,
                        cell,
                        kind: PositionKind::Runtime,
                    }),
            );
        }
        positions
    }

    /// The slot at each flat position, if any. Call with the zone's lock held.
    pub fn slots(&self) -> Vec<Option<&'static PeerSlot>> {
        let read = |cell: &AtomicUsize| {
            // SAFETY: as `Position::slot`.
            unsafe { (cell.load(Ordering::Acquire) as *const PeerSlot).as_ref() }
        };
        let mut slots: Vec<Option<&'static PeerSlot>> =
            self.base_positions().iter().map(read).collect();
        slots.resize(self.position_count(), None);
        for block in self.blocks() {
            for (offset, cell) in block.positions().iter().enumerate() {
                if let Some(entry) = slots.get_mut(block.first + offset) {
                    *entry = read(cell);
                }
            }
        }
        slots
    }

    /// Adds a block of `len` empty run-time positions for the table at `table_index`; returns
    /// their first. Call with the zone's lock held.
    pub fn grow(
        &self,
        locked: &LockedSlabPool,
        table_index: usize,
        len: usize,
    ) -> Result<Position<'static>, String> {
        let memory =
            allocate_zeroed::<u8>(locked, PositionBlock::offset() + size_of::<usize>() * len)?;
        let block = memory.cast::<PositionBlock>();
        let first = self.position_count();
        // The count first: a process killed before the block is linked leaves positions that
        // read as empty, never a block past the count.
        self.position_count.store(first + len, Ordering::Release);
        // SAFETY: zeroed memory of the block's full size, aligned by the slab allocator; linked
        // under the caller's lock.
        let block = unsafe {
            block.write(PositionBlock {
                next: AtomicUsize::new(0),
                table_index,
                first,
                len,
            });
            push_front(&self.blocks, &(*block).next, block as usize);
            &*block
        };
        Ok(Position {
            index: first,
            cell: &block.positions()[0],
            kind: PositionKind::Runtime,
        })
    }

    /// Frees the blocks, with the load.
    ///
    /// SAFETY: the caller holds the zone's lock and frees the load: nobody reads its positions.
    pub unsafe fn free_blocks(&self, locked: &LockedSlabPool) {
        let blocks: Vec<&PositionBlock> = self.blocks().collect();
        self.blocks.store(0, Ordering::Release);
        for block in blocks {
            // SAFETY: per the contract.
            unsafe { free(locked, std::ptr::from_ref(block).cast_mut()) };
        }
    }
}
