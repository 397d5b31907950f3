//! What each shift asks of an upstream, decided from its current state alone: the weights of a
//! canary step, a blue-green switch, the stable set to roll back to, and a step's error rate.
//! A target is one peer's address, or a label that names every peer of a version (its
//! replicas), which then move as one.

use std::collections::BTreeMap;
use std::time::Duration;

use shift_wire::{Health, Peer, PeerPatch, PeerState, Upstream, UpstreamPatch, MAX_WEIGHT};

/// A plan that cannot be made from the upstream as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("upstream \"{upstream}\" has no peer or label \"{server}\"; its peers: {known}")]
    UnknownPeer {
        upstream: String,
        server: String,
        known: String,
    },
    #[error(
        "no peer of upstream \"{upstream}\" other than {target} takes traffic now, so there is \
         nothing to shift from; use \"shiftctl set\" to bring peers up"
    )]
    NoStablePeer { upstream: String, target: String },
    #[error("refusing to shift to {server}: its health check says it is unhealthy{reason}")]
    Unhealthy { server: String, reason: String },
}

pub fn find_peer<'a>(upstream: &'a Upstream, server: &str) -> Result<&'a Peer, PlanError> {
    upstream
        .peers
        .iter()
        .find(|peer| peer.server == server)
        .ok_or_else(|| unknown(upstream, server))
}

/// The peers `target` names: the peer with that address, or else every peer with that label.
pub fn target_peers<'a>(upstream: &'a Upstream, target: &str) -> Result<Vec<&'a Peer>, PlanError> {
    if let Ok(peer) = find_peer(upstream, target) {
        return Ok(vec![peer]);
    }
    let labelled: Vec<&Peer> = upstream
        .peers
        .iter()
        .filter(|peer| peer.label.as_deref() == Some(target))
        .collect();
    if labelled.is_empty() {
        return Err(unknown(upstream, target));
    }
    Ok(labelled)
}

/// The addresses of the peers `target` names.
pub fn target_servers(upstream: &Upstream, target: &str) -> Result<Vec<String>, PlanError> {
    Ok(target_peers(upstream, target)?
        .iter()
        .map(|peer| peer.server.clone())
        .collect())
}

