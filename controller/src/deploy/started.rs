//! What a side a deploy just started must show before traffic moves to it. Each Nginx is
//! compared with itself, right after the start hook: a later lookup of a resolved name (an
//! address the side's container had before may be another container's by now, and the next
//! answer drops it) and a later check that passed (health stays `healthy` until `fails` checks
//! in a row failed, so a container recreated at its old address must pass one itself). No
//! clock is compared with another machine's.

use std::collections::BTreeMap;

use shift_wire::{Health, Peer, PeerOrigin, Upstream};

/// Where a peer stood when the wait began: its instance, its last lookup and its last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamps {
    joined_ms: u64,
    resolved_ms: Option<u64>,
    last_check_ms: Option<u64>,
}

/// Every peer of every Nginx (in the fleet's order) as it stood right after the start hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartBaseline {
    hosts: Vec<BTreeMap<String, Stamps>>,
}

impl StartBaseline {
    pub fn of(states: &[Upstream]) -> StartBaseline {
        let hosts = states
            .iter()
            .map(|state| {
                state
                    .peers
                    .iter()
                    .map(|peer| {
                        let stamps = Stamps {
                            joined_ms: peer.joined_ms,
                            resolved_ms: peer.resolved_ms,
                            last_check_ms: peer
                                .check
                                .as_ref()
                                .and_then(|check| check.last_check_ms),
                        };
                        (peer.server.clone(), stamps)
                    })
                    .collect()
            })
            .collect();
        StartBaseline { hosts }
    }

    /// Whether it was taken from the same Nginx instances as `states` (a host that came or
    /// went shifts the order: take it again).
    pub fn fits(&self, states: &[Upstream]) -> bool {
        self.hosts.len() == states.len()
    }

    /// What `peer`, of the Nginx at `index`, still has to show to count as the started
    /// side's; `None` when it is ready. A peer that was not there (or was another instance)
    /// when the wait began needs no later lookup, only a passed check. `Err` when it never can:
    /// its module does not report lookups.
    pub fn missing(&self, index: usize, peer: &Peer) -> Result<Option<String>, String> {
        let server = &peer.server;
        let before = self
            .hosts
            .get(index)
            .and_then(|peers| peers.get(server))
            .filter(|stamps| stamps.joined_ms == peer.joined_ms);
        if peer.origin == PeerOrigin::Resolved {
            let Some(resolved) = peer.resolved_ms else {
                return Err(format!(
                    "this Nginx's module does not say when it last looked up {server} (it is \
                     older than shiftctl): upgrade it, or name the side by address"
                ));
            };
            if before.is_some_and(|stamps| stamps.resolved_ms >= Some(resolved)) {
                return Ok(Some(format!(
                    "a lookup of its name after the start that gives {server}"
                )));
            }
        }
        let Some(check) = peer.check.as_ref() else {
            return Ok(None);
        };
        let checked_since = match (
            before.and_then(|stamps| stamps.last_check_ms),
            check.last_check_ms,
        ) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(then), Some(now)) => now > then,
        };
        let passed = peer.health == Health::Healthy && check.last_error.is_none();
        if checked_since && passed {
            return Ok(None);
        }
        Ok(Some(match &check.last_error {
            Some(error) => format!("a passed health check of {server} (last: {error})"),
            None => format!("a passed health check of {server} after the start"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shift_wire::{CheckStatus, PeerState};

    fn peer(server: &str, origin: PeerOrigin) -> Peer {
        Peer {
            server: server.into(),
            weight: 0,
            state: PeerState::Drain,
            health: Health::Healthy,
            label: Some("green".into()),
            eligible: false,
            backup: false,
            origin,
            joined_ms: 100,
            resolved_ms: (origin == PeerOrigin::Resolved).then_some(1_000),
            ramp: None,
            ejection: Default::default(),
            drain_close: Default::default(),
            config_weight: 1,
            requests: 0,
            failures: 0,
            active: 0,
            responses: Default::default(),
            response_time: Default::default(),
            header_time: Default::default(),
            check: Some(CheckStatus {
                last_check_ms: Some(2_000),
                last_error: None,
                consecutive_fails: 0,
                consecutive_passes: 2,
            }),
        }
    }

    fn upstream(peers: Vec<Peer>) -> Upstream {
        Upstream {
            name: "backend".into(),
            generation: 1,
            peers,
            pins: Default::default(),
            slow_start_ms: None,
        }
    }

    #[test]
    fn a_resolved_peer_needs_a_later_lookup_and_a_later_passed_check() {
        let old = peer("172.18.0.3:8000", PeerOrigin::Resolved);
        let baseline = StartBaseline::of(&[upstream(vec![old.clone()])]);
        let missing = baseline.missing(0, &old).unwrap().unwrap();
        assert!(
            missing.contains("a lookup of its name after the start"),
            "{missing}"
        );

        // Looked up again (its clock may be behind the controller's: only its own counts).
        let looked_up = Peer {
            resolved_ms: Some(1_001),
            ramp: None,
            ejection: Default::default(),
            ..old.clone()
        };
        let missing = baseline.missing(0, &looked_up).unwrap().unwrap();
        assert!(missing.contains("a passed health check"), "{missing}");
        // Healthy still, but its last check failed: the container at its address is new.
        let failed = Peer {
            check: Some(CheckStatus {
                last_check_ms: Some(2_500),
                last_error: Some("status 500".into()),
                consecutive_fails: 1,
                consecutive_passes: 0,
            }),
            ..looked_up.clone()
        };
        assert!(baseline
            .missing(0, &failed)
            .unwrap()
            .unwrap()
            .contains("status 500"));
        let passed = Peer {
            check: Some(CheckStatus {
                last_check_ms: Some(2_500),
                last_error: None,
                consecutive_fails: 0,
                consecutive_passes: 3,
            }),
            ..looked_up
        };
        assert_eq!(baseline.missing(0, &passed), Ok(None));
    }

    #[test]
    fn a_peer_that_appeared_after_the_start_needs_only_a_passed_check() {
        let baseline = StartBaseline::of(&[upstream(vec![])]);
        let new = peer("172.18.0.5:8000", PeerOrigin::Resolved);
        assert_eq!(baseline.missing(0, &new), Ok(None));
        // Another instance at an address that was there: as new.
        let old = peer("172.18.0.3:8000", PeerOrigin::Resolved);
        let baseline = StartBaseline::of(&[upstream(vec![old.clone()])]);
        let rejoined = Peer {
            joined_ms: 300,
            ..old
        };
        assert_eq!(baseline.missing(0, &rejoined), Ok(None));
        let unchecked = Peer {
            health: Health::Unchecked,
            check: Some(CheckStatus {
                last_check_ms: None,
                last_error: None,
                consecutive_fails: 0,
                consecutive_passes: 0,
            }),
            ..rejoined
        };
        assert!(matches!(baseline.missing(0, &unchecked), Ok(Some(_))));
    }

    #[test]
    fn a_static_peer_without_checks_is_ready_and_an_old_module_is_named() {
        let mut plain = peer("127.0.0.1:8001", PeerOrigin::Config);
        plain.check = None;
        let baseline = StartBaseline::of(&[upstream(vec![plain.clone()])]);
        assert_eq!(baseline.missing(0, &plain), Ok(None));
        let mut old_module = peer("172.18.0.3:8000", PeerOrigin::Resolved);
        old_module.resolved_ms = None;
        let never = baseline.missing(0, &old_module).unwrap_err();
        assert!(never.contains("upgrade it"), "{never}");
        assert!(baseline.fits(&[upstream(vec![])]));
        assert!(!baseline.fits(&[]));
    }
}
