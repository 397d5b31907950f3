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

use serde::{Deserialize, Serialize};

use crate::{PeerState, Upstream};

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
#[serde(deny_unknown_fields)]
pub struct DesiredUpstream {
    /// Every peer, sorted by address.
    pub peers: Vec<DesiredPeer>,
    /// When it was written (Unix milliseconds, the writer's clock): how long a host that has
    /// not applied it has been behind.
    pub written_ms: u64,
}

/// One peer as every host should have it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

/// What a host's agent last did, written when it changes (its counters every `--report-every`,
/// or at every `--every` while a command asks for fresh reports).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    /// Every desired state up to this etcd revision is applied (or listed in `problems`).
    pub applied_revision: i64,
    /// The local module's upstreams after applying: weights, states, generation, counters,
    /// health.
    pub upstreams: Vec<Upstream>,
    /// What keeps this host from the desired state, e.g. Nginx unreachable, or a peer that is
    /// not in this host's config. Empty when it is in sync.
    pub problems: Vec<String>,
    /// When the agent wrote this report (Unix milliseconds, the host's clock).
    pub reported_ms: u64,
}

/// A host that joined the fleet, and the revision its agent last applied (where a restarted
/// agent resumes watching).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub host: String,
    pub applied_revision: i64,
}
