//! A ring of records in the zone: the latest changes, in order, within its bound.

use std::sync::atomic::{AtomicU64, Ordering};

use super::record::RECORD_WORDS;
use super::{Actor, Change};

/// The head of a ring in the zone; `capacity` records (`RecordCell`s) follow it.
#[repr(C)]
pub struct RingHead {
    pub capacity: AtomicU64,
    pub written: AtomicU64,
}

impl RingHead {
    /// The bytes a ring of `capacity` records takes.
    pub const fn bytes(capacity: usize) -> usize {
        std::mem::size_of::<RingHead>() + capacity * std::mem::size_of::<RecordCell>()
    }
}

/// One record's place in a ring.
#[derive(Debug, Default)]
pub struct RecordCell([AtomicU64; RECORD_WORDS]);

impl RecordCell {
    fn store(&self, words: &[u64; RECORD_WORDS]) {
        for (cell, word) in self.0.iter().zip(words) {
            cell.store(*word, Ordering::Relaxed);
        }
    }

    fn load(&self) -> [u64; RECORD_WORDS] {
        std::array::from_fn(|index| self.0[index].load(Ordering::Relaxed))
    }
}

/// A ring of records: the latest `records.len()` changes. `written` counts every record ever
/// appended; record `n` lives at `n % records.len()`. Appends and reads happen under the
/// table's write lock, which orders them.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    pub written: &'a AtomicU64,
    pub records: &'a [RecordCell],
}

impl Ring<'_> {
    /// How many changes it keeps.
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    /// Appends `change`, over the oldest record when the ring is full.
    pub fn append(&self, change: &Change) {
        if self.records.is_empty() {
            return;
        }
        let written = self.written.load(Ordering::Relaxed);
        self.records[(written % self.records.len() as u64) as usize].store(&change.encode());
        self.written.store(written + 1, Ordering::Relaxed);
    }

    /// Appends `changes` (peer, field, old, new), all made by `actor` at `generation` and
    /// `at_ms`.
    pub fn record(
        &self,
        (actor, generation, at_ms): (Actor, u64, u64),
        changes: Vec<(String, &str, String, String)>,
    ) {
        for (peer, field, old, new) in changes {
            self.append(&Change {
                generation,
                at_ms,
                actor,
                peer,
                field: field.to_string(),
                old,
                new,
            });
        }
    }

    /// The changes kept, oldest first, of a generation above `since` (all with 0).
    pub fn since(&self, since: u64) -> Vec<Change> {
        let written = self.written.load(Ordering::Relaxed);
        let kept = written.min(self.records.len() as u64);
        (written - kept..written)
            .filter_map(|n| {
                let cell = &self.records[(n % self.records.len() as u64) as usize];
                Change::decode(&cell.load())
            })
            .filter(|change| change.generation > since)
            .collect()
    }

    /// Copies the latest records that fit into `other` (a ring of another size, replacing
    /// this one), in order.
    pub fn copy_into(&self, other: &Ring) {
        for change in self.since(0) {
            other.append(&change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::sample_change as change;

    fn cells(capacity: usize) -> (AtomicU64, Vec<RecordCell>) {
        (
            AtomicU64::new(0),
            (0..capacity).map(|_| RecordCell::default()).collect(),
        )
    }

    #[test]
    fn the_ring_keeps_the_latest_in_order_and_pages_by_generation() {
        let (written, records) = cells(4);
        let ring = Ring {
            written: &written,
            records: &records,
        };
        assert!(ring.since(0).is_empty());
        for generation in 1..=6 {
            ring.append(&change(generation, Actor::Reload));
        }
        let kept: Vec<u64> = ring.since(0).iter().map(|c| c.generation).collect();
        assert_eq!(kept, [3, 4, 5, 6]);
        let after: Vec<u64> = ring.since(4).iter().map(|c| c.generation).collect();
        assert_eq!(after, [5, 6]);

        let (bigger_written, bigger_records) = cells(8);
        let bigger = Ring {
            written: &bigger_written,
            records: &bigger_records,
        };
        ring.copy_into(&bigger);
        bigger.append(&change(7, Actor::Health));
        let kept: Vec<u64> = bigger.since(0).iter().map(|c| c.generation).collect();
        assert_eq!(kept, [3, 4, 5, 6, 7]);

        let (smaller_written, smaller_records) = cells(2);
        let smaller = Ring {
            written: &smaller_written,
            records: &smaller_records,
        };
        bigger.copy_into(&smaller);
        let kept: Vec<u64> = smaller.since(0).iter().map(|c| c.generation).collect();
        assert_eq!(kept, [6, 7]);
    }

    /// Random appends against a plain list: the ring always holds the last `capacity` of them.
    #[test]
    fn model_over_random_sequences() {
        let mut rng = crate::test_rng::XorShift::new(0x2545_f491_4f6c_dd1d);
        let mut next = |bound: u64| rng.below(bound);
        for _ in 0..50 {
            let capacity = 1 + next(9) as usize;
            let (written, records) = cells(capacity);
            let ring = Ring {
                written: &written,
                records: &records,
            };
            let mut model = Vec::new();
            let mut generation = 0;
            for _ in 0..next(40) {
                generation += 1 + next(3);
                let change = change(generation, Actor::Eject);
                ring.append(&change);
                model.push(change);
                let start = model.len().saturating_sub(capacity);
                assert_eq!(ring.since(0), model[start..]);
                let since = next(generation + 1);
                let expected: Vec<Change> = model[start..]
                    .iter()
                    .filter(|change| change.generation > since)
                    .cloned()
                    .collect();
                assert_eq!(ring.since(since), expected);
            }
        }
    }
}
