//! `GET {prefix}metrics`: the upstreams in Prometheus' text format (version 0.0.4).

use std::fmt::Write;

use shift_wire::{Health, Histogram, PeerState, Upstream, LATENCY_BOUNDS_MS};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How full the shared zone is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneUsage {
    pub size_bytes: u64,
    /// Bytes in wholly free pages.
    pub free_bytes: u64,
}

/// Renders every upstream's generation and every peer's weight, state, health and counters.
pub fn render(upstreams: &[Upstream], zone: Option<ZoneUsage>) -> String {
    let mut rendering = Rendering::new(zone);
    while !rendering.step(upstreams, usize::MAX) {}
    rendering.finish()
}

/// The families, in the order they are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Zone,
    Generation,
    Pinned,
    PinFallbacks,
    PeerInfo,
    Number(usize),
    Responses,
    Histogram(usize),
    State,
    Health,
}

const FAMILIES: [Family; 20] = [
    Family::Zone,
    Family::Generation,
    Family::Pinned,
    Family::PinFallbacks,
    Family::PeerInfo,
    Family::Number(0),
    Family::Number(1),
    Family::Number(2),
    Family::Number(3),
    Family::Number(4),
    Family::Number(5),
    Family::Number(6),
    Family::Number(7),
    Family::Number(8),
    Family::Number(9),
    Family::Responses,
    Family::Histogram(0),
    Family::Histogram(1),
    Family::State,
    Family::Health,
];

type Value = fn(&shift_wire::Peer) -> u64;

/// The plain numbers of a peer: name, type, help, value.
const NUMBERS: [(&str, &str, &str, Value); 10] = [
    (
        "nginx_shift_peer_weight",
        "gauge",
        "Weight the peer is selected by now.",
        |p| p.weight as u64,
    ),
    (
        "nginx_shift_peer_effective_weight",
        "gauge",
        "Weight the peer routes with when it takes requests: below its weight while shift_slow_start ramps it up.",
        |p| p.ramp.map_or(p.weight, |ramp| ramp.effective_weight) as u64,
    ),
    (
        "nginx_shift_peer_config_weight",
        "gauge",
        "Weight the config gives the peer.",
        |p| p.config_weight as u64,
    ),
    (
        "nginx_shift_peer_active",
        "gauge",
        "Requests in progress on the peer.",
        |p| p.active,
    ),
    (
        "nginx_shift_peer_requests_total",
        "counter",
        "Requests sent to the peer, retries included.",
        |p| p.requests,
    ),
    (
        "nginx_shift_peer_failures_total",
        "counter",
        "Request attempts on the peer that failed.",
        |p| p.failures,
    ),
    (
        "nginx_shift_peer_backup",
        "gauge",
        "1 for a backup server.",
        |p| p.backup as u64,
    ),
    (
        "nginx_shift_peer_ejections_total",
        "counter",
        "Times shift_eject took the peer out for failing real requests.",
        |p| p.ejection.ejections as u64,
    ),
    (
        "nginx_shift_peer_ejected",
        "gauge",
        "1 while shift_eject keeps the peer out.",
        |p| p.ejection.ejected_until_ms.is_some() as u64,
    ),
    (
        "nginx_shift_peer_closed_by_drain_total",
        "counter",
        "Requests closed at the deadline (close_after) of the peer's drain or removal.",
        |p| p.drain_close.closed_by_drain,
    ),
];

type Times = fn(&shift_wire::Peer) -> &Histogram;

/// A peer's latency histograms: name, help, which one.
const HISTOGRAMS: [(&str, &str, Times); 2] = [
    (
        "nginx_shift_peer_response_seconds",
        "Time of the peer's attempts, from sending the request to its upstream's last byte \
         (or to the failure).",
        |p| &p.response_time,
    ),
    (
        "nginx_shift_peer_header_seconds",
        "Time to the peer's response header.",
        |p| &p.header_time,
    ),
];

/// Metrics rendered a part at a time, family by family and upstream by upstream within one, so
/// that a zone of thousands of peers (about 100 lines each) can be rendered across event-loop
/// turns; each family stays one group, as the text format requires.
pub struct Rendering {
    out: String,
    zone: Option<ZoneUsage>,
    /// The family being rendered, whether its header is written, and its next upstream.
    family: usize,
    header_written: bool,
    upstream: usize,
}

impl Rendering {
    pub fn new(zone: Option<ZoneUsage>) -> Rendering {
        Rendering {
            out: String::new(),
            zone,
            family: 0,
            header_written: false,
            upstream: 0,
        }
    }

