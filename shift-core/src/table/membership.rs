//! Peers added and removed at run time. The zone (the FFI module) places a slot for a new peer
//! and gives it a position in every live configuration load; these methods then make the
//! change visible as one new generation, and stamp the table with the zone's membership epoch
//! so that each worker builds its round-robin peer list again on its next request. A removed
//! peer takes no new requests from then on; its slot stays until no worker's list holds it.
//!
//! A replica is not its address: Docker gives a new container the address of one just
//! removed. A peer that becomes current again after it was removed (its slot kept for the
//! lists that still hold it) is a new instance: a later `joined_ms`, health unchecked (no
//! traffic on the old instance's checks), counters and latencies from zero. Requests the old
//! instance still had in flight finish into the new one's counters; a drain before removal
//! leaves none.

use std::sync::atomic::Ordering;

use shift_wire::{Health, PeerOrigin, PeerState};

use super::label::Label;
use super::layout::{encode_health, encode_state, PeerConfig, PeerSlot};
use super::lock::{start_ramp, takes_requests, WriteGuard};
use super::CheckMode;
use crate::drain_close::CloseOrder;
use crate::slow_start::RAMP_AT_FIRST_PASS;

/// What a peer added at run time starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addition {
    pub weight: u32,
    pub state: PeerState,
    /// What its line says: a POST is its own line; a resolved peer's is its name's `server`
    /// line, whatever weight and state it joins with. The API shows it as `config_weight`.
    pub line_weight: u32,
    pub line_down: bool,
    pub label: Label,
    /// Through the API, or resolved from a name (whose id is `source`, 0 otherwise).
    pub origin: PeerOrigin,
    pub source: u64,
    /// When it is added (Unix ms): the new instance's `joined_ms`.
    pub at_ms: u64,
    /// The window of its ramp (ms; 0: none), when the API gives one; `None` follows the
    /// upstream's `shift_slow_start`.
    pub slow_start_ms: Option<u32>,
}

impl Addition {
    /// A peer the API adds at `at_ms`.
    pub fn api(weight: u32, state: PeerState, label: Label, at_ms: u64) -> Addition {
        Addition {
            weight,
            state,
            line_weight: weight,
            line_down: state == PeerState::Down,
            label,
            origin: PeerOrigin::Api,
            source: 0,
            at_ms,
            slow_start_ms: None,
        }
    }
}

/// Makes `slot`, which is not current, a new instance of its address joining at `at_ms`: its
/// `joined_ms` later than any instance before it in this slot, health unchecked and checked at
/// once, every counter from zero. Called inside a write section.
fn start_instance(slot: &PeerSlot, at_ms: u64) {
    // Never 0 ("not joined yet"), and later than the instance before it in this slot.
    let joined = at_ms.max(slot.joined_ms() + 1);
    slot.joined_ms.store(joined, Ordering::Relaxed);
    slot.health
        .store(encode_health(Health::Unchecked), Ordering::Relaxed);
    slot.next_check_ms.store(0, Ordering::Relaxed);
    slot.check_fails.store(0, Ordering::Relaxed);
    slot.check_passes.store(0, Ordering::Relaxed);
    slot.last_check_ms.store(0, Ordering::Relaxed);
    slot.last_error.store(0, Ordering::Relaxed);
    slot.requests.store(0, Ordering::Relaxed);
    slot.failures.store(0, Ordering::Relaxed);
    for class in &slot.responses {
        class.store(0, Ordering::Relaxed);
    }
    slot.response_time.clear();
    slot.header_time.clear();
    slot.ramp_from_ms.store(0, Ordering::Relaxed);
    slot.ramp_window_ms.store(0, Ordering::Relaxed);
    slot.consecutive_failures.store(0, Ordering::Relaxed);
    slot.ejections.store(0, Ordering::Relaxed);
    slot.ejected_until_ms.store(0, Ordering::Relaxed);
    slot.forget_close();
}

/// A slot becoming current at `at_ms` that never was before (a new `server` line, a run-time
/// peer placed again by a restart) takes that as its `joined_ms`; one that was current before
/// keeps its own (a carried instance, or a run-time peer that became a line).
pub(crate) fn note_first_join(slot: &PeerSlot, at_ms: u64) {
    if slot.joined_ms() == 0 {
        slot.joined_ms.store(at_ms.max(1), Ordering::Relaxed);
    }
}

