//! Which peer a steered request goes to, from what a worker knows of each primary peer: the
//! choices of `shift_pin` and `shift_sticky`, kept apart from the FFI that reads round robin's
//! peers so that they are tested without Nginx.

use crate::sticky;
use crate::table::Label;

/// One primary peer as a request's pick sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// `sticky::hash` of its address.
    pub hash: u64,
    /// Its address as the API lists it.
    pub server: &'a [u8],
    pub label: Label,
    /// Its weight now, and whether it takes new requests (weight, state, health).
    pub weight: u32,
    pub eligible: bool,
    /// Not called unhealthy by its health check.
    pub pinnable: bool,
    /// Round robin could use it for this attempt: not tried yet, not out after `max_fails`,
    /// under `max_conns`.
    pub usable: bool,
}

impl Candidate<'_> {
    fn named_by(&self, value: &[u8]) -> bool {
        self.server == value || (!self.label.is_none() && self.label.as_bytes() == value)
    }
}

/// The peer a `shift_pin` value sends the request to, by its position among the candidates
/// `peers()` lists (called twice, listing the same each time): a peer whose address or label
/// is `value`, whatever its weight and state, unless unhealthy or unusable for this attempt.
/// Among several (a label shared by the replicas of a version) the choice follows their
/// weights, evenly when none has one (a standby version), by `key`. `None`: the value names no
/// peer that can take it; the request takes the normal pick.
pub fn choose_pinned<'a, I>(value: &[u8], key: u64, peers: impl Fn() -> I) -> Option<usize>
where
    I: Iterator<Item = Candidate<'a>>,
{
    let open = |peer: &Candidate| peer.named_by(value) && peer.pinnable && peer.usable;
    let weighted = peers().any(|peer| open(&peer) && peer.weight > 0);
    sticky::pick(
        key,
        peers().map(|peer| {
            let weight = match (open(&peer), weighted) {
                (false, _) => 0,
                (true, true) => peer.weight,
                (true, false) => 1,
            };
            (peer.hash, weight)
        }),
    )
}

/// The peer a `shift_sticky` key goes to among the peers that take new requests and can take
/// this attempt, by their weights: the same for the key in every worker while weights stand.
/// `None` when none can (round robin then decides, with backups).
pub fn choose_sticky<'a>(key: u64, peers: impl Iterator<Item = Candidate<'a>>) -> Option<usize> {
    sticky::pick(
        key,
        peers.map(|peer| {
            let weight = if peer.eligible && peer.usable {
                peer.weight
            } else {
                0
            };
            (peer.hash, weight)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Peer {
        server: &'static str,
        label: &'static str,
        weight: u32,
        eligible: bool,
        pinnable: bool,
        usable: bool,
    }

    fn peer(server: &'static str, label: &'static str, weight: u32) -> Peer {
        Peer {
            server,
            label,
            weight,
            eligible: weight > 0,
            pinnable: true,
            usable: true,
        }
    }

    fn view(peers: &[Peer]) -> impl Fn() -> std::vec::IntoIter<Candidate<'static>> + '_ {
        || peers.iter().map(candidate).collect::<Vec<_>>().into_iter()
    }

    fn candidate(peer: &Peer) -> Candidate<'static> {
        Candidate {
            hash: sticky::hash(peer.server.as_bytes()),
            server: peer.server.as_bytes(),
            label: Label::parse(peer.label).unwrap(),
            weight: peer.weight,
            eligible: peer.eligible,
            pinnable: peer.pinnable,
            usable: peer.usable,
        }
    }

    fn keys() -> impl Iterator<Item = u64> {
        (0..500u64).map(|user| sticky::hash(format!("user-{user}").as_bytes()))
    }

    #[test]
    fn a_pin_reaches_a_standby_peer_by_address_or_label() {
        let mut green = peer("10.0.0.2:80", "green", 0);
        green.eligible = false; // standby: `down`, weight 0
        let peers = [peer("10.0.0.1:80", "blue", 100), green];
        for key in keys() {
            assert_eq!(choose_pinned(b"10.0.0.2:80", key, view(&peers)), Some(1));
            assert_eq!(choose_pinned(b"green", key, view(&peers)), Some(1));
            assert_eq!(choose_pinned(b"blue", key, view(&peers)), Some(0));
            assert_eq!(choose_pinned(b"purple", key, view(&peers)), None);
            assert_eq!(choose_pinned(b"", key, view(&peers)), None);
        }
    }

    #[test]
    fn an_unhealthy_or_unusable_target_falls_back() {
        let mut green = peer("10.0.0.2:80", "green", 5);
        green.pinnable = false;
        let peers = [peer("10.0.0.1:80", "blue", 5), green];
        assert_eq!(choose_pinned(b"green", 1, view(&peers)), None);
        let mut tried = peer("10.0.0.2:80", "green", 5);
        tried.usable = false;
        let peers = [peer("10.0.0.1:80", "blue", 5), tried];
        assert_eq!(choose_pinned(b"10.0.0.2:80", 1, view(&peers)), None);
    }

    #[test]
    fn a_label_shared_by_replicas_spreads_by_weight_or_evenly() {
        let standby = [
            peer("10.0.0.1:80", "blue", 10),
            peer("10.0.0.2:80", "green", 0),
            peer("10.0.0.3:80", "green", 0),
        ];
        let mut seen = [0; 3];
        for key in keys() {
            seen[choose_pinned(b"green", key, view(&standby)).unwrap()] += 1;
        }
        assert_eq!(seen[0], 0);
        assert!(seen[1] > 150 && seen[2] > 150, "evenly: {seen:?}");
        let weighted = [
            peer("10.0.0.1:80", "blue", 10),
            peer("10.0.0.2:80", "green", 9),
            peer("10.0.0.3:80", "green", 1),
        ];
        let mut seen = [0; 3];
        for key in keys() {
            seen[choose_pinned(b"green", key, view(&weighted)).unwrap()] += 1;
        }
        assert!(seen[1] > 5 * seen[2], "by weight: {seen:?}");
    }

    #[test]
    fn sticky_keys_skip_ineligible_and_unusable_peers() {
        let mut drained = peer("10.0.0.2:80", "", 5);
        drained.eligible = false;
        let peers = [peer("10.0.0.1:80", "", 5), drained];
        for key in keys() {
            assert_eq!(choose_sticky(key, view(&peers)()), Some(0));
        }
        // A peer tried by this request already: its keys go to their next choice, the same
        // one for each key every time.
        let mut tried = peer("10.0.0.1:80", "", 5);
        tried.usable = false;
        let three = [
            tried,
            peer("10.0.0.2:80", "", 5),
            peer("10.0.0.3:80", "", 5),
        ];
        for key in keys() {
            let next = choose_sticky(key, view(&three)());
            assert_ne!(next, Some(0));
            assert_eq!(next, choose_sticky(key, view(&three)()));
        }
        let none = [drained_peer()];
        assert_eq!(choose_sticky(1, view(&none)()), None);
    }

    fn drained_peer() -> Peer {
        let mut peer = peer("10.0.0.9:80", "", 1);
        peer.eligible = false;
        peer
    }
}
