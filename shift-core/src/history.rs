//! A bounded history of an upstream's changes (issue 30): what changed (a peer's field, from
//! what to what), at which generation and time, and who changed it. Each record is a fixed
//! run of atomic words, so that a ring of them can live in the shared zone beside the
//! upstream's table and be written and read from safe code (under the table's write lock);
//! this module encodes and decodes records, and keeps the ring's order and bound.
//!
//! The FFI module places a ring per upstream in the zone (`shift_history`); writers append what
//! they did while they hold the table's write lock, and the API reads under it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A peer's values a change may move, read inside the table's write lock before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    weight: u32,
    state: shift_wire::PeerState,
    label: crate::table::Label,
}

impl Snapshot {
    pub fn of(slot: &crate::table::PeerSlot) -> Snapshot {
        Snapshot {
            weight: slot.weight(),
            state: slot.state(),
            label: slot.label(),
        }
    }

    /// What differs in `after`: (field, old, new), in a fixed order.
    pub fn changes_to(&self, after: &Snapshot) -> Vec<(&'static str, String, String)> {
        let label = |label: crate::table::Label| label.to_wire().unwrap_or_default();
        let mut changes = Vec::new();
        if self.weight != after.weight {
            changes.push(("weight", self.weight.to_string(), after.weight.to_string()));
        }
        if self.state != after.state {
            changes.push((
                "state",
                self.state.as_str().to_string(),
                after.state.as_str().to_string(),
            ));
        }
        if self.label != after.label {
            changes.push(("label", label(self.label), label(after.label)));
        }
        changes
    }

    /// The values of a peer that joins or leaves, as `member` changes: its weight and state.
    pub fn describe(&self) -> String {
        format!("weight {} {}", self.weight, self.state.as_str())
    }
}

/// A peer as a whole-table change sees it: its address, whether it is a member (current), and
/// its values.
pub type Member = (String, bool, Snapshot);

/// What changed between two looks at a table's peers (by address): peers that joined or left
/// (`member`), and the values of those that stayed. Peers in neither look, or members in
/// neither, give nothing.
pub fn differences(
    before: &[Member],
    after: &[Member],
) -> Vec<(String, &'static str, String, String)> {
    // By address, so that a table of thousands of peers is compared in one pass.
    let earlier: HashMap<&str, &Member> = before
        .iter()
        .map(|member| (member.0.as_str(), member))
        .collect();
    let later: HashSet<&str> = after.iter().map(|(server, _, _)| server.as_str()).collect();
    let mut changes = Vec::new();
    for (server, current, values) in after {
        let was = earlier
            .get(server.as_str())
            .filter(|(_, was_current, _)| *was_current);
        match (was, current) {
            (None, true) => {
                changes.push((server.clone(), "member", String::new(), values.describe()))
            }
            (Some((_, _, old)), true) => {
                for (field, from, to) in old.changes_to(values) {
                    changes.push((server.clone(), field, from, to));
                }
            }
            (Some((_, _, old)), false) => {
                changes.push((server.clone(), "member", old.describe(), String::new()))
            }
            (None, false) => {}
        }
    }
    for (server, current, values) in before {
        if *current && !later.contains(server.as_str()) {
            changes.push((server.clone(), "member", values.describe(), String::new()));
        }
    }
    changes
}

/// How many words one record takes: 256 bytes.
pub const RECORD_WORDS: usize = 32;
/// The longest texts a record keeps, in bytes; longer ones are cut at a character boundary.
pub const PEER_BYTES: usize = 72;
pub const FIELD_BYTES: usize = 16;
pub const VALUE_BYTES: usize = 64;

const ACTOR_API: u64 = 1;
const ACTOR_RELOAD: u64 = 2;
const ACTOR_RESOLVER: u64 = 3;
const ACTOR_HEALTH: u64 = 4;
const ACTOR_EJECT: u64 = 5;
/// Marks a uid or pid the record does not know.
const UNKNOWN: u64 = u32::MAX as u64;

