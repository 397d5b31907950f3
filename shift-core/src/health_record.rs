//! The health bookkeeping of a table: which worker checks a peer when, and what each result
//! does to the peer's health (and so to its routing, in every worker at once).

use std::sync::atomic::Ordering;

use shift_wire::Health;

use crate::health::{judge, ProbeError, Tally};
use crate::table::{LockError, Table};

/// A health transition a check caused, for the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub server: String,
    pub from: Health,
    pub to: Health,
    pub error: Option<ProbeError>,
}

impl<'a> Table<'a> {
    /// Claims the check of peer `index` that is due at `now_ms` (monotonic): true for exactly
    /// one caller per interval, whichever worker it is. A worker that dies mid-check only
    /// delays the next one to the following interval.
    pub fn claim_check(&self, index: usize, now_ms: u64, interval_ms: u64) -> bool {
        let next = &self.peers[index].next_check_ms;
        let due = next.load(Ordering::Acquire);
        now_ms >= due
            && next
                .compare_exchange(
                    due,
                    now_ms + interval_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records a check's result and moves the peer's health as `fails`/`passes` say; returns the
    /// transition if the health changed (routing then changes at once, in every worker).
    /// `instance` is the peer's `joined_ms` when the check was claimed: the result of a check of
    /// an instance that has since left (its address back as a new instance) is dropped, so that
    /// the new one is judged by its own checks only.
    #[allow(clippy::too_many_arguments)]
    pub fn record_check(
        &self,
        index: usize,
        instance: u64,
        result: Result<(), ProbeError>,
        fails_needed: u32,
        passes_needed: u32,
        finished_unix_ms: u64,
        pid: u64,
        is_alive: impl Fn(u64) -> bool,
    ) -> Result<Option<Transition>, LockError> {
        let peer = &self.peers[index];
        if peer.joined_ms() != instance {
            return Ok(None);
        }
        let tally = Tally {
            fails: peer.check_fails.load(Ordering::Relaxed),
            passes: peer.check_passes.load(Ordering::Relaxed),
        };
        let current = peer.health();
        let (health, tally) = judge(current, tally, result.is_ok(), fails_needed, passes_needed);
        peer.check_fails.store(tally.fails, Ordering::Relaxed);
        peer.check_passes.store(tally.passes, Ordering::Relaxed);
        peer.last_check_ms
            .store(finished_unix_ms, Ordering::Relaxed);
        peer.last_error.store(
            result.err().map_or(0, ProbeError::encode),
            Ordering::Relaxed,
        );
        if health == current {
            return Ok(None);
        }
        let guard = self.lock(pid, is_alive)?;
        // A new instance starts under this lock (`WriteGuard::add_peer`): checked again here, the
        // old instance's health can never land on it.
        if peer.joined_ms() != instance {
            return Ok(None);
        }
        guard.set_health(index, health, finished_unix_ms);
        Ok(Some(Transition {
            server: peer.server().to_string(),
            from: current,
            to: health,
            error: result.err(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use shift_wire::Health;

    use super::*;
    use crate::table::test_support::OwnedTable;
    use crate::table::test_support::NOW_MS;
    use crate::table::CheckMode;

    #[test]
    fn one_claim_per_interval_whoever_asks() {
        let owned = OwnedTable::checked("app", &["a:1"], CheckMode::On);
        let table = owned.view();
        assert!(table.claim_check(0, 1_000, 500));
        assert!(
            !table.claim_check(0, 1_000, 500),
            "a second worker at the same moment"
        );
        assert!(!table.claim_check(0, 1_499, 500));
        assert!(table.claim_check(0, 1_500, 500));
    }
    #[test]
    fn check_results_move_health_and_routing() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Mandatory);
        let table = owned.view();
        let mut routes = Vec::new();
        let seq = table.routes_if_changed(u64::MAX, &mut routes).unwrap();
        assert!(
            routes.iter().all(|route| !route.eligible),
            "mandatory: unchecked peers wait"
        );

        let passed = table
            .record_check(0, table.peers()[0].joined_ms(), Ok(()), 2, 2, 10, 1, |_| {
                true
            })
            .unwrap();
        assert_eq!(passed, None, "one pass of two");
        let transition = table
            .record_check(0, table.peers()[0].joined_ms(), Ok(()), 2, 2, 20, 1, |_| {
                true
            })
            .unwrap();
        assert_eq!(
            transition,
            Some(Transition {
                server: "a:1".into(),
                from: Health::Unchecked,
                to: Health::Healthy,
                error: None
            })
        );
        let seq = table
            .routes_if_changed(seq, &mut routes)
            .expect("health moved routing");
        assert_eq!(
            routes
                .iter()
                .map(|route| route.eligible)
                .collect::<Vec<_>>(),
            [true, false]
        );

        table
            .record_check(
                0,
                table.peers()[0].joined_ms(),
                Err(ProbeError::Status(503)),
                2,
                2,
                30,
                1,
                |_| true,
            )
            .unwrap();
        let down = table
            .record_check(
                0,
                table.peers()[0].joined_ms(),
                Err(ProbeError::Status(503)),
                2,
                2,
                40,
                1,
                |_| true,
            )
            .unwrap();
        assert_eq!(down.map(|t| t.to), Some(Health::Unhealthy));
        table.routes_if_changed(seq, &mut routes).unwrap();
        assert!(!routes[0].eligible);

        let check = owned.view().to_wire(&[], NOW_MS).peers[0]
            .check
            .clone()
            .unwrap();
        assert_eq!(check.last_error.as_deref(), Some("status 503"));
        assert_eq!(
            (check.consecutive_fails, check.last_check_ms),
            (2, Some(40))
        );
    }
}
