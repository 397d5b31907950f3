//! A small seeded generator (xorshift) for the model tests over random sequences of events:
//! the same seed gives the same sequence, so a failure can be replayed.

pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (not 0).
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(seed)
    }

    /// A number below `bound`.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
