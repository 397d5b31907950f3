//! Slow start (`shift_slow_start`): a peer that starts taking new requests — added, resolved,
//! back from `unhealthy`, `down` or `drain`, or raised from weight 0 — gets a share that grows
//! from a floor to its weight over a window, so that a cold release is not handed its full
//! share on its first request. The weight a worker routes with is
//! `weight × max(min, t / window) ^ (1 / aggression)`, computed from the time `t` since the
//! peer became eligible each time the worker copies weights into round robin (on every
//! request while a ramp runs, not on a tick).
//!
//! When a ramp starts is decided where eligibility changes, under the table's write lock
//! (`table::lock`): never at Nginx start or across a reload, which change nothing for a peer
//! that was already taking requests.

/// An upstream's slow start, as the directive gives it; `window_ms` 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlowStart {
    pub window_ms: u32,
    /// The floor, in thousandths of the weight (100: 10%).
    pub min_permille: u16,
    /// How fast the ramp rises, in hundredths (100: linear; 200: faster at first).
    pub aggression_centi: u16,
}

/// The longest window: 24 h, in milliseconds, fits the table's 32 bits.
pub const MAX_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// A peer's `ramp_from_ms` while it waits for its first passed check under `mandatory` checks,
/// having joined at run time: its ramp begins with that pass. Not a ramp until then.
pub const RAMP_AT_FIRST_PASS: u64 = u64::MAX;

/// How many times finer than a peer's weight workers weigh peers while a ramp runs in their
/// upstream, so that a peer of weight 1 (Nginx's default) ramps in 5% steps too.
pub const RAMP_SCALE: u32 = 20;

impl SlowStart {
    pub const OFF: SlowStart = SlowStart {
        window_ms: 0,
        min_permille: 0,
        aggression_centi: 0,
    };

    pub fn is_on(&self) -> bool {
        self.window_ms > 0
    }

    /// One word for the table's header.
    pub fn encode(&self) -> u64 {
        self.window_ms as u64
            | (self.min_permille as u64) << 32
            | (self.aggression_centi as u64) << 48
    }

    pub fn decode(word: u64) -> SlowStart {
        SlowStart {
            window_ms: word as u32,
            min_permille: (word >> 32) as u16,
            aggression_centi: (word >> 48) as u16,
        }
    }

    /// The slow start of one peer's ramp: the upstream's, with the window the change that
    /// started the ramp gave it (`window_ms` above 0: a `slow_start` in the API) in its place.
    /// Without `shift_slow_start` such a ramp rises linearly from 10%.
    pub fn with_window(self, window_ms: u32) -> SlowStart {
        match window_ms {
            0 => self,
            _ if self.is_on() => SlowStart { window_ms, ..self },
            _ => SlowStart {
                window_ms,
                min_permille: 100,
                aggression_centi: 100,
            },
        }
    }

    /// When a ramp that began at `ramp_from_ms` ends; `None` without one (0: the peer has taken
    /// requests since the table began, or slow start is off).
    pub fn ramp_ends_ms(&self, ramp_from_ms: u64) -> Option<u64> {
        let started = ramp_from_ms != 0 && ramp_from_ms != RAMP_AT_FIRST_PASS;
        (self.is_on() && started).then(|| ramp_from_ms + self.window_ms as u64)
    }

    /// Whether a ramp that began at `ramp_from_ms` still runs at `now_ms`.
    pub fn ramps(&self, ramp_from_ms: u64, now_ms: u64) -> bool {
        self.ramp_ends_ms(ramp_from_ms)
            .is_some_and(|ends| now_ms < ends)
    }

