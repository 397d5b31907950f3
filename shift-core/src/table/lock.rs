//! The writer side of a table: its lock (taken over from a writer that died), the sequence-lock
//! sections readers detect, and the generation every change adds one to.

use std::sync::atomic::{fence, Ordering};

use shift_wire::Health;

use super::layout::{encode_health, encode_state, PeerSlot};
use super::{eligible, CheckMode, PeerChange, Table};
use crate::slow_start::{SlowStart, RAMP_AT_FIRST_PASS};

/// Whether `peer` takes new requests, as its values stand (inside a write section).
pub(super) fn takes_requests(peer: &PeerSlot, mandatory: bool) -> bool {
    eligible(peer.weight(), peer.state(), peer.health(), mandatory)
}

/// Starts `peer`'s ramp at `at_ms` (or marks it to start at its first passed check, with
/// `RAMP_AT_FIRST_PASS`), as the change that lets it take requests asks: `window` `None` follows
/// the upstream's `shift_slow_start` (none when it has none), `Some(0)` starts none, and
/// `Some(ms)` starts one of that window. Both words are written either way, so that no earlier
/// ramp of a window of its own is taken up again. Inside a write section.
pub(super) fn start_ramp(peer: &PeerSlot, upstream: SlowStart, window: Option<u32>, at_ms: u64) {
    let (from, window) = match window {
        Some(0) => (0, 0),
        Some(window) => (at_ms.max(1), window),
        None if upstream.is_on() => (at_ms.max(1), 0),
        None => (0, 0),
    };
    peer.ramp_from_ms.store(from, Ordering::Relaxed);
    peer.ramp_window_ms.store(window, Ordering::Relaxed);
}

/// How many times a writer tries the lock before giving up (each try yields the CPU).
const LOCK_ATTEMPTS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "another change to upstream \"{upstream}\" is in progress (worker pid {}); try again",
        crate::process::ProcessId::from_token(*holder).pid
    )]
    Busy { upstream: String, holder: u64 },
}

impl<'a> Table<'a> {
    /// Takes the write lock for the process whose token (`process::ProcessId::token`: pid and
    /// start time, so that a reused pid is not mistaken for the holder) is `pid`. A lock held by
    /// a process that `is_alive` says is gone (a worker that crashed mid-change) is taken over.
    pub fn lock(
        &self,
        pid: u64,
        is_alive: impl Fn(u64) -> bool,
    ) -> Result<WriteGuard<'a>, LockError> {
        let writer = &self.header.writer;
        let mut holder = 0;
        for _ in 0..LOCK_ATTEMPTS {
            match writer.compare_exchange(0, pid, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(WriteGuard { table: *self }),
                Err(current) => holder = current,
            }
            if holder != pid
                && !is_alive(holder)
                && writer
                    .compare_exchange(holder, pid, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // The dead writer may have left `seq` odd: close its section.
                let seq = self.header.seq.load(Ordering::Relaxed);
                if seq % 2 == 1 {
                    self.header.seq.store(seq + 1, Ordering::Release);
                }
                return Ok(WriteGuard { table: *self });
            }
            std::thread::yield_now();
        }
        Err(LockError::Busy {
            upstream: self.name().to_string(),
            holder,
        })
    }
}

/// The write lock of one table; released on drop.
pub struct WriteGuard<'a> {
    pub(super) table: Table<'a>,
}

