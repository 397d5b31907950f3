//! `shift_eject` on a table (`crate::eject`): each attempt's outcome counted in its peer's slot
//! by whichever worker made it, and ejections begun and ended under the table's write lock, so
//! that exactly one worker ejects a peer or lets it back (and logs it), and every worker's
//! routing follows at its next request, as for any change of eligibility.

use std::sync::atomic::Ordering;

use super::lock::{start_ramp, takes_requests};
use super::{CheckMode, LockError, PeerSlot, Table};
use crate::eject::{is_over, EjectArgs, Standing};

/// A peer `shift_eject` took out, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejected {
    pub server: String,
    /// Its ejections so far, this one included.
    pub ejections: u32,
    /// How long this one lasts.
    pub for_ms: u64,
}

/// A peer whose ejection ended, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    pub server: String,
    pub early: Early,
}

/// Why an ejection ended before its time, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    No,
    /// Too few peers were left to keep any out (`panic`).
    Panic,
    /// The upstream has no `shift_eject` any more.
    EjectionOff,
}

impl PeerSlot {
    /// Counts an attempt's outcome for `shift_eject`: true when this failure is the
    /// `consecutive`-th in a row, and the caller should weigh an ejection (`Table::eject`).
    /// Attempts that end while the peer is out (started before it was ejected) count for
    /// nothing.
    pub fn count_outcome(&self, failure: bool, consecutive: u32) -> bool {
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            return false;
        }
        if !failure {
            // Most attempts succeed: a load first, so that they do not all write the slot's
            // line, which every worker shares.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        // The failure that completes a run takes the count back to 0 in the same step: one
        // worker weighs the ejection, and a run is never left past the threshold (a lock that
        // was busy, or a reload that lowered `consecutive`) where no failure would complete it.
        let before = self
            .consecutive_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                Some(if count + 1 >= consecutive {
                    0
                } else {
                    count + 1
                })
            })
            .unwrap_or_default();
        before + 1 >= consecutive
    }

    fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }
}

impl<'a> Table<'a> {
    /// After the `consecutive`-th failure in a row of peer `index` (whose count then started
    /// over): ejects it for as long as its number of ejections says, if it is a primary peer
    /// that still takes requests and the upstream's bounds allow (`EjectArgs::may_eject`,
    /// counted over this view's peers). A peer the bounds keep in is weighed again after as
    /// many failures.
    pub fn eject(
        &self,
        index: usize,
        args: &EjectArgs,
        now_ms: u64,
        pid: u64,
        is_alive: impl Fn(u64) -> bool,
    ) -> Result<Option<Ejected>, LockError> {
        let guard = self.lock(pid, is_alive)?;
        let peer = self.peers[index];
        let mandatory = self.header.checks() == CheckMode::Mandatory;
        let out_already = peer.ejected_until_ms() != 0;
        // Backup peers are outside the bounds, which count the primary ones: never ejected.
        let backup = peer.backup.load(Ordering::Relaxed);
        if out_already || backup || !peer.is_current() || !takes_requests(peer, mandatory) {
            return Ok(None);
        }
        if !args.may_eject(self.standing(mandatory)) {
            return Ok(None);
        }
        let before = peer.ejections.load(Ordering::Relaxed);
        let for_ms = args.duration_ms(before);
        guard.write_section(|_| {
            peer.ejected_until_ms
                .store(now_ms.saturating_add(for_ms).max(1), Ordering::Relaxed);
            peer.ejections
                .store(before.saturating_add(1), Ordering::Relaxed);
        });
        Ok(Some(Ejected {
            server: peer.server().to_string(),
            ejections: before.saturating_add(1),
            for_ms,
        }))
    }