/// The words of a record: generation, time, actor (kind, uid, pid), the four texts' lengths,
/// then the texts, each in its own fixed run of words.
const HEAD_WORDS: usize = 5;
const PEER_AT: usize = HEAD_WORDS;
const FIELD_AT: usize = PEER_AT + PEER_BYTES / 8;
const OLD_AT: usize = FIELD_AT + FIELD_BYTES / 8;
const NEW_AT: usize = OLD_AT + VALUE_BYTES / 8;
const _: () = assert!(NEW_AT + VALUE_BYTES / 8 <= RECORD_WORDS);

impl Change {
    /// The record's words.
    pub fn encode(&self) -> [u64; RECORD_WORDS] {
        let mut words = [0u64; RECORD_WORDS];
        words[0] = self.generation;
        words[1] = self.at_ms;
        let (kind, uid, pid) = match self.actor {
            Actor::Api { uid, pid } => (
                ACTOR_API,
                uid.map_or(UNKNOWN, u64::from),
                pid.map_or(UNKNOWN, u64::from),
            ),
            Actor::Reload => (ACTOR_RELOAD, UNKNOWN, UNKNOWN),
            Actor::Resolver => (ACTOR_RESOLVER, UNKNOWN, UNKNOWN),
            Actor::Health => (ACTOR_HEALTH, UNKNOWN, UNKNOWN),
            Actor::Eject => (ACTOR_EJECT, UNKNOWN, UNKNOWN),
        };
        words[2] = kind;
        words[3] = (uid << 32) | pid;
        let texts = [
            (self.peer.as_str(), PEER_AT, PEER_BYTES),
            (self.field.as_str(), FIELD_AT, FIELD_BYTES),
            (self.old.as_str(), OLD_AT, VALUE_BYTES),
            (self.new.as_str(), NEW_AT, VALUE_BYTES),
        ];
        let mut lengths = 0u64;
        for (index, (text, at, capacity)) in texts.into_iter().enumerate() {
            let kept = cut(text, capacity).as_bytes();
            lengths |= (kept.len() as u64) << (index * 16);
            for (word, chunk) in words[at..].iter_mut().zip(kept.chunks(8)) {
                let mut bytes = [0u8; 8];
                bytes[..chunk.len()].copy_from_slice(chunk);
                *word = u64::from_le_bytes(bytes);
            }
        }
        words[4] = lengths;
        words
    }

    /// The change a record's words hold; `None` for words that are no record (a torn or
    /// foreign one).
    pub fn decode(words: &[u64; RECORD_WORDS]) -> Option<Change> {
        let uid = words[3] >> 32;
        let pid = words[3] & UNKNOWN;
        let known = |value: u64| (value != UNKNOWN).then_some(value as u32);
        let actor = match words[2] {
            ACTOR_API => Actor::Api {
                uid: known(uid),
                pid: known(pid),
            },
            ACTOR_RELOAD => Actor::Reload,
            ACTOR_RESOLVER => Actor::Resolver,
            ACTOR_HEALTH => Actor::Health,
            ACTOR_EJECT => Actor::Eject,
            _ => return None,
        };
        let text = |index: usize, at: usize, capacity: usize| -> Option<String> {
            let len = ((words[4] >> (index * 16)) & 0xffff) as usize;
            if len > capacity {
                return None;
            }
            let bytes: Vec<u8> = words[at..at + capacity / 8]
                .iter()
                .flat_map(|word| word.to_le_bytes())
                .take(len)
                .collect();
            String::from_utf8(bytes).ok()
        };
        Some(Change {
            generation: words[0],
            at_ms: words[1],
            actor,
            peer: text(0, PEER_AT, PEER_BYTES)?,
            field: text(1, FIELD_AT, FIELD_BYTES)?,
            old: text(2, OLD_AT, VALUE_BYTES)?,
            new: text(3, NEW_AT, VALUE_BYTES)?,
        })
    }
}

