//! A peer's label (`blue`, `green`, `v2.3.1`): what `shift_pin` and `shiftctl --to` can name
//! instead of an address, shared by the replicas of one version. Stored inline in the peer's
//! slot as atomic words, so that workers read it under the table's sequence lock like weights.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Longest label, in bytes.
pub const LABEL_CAPACITY: usize = shift_wire::MAX_LABEL_LEN;

/// A label, or none (empty). Copied by value: it is small and fixed-size.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Label {
    len: u8,
    bytes: [u8; LABEL_CAPACITY],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "label \"{0}\" is not valid: a label is 1 to {LABEL_CAPACITY} letters, digits, \".\", \"_\", \
     \"+\" or \"-\" (e.g. \"green\" or \"v2.3.1\")"
)]
pub struct BadLabel(pub String);

impl Label {
    /// No label.
    pub const NONE: Label = Label {
        len: 0,
        bytes: [0; LABEL_CAPACITY],
    };

    /// A label from its text; the empty text is no label (`shift_wire::is_valid_label`).
    pub fn parse(text: &str) -> Result<Label, BadLabel> {
        if !shift_wire::is_valid_label(text) {
            return Err(BadLabel(text.to_string()));
        }
        let mut label = Label::NONE;
        label.bytes[..text.len()].copy_from_slice(text.as_bytes());
        label.len = text.len() as u8;
        Ok(label)
    }

    pub fn as_str(&self) -> &str {
        // Built from ASCII in `parse` or `LabelCell::load`, which checks.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn is_none(&self) -> bool {
        self.len == 0
    }

    /// `None` for no label, as the API shows it.
    pub fn to_wire(&self) -> Option<String> {
        (!self.is_none()).then(|| self.as_str().to_string())
    }
}

impl Default for Label {
    fn default() -> Label {
        Label::NONE
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Label({:?})", self.as_str())
    }
}

const WORDS: usize = (LABEL_CAPACITY + 1) / 8;

/// A label in shared memory: the length byte, then the bytes, packed into words.
#[repr(C)]
pub struct LabelCell {
    words: [AtomicU64; WORDS],
}

impl LabelCell {
    pub fn new(label: Label) -> LabelCell {
        let cell = LabelCell {
            words: Default::default(),
        };
        cell.store(label);
        cell
    }

    /// Written inside a table's write section (or before the slot is shared).
    pub fn store(&self, label: Label) {
        let mut packed = [0u8; WORDS * 8];
        packed[0] = label.len;
        packed[1..].copy_from_slice(&label.bytes);
        for (word, chunk) in self.words.iter().zip(packed.chunks_exact(8)) {
            let value = u64::from_le_bytes(chunk.try_into().expect("8-byte chunks"));
            word.store(value, Ordering::Relaxed);
        }
    }

    /// Read under the table's sequence lock for a consistent value; a torn read of a cell
    /// being rewritten still gives a valid (if mixed) label, which the lock's retry discards.
    pub fn load(&self) -> Label {
        let mut packed = [0u8; WORDS * 8];
        for (word, chunk) in self.words.iter().zip(packed.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        let len = usize::from(packed[0]).min(LABEL_CAPACITY);
        let text = &packed[1..=len];
        match std::str::from_utf8(text).ok().map(Label::parse) {
            Some(Ok(label)) => label,
            _ => Label::NONE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_plain_words() {
        for good in [
            "green",
            "v2.3.1",
            "release_7+build-2",
            &"x".repeat(LABEL_CAPACITY),
        ] {
            assert_eq!(Label::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "127.0.0.1:8000",
            "a b",
            "unix:/x",
            "é",
            &"x".repeat(LABEL_CAPACITY + 1),
        ] {
            assert_eq!(Label::parse(bad), Err(BadLabel(bad.to_string())), "{bad}");
        }
        assert!(Label::parse("").unwrap().is_none());
        assert_eq!(Label::NONE.to_wire(), None);
    }

    #[test]
    fn a_cell_gives_back_what_it_holds() {
        let cell = LabelCell::new(Label::NONE);
        assert!(cell.load().is_none());
        for text in ["green", &"y".repeat(LABEL_CAPACITY), "b"] {
            cell.store(Label::parse(text).unwrap());
            assert_eq!(cell.load().as_str(), text);
        }
    }
}
