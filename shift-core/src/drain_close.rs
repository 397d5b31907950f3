//! Closing what a drain leaves, on a schedule. A drained or removed peer may carry a deadline
//! (`close_after` from the change) and a spread: once the deadline passes, each worker closes
//! the requests it still has on that peer (`crate::attached`), upgraded connections included,
//! evenly over the spread, so that clients reconnect gradually rather than all at once. A peer
//! put back `up` before then loses its deadline.
//!
//! Each worker spreads its own share: it counts what it carries when the deadline passes and,
//! at each look, has closed the same fraction of that count as of the window; whatever is left
//! when the window ends (requests that came later, e.g. pinned ones) goes then.

use std::collections::HashMap;

/// The longest `close_after` and `close_spread`.
pub const MAX_CLOSE_MS: u64 = 24 * 3600 * 1000;

/// A change's order to close what the peer still carries: after `after_ms`, spread over
/// `spread_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseOrder {
    pub after_ms: u32,
    pub spread_ms: u32,
}

impl CloseOrder {
    /// Reads `close_after` and `close_spread` as the API and shiftctl take them: each a
    /// duration from 0 to 24 h (`"30s"`, `"0s"`); a spread needs a deadline.
    pub fn parse(after: Option<&str>, spread: Option<&str>) -> Result<Option<CloseOrder>, String> {
        let window = |name: &str, text: &str| {
            shift_wire::parse_window(text)
                .map(|window| window.as_millis() as u32)
                .map_err(|_| {
                    format!(
                        "{name} \"{}\" is not a duration from 0s to 24h, e.g. \"30s\"",
                        text.escape_default()
                    )
                })
        };
        match (after, spread) {
            (None, None) => Ok(None),
            (None, Some(_)) => {
                Err("close_spread needs close_after: the spread starts at the deadline".to_string())
            }
            (Some(after), spread) => Ok(Some(CloseOrder {
                after_ms: window("close_after", after)?,
                spread_ms: spread
                    .map(|spread| window("close_spread", spread))
                    .transpose()?
                    .unwrap_or(0),
            })),
        }
    }

    /// The deadline this order sets when given at `now_ms` (Unix ms; never 0, "none").
    pub fn deadline(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(u64::from(self.after_ms)).max(1)
    }
}

/// A worker's progress through the deadlines of the peers it carries requests on.
#[derive(Debug, Default)]
pub struct Closer {
    progress: HashMap<usize, Progress>,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The deadline this progress is of: a new one starts afresh.
    close_at_ms: u64,
    /// What the worker carried on the peer when the deadline passed.
    at_deadline: usize,
    closed: usize,
}

impl Closer {
    /// How many of the `carried` requests on peer `key` to close at `now_ms`, whose deadline is
    /// `close_at_ms` (0: none) and spread `spread_ms`; notes them as closed.
    pub fn due(
        &mut self,
        key: usize,
        close_at_ms: u64,
        spread_ms: u32,
        now_ms: u64,
        carried: usize,
    ) -> usize {
        if close_at_ms == 0 || now_ms < close_at_ms {
            self.progress.remove(&key);
            return 0;
        }
        let progress = self
            .progress
            .entry(key)
            .and_modify(|progress| {
                if progress.close_at_ms != close_at_ms {
                    *progress = Progress::new(close_at_ms, carried);
                }
            })
            .or_insert_with(|| Progress::new(close_at_ms, carried));
        let elapsed = now_ms - close_at_ms;
        let spread = u64::from(spread_ms);
        let due = if elapsed >= spread {
            carried
        } else {
            // The share of the window that passed, rounded up: the first look after the
            // deadline closes some at once.
            let share = (progress.at_deadline as u64 * elapsed).div_ceil(spread) as usize;
            share.saturating_sub(progress.closed).min(carried)
        };
        progress.closed += due;
        due
    }

    /// Forgets the peers it carries nothing on any more (`carried`: the keys it does).
    pub fn keep_only(&mut self, carried: &[usize]) {
        self.progress.retain(|key, _| carried.contains(key));
    }
}

impl Progress {
    fn new(close_at_ms: u64, at_deadline: usize) -> Progress {
        Progress {
            close_at_ms,
            at_deadline,
            closed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: u64 = 1_000_000;

    #[test]
    fn orders_are_read_with_their_limits() {
        assert_eq!(CloseOrder::parse(None, None), Ok(None));
        assert_eq!(
            CloseOrder::parse(Some("30s"), Some("10s")),
            Ok(Some(CloseOrder {
                after_ms: 30_000,
                spread_ms: 10_000
            }))
        );
        assert_eq!(
            CloseOrder::parse(Some("0s"), None),
            Ok(Some(CloseOrder::default()))
        );
        for (after, spread) in [
            (None, Some("10s")),
            (Some("soon"), None),
            (Some("25h"), None),
            (Some("30s"), Some("-1")),
        ] {
            assert!(
                CloseOrder::parse(after, spread).is_err(),
                "{after:?} {spread:?}"
            );
        }
    }

    #[test]
    fn nothing_closes_before_the_deadline_and_all_at_once_without_a_spread() {
        let mut closer = Closer::default();
        assert_eq!(closer.due(1, AT, 0, AT - 1, 10), 0);
        assert_eq!(closer.due(1, 0, 0, AT, 10), 0);
        assert_eq!(closer.due(1, AT, 0, AT, 10), 10);
    }

    #[test]
    fn a_spread_closes_evenly_and_the_rest_at_its_end() {
        let mut closer = Closer::default();
        let mut carried = 100;
        let mut closed_at = Vec::new();
        for now in (AT..=AT + 10_000).step_by(100) {
            let due = closer.due(7, AT, 10_000, now, carried);
            carried -= due;
            closed_at.extend(std::iter::repeat_n(now, due));
        }
        assert_eq!(carried, 0);
        // One per 100 ms, the first at the deadline's first look after it.
        for (index, at) in closed_at.iter().enumerate() {
            let even = AT + index as u64 * 100;
            assert!(
                at.abs_diff(even) <= 100,
                "close {index} at {at}, even {even}"
            );
        }
    }

    #[test]
    fn requests_that_end_by_themselves_are_not_made_up_for() {
        let mut closer = Closer::default();
        assert_eq!(closer.due(7, AT, 10_000, AT + 1_000, 100), 10);
        // 80 of the 90 left end by themselves; the share due at 5 s is 50 - 10, 10 are left.
        assert_eq!(closer.due(7, AT, 10_000, AT + 5_000, 10), 10);
        assert_eq!(closer.due(7, AT, 10_000, AT + 6_000, 0), 0);
    }

    #[test]
    fn a_new_deadline_starts_afresh_and_a_cancelled_one_is_forgotten() {
        let mut closer = Closer::default();
        assert_eq!(closer.due(7, AT, 10_000, AT + 5_000, 10), 5);
        assert_eq!(closer.due(7, 0, 0, AT + 6_000, 5), 0);
        // Of the 5 carried at the new deadline, half at half its window.
        assert_eq!(closer.due(7, AT + 10_000, 10_000, AT + 15_000, 5), 3);
        closer.keep_only(&[8]);
        assert!(closer.progress.is_empty());
    }
}
