//! What a fleet of Nginx hosts shares through etcd (keys under a prefix, `/nginx-shift/` by
//! default): each upstream's desired state, which the commands that change traffic write, and
//! each host's report, which the `shiftctl agent` beside its Nginx writes.
//!
//! - `PREFIX/upstreams/NAME` → [`DesiredUpstream`], replaced whole in one compare-and-swap
//! - `PREFIX/hosts/HOST` → [`HostReport`], held by the agent's lease: it vanishes with the agent
//! - `PREFIX/members/HOST` → [`Member`], no lease: the hosts that ever joined, so that one whose
//!   report vanished is known to be gone
//! - `PREFIX/stable/NAME` → the stable set a switch or canary recorded (the `UpstreamPatch`es
//!   `shiftctl rollback` applies), so that any controller can roll back
//! - `PREFIX/fresh-reports` → held by a command that reads counters (a canary, a drain), under
//!   a short lease: the agents report counters as they move while it exists

//!
//! Readers are tolerant and writers strict: a reader ignores the fields it does not know (and a
//! writer that rewrites a value keeps them, in `unknown`), and every value says in `format` and
//! `written_by` what wrote it. A change that an older reader must not ignore raises
//! [`FORMAT`]: an older agent then reports that it is behind its desired state, and an older
//! command refuses to rewrite it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{PeerState, Upstream};

/// The format of the desired states this build writes and fully understands. Values written
/// before formats were numbered read as 1.
pub const FORMAT: u32 = 1;

fn first_format() -> u32 {
    1
}

/// Key of an upstream's desired state under the prefix.
pub fn upstream_key(prefix: &str, upstream: &str) -> String {
    format!("{prefix}upstreams/{upstream}")
}

/// Key of a host's report under the prefix.
pub fn report_key(prefix: &str, host: &str) -> String {
    format!("{prefix}hosts/{host}")
}

/// Key of an upstream's stable set under the prefix.
pub fn stable_key(prefix: &str, upstream: &str) -> String {
    format!("{prefix}stable/{upstream}")
}

/// Key that asks the agents for fresh counters: while it exists (a command reading the fleet
/// holds it under a short lease), each writes its report when its counters move, not only
/// every `--report-every`.
pub fn fresh_reports_key(prefix: &str) -> String {
    format!("{prefix}fresh-reports")
}

/// Key of a host's membership under the prefix.
pub fn member_key(prefix: &str, host: &str) -> String {
    format!("{prefix}members/{host}")
}

/// The whole desired state of one upstream on every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredUpstream {
    /// What its writer understood: a reader with an older [`FORMAT`] may miss what matters.
    #[serde(default = "first_format")]
    pub format: u32,
    /// The tool and version that wrote it, e.g. "shiftctl 0.1.0".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub written_by: String,
    /// Every peer, sorted by address.
    pub peers: Vec<DesiredPeer>,
    /// When it was written (Unix milliseconds, the writer's clock): how long a host that has
    /// not applied it has been behind.
    pub written_ms: u64,
    /// Fields a newer writer added that this build does not know: ignored, and written back
    /// as they were.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

impl Default for DesiredUpstream {
    /// No peer, in this build's format, written by nobody yet.
    fn default() -> DesiredUpstream {
        DesiredUpstream {
            format: FORMAT,
            written_by: String::new(),
            peers: Vec::new(),
            written_ms: 0,
            unknown: BTreeMap::new(),
        }
    }
}

impl DesiredUpstream {
    /// Whether this build may miss something its writer meant.
    pub fn is_newer_than_this_build(&self) -> bool {
        self.format > FORMAT
    }
}

/// One peer as every host should have it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesiredPeer {
    pub server: String,
    pub weight: u32,
    pub state: PeerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Added at run time (`shiftctl add`), not a `server` line: agents add it where it is
    /// missing, and remove it from their Nginx when it leaves the desired state.
    #[serde(default)]
    pub runtime: bool,
    /// Fields a newer writer added: ignored, and written back as they were.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

