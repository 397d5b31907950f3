//! What outlives a configuration: committing a new configuration over the runtime values the
//! API set, and carrying values over from a state file or from a zone being replaced.

use std::sync::atomic::Ordering;

use shift_wire::{Health, Histogram, PeerOrigin, PeerState};

use super::label::Label;
use super::layout::{config_state, encode_health, encode_state, PeerConfig, PeerSlot};
use super::lock::{WriteGuard, MAX_GENERATION};
use super::membership::note_first_join;
use super::{CheckMode, Table};

impl WriteGuard<'_> {
    /// Commits a configuration's view of the upstream: `checks` and each peer's config line, in
    /// the configuration's order. A peer whose line changed takes the line's weight and state,
    /// and one whose `shift_label` changed takes that label; every other peer keeps its runtime
    /// values, so nothing the API acknowledged is undone.
    /// The configuration owns its lines: a peer added at run time (through the API or a name)
    /// that is now a line becomes a config peer. Current peers of the table that the
    /// configuration no longer has are in `removed`: they are removed at membership `epoch`,
    /// as the API removes a peer. A peer current for the first time joins at `at_ms`. One new
    /// generation when anything visible changed. Returns what changed, for the log.
    pub fn commit(
        &self,
        checks: CheckMode,
        configs: &[PeerConfig],
        removed: &[&PeerSlot],
        epoch: u64,
        at_ms: u64,
    ) -> Vec<CarryNote> {
        let mut notes = Vec::new();
        let header = self.table.header;
        // A table's first commit is its start, not a change.
        let was_current = header.is_current();
        let mut changed = header.checks() != checks || !removed.is_empty();
        self.write_section(|peers| {
            header.checks.store(checks as u8, Ordering::Relaxed);
            for (order, (peer, config)) in peers.iter().zip(configs).enumerate() {
                changed |= !peer.is_current() || peer.order() != order as u32;
                let existing = peer.is_current();
                let before = peer.config();
                let same_line = before.same_line(config);
                if existing && same_line {
                    let (weight, state) = (peer.weight(), peer.state());
                    if weight != config.weight || state != config_state(config) {
                        notes.push(CarryNote::Kept {
                            server: peer.server().to_string(),
                            weight,
                            state,
                        });
                    }
                }
                if !same_line {
                    peer.weight.store(config.weight, Ordering::Relaxed);
                    peer.state
                        .store(encode_state(config_state(config)), Ordering::Relaxed);
                }
                if before.label != config.label {
                    peer.label.store(config.label);
                }
                if before != *config {
                    changed = true;
                    peer.set_config(config);
                    notes.push(CarryNote::ConfigChanged {
                        server: peer.server().to_string(),
                    });
                }
                peer.set_origin(PeerOrigin::Config);
                peer.source.store(0, Ordering::Relaxed);
                peer.resolved_ms.store(0, Ordering::Relaxed);
                peer.removed_epoch.store(0, Ordering::Release);
                note_first_join(peer, at_ms);
                peer.set_current(true, order as u32);
            }
            for peer in removed {
                peer.set_current(false, 0);
                peer.removed_epoch.store(epoch, Ordering::Release);
            }
            if !removed.is_empty() {
                header.members.store(epoch, Ordering::Release);
            }
            header.set_current(true);
        });
        if changed && was_current {
            self.bump_generation();
        }
        notes
    }

    /// Puts the health of `peers` back to unchecked: for an upstream whose configuration turned
    /// its checks off, where nothing would ever probe an unhealthy peer again.
    pub fn forget_health(&self, peers: &[&PeerSlot]) {
        if peers.iter().all(|peer| peer.health() == Health::Unchecked) {
            return;
        }
        self.write_section(|_| {
            for peer in peers {
                peer.health
                    .store(encode_health(Health::Unchecked), Ordering::Relaxed);
            }
        });
    }

    /// Takes weights, states, labels, health and counters of peers found in `previous` (by
    /// address): a state file on a fresh start, or the zone this one replaces when the zone was
    /// resized. A peer whose config line changed since keeps its config values (and one whose
    /// `shift_label` changed, its config label). The generation continues
    /// from `previous_generation`. Returns what was kept, for the log.
    pub fn carry_over(&self, previous: &[CarriedPeer], previous_generation: u64) -> Vec<CarryNote> {
        let mut notes = Vec::new();
        self.write_section(|peers| {
            for peer in peers {
                let Some(old) = previous
                    .iter()
                    .find(|old| old.config.server == peer.server())
                else {
                    continue;
                };
                if let Some(counters) = &old.counters {
                    counters.store_into(peer);
                }
                if let Some(health) = old.health {
                    peer.health.store(encode_health(health), Ordering::Relaxed);
                }
                let config = peer.config();
                if old.config.label == config.label {
                    peer.label.store(old.label);
                }
                if !old.config.same_line(&config) {
                    notes.push(CarryNote::ConfigChanged {
                        server: peer.server().to_string(),
                    });
                    continue;
                }
                peer.weight.store(old.weight, Ordering::Relaxed);
                peer.state.store(encode_state(old.state), Ordering::Relaxed);
                if old.weight != old.config.weight || old.state != config_state(&old.config) {
                    notes.push(CarryNote::Kept {
                        server: peer.server().to_string(),
                        weight: old.weight,
                        state: old.state,
                    });
                }
            }
        });
        self.table.header.generation.store(
            previous_generation.saturating_add(1).min(MAX_GENERATION),
            Ordering::Release,
        );
        notes
    }
}