    /// Renders at least one upstream's lines of the current family, then more until about
    /// `lines` lines are written; true once every family is rendered for every upstream.
    pub fn step(&mut self, upstreams: &[Upstream], lines: usize) -> bool {
        let mut written = 0;
        while let Some(&family) = FAMILIES.get(self.family) {
            if !self.header_written {
                self.header(family);
                self.header_written = true;
            }
            while let Some(upstream) = upstreams.get(self.upstream) {
                if written >= lines {
                    return false;
                }
                written += self.upstream_lines(family, upstream);
                self.upstream += 1;
            }
            self.family += 1;
            self.header_written = false;
            self.upstream = 0;
        }
        true
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn header(&mut self, family: Family) {
        let out = &mut self.out;
        match family {
            Family::Zone => {
                if let Some(zone) = self.zone {
                    for (name, help, value) in [
                        (
                            "nginx_shift_zone_size_bytes",
                            "Size of the shared zone.",
                            zone.size_bytes,
                        ),
                        (
                            "nginx_shift_zone_free_bytes",
                            "Bytes of the shared zone in wholly free pages.",
                            zone.free_bytes,
                        ),
                    ] {
                        family_header(out, name, "gauge", help);
                        let _ = writeln!(out, "{name} {value}");
                    }
                }
            }
            Family::Generation => family_header(
                out,
                "nginx_shift_upstream_generation",
                "gauge",
                "Changes made to the upstream's weights and states so far.",
            ),
            Family::Pinned => family_header(
                out,
                "nginx_shift_pinned_requests_total",
                "counter",
                "Requests shift_pin sent to the peer they named.",
            ),
            Family::PinFallbacks => family_header(
                out,
                "nginx_shift_pin_fallbacks_total",
                "counter",
                "Requests whose shift_pin value named no peer that could take them (unknown, \
                 or unhealthy): they took the normal pick.",
            ),
            Family::PeerInfo => family_header(
                out,
                "nginx_shift_peer_info",
                "gauge",
                "Always 1; its label \"label\" is the peer's label (shift_label or the API), \
                 empty without one.",
            ),
            Family::Number(index) => {
                let (name, kind, help, _) = NUMBERS[index];
                family_header(out, name, kind, help);
            }
            Family::Responses => family_header(
                out,
                "nginx_shift_peer_responses_total",
                "counter",
                "Responses from the peer by status class.",
            ),
            Family::Histogram(index) => {
                let (name, help, _) = HISTOGRAMS[index];
                family_header(out, name, "histogram", help);
            }
            Family::State => family_header(
                out,
                "nginx_shift_peer_state",
                "gauge",
                "1 for the peer's current state (up, drain, down).",
            ),
            Family::Health => family_header(
                out,
                "nginx_shift_peer_health",
                "gauge",
                "1 for the peer's current health (unchecked, healthy, unhealthy).",
            ),
        }
    }

    /// Writes one upstream's lines of `family`; returns how many.
    fn upstream_lines(&mut self, family: Family, upstream: &Upstream) -> usize {
        let out = &mut self.out;
        let name = escape(&upstream.name);
        let per_upstream = |out: &mut String, metric: &str, value: u64| {
            let _ = writeln!(out, "{metric}{{upstream=\"{name}\"}} {value}");
            1
        };
        match family {
            Family::Zone => 0,
            Family::Generation => {
                per_upstream(out, "nginx_shift_upstream_generation", upstream.generation)
            }
            Family::Pinned => per_upstream(
                out,
                "nginx_shift_pinned_requests_total",
                upstream.pins.pinned,
            ),
            Family::PinFallbacks => per_upstream(
                out,
                "nginx_shift_pin_fallbacks_total",
                upstream.pins.fallbacks,
            ),
            Family::PeerInfo => {
                for peer in &upstream.peers {
                    let _ = writeln!(
                        out,
                        "nginx_shift_peer_info{{{},label=\"{}\"}} 1",
                        labels(upstream, peer),
                        escape(peer.label.as_deref().unwrap_or(""))
                    );
                }
                upstream.peers.len()
            }
            Family::Number(index) => {
                let (metric, _, _, value) = NUMBERS[index];
                for peer in &upstream.peers {
                    let _ = writeln!(
                        out,
                        "{metric}{{{}}} {}",
                        labels(upstream, peer),
                        value(peer)
                    );
                }
                upstream.peers.len()
            }
            Family::Responses => {
                for peer in &upstream.peers {
                    let r = &peer.responses;
                    for (class, count) in [
                        ("1xx", r.informational),
                        ("2xx", r.success),
                        ("3xx", r.redirection),
                        ("4xx", r.client_error),
                        ("5xx", r.server_error),
                    ] {
                        let _ = writeln!(
                            out,
                            "nginx_shift_peer_responses_total{{{},class=\"{class}\"}} {count}",
                            labels(upstream, peer)
                        );
                    }
                }
                upstream.peers.len() * 5
            }
            Family::Histogram(index) => {
                let (metric, _, times) = HISTOGRAMS[index];
                for peer in &upstream.peers {
                    let labels = labels(upstream, peer);
                    let histogram = times(peer);
                    let mut cumulative = 0;
                    for (bucket, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
                        cumulative += histogram.counts.get(bucket).copied().unwrap_or(0);
                        let le = *bound as f64 / 1000.0;
                        let _ =
                            writeln!(out, "{metric}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                    }
                    let count = histogram.count();
                    let sum = histogram.sum_ms as f64 / 1000.0;
                    let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {count}");
                    let _ = writeln!(out, "{metric}_sum{{{labels}}} {sum}");
                    let _ = writeln!(out, "{metric}_count{{{labels}}} {count}");
                }
                upstream.peers.len() * (LATENCY_BOUNDS_MS.len() + 3)
            }
            Family::State => {
                for peer in &upstream.peers {
                    let states = [PeerState::Up, PeerState::Drain, PeerState::Down]
                        .map(|state| (state.as_str(), peer.state == state));
                    one_of(
                        out,
                        "nginx_shift_peer_state",
                        "state",
                        &labels(upstream, peer),
                        states,
                    );
                }
                upstream.peers.len() * 3
            }
            Family::Health => {
                for peer in &upstream.peers {
                    let healths = [Health::Unchecked, Health::Healthy, Health::Unhealthy]
                        .map(|health| (health.as_str(), peer.health == health));
                    one_of(
                        out,
                        "nginx_shift_peer_health",
                        "health",
                        &labels(upstream, peer),
                        healths,
                    );
                }
                upstream.peers.len() * 3
            }
        }
    }
}

/// A gauge of one series per value `key` may take, 1 for the one that holds and 0 for the rest.
fn one_of<const N: usize>(
    out: &mut String,
    metric: &str,
    key: &str,
    labels: &str,
    values: [(&str, bool); N],
) {
    for (value, holds) in values {
        let on = u8::from(holds);
        let _ = writeln!(out, "{metric}{{{labels},{key}=\"{value}\"}} {on}");
    }
}

fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn labels(upstream: &Upstream, peer: &shift_wire::Peer) -> String {
    format!(
        "upstream=\"{}\",peer=\"{}\"",
        escape(&upstream.name),
        escape(&peer.server)
    )
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::test_support::OwnedTable;
    use crate::table::test_support::NOW_MS;

    #[test]
    fn rendered_in_small_steps_it_is_the_same_text() {
        let tables: Vec<OwnedTable> = (0..7)
            .map(|index| {
                OwnedTable::new(
                    &format!("app{index}"),
                    &[("127.0.0.1:8000", 5, false), ("127.0.0.1:8001", 1, true)],
                )
            })
            .collect();
        let upstreams: Vec<Upstream> = tables
            .iter()
            .map(|t| t.view().to_wire(&[], NOW_MS))
            .collect();
        let zone = Some(ZoneUsage {
            size_bytes: 1 << 20,
            free_bytes: 1 << 19,
        });
        let whole = render(&upstreams, zone);
        let mut rendering = Rendering::new(zone);
        let mut steps = 1;
        while !rendering.step(&upstreams, 10) {
            steps += 1;
        }
        // Not assert_eq: a failure would print both texts whole.
        assert!(
            rendering.finish() == whole,
            "rendered in steps, the text differs"
        );
        assert!(steps > 20, "{steps} steps");
        assert_eq!(whole.matches("# TYPE").count(), 21);
    }

    #[test]
    fn renders_every_family_with_labels() {
        let owned = OwnedTable::new(
            "app",
            &[
                ("127.0.0.1:8000", 5, false),
                ("unix:/run/b\"x.sock", 1, true),
            ],
        );
        let text = render(&[owned.view().to_wire(&[], NOW_MS)], None);
        assert!(
            text.contains("nginx_shift_upstream_generation{upstream=\"app\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("nginx_shift_peer_weight{upstream=\"app\",peer=\"127.0.0.1:8000\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("peer=\"unix:/run/b\\\"x.sock\",state=\"down\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE nginx_shift_peer_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("nginx_shift_pin_fallbacks_total{upstream=\"app\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("nginx_shift_peer_ejected{upstream=\"app\",peer=\"127.0.0.1:8000\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "nginx_shift_peer_closed_by_drain_total{upstream=\"app\",peer=\"127.0.0.1:8000\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "nginx_shift_peer_info{upstream=\"app\",peer=\"127.0.0.1:8000\",label=\"\"} 1\n"
            ),
            "{text}"
        );
        let peer = &owned.peers[0];
        peer.record_times(30, Some(4));
        let text = render(&[owned.view().to_wire(&[], NOW_MS)], None);
        let series =
            "nginx_shift_peer_response_seconds_bucket{upstream=\"app\",peer=\"127.0.0.1:8000\"";
        assert!(
            text.contains(&format!("{series},le=\"0.025\"}} 0\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{series},le=\"0.03\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{series},le=\"+Inf\"}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains("nginx_shift_peer_header_seconds_sum{upstream=\"app\",peer=\"127.0.0.1:8000\"} 0.004\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE").count(), 19);
    }
}
