//! Names resolved at run time (`server NAME resolve`, `shift_resolve`): which peers an answer
//! adds and removes, how a name is known in the zone, and when to ask again. The FFI module
//! asks Nginx's resolver and applies the changes; this decides them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use std::sync::atomic::Ordering;

use shift_wire::{PeerOrigin, PeerState};

use crate::state_file::SavedUpstream;
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

/// A weight and a state, as a name's `server` line gives them or as its peers have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub weight: u32,
    pub state: PeerState,
}

impl Settings {
    /// What a `server NAME resolve [weight=N] [down]` line gives its addresses.
    pub fn of_line(weight: u32, down: bool) -> Settings {
        let state = if down { PeerState::Down } else { PeerState::Up };
        Settings { weight, state }
    }
}

/// What a new address of a name starts with. A new address is most often a container that
/// takes another's place (recreated with a new IP, started again after a stop), so:
///
/// 1. the state that every current peer of the name has (those this answer drops included),
///    with their mean weight: a standby side comes back standby, a live one live, whatever
///    its line says (the mean, because a canary splits a label's weight with a remainder);
/// 2. else, when the name has no current peer, what the state file gave this address when
///    Nginx started (`saved`), if its line is still what it was then: a restart finds the
///    live side live;
/// 3. else its line's.
pub fn joining_settings(
    current: &[&PeerSlot],
    saved: Option<&SavedUpstream>,
    server: &str,
    line: Settings,
) -> (Settings, JoinedFrom) {
    if let Some(first) = current.first() {
        let state = first.state();
        if current.iter().any(|slot| slot.state() != state) {
            return (line, JoinedFrom::Line);
        }
        let total: u64 = current.iter().map(|slot| u64::from(slot.weight())).sum();
        let weight = (total / current.len() as u64) as u32;
        return (Settings { weight, state }, JoinedFrom::NamesPeers);
    }
    saved
        .and_then(|saved| {
            saved.peers.iter().find(|peer| {
                peer.server == server
                    && peer.origin == PeerOrigin::Resolved
                    && Settings::of_line(peer.config_weight, peer.config_down) == line
            })
        })
        .map_or((line, JoinedFrom::Line), |peer| {
            let saved = Settings {
                weight: peer.weight,
                state: peer.state,
            };
            (saved, JoinedFrom::StateFile)
        })
}

/// Which rule of `joining_settings` gave a new address its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinedFrom {
    NamesPeers,
    StateFile,
    Line,
}

impl JoinedFrom {
    /// As the error log says it after the address.
    pub fn describe(self) -> &'static str {
        match self {
            JoinedFrom::NamesPeers => "as the name's peers",
            JoinedFrom::StateFile => "from the state file",
            JoinedFrom::Line => "from its line",
        }
    }
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
    use crate::table::test_support::leaked_slot_with as peer_with;

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

    fn settings(weight: u32, state: PeerState) -> Settings {
        Settings { weight, state }
    }

    #[test]
    fn a_new_address_takes_the_place_of_the_names_peers() {
        let line = Settings::of_line(1, false);
        // A standby side recreated with a new IP stays standby, though its line is up.
        let standby = [peer_with("172.18.0.3:8000", 0, PeerState::Drain)];
        assert_eq!(
            joining_settings(&standby, None, "172.18.0.5:8000", line),
            (settings(0, PeerState::Drain), JoinedFrom::NamesPeers)
        );
        // A live side whose line is `down` stays live.
        let live = [
            peer_with("172.18.0.3:8000", 334, PeerState::Up),
            peer_with("172.18.0.4:8000", 333, PeerState::Up),
        ];
        assert_eq!(
            joining_settings(&live, None, "172.18.0.5:8000", Settings::of_line(1, true)).0,
            settings(333, PeerState::Up),
            "the mean of a canary's split"
        );
        // Peers that disagree on their state (one drained for removal) say nothing.
        let mixed = [
            peer_with("172.18.0.3:8000", 5, PeerState::Up),
            peer_with("172.18.0.4:8000", 5, PeerState::Drain),
        ];
        assert_eq!(
            joining_settings(&mixed, None, "172.18.0.5:8000", line),
            (line, JoinedFrom::Line)
        );
        assert_eq!(
            joining_settings(&[], None, "172.18.0.5:8000", line),
            (line, JoinedFrom::Line)
        );
    }

    #[test]
    fn a_name_without_peers_takes_what_the_state_file_saved_of_its_address() {
        let line = Settings::of_line(1, true);
        let saved_peer = |server: &str, origin, config_down| crate::state_file::SavedPeer {
            server: server.into(),
            config_weight: 1,
            config_down,
            backup: false,
            weight: 1000,
            state: PeerState::Up,
            origin,
            config_label: None,
            label: None,
        };
        let saved = SavedUpstream {
            upstream: "app".into(),
            generation: 9,
            peers: vec![
                saved_peer("172.18.0.3:8000", PeerOrigin::Resolved, true),
                saved_peer("172.18.0.4:8000", PeerOrigin::Api, true),
            ],
        };
        let at = |server| joining_settings(&[], Some(&saved), server, line);
        assert_eq!(
            at("172.18.0.3:8000"),
            (settings(1000, PeerState::Up), JoinedFrom::StateFile)
        );
        assert_eq!(at("172.18.0.9:8000").0, line, "an address it did not save");
        assert_eq!(at("172.18.0.4:8000").0, line, "not a resolved peer");
        // The line changed since (no longer `down`): the line wins, as for config peers.
        assert_eq!(
            joining_settings(
                &[],
                Some(&saved),
                "172.18.0.3:8000",
                Settings::of_line(1, false)
            )
            .0,
            Settings::of_line(1, false)
        );
        // A name with peers takes their place, not the file's.
        let standby = [peer_with("172.18.0.5:8000", 0, PeerState::Down)];
        assert_eq!(
            joining_settings(&standby, Some(&saved), "172.18.0.3:8000", line).0,
            settings(0, PeerState::Down)
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
