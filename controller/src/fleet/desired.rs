//! An upstream's desired state for a fleet (`shift_wire::fleet::DesiredUpstream`): made from
//! what a host reports, changed by the same patches the admin API takes, and compared with a
//! host's module to find what its agent must do. No I/O here.

use std::collections::BTreeMap;

use shift_wire::fleet::{DesiredPeer, DesiredUpstream, FORMAT};
use shift_wire::{
    is_valid_label, NewPeer, Peer, PeerOrigin, PeerPatch, PeerState, Upstream, UpstreamPatch,
    MAX_WEIGHT,
};

/// A change the desired state refuses, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    #[error("upstream has no peer {0}: \"shiftctl status --fleet\" lists them")]
    UnknownPeer(String),
    #[error("upstream already has a peer {0}")]
    PeerExists(String),
    #[error("peer {0} is a server line of the hosts' config: remove the line and reload instead")]
    ConfigPeer(String),
    #[error("weight {weight} of {server} is out of range: 0 to {MAX_WEIGHT}")]
    BadWeight { server: String, weight: u32 },
    #[error("label \"{0}\" is not valid: up to 63 letters, digits, \".\", \"_\", \"+\" or \"-\"")]
    BadLabel(String),
    #[error(
        "this desired state is in format {format}, written by {written_by}; this shiftctl \
         ({WRITTEN_BY}) writes format {FORMAT} and could drop what it does not know: nothing was \
         written; run a shiftctl as new as the one that wrote it"
    )]
    WrittenByNewer { format: u32, written_by: String },
}

/// What this build writes in each value's `written_by`.
pub const WRITTEN_BY: &str = concat!("shiftctl ", env!("CARGO_PKG_VERSION"));

/// Refuses to rewrite a desired state of a newer format: what its writer meant and this build
/// does not know could be lost.
fn writable(desired: &DesiredUpstream) -> Result<(), DesiredError> {
    if desired.is_newer_than_this_build() {
        return Err(DesiredError::WrittenByNewer {
            format: desired.format,
            written_by: if desired.written_by.is_empty() {
                "an unnamed writer".to_string()
            } else {
                desired.written_by.clone()
            },
        });
    }
    Ok(())
}

/// `next` as this build writes it, at `written_ms`.
fn stamped(mut next: DesiredUpstream, written_ms: u64) -> DesiredUpstream {
    next.format = FORMAT;
    next.written_by = WRITTEN_BY.to_string();
    next.written_ms = written_ms;
    next
}

/// The desired state that keeps an upstream as `upstream` has it now. Resolved peers are left
/// out: each host's DNS answers decide them.
pub fn from_upstream(upstream: &Upstream, written_ms: u64) -> DesiredUpstream {
    let mut peers: Vec<DesiredPeer> = upstream
        .peers
        .iter()
        .filter(|peer| peer.origin != PeerOrigin::Resolved)
        .map(|peer| DesiredPeer {
            server: peer.server.clone(),
            weight: peer.weight,
            state: peer.state,
            label: peer.label.clone(),
            runtime: peer.origin == PeerOrigin::Api,
            ..Default::default()
        })
        .collect();
    peers.sort_by(|a, b| a.server.cmp(&b.server));
    let desired = DesiredUpstream {
        peers,
        ..Default::default()
    };
    stamped(desired, written_ms)
}

/// The desired state with `patch` applied, all of it or (on the first bad entry) none.
pub fn patched(
    desired: &DesiredUpstream,
    patch: &UpstreamPatch,
    written_ms: u64,
) -> Result<DesiredUpstream, DesiredError> {
    writable(desired)?;
    let mut next = desired.clone();
    for (server, change) in &patch.peers {
        let peer = next
            .peers
            .iter_mut()
            .find(|peer| &peer.server == server)
            .ok_or_else(|| DesiredError::UnknownPeer(server.clone()))?;
        apply_peer_patch(peer, change)?;
    }
    Ok(stamped(next, written_ms))
}

