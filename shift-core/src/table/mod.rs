//! The per-upstream peer table that lives in shared memory.
//!
//! A table is one upstream's truth, shared by every generation of workers alive at the moment:
//! its header ([`TableHeader`]) is found by the upstream's name and its peers ([`PeerSlot`]) by
//! their address, and both outlive configuration loads, so a change any worker acknowledges is
//! seen by all of them and by the next configuration, and counters never need carrying over.
//! Each worker views the slots of its own configuration's peers in its own order (a [`Table`]
//! pairs a header with such a list of slots). The slots hold plain atomics and fixed-size names
//! (the links between them are only followed by the FFI module, under the zone's lock), so every
//! worker can read them without a lock. Weights, states and health are guarded by a sequence lock: a writer makes `seq` odd,
//! changes them, and makes it even again; a reader that saw the same even `seq` before and after
//! its reads has a consistent snapshot. Workers compare `seq` with the one they last copied on
//! every request, which is one atomic load on the data path. Writers (the admin API, in any
//! worker) take `writer`, which holds their pid so that a lock left by a crashed worker can be
//! taken over. Counters are updated with relaxed atomic adds outside the sequence lock.
//!
//! Requests in flight are not counted here: each worker counts its own (see [`crate::inflight`]),
//! so that a worker that dies mid-request does not leave a peer looking busy forever.
//!
//! The FFI module places headers and slots in the shared zone; everything here works on
//! references to them, and the tests use ordinary heap memory.

mod carry;
mod closing;
mod ejection;
mod label;
mod latency;
mod layout;
mod lock;
mod membership;
mod peer_wire;
#[cfg(test)]
pub(crate) mod test_support;

use std::sync::atomic::{fence, Ordering};

use shift_wire::{Health, PeerState, Upstream};

pub use carry::{CarriedCounters, CarriedPeer, CarryNote};
pub use ejection::{Early, Ejected, Returned};
pub use label::{BadLabel, Label, LABEL_CAPACITY};
pub(crate) use layout::PeerValues;
pub use layout::{
    CheckMode, FixedName, NameTooLong, PeerConfig, PeerSlot, TableHeader, FREED_BYTE,
    NAME_CAPACITY, SLOT_CHECK,
};
pub use lock::{LockError, WriteGuard, MAX_GENERATION};
pub use membership::Addition;

/// How many times a reader retries a snapshot that a writer disturbed.
const READ_ATTEMPTS: usize = 64;

/// How a worker should treat a peer, copied into its round-robin peer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub weight: u32,
    /// False for weight 0, `drain`, `down`, unhealthy and ejected peers: they get no new
    /// requests.
    pub eligible: bool,
    /// Whether `shift_pin` may send a request to it: whatever its weight and state, unless its
    /// health check calls it unhealthy or `shift_eject` ejected it.
    pub pinnable: bool,
    pub label: Label,
    /// When its slow start began (`crate::slow_start`), 0 for none, and the window its change
    /// gave the ramp (0: the upstream's; `SlowStart::with_window`).
    pub ramp_from_ms: u64,
    pub ramp_window_ms: u32,
}

/// A weight, state or label change of one peer, by its index in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerChange {
    pub index: usize,
    pub weight: Option<u32>,
    pub state: Option<PeerState>,
    /// `Label::NONE` takes the label away.
    pub label: Option<Label>,
    /// The window of the ramp this change starts if it lets the peer take requests (ms; 0:
    /// none); `None` follows the upstream's `shift_slow_start`.
    pub slow_start_ms: Option<u32>,
    /// With a drain or `down`: close the requests it still carries on this schedule.
    pub close: Option<crate::drain_close::CloseOrder>,
}

/// A view of one upstream's table: its header and the slots of some of its peers, in an order
/// of the viewer's choosing (a worker's round-robin order, or the committed configuration's).
#[derive(Clone, Copy)]
pub struct Table<'a> {
    pub(crate) header: &'a TableHeader,
    pub(crate) peers: &'a [&'a PeerSlot],
}

impl<'a> Table<'a> {
    /// Pairs a header with slots of its peers.
    pub fn new(header: &'a TableHeader, peers: &'a [&'a PeerSlot]) -> Table<'a> {
        Table { header, peers }
    }

    pub fn header(&self) -> &'a TableHeader {
        self.header
    }

    pub fn name(&self) -> &'a str {
        self.header.name()
    }

