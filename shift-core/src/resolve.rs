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
/// 1. the place of the name's current peers (`current`, those this answer drops included):
///    `up` when any of them is, with the mean weight of those that are; else `down` when all
///    are, else `drain`, with their mean weight. A standby side recreated with a new IP stays
///    standby though its line is up; a live side stays live though its line is `down`, and
///    though one of its replicas is drained.
/// 2. else, for a name with no current peer, the place its peers had before this zone
///    (`before`: see `earlier_places`), by the same rule: a restart finds the live side live.
/// 3. else its line's.
pub fn joining_settings(
    current: &[Settings],
    before: &[Settings],
    line: Settings,
) -> (Settings, JoinedFrom) {
    if let Some(place) = place_of(current) {
        return (place, JoinedFrom::NamesPeers);
    }
    if let Some(place) = place_of(before) {
        return (place, JoinedFrom::Before);
    }
    (line, JoinedFrom::Line)
}

/// The place peers hold together (rule 1 of `joining_settings`), if there are any.
fn place_of(peers: &[Settings]) -> Option<Settings> {
    let up: Vec<&Settings> = peers
        .iter()
        .filter(|peer| peer.state == PeerState::Up)
        .collect();
    let (state, group): (PeerState, Vec<&Settings>) = if !up.is_empty() {
        (PeerState::Up, up)
    } else if peers.iter().all(|peer| peer.state == PeerState::Down) {
        (PeerState::Down, peers.iter().collect())
    } else {
        (PeerState::Drain, peers.iter().collect())
    };
    let total: u64 = group.iter().map(|peer| u64::from(peer.weight)).sum();
    let count = group.len() as u64;
    if count == 0 {
        return None;
    }
    // The nearest whole weight, and never 0 for peers that have some: a canary splits a
    // label's weight with a remainder, and a side's share must not vanish.
    let mean = ((total + count / 2) / count).max(u64::from(total > 0)) as u32;
    Some(Settings {
        weight: mean,
        state,
    })
}

/// The places the name `source` had before this zone, from `saved` (a restart's state file, or
/// the zone a resizing reload replaced): its resolved peers then, if its line is still what it
/// was (a changed line wins, as for `server` lines). A file written before peers kept their
/// name's id says none: its resolved peers at an address of this `answer` count instead.
pub fn earlier_places(
    saved: &SavedUpstream,
    source: u64,
    answer: &BTreeSet<String>,
    line: Settings,
) -> Vec<Settings> {
    saved
        .peers
        .iter()
        .filter(|peer| peer.origin == PeerOrigin::Resolved)
        .filter(|peer| match peer.source {
            0 => answer.contains(&peer.server),
            id => id == source,
        })
        .filter(|peer| Settings::of_line(peer.config_weight, peer.config_down) == line)
        .map(|peer| Settings {
            weight: peer.weight,
            state: peer.state,
        })
        .collect()
}

/// The weight and state a slot has now.
pub fn settings_of(slot: &PeerSlot) -> Settings {
    Settings {
        weight: slot.weight(),
        state: slot.state(),
    }
}

/// Which rule of `joining_settings` gave a new address its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinedFrom {
    NamesPeers,
    Before,
    Line,
}

impl JoinedFrom {
    /// As the error log says it after the address.
    pub fn describe(self) -> &'static str {
        match self {
            JoinedFrom::NamesPeers => "as the name's peers",
            JoinedFrom::Before => "as its name's peers before the restart or reload",
            JoinedFrom::Line => "from its line",
        }
    }
}

/// When to ask again after an answer valid for `valid_ms` (Nginx's resolver: the record's
/// TTL, or the `resolver valid=` time): a second after it expires. Nginx's resolver answers
/// from its cache through the second its entry expires in, and a cached answer says nothing
/// new (`resolved_ms` must stamp only fresh ones).
pub fn next_lookup_in(valid_ms: Option<u64>) -> u64 {
    valid_ms.map_or(RETRY_AFTER_FAILURE_MS, |valid| {
        valid.max(MIN_INTERVAL_MS) + PAST_THE_CACHE_MS
    })
}

