//! What the zone may free, and when. One rule for every origin of a peer (a `server` line, the
//! API, a resolved name); the FFI module only carries out what this decides, under the zone's
//! lock. `tests/membership_model/` (`zone.rs` the model, `zone/invariants.rs` what must hold)
//! drives it through random sequences of changes, reloads, worker deaths and requests, and
//! checks after every step that nothing reachable is freed and, once everything is quiet, that
//! nothing is leaked.
//!
//! A peer's slot is reachable in three ways:
//! - a configuration load's *positions*: each upstream's range holds its config peers first
//!   (round robin's own peers point at them; they stay for the load's life) and then its
//!   run-time peers (the API's and resolved ones), placed and given up at run time;
//! - a worker's own peer lists, built from its load's positions, which new requests take and
//!   running ones keep;
//! - the API and the resolver, only under the zone's lock and only current peers.
//!
//! So a run-time position may be given up once its peer is no longer current and no list that
//! could hold it is left in any worker of the load. A list holds the peers that were current
//! when it was built, under the zone's lock, at membership epoch `e`: a peer current from epoch
//! `added` until its removal at `removed` is in it exactly when `added <= e < removed`. Each
//! worker publishes, per upstream, the epochs of the lists it still routes with or has
//! requests on ([`HeldEpochs`]); a worker that could not publish (no record in the zone) never
//! builds such lists. A slot is freed once no position holds it and it is not current; a load
//! is freed by `lifecycle::loads_to_free`.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many epoch ranges a worker publishes per upstream: its current list and the retired
/// ones that still have requests. More lists than ranges are merged into wider ranges, which
/// may hold a removed peer's position longer, never shorter.
pub const HELD_RANGES: usize = 4;

/// The membership epochs of one worker's peer lists for one upstream, as at most
/// [`HELD_RANGES`] inclusive ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldEpochs {
    ranges: [(u64, u64); HELD_RANGES],
    len: usize,
}

impl HeldEpochs {
    /// No list: the worker routes with its configuration's own peers only.
    pub const NONE: HeldEpochs = HeldEpochs {
        ranges: [(0, 0); HELD_RANGES],
        len: 0,
    };

    /// The lists built at `epochs`; neighbours are merged (the closest first) until the
    /// ranges fit.
    pub fn of(epochs: impl IntoIterator<Item = u64>) -> HeldEpochs {
        let mut epochs: Vec<u64> = epochs.into_iter().collect();
        epochs.sort_unstable();
        epochs.dedup();
        let mut ranges: Vec<(u64, u64)> = epochs.into_iter().map(|epoch| (epoch, epoch)).collect();
        while ranges.len() > HELD_RANGES {
            let closest = (0..ranges.len() - 1)
                .min_by_key(|&index| ranges[index + 1].0 - ranges[index].1)
                .unwrap_or(0);
            ranges[closest].1 = ranges[closest + 1].1;
            ranges.remove(closest + 1);
        }
        let mut held = HeldEpochs::NONE;
        held.ranges[..ranges.len()].copy_from_slice(&ranges);
        held.len = ranges.len();
        held
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.len]
    }

    /// Whether one of these lists may hold a peer that was current from epoch `added` until
    /// epoch `removed` (exclusive).
    pub fn may_hold(&self, added: u64, removed: u64) -> bool {
        self.ranges()
            .iter()
            .any(|&(first, last)| first < removed && last >= added)
    }
}

/// [`HeldEpochs`] in the zone, in a worker's record. Written by its worker and read by
/// whichever process reclaims, both under the zone's lock: the words of one value are never
/// seen half-written.
#[repr(C)]
pub struct HeldCell {
    /// Each range's first and last epoch; an empty range has first > last.
    words: [AtomicU64; 2 * HELD_RANGES],
}

impl HeldCell {
    pub fn new() -> HeldCell {
        let cell = HeldCell {
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        cell.store(&HeldEpochs::NONE);
        cell
    }

    /// Call with the zone's lock held.
    pub fn store(&self, held: &HeldEpochs) {
        for index in 0..HELD_RANGES {
            let (first, last) = held.ranges().get(index).copied().unwrap_or((u64::MAX, 0));
            self.words[2 * index].store(first, Ordering::Relaxed);
            self.words[2 * index + 1].store(last, Ordering::Relaxed);
        }
    }

    /// Call with the zone's lock held.
    pub fn load(&self) -> HeldEpochs {
        let mut held = HeldEpochs::NONE;
        for index in 0..HELD_RANGES {
            let first = self.words[2 * index].load(Ordering::Relaxed);
            let last = self.words[2 * index + 1].load(Ordering::Relaxed);
            if first <= last {
                held.ranges[held.len] = (first, last);
                held.len += 1;
            }
        }
        held
    }
}

impl Default for HeldCell {
    fn default() -> Self {
        HeldCell::new()
    }
}

/// Which part of an upstream's range in a load a position is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    /// A `server` line of that load: round robin's peers of its workers point at the slot for
    /// the load's whole life, whatever the API or a later configuration does.
    Config,
    /// A peer added at run time (through the API or a resolved name), or carried into the load
    /// as one.
    Runtime,
}

/// What reclaiming needs to know of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLife {
    /// Whether it is one of its upstream's current peers.
    pub current: bool,
    /// The membership epoch when it was placed: no list older than that holds it.
    pub added_epoch: u64,
    /// The membership epoch of its last removal, 0 if it was never removed since it became
    /// current.
    pub removed_epoch: u64,
}

