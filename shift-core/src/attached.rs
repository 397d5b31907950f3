//! A worker's record of which requests use which peer now: an attempt is attached when it picks
//! its peer and detached when it ends, so that a drain's deadline can close the ones a drained
//! or removed peer still carries (`crate::drain_close`). Both are O(1) and allocate only when
//! the record grows past its largest size so far.
//!
//! A detach names the entry by a [`Ticket`] that carries the entry's generation: a ticket whose
//! entry was taken (closed) and reused by a later attach detaches nothing, so that an attempt
//! ending after the closer took it cannot drop another attempt's entry.

/// Names one attached entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    /// The peer (its slot's address) and what the worker needs to close the attempt.
    used: Option<(usize, T)>,
}

/// The attached attempts of one worker, each under the key of its peer.
#[derive(Debug)]
pub struct Attached<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T: Copy> Default for Attached<T> {
    fn default() -> Self {
        Attached {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy> Attached<T> {
    /// Attaches `value` under `key`.
    pub fn attach(&mut self, key: usize, value: T) -> Ticket {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let entry = &mut self.entries[index as usize];
            entry.used = Some((key, value));
            return Ticket {
                index,
                generation: entry.generation,
            };
        }
        let index = self.entries.len() as u32;
        self.entries.push(Entry {
            generation: 0,
            used: Some((key, value)),
        });
        Ticket {
            index,
            generation: 0,
        }
    }

    /// Detaches the entry `ticket` names; false when it is no longer attached (taken, or
    /// detached already).
    pub fn detach(&mut self, ticket: Ticket) -> bool {
        let Some(entry) = self.entries.get_mut(ticket.index as usize) else {
            return false;
        };
        if entry.generation != ticket.generation || entry.used.is_none() {
            return false;
        }
        self.release(ticket.index);
        true
    }

    /// How many entries are attached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys with attached entries, how many each has and one of their values, in no
    /// particular order.
    pub fn groups(&self) -> Vec<(usize, usize, T)> {
        let mut groups: std::collections::HashMap<usize, (usize, T)> = Default::default();
        for (key, value) in self.entries.iter().filter_map(|entry| entry.used) {
            groups.entry(key).or_insert((0, value)).0 += 1;
        }
        groups
            .into_iter()
            .map(|(key, (count, value))| (key, count, value))
            .collect()
    }

    /// Detaches up to `count` entries of `key` and returns their values, in the record's order.
    pub fn take(&mut self, key: usize, count: usize) -> Vec<T> {
        let mut taken = Vec::new();
        for index in 0..self.entries.len() {
            if taken.len() == count {
                break;
            }
            if let Some((used_key, value)) = self.entries[index].used {
                if used_key == key {
                    taken.push(value);
                    self.release(index as u32);
                }
            }
        }
        taken
    }

    fn release(&mut self, index: u32) {
        let entry = &mut self.entries[index as usize];
        entry.used = None;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_of_a_taken_entry_detaches_nothing_after_its_reuse() {
        let mut attached = Attached::default();
        let first = attached.attach(1, 'a');
        assert_eq!(attached.take(1, 5), vec!['a']);
        let second = attached.attach(2, 'b');
        // The same place, another generation.
        assert!(!attached.detach(first));
        assert_eq!(attached.groups(), vec![(2, 1, 'b')]);
        assert!(attached.detach(second));
        assert!(!attached.detach(second));
        assert!(attached.is_empty());
    }

    #[test]
    fn take_takes_only_its_key_and_at_most_the_count() {
        let mut attached = Attached::default();
        for value in 0..6 {
            attached.attach(value % 2, value);
        }
        assert_eq!(attached.take(0, 2), vec![0, 2]);
        assert_eq!(attached.take(0, 9), vec![4]);
        assert_eq!(attached.len(), 3);
        assert_eq!(attached.groups(), vec![(1, 3, 1)]);
    }

    /// Random attaches, detaches (of live and stale tickets) and takes against a plain list:
    /// the record holds exactly the entries attached and not yet detached or taken.
    #[test]
    fn model_over_random_sequences() {
        let mut rng = crate::test_rng::XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut next = |bound: u64| rng.below(bound);
        for _ in 0..200 {
            let mut attached = Attached::default();
            let mut model: Vec<(usize, u64, Ticket)> = Vec::new();
            let mut stale: Vec<Ticket> = Vec::new();
            for step in 0..300u64 {
                match next(4) {
                    0 | 1 => {
                        let key = next(3) as usize;
                        let ticket = attached.attach(key, step);
                        model.push((key, step, ticket));
                    }
                    2 if !model.is_empty() => {
                        let (_, _, ticket) = model.remove(next(model.len() as u64) as usize);
                        assert!(attached.detach(ticket));
                        stale.push(ticket);
                    }
                    2 => {}
                    _ => {
                        let key = next(3) as usize;
                        let count = next(3) as usize;
                        let taken = attached.take(key, count);
                        assert!(taken.len() <= count);
                        for value in &taken {
                            let at = model
                                .iter()
                                .position(|(k, v, _)| *k == key && v == value)
                                .expect("taken what was attached under its key");
                            stale.push(model.remove(at).2);
                        }
                        let left = model.iter().filter(|(k, _, _)| *k == key).count();
                        assert!(taken.len() == count || left == 0);
                    }
                }
                if next(5) == 0 {
                    if let Some(&ticket) = stale.get(next(stale.len().max(1) as u64) as usize) {
                        assert!(!attached.detach(ticket), "a stale ticket detached");
                    }
                }
                assert_eq!(attached.len(), model.len());
            }
            let mut counts: Vec<(usize, usize)> = attached
                .groups()
                .into_iter()
                .map(|(key, count, _)| (key, count))
                .collect();
            counts.sort_unstable();
            let mut expected: std::collections::BTreeMap<usize, usize> = Default::default();
            for (key, _, _) in &model {
                *expected.entry(*key).or_default() += 1;
            }
            assert_eq!(counts, expected.into_iter().collect::<Vec<_>>());
        }
    }
}
