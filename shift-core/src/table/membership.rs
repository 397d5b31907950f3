//! Peers added and removed at run time. The zone (the FFI module) places a slot for a new peer
//! and gives it a position in every live configuration load; these methods then make the
//! change visible as one new generation, and stamp the table with the zone's membership epoch
//! so that each worker builds its round-robin peer list again on its next request. A removed
//! peer takes no new requests from then on; its slot stays until no worker's list holds it.

use std::sync::atomic::Ordering;

use shift_wire::{PeerOrigin, PeerState};

use super::label::Label;
use super::layout::{encode_state, PeerConfig, PeerSlot};
use super::lock::WriteGuard;

/// What a peer added at run time starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addition {
    pub weight: u32,
    pub state: PeerState,
    pub label: Label,
    /// Through the API, or resolved from a name (whose id is `source`, 0 otherwise).
    pub origin: PeerOrigin,
    pub source: u64,
}

impl Addition {
    /// A peer the API adds.
    pub fn api(weight: u32, state: PeerState, label: Label) -> Addition {
        Addition {
            weight,
            state,
            label,
            origin: PeerOrigin::Api,
            source: 0,
        }
    }
}

impl WriteGuard<'_> {
    /// Makes `slot`, placed for this table, a current peer added at run time, at `order` in the
    /// listing, as `addition` says, at membership `epoch`. One new generation, which it returns.
    pub fn add_peer(&self, slot: &PeerSlot, addition: &Addition, order: u32, epoch: u64) -> u64 {
        self.write_section(|_| {
            slot.set_config(&PeerConfig {
                server: slot.server().to_string(),
                weight: addition.weight,
                down: addition.state == PeerState::Down,
                backup: false,
                label: addition.label,
            });
            slot.weight.store(addition.weight, Ordering::Relaxed);
            slot.state
                .store(encode_state(addition.state), Ordering::Relaxed);
            slot.label.store(addition.label);
            slot.set_origin(addition.origin);
            slot.source.store(addition.source, Ordering::Relaxed);
            slot.removed_epoch.store(0, Ordering::Relaxed);
            slot.set_current(true, order);
            self.table.header.members.store(epoch, Ordering::Release);
        });
        self.bump_generation()
    }

    /// Takes a run-time peer out of the table at membership `epoch`: no new requests from the
    /// next one on. One new generation, which it returns.
    pub fn remove_peer(&self, slot: &PeerSlot, epoch: u64) -> u64 {
        self.write_section(|_| {
            slot.set_current(false, 0);
            slot.removed_epoch.store(epoch, Ordering::Release);
            self.table.header.members.store(epoch, Ordering::Release);
        });
        self.bump_generation()
    }

    /// Keeps the run-time peers `slots` current after a configuration's commit, listed after
    /// its `first_order` config peers, and marks the table's membership at `epoch` when their
    /// set changed (a state file or a replaced zone brought them back).
    pub fn keep_runtime_peers(&self, slots: &[&PeerSlot], first_order: u32, epoch: u64) {
        self.write_section(|_| {
            let mut changed = false;
            for (offset, slot) in slots.iter().enumerate() {
                changed |= !slot.is_current();
                if slot.origin() == PeerOrigin::Config {
                    slot.set_origin(PeerOrigin::Api);
                }
                slot.removed_epoch.store(0, Ordering::Release);
                slot.set_current(true, first_order + offset as u32);
            }
            if changed {
                self.table.header.members.store(epoch, Ordering::Release);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::table::test_support::leaked_slot as slot;
    use shift_wire::{PeerOrigin, PeerState};

    use super::Addition;
    use crate::table::test_support::OwnedTable;
    use crate::table::{Label, Table};

    #[test]
    fn an_added_peer_is_current_listed_last_and_a_new_generation() {
        let owned = OwnedTable::new("app", &[("127.0.0.1:1", 1, false)]);
        let table = owned.view();
        let before = table.generation();
        let added = slot("127.0.0.1:2");
        let generation = table.lock(1, |_| true).unwrap().add_peer(
            added,
            &Addition::api(5, PeerState::Drain, Label::NONE),
            1,
            7,
        );
        assert_eq!(generation, before + 1);
        assert!(added.is_current());
        assert_eq!(added.order(), 1);
        assert_eq!(added.origin(), PeerOrigin::Api);
        assert_eq!(table.header().members(), 7);
        let peers = [owned.peers[0], added];
        let wire = Table::new(owned.header, &peers).to_wire(&[]);
        assert_eq!(wire.peers[1].weight, 5);
        assert_eq!(wire.peers[1].state, PeerState::Drain);
        assert_eq!(wire.peers[1].config_weight, 5);
        assert_eq!(wire.peers[1].origin, PeerOrigin::Api);
        assert_eq!(wire.peers[0].origin, PeerOrigin::Config);
    }

    #[test]
    fn a_removed_peer_leaves_the_current_set_at_its_epoch() {
        let owned = OwnedTable::new("app", &[("127.0.0.1:1", 1, false)]);
        let table = owned.view();
        let added = slot("127.0.0.1:2");
        let guard = table.lock(1, |_| true).unwrap();
        guard.add_peer(added, &Addition::api(1, PeerState::Up, Label::NONE), 1, 3);
        let generation = guard.remove_peer(added, 4);
        drop(guard);
        assert_eq!(generation, table.generation());
        assert!(!added.is_current());
        assert_eq!(added.removed_epoch(), 4);
        assert_eq!(table.header().members(), 4);
        // Added again before its slot went: current once more, no longer marked removed.
        table.lock(1, |_| true).unwrap().add_peer(
            added,
            &Addition::api(2, PeerState::Up, Label::NONE),
            1,
            5,
        );
        assert!(added.is_current());
        assert_eq!(added.removed_epoch(), 0);
    }

    #[test]
    fn runtime_peers_kept_by_a_commit_follow_the_config_peers() {
        let owned = OwnedTable::new(
            "app",
            &[("127.0.0.1:1", 1, false), ("127.0.0.1:2", 1, false)],
        );
        let table = owned.view();
        let restored = slot("127.0.0.1:3");
        let members = table.header().members();
        table
            .lock(1, |_| true)
            .unwrap()
            .keep_runtime_peers(&[restored], 2, 9);
        assert!(restored.is_current());
        assert_eq!(restored.order(), 2);
        assert_eq!(table.header().members(), 9);
        // Already current: the membership does not move.
        table
            .lock(1, |_| true)
            .unwrap()
            .keep_runtime_peers(&[restored], 2, 10);
        assert_eq!(table.header().members(), 9);
        assert_ne!(members, 9);
    }
}
