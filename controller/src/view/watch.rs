//! `status --watch`: the split at a glance. Each peer's share of the requests since the last
//! refresh as a bar, and its error rate over the last minute as a sparkline, from the
//! counters of successive reads.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use shift_wire::{Peer, Upstream};

const BAR_WIDTH: usize = 30;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One peer's counters at one read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    requests: u64,
    errors: u64,
}

impl Counts {
    fn of(peer: &Peer) -> Counts {
        Counts {
            requests: peer.requests,
            errors: peer.responses.server_error.max(peer.failures),
        }
    }
}

/// The reads of the last minute, per upstream and peer.
pub struct WatchHistory {
    keep: usize,
    reads: BTreeMap<(String, String), VecDeque<Counts>>,
}

impl WatchHistory {
    /// Keeps a minute of reads taken `every` apart.
    pub fn new(every: Duration) -> WatchHistory {
        let per_minute = (60_000 / every.as_millis().max(1)) as usize;
        WatchHistory {
            keep: per_minute.clamp(2, 600) + 1,
            reads: BTreeMap::new(),
        }
    }

    /// Records a read of `upstream`.
    pub fn record(&mut self, upstream: &Upstream) {
        for peer in &upstream.peers {
            let reads = self
                .reads
                .entry((upstream.name.clone(), peer.server.clone()))
                .or_default();
            reads.push_back(Counts::of(peer));
            while reads.len() > self.keep {
                reads.pop_front();
            }
        }
    }

    fn of(&self, upstream: &str, server: &str) -> Option<&VecDeque<Counts>> {
        self.reads.get(&(upstream.to_string(), server.to_string()))
    }

    /// The upstream with a bar per peer (its share of the requests since the read before) and
    /// a sparkline of its error rate between successive reads over the last minute.
    pub fn render(&self, upstream: &Upstream) -> String {
        let latest = |server: &str| {
            self.of(&upstream.name, server).and_then(|reads| {
                let mut newest = reads.iter().rev();
                let (now, before) = (newest.next()?, newest.next()?);
                Some(now.requests.saturating_sub(before.requests))
            })
        };
        let total: u64 = upstream
            .peers
            .iter()
            .filter_map(|p| latest(&p.server))
            .sum();
        let mut out = format!(
            "upstream {} (generation {})\n",
            upstream.name, upstream.generation
        );
        for peer in &upstream.peers {
            let recent = latest(&peer.server).unwrap_or(0);
            let share = if total > 0 {
                recent as f64 / total as f64
            } else {
                0.0
            };
            let filled = (share * BAR_WIDTH as f64).round() as usize;
            let label = peer.label.as_deref().unwrap_or("");
            out += &format!(
                "{:<24} {:<8} {}{} {:>5.1}%  errors {}\n",
                peer.server,
                label,
                "█".repeat(filled),
                "·".repeat(BAR_WIDTH - filled),
                share * 100.0,
                self.sparkline(&upstream.name, &peer.server)
            );
        }
        out
    }

    /// A character per interval between reads: blank without requests, else its error rate
    /// (full at 10% or more).
    fn sparkline(&self, upstream: &str, server: &str) -> String {
        let Some(reads) = self.of(upstream, server) else {
            return String::new();
        };
        let reads: Vec<&Counts> = reads.iter().collect();
        reads
            .windows(2)
            .map(|pair| {
                let requests = pair[1].requests.saturating_sub(pair[0].requests);
                let errors = pair[1].errors.saturating_sub(pair[0].errors);
                if requests == 0 {
                    return ' ';
                }
                let rate = errors as f64 / requests as f64;
                if rate == 0.0 {
                    return SPARKS[0];
                }
                let level = ((rate / 0.1) * (SPARKS.len() - 1) as f64).ceil() as usize;
                SPARKS[level.clamp(1, SPARKS.len() - 1)]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use shift_wire::{Health, PeerOrigin, PeerState, ResponseCounts};

    use super::*;

    fn peer(server: &str, requests: u64, errors: u64) -> Peer {
        Peer {
            server: server.into(),
            weight: 1,
            state: PeerState::Up,
            health: Health::Unchecked,
            label: None,
            eligible: true,
            backup: false,
            origin: PeerOrigin::Config,
            joined_ms: 0,
            resolved_ms: None,
            ramp: None,
            ejection: Default::default(),
            drain_close: Default::default(),
            config_weight: 1,
            requests,
            failures: 0,
            active: 0,
            responses: ResponseCounts {
                server_error: errors,
                ..Default::default()
            },
            response_time: Default::default(),
            header_time: Default::default(),
            check: None,
        }
    }

    fn app(blue: (u64, u64), green: (u64, u64)) -> Upstream {
        Upstream {
            name: "app".into(),
            generation: 3,
            peers: vec![
                peer("10.0.0.1:80", blue.0, blue.1),
                peer("10.0.0.2:80", green.0, green.1),
            ],
            pins: Default::default(),
            slow_start_ms: None,
        }
    }

    #[test]
    fn bars_show_the_recent_split_and_sparklines_the_error_rate() {
        let mut history = WatchHistory::new(Duration::from_secs(1));
        history.record(&app((0, 0), (0, 0)));
        history.record(&app((75, 0), (25, 0)));
        history.record(&app((150, 0), (50, 5)));
        let view = history.render(&app((150, 0), (50, 5)));
        let lines: Vec<&str> = view.lines().collect();
        assert_eq!(lines[0], "upstream app (generation 3)");
        assert!(lines[1].contains(" 75.0%"), "{view}");
        assert!(lines[2].contains(" 25.0%"), "{view}");
        assert_eq!(lines[1].matches('█').count(), 23, "{view}");
        // Green: no errors, then 5 of 25 (20%, full height).
        assert!(lines[2].ends_with("errors ▁█"), "{view}");
        assert!(lines[1].ends_with("errors ▁▁"), "{view}");
    }

    #[test]
    fn a_minute_of_reads_is_kept() {
        let mut history = WatchHistory::new(Duration::from_secs(10));
        for n in 0..20 {
            history.record(&app((n * 10, 0), (0, 0)));
        }
        let spark = history.sparkline("app", "10.0.0.1:80");
        assert_eq!(spark.chars().count(), 6, "{spark:?}");
    }
}