fn apply_peer_patch(peer: &mut DesiredPeer, change: &PeerPatch) -> Result<(), DesiredError> {
    if let Some(weight) = change.weight {
        if weight > MAX_WEIGHT {
            let server = peer.server.clone();
            return Err(DesiredError::BadWeight { server, weight });
        }
        peer.weight = weight;
    }
    if let Some(state) = change.state {
        peer.state = state;
    }
    if let Some(label) = &change.label {
        if !is_valid_label(label) {
            return Err(DesiredError::BadLabel(label.clone()));
        }
        peer.label = (!label.is_empty()).then(|| label.clone());
    }
    Ok(())
}

/// The desired state with a run-time peer added.
pub fn with_peer(
    desired: &DesiredUpstream,
    new: &NewPeer,
    written_ms: u64,
) -> Result<DesiredUpstream, DesiredError> {
    writable(desired)?;
    if desired.peers.iter().any(|peer| peer.server == new.server) {
        return Err(DesiredError::PeerExists(new.server.clone()));
    }
    let mut peer = DesiredPeer {
        server: new.server.clone(),
        weight: 1,
        state: PeerState::Up,
        runtime: true,
        ..Default::default()
    };
    let change = PeerPatch {
        weight: new.weight,
        state: new.state,
        label: new.label.clone(),
        // The fleet's desired state holds no ramps and no deadlines; `--slow-start` and
        // `--close-after` are refused with `--etcd`.
        ..Default::default()
    };
    apply_peer_patch(&mut peer, &change)?;
    let mut next = desired.clone();
    let at = next
        .peers
        .partition_point(|other| other.server < peer.server);
    next.peers.insert(at, peer);
    Ok(stamped(next, written_ms))
}

/// The desired state without the run-time peer `server`.
pub fn without_peer(
    desired: &DesiredUpstream,
    server: &str,
    written_ms: u64,
) -> Result<DesiredUpstream, DesiredError> {
    writable(desired)?;
    let at = desired
        .peers
        .iter()
        .position(|peer| peer.server == server)
        .ok_or_else(|| DesiredError::UnknownPeer(server.to_string()))?;
    if !desired.peers[at].runtime {
        return Err(DesiredError::ConfigPeer(server.to_string()));
    }
    let mut next = desired.clone();
    next.peers.remove(at);
    Ok(stamped(next, written_ms))
}

/// `upstream` (a host's view, with its counters and health) as the desired state would make
/// it: what commands plan their next change from. A run-time peer no host has added yet is
/// shown with no traffic.
pub fn overlay(desired: &DesiredUpstream, upstream: &Upstream) -> Upstream {
    let mut view = upstream.clone();
    view.peers.retain(|peer| {
        peer.origin == PeerOrigin::Resolved
            || desired
                .peers
                .iter()
                .any(|wanted| wanted.server == peer.server)
    });
    for wanted in &desired.peers {
        match view
            .peers
            .iter_mut()
            .find(|peer| peer.server == wanted.server)
        {
            Some(peer) => {
                peer.weight = wanted.weight;
                peer.state = wanted.state;
                peer.label = wanted.label.clone();
                peer.eligible = eligible_after(peer);
            }
            None => view.peers.push(new_peer_view(wanted)),
        }
    }
    view
}

/// Whether the host will let `peer` take new requests once it has the new weight and state:
/// the module's rule, with what the host last reported of its health. An unchecked peer with
/// checks that took no traffic yet counts as not taking it, as under `mandatory` checks.
fn eligible_after(peer: &Peer) -> bool {
    peer.weight > 0
        && peer.state == PeerState::Up
        && match peer.health {
            shift_wire::Health::Healthy => true,
            shift_wire::Health::Unhealthy => false,
            shift_wire::Health::Unchecked => peer.check.is_none() || peer.eligible,
        }
}

