//! A bounded history of an upstream's changes (issue 30): what changed (a peer's field, from
//! what to what), at which generation and time, and who changed it. Each record is a fixed
//! run of atomic words, so that a ring of them can live in the shared zone beside the
//! upstream's table and be written and read from safe code (under the table's write lock);
//! `record.rs` encodes and decodes records, `ring.rs` keeps the ring's order and bound, and
//! `snapshot.rs` finds what a change moved.
//!
//! The FFI module places a ring per upstream in the zone (`shift_history`); writers append what
//! they did while they hold the table's write lock, and the API reads under it.

mod record;
mod ring;
mod snapshot;

pub use record::{FIELD_BYTES, PEER_BYTES, RECORD_WORDS, VALUE_BYTES};
pub use ring::{RecordCell, Ring, RingHead};
pub use snapshot::{differences, Member, Snapshot};

/// Who made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An API call, with the caller's uid and pid from the socket's credentials (none over
    /// TCP).
    Api { uid: Option<u32>, pid: Option<u32> },
    /// A reload's configuration, committed.
    Reload,
    /// An answer of the resolver for a `shift_resolve` name.
    Resolver,
    /// An active health check's verdict.
    Health,
    /// `shift_eject`, taking a peer out or letting it back.
    Eject,
}

/// One change of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The upstream's generation the change made (health and ejections, which make none, carry
    /// the one they happened at).
    pub generation: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    pub actor: Actor,
    /// The peer's address.
    pub peer: String,
    /// What changed: `weight`, `state`, `label`, `health`, `ejected`, `member`…
    pub field: String,
    /// Its value before and after (`""` for none, e.g. a peer that was not a member).
    pub old: String,
    pub new: String,
}

impl Change {
    /// A change as a state file kept it; `None` for an actor this module does not know.
    pub fn from_wire(entry: &shift_wire::HistoryEntry) -> Option<Change> {
        let actor = match entry.actor.as_str() {
            "api" => Actor::Api {
                uid: entry.uid,
                pid: entry.pid,
            },
            "reload" => Actor::Reload,
            "resolver" => Actor::Resolver,
            "health" => Actor::Health,
            "eject" => Actor::Eject,
            _ => return None,
        };
        Some(Change {
            generation: entry.generation,
            at_ms: entry.at_ms,
            actor,
            peer: entry.peer.clone(),
            field: entry.field.clone(),
            old: entry.old.clone(),
            new: entry.new.clone(),
        })
    }

    /// As the API sends it.
    pub fn to_wire(&self) -> shift_wire::HistoryEntry {
        let (actor, uid, pid) = match self.actor {
            Actor::Api { uid, pid } => ("api", uid, pid),
            Actor::Reload => ("reload", None, None),
            Actor::Resolver => ("resolver", None, None),
            Actor::Health => ("health", None, None),
            Actor::Eject => ("eject", None, None),
        };
        shift_wire::HistoryEntry {
            generation: self.generation,
            at_ms: self.at_ms,
            actor: actor.to_string(),
            uid,
            pid,
            peer: self.peer.clone(),
            field: self.field.clone(),
            old: self.old.clone(),
            new: self.new.clone(),
        }
    }
}

/// A change for the tests of the parts.
#[cfg(test)]
pub(crate) fn sample_change(generation: u64, actor: Actor) -> Change {
    Change {
        generation,
        at_ms: 1_800_000_000_000 + generation,
        actor,
        peer: "127.0.0.1:8001".into(),
        field: "weight".into(),
        old: "1".into(),
        new: generation.to_string(),
    }
}