/// What a host's agent last did, written when it changes (its counters every `--report-every`,
/// or at every `--every` while a command asks for fresh reports).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// The tool and version of the agent, e.g. "shiftctl 0.1.0".
    #[serde(default)]
    pub written_by: String,
    /// Every desired state up to this etcd revision is applied (or listed in `problems`).
    pub applied_revision: i64,
    /// The local module's upstreams after applying: weights, states, generation, counters,
    /// health.
    pub upstreams: Vec<Upstream>,
    /// What keeps this host from the desired state, e.g. Nginx unreachable, or a peer that is
    /// not in this host's config. Empty when it is in sync.
    pub problems: Vec<String>,
    /// Those of `problems` that concern one upstream only, by upstream: they keep that
    /// upstream from being in sync on this host, not the others.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upstream_problems: BTreeMap<String, Vec<String>>,
    /// When the agent wrote this report (Unix milliseconds, the host's clock).
    pub reported_ms: u64,
}

impl HostReport {
    /// The problems that keep `upstream` from being in sync here: those of the whole host and
    /// those of `upstream`, not those of the other upstreams. The host's own are `problems`
    /// less every upstream's (counted, so that one text the host and an upstream share, or
    /// two upstreams share, stays where it belongs); a report without `upstream_problems` (an
    /// older agent) has only the host's.
    pub fn problems_of(&self, upstream: &str) -> Vec<&str> {
        let mut of_upstreams: Vec<&String> = self.upstream_problems.values().flatten().collect();
        let mut found: Vec<&str> = Vec::new();
        for problem in &self.problems {
            match of_upstreams.iter().position(|listed| *listed == problem) {
                Some(at) => {
                    of_upstreams.swap_remove(at);
                }
                None => found.push(problem),
            }
        }
        if let Some(own) = self.upstream_problems.get(upstream) {
            found.extend(own.iter().map(String::as_str));
        }
        found
    }
}

/// A host that joined the fleet, and the revision its agent last applied (where a restarted
/// agent resumes watching).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub host: String,
    pub applied_revision: i64,
    /// The tool and version of its agent.
    #[serde(default)]
    pub written_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_desired_state_keeps_the_fields_it_does_not_know() {
        let newer = r#"{"format":2,"written_by":"shiftctl 9.0.0","peers":[
            {"server":"10.0.0.1:80","weight":3,"state":"up","runtime":false,"ramp":"30s"}],
            "written_ms":5,"canary_group":"eu"}"#;
        let read: DesiredUpstream = serde_json::from_str(newer).unwrap();
        assert!(read.is_newer_than_this_build());
        assert_eq!(read.peers[0].weight, 3);
        assert_eq!(read.unknown["canary_group"], "eu");
        let again: Value = serde_json::to_value(&read).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(newer).unwrap());
    }

    #[test]
    fn a_desired_state_from_before_formats_reads_as_format_1() {
        let old = r#"{"peers":[],"written_ms":5}"#;
        let read: DesiredUpstream = serde_json::from_str(old).unwrap();
        assert_eq!((read.format, read.written_by.as_str()), (1, ""));
        assert!(!read.is_newer_than_this_build());
    }

    #[test]
    fn a_problem_of_one_upstream_does_not_hold_back_another() {
        let report = HostReport {
            problems: vec!["nginx down".into(), "api: bad key".into()],
            upstream_problems: BTreeMap::from([("api".into(), vec!["api: bad key".into()])]),
            ..Default::default()
        };
        assert_eq!(report.problems_of("app"), ["nginx down"]);
        assert_eq!(report.problems_of("api"), ["nginx down", "api: bad key"]);
    }

    #[test]
    fn a_problem_two_upstreams_share_holds_back_both() {
        let refused = "the API refused the PATCH".to_string();
        let report = HostReport {
            problems: vec![refused.clone(), refused.clone()],
            upstream_problems: BTreeMap::from([
                ("api".into(), vec![refused.clone()]),
                ("app".into(), vec![refused.clone()]),
            ]),
            ..Default::default()
        };
        assert_eq!(report.problems_of("app"), [refused.as_str()]);
        assert_eq!(report.problems_of("api"), [refused.as_str()]);
        assert!(report.problems_of("other").is_empty());
    }
}
