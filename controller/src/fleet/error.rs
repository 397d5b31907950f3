//! How a fleet change can fail: one Nginx refused (and what was put back), etcd refused, or
//! hosts of an etcd fleet do not have it (`Laggards`).

use shiftctl::fleet::desired::DesiredError;

use super::store::StoreError;
use crate::client::ClientError;

/// A fleet change that did not happen everywhere.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Plan(String),
    #[error("{cause}; put back the {restored} Nginx(es) already changed, so nothing changed")]
    RolledBack { cause: ClientError, restored: usize },
    #[error(
        "{cause}; and putting back {socket} failed too ({restore_error}): the fleet is split, \
         check it with \"shiftctl status\""
    )]
    Split {
        cause: ClientError,
        socket: String,
        restore_error: Box<ClientError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("{0}")]
    Partial(Laggards),
}

/// The hosts of an etcd fleet that do not have a change (`settle`): GONE ones (they joined
/// once; their agent no longer reports) and STALE ones (reporting, but behind or with a
/// problem of this upstream).
#[derive(Debug, Clone, Default)]
pub struct Laggards {
    pub upstream: String,
    /// The desired state's revision they lack.
    pub revision: i64,
    /// Whether this command wrote it (else the hosts were awaited before any write).
    pub written: bool,
    /// How many hosts report at all.
    pub reporting: usize,
    pub gone: Vec<String>,
    /// Each with why: its problem, or the revision it applied.
    pub stale: Vec<String>,
}

impl Laggards {
    pub fn is_empty(&self) -> bool {
        self.gone.is_empty() && self.stale.is_empty() && self.reporting > 0
    }

    /// What a command that went on without them adds to its outcome: "" when none lack it.
    pub fn outcome_note(&self) -> String {
        if self.is_empty() {
            String::new()
        } else {
            format!(
                " on the hosts that report; not yet on {} (--allow-partial)",
                self.hosts()
            )
        }
    }

    /// "GONE: a, b; STALE: c (why)".
    pub fn hosts(&self) -> String {
        let mut parts = Vec::new();
        if self.reporting == 0 {
            parts.push("no host reports at all".to_string());
        }
        if !self.gone.is_empty() {
            parts.push(format!("GONE: {}", self.gone.join(", ")));
        }
        if !self.stale.is_empty() {
            parts.push(format!("STALE: {}", self.stale.join(", ")));
        }
        parts.join("; ")
    }
}

impl std::fmt::Display for Laggards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let upstream = &self.upstream;
        let hosts = self.hosts();
        if self.written {
            write!(
                f,
                "revision {} of upstream \"{upstream}\" is written in etcd but not on every host \
                 ({hosts}): each takes it when its agent reports again or its problem is fixed; \
                 \"shiftctl status --fleet\" shows them (--allow-partial accepts a change that \
                 reached only the hosts that report)",
                self.revision
            )
        } else {
            write!(
                f,
                "not every host of the fleet has upstream \"{upstream}\" in sync ({hosts}): \
                 nothing was changed; bring them back, forget a host that left for good \
                 (\"etcdctl del PREFIX/members/HOST\"), or pass --allow-partial to go on with the \
                 hosts that report"
            )
        }
    }
}

impl FleetError {
    /// The client error behind this failure, if there is one.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            FleetError::Client(error) => Some(error),
            FleetError::RolledBack { cause, .. } | FleetError::Split { cause, .. } => Some(cause),
            FleetError::Plan(_)
            | FleetError::Store(_)
            | FleetError::Desired(_)
            | FleetError::Partial(_) => None,
        }
    }

    /// Someone else changed the upstream since it was read: running again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, FleetError::Store(StoreError::Conflict { .. }))
            || self.client_error().and_then(ClientError::api_code) == Some("conflict")
    }
}