fn new_peer_view(wanted: &DesiredPeer) -> Peer {
    Peer {
        server: wanted.server.clone(),
        weight: wanted.weight,
        state: wanted.state,
        health: shift_wire::Health::Unchecked,
        label: wanted.label.clone(),
        eligible: false,
        backup: false,
        origin: if wanted.runtime {
            PeerOrigin::Api
        } else {
            PeerOrigin::Config
        },
        // Not joined yet: the host has not added it.
        joined_ms: 0,
        resolved_ms: None,
        ramp: None,
        ejection: Default::default(),
        drain_close: Default::default(),
        config_weight: wanted.weight,
        requests: 0,
        failures: 0,
        active: 0,
        responses: Default::default(),
        response_time: Default::default(),
        header_time: Default::default(),
        check: None,
    }
}

/// What an agent must do to its module to reach the desired state, and what it cannot do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Convergence {
    /// Run-time peers to add (POST), with their weight, state and label.
    pub add: Vec<NewPeer>,
    /// Weights, states and labels to change (one PATCH), for peers the module has.
    pub patch: BTreeMap<String, PeerPatch>,
    /// Run-time peers to remove (DELETE): added at run time, no longer desired.
    pub remove: Vec<String>,
    /// What keeps the host from the desired state: a desired `server` line its config lacks.
    pub problems: Vec<String>,
}

impl Convergence {
    /// Nothing to change (problems aside).
    pub fn is_done(&self) -> bool {
        self.add.is_empty() && self.patch.is_empty() && self.remove.is_empty()
    }
}

