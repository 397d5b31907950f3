//! When an agent writes its host's report to etcd. Every write is a revision that etcd keeps
//! until it is compacted, so an idle fleet writes none: a report goes out when what it says
//! changed (the revision applied, weights, states, labels, health, problems), when its lease is
//! new (the old report went with the old lease), and otherwise only when its counters moved and
//! either `--report-every` passed since the last one or a command asked for fresh ones (the
//! key `fresh-reports`: a canary judging its steps, a deploy waiting for a started side's
//! checks and lookups). While one asks, check and lookup times count as moved too. The lease is
//! kept alive by etcd's keep-alive, which adds no revision.

use std::time::Duration;

use shift_wire::fleet::HostReport;
use shift_wire::{CheckStatus, Peer, PinCounts, Upstream};

/// What the agent knows of its last written report.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The report as written, with its counters.
    pub report: HostReport,
    /// The lease it was written under.
    pub lease: i64,
}

/// Why to write a report now, or `None`: nothing worth a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The first one, or the lease is new.
    Lease,
    /// What it says changed.
    Changed,
    /// Only the counters moved, and fresh ones are due.
    Counters,
}

pub fn decide(
    last: Option<&Published>,
    now: &HostReport,
    lease: i64,
    since_last: Duration,
    report_every: Duration,
    fresh_counters_wanted: bool,
) -> Option<Write> {
    let Some(last) = last else {
        return Some(Write::Lease);
    };
    if last.lease != lease {
        return Some(Write::Lease);
    }
    if settings(&last.report) != settings(now) {
        return Some(Write::Changed);
    }
    // A command that asks for fresh reports may judge by check and lookup times (a deploy's
    // started side): those count then; otherwise only the counters.
    let moved = if fresh_counters_wanted {
        HostReport {
            reported_ms: 0,
            ..last.report.clone()
        } != HostReport {
            reported_ms: 0,
            ..now.clone()
        }
    } else {
        counted(&last.report) != counted(now)
    };
    (moved && (fresh_counters_wanted || since_last >= report_every)).then_some(Write::Counters)
}

/// What the report says: no counters and no times, which move with traffic and time alone.
fn settings(report: &HostReport) -> HostReport {
    strip(report, true)
}

/// The report's settings and counters, without the times: when it was written, the checks'
/// and the lookups' times.
fn counted(report: &HostReport) -> HostReport {
    strip(report, false)
}

fn strip(report: &HostReport, counters: bool) -> HostReport {
    HostReport {
        upstreams: report
            .upstreams
            .iter()
            .map(|upstream| Upstream {
                peers: upstream
                    .peers
                    .iter()
                    .map(|peer| strip_peer(peer, counters))
                    .collect(),
                pins: if counters {
                    PinCounts::default()
                } else {
                    upstream.pins
                },
                ..upstream.clone()
            })
            .collect(),
        reported_ms: 0,
        ..report.clone()
    }
}

fn strip_peer(peer: &Peer, counters: bool) -> Peer {
    let timeless = Peer {
        resolved_ms: None,
        ramp: None,
        ejection: Default::default(),
        drain_close: Default::default(),
        check: peer.check.as_ref().map(|check| CheckStatus {
            last_check_ms: None,
            consecutive_fails: 0,
            consecutive_passes: 0,
            ..check.clone()
        }),
        ..peer.clone()
    };
    if !counters {
        return timeless;
    }
    Peer {
        requests: 0,
        failures: 0,
        active: 0,
        responses: Default::default(),
        response_time: Default::default(),
        header_time: Default::default(),
        ..timeless
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shift_wire::{Health, PeerOrigin, PeerState};

    fn report(weight: u32, requests: u64, last_check_ms: u64) -> HostReport {
        HostReport {
            host: "web1".into(),
            applied_revision: 7,
            upstreams: vec![Upstream {
                name: "app".into(),
                generation: 3,
                peers: vec![Peer {
                    server: "10.0.0.1:80".into(),
                    weight,
                    state: PeerState::Up,
                    health: Health::Healthy,
                    label: None,
                    eligible: true,
                    backup: false,
                    origin: PeerOrigin::Config,
                    joined_ms: 1,
                    resolved_ms: None,
                    ramp: None,
                    ejection: Default::default(),
                    drain_close: Default::default(),
                    config_weight: 1,
                    requests,
                    failures: 0,
                    active: 0,
                    responses: Default::default(),
                    response_time: Default::default(),
                    header_time: Default::default(),
                    check: Some(CheckStatus {
                        last_check_ms: Some(last_check_ms),
                        last_error: None,
                        consecutive_fails: 0,
                        consecutive_passes: (last_check_ms / 1000) as u32,
                    }),
                }],
                pins: Default::default(),
                slow_start_ms: None,
            }],
            reported_ms: last_check_ms,
            ..Default::default()
        }
    }

    fn published(report: HostReport) -> Published {
        Published { report, lease: 9 }
    }

    const EVERY: Duration = Duration::from_secs(30);

    #[test]
    fn an_idle_host_writes_nothing_after_its_first_report() {
        let first = report(5, 0, 1_000);
        assert_eq!(
            decide(None, &first, 9, EVERY, EVERY, false),
            Some(Write::Lease)
        );
        let last = published(first);
        // Checks pass every 2 s and time goes by: nothing to say.
        let later = report(5, 0, 61_000);
        let long = Duration::from_secs(3600);
        assert_eq!(decide(Some(&last), &later, 9, long, EVERY, false), None);
        // While a command asks, a later check is worth a report (a deploy waits for one).
        assert_eq!(
            decide(Some(&last), &later, 9, Duration::ZERO, EVERY, true),
            Some(Write::Counters)
        );
        let same = report(5, 0, 1_000);
        assert_eq!(decide(Some(&last), &same, 9, long, EVERY, true), None);
    }

    #[test]
    fn a_change_is_written_at_once_and_counters_when_due_or_wanted() {
        let last = published(report(5, 10, 1_000));
        let second = Duration::from_secs(1);
        assert_eq!(
            decide(Some(&last), &report(6, 10, 2_000), 9, second, EVERY, false),
            Some(Write::Changed)
        );
        let busier = report(5, 60, 2_000);
        assert_eq!(decide(Some(&last), &busier, 9, second, EVERY, false), None);
        assert_eq!(
            decide(Some(&last), &busier, 9, EVERY, EVERY, false),
            Some(Write::Counters)
        );
        assert_eq!(
            decide(Some(&last), &busier, 9, second, EVERY, true),
            Some(Write::Counters),
            "a canary asked for fresh counters"
        );
        assert_eq!(
            decide(Some(&last), &report(5, 10, 1_000), 10, second, EVERY, false),
            Some(Write::Lease),
            "the report went with the old lease"
        );
    }
}
