//! A peer's slot as the API shows it (`shift_wire::Peer`): its values read once, its counters,
//! ramp, ejection, drain deadline and checks.

use std::sync::atomic::Ordering;

use shift_wire::{CheckStatus, Ejection, Peer, Ramp, ResponseCounts};

use super::layout::{PeerSlot, PeerValues};
use super::CheckMode;
use crate::health::ProbeError;
use crate::slow_start::SlowStart;

impl PeerSlot {
    pub(crate) fn check_status(&self) -> CheckStatus {
        let last_check_ms = self.last_check_ms.load(Ordering::Relaxed);
        CheckStatus {
            last_check_ms: (last_check_ms != 0).then_some(last_check_ms),
            last_error: ProbeError::decode(self.last_error.load(Ordering::Relaxed))
                .map(ProbeError::describe),
            consecutive_fails: self.check_fails.load(Ordering::Relaxed),
            consecutive_passes: self.check_passes.load(Ordering::Relaxed),
        }
    }

    /// The peer as the API shows it; `(slow_start, now_ms)` tell whether it is ramping up.
    pub(crate) fn to_wire(
        &self,
        values: PeerValues,
        active: u64,
        checks: CheckMode,
        (slow_start, now_ms): (SlowStart, u64),
    ) -> Peer {
        let slow_start = slow_start.with_window(values.ramp_window_ms);
        let count = |class: usize| self.responses[class].load(Ordering::Relaxed);
        let eligible = values.eligible(checks == CheckMode::Mandatory);
        let ramp = slow_start
            .ramp_ends_ms(values.ramp_from_ms)
            .filter(|&ends| eligible && now_ms < ends)
            .map(|ramp_ends_ms| Ramp {
                effective_weight: slow_start.effective_weight(
                    values.weight,
                    values.ramp_from_ms,
                    now_ms,
                ),
                ramp_ends_ms,
            });
        Peer {
            server: self.server().to_string(),
            weight: values.weight,
            state: values.state,
            health: values.health,
            label: values.label.to_wire(),
            eligible,
            ramp,
            ejection: Ejection {
                ejections: self.ejections.load(Ordering::Relaxed),
                ejected_until_ms: Some(values.ejected_until_ms).filter(|&until| until != 0),
            },
            drain_close: self.drain_close_to_wire(),
            backup: self.backup.load(Ordering::Relaxed),
            origin: self.origin(),
            joined_ms: self.joined_ms(),
            resolved_ms: match self.resolved_ms.load(Ordering::Relaxed) {
                0 => None,
                at => Some(at),
            },
            config_weight: self.config_weight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            active,
            responses: ResponseCounts {
                informational: count(0),
                success: count(1),
                redirection: count(2),
                client_error: count(3),
                server_error: count(4),
            },
            response_time: self.response_time.snapshot(),
            header_time: self.header_time.snapshot(),
            check: (checks != CheckMode::Off).then(|| self.check_status()),
        }
    }
}