/// Compares a host's module (`local`) with the desired state.
pub fn converge(desired: &DesiredUpstream, local: &Upstream) -> Convergence {
    let mut plan = Convergence::default();
    for wanted in &desired.peers {
        let Some(peer) = local.peers.iter().find(|peer| peer.server == wanted.server) else {
            if wanted.runtime {
                plan.add.push(NewPeer {
                    server: wanted.server.clone(),
                    weight: Some(wanted.weight),
                    state: Some(wanted.state),
                    label: wanted.label.clone(),
                    slow_start: None,
                    expect_generation: None,
                });
            } else {
                plan.problems.push(format!(
                    "upstream {} on this host has no server {}: its config differs from the \
                     other hosts'",
                    local.name, wanted.server
                ));
            }
            continue;
        };
        let change = PeerPatch {
            weight: (peer.weight != wanted.weight).then_some(wanted.weight),
            state: (peer.state != wanted.state).then_some(wanted.state),
            label: (peer.label != wanted.label).then(|| wanted.label.clone().unwrap_or_default()),
            ..Default::default()
        };
        if change != PeerPatch::default() {
            plan.patch.insert(wanted.server.clone(), change);
        }
    }
    plan.remove = local
        .peers
        .iter()
        .filter(|peer| peer.origin == PeerOrigin::Api)
        .filter(|peer| {
            !desired
                .peers
                .iter()
                .any(|wanted| wanted.server == peer.server)
        })
        .map(|peer| peer.server.clone())
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(server: &str, weight: u32, origin: PeerOrigin) -> Peer {
        let mut peer = new_peer_view(&DesiredPeer {
            server: server.into(),
            weight,
            state: PeerState::Up,
            label: None,
            runtime: origin == PeerOrigin::Api,
            ..Default::default()
        });
        peer.origin = origin;
        peer
    }

    fn upstream(peers: Vec<Peer>) -> Upstream {
        Upstream {
            name: "app".into(),
            generation: 7,
            peers,
            pins: Default::default(),
            slow_start_ms: None,
        }
    }

    fn weights(patch: &[(&str, u32)]) -> UpstreamPatch {
        UpstreamPatch {
            peers: patch
                .iter()
                .map(|(server, weight)| {
                    let change = PeerPatch {
                        weight: Some(*weight),
                        ..Default::default()
                    };
                    (server.to_string(), change)
                })
                .collect(),
            expect_generation: None,
        }
    }

    #[test]
    fn a_host_view_becomes_a_desired_state_without_resolved_peers() {
        let host = upstream(vec![
            peer("10.0.0.2:80", 5, PeerOrigin::Config),
            peer("10.0.0.1:80", 1, PeerOrigin::Api),
            peer("10.0.0.9:80", 1, PeerOrigin::Resolved),
        ]);
        let desired = from_upstream(&host, 42);
        let servers: Vec<(&str, bool)> = desired
            .peers
            .iter()
            .map(|p| (p.server.as_str(), p.runtime))
            .collect();
        assert_eq!(servers, [("10.0.0.1:80", true), ("10.0.0.2:80", false)]);
        assert!(converge(&desired, &host).is_done());
    }

    #[test]
    fn a_patch_applies_whole_or_not_at_all() {
        let host = upstream(vec![
            peer("a:1", 5, PeerOrigin::Config),
            peer("b:1", 5, PeerOrigin::Config),
        ]);
        let desired = from_upstream(&host, 0);
        let next = patched(&desired, &weights(&[("a:1", 0), ("b:1", 100)]), 9).unwrap();
        assert_eq!(
            (next.peers[0].weight, next.peers[1].weight, next.written_ms),
            (0, 100, 9)
        );
        assert_eq!(
            patched(&desired, &weights(&[("a:1", 0), ("c:1", 1)]), 9),
            Err(DesiredError::UnknownPeer("c:1".into()))
        );
        assert!(matches!(
            patched(&desired, &weights(&[("a:1", 1001)]), 9),
            Err(DesiredError::BadWeight { .. })
        ));
        let bad_label = UpstreamPatch {
            peers: BTreeMap::from([(
                "a:1".to_string(),
                PeerPatch {
                    label: Some("v/2".into()),
                    ..Default::default()
                },
            )]),
            expect_generation: None,
        };
        assert_eq!(
            patched(&desired, &bad_label, 9),
            Err(DesiredError::BadLabel("v/2".into()))
        );
    }

    #[test]
    fn a_newer_format_is_not_rewritten_and_unknown_fields_are_kept() {
        let host = upstream(vec![peer("a:1", 5, PeerOrigin::Config)]);
        let mut desired = from_upstream(&host, 0);
        assert_eq!(
            (desired.format, desired.written_by.as_str()),
            (FORMAT, WRITTEN_BY)
        );
        desired
            .unknown
            .insert("note".into(), serde_json::json!("kept"));
        desired.peers[0]
            .unknown
            .insert("ramp".into(), serde_json::json!("30s"));
        desired.written_by = "shiftctl 0.0.1".into();
        let next = patched(&desired, &weights(&[("a:1", 7)]), 9).unwrap();
        assert_eq!(next.written_by, WRITTEN_BY);
        assert_eq!(next.unknown["note"], "kept");
        assert_eq!(next.peers[0].unknown["ramp"], "30s");

        desired.format = FORMAT + 1;
        desired.written_by = "shiftctl 9.0.0".into();
        let refused = DesiredError::WrittenByNewer {
            format: FORMAT + 1,
            written_by: "shiftctl 9.0.0".into(),
        };
        assert_eq!(
            patched(&desired, &weights(&[("a:1", 7)]), 9),
            Err(refused.clone())
        );
        let new = NewPeer {
            server: "b:1".into(),
            weight: None,
            state: None,
            label: None,
            slow_start: None,
            expect_generation: None,
        };
        assert_eq!(with_peer(&desired, &new, 9), Err(refused.clone()));
        assert_eq!(without_peer(&desired, "a:1", 9), Err(refused));
    }

    #[test]
    fn the_view_after_a_write_takes_traffic_as_the_host_will() {
        let mut standby = peer("b:1", 0, PeerOrigin::Config);
        standby.state = PeerState::Down;
        standby.eligible = false;
        let mut live = peer("a:1", 5, PeerOrigin::Config);
        live.eligible = true;
        let host = upstream(vec![live, standby]);
        let desired = from_upstream(&host, 0);
        let switched = patched(&desired, &weights(&[("a:1", 0), ("b:1", 5)]), 1).unwrap();
        let mut switched = switched;
        switched.peers[1].state = PeerState::Up;
        let view = overlay(&switched, &host);
        let eligible: Vec<(&str, bool)> = view
            .peers
            .iter()
            .map(|p| (p.server.as_str(), p.eligible))
            .collect();
        assert_eq!(eligible, [("a:1", false), ("b:1", true)]);
    }

    #[test]
    fn convergence_adds_changes_and_removes_only_what_it_may() {
        let desired = DesiredUpstream {
            peers: vec![
                DesiredPeer {
                    server: "a:1".into(),
                    weight: 10,
                    state: PeerState::Drain,
                    label: Some("green".into()),
                    runtime: false,
                    ..Default::default()
                },
                DesiredPeer {
                    server: "new:1".into(),
                    weight: 3,
                    state: PeerState::Up,
                    label: None,
                    runtime: true,
                    ..Default::default()
                },
                DesiredPeer {
                    server: "missing:1".into(),
                    weight: 1,
                    state: PeerState::Up,
                    label: None,
                    runtime: false,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let local = upstream(vec![
            peer("a:1", 5, PeerOrigin::Config),
            peer("old:1", 5, PeerOrigin::Api),
            peer("dns:1", 5, PeerOrigin::Resolved),
            peer("other:1", 5, PeerOrigin::Config),
        ]);
        let plan = converge(&desired, &local);
        assert_eq!(plan.add.len(), 1);
        assert_eq!(
            (plan.add[0].server.as_str(), plan.add[0].weight),
            ("new:1", Some(3))
        );
        assert_eq!(
            plan.patch.get("a:1"),
            Some(&PeerPatch {
                weight: Some(10),
                state: Some(PeerState::Drain),
                label: Some("green".into()),
                slow_start: None,
                ..Default::default()
            })
        );
        assert_eq!(plan.remove, ["old:1"]);
        assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
        assert!(plan.problems[0].contains("missing:1"));

        // A label taken away is patched as "".
        let mut unlabelled = desired.clone();
        unlabelled.peers[0].label = None;
        let mut labelled = local.clone();
        labelled.peers[0].label = Some("blue".into());
        let plan = converge(&unlabelled, &labelled);
        assert_eq!(plan.patch["a:1"].label.as_deref(), Some(""));
    }

    #[test]
    fn run_time_peers_come_and_go_only_as_run_time_peers() {
        let desired = from_upstream(&upstream(vec![peer("a:1", 5, PeerOrigin::Config)]), 0);
        let new = NewPeer {
            server: "b:1".into(),
            weight: Some(2),
            state: None,
            label: Some("green".into()),
            slow_start: None,
            expect_generation: None,
        };
        let added = with_peer(&desired, &new, 1).unwrap();
        assert_eq!(added.peers[1].server, "b:1");
        assert!(added.peers[1].runtime);
        assert_eq!(
            with_peer(&added, &new, 2),
            Err(DesiredError::PeerExists("b:1".into()))
        );
        assert_eq!(
            without_peer(&added, "a:1", 2),
            Err(DesiredError::ConfigPeer("a:1".into()))
        );
        assert_eq!(without_peer(&added, "b:1", 2).unwrap().peers.len(), 1);

        // The view a command plans from shows the peer before any host has added it.
        let view = overlay(&added, &upstream(vec![peer("a:1", 5, PeerOrigin::Config)]));
        assert_eq!(view.peers.len(), 2);
        assert_eq!(view.peers[1].weight, 2);
    }
}
