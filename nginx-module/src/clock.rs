//! The two clocks the module reads: monotonic time for what is due when (checks, lookups,
//! housekeeping), Unix time for what the API shows (a check's end, a peer's `joined_ms`).

use std::time::{SystemTime, UNIX_EPOCH};

use nix::time::{clock_gettime, ClockId};

pub fn monotonic_ms() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|now| now.tv_sec() as u64 * 1000 + now.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
