//! The sticky choice of `shift_sticky` (and of `shift_pin` among a label's peers): weighted
//! rendezvous hashing. Each eligible peer scores `weight / -ln(u)`, with `u` uniform in (0, 1)
//! from the key's and the peer's hashes, and the highest score wins. So:
//! - a peer gets a key with probability weight / total weight;
//! - the choice needs no per-key state: the same in every worker, after reloads and restarts;
//! - when weights change, a key moves only to a peer whose weight grew, or off one whose weight
//!   shrank or that left: through a canary 5 → 25 → 50 → 100 a user moves to the new version at
//!   most once and never back, unless the canary is rolled back.

/// A stable 64-bit hash of a key (the value of `shift_sticky`'s complex value) or a peer's
/// address: FNV-1a, then SplitMix64's finaliser to spread the bits.
pub fn hash(bytes: &[u8]) -> u64 {
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(fnv)
}

fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The key's draw for one peer: a full 64×64→128 multiply of the two hashes (each already
/// mixed), folded, as wyhash combines its inputs; one multiply instead of `mix`'s two.
fn pair(key: u64, peer: u64) -> u64 {
    let product =
        u128::from(key ^ 0xa076_1d64_78bd_642f) * u128::from(peer ^ 0xe703_7ed1_a0b4_28db);
    (product as u64) ^ ((product >> 64) as u64)
}

/// The index of the peer `key` goes to among `peers` (each its address hash and its weight);
/// peers of weight 0 never win. `None` when no peer has a weight.
pub fn pick(key: u64, peers: impl IntoIterator<Item = (u64, u32)>) -> Option<usize> {
    // The best so far: its weight and -ln(u); a peer beats it when weight / -ln(u) is larger,
    // compared without dividing. Weight 0 with -ln(u) 1 loses to every peer with a weight.
    let (mut best, mut top_weight, mut top_log) = (None, 0.0, 1.0);
    for (index, (peer, weight)) in peers.into_iter().enumerate() {
        // u = bits / 2^53 in (0, 1): the top 53 bits of the mix, made odd so never 0.
        let bits = (pair(key, peer) >> 11) | 1;
        let weight = f64::from(weight);
        // -ln(u) >= 1 - u: a peer that could not win even at that bound (loosened by far more
        // than `neg_ln`'s error) is passed over without the logarithm; most peers are.
        let floor = (1.0 - bits as i64 as f64 * (1.0 / (1u64 << 53) as f64)) * (1.0 - 1e-6);
        if weight * top_log <= top_weight * floor {
            continue;
        }
        let log = neg_ln(bits);
        if weight * top_log > top_weight * log {
            (best, top_weight, top_log) = (Some(index), weight, log);
        }
    }
    best
}

/// `-ln(bits / 2^53)` for `bits` in [1, 2^53), to about 1e-9 relative: the exponent from the
/// leading zeros, and a short series on the mantissa taken in [√½, √2) so that nothing cancels
/// near 1. Faster than `f64::ln`, and any function of `u` alone keeps the choice's properties
/// (the same in every process, and monotonic in the weights).
fn neg_ln(bits: u64) -> f64 {
    let zeros = bits.leading_zeros();
    // bits = 2^(63 - zeros) * m with m in [1, 2); u = bits / 2^53.
    let mut exponent = 10 - i64::from(zeros);
    let fraction = ((bits << zeros) << 1) >> 12;
    let mut m = f64::from_bits(0x3ff0_0000_0000_0000 | fraction);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = 1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 / 9.0)));
    -(exponent as f64 * std::f64::consts::LN_2 + 2.0 * s * series)
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS: u64 = 10_000;

    fn users() -> impl Iterator<Item = u64> {
        (0..USERS).map(|user| hash(format!("session-{user}").as_bytes()))
    }

    /// Each user's peer: 0 blue, 1 green.
    fn placement(blue: u32, green: u32) -> Vec<usize> {
        let peers = [
            (hash(b"127.0.0.1:8000"), blue),
            (hash(b"127.0.0.1:8001"), green),
        ];
        users().map(|user| pick(user, peers).unwrap()).collect()
    }

    #[test]
    fn shares_follow_the_weights_within_two_points_over_ten_thousand_users() {
        for green in [5, 25, 50, 75, 95] {
            let placed = placement(100 - green, green);
            let share =
                placed.iter().filter(|&&peer| peer == 1).count() as f64 * 100.0 / USERS as f64;
            assert!(
                (share - f64::from(green)).abs() <= 2.0,
                "{green}%: {share:.2}%"
            );
        }
    }

    #[test]
    fn through_a_canary_a_user_moves_to_green_at_most_once_and_never_back() {
        let mut before = placement(100, 0);
        assert!(before.iter().all(|&peer| peer == 0), "all on blue first");
        for green in [5, 25, 50, 100] {
            let now = placement(100 - green, green);
            for (user, (&was, &is)) in before.iter().zip(&now).enumerate() {
                assert!(
                    !(was == 1 && is == 0),
                    "user {user} went back to blue at {green}%"
                );
            }
            before = now;
        }
        assert!(before.iter().all(|&peer| peer == 1), "all on green at 100%");
        // A rollback sends everyone back.
        assert!(placement(100, 0).iter().all(|&peer| peer == 0));
    }

    #[test]
    fn the_choice_is_stable_and_skips_peers_without_weight() {
        let peers = [(hash(b"a:1"), 0), (hash(b"b:1"), 3), (hash(b"c:1"), 0)];
        for user in users().take(100) {
            assert_eq!(pick(user, peers), Some(1));
        }
        assert_eq!(pick(7, [(hash(b"a:1"), 0)]), None);
        assert_eq!(hash(b"session-1"), hash(b"session-1"));
        let three = [(hash(b"a:1"), 1), (hash(b"b:1"), 1), (hash(b"c:1"), 1)];
        let key = hash(b"session-9");
        assert_eq!(
            pick(key, three),
            pick(key, three),
            "the same in every worker"
        );
    }

    #[test]
    fn the_fast_logarithm_is_close_to_the_real_one() {
        let spread = (1..2000u64).map(|n| (n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) | 1);
        for bits in spread.chain([1, 2, 3, (1 << 53) - 1, 1 << 52]) {
            let u = bits as f64 / (1u64 << 53) as f64;
            let (fast, real) = (neg_ln(bits), -u.ln());
            assert!(
                ((fast - real) / real).abs() < 1e-6,
                "u={u}: {fast} vs {real}"
            );
        }
    }

    #[test]
    fn a_peer_that_leaves_moves_only_its_own_users() {
        let four: Vec<(u64, u32)> = (0..4)
            .map(|n| (hash(format!("10.0.0.{n}:80").as_bytes()), 1))
            .collect();
        let mut three = four.clone();
        three[2].1 = 0;
        for user in users() {
            let (was, is) = (
                pick(user, four.clone()).unwrap(),
                pick(user, three.clone()).unwrap(),
            );
            assert!(was == is || was == 2, "only the removed peer's users move");
        }
    }
}