/// A peer's runtime values from a state file or from a zone being replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedPeer {
    pub config: PeerConfig,
    pub weight: u32,
    pub state: PeerState,
    pub label: Label,
    /// Kept when a resized zone is replaced; a restart starts unchecked.
    pub health: Option<Health>,
    pub counters: Option<CarriedCounters>,
    /// A `server` line's peer, or one added through the API (which a restart places again).
    pub origin: PeerOrigin,
    /// For a resolved peer, the id of its name (`resolve::source_id`); 0 for others.
    pub source: u64,
}

/// A replaced zone's counters, and the instance of the peer they belong to (its `joined_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedCounters {
    pub joined_ms: u64,
    pub requests: u64,
    pub failures: u64,
    pub responses: [u64; 5],
    pub response_time: Histogram,
    pub header_time: Histogram,
}

impl CarriedCounters {
    fn of(peer: &PeerSlot) -> CarriedCounters {
        CarriedCounters {
            joined_ms: peer.joined_ms(),
            requests: peer.requests.load(Ordering::Relaxed),
            failures: peer.failures.load(Ordering::Relaxed),
            responses: std::array::from_fn(|class| peer.responses[class].load(Ordering::Relaxed)),
            response_time: peer.response_time.snapshot(),
            header_time: peer.header_time.snapshot(),
        }
    }

    fn store_into(&self, peer: &PeerSlot) {
        peer.joined_ms.store(self.joined_ms, Ordering::Relaxed);
        peer.requests.store(self.requests, Ordering::Relaxed);
        peer.failures.store(self.failures, Ordering::Relaxed);
        for (slot, value) in peer.responses.iter().zip(self.responses) {
            slot.store(value, Ordering::Relaxed);
        }
        peer.response_time.store(&self.response_time);
        peer.header_time.store(&self.header_time);
    }
}

impl Table<'_> {
    /// Everything a replaced zone hands to the next one.
    pub fn carried(&self) -> Vec<CarriedPeer> {
        self.peers
            .iter()
            .map(|peer| CarriedPeer {
                config: peer.config(),
                weight: peer.weight(),
                state: peer.state(),
                label: peer.label(),
                health: Some(peer.health()),
                counters: Some(CarriedCounters::of(peer)),
                origin: peer.origin(),
                source: peer.source(),
            })
            .collect()
    }
}

/// What `carry_over` did with a peer, for the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarryNote {
    Kept {
        server: String,
        weight: u32,
        state: PeerState,
    },
    ConfigChanged {
        server: String,
    },
}

#[cfg(test)]
mod tests {
    use shift_wire::PeerState;

    use super::*;
    use crate::table::test_support::{config, route, routes, OwnedTable, NOW_MS};
    use crate::table::{Label, PeerChange, TableHeader};

