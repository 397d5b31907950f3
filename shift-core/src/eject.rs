//! Passive ejection (`shift_eject`): a peer whose last `consecutive` attempts all failed — a
//! connect error, a timeout, or a status in the set — takes no new requests for a while, however
//! its active check fares (the check's path may be healthy while real requests fail, the very
//! case this is for). The n-th ejection of a peer lasts `base × n`, at most `max`; then the peer
//! comes back through slow start. Two bounds keep ejection from emptying an upstream: at most
//! `max_percent` of its peers are out at once (at least one may be), and no peer is ejected
//! when that would leave fewer than `panic` of the peers that could take requests; should the
//! upstream fall below `panic` anyway (other peers went unhealthy), every ejection ends.
//!
//! Failures are counted in the peer's slot, so one worker's failures count for all. Which peer
//! is ejected and when an ejection ends is decided here; the table (`table::ejection`) writes
//! it under its write lock, where exactly one worker sees the decision through.

/// An upstream's `shift_eject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectArgs {
    /// Failed attempts in a row that eject a peer.
    pub consecutive: u32,
    /// How long the first ejection lasts; the n-th lasts n times this.
    pub base_ms: u64,
    /// The longest an ejection lasts.
    pub max_ms: u64,
    /// The most of an upstream's peers ejected at once, in percent (at least one peer).
    pub max_percent: u32,
    /// Below this share of eligible peers (percent) nothing is ejected.
    pub panic_percent: u32,
    /// The response statuses that count as failures, as inclusive ranges.
    pub statuses: Vec<(u16, u16)>,
}

impl Default for EjectArgs {
    fn default() -> Self {
        EjectArgs {
            consecutive: 5,
            base_ms: 30_000,
            max_ms: 300_000,
            max_percent: 10,
            panic_percent: 50,
            statuses: vec![(500, 599)],
        }
    }
}

/// How an upstream's peers stand, counted over its primary peers when an ejection is weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// The upstream's primary peers.
    pub peers: usize,
    /// Those ejected now: `max_percent` counts them all.
    pub ejected: usize,
    /// Those of them that would take requests otherwise (up, weight above 0, not unhealthy):
    /// `panic` weighs them against the eligible ones.
    pub ejected_eligible: usize,
    /// Those that take new requests now.
    pub eligible: usize,
}

impl EjectArgs {
    /// Whether an attempt that ended this way counts as a failure: `failed` is Nginx's own
    /// verdict (connect error, timeout, a `proxy_next_upstream` status), `status` the
    /// response's.
    pub fn is_failure(&self, failed: bool, status: Option<u16>) -> bool {
        failed
            || status.is_some_and(|status| {
                self.statuses
                    .iter()
                    .any(|&(low, high)| (low..=high).contains(&status))
            })
    }

    /// How long a peer's ejection lasts when it has been ejected `before` times already.
    pub fn duration_ms(&self, before: u32) -> u64 {
        self.base_ms
            .saturating_mul(u64::from(before) + 1)
            .min(self.max_ms)
    }

    /// Whether one more eligible peer may be ejected from an upstream standing so.
    pub fn may_eject(&self, standing: Standing) -> bool {
        let most_at_once = (standing.peers * self.max_percent as usize / 100).max(1);
        if standing.eligible == 0 || standing.ejected + 1 > most_at_once {
            return false;
        }
        let left = standing.eligible - 1;
        !self.below_panic(left, standing.ejected_eligible + 1)
    }

    /// Whether an upstream standing so has too few eligible peers to keep any ejected.
    pub fn in_panic(&self, standing: Standing) -> bool {
        standing.ejected_eligible > 0
            && self.below_panic(standing.eligible, standing.ejected_eligible)
    }

    /// Whether `eligible` peers are fewer than `panic` of those that could take requests
    /// without ejection (`eligible + ejected`).
    fn below_panic(&self, eligible: usize, ejected: usize) -> bool {
        eligible * 100 < self.panic_percent as usize * (eligible + ejected)
    }
}

/// Whether an ejection that lasts until `until_ms` (0: none) is over at `now_ms`.
pub fn is_over(until_ms: u64, now_ms: u64) -> bool {
    until_ms != 0 && now_ms >= until_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(peers: usize, ejected: usize, eligible: usize) -> Standing {
        Standing {
            peers,
            ejected,
            ejected_eligible: ejected,
            eligible,
        }
    }

    #[test]
    fn failures_are_nginx_own_or_a_status_in_the_set() {
        let args = EjectArgs {
            statuses: vec![(500, 500), (502, 504)],
            ..EjectArgs::default()
        };
        assert!(args.is_failure(true, None));
        assert!(args.is_failure(false, Some(500)));
        assert!(args.is_failure(false, Some(503)));
        assert!(!args.is_failure(false, Some(501)));
        assert!(!args.is_failure(false, Some(200)));
        assert!(!args.is_failure(false, None));
    }

    #[test]
    fn each_ejection_lasts_longer_up_to_the_cap() {
        let args = EjectArgs {
            base_ms: 30_000,
            max_ms: 100_000,
            ..EjectArgs::default()
        };
        assert_eq!(args.duration_ms(0), 30_000);
        assert_eq!(args.duration_ms(1), 60_000);
        assert_eq!(args.duration_ms(2), 90_000);
        assert_eq!(args.duration_ms(3), 100_000);
        assert_eq!(args.duration_ms(u32::MAX), 100_000);
    }

    #[test]
    fn at_most_max_percent_are_out_and_at_least_one_may_be() {
        let args = EjectArgs::default();
        // 10% of 2 peers rounds to none: one may still go.
        assert!(args.may_eject(standing(2, 0, 2)));
        assert!(!args.may_eject(standing(2, 1, 1)));
        // 10% of 20 peers: two at once.
        assert!(args.may_eject(standing(20, 1, 19)));
        assert!(!args.may_eject(standing(20, 2, 18)));
    }

    #[test]
    fn no_ejection_leaves_fewer_than_panic_eligible() {
        let args = EjectArgs {
            max_percent: 100,
            ..EjectArgs::default()
        };
        // A lone peer is never ejected: nothing would be left.
        assert!(!args.may_eject(standing(1, 0, 1)));
        // 4 peers, 2 unhealthy: ejecting one of the 2 left leaves 1 of 2, 50%: allowed; a
        // second would leave none.
        assert!(args.may_eject(standing(4, 0, 2)));
        assert!(!args.may_eject(standing(4, 1, 1)));
        // Nothing eligible, nothing to eject.
        assert!(!args.may_eject(standing(3, 0, 0)));
    }

    #[test]
    fn an_upstream_below_panic_ends_its_ejections() {
        let args = EjectArgs::default();
        assert!(!args.in_panic(standing(2, 1, 1)), "1 of 2: at the bound");
        assert!(
            args.in_panic(standing(3, 1, 0)),
            "the others went unhealthy"
        );
        assert!(
            !args.in_panic(standing(3, 0, 0)),
            "nothing ejected, nothing to end"
        );
    }

    #[test]
    fn an_ejection_is_over_at_its_end() {
        assert!(!is_over(0, 5));
        assert!(!is_over(10, 9));
        assert!(is_over(10, 10));
    }
}
