//! Waiting for a target's slow start (`shift_slow_start`): a canary step is watched, and a
//! switch drains the other peers, once the target's ramp has ended.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shift_wire::Upstream;

use super::Ctx;
use crate::interrupts::Interrupts;

/// When the last of the target's peers ends its slow start in any Nginx (Unix ms), if one
/// ramps.
pub(super) fn ramp_end(states: &[Upstream], targets: &[Vec<String>]) -> Option<u64> {
    states
        .iter()
        .zip(targets)
        .flat_map(|(state, servers)| {
            state
                .peers
                .iter()
                .filter(|peer| servers.contains(&peer.server))
        })
        .filter_map(|peer| peer.ramp.map(|ramp| ramp.ramp_ends_ms))
        .max()
}

/// Waits until `ends_ms` (Unix ms, the Nginx's clock), saying so (what waits, and what comes
/// `then`); false when interrupted.
pub(super) async fn wait_for_ramp(
    ctx: &Ctx,
    waiting: &str,
    then: &str,
    ends_ms: u64,
    interrupts: &mut Interrupts,
) -> bool {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let left = Duration::from_millis(ends_ms.saturating_sub(now_ms));
    ctx.progress.event(&format!(
        "{waiting}: the target ramps up (slow start) for {:.1}s; {then}",
        left.as_secs_f64()
    ));
    tokio::select! {
        _ = tokio::time::sleep(left) => true,
        _ = interrupts.recv() => false,
    }
}
