//! One change as a record of fixed words: generation, time, actor, and its texts, each cut to
//! its room at a character boundary.

use super::{Actor, Change};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::sample_change as change;

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
}