impl<'a> WriteGuard<'a> {
    pub fn table(&self) -> Table<'a> {
        self.table
    }

    /// Applies all `changes` as one new generation, visible to readers at once; returns it. A
    /// peer the changes let take new requests again (up from `down` or `drain`, a weight from
    /// 0) starts its slow start at `now_ms`.
    pub fn apply(&self, changes: &[PeerChange], now_ms: u64) -> u64 {
        let mandatory = self.table.header.checks() == CheckMode::Mandatory;
        let slow_start = self.table.header.slow_start();
        self.write_section(|peers| {
            for change in changes {
                let peer = &peers[change.index];
                let was_eligible = takes_requests(peer, mandatory);
                if let Some(weight) = change.weight {
                    peer.weight.store(weight, Ordering::Relaxed);
                }
                if let Some(state) = change.state {
                    peer.state.store(encode_state(state), Ordering::Relaxed);
                }
                if let Some(label) = change.label {
                    peer.label.store(label);
                }
                peer.follow_close_order(change.state, change.close, now_ms);
                if !was_eligible && takes_requests(peer, mandatory) {
                    start_ramp(peer, slow_start, change.slow_start_ms, now_ms);
                }
            }
        });
        self.bump_generation()
    }

    /// Sets a peer's health; routing changes at once. Health is not a generation of its own.
    /// A peer back from `unhealthy`, or one added at run time whose first check lets it take
    /// requests (`mandatory`; `add_peer` marks it), starts its slow start at `now_ms`; other
    /// first checks do not (at Nginx start nothing is warm to protect).
    pub fn set_health(&self, index: usize, health: Health, now_ms: u64) {
        let mandatory = self.table.header.checks() == CheckMode::Mandatory;
        let slow_start = self.table.header.slow_start();
        self.write_section(|peers| {
            let peer = peers[index];
            let was_eligible = takes_requests(peer, mandatory);
            let recovered = peer.health() == Health::Unhealthy;
            peer.health.store(encode_health(health), Ordering::Relaxed);
            let first_pass_due = peer.ramp_from_ms.load(Ordering::Relaxed) == RAMP_AT_FIRST_PASS;
            if was_eligible || !takes_requests(peer, mandatory) {
                return;
            }
            if first_pass_due {
                // With the window its addition gave it.
                peer.ramp_from_ms.store(now_ms.max(1), Ordering::Relaxed);
            } else if recovered {
                start_ramp(peer, slow_start, None, now_ms);
            }
        });
    }

    /// Before a configuration load sets a new slow start: forgets the ramps that do not run
    /// under the one it replaces (`previous`) at `now_ms`, so that a longer window (or slow
    /// start turned on) starts none again. A ramp that runs follows the new window.
    /// `peers` are the table's current peers (a guard's view may hold only some).
    pub fn end_finished_ramps(&self, peers: &[&PeerSlot], previous: SlowStart, now_ms: u64) {
        self.write_section(|_| {
            for peer in peers {
                let from = peer.ramp_from_ms.load(Ordering::Relaxed);
                let window = peer.ramp_window_ms.load(Ordering::Relaxed);
                if from != RAMP_AT_FIRST_PASS && !previous.with_window(window).ramps(from, now_ms) {
                    peer.ramp_from_ms.store(0, Ordering::Relaxed);
                    peer.ramp_window_ms.store(0, Ordering::Relaxed);
                }
            }
        });
    }

    pub(super) fn bump_generation(&self) -> u64 {
        let generation = &self.table.header.generation;
        let next = generation
            .load(Ordering::Acquire)
            .saturating_add(1)
            .min(MAX_GENERATION);
        generation.store(next, Ordering::Release);
        next
    }

    pub(super) fn write_section(&self, write: impl FnOnce(&[&PeerSlot])) {
        let seq = &self.table.header.seq;
        let start = seq.load(Ordering::Relaxed);
        seq.store(start + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        write(self.table.peers);
        seq.store(start + 2, Ordering::Release);
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.table.header.writer.store(0, Ordering::Release);
    }
}

/// The highest generation: the largest integer every JSON reader keeps exact (2^53). A table
/// stays there rather than wrap, and a state file above it is refused.
pub const MAX_GENERATION: u64 = 1 << 53;

#[cfg(test)]
mod tests {
    use shift_wire::PeerState;

    use super::*;
    use crate::table::test_support::{route, OwnedTable, NOW_MS};