    pub fn peers(&self) -> &'a [&'a PeerSlot] {
        self.peers
    }

    pub fn generation(&self) -> u64 {
        self.header.generation.load(Ordering::Acquire)
    }

    /// The current sequence number; it changes whenever routing may have changed.
    pub fn seq(&self) -> u64 {
        self.header.seq.load(Ordering::Acquire)
    }

    pub fn peer_index(&self, server: &str) -> Option<usize> {
        self.peers.iter().position(|peer| peer.server() == server)
    }

    /// Reads the routing of every peer if `seq` differs from `seen`: returns the snapshot's `seq`
    /// and fills `routes`. Returns `None` when nothing changed, or when a writer kept the table
    /// busy for the whole attempt (the caller keeps what it had and tries on the next request).
    pub fn routes_if_changed(&self, seen: u64, routes: &mut Vec<Route>) -> Option<u64> {
        if self.seq() == seen {
            return None;
        }
        self.read_consistent(|peers| {
            routes.clear();
            let mandatory = self.header.checks() == CheckMode::Mandatory;
            routes.extend(peers.iter().map(|peer| {
                let values = PeerValues::of(peer);
                Route {
                    weight: values.weight,
                    eligible: values.eligible(mandatory),
                    pinnable: values.health != Health::Unhealthy && values.ejected_until_ms == 0,
                    label: values.label,
                    ramp_from_ms: values.ramp_from_ms,
                    ramp_window_ms: values.ramp_window_ms,
                }
            }));
        })
        .map(|(seq, ())| seq)
    }

    /// The upstream as the API shows it at `now_ms`: weights and states from one consistent
    /// snapshot. `active` holds each peer's requests in flight (missing ones count as 0).
    pub fn to_wire(&self, active: &[u64], now_ms: u64) -> Upstream {
        let snapshot = self.read_consistent(|peers| {
            peers
                .iter()
                .map(|peer| PeerValues::of(peer))
                .collect::<Vec<_>>()
        });
        // A writer that holds the table for a whole snapshot attempt is dead or stuck; show the
        // values as they are rather than nothing.
        let values = snapshot
            .map(|(_, values)| values)
            .unwrap_or_else(|| self.peers.iter().map(|peer| PeerValues::of(peer)).collect());
        let checks = self.header.checks();
        let slow_start = self.header.slow_start();
        Upstream {
            name: self.name().to_string(),
            generation: self.generation(),
            peers: self
                .peers
                .iter()
                .zip(values)
                .enumerate()
                .map(|(index, (peer, values))| {
                    let active = active.get(index).copied().unwrap_or(0);
                    peer.to_wire(values, active, checks, (slow_start, now_ms))
                })
                .collect(),
            pins: self.header.pins(),
            slow_start_ms: slow_start.is_on().then_some(slow_start.window_ms as u64),
        }
    }

    fn read_consistent<T>(&self, mut read: impl FnMut(&[&PeerSlot]) -> T) -> Option<(u64, T)> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.header.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let value = read(self.peers);
            fence(Ordering::Acquire);
            if self.header.seq.load(Ordering::Relaxed) == before {
                return Some((before, value));
            }
        }
        None
    }
}

/// The table slot of the peer round robin chose: its position in the worker's peer list, which
/// is in table order. Linear, as the lists are short and this beats hashing a pointer.
pub fn slot_of<T: PartialEq>(peers: &[T], chosen: &T) -> Option<usize> {
    peers.iter().position(|peer| peer == chosen)
}

/// Weight 0, `drain`, `down` and unhealthy peers take no new requests; nor do unchecked ones
/// when checks are `mandatory`.
pub fn eligible(weight: u32, state: PeerState, health: Health, mandatory: bool) -> bool {
    weight > 0
        && state == PeerState::Up
        && health != Health::Unhealthy
        && !(mandatory && health == Health::Unchecked)
}

#[cfg(test)]
mod tests {
    use shift_wire::PeerState;

    use super::test_support::OwnedTable;
    use super::*;
    use crate::table::test_support::NOW_MS;

    #[test]
    fn drain_and_unhealthy_peers_are_not_eligible() {
        assert!(eligible(1, PeerState::Up, Health::Unchecked, false));
        assert!(eligible(1, PeerState::Up, Health::Healthy, false));
        assert!(!eligible(0, PeerState::Up, Health::Healthy, false));
        assert!(!eligible(1, PeerState::Drain, Health::Healthy, false));
        assert!(!eligible(1, PeerState::Down, Health::Healthy, false));
        assert!(!eligible(1, PeerState::Up, Health::Unhealthy, false));
        // Mandatory checks: unchecked peers wait for their first pass.
        assert!(!eligible(1, PeerState::Up, Health::Unchecked, true));
        assert!(eligible(1, PeerState::Up, Health::Healthy, true));
    }
    #[test]
    fn the_wire_says_which_peers_take_requests() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Mandatory);
        let table = owned.view();
        let eligible = |table: Table| -> Vec<bool> {
            table
                .to_wire(&[], NOW_MS)
                .peers
                .iter()
                .map(|peer| peer.eligible)
                .collect()
        };
        assert_eq!(
            eligible(table),
            [false, false],
            "mandatory: unchecked peers wait"
        );
        table
            .record_check(0, table.peers()[0].joined_ms(), Ok(()), 1, 1, 10, 1, |_| {
                true
            })
            .unwrap();
        assert_eq!(eligible(table), [true, false]);
    }
}
