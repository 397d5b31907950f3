//! When the zone's configuration loads may be freed, and how large the zone must be.
//!
//! Every configuration load (Nginx start or reload) that parses a `shift` upstream is recorded
//! in the zone with the peers it routes to. A load is *built* while Nginx reads the
//! configuration, *committed* once Nginx has applied it (only then do its config-driven changes
//! take effect), and freed when nothing can use it any more: a load that was never committed
//! (the reload failed after our zone was set up), or an older committed load whose workers have
//! all exited. A worker registers at its start; until it has, a child of the master without a
//! record might belong to any load, so nothing is freed while there is one.

/// What is known of one recorded load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadStatus {
    pub id: u64,
    pub committed: bool,
    /// Registered worker (or helper) processes of this load that still run.
    pub running_workers: usize,
}

/// The loads that can be freed now. `current` is the last committed load and `building` the
/// one being built (both stay); `unregistered_children` says whether the master has a child
/// that has not registered yet.
pub fn loads_to_free(
    loads: &[LoadStatus],
    current: u64,
    building: Option<u64>,
    unregistered_children: bool,
) -> Vec<u64> {
    loads
        .iter()
        .filter(|load| load.id != current && Some(load.id) != building)
        .filter(|load| {
            if !load.committed {
                // Built by a reload that then failed: no process ever used it.
                return true;
            }
            load.running_workers == 0 && !unregistered_children
        })
        .map(|load| load.id)
        .collect()
}

/// Bytes the zone reserves for itself whatever the configuration.
pub const ZONE_BASE_BYTES: usize = 256 * 1024;
/// Bytes reserved per upstream.
pub const ZONE_UPSTREAM_BYTES: usize = 2 * 1024;
/// Bytes reserved per peer: its slot (about 1.1 KiB with its latency histograms, 2 KiB in the
/// zone's allocator) and its share of the load records and workers' in-flight counts, twice
/// over, for the old and new loads that overlap during a reload and for peers added at run time.
pub const ZONE_PEER_BYTES: usize = 4 * 1024;
/// The smallest zone.
pub const ZONE_MIN_BYTES: usize = 1024 * 1024;

/// The zone size for a configuration without `shift_zone`: the reservations above and the
/// upstreams' history rings (`history_bytes`), rounded up to a power of two so that adding a
/// few peers does not change it (a changed size makes Nginx create a new zone, and the state
/// moves into it).
pub fn zone_size(upstreams: usize, peers: usize, history_bytes: usize) -> usize {
    let needed =
        ZONE_BASE_BYTES + ZONE_UPSTREAM_BYTES * upstreams + ZONE_PEER_BYTES * peers + history_bytes;
    needed.next_power_of_two().max(ZONE_MIN_BYTES)
}

/// What a history ring of `capacity` changes takes in the zone: whole pages, as the zone's
/// allocator gives them for an allocation that size, and one more for its bookkeeping.
pub fn history_bytes(capacity: usize) -> usize {
    const PAGE: usize = 4096;
    if capacity == 0 {
        return 0;
    }
    crate::history::RingHead::bytes(capacity).next_multiple_of(PAGE) + PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: u64, committed: bool, running_workers: usize) -> LoadStatus {
        LoadStatus {
            id,
            committed,
            running_workers,
        }
    }

    #[test]
    fn failed_loads_go_at_once_and_old_ones_when_their_workers_are_gone() {
        let loads = [
            load(1, true, 0),  // old, every worker exited
            load(2, true, 1),  // old, a worker finishing a slow request
            load(3, false, 0), // a reload that failed
            load(4, true, 2),  // current
            load(5, false, 0), // being built
        ];
        assert_eq!(loads_to_free(&loads, 4, Some(5), false), vec![1, 3]);
        // Without a build under way the uncommitted load 5 failed too.
        assert_eq!(loads_to_free(&loads, 4, None, false), vec![1, 3, 5]);
    }

    #[test]
    fn an_unregistered_child_holds_every_committed_load() {
        let loads = [load(1, true, 0), load(2, false, 0), load(3, true, 0)];
        assert_eq!(loads_to_free(&loads, 3, None, true), vec![2]);
    }

    #[test]
    fn the_current_load_stays_even_before_its_workers_start() {
        assert!(loads_to_free(&[load(7, true, 0)], 7, None, false).is_empty());
    }

    #[test]
    fn zone_size_rounds_up_and_holds_ten_thousand_peers() {
        assert_eq!(zone_size(1, 2, 0), ZONE_MIN_BYTES);
        assert_eq!(
            zone_size(1, 2, 0),
            zone_size(3, 40, 0),
            "a few more peers keep the size"
        );
        let large = zone_size(1000, 10_000, 0);
        assert_eq!(large, 64 * 1024 * 1024);
        assert!(large.is_power_of_two());
    }
}

#[cfg(test)]
mod reservation_tests {
    use super::*;

    #[test]
    fn a_peer_reservation_holds_its_slot_twice_over() {
        let slot = std::mem::size_of::<crate::table::PeerSlot>();
        // The slab allocator rounds a slot up to a power of two.
        assert!(
            2 * slot.next_power_of_two() <= ZONE_PEER_BYTES,
            "a slot is {slot} bytes"
        );
    }
}