fn unknown(upstream: &Upstream, target: &str) -> PlanError {
    PlanError::UnknownPeer {
        upstream: upstream.name.clone(),
        server: target.to_string(),
        known: upstream
            .peers
            .iter()
            .map(|peer| match &peer.label {
                Some(label) => format!("{} ({label})", peer.server),
                None => peer.server.clone(),
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Fails if the module's check calls a peer `target` names unhealthy.
pub fn require_not_unhealthy(upstream: &Upstream, target: &str) -> Result<(), PlanError> {
    for peer in target_peers(upstream, target)? {
        if peer.health != Health::Unhealthy {
            continue;
        }
        let reason = peer
            .check
            .as_ref()
            .and_then(|check| check.last_error.clone())
            .map(|error| format!(" (last check: {error})"))
            .unwrap_or_default();
        return Err(PlanError::Unhealthy {
            server: peer.server.clone(),
            reason,
        });
    }
    Ok(())
}

/// The patch that puts every peer back as it is now: what `rollback` applies later.
pub fn snapshot(upstream: &Upstream) -> UpstreamPatch {
    UpstreamPatch {
        peers: upstream
            .peers
            .iter()
            .map(|peer| {
                (
                    peer.server.clone(),
                    PeerPatch {
                        weight: Some(peer.weight),
                        state: Some(peer.state),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        expect_generation: None,
    }
}

/// The peers other than the `targets` that take traffic now, with their weights.
fn stable_peers<'a>(upstream: &'a Upstream, targets: &[String]) -> Vec<&'a Peer> {
    upstream
        .peers
        .iter()
        .filter(|peer| {
            !targets.contains(&peer.server) && peer.state == PeerState::Up && peer.weight > 0
        })
        .collect()
}

/// A canary step: the `targets` (one peer, or the peers of a label) get `percent` of the
/// weight, shared evenly; the `stable` peers (as in the snapshot taken before the canary) share
/// the rest in their old proportions. At 100% the stable peers are drained.
pub fn canary_step(stable: &UpstreamPatch, targets: &[String], percent: u32) -> UpstreamPatch {
    let target_weight = MAX_WEIGHT * percent.min(100) / 100;
    let rest = MAX_WEIGHT - target_weight;
    let stable_weights: Vec<(&String, u32)> = stable
        .peers
        .iter()
        .filter(|(server, patch)| {
            !targets.contains(server)
                && patch.state == Some(PeerState::Up)
                && patch.weight.unwrap_or(0) > 0
        })
        .map(|(server, patch)| (server, patch.weight.unwrap_or(0)))
        .collect();
    let total: u32 = stable_weights.iter().map(|(_, weight)| weight).sum();

    let mut peers = BTreeMap::new();
    let count = targets.len().max(1) as u32;
    for (index, target) in targets.iter().enumerate() {
        // The first takes the rounding remainder.
        let share = target_weight / count + u32::from(index == 0) * (target_weight % count);
        peers.insert(
            target.clone(),
            PeerPatch {
                weight: Some(share),
                state: Some(PeerState::Up),
                ..Default::default()
            },
        );
    }
    let mut given = 0;
    for (index, (server, weight)) in stable_weights.iter().enumerate() {
        // The last peer takes the rounding remainder so the shares add up exactly.
        let share = if index + 1 == stable_weights.len() {
            rest - given
        } else {
            rest * weight / total.max(1)
        };
        given += share;
        let state = if percent >= 100 {
            PeerState::Drain
        } else {
            PeerState::Up
        };
        peers.insert(
            (*server).clone(),
            PeerPatch {
                weight: Some(share),
                state: Some(state),
                ..Default::default()
            },
        );
    }
    UpstreamPatch {
        peers,
        expect_generation: None,
    }
}

/// Checks that a canary can start: the target exists and is not unhealthy, and some other peer
/// takes traffic now.
pub fn check_canary(upstream: &Upstream, target: &str) -> Result<(), PlanError> {
    require_not_unhealthy(upstream, target)?;
    if stable_peers(upstream, &target_servers(upstream, target)?).is_empty() {
        return Err(PlanError::NoStablePeer {
            upstream: upstream.name.clone(),
            target: target.to_string(),
        });
    }
    Ok(())
}

/// A blue-green switch: the peers `target` names up (each with its weight, or its config's,
/// or 1), every other peer that takes traffic drained.
pub fn switch(upstream: &Upstream, target: &str) -> Result<UpstreamPatch, PlanError> {
    let mut patch = bring_up(upstream, target)?;
    let targets = target_servers(upstream, target)?;
    for other in stable_peers(upstream, &targets) {
        patch.peers.insert(
            other.server.clone(),
            PeerPatch {
                weight: None,
                state: Some(PeerState::Drain),
                ..Default::default()
            },
        );
    }
    Ok(patch)
}

/// The first half of a switch under `shift_slow_start`: the target's peers up with their
/// weight, the others as they are, so that the target ramps up beside them.
pub fn bring_up(upstream: &Upstream, target: &str) -> Result<UpstreamPatch, PlanError> {
    let targets = target_peers(upstream, target)?;
    require_not_unhealthy(upstream, target)?;
    let mut peers = BTreeMap::new();
    for peer in &targets {
        let weight = if peer.weight > 0 {
            peer.weight
        } else {
            peer.config_weight.max(1)
        };
        peers.insert(
            peer.server.clone(),
            PeerPatch {
                weight: Some(weight),
                state: Some(PeerState::Up),
                ..Default::default()
            },
        );
    }
    Ok(UpstreamPatch {
        peers,
        expect_generation: None,
    })
}

/// Gives the changes of the `targets` in `patch` the slow start `window` (`--slow-start`,
/// `slow_start` in a deploy plan): the window of the ramp each begins if it lets its peer take
/// requests (0: none). `None` leaves it to the upstream's `shift_slow_start`.
pub fn with_slow_start(
    mut patch: UpstreamPatch,
    targets: &[String],
    window: Option<Duration>,
) -> UpstreamPatch {
    let Some(window) = window else {
        return patch;
    };
    for (server, change) in &mut patch.peers {
        if targets.contains(server) {
            change.slow_start = Some(window_text(window));
        }
    }
    patch
}

/// What a drain does with the requests its peer still carries (`--close-after` and
/// `--close-spread`, `close_after` and `close_spread` in a deploy plan): close them after
/// `after`, evenly over `spread`, so that a drain of long-lived connections (WebSockets,
/// server-sent events) ends in bounded time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseAfter {
    pub after: Duration,
    pub spread: Duration,
}

impl CloseAfter {
    /// `after` and `spread` as the command line or a plan gives them; a spread needs `after`.
    pub fn of(after: Option<Duration>, spread: Option<Duration>) -> Result<Option<Self>, String> {
        match (after, spread) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err("a close spread needs close_after: it starts at that \
                                    deadline"
                .to_string()),
            (Some(after), spread) => Ok(Some(CloseAfter {
                after,
                spread: spread.unwrap_or_default(),
            })),
        }
    }

    /// Gives a drain's change the deadline.
    pub fn apply(&self, change: &mut PeerPatch) {
        change.close_after = Some(window_text(self.after));
        change.close_spread = Some(window_text(self.spread));
    }

    /// When the last of the requests it closes is closed, from the drain on.
    pub fn ends_after(&self) -> Duration {
        self.after + self.spread
    }
}

/// A window (a slow start's, a drain's `close_after`) as the API reads it.
pub fn window_text(window: Duration) -> String {
    format!("{}ms", window.as_millis())
}

/// A slow start's window on the command line and in deploy plans, as the API takes it.
pub use shift_wire::parse_window;

/// Durations of the command line and deploy plans: Nginx's notation, as the directives read it
/// (`shift_wire::parse_duration`).
pub use shift_wire::parse_duration;

/// The highest error rate a canary step may show: a fraction from 0 to 1 (NaN is not one).
/// The command line and deploy plans both read it here.
pub fn parse_error_rate(rate: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "max error rate {rate} must be a fraction from 0 to 1, e.g. 0.01 for 1%"
        ))
    }
}

/// Parses canary steps such as `5,25,50,100`: rising percentages ending at 100.
pub fn parse_steps(text: &str) -> Result<Vec<u32>, String> {
    let steps: Vec<u32> = text
        .split(',')
        .map(|step| step.trim().trim_end_matches('%').parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("steps \"{text}\" must be percentages such as 5,25,50,100"))?;
    let rising = steps.windows(2).all(|pair| pair[0] < pair[1]);
    if steps.is_empty() || !rising || steps[0] == 0 || steps.last() != Some(&100) {
        return Err(format!(
            "steps \"{text}\" must rise from above 0 and end at 100"
        ));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shift_wire::ResponseCounts;

    #[test]
    fn out_of_range_error_rates_are_refused() {
        for bad in [7.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(parse_error_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_error_rate(0.05), Ok(0.05));
        assert_eq!(parse_error_rate(0.0), Ok(0.0));
    }

    fn peer(server: &str, weight: u32, state: PeerState, health: Health) -> Peer {
        Peer {
            server: server.into(),
            weight,
            state,
            health,
            label: None,
            eligible: state == PeerState::Up && weight > 0 && health != Health::Unhealthy,
            backup: false,
            origin: shift_wire::PeerOrigin::Config,
            joined_ms: 0,
            resolved_ms: None,
            ramp: None,
            ejection: Default::default(),
            drain_close: Default::default(),
            config_weight: 1,
            requests: 0,
            failures: 0,
            active: 0,
            responses: ResponseCounts::default(),
            response_time: Default::default(),
            header_time: Default::default(),
            check: None,
        }
    }

    fn upstream(peers: Vec<Peer>) -> Upstream {
        Upstream {
            name: "app".into(),
            generation: 4,
            peers,
            pins: Default::default(),
            slow_start_ms: None,
        }
    }

    fn weights(patch: &UpstreamPatch) -> Vec<(&str, Option<u32>, Option<PeerState>)> {
        patch
            .peers
            .iter()
            .map(|(server, p)| (server.as_str(), p.weight, p.state))
            .collect()
    }

    #[test]
    fn canary_steps_split_the_weight_and_drain_at_100() {
        let app = upstream(vec![
            peer("blue:1", 3, PeerState::Up, Health::Healthy),
            peer("blue:2", 1, PeerState::Up, Health::Healthy),
            peer("green:1", 1, PeerState::Down, Health::Healthy),
        ]);
        check_canary(&app, "green:1").unwrap();
        let stable = snapshot(&app);
        assert_eq!(
            weights(&canary_step(&stable, &["green:1".into()], 5)),
            [
                ("blue:1", Some(712), Some(PeerState::Up)),
                ("blue:2", Some(238), Some(PeerState::Up)),
                ("green:1", Some(50), Some(PeerState::Up)),
            ]
        );
        assert_eq!(
            weights(&canary_step(&stable, &["green:1".into()], 100)),
            [
                ("blue:1", Some(0), Some(PeerState::Drain)),
                ("blue:2", Some(0), Some(PeerState::Drain)),
                ("green:1", Some(1000), Some(PeerState::Up)),
            ]
        );
    }

    #[test]
    fn a_label_moves_all_its_peers_as_one() {
        let labelled = |server: &str, label: &str, weight, state| Peer {
            label: Some(label.into()),
            ..peer(server, weight, state, Health::Healthy)
        };
        let app = upstream(vec![
            labelled("10.0.0.1:80", "blue", 5, PeerState::Up),
            labelled("10.0.0.2:80", "green", 0, PeerState::Down),
            labelled("10.0.0.3:80", "green", 0, PeerState::Down),
        ]);
        assert_eq!(
            target_servers(&app, "green").unwrap(),
            ["10.0.0.2:80", "10.0.0.3:80"]
        );
        assert_eq!(
            target_servers(&app, "10.0.0.3:80").unwrap(),
            ["10.0.0.3:80"]
        );
        let err = target_servers(&app, "red").unwrap_err().to_string();
        assert!(err.contains("no peer or label \"red\""), "{err}");
        assert!(err.contains("10.0.0.2:80 (green)"), "{err}");
        check_canary(&app, "green").unwrap();
        let targets = target_servers(&app, "green").unwrap();
        assert_eq!(
            weights(&canary_step(&snapshot(&app), &targets, 25)),
            [
                ("10.0.0.1:80", Some(750), Some(PeerState::Up)),
                ("10.0.0.2:80", Some(125), Some(PeerState::Up)),
                ("10.0.0.3:80", Some(125), Some(PeerState::Up)),
            ]
        );
        assert_eq!(
            weights(&switch(&app, "green").unwrap()),
            [
                ("10.0.0.1:80", None, Some(PeerState::Drain)),
                ("10.0.0.2:80", Some(1), Some(PeerState::Up)),
                ("10.0.0.3:80", Some(1), Some(PeerState::Up)),
            ]
        );
    }

    #[test]
    fn a_canary_needs_a_stable_peer_and_a_healthy_target() {
        let alone = upstream(vec![peer("green:1", 1, PeerState::Down, Health::Healthy)]);
        assert!(matches!(
            check_canary(&alone, "green:1"),
            Err(PlanError::NoStablePeer { .. })
        ));
        let sick = upstream(vec![
            peer("blue:1", 1, PeerState::Up, Health::Healthy),
            peer("green:1", 1, PeerState::Down, Health::Unhealthy),
        ]);
        let err = check_canary(&sick, "green:1").unwrap_err();
        assert!(
            err.to_string().starts_with("refusing to shift to green:1"),
            "{err}"
        );
        assert!(matches!(
            check_canary(&sick, "red:1"),
            Err(PlanError::UnknownPeer { .. })
        ));
    }

    #[test]
    fn switch_brings_the_target_up_and_drains_the_rest() {
        let app = upstream(vec![
            peer("blue:1", 5, PeerState::Up, Health::Healthy),
            peer("green:1", 0, PeerState::Down, Health::Healthy),
        ]);
        assert_eq!(
            weights(&switch(&app, "green:1").unwrap()),
            [
                ("blue:1", None, Some(PeerState::Drain)),
                ("green:1", Some(1), Some(PeerState::Up))
            ]
        );
    }

    #[test]
    fn steps_parse() {
        assert_eq!(parse_steps("5,25,50,100"), Ok(vec![5, 25, 50, 100]));
        assert!(parse_steps("5,25,50").is_err());
        assert!(parse_steps("50,25,100").is_err());
        assert!(parse_steps("0,100").is_err());
    }
}