    /// Lets back the peers whose ejection is over at `now_ms` (Unix ms); every ejected peer
    /// when too few others take requests (`EjectArgs::in_panic`), or when the upstream has no
    /// `shift_eject` any more (`args` is `None`: a reload took it away). Each comes back
    /// through its slow start. Without anything to end it takes no lock (a worker asks once a
    /// second).
    pub fn end_ejections(
        &self,
        args: Option<&EjectArgs>,
        now_ms: u64,
        pid: u64,
        is_alive: impl Fn(u64) -> bool,
    ) -> Result<Vec<Returned>, LockError> {
        let mandatory = self.header.checks() == CheckMode::Mandatory;
        let due = || -> Vec<(&PeerSlot, Early)> {
            let all = match args {
                None => Some(Early::EjectionOff),
                Some(args) => args
                    .in_panic(self.standing(mandatory))
                    .then_some(Early::Panic),
            };
            self.peers
                .iter()
                .filter(|peer| peer.ejected_until_ms() != 0)
                .filter_map(|&peer| match all {
                    _ if is_over(peer.ejected_until_ms(), now_ms) => Some((peer, Early::No)),
                    Some(early) => Some((peer, early)),
                    None => None,
                })
                .collect()
        };
        if self.peers.iter().all(|peer| peer.ejected_until_ms() == 0) || due().is_empty() {
            return Ok(Vec::new());
        }
        let guard = self.lock(pid, is_alive)?;
        // Again under the lock: another worker may have let them back meanwhile.
        let ending = due();
        if ending.is_empty() {
            return Ok(Vec::new());
        }
        let slow_start = self.header.slow_start();
        guard.write_section(|_| {
            for (peer, _) in &ending {
                peer.ejected_until_ms.store(0, Ordering::Relaxed);
                peer.consecutive_failures.store(0, Ordering::Relaxed);
                if takes_requests(peer, mandatory) {
                    start_ramp(peer, slow_start, None, now_ms);
                }
            }
        });
        Ok(ending
            .into_iter()
            .map(|(peer, early)| Returned {
                server: peer.server().to_string(),
                early,
            })
            .collect())
    }