/// `text` cut to at most `capacity` bytes, at a character boundary.
fn cut(text: &str, capacity: usize) -> &str {
    let mut end = text.len().min(capacity);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The head of a ring in the zone; `capacity` records (`RecordCell`s) follow it.
#[repr(C)]
pub struct RingHead {
    pub capacity: AtomicU64,
    pub written: AtomicU64,
}

impl RingHead {
    /// The bytes a ring of `capacity` records takes.
    pub const fn bytes(capacity: usize) -> usize {
        std::mem::size_of::<RingHead>() + capacity * std::mem::size_of::<RecordCell>()
    }
}

/// One record's place in a ring.
#[derive(Debug, Default)]
pub struct RecordCell([AtomicU64; RECORD_WORDS]);

impl RecordCell {
    fn store(&self, words: &[u64; RECORD_WORDS]) {
        for (cell, word) in self.0.iter().zip(words) {
            cell.store(*word, Ordering::Relaxed);
        }
    }

    fn load(&self) -> [u64; RECORD_WORDS] {
        std::array::from_fn(|index| self.0[index].load(Ordering::Relaxed))
    }
}

/// A ring of records: the latest `records.len()` changes. `written` counts every record ever
/// appended; record `n` lives at `n % records.len()`. Appends and reads happen under the
/// table's write lock, which orders them.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    pub written: &'a AtomicU64,
    pub records: &'a [RecordCell],
}