    #[test]
    fn config_down_peers_start_as_standby() {
        let owned = OwnedTable::new("app", &[("a:1", 5, false), ("b:1", 1, true)]);
        assert_eq!(routes(owned.view()), vec![route(5, true), route(1, false)]);
        let wire = owned.view().to_wire(&[], NOW_MS);
        assert_eq!(wire.peers[1].state, PeerState::Down);
        assert_eq!(wire.generation, 1);
    }
    #[test]
    fn carry_over_keeps_runtime_values_unless_the_config_line_changed() {
        let old = OwnedTable::new(
            "app",
            &[("a:1", 5, false), ("b:1", 5, true), ("c:1", 5, false)],
        );
        let guard = old.view().lock(1, |_| true).unwrap();
        guard.apply(
            &[
                PeerChange {
                    index: 0,
                    weight: Some(0),
                    state: None,
                    ..Default::default()
                },
                PeerChange {
                    index: 1,
                    weight: Some(100),
                    state: Some(PeerState::Up),
                    ..Default::default()
                },
                PeerChange {
                    index: 2,
                    weight: Some(9),
                    state: None,
                    ..Default::default()
                },
            ],
            NOW_MS,
        );
        drop(guard);
        // The new config keeps a:1 and b:1 as they were, changes c:1's weight, adds d:1.
        let new = OwnedTable::new(
            "app",
            &[
                ("a:1", 5, false),
                ("b:1", 5, true),
                ("c:1", 7, false),
                ("d:1", 3, false),
            ],
        );
        let notes = new
            .view()
            .lock(1, |_| true)
            .unwrap()
            .carry_over(&old.view().carried(), old.view().generation());
        let wire = new.view().to_wire(&[], NOW_MS);
        let summary: Vec<_> = wire
            .peers
            .iter()
            .map(|peer| (peer.server.as_str(), peer.weight, peer.state))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a:1", 0, PeerState::Up),
                ("b:1", 100, PeerState::Up),
                ("c:1", 7, PeerState::Up),
                ("d:1", 3, PeerState::Up),
            ]
        );
        assert_eq!(wire.generation, old.view().generation() + 1);
        assert_eq!(
            notes,
            vec![
                CarryNote::Kept {
                    server: "a:1".into(),
                    weight: 0,
                    state: PeerState::Up
                },
                CarryNote::Kept {
                    server: "b:1".into(),
                    weight: 100,
                    state: PeerState::Up
                },
                CarryNote::ConfigChanged {
                    server: "c:1".into()
                },
            ]
        );
    }
    #[test]
    fn a_commit_applies_changed_lines_and_keeps_runtime_values() {
        let a = config("a:1", 5, false);
        let b = config("b:1", 5, true);
        let owned = OwnedTable::with_checks("app", &[a.clone(), b.clone()], CheckMode::Off);
        let table = owned.view();
        assert_eq!(
            table.generation(),
            1,
            "the first commit is the start, not a change"
        );
        table.lock(1, |_| true).unwrap().apply(
            &[
                PeerChange {
                    index: 0,
                    weight: Some(0),
                    state: None,
                    ..Default::default()
                },
                PeerChange {
                    index: 1,
                    weight: Some(100),
                    state: Some(PeerState::Up),
                    ..Default::default()
                },
            ],
            NOW_MS,
        );
        assert_eq!(table.generation(), 2);

        // The same configuration again: nothing changes, not even the generation.
        let notes = table.lock(1, |_| true).unwrap().commit(
            CheckMode::Off,
            &[a.clone(), b.clone()],
            &[],
            1,
            NOW_MS,
        );
        assert_eq!(table.generation(), 2);
        assert_eq!(
            notes,
            vec![
                CarryNote::Kept {
                    server: "a:1".into(),
                    weight: 0,
                    state: PeerState::Up
                },
                CarryNote::Kept {
                    server: "b:1".into(),
                    weight: 100,
                    state: PeerState::Up
                },
            ]
        );

        // b's line changes: b takes it, a keeps its runtime weight; one new generation.
        let b_heavier = config("b:1", 7, false);
        let notes = table.lock(1, |_| true).unwrap().commit(
            CheckMode::Off,
            &[a.clone(), b_heavier],
            &[],
            1,
            NOW_MS,
        );
        assert!(notes.contains(&CarryNote::ConfigChanged {
            server: "b:1".into()
        }));
        let wire = table.to_wire(&[], NOW_MS);
        let values: Vec<_> = wire
            .peers
            .iter()
            .map(|p| (p.weight, p.state, p.config_weight))
            .collect();
        assert_eq!(values, [(0, PeerState::Up, 5), (7, PeerState::Up, 7)]);
        assert_eq!(wire.generation, 3);
    }
    #[test]
    fn labels_follow_their_shift_label_lines_and_keep_api_changes_otherwise() {
        let blue = Label::parse("blue").unwrap();
        let labelled = |label: Label| PeerConfig {
            label,
            ..config("a:1", 5, false)
        };
        let owned = OwnedTable::with_checks("app", &[labelled(blue)], CheckMode::Off);
        let table = owned.view();
        let label_now = || table.to_wire(&[], NOW_MS).peers[0].label.clone();
        assert_eq!(label_now().as_deref(), Some("blue"));
        table.lock(1, |_| true).unwrap().apply(
            &[PeerChange {
                index: 0,
                weight: Some(50),
                label: Some(Label::parse("v2").unwrap()),
                ..Default::default()
            }],
            NOW_MS,
        );
        // A reload with the same `shift_label`: the API's label and weight stay.
        table
            .lock(1, |_| true)
            .unwrap()
            .commit(CheckMode::Off, &[labelled(blue)], &[], 1, NOW_MS);
        assert_eq!(label_now().as_deref(), Some("v2"));
        // A changed `shift_label` takes its label; the line is the same, so the weight stays.
        let green = Label::parse("green").unwrap();
        let generation = table.generation();
        table
            .lock(1, |_| true)
            .unwrap()
            .commit(CheckMode::Off, &[labelled(green)], &[], 1, NOW_MS);
        let wire = table.to_wire(&[], NOW_MS);
        assert_eq!(
            (wire.peers[0].label.as_deref(), wire.peers[0].weight),
            (Some("green"), 50)
        );
        assert_eq!(wire.generation, generation + 1);
        // A state file saved under the same `shift_label` gives its label back.
        let mut saved = table.carried();
        saved[0].label = Label::parse("v3").unwrap();
        let restarted = OwnedTable::with_checks("app", &[labelled(green)], CheckMode::Off);
        restarted
            .view()
            .lock(1, |_| true)
            .unwrap()
            .carry_over(&saved, 4);
        assert_eq!(
            restarted.view().to_wire(&[], NOW_MS).peers[0]
                .label
                .as_deref(),
            Some("v3")
        );
    }
    #[test]
    fn a_commit_without_a_peer_takes_it_out_of_the_current_set() {
        let a = config("a:1", 1, false);
        let b = config("b:1", 1, false);
        let owned = OwnedTable::with_checks("app", &[a.clone(), b], CheckMode::Off);
        let [slot_a, slot_b] = [owned.peers[0], owned.peers[1]];
        assert!(slot_a.is_current() && slot_b.is_current());
        let only_a = [slot_a];
        let table = Table::new(owned.header, &only_a);
        table
            .lock(1, |_| true)
            .unwrap()
            .commit(CheckMode::Mandatory, &[a], &[slot_b], 1, NOW_MS);
        assert!(slot_a.is_current() && !slot_b.is_current());
        assert_eq!(table.generation(), 2, "a peer left");
        assert_eq!(owned.header.checks(), CheckMode::Mandatory);
    }

    #[test]
    fn a_peer_joins_at_its_first_commit_and_a_replaced_zone_hands_its_instance_on() {
        let a = config("a:1", 1, false);
        let old = OwnedTable::with_checks("app", std::slice::from_ref(&a), CheckMode::Off);
        assert_eq!(old.peers[0].joined_ms(), NOW_MS);
        // A later commit of the same line: the same instance.
        old.view().lock(1, |_| true).unwrap().commit(
            CheckMode::Off,
            std::slice::from_ref(&a),
            &[],
            1,
            NOW_MS + 10,
        );
        assert_eq!(old.peers[0].joined_ms(), NOW_MS);

        // A resized zone's new table: carried over first, then committed, as on a reload.
        let header: &'static TableHeader =
            Box::leak(Box::new(TableHeader::new("app", CheckMode::Off).unwrap()));
        let fresh = [crate::table::test_support::leaked_slot("a:1")];
        let new = Table::new(header, &fresh);
        let guard = new.lock(1, |_| true).unwrap();
        guard.carry_over(&old.view().carried(), old.view().generation());
        guard.commit(CheckMode::Off, &[a], &[], 1, NOW_MS + 20);
        drop(guard);
        assert_eq!(
            fresh[0].joined_ms(),
            NOW_MS,
            "the same instance in the new zone"
        );
    }
}