    /// How this view's current primary peers stand, for `shift_eject`'s bounds.
    fn standing(&self, mandatory: bool) -> Standing {
        let mut standing = Standing::default();
        for peer in self.peers {
            if !peer.is_current() || peer.backup.load(Ordering::Relaxed) {
                continue;
            }
            standing.peers += 1;
            // An ejected peer that could not take requests anyway (drained, unhealthy) still
            // holds its place under `max_percent` (it is out again once put back), but no share
            // under `panic`.
            let could_take = takes_requests(peer, mandatory);
            match (peer.ejected_until_ms() != 0, could_take) {
                (true, could_take) => {
                    standing.ejected += 1;
                    standing.ejected_eligible += usize::from(could_take);
                }
                (false, true) => standing.eligible += 1,
                (false, false) => {}
            }
        }
        standing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::test_support::{OwnedTable, NOW_MS};

    const ALIVE: fn(u64) -> bool = |_| true;

    fn args() -> EjectArgs {
        EjectArgs {
            consecutive: 3,
            base_ms: 1_000,
            max_ms: 2_500,
            max_percent: 100,
            ..EjectArgs::default()
        }
    }

    fn eligible(table: Table) -> Vec<bool> {
        let mut routes = Vec::new();
        table.routes_if_changed(u64::MAX, &mut routes).unwrap();
        routes.iter().map(|route| route.eligible).collect()
    }

    #[test]
    fn the_nth_failure_in_a_row_asks_for_an_ejection_and_a_success_starts_over() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Off);
        let peer = owned.view().peers()[0];
        assert!(!peer.count_outcome(true, 3));
        assert!(!peer.count_outcome(true, 3));
        assert!(!peer.count_outcome(false, 3), "a success in between");
        assert!(!peer.count_outcome(true, 3));
        assert!(!peer.count_outcome(true, 3));
        assert!(peer.count_outcome(true, 3));
        // That failure started the count over.
        assert!(!peer.count_outcome(true, 3));
        assert!(!peer.count_outcome(true, 3));
        // A reload that lowers the threshold below the count: the next failure completes it.
        assert!(peer.count_outcome(true, 1));
    }

    #[test]
    fn an_ejected_peer_takes_nothing_until_its_time_then_ramps_back() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1", "c:1"], CheckMode::Off);
        let table = owned.view();
        table.header().set_slow_start(crate::slow_start::SlowStart {
            window_ms: 10_000,
            min_permille: 100,
            aggression_centi: 100,
        });
        let ejected = table.eject(0, &args(), NOW_MS, 1, ALIVE).unwrap().unwrap();
        assert_eq!(
            ejected,
            Ejected {
                server: "a:1".into(),
                ejections: 1,
                for_ms: 1_000
            }
        );
        assert_eq!(eligible(table), [false, true, true]);
        let wire = table.to_wire(&[], NOW_MS).peers.remove(0);
        assert!(!wire.eligible);
        assert_eq!(wire.ejection.ejected_until_ms, Some(NOW_MS + 1_000));
        // Failures of attempts begun before it went out count for nothing.
        assert!(!table.peers()[0].count_outcome(true, 1));

        let not_yet = table.end_ejections(Some(&args()), NOW_MS + 999, 1, ALIVE);
        assert_eq!(not_yet, Ok(Vec::new()));
        let back = table
            .end_ejections(Some(&args()), NOW_MS + 1_000, 1, ALIVE)
            .unwrap();
        assert_eq!(
            back,
            [Returned {
                server: "a:1".into(),
                early: Early::No
            }]
        );
        assert_eq!(eligible(table), [true, true, true]);
        let wire = table.to_wire(&[], NOW_MS + 1_000).peers.remove(0);
        assert_eq!(
            (wire.ejection.ejections, wire.ejection.ejected_until_ms),
            (1, None)
        );
        assert!(wire.ramp.is_some(), "it comes back through slow start");

        // The second ejection lasts twice as long, the third as long as max.
        let second = table.eject(0, &args(), NOW_MS, 1, ALIVE).unwrap().unwrap();
        assert_eq!((second.ejections, second.for_ms), (2, 2_000));
        table
            .end_ejections(Some(&args()), NOW_MS + 2_000, 1, ALIVE)
            .unwrap();
        let third = table.eject(0, &args(), NOW_MS, 1, ALIVE).unwrap().unwrap();
        assert_eq!((third.ejections, third.for_ms), (3, 2_500));
    }

    #[test]
    fn the_bounds_keep_peers_in_and_panic_lets_them_back() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Off);
        let table = owned.view();
        let bounded = EjectArgs {
            max_percent: 10,
            ..args()
        };
        assert!(table
            .eject(0, &bounded, NOW_MS, 1, ALIVE)
            .unwrap()
            .is_some());
        assert_eq!(
            table.eject(1, &bounded, NOW_MS, 1, ALIVE),
            Ok(None),
            "one of two at once"
        );
        assert_eq!(eligible(table), [false, true]);

        // b:1 is drained: nobody is left, and a:1 comes back before its time.
        table.lock(1, ALIVE).unwrap().apply(
            &[crate::table::PeerChange {
                index: 1,
                state: Some(shift_wire::PeerState::Drain),
                ..Default::default()
            }],
            NOW_MS,
        );
        let back = table
            .end_ejections(Some(&bounded), NOW_MS + 1, 1, ALIVE)
            .unwrap();
        assert_eq!(
            back,
            [Returned {
                server: "a:1".into(),
                early: Early::Panic
            }]
        );
        assert_eq!(eligible(table), [true, false]);
        assert_eq!(
            table.eject(0, &bounded, NOW_MS, 1, ALIVE),
            Ok(None),
            "the last peer is never ejected"
        );
    }

    #[test]
    fn backups_are_never_ejected_and_a_reload_without_eject_lets_everyone_back() {
        let owned = OwnedTable::new(
            "app",
            &[("a:1", 1, false), ("b:1", 1, false), ("c:1", 1, false)],
        );
        let table = owned.view();
        owned.peers[2].backup.store(true, Ordering::Relaxed);
        assert_eq!(table.eject(2, &args(), NOW_MS, 1, ALIVE), Ok(None));
        assert!(table.eject(0, &args(), NOW_MS, 1, ALIVE).unwrap().is_some());
        let back = table.end_ejections(None, NOW_MS + 1, 1, ALIVE).unwrap();
        assert_eq!(
            back,
            [Returned {
                server: "a:1".into(),
                early: Early::EjectionOff
            }]
        );
        assert_eq!(eligible(table), [true, true, true]);
    }

    #[test]
    fn an_ejected_peer_that_is_drained_keeps_its_place_under_max_percent_not_under_panic() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1", "c:1"], CheckMode::Off);
        let table = owned.view();
        let one_at_a_time = EjectArgs {
            max_percent: 34,
            ..args()
        };
        assert!(table
            .eject(0, &one_at_a_time, NOW_MS, 1, ALIVE)
            .unwrap()
            .is_some());
        table.lock(1, ALIVE).unwrap().apply(
            &[crate::table::PeerChange {
                index: 0,
                state: Some(shift_wire::PeerState::Drain),
                ..Default::default()
            }],
            NOW_MS,
        );
        assert_eq!(
            table.eject(1, &one_at_a_time, NOW_MS, 1, ALIVE),
            Ok(None),
            "a:1 still holds the one place"
        );
        // With room for two, b:1 may go: a:1 takes no share from panic's count.
        let two = EjectArgs {
            max_percent: 67,
            ..args()
        };
        assert!(table.eject(1, &two, NOW_MS, 1, ALIVE).unwrap().is_some());
    }
}