impl Ring<'_> {
    /// How many changes it keeps.
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    /// Appends `change`, over the oldest record when the ring is full.
    pub fn append(&self, change: &Change) {
        if self.records.is_empty() {
            return;
        }
        let written = self.written.load(Ordering::Relaxed);
        self.records[(written % self.records.len() as u64) as usize].store(&change.encode());
        self.written.store(written + 1, Ordering::Relaxed);
    }

    /// Appends `changes` (peer, field, old, new), all made by `actor` at `generation` and
    /// `at_ms`.
    pub fn record(
        &self,
        (actor, generation, at_ms): (Actor, u64, u64),
        changes: Vec<(String, &str, String, String)>,
    ) {
        for (peer, field, old, new) in changes {
            self.append(&Change {
                generation,
                at_ms,
                actor,
                peer,
                field: field.to_string(),
                old,
                new,
            });
        }
    }

    /// The changes kept, oldest first, of a generation above `since` (all with 0).
    pub fn since(&self, since: u64) -> Vec<Change> {
        let written = self.written.load(Ordering::Relaxed);
        let kept = written.min(self.records.len() as u64);
        (written - kept..written)
            .filter_map(|n| {
                let cell = &self.records[(n % self.records.len() as u64) as usize];
                Change::decode(&cell.load())
            })
            .filter(|change| change.generation > since)
            .collect()
    }

    /// Copies the latest records that fit into `other` (a ring of another size, replacing
    /// this one), in order.
    pub fn copy_into(&self, other: &Ring) {
        for change in self.since(0) {
            other.append(&change);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(generation: u64, actor: Actor) -> Change {
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

    fn cells(capacity: usize) -> (AtomicU64, Vec<RecordCell>) {
        (
            AtomicU64::new(0),
            (0..capacity).map(|_| RecordCell::default()).collect(),
        )
    }

    #[test]
    fn a_record_keeps_every_actor_and_text() {
        for actor in [
            Actor::Api {
                uid: Some(1000),
                pid: Some(4242),
            },
            Actor::Api {
                uid: None,
                pid: None,
            },
            Actor::Reload,
            Actor::Resolver,
            Actor::Health,
            Actor::Eject,
        ] {
            let mut change = change(7, actor);
            change.field = "label".into();
            change.old = "".into();
            change.new = "green-é".repeat(9); // 72 bytes: cut to 64, at a boundary
            let back = Change::decode(&change.encode()).expect("a record");
            assert_eq!(back.actor, actor);
            assert_eq!(back.new, cut(&change.new, VALUE_BYTES));
            assert!(back.new.len() <= VALUE_BYTES);
            assert_eq!(
                (back.peer, back.field, back.old),
                (change.peer, change.field, change.old)
            );
        }
        assert_eq!(
            Change::decode(&[0; RECORD_WORDS]),
            None,
            "zeroed words are no record"
        );
    }

    #[test]
    fn the_ring_keeps_the_latest_in_order_and_pages_by_generation() {
        let (written, records) = cells(4);
        let ring = Ring {
            written: &written,
            records: &records,
        };
        assert!(ring.since(0).is_empty());
        for generation in 1..=6 {
            ring.append(&change(generation, Actor::Reload));
        }
        let kept: Vec<u64> = ring.since(0).iter().map(|c| c.generation).collect();
        assert_eq!(kept, [3, 4, 5, 6]);
        let after: Vec<u64> = ring.since(4).iter().map(|c| c.generation).collect();
        assert_eq!(after, [5, 6]);

        let (bigger_written, bigger_records) = cells(8);
        let bigger = Ring {
            written: &bigger_written,
            records: &bigger_records,
        };
        ring.copy_into(&bigger);
        bigger.append(&change(7, Actor::Health));
        let kept: Vec<u64> = bigger.since(0).iter().map(|c| c.generation).collect();
        assert_eq!(kept, [3, 4, 5, 6, 7]);

        let (smaller_written, smaller_records) = cells(2);
        let smaller = Ring {
            written: &smaller_written,
            records: &smaller_records,
        };
        bigger.copy_into(&smaller);
        let kept: Vec<u64> = smaller.since(0).iter().map(|c| c.generation).collect();
        assert_eq!(kept, [6, 7]);
    }

    #[test]
    fn differences_name_members_that_came_and_went_and_values_that_moved() {
        use shift_wire::PeerState;
        let snapshot = |weight, state| Snapshot {
            weight,
            state,
            label: crate::table::Label::NONE,
        };
        let before = vec![
            ("a:1".to_string(), true, snapshot(1, PeerState::Up)),
            ("b:1".to_string(), true, snapshot(1, PeerState::Up)),
            ("c:1".to_string(), false, snapshot(1, PeerState::Up)),
            ("gone:1".to_string(), true, snapshot(2, PeerState::Drain)),
        ];
        let after = vec![
            ("a:1".to_string(), true, snapshot(5, PeerState::Up)),
            ("b:1".to_string(), false, snapshot(1, PeerState::Up)),
            ("c:1".to_string(), true, snapshot(1, PeerState::Down)),
            ("new:1".to_string(), true, snapshot(3, PeerState::Up)),
        ];
        let seen: Vec<(String, &str, String, String)> = differences(&before, &after);
        let text: Vec<String> = seen
            .iter()
            .map(|(peer, field, old, new)| format!("{peer} {field} [{old}] [{new}]"))
            .collect();
        assert_eq!(
            text,
            [
                "a:1 weight [1] [5]",
                "b:1 member [weight 1 up] []",
                "c:1 member [] [weight 1 down]",
                "new:1 member [] [weight 3 up]",
                "gone:1 member [weight 2 drain] []",
            ]
        );
    }

    /// Random appends against a plain list: the ring always holds the last `capacity` of them.
    #[test]
    fn model_over_random_sequences() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..50 {
            let capacity = 1 + next(9) as usize;
            let (written, records) = cells(capacity);
            let ring = Ring {
                written: &written,
                records: &records,
            };
            let mut model = Vec::new();
            let mut generation = 0;
            for _ in 0..next(40) {
                generation += 1 + next(3);
                let change = change(generation, Actor::Eject);
                ring.append(&change);
                model.push(change);
                let start = model.len().saturating_sub(capacity);
                assert_eq!(ring.since(0), model[start..]);
                let since = next(generation + 1);
                let expected: Vec<Change> = model[start..]
                    .iter()
                    .filter(|change| change.generation > since)
                    .cloned()
                    .collect();
                assert_eq!(ring.since(since), expected);
            }
        }
    }
}