    /// The weight a peer of `weight` routes with at `now_ms`, its ramp having begun at
    /// `ramp_from_ms` (0: none). At least 1 while `weight` is above 0, so that a ramping peer
    /// is never shut out.
    pub fn effective_weight(&self, weight: u32, ramp_from_ms: u64, now_ms: u64) -> u32 {
        let Some(ends) = self.ramp_ends_ms(ramp_from_ms) else {
            return weight;
        };
        if weight == 0 || now_ms >= ends {
            return weight;
        }
        let elapsed = now_ms.saturating_sub(ramp_from_ms) as f64;
        let linear = elapsed / self.window_ms as f64;
        let curve = match self.aggression_centi {
            0 | 100 => linear,
            centi => linear.powf(100.0 / centi as f64),
        };
        // The floor is `min` whatever the aggression.
        let fraction = curve.max(self.min_permille as f64 / 1000.0);
        ((weight as f64 * fraction).ceil() as u32).clamp(1, weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_S: SlowStart = SlowStart {
        window_ms: 10_000,
        min_permille: 100,
        aggression_centi: 100,
    };

    #[test]
    fn the_weight_ramps_from_the_floor_to_the_full_weight_over_the_window() {
        let at = |ms: u64| TEN_S.effective_weight(500, 1_000, 1_000 + ms);
        assert_eq!(at(0), 50, "the floor, 10%");
        assert_eq!(at(500), 50, "still the floor at 5%");
        assert_eq!(at(2_500), 125);
        assert_eq!(at(5_000), 250);
        assert_eq!(at(9_999), 500);
        assert_eq!(at(10_000), 500);
        assert_eq!(TEN_S.ramp_ends_ms(1_000), Some(11_000));
    }

    #[test]
    fn a_ramp_of_its_own_keeps_the_upstreams_curve_or_rises_linearly_from_ten_percent() {
        let eager = SlowStart {
            aggression_centi: 200,
            min_permille: 50,
            ..TEN_S
        };
        assert_eq!(eager.with_window(0), eager);
        assert_eq!(
            eager.with_window(3_000),
            SlowStart {
                window_ms: 3_000,
                ..eager
            }
        );
        assert_eq!(
            SlowStart::OFF.with_window(3_000),
            SlowStart {
                window_ms: 3_000,
                ..TEN_S
            }
        );
        assert_eq!(SlowStart::OFF.with_window(0), SlowStart::OFF);
    }

    #[test]
    fn no_ramp_without_a_start_or_with_slow_start_off() {
        assert_eq!(TEN_S.effective_weight(500, 0, 5), 500);
        assert_eq!(SlowStart::OFF.effective_weight(500, 1_000, 1_001), 500);
        assert_eq!(SlowStart::OFF.ramp_ends_ms(1_000), None);
    }

    #[test]
    fn a_small_weight_is_never_shut_out_and_zero_stays_zero() {
        assert_eq!(TEN_S.effective_weight(1, 1_000, 1_000), 1);
        assert_eq!(TEN_S.effective_weight(0, 1_000, 1_000), 0);
    }

    #[test]
    fn a_higher_aggression_rises_faster_early() {
        let eager = SlowStart {
            aggression_centi: 200,
            ..TEN_S
        };
        // (0.25)^(1/2) = 0.5 of the weight a quarter of the way in.
        assert_eq!(eager.effective_weight(1_000, 1, 2_501), 500);
        assert!(eager.effective_weight(1_000, 1, 2_501) > TEN_S.effective_weight(1_000, 1, 2_501));
        // The floor stays `min`: (0.01)^(1/2) would be 10% without it; with min=5%, 10%.
        let low_floor = SlowStart {
            min_permille: 50,
            ..eager
        };
        assert_eq!(low_floor.effective_weight(1_000, 1, 1), 50);
        assert_eq!(low_floor.effective_weight(1_000, 1, 101), 100);
    }

    #[test]
    fn a_peer_waiting_for_its_first_pass_is_not_ramping_yet() {
        assert_eq!(TEN_S.ramp_ends_ms(RAMP_AT_FIRST_PASS), None);
        assert!(!TEN_S.ramps(RAMP_AT_FIRST_PASS, 5));
        assert_eq!(TEN_S.effective_weight(500, RAMP_AT_FIRST_PASS, 5), 500);
        assert!(TEN_S.ramps(1_000, 10_999) && !TEN_S.ramps(1_000, 11_000));
    }

    #[test]
    fn it_packs_into_one_word() {
        let packed = SlowStart {
            window_ms: MAX_WINDOW_MS as u32,
            min_permille: 1000,
            aggression_centi: 1000,
        };
        assert_eq!(SlowStart::decode(packed.encode()), packed);
        assert_eq!(SlowStart::decode(0), SlowStart::OFF);
    }
}