/// Whether a position of a load may be given up (emptied): only a run-time one of a committed
/// load, whose peer was removed and is held by no list of `holders`, the epochs every
/// registered worker of the load published for the position's upstream. A load not committed
/// yet keeps every position: nothing routes through it, and its build placed peers (from a
/// state file or a replaced zone) that only its commit makes current.
pub fn may_give_up(
    load_committed: bool,
    kind: PositionKind,
    life: SlotLife,
    holders: impl IntoIterator<Item = HeldEpochs>,
) -> bool {
    load_committed
        && kind == PositionKind::Runtime
        && !life.current
        && life.removed_epoch != 0
        && holders
            .into_iter()
            .all(|held| !held.may_hold(life.added_epoch, life.removed_epoch))
}

/// Whether a slot may be freed: no position of any live load holds it (`positions`), and it is
/// not current (the API and resolver reach current ones under the lock).
pub fn may_free_slot(positions: u32, current: bool) -> bool {
    positions == 0 && !current
}

/// When the release pass over every load may be skipped. A pass that finds no removed peer's
/// run-time position left waiting records the membership epoch it ran at ([`released_through`]);
/// until the epoch moves (a peer removed) nothing new can become releasable, except positions
/// taken for a peer that is not current yet (a placer that dies before its change takes an
/// epoch), so taking one records [`RELEASE_PENDING`] instead. Skipping only ever keeps memory
/// longer; the model test checks that nothing is kept for good.
pub fn release_pass_due(members_epoch: u64, released_at: u64) -> bool {
    members_epoch != released_at
}

/// What a pass records, run at `members_epoch` with `waiting` positions it could not give up
/// yet: the epoch when none waits, else [`RELEASE_PENDING`] (the next pass runs).
pub fn released_through(members_epoch: u64, waiting: usize) -> u64 {
    if waiting == 0 {
        members_epoch
    } else {
        RELEASE_PENDING
    }
}

/// The record that makes the next pass run (membership epochs start at 1).
pub const RELEASE_PENDING: u64 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    fn life(added_epoch: u64, removed_epoch: u64) -> SlotLife {
        SlotLife {
            current: removed_epoch == 0,
            added_epoch,
            removed_epoch,
        }
    }

    #[test]
    fn a_list_holds_the_peers_current_when_it_was_built() {
        let held = HeldEpochs::of([7]);
        assert!(held.may_hold(3, 10), "current at 7");
        assert!(held.may_hold(7, 8));
        assert!(!held.may_hold(8, 10), "added after the list was built");
        assert!(
            !held.may_hold(3, 7),
            "removed before (at 7: the list was built after)"
        );
        assert!(!HeldEpochs::NONE.may_hold(0, u64::MAX));
    }

    #[test]
    fn many_lists_merge_into_wider_ranges_never_narrower() {
        let epochs = [1, 2, 3, 10, 11, 40, 41, 100, 200];
        let held = HeldEpochs::of(epochs);
        assert_eq!(held.ranges().len(), HELD_RANGES);
        for epoch in epochs {
            assert!(held.may_hold(epoch, epoch + 1), "{epoch} still held");
        }
        assert_eq!(held.ranges()[0].0, 1);
        assert_eq!(held.ranges()[HELD_RANGES - 1].1, 200);
        // Duplicates count once; the order given does not matter.
        assert_eq!(HeldEpochs::of([5, 3, 5]), HeldEpochs::of([3, 5]));
    }

    #[test]
    fn a_cell_gives_back_what_was_stored() {
        let cell = HeldCell::new();
        assert_eq!(cell.load(), HeldEpochs::NONE);
        for held in [
            HeldEpochs::of([4]),
            HeldEpochs::of([0, u64::MAX - 1]),
            HeldEpochs::of(1..=20),
            HeldEpochs::NONE,
        ] {
            cell.store(&held);
            assert_eq!(cell.load(), held);
        }
    }

    #[test]
    fn only_removed_runtime_peers_no_list_holds_are_given_up() {
        let quiet = [HeldEpochs::of([20]), HeldEpochs::NONE];
        assert!(may_give_up(true, PositionKind::Runtime, life(3, 10), quiet));
        assert!(
            !may_give_up(true, PositionKind::Config, life(3, 10), quiet),
            "a config position stays for the load's life"
        );
        assert!(
            !may_give_up(true, PositionKind::Runtime, life(3, 0), quiet),
            "a current peer"
        );
        let not_removed = SlotLife {
            current: false,
            added_epoch: 3,
            removed_epoch: 0,
        };
        assert!(!may_give_up(
            true,
            PositionKind::Runtime,
            not_removed,
            quiet
        ));
        assert!(
            !may_give_up(false, PositionKind::Runtime, life(3, 10), quiet),
            "a load being built keeps what it placed for its commit"
        );
        let busy = [HeldEpochs::of([20]), HeldEpochs::of([5, 20])];
        assert!(
            !may_give_up(true, PositionKind::Runtime, life(3, 10), busy),
            "a request still runs on a list built at 5"
        );
    }

    #[test]
    fn a_slot_goes_when_nothing_holds_it() {
        assert!(may_free_slot(0, false));
        assert!(!may_free_slot(1, false));
        assert!(!may_free_slot(0, true));
    }
}
