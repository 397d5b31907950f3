//! What must hold of the model's zone: after every step, nothing reachable is freed; once
//! everything is quiet, nothing is leaked.

use shift_core::reclaim::PositionKind;

use super::Zone;
use crate::TABLES;

impl Zone {
    /// Nothing reachable is freed; no config position of a live load changed.
    pub(crate) fn check_reachable(&self) {
        for load in self.live_loads() {
            for position in self.loads[load].positions.iter().flatten() {
                assert!(
                    !self.slots[*position].freed,
                    "load {load} holds a freed slot"
                );
            }
            for &(position, slot) in &self.loads[load].config_slots {
                assert_eq!(
                    self.loads[load].positions[position],
                    Some(slot),
                    "config position {position} of load {load} changed"
                );
            }
        }
        for (index, worker) in self.workers.iter().enumerate() {
            if !worker.alive {
                continue;
            }
            assert!(
                !self.loads[worker.load].freed,
                "worker {index}'s load freed"
            );
            for list in &worker.lists {
                if list.retired && list.requests == 0 {
                    continue;
                }
                for &slot in &list.slots {
                    assert!(
                        !self.slots[slot].freed,
                        "worker {index} lists freed slot {slot} ({:?})",
                        self.slots[slot]
                    );
                }
            }
        }
        for request in &self.requests {
            assert!(
                !self.slots[request.slot].freed,
                "a request runs on a freed slot"
            );
        }
    }

    /// Quiet: requests end, old workers exit, the rest catch up; then nothing is leaked.
    pub(crate) fn settle_and_check_leaks(&mut self) {
        while !self.requests.is_empty() {
            self.end_request(0);
        }
        let current = self
            .loads
            .iter()
            .position(|load| load.id == self.current_load && !load.freed);
        for worker in 0..self.workers.len() {
            if Some(self.workers[worker].load) != current {
                self.kill(worker);
            }
        }
        for worker in 0..self.workers.len() {
            if self.workers[worker].alive {
                for table in 0..TABLES {
                    self.follow(worker, table);
                    self.publish(worker, table);
                }
            }
        }
        self.reclaim();
        self.check_reachable();
        for (id, slot) in self.slots.iter().enumerate() {
            if slot.freed || slot.current {
                continue;
            }
            let config_line = self.live_loads().any(|load| {
                self.loads[load]
                    .config_slots
                    .iter()
                    .any(|&(_, own)| own == id)
            });
            assert!(config_line, "slot {id} leaked: {slot:?}");
        }
        for load in self.live_loads() {
            let record = &self.loads[load];
            for position in 0..record.positions.len() {
                if let (Some(slot), (_, PositionKind::Runtime)) =
                    (record.positions[position], record.owners[position])
                {
                    assert!(
                        self.slots[slot].current,
                        "load {load} keeps removed slot {slot} at {position}"
                    );
                }
            }
        }
    }
}
