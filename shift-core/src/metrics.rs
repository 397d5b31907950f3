//! `GET {prefix}metrics`: the upstreams in Prometheus' text format (version 0.0.4).

use std::fmt::Write;

use shift_wire::{Health, Histogram, PeerState, Upstream, LATENCY_BOUNDS_MS};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every upstream's generation and every peer's weight, state, health and counters.
/// How full the shared zone is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneUsage {
    pub size_bytes: u64,
    /// Bytes in wholly free pages.
    pub free_bytes: u64,
}

pub fn render(upstreams: &[Upstream], zone: Option<ZoneUsage>) -> String {
    let mut out = String::new();
    if let Some(zone) = zone {
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
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    family(
        &mut out,
        "nginx_shift_upstream_generation",
        "gauge",
        "Changes made to the upstream's weights and states so far.",
    );
    for upstream in upstreams {
        let _ = writeln!(
            out,
            "nginx_shift_upstream_generation{{upstream=\"{}\"}} {}",
            escape(&upstream.name),
            upstream.generation
        );
    }

    for (name, help, value) in [
        (
            "nginx_shift_pinned_requests_total",
            "Requests shift_pin sent to the peer they named.",
            (|u| u.pins.pinned) as fn(&Upstream) -> u64,
        ),
        (
            "nginx_shift_pin_fallbacks_total",
            "Requests whose shift_pin value named no peer that could take them (unknown, or \
             unhealthy): they took the normal pick.",
            |u| u.pins.fallbacks,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for upstream in upstreams {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\"}} {}",
                escape(&upstream.name),
                value(upstream)
            );
        }
    }

    family(
        &mut out,
        "nginx_shift_peer_info",
        "gauge",
        "Always 1; its label \"label\" is the peer's label (shift_label or the API), empty \
         without one.",
    );
    for (upstream, peer) in peers(upstreams) {
        let _ = writeln!(
            out,
            "nginx_shift_peer_info{{{},label=\"{}\"}} 1",
            labels(upstream, peer),
            escape(peer.label.as_deref().unwrap_or(""))
        );
    }

    type Value = fn(&shift_wire::Peer) -> u64;
    let numbers: [(&str, &str, &str, Value); 6] = [
        (
            "nginx_shift_peer_weight",
            "gauge",
            "Weight the peer is selected by now.",
            |p| p.weight as u64,
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
    ];
    for (name, kind, help, value) in numbers {
        family(&mut out, name, kind, help);
        for (upstream, peer) in peers(upstreams) {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(upstream, peer), value(peer));
        }
    }

    family(
        &mut out,
        "nginx_shift_peer_responses_total",
        "counter",
        "Responses from the peer by status class.",
    );
    for (upstream, peer) in peers(upstreams) {
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

    type Times = fn(&shift_wire::Peer) -> &Histogram;
    let histograms: [(&str, &str, Times); 2] = [
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
    for (name, help, times) in histograms {
        family(&mut out, name, "histogram", help);
        for (upstream, peer) in peers(upstreams) {
            let labels = labels(upstream, peer);
            let histogram = times(peer);
            let mut cumulative = 0;
            for (bucket, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
                cumulative += histogram.counts.get(bucket).copied().unwrap_or(0);
                let le = *bound as f64 / 1000.0;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let count = histogram.count();
            let sum = histogram.sum_ms as f64 / 1000.0;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }

    family(
        &mut out,
        "nginx_shift_peer_state",
        "gauge",
        "1 for the peer's current state (up, drain, down).",
    );
    for (upstream, peer) in peers(upstreams) {
        for state in [PeerState::Up, PeerState::Drain, PeerState::Down] {
            let on = u8::from(peer.state == state);
            let _ = writeln!(
                out,
                "nginx_shift_peer_state{{{},state=\"{}\"}} {on}",
                labels(upstream, peer),
                state.as_str()
            );
        }
    }

    family(
        &mut out,
        "nginx_shift_peer_health",
        "gauge",
        "1 for the peer's current health (unchecked, healthy, unhealthy).",
    );
    for (upstream, peer) in peers(upstreams) {
        for health in [Health::Unchecked, Health::Healthy, Health::Unhealthy] {
            let on = u8::from(peer.health == health);
            let _ = writeln!(
                out,
                "nginx_shift_peer_health{{{},health=\"{}\"}} {on}",
                labels(upstream, peer),
                health.as_str()
            );
        }
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn peers(upstreams: &[Upstream]) -> impl Iterator<Item = (&Upstream, &shift_wire::Peer)> {
    upstreams
        .iter()
        .flat_map(|upstream| upstream.peers.iter().map(move |peer| (upstream, peer)))
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

    #[test]
    fn renders_every_family_with_labels() {
        let owned = OwnedTable::new(
            "app",
            &[
                ("127.0.0.1:8000", 5, false),
                ("unix:/run/b\"x.sock", 1, true),
            ],
        );
        let text = render(&[owned.view().to_wire(&[])], None);
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
            text.contains(
                "nginx_shift_peer_info{upstream=\"app\",peer=\"127.0.0.1:8000\",label=\"\"} 1\n"
            ),
            "{text}"
        );
        let peer = &owned.peers[0];
        peer.record_times(30, Some(4));
        let text = render(&[owned.view().to_wire(&[])], None);
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
        assert_eq!(text.matches("# TYPE").count(), 15);
    }
}