impl WriteGuard<'_> {
    /// Makes `slot`, placed for this table, a current peer added at run time, at `order` in the
    /// listing, as `addition` says, at membership `epoch`: a new instance unless it is current
    /// already. One new generation, which it returns.
    pub fn add_peer(&self, slot: &PeerSlot, addition: &Addition, order: u32, epoch: u64) -> u64 {
        let mandatory = self.table.header.checks() == CheckMode::Mandatory;
        let slow_start = self.table.header.slow_start();
        self.write_section(|_| {
            let was_eligible = slot.is_current() && takes_requests(slot, mandatory);
            let joins = !slot.is_current();
            if joins {
                start_instance(slot, addition.at_ms);
            }
            slot.set_config(&PeerConfig {
                server: slot.server().to_string(),
                weight: addition.line_weight,
                down: addition.line_down,
                backup: false,
                label: addition.label,
            });
            slot.weight.store(addition.weight, Ordering::Relaxed);
            slot.state
                .store(encode_state(addition.state), Ordering::Relaxed);
            slot.label.store(addition.label);
            slot.set_origin(addition.origin);
            slot.source.store(addition.source, Ordering::Relaxed);
            // The answer that adds a resolved peer is its first.
            let resolved = if addition.origin == PeerOrigin::Resolved {
                addition.at_ms
            } else {
                0
            };
            slot.resolved_ms.store(resolved, Ordering::Relaxed);
            slot.removed_epoch.store(0, Ordering::Relaxed);
            // A peer that joins (or comes back) taking requests ramps up from now; one that
            // joins waiting for its first passed check (`mandatory`) ramps from that pass.
            if !was_eligible {
                if takes_requests(slot, mandatory) {
                    start_ramp(slot, slow_start, addition.slow_start_ms, addition.at_ms);
                } else if joins {
                    start_ramp(slot, slow_start, addition.slow_start_ms, RAMP_AT_FIRST_PASS);
                }
            }
            slot.set_current(true, order);
            self.table.header.members.store(epoch, Ordering::Release);
        });
        self.bump_generation()
    }

    /// `remove_peer`, and the requests it still carries closed as `close` says (given at
    /// `now_ms`, in the same write section).
    pub fn remove_peer_closing(
        &self,
        slot: &PeerSlot,
        epoch: u64,
        close: Option<CloseOrder>,
        now_ms: u64,
    ) -> u64 {
        self.write_section(|_| slot.follow_close_order(None, close, now_ms));
        self.remove_peer(slot, epoch)
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
    /// set changed (a state file or a replaced zone brought them back); one that never was
    /// current joins at `at_ms`.
    pub fn keep_runtime_peers(
        &self,
        slots: &[&PeerSlot],
        first_order: u32,
        epoch: u64,
        at_ms: u64,
    ) {
        self.write_section(|_| {
            let mut changed = false;
            for (offset, slot) in slots.iter().enumerate() {
                changed |= !slot.is_current();
                note_first_join(slot, at_ms);
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
    use shift_wire::{Health, PeerOrigin, PeerState};

    use super::Addition;
    use crate::table::test_support::{OwnedTable, NOW_MS};
    use crate::table::{CheckMode, Label, Table};

    #[test]
    fn an_added_peer_is_current_listed_last_and_a_new_generation() {
        let owned = OwnedTable::new("app", &[("127.0.0.1:1", 1, false)]);
        let table = owned.view();
        let before = table.generation();
        let added = slot("127.0.0.1:2");
        let generation = table.lock(1, |_| true).unwrap().add_peer(
            added,
            &Addition::api(5, PeerState::Drain, Label::NONE, NOW_MS),
            1,
            7,
        );
        assert_eq!(generation, before + 1);
        assert!(added.is_current());
        assert_eq!(added.order(), 1);
        assert_eq!(added.origin(), PeerOrigin::Api);
        assert_eq!(table.header().members(), 7);
        let peers = [owned.peers[0], added];
        let wire = Table::new(owned.header, &peers).to_wire(&[], NOW_MS);
        assert_eq!(wire.peers[1].weight, 5);
        assert_eq!(wire.peers[1].state, PeerState::Drain);
        assert_eq!(wire.peers[1].config_weight, 5);
        assert_eq!(wire.peers[1].origin, PeerOrigin::Api);
        assert_eq!(wire.peers[0].origin, PeerOrigin::Config);
    }

    #[test]
    fn a_peer_added_taking_requests_ramps_up_from_its_join_and_the_api_shows_it() {
        let owned = OwnedTable::new("app", &[("127.0.0.1:1", 1, false)]);
        let table = owned.view();
        owned.header.set_slow_start(crate::slow_start::SlowStart {
            window_ms: 10_000,
            min_permille: 100,
            aggression_centi: 100,
        });
        let added = slot("127.0.0.1:2");
        let standby = slot("127.0.0.1:3");
        let guard = table.lock(1, |_| true).unwrap();
        guard.add_peer(
            added,
            &Addition::api(100, PeerState::Up, Label::NONE, NOW_MS),
            1,
            7,
        );
        guard.add_peer(
            standby,
            &Addition::api(100, PeerState::Down, Label::NONE, NOW_MS),
            2,
            8,
        );
        drop(guard);
        let peers = [owned.peers[0], added, standby];
        let wire = Table::new(owned.header, &peers).to_wire(&[], NOW_MS + 5_000);
        let ramp = wire.peers[1].ramp.expect("ramping");
        assert_eq!(
            (ramp.effective_weight, ramp.ramp_ends_ms),
            (50, NOW_MS + 10_000)
        );
        assert_eq!(
            wire.peers[0].ramp, None,
            "a server line at start does not ramp"
        );
        assert_eq!(
            wire.peers[2].ramp, None,
            "a standby takes no requests to ramp"
        );
        let later = Table::new(owned.header, &peers).to_wire(&[], NOW_MS + 10_000);
        assert_eq!(later.peers[1].ramp, None, "the ramp is over");
    }

    #[test]
    fn a_removed_peer_leaves_the_current_set_at_its_epoch() {
        let owned = OwnedTable::new("app", &[("127.0.0.1:1", 1, false)]);
        let table = owned.view();
        let added = slot("127.0.0.1:2");
        let guard = table.lock(1, |_| true).unwrap();
        guard.add_peer(
            added,
            &Addition::api(1, PeerState::Up, Label::NONE, NOW_MS),
            1,
            3,
        );
        let generation = guard.remove_peer(added, 4);
        drop(guard);
        assert_eq!(generation, table.generation());
        assert!(!added.is_current());
        assert_eq!(added.removed_epoch(), 4);
        assert_eq!(table.header().members(), 4);
        // Added again before its slot went: current once more, no longer marked removed.
        table.lock(1, |_| true).unwrap().add_peer(
            added,
            &Addition::api(2, PeerState::Up, Label::NONE, NOW_MS),
            1,
            5,
        );
        assert!(added.is_current());
        assert_eq!(added.removed_epoch(), 0);
    }

    #[test]
    fn an_address_added_again_after_its_removal_is_a_new_instance() {
        let owned = OwnedTable::checked("app", &["127.0.0.1:1"], CheckMode::On);
        let table = owned.view();
        let added = slot("127.0.0.1:2");
        let peers = [owned.peers[0], added];
        let table_with = Table::new(owned.header, &peers);
        let up = |at_ms| Addition::api(3, PeerState::Up, Label::NONE, at_ms);
        table
            .lock(1, |_| true)
            .unwrap()
            .add_peer(added, &up(NOW_MS), 1, 3);
        assert_eq!(added.joined_ms(), NOW_MS);
        // Its first instance takes traffic and passes checks.
        added.record_request();
        added.record_finish(true, Some(502));
        added.record_times(40, Some(10));
        table_with
            .record_check(1, NOW_MS, Ok(()), 1, 1, NOW_MS + 5, 1, |_| true)
            .unwrap();
        table_with.claim_check(1, 1_000, 5_000);
        let eject = crate::eject::EjectArgs {
            max_percent: 100,
            ..Default::default()
        };
        table_with.eject(1, &eject, NOW_MS, 1, |_| true).unwrap();
        let first = table_with.to_wire(&[], NOW_MS).peers[1].clone();
        assert_eq!((first.requests, first.health), (1, Health::Healthy));
        assert_eq!(first.ejection.ejections, 1);

        // Removed, then the address comes back within the same millisecond (the slot is still
        // held by a worker's list): another instance, with nothing of the first one's.
        let guard = table.lock(1, |_| true).unwrap();
        guard.remove_peer(added, 4);
        guard.add_peer(added, &up(NOW_MS), 1, 5);
        drop(guard);
        let second = table_with.to_wire(&[], NOW_MS).peers[1].clone();
        assert_eq!(
            second.joined_ms,
            NOW_MS + 1,
            "later than the first instance"
        );
        assert_eq!(second.health, Health::Unchecked);
        assert_eq!((second.requests, second.failures), (0, 0));
        assert_eq!(second.ejection, shift_wire::Ejection::default());
        assert_eq!(second.responses.server_error, 0);
        assert!(second.response_time.counts.iter().all(|&count| count == 0));
        assert_eq!(second.header_time.sum_ms, 0);
        assert!(
            table_with.claim_check(1, 1_001, 5_000),
            "checked at once, not at the first instance's next time"
        );
        // A check the first instance claimed, finishing now, says nothing of the second.
        let late = table_with
            .record_check(1, first.joined_ms, Ok(()), 1, 1, NOW_MS + 9, 1, |_| true)
            .unwrap();
        assert_eq!(late, None);
        let after_late = table_with.to_wire(&[], NOW_MS).peers[1].clone();
        assert_eq!(after_late.health, Health::Unchecked);
        assert_eq!(after_late.check.and_then(|check| check.last_check_ms), None);

        // An add of a current peer (the API answers 409 instead, a lookup skips it) keeps the
        // instance.
        let guard = table.lock(1, |_| true).unwrap();
        added.record_request();
        guard.add_peer(added, &up(NOW_MS + 60_000), 1, 6);
        drop(guard);
        let same = table_with.to_wire(&[], NOW_MS).peers[1].clone();
        assert_eq!((same.joined_ms, same.requests), (NOW_MS + 1, 1));
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
            .keep_runtime_peers(&[restored], 2, 9, NOW_MS);
        assert!(restored.is_current());
        assert_eq!(restored.order(), 2);
        assert_eq!(table.header().members(), 9);
        // Already current: the membership does not move.
        table
            .lock(1, |_| true)
            .unwrap()
            .keep_runtime_peers(&[restored], 2, 10, NOW_MS);
        assert_eq!(table.header().members(), 9);
        assert_ne!(members, 9);
    }
}
