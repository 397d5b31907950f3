//! `shiftctl status --fleet`: which hosts applied the latest desired state (SYNCED), which
//! are behind and by how much (STALE), which stopped reporting (GONE), and each upstream's
//! split over the fleet. Computed from what etcd holds; no I/O here.

use std::collections::BTreeMap;

use serde::Serialize;
use shift_wire::fleet::{DesiredUpstream, HostReport, Member};
use shift_wire::PeerState;

/// One host, as the fleet sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub status: Sync,
    pub applied_revision: i64,
    /// Desired states written after the revision it applied.
    pub behind_changes: usize,
    /// How long ago the oldest of those was written.
    pub behind_ms: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Sync {
    /// Applied every desired state, with no problem.
    Synced,
    /// Reporting, but behind or with a problem.
    Stale,
    /// Joined once; its report is gone (its agent stopped, or its host is down).
    Gone,
}

impl Sync {
    pub fn as_str(self) -> &'static str {
        match self {
            Sync::Synced => "SYNCED",
            Sync::Stale => "STALE",
            Sync::Gone => "GONE",
        }
    }
}

/// One upstream over the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamSplit {
    pub upstream: String,
    /// The etcd revision of its desired state.
    pub revision: i64,
    pub peers: Vec<PeerSplit>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerSplit {
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub weight: u32,
    pub state: PeerState,
    /// Its part of the weight of the peers that are up, 0 to 1.
    pub share: f64,
    /// Requests it served, summed over the live hosts.
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetStatus {
    /// What is wrong with the fleet as a whole: etcd's alarms, desired states no host can
    /// read.
    pub warnings: Vec<String>,
    pub hosts: Vec<HostStatus>,
    pub upstreams: Vec<UpstreamSplit>,
}

/// What `status --fleet` warns of, besides the hosts: etcd's active `alarms`, and the
/// desired-state keys this build cannot read (by upstream, with why).
pub fn warnings(alarms: &[String], unreadable: &BTreeMap<String, String>) -> Vec<String> {
    let alarms = alarms.iter().map(|alarm| {
        format!(
            "etcd alarm {alarm}: etcd refuses every write until it is compacted, defragmented \
             and the alarm disarmed (docs/fleet.md, \"Keeping etcd small\"); the hosts' reports \
             below are their last ones"
        )
    });
    let unreadable = unreadable
        .iter()
        .map(|(upstream, why)| format!("upstream {upstream}: {why}"));
    alarms.chain(unreadable).collect()
}

/// The fleet's status from the desired states (with their revisions), the members and the live
/// reports, at `now_ms`.
pub fn fleet_status(
    desired: &BTreeMap<String, (i64, DesiredUpstream)>,
    members: &[Member],
    reports: &[HostReport],
    now_ms: u64,
) -> FleetStatus {
    let mut hosts: BTreeMap<&str, HostStatus> = BTreeMap::new();
    for member in members {
        hosts.insert(
            &member.host,
            HostStatus {
                host: member.host.clone(),
                status: Sync::Gone,
                applied_revision: member.applied_revision,
                behind_changes: 0,
                behind_ms: 0,
                problems: Vec::new(),
            },
        );
    }
    for report in reports {
        let behind: Vec<&DesiredUpstream> = desired
            .values()
            .filter(|(revision, _)| *revision > report.applied_revision)
            .map(|(_, state)| state)
            .collect();
        let oldest = behind.iter().map(|state| state.written_ms).min();
        let in_sync = behind.is_empty() && report.problems.is_empty();
        hosts.insert(
            &report.host,
            HostStatus {
                host: report.host.clone(),
                status: if in_sync { Sync::Synced } else { Sync::Stale },
                applied_revision: report.applied_revision,
                behind_changes: behind.len(),
                behind_ms: oldest.map_or(0, |written| now_ms.saturating_sub(written)),
                problems: report.problems.clone(),
            },
        );
    }
    let upstreams = desired
        .iter()
        .map(|(name, (revision, state))| split(name, *revision, state, reports))
        .collect();
    FleetStatus {
        warnings: Vec::new(),
        hosts: hosts.into_values().collect(),
        upstreams,
    }
}

fn split(
    name: &str,
    revision: i64,
    desired: &DesiredUpstream,
    reports: &[HostReport],
) -> UpstreamSplit {
    let up_weight: u64 = desired
        .peers
        .iter()
        .filter(|peer| peer.state == PeerState::Up)
        .map(|peer| peer.weight as u64)
        .sum();
    let peers = desired
        .peers
        .iter()
        .map(|peer| {
            let requests = reports
                .iter()
                .flat_map(|report| &report.upstreams)
                .filter(|upstream| upstream.name == name)
                .flat_map(|upstream| &upstream.peers)
                .filter(|reported| reported.server == peer.server)
                .map(|reported| reported.requests)
                .sum();
            let taking = peer.state == PeerState::Up && up_weight > 0;
            PeerSplit {
                server: peer.server.clone(),
                label: peer.label.clone(),
                weight: peer.weight,
                state: peer.state,
                share: if taking {
                    peer.weight as f64 / up_weight as f64
                } else {
                    0.0
                },
                requests,
            }
        })
        .collect();
    UpstreamSplit {
        upstream: name.to_string(),
        revision,
        peers,
    }
}

/// The text `status --fleet` prints.
pub fn render(status: &FleetStatus) -> String {
    let mut out = String::new();
    for warning in &status.warnings {
        out.push_str(&format!("WARNING: {warning}\n"));
    }
    if !status.warnings.is_empty() {
        out.push('\n');
    }
    out.push_str("HOST                 STATUS  APPLIED  BEHIND\n");
    for host in &status.hosts {
        let behind = match host.status {
            Sync::Stale if host.behind_changes > 0 => format!(
                "{} change(s), {:.1} s",
                host.behind_changes,
                host.behind_ms as f64 / 1000.0
            ),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<20} {:<7} {:>7}  {behind}\n",
            host.host,
            host.status.as_str(),
            host.applied_revision
        ));
        for problem in &host.problems {
            out.push_str(&format!("    {problem}\n"));
        }
    }
    for upstream in &status.upstreams {
        out.push_str(&format!(
            "\nupstream {} (desired at revision {})\nPEER                     LABEL        WEIGHT  SHARE  STATE  REQUESTS\n",
            upstream.upstream, upstream.revision
        ));
        for peer in &upstream.peers {
            out.push_str(&format!(
                "{:<24} {:<12} {:>6} {:>5.1}%  {:<5} {:>9}\n",
                peer.server,
                peer.label.as_deref().unwrap_or("-"),
                peer.weight,
                peer.share * 100.0,
                peer.state.as_str(),
                peer.requests
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shift_wire::fleet::DesiredPeer;

    fn desired(weights: &[(&str, u32)], written_ms: u64) -> DesiredUpstream {
        DesiredUpstream {
            peers: weights
                .iter()
                .map(|(server, weight)| DesiredPeer {
                    server: server.to_string(),
                    weight: *weight,
                    state: PeerState::Up,
                    label: None,
                    runtime: false,
                    ..Default::default()
                })
                .collect(),
            written_ms,
            ..Default::default()
        }
    }

    fn report(host: &str, applied_revision: i64, problems: &[&str]) -> HostReport {
        HostReport {
            host: host.into(),
            applied_revision,
            upstreams: Vec::new(),
            problems: problems.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn member(host: &str, applied_revision: i64) -> Member {
        Member {
            host: host.into(),
            applied_revision,
            written_by: String::new(),
        }
    }

    #[test]
    fn hosts_are_synced_stale_or_gone() {
        let desired = BTreeMap::from([
            (
                "app".to_string(),
                (10, desired(&[("a:1", 30), ("b:1", 70)], 1_000)),
            ),
            ("api".to_string(), (7, desired(&[("c:1", 1)], 500))),
        ]);
        let members = [
            member("n1", 10),
            member("n2", 8),
            member("n3", 5),
            member("n4", 10),
        ];
        let reports = [
            report("n1", 10, &[]),
            report("n2", 8, &[]),
            report("n4", 10, &["no server a:1 here"]),
        ];
        let status = fleet_status(&desired, &members, &reports, 3_000);
        let summary: Vec<(&str, Sync, usize, u64)> = status
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.status, h.behind_changes, h.behind_ms))
            .collect();
        assert_eq!(
            summary,
            [
                ("n1", Sync::Synced, 0, 0),
                ("n2", Sync::Stale, 1, 2_000),
                ("n3", Sync::Gone, 0, 0),
                ("n4", Sync::Stale, 0, 0),
            ]
        );
        let app = &status.upstreams[1];
        assert_eq!(app.upstream, "app");
        assert_eq!(app.peers[1].share, 0.7);
        let text = render(&status);
        assert!(
            text.contains("n2                   STALE         8  1 change(s), 2.0 s"),
            "{text}"
        );
        assert!(text.contains("no server a:1 here"), "{text}");
    }
}