/// How long after an answer's validity the next lookup goes: past the resolver's cache.
pub const PAST_THE_CACHE_MS: u64 = 1_000;

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

    fn settings(weight: u32, state: PeerState) -> Settings {
        Settings { weight, state }
    }

    #[test]
    fn a_new_address_takes_the_place_of_the_names_peers() {
        use PeerState::{Down, Drain, Up};
        let line = Settings::of_line(1, false);
        let joins = |current: &[Settings]| joining_settings(current, &[], line);
        // A standby side recreated with a new IP stays standby, though its line is up.
        assert_eq!(
            joins(&[settings(0, Drain)]),
            (settings(0, Drain), JoinedFrom::NamesPeers)
        );
        assert_eq!(
            joins(&[settings(1, Down), settings(1, Down)]).0,
            settings(1, Down)
        );
        assert_eq!(
            joins(&[settings(1, Down), settings(0, Drain)]).0,
            settings(1, Drain),
            "standby either way: never up"
        );
        // A live side whose line is `down` stays live, with the mean of a canary's split...
        let down_line = Settings::of_line(1, true);
        assert_eq!(
            joining_settings(&[settings(334, Up), settings(333, Up)], &[], down_line).0,
            settings(334, Up)
        );
        // ...and though one of its replicas is drained for removal.
        assert_eq!(
            joins(&[settings(5, Up), settings(0, Drain), settings(7, Up)]).0,
            settings(6, Up)
        );
        // A share never rounds away.
        assert_eq!(
            joins(&[settings(1, Up), settings(0, Up), settings(0, Up)]).0,
            settings(1, Up)
        );
        assert_eq!(joins(&[settings(0, Up)]).0, settings(0, Up));
        assert_eq!(joins(&[]), (line, JoinedFrom::Line));
    }

    #[test]
    fn a_name_without_peers_takes_the_place_it_had_before() {
        let line = Settings::of_line(1, true);
        let backend = source_id("backend_green:8000");
        let saved_peer = |server: &str, origin, source, config_down| crate::state_file::SavedPeer {
            server: server.into(),
            config_weight: 1,
            config_down,
            backup: false,
            weight: 1000,
            state: PeerState::Up,
            origin,
            config_label: None,
            label: None,
            source,
        };
        let saved = SavedUpstream {
            history: Vec::new(),
            upstream: "app".into(),
            generation: 9,
            peers: vec![
                saved_peer("172.18.0.3:8000", PeerOrigin::Resolved, backend, true),
                saved_peer(
                    "172.18.0.4:8000",
                    PeerOrigin::Resolved,
                    source_id("blue:8000"),
                    true,
                ),
                saved_peer("172.18.0.5:8000", PeerOrigin::Api, 0, true),
            ],
        };
        // By its name, whatever address it has now (a host restarted: Docker hands them out anew).
        let answer = BTreeSet::from(["172.18.0.9:8000".to_string()]);
        let before = earlier_places(&saved, backend, &answer, line);
        assert_eq!(before, [settings(1000, PeerState::Up)]);
        assert_eq!(
            joining_settings(&[], &before, line),
            (settings(1000, PeerState::Up), JoinedFrom::Before)
        );
        // The line changed since (no longer `down`): the line wins, as for config peers.
        let changed = Settings::of_line(1, false);
        assert!(earlier_places(&saved, backend, &answer, changed).is_empty());
        assert!(earlier_places(&saved, source_id("red:8000"), &answer, line).is_empty());
        // A file from before names were saved: by address.
        let mut old_file = saved.clone();
        old_file.peers.iter_mut().for_each(|peer| peer.source = 0);
        assert!(earlier_places(&old_file, backend, &answer, line).is_empty());
        let at_old_address = BTreeSet::from(["172.18.0.3:8000".to_string()]);
        assert_eq!(
            earlier_places(&old_file, backend, &at_old_address, line),
            [settings(1000, PeerState::Up)]
        );
        // A name with peers takes their place, not the earlier one.
        assert_eq!(
            joining_settings(&[settings(0, PeerState::Down)], &before, line).0,
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
        assert_eq!(next_lookup_in(Some(30_000)), 31_000);
        assert_eq!(next_lookup_in(Some(0)), MIN_INTERVAL_MS + PAST_THE_CACHE_MS);
        assert_eq!(next_lookup_in(None), RETRY_AFTER_FAILURE_MS);
    }
}
