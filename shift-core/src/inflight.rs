//! Requests in flight. Each worker counts its own, per peer of its configuration, in a record
//! of its own in the zone; a peer's `active` is the sum over the records of workers that still
//! run. A worker that dies mid-request takes its count with it, where a shared counter would
//! stay up forever (as stock Nginx's `zone` does) and keep `drain --wait` waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::table::PeerSlot;

/// One worker's counts, by the index of the peer in its configuration load.
#[derive(Clone, Copy)]
pub struct InFlight<'a> {
    counts: &'a [AtomicU32],
}

impl<'a> InFlight<'a> {
    pub fn new(counts: &'a [AtomicU32]) -> InFlight<'a> {
        InFlight { counts }
    }

    /// A request attempt on peer `index` started. Only its own worker writes a record, so a
    /// plain load and store suffice (no read-modify-write on the data path).
    pub fn started(&self, index: usize) {
        if let Some(count) = self.counts.get(index) {
            count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// A request attempt on peer `index` finished.
    pub fn finished(&self, index: usize) {
        if let Some(count) = self.counts.get(index) {
            let value = count.load(Ordering::Relaxed);
            count.store(value.saturating_sub(1), Ordering::Relaxed);
        }
    }
}

/// The requests in flight on each of `peers` (one upstream's), summed over `workers`: each the
/// positions its load gives that upstream (a flat position index and the peer there) and the
/// worker's counts. Only the upstream's own positions are read, whatever the zone's size.
pub fn active<'a>(
    peers: &[&PeerSlot],
    workers: impl IntoIterator<Item = (&'a [(usize, &'a PeerSlot)], InFlight<'a>)>,
) -> Vec<u64> {
    let mut by_slot: HashMap<*const PeerSlot, u64> = HashMap::new();
    for (positions, inflight) in workers {
        for &(index, peer) in positions {
            let count = inflight
                .counts
                .get(index)
                .map_or(0, |count| count.load(Ordering::Relaxed));
            if count > 0 {
                *by_slot.entry(peer as *const PeerSlot).or_default() += u64::from(count);
            }
        }
    }
    peers
        .iter()
        .map(|&peer| {
            by_slot
                .get(&(peer as *const PeerSlot))
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::PeerConfig;

    fn slot(server: &str) -> PeerSlot {
        PeerSlot::new(&PeerConfig {
            server: server.into(),
            weight: 1,
            down: false,
            backup: false,
            label: crate::table::Label::NONE,
        })
        .unwrap()
    }

    #[test]
    fn sums_the_workers_of_every_load_by_peer() {
        let (a, b, c) = (slot("a:1"), slot("b:1"), slot("c:1"));
        // An old load routes to a and b; the new one to b and c, in another order (position 1,
        // room for a peer added at run time, is empty and not listed).
        let old_load = [(0, &a), (1, &b)];
        let new_load = [(0, &c), (2, &b)];
        let old_counts: Vec<AtomicU32> = (0..2).map(|_| AtomicU32::new(0)).collect();
        let new_counts: Vec<AtomicU32> = (0..3).map(|_| AtomicU32::new(0)).collect();
        let (old, new) = (InFlight::new(&old_counts), InFlight::new(&new_counts));
        old.started(0);
        old.started(1);
        old.started(1);
        new.started(2);
        new.started(1);
        new.started(0);
        new.finished(0);
        let view = [&a, &b, &c];
        assert_eq!(
            active(&view, [(&old_load[..], old), (&new_load[..], new)]),
            vec![1, 3, 0]
        );
        // The old worker is gone: its requests no longer count.
        assert_eq!(active(&view, [(&new_load[..], new)]), vec![0, 1, 0]);
    }

    #[test]
    fn never_goes_below_zero_and_ignores_unknown_indexes() {
        let counts = [AtomicU32::new(0)];
        let inflight = InFlight::new(&counts);
        inflight.finished(0);
        inflight.started(5);
        assert_eq!(counts[0].load(Ordering::Relaxed), 0);
    }
}
