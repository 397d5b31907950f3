//! The status table of one upstream: each peer's weight, share of traffic, state, health (or
//! its ejection) and counters, and below it when a drain closes what a peer carries.

use shift_wire::{Peer, Upstream};

/// The status table of one upstream.
pub fn render_table(upstream: &Upstream) -> String {
    let total: u64 = upstream
        .peers
        .iter()
        .filter(|peer| takes_traffic(peer))
        .map(|peer| peer.weight as u64)
        .sum();
    let mut out = format!(
        "upstream {} (generation {})\n",
        upstream.name, upstream.generation
    );
    out += &format!(
        "{:<24} {:<10} {:>6} {:>7} {:<6} {:<10} {:>10} {:>9} {:>7}\n",
        "PEER", "LABEL", "WEIGHT", "SHARE", "STATE", "HEALTH", "REQUESTS", "FAILURES", "ACTIVE"
    );
    for peer in &upstream.peers {
        let share = if takes_traffic(peer) && total > 0 {
            format!("{:.1}%", peer.weight as f64 * 100.0 / total as f64)
        } else {
            "-".into()
        };
        let server = if peer.backup {
            format!("{} (backup)", peer.server)
        } else {
            peer.server.clone()
        };
        out += &format!(
            "{:<24} {:<10} {:>6} {:>7} {:<6} {:<10} {:>10} {:>9} {:>7}\n",
            server,
            peer.label.as_deref().unwrap_or("-"),
            peer.weight,
            share,
            peer.state.as_str(),
            health(peer),
            peer.requests,
            peer.failures,
            peer.active
        );
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    for peer in &upstream.peers {
        if let Some(note) = closing_note(peer, now_ms) {
            out += &format!("{}: {note}\n", peer.server);
        }
    }
    out
}

/// What a drain's deadline (`close_after`) does to the peer's requests, as of `now_ms`.
fn closing_note(peer: &Peer, now_ms: u64) -> Option<String> {
    let close = peer.drain_close;
    let at = close.close_at_ms?;
    let spread = close
        .close_spread_ms
        .map(|ms| format!(", spread over {}", seconds(ms)))
        .unwrap_or_default();
    let when = if now_ms < at {
        format!(
            "closes the requests it carries in {}{spread}",
            seconds(at - now_ms)
        )
    } else {
        format!(
            "closing the requests it carries since {} ago{spread}",
            seconds(now_ms - at)
        )
    };
    Some(format!("{when}; {} closed", close.closed_by_drain))
}

fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Its health, or `ejected` while `shift_eject` keeps it out (whatever its check says).
fn health(peer: &Peer) -> &'static str {
    if peer.ejection.ejected_until_ms.is_some() {
        "ejected"
    } else {
        peer.health.as_str()
    }
}

/// A primary peer the module says takes new requests (a backup one takes them only when no
/// primary can).
fn takes_traffic(peer: &Peer) -> bool {
    peer.eligible && !peer.backup
}

#[cfg(test)]
mod tests {
    use shift_wire::{Health, PeerState, ResponseCounts};

    use super::*;

    fn peer(server: &str, weight: u32, eligible: bool, backup: bool) -> Peer {
        Peer {
            server: server.into(),
            weight,
            state: if eligible {
                PeerState::Up
            } else {
                PeerState::Down
            },
            health: Health::Unchecked,
            label: None,
            eligible,
            backup,
            origin: shift_wire::PeerOrigin::Config,
            joined_ms: 0,
            resolved_ms: None,
            ramp: None,
            ejection: Default::default(),
            drain_close: Default::default(),
            config_weight: weight,
            requests: 12,
            failures: 1,
            active: 3,
            responses: ResponseCounts::default(),
            response_time: Default::default(),
            header_time: Default::default(),
            check: None,
        }
    }

    fn rows(upstream: &Upstream) -> Vec<Vec<String>> {
        render_table(upstream)
            .lines()
            .skip(2)
            .map(|line| line.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn shares_count_only_primary_peers_that_take_traffic() {
        let mut green = peer("127.0.0.1:8002", 10, true, false);
        green.label = Some("green".into());
        let upstream = Upstream {
            name: "app".into(),
            generation: 7,
            peers: vec![
                peer("127.0.0.1:8001", 30, true, false),
                green,
                peer("127.0.0.1:8003", 60, false, false),
                peer("127.0.0.1:8004", 5, true, true),
            ],
            pins: Default::default(),
            slow_start_ms: None,
        };
        let text = render_table(&upstream);
        assert!(
            text.starts_with("upstream app (generation 7)\nPEER "),
            "{text}"
        );
        let rows = rows(&upstream);
        assert_eq!(rows[0][..4], ["127.0.0.1:8001", "-", "30", "75.0%"]);
        assert_eq!(rows[1][..4], ["127.0.0.1:8002", "green", "10", "25.0%"]);
        // Weight 60 but down: no share, and it does not dilute the others.
        assert_eq!(rows[2][..5], ["127.0.0.1:8003", "-", "60", "-", "down"]);
        assert_eq!(rows[3][..5], ["127.0.0.1:8004", "(backup)", "-", "5", "-"]);
        assert_eq!(rows[0][5..], ["unchecked", "12", "1", "3"]);
    }

    #[test]
    fn an_ejected_peer_says_so_in_place_of_its_health() {
        let mut ejected = peer("127.0.0.1:8002", 10, false, false);
        ejected.state = PeerState::Up;
        ejected.health = Health::Healthy;
        ejected.ejection = shift_wire::Ejection {
            ejections: 2,
            ejected_until_ms: Some(1_800_000_000_000),
        };
        let upstream = Upstream {
            name: "app".into(),
            generation: 1,
            peers: vec![peer("127.0.0.1:8001", 10, true, false), ejected],
            pins: Default::default(),
            slow_start_ms: None,
        };
        let rows = rows(&upstream);
        assert_eq!(rows[1][3..6], ["-", "up", "ejected"]);
        assert_eq!(rows[0][5], "unchecked");
    }

    #[test]
    fn a_drain_with_a_deadline_says_when_it_closes_what_it_carries() {
        let mut drained = peer("127.0.0.1:8002", 10, false, false);
        drained.state = PeerState::Drain;
        drained.drain_close = shift_wire::DrainClose {
            close_at_ms: Some(10_000),
            close_spread_ms: Some(5_000),
            closed_by_drain: 3,
        };
        assert_eq!(
            closing_note(&drained, 7_500).as_deref(),
            Some("closes the requests it carries in 2.5 s, spread over 5.0 s; 3 closed")
        );
        assert_eq!(
            closing_note(&drained, 11_000).as_deref(),
            Some("closing the requests it carries since 1.0 s ago, spread over 5.0 s; 3 closed")
        );
        assert_eq!(
            closing_note(&peer("127.0.0.1:8001", 1, true, false), 0),
            None
        );
        let upstream = Upstream {
            name: "app".into(),
            generation: 1,
            peers: vec![drained],
            pins: Default::default(),
            slow_start_ms: None,
        };
        assert!(render_table(&upstream).contains("127.0.0.1:8002: closing the requests"));
    }

    #[test]
    fn no_share_when_nothing_takes_traffic() {
        let upstream = Upstream {
            name: "app".into(),
            generation: 1,
            peers: vec![peer("127.0.0.1:8001", 0, true, false)],
            pins: Default::default(),
            slow_start_ms: None,
        };
        assert_eq!(rows(&upstream)[0][3], "-");
    }
}
