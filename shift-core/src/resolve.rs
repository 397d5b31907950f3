//! Names resolved at run time (`server NAME resolve`, `shift_resolve`): which peers an answer
//! adds and removes, how a name is known in the zone, and when to ask again. The FFI module
//! asks Nginx's resolver and applies the changes; this decides them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use std::sync::atomic::Ordering;

use crate::table::{PeerSlot, TableHeader};

impl TableHeader {
    /// Claims the lookup of the upstream's names that is due at `now_ms` (monotonic): true for
    /// one worker, which has `hold_ms` to finish before another may try.
    pub fn claim_lookup(&self, now_ms: u64, hold_ms: u64) -> bool {
        let due = self.next_lookup_ms.load(Ordering::Acquire);
        now_ms >= due
            && self
                .next_lookup_ms
                .compare_exchange(due, now_ms + hold_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Sets when the names are due next, once a lookup finished.
    pub fn lookup_done(&self, next_ms: u64) {
        self.next_lookup_ms.store(next_ms, Ordering::Release);
    }
}

/// How long to wait before asking again after a failed lookup (the last good set stays).
pub const RETRY_AFTER_FAILURE_MS: u64 = 5_000;
/// The shortest time between two lookups of a name, whatever its answers' validity.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// The id a resolved peer keeps of its name (`NAME:PORT`): FNV-1a, never 0 (0 is "no name").
pub fn source_id(label: &str) -> u64 {
    let hash = label.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash.max(1)
}

/// The peers an answer stands for: each address with the name's port, as the status lists
/// them.
pub fn answer_peers(addresses: &[IpAddr], port: u16) -> BTreeSet<String> {
    addresses
        .iter()
        .map(|&ip| SocketAddr::new(ip, port).to_string())
        .collect()
}

/// What an answer changes: the addresses to add as peers, and the current peers of the name
/// (`current`, all resolved from it) to remove. An empty answer is a failure for the caller to
/// keep the last good set; here it removes everything.
pub fn changes<'a>(
    current: &[&'a PeerSlot],
    answer: &BTreeSet<String>,
) -> (Vec<String>, Vec<&'a PeerSlot>) {
    let add = answer
        .iter()
        .filter(|server| !current.iter().any(|slot| slot.server() == server.as_str()))
        .cloned()
        .collect();
    let remove = current
        .iter()
        .copied()
        .filter(|slot| !answer.contains(slot.server()))
        .collect();
    (add, remove)
}

/// When to ask again after an answer valid for `valid_ms` (Nginx's resolver: the record's
/// TTL, or the `resolver valid=` time).
pub fn next_lookup_in(valid_ms: Option<u64>) -> u64 {
    valid_ms.map_or(RETRY_AFTER_FAILURE_MS, |valid| valid.max(MIN_INTERVAL_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::test_support::leaked_slot as slot;

    #[test]
    fn an_answer_adds_new_addresses_and_removes_vanished_ones() {
        let (a, b) = (slot("127.0.0.2:8000"), slot("127.0.0.3:8000"));
        let answer = answer_peers(
            &[
                "127.0.0.3".parse().unwrap(),
                "127.0.0.4".parse().unwrap(),
                "::1".parse().unwrap(),
            ],
            8000,
        );
        let (add, remove) = changes(&[a, b], &answer);
        assert_eq!(add, ["127.0.0.4:8000", "[::1]:8000"]);
        assert_eq!(remove.len(), 1);
        assert!(std::ptr::eq(remove[0], a));
        let (add, remove) = changes(&[b], &answer_peers(&["127.0.0.3".parse().unwrap()], 8000));
        assert!(
            add.is_empty() && remove.is_empty(),
            "the same answer changes nothing"
        );
    }

    #[test]
    fn one_worker_claims_each_lookup() {
        let header = TableHeader::new("app", crate::table::CheckMode::Off).unwrap();
        assert!(header.claim_lookup(100, 2_000));
        assert!(!header.claim_lookup(101, 2_000), "held by the first worker");
        header.lookup_done(500);
        assert!(!header.claim_lookup(499, 2_000));
        assert!(header.claim_lookup(500, 2_000));
        // A worker that died mid-lookup only holds it for `hold_ms`.
        assert!(header.claim_lookup(2_500, 2_000));
    }

    #[test]
    fn names_have_distinct_nonzero_ids() {
        assert_ne!(source_id("backend:8000"), source_id("backend:8001"));
        assert_ne!(source_id(""), 0);
        assert_eq!(source_id("backend:8000"), source_id("backend:8000"));
    }

    #[test]
    fn lookups_follow_validity_with_a_floor_and_retry_after_failures() {
        assert_eq!(next_lookup_in(Some(30_000)), 30_000);
        assert_eq!(next_lookup_in(Some(0)), MIN_INTERVAL_MS);
        assert_eq!(next_lookup_in(None), RETRY_AFTER_FAILURE_MS);
    }
}