    #[test]
    fn apply_changes_routing_and_generation_at_once() {
        let owned = OwnedTable::new("app", &[("a:1", 5, false), ("b:1", 1, true)]);
        let table = owned.view();
        let seen = table.seq();
        let guard = table.lock(7, |_| true).unwrap();
        let generation = guard.apply(
            &[
                PeerChange {
                    index: 0,
                    weight: Some(0),
                    state: None,
                    ..Default::default()
                },
                PeerChange {
                    index: 1,
                    weight: Some(30),
                    state: Some(PeerState::Up),
                    ..Default::default()
                },
            ],
            NOW_MS,
        );
        drop(guard);
        assert_eq!(generation, 2);
        let mut routes = Vec::new();
        let seq = table
            .routes_if_changed(seen, &mut routes)
            .expect("seq moved");
        assert_eq!(routes, vec![route(0, false), route(30, true)]);
        assert!(
            table.routes_if_changed(seq, &mut routes).is_none(),
            "nothing new since"
        );
    }
    const SLOW: SlowStart = SlowStart {
        window_ms: 10_000,
        min_permille: 100,
        aggression_centi: 100,
    };

    #[test]
    fn a_peer_ramps_up_from_a_recovery_or_a_run_time_first_pass_not_from_a_lines_first_check() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Mandatory);
        let table = owned.view();
        table.header().set_slow_start(SLOW);
        let ramp_of = |index: usize| table.peers()[index].ramp_from_ms.load(Ordering::Relaxed);
        let guard = table.lock(1, |_| true).unwrap();
        guard.set_health(0, Health::Healthy, 10);
        assert_eq!(
            ramp_of(0),
            0,
            "a server line's first pass: Nginx just started"
        );
        guard.set_health(0, Health::Unhealthy, 20);
        guard.set_health(0, Health::Healthy, 30);
        assert_eq!(ramp_of(0), 30, "back from unhealthy");
        // As `add_peer` marks a peer that joins at run time waiting for its first pass.
        table.peers()[1]
            .ramp_from_ms
            .store(RAMP_AT_FIRST_PASS, Ordering::Relaxed);
        guard.set_health(1, Health::Healthy, 40);
        assert_eq!(
            ramp_of(1),
            40,
            "a run-time peer's first pass lets it take requests"
        );
        // A change that keeps it taking requests does not start it again.
        guard.apply(
            &[PeerChange {
                index: 1,
                weight: Some(9),
                ..Default::default()
            }],
            50,
        );
        assert_eq!(ramp_of(1), 40);
    }

    #[test]
    fn a_new_or_longer_window_starts_no_ramp_that_had_ended() {
        let owned = OwnedTable::new("app", &[("a:1", 5, true), ("b:1", 5, true)]);
        let table = owned.view();
        table.header().set_slow_start(SLOW);
        let guard = table.lock(1, |_| true).unwrap();
        let up = |index| PeerChange {
            index,
            state: Some(PeerState::Up),
            ..Default::default()
        };
        guard.apply(&[up(0)], 1_000);
        guard.apply(&[up(1)], 20_000);
        // At 25 s a reload makes the window an hour: a's ramp ended at 11 s and stays ended;
        // b's, still running, follows the new window.
        guard.end_finished_ramps(table.peers(), SLOW, 25_000);
        let ramp_of = |index: usize| table.peers()[index].ramp_from_ms.load(Ordering::Relaxed);
        assert_eq!((ramp_of(0), ramp_of(1)), (0, 20_000));
    }

    #[test]
    fn no_ramp_starts_while_slow_start_is_off() {
        let owned = OwnedTable::new("app", &[("a:1", 5, true)]);
        let table = owned.view();
        let guard = table.lock(1, |_| true).unwrap();
        guard.apply(
            &[PeerChange {
                index: 0,
                state: Some(PeerState::Up),
                ..Default::default()
            }],
            1_000,
        );
        assert_eq!(table.peers()[0].ramp_from_ms.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_change_may_give_its_ramp_a_window_of_its_own_or_none() {
        let owned = OwnedTable::new("app", &[("a:1", 10, true), ("b:1", 10, true)]);
        let table = owned.view();
        let guard = table.lock(1, |_| true).unwrap();
        // No shift_slow_start: a change's own window still ramps, from 10%, linearly.
        guard.apply(
            &[PeerChange {
                index: 0,
                state: Some(PeerState::Up),
                slow_start_ms: Some(4_000),
                ..Default::default()
            }],
            1_000,
        );
        let ramp = table.to_wire(&[], 2_000).peers[0].ramp.unwrap();
        assert_eq!((ramp.ramp_ends_ms, ramp.effective_weight), (5_000, 3));
        // With shift_slow_start, a window of 0 starts none; a drain and an undrain with its
        // own window replaces the running ramp.
        table.header().set_slow_start(SLOW);
        let change = |index, state, slow_start_ms| PeerChange {
            index,
            state: Some(state),
            slow_start_ms,
            ..Default::default()
        };
        guard.apply(&[change(1, PeerState::Up, Some(0))], 3_000);
        assert_eq!(table.to_wire(&[], 3_000).peers[1].ramp, None);
        guard.apply(&[change(0, PeerState::Drain, None)], 3_000);
        guard.apply(&[change(0, PeerState::Up, Some(2_000))], 3_500);
        let ramp = table.to_wire(&[], 3_500).peers[0].ramp.unwrap();
        assert_eq!(ramp.ramp_ends_ms, 5_500);
        // A reload ends it with the window it had, not the upstream's 10 s.
        guard.end_finished_ramps(table.peers(), SLOW, 6_000);
        assert_eq!(table.peers()[0].ramp_from_ms.load(Ordering::Relaxed), 0);
        // Back from unhealthy: the upstream's window again.
        guard.set_health(0, Health::Unhealthy, 7_000);
        guard.set_health(0, Health::Healthy, 8_000);
        let ramp = table.to_wire(&[], 8_000).peers[0].ramp.unwrap();
        assert_eq!(ramp.ramp_ends_ms, 18_000);
    }

    #[test]
    fn a_ramp_of_its_own_is_not_taken_up_again_by_a_later_change_without_one() {
        let owned = OwnedTable::new("app", &[("a:1", 10, true)]);
        let table = owned.view();
        let guard = table.lock(1, |_| true).unwrap();
        let change = |state, slow_start_ms| PeerChange {
            index: 0,
            state: Some(state),
            slow_start_ms,
            ..Default::default()
        };
        guard.apply(&[change(PeerState::Up, Some(60_000))], 1_000);
        guard.apply(&[change(PeerState::Drain, None)], 6_000);
        // No shift_slow_start, no window of its own: back at its whole weight.
        guard.apply(&[change(PeerState::Up, None)], 20_000);
        assert_eq!(table.to_wire(&[], 20_000).peers[0].ramp, None);
    }

    #[test]
    fn the_lock_excludes_a_live_writer_and_is_taken_from_a_dead_one() {
        let owned = OwnedTable::new("app", &[("a:1", 1, false)]);
        let table = owned.view();
        let held = table.lock(100, |_| true).unwrap();
        assert_eq!(
            table.lock(200, |_| true).err(),
            Some(LockError::Busy {
                upstream: "app".into(),
                holder: 100
            })
        );
        std::mem::forget(held); // pid 100 "crashes" holding the lock
        let taken = table.lock(200, |pid| pid != 100);
        assert!(taken.is_ok());
    }
    #[test]
    fn the_generation_stops_at_its_ceiling() {
        let owned = OwnedTable::new("app", &[("a:1", 1, false)]);
        let guard = owned.view().lock(1, |_| true).unwrap();
        guard.carry_over(&[], MAX_GENERATION);
        let change = [PeerChange {
            index: 0,
            weight: Some(2),
            state: None,
            ..Default::default()
        }];
        assert_eq!(guard.apply(&change, NOW_MS), MAX_GENERATION);
        assert_eq!(guard.apply(&change, NOW_MS), MAX_GENERATION);
    }
}
