//! A drain's deadline in a peer's slot (`crate::drain_close`): set by the change that drains or
//! removes the peer with a `close_after`, cleared when a change puts it back `up` or a new
//! instance joins, read by every worker's closer, which counts what it closed.

use std::sync::atomic::Ordering;

use shift_wire::{DrainClose, PeerState};

use super::PeerSlot;
use crate::drain_close::CloseOrder;

impl PeerSlot {
    /// When its requests close (Unix ms) and over how long, if a deadline is set.
    pub fn close_deadline(&self) -> Option<(u64, u32)> {
        match self.close_at_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some((at, self.close_spread_ms.load(Ordering::Relaxed))),
        }
    }

    /// A worker closed `count` of its requests at the deadline.
    pub fn record_closed_by_drain(&self, count: u64) {
        self.closed_by_drain.fetch_add(count, Ordering::Relaxed);
    }

    /// Inside a write section: a change that set `state` (if any) and gave `order` (if any) at
    /// `now_ms`. `up` cancels a deadline; an order sets one.
    pub(super) fn follow_close_order(
        &self,
        state: Option<PeerState>,
        order: Option<CloseOrder>,
        now_ms: u64,
    ) {
        if state == Some(PeerState::Up) {
            self.set_close(0, 0);
        }
        if let Some(order) = order {
            self.set_close(order.deadline(now_ms), order.spread_ms);
        }
    }

    /// Inside a write section: a new instance of the peer starts with no deadline and nothing
    /// closed.
    pub(super) fn forget_close(&self) {
        self.set_close(0, 0);
        self.closed_by_drain.store(0, Ordering::Relaxed);
    }

    fn set_close(&self, at_ms: u64, spread_ms: u32) {
        self.close_at_ms.store(at_ms, Ordering::Relaxed);
        self.close_spread_ms.store(spread_ms, Ordering::Relaxed);
    }

    pub(super) fn drain_close_to_wire(&self) -> DrainClose {
        let deadline = self.close_deadline();
        DrainClose {
            close_at_ms: deadline.map(|(at, _)| at),
            close_spread_ms: deadline
                .map(|(_, spread)| u64::from(spread))
                .filter(|&spread| spread != 0),
            closed_by_drain: self.closed_by_drain.load(Ordering::Relaxed),
        }
    }
}
