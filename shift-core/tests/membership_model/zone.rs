//! The model's zone: slots, configuration loads with their positions, workers with their
//! peer lists, requests; and the module's steps over them (`invariants.rs` checks them).

mod invariants;

use std::collections::BTreeSet;

use shift_core::lifecycle::{loads_to_free, LoadStatus};
use shift_core::reclaim::{
    may_free_slot, may_give_up, release_pass_due, released_through, HeldEpochs, PositionKind,
    SlotLife, RELEASE_PENDING,
};

use crate::rng::Rng;
use crate::{MIN_SPARE, SERVERS, TABLES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Config,
    Runtime,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) table: usize,
    pub(crate) server: u16,
    pub(crate) current: bool,
    pub(crate) origin: Origin,
    pub(crate) added_epoch: u64,
    pub(crate) removed_epoch: u64,
    pub(crate) freed: bool,
}

impl Slot {
    pub(crate) fn life(&self) -> SlotLife {
        SlotLife {
            current: self.current,
            added_epoch: self.added_epoch,
            removed_epoch: self.removed_epoch,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    pub(crate) first: usize,
    pub(crate) configs: usize,
}

#[derive(Debug)]
pub(crate) struct Load {
    pub(crate) id: u64,
    pub(crate) committed: bool,
    pub(crate) freed: bool,
    pub(crate) ranges: [Option<Range>; TABLES],
    pub(crate) positions: Vec<Option<usize>>,
    /// Whose each position is, and what kind: the ranges' first, then grown blocks.
    pub(crate) owners: Vec<(usize, PositionKind)>,
    /// What each config position held when the load was built: it must never change.
    pub(crate) config_slots: Vec<(usize, usize)>,
    /// Run-time peers its build placed from a state file, which its commit makes current.
    pub(crate) restored: Vec<usize>,
}

#[derive(Debug)]
pub(crate) struct List {
    pub(crate) table: usize,
    pub(crate) epoch: u64,
    pub(crate) slots: Vec<usize>,
    pub(crate) requests: usize,
    pub(crate) retired: bool,
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) load: usize,
    pub(crate) registered: bool,
    pub(crate) alive: bool,
    /// Its record was reaped (after it died).
    pub(crate) reaped: bool,
    pub(crate) lists: Vec<List>,
    pub(crate) current: [Option<usize>; TABLES],
    pub(crate) members_seen: [u64; TABLES],
    pub(crate) published: [HeldEpochs; TABLES],
}

pub(crate) struct Request {
    pub(crate) worker: usize,
    pub(crate) list: Option<usize>,
    pub(crate) slot: usize,
}

pub(crate) struct Zone {
    pub(crate) epoch: u64,
    /// What the last full release pass recorded (`reclaim::released_through`).
    pub(crate) released_at: u64,
    pub(crate) slots: Vec<Slot>,
    pub(crate) loads: Vec<Load>,
    pub(crate) workers: Vec<Worker>,
    pub(crate) requests: Vec<Request>,
    pub(crate) current_load: u64,
    pub(crate) next_load_id: u64,
    pub(crate) members: [u64; TABLES],
    pub(crate) config: [BTreeSet<u16>; TABLES],
    pub(crate) log: Vec<String>,
}

impl Zone {
    pub(crate) fn new() -> Zone {
        Zone {
            epoch: 1,
            released_at: RELEASE_PENDING,
            slots: Vec::new(),
            loads: Vec::new(),
            workers: Vec::new(),
            requests: Vec::new(),
            current_load: 0,
            next_load_id: 1,
            members: [0; TABLES],
            config: [BTreeSet::from([0, 1]), BTreeSet::from([0])],
            log: Vec::new(),
        }
    }

    pub(crate) fn slot_of(&self, table: usize, server: u16) -> Option<usize> {
        (0..self.slots.len()).find(|&id| {
            let slot = &self.slots[id];
            !slot.freed && slot.table == table && slot.server == server
        })
    }

    pub(crate) fn new_slot(&mut self, table: usize, server: u16, origin: Origin) -> usize {
        self.slots.push(Slot {
            table,
            server,
            current: false,
            origin,
            added_epoch: self.epoch,
            // Not current yet: as if removed when placed (`PeerSlot::mark_placed`).
            removed_epoch: self.epoch,
            freed: false,
        });
        self.slots.len() - 1
    }

    pub(crate) fn live_loads(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.loads.len()).filter(|&index| !self.loads[index].freed)
    }

    pub(crate) fn refs(&self, slot: usize) -> u32 {
        self.live_loads()
            .map(|load| {
                self.loads[load]
                    .positions
                    .iter()
                    .filter(|position| **position == Some(slot))
                    .count() as u32
            })
            .sum()
    }

    /// The module's `release_removed` (the housekeeping's and the master's, skipped while
    /// `release_pass_due` says so) and `sweep`: run-time positions `may_give_up` allows are
    /// emptied, then slots `may_free_slot` allows are freed.
    pub(crate) fn release(&mut self) {
        if release_pass_due(self.epoch, self.released_at) {
            let waiting = self.release_tables(None);
            self.released_at = released_through(self.epoch, waiting);
        }
        self.sweep();
    }

    /// One pass over the tables (`only` one, as a place does for its own, or all); returns how
    /// many removed peers' run-time positions must still wait.
    pub(crate) fn release_tables(&mut self, only: Option<usize>) -> usize {
        let mut waiting = 0;
        for load in self.live_loads().collect::<Vec<_>>() {
            for position in 0..self.loads[load].positions.len() {
                let Some(slot) = self.loads[load].positions[position] else {
                    continue;
                };
                let (table, kind) = self.loads[load].owners[position];
                if only.is_some_and(|only| only != table) {
                    continue;
                }
                let holders = self
                    .workers
                    .iter()
                    .filter(|worker| worker.load == load && worker.registered && !worker.reaped)
                    .map(|worker| worker.published[table]);
                let committed = self.loads[load].committed;
                if may_give_up(committed, kind, self.slots[slot].life(), holders) {
                    self.loads[load].positions[position] = None;
                } else if kind == PositionKind::Runtime && !self.slots[slot].current {
                    waiting += 1;
                }
            }
        }
        waiting
    }

    pub(crate) fn sweep(&mut self) {
        for slot in 0..self.slots.len() {
            if !self.slots[slot].freed && may_free_slot(self.refs(slot), self.slots[slot].current) {
                self.slots[slot].freed = true;
            }
        }
    }

    /// The master's reclaim at every build and commit.
    pub(crate) fn reclaim(&mut self) {
        for worker in &mut self.workers {
            if !worker.alive {
                worker.reaped = true;
            }
        }
        let unregistered = self
            .workers
            .iter()
            .any(|worker| worker.alive && !worker.registered);
        let statuses: Vec<LoadStatus> = self
            .live_loads()
            .map(|load| LoadStatus {
                id: self.loads[load].id,
                committed: self.loads[load].committed,
                running_workers: self
                    .workers
                    .iter()
                    .filter(|worker| worker.load == load && worker.registered && !worker.reaped)
                    .count(),
            })
            .collect();
        let free = loads_to_free(&statuses, self.current_load, None, unregistered);
        for load in &mut self.loads {
            if free.contains(&load.id) && !load.freed {
                load.freed = true;
            }
        }
        self.release();
    }

    /// A POST (or a resolved address); with `dies`, the worker placing it is killed before it
    /// makes the peer current (its positions are taken, nothing else).
    pub(crate) fn post(&mut self, table: usize, server: u16, dies: bool) {
        if self
            .slot_of(table, server)
            .is_some_and(|slot| self.slots[slot].current)
        {
            return; // 409: already a peer
        }
        // The module's place: its own table's removed peers, without the skip.
        self.release_tables(Some(table));
        self.sweep();
        let slot = match self.slot_of(table, server) {
            Some(slot) => slot,
            None => self.new_slot(table, server, Origin::Runtime),
        };
        for load in self.live_loads().collect::<Vec<_>>() {
            if self.loads[load].ranges[table].is_none() {
                continue;
            }
            let record = &mut self.loads[load];
            let own = |position: &usize| record.owners[*position].0 == table;
            if (0..record.positions.len())
                .filter(own)
                .any(|position| record.positions[position] == Some(slot))
            {
                continue;
            }
            let free = (0..record.positions.len()).filter(own).find(|&position| {
                record.owners[position].1 == PositionKind::Runtime
                    && record.positions[position].is_none()
            });
            let free = free.unwrap_or_else(|| {
                // No room: the load grows by a block as large as the upstream's run-time
                // positions so far.
                let runtime = (0..record.positions.len())
                    .filter(|&position| record.owners[position] == (table, PositionKind::Runtime))
                    .count();
                let first = record.positions.len();
                for _ in 0..runtime.max(MIN_SPARE) {
                    record.positions.push(None);
                    record.owners.push((table, PositionKind::Runtime));
                }
                first
            });
            record.positions[free] = Some(slot);
            self.released_at = RELEASE_PENDING;
        }
        if dies {
            self.log
                .push(format!("post {table}/{server}: died placing it"));
            return;
        }
        self.epoch += 1;
        let slot = &mut self.slots[slot];
        slot.current = true;
        slot.removed_epoch = 0;
        slot.origin = Origin::Runtime;
        self.members[table] = self.epoch;
        self.log.push(format!("post {table}/{server}"));
    }

    pub(crate) fn delete(&mut self, table: usize, server: u16) {
        let Some(slot) = self.slot_of(table, server) else {
            return;
        };
        if !self.slots[slot].current || self.slots[slot].origin == Origin::Config {
            return; // 404, or 409 for a config line
        }
        self.epoch += 1;
        self.slots[slot].current = false;
        self.slots[slot].removed_epoch = self.epoch;
        self.members[table] = self.epoch;
        self.log.push(format!("delete {table}/{server}"));
    }

    /// A reload: builds a load with `config`; the running workers go on meanwhile (API changes,
    /// requests, lists, releases); then it is committed when `ok`, and its workers start.
    pub(crate) fn reload(&mut self, config: [BTreeSet<u16>; TABLES], ok: bool, rng: &mut Rng) {
        let load = self.build(&config, rng);
        for _ in 0..rng.below(4) {
            let (table, server) = (rng.below(TABLES), rng.below(SERVERS as usize) as u16);
            let live: Vec<usize> = (0..self.workers.len())
                .filter(|&worker| self.workers[worker].alive)
                .collect();
            match rng.below(5) {
                0 => self.post(table, server, false),
                1 => self.delete(table, server),
                2 if !live.is_empty() => {
                    let worker = live[rng.below(live.len())];
                    self.start_request(worker, table, rng);
                }
                3 if !self.requests.is_empty() => {
                    let index = rng.below(self.requests.len());
                    self.end_request(index);
                }
                _ => self.release(),
            }
            self.check_reachable();
        }
        self.commit(load, config, ok, rng);
    }

    /// The zone's init for a configuration: places its load, uncommitted; sometimes (a table new
    /// in the zone, with a state file) with a run-time peer restored from the file, not current
    /// until the commit.
    pub(crate) fn build(&mut self, config: &[BTreeSet<u16>; TABLES], rng: &mut Rng) -> usize {
        self.reclaim();
        let mut positions = Vec::new();
        let mut owners = Vec::new();
        let mut restored = Vec::new();
        let mut ranges = [None; TABLES];
        let mut config_slots = Vec::new();
        for table in 0..TABLES {
            let mut view = Vec::new();
            for &server in &config[table] {
                let slot = match self.slot_of(table, server) {
                    Some(slot) => slot,
                    None => self.new_slot(table, server, Origin::Config),
                };
                view.push(slot);
            }
            let runtime: Vec<usize> = (0..self.slots.len())
                .filter(|&id| {
                    let slot = &self.slots[id];
                    !slot.freed
                        && slot.table == table
                        && slot.current
                        && slot.origin == Origin::Runtime
                        && !view.contains(&id)
                })
                .collect();
            let spare = view.len().max(MIN_SPARE);
            let first = positions.len();
            for &slot in &view {
                config_slots.push((positions.len(), slot));
                positions.push(Some(slot));
                owners.push((table, PositionKind::Config));
            }
            positions.extend(runtime.iter().map(|&slot| Some(slot)));
            let restore = rng.below(10) as u16 + 100;
            if rng.chance(30) && self.slot_of(table, restore).is_none() {
                let slot = self.new_slot(table, restore, Origin::Runtime);
                restored.push(slot);
                positions.push(Some(slot));
            }
            positions.extend(std::iter::repeat_n(None, spare));
            owners.resize(positions.len(), (table, PositionKind::Runtime));
            ranges[table] = Some(Range {
                first,
                configs: view.len(),
            });
        }
        let id = self.next_load_id;
        self.next_load_id += 1;
        self.loads.push(Load {
            id,
            committed: false,
            freed: false,
            ranges,
            positions,
            owners,
            config_slots,
            restored,
        });
        self.log.push(format!("build {config:?}"));
        self.loads.len() - 1
    }

    /// `init_module`: commits the load `build` placed, or leaves it to be freed (a reload that
    /// failed after the zone's init).
    pub(crate) fn commit(
        &mut self,
        load: usize,
        config: [BTreeSet<u16>; TABLES],
        ok: bool,
        rng: &mut Rng,
    ) {
        self.log.push(format!("commit ok={ok}"));
        if !ok {
            self.reclaim();
            return;
        }
        let ranges = self.loads[load].ranges;
        let id = self.loads[load].id;
        self.loads[load].committed = true;
        self.current_load = id;
        self.epoch += 1;
        let epoch = self.epoch;
        for (table, range) in ranges.iter().enumerate() {
            let range = range.expect("every table has a range");
            let view: Vec<usize> = (range.first..range.first + range.configs)
                .filter_map(|position| self.loads[load].positions[position])
                .collect();
            for &slot in &view {
                let slot = &mut self.slots[slot];
                slot.current = true;
                slot.origin = Origin::Config;
                slot.removed_epoch = 0;
            }
            for id in 0..self.slots.len() {
                let slot = &mut self.slots[id];
                if !slot.freed
                    && slot.table == table
                    && slot.current
                    && slot.origin == Origin::Config
                    && !view.contains(&id)
                {
                    slot.current = false;
                    slot.removed_epoch = epoch;
                    self.members[table] = epoch;
                }
            }
        }
        for slot in self.loads[load].restored.clone() {
            assert!(
                !self.slots[slot].freed,
                "slot {slot}, restored by the build, was freed before the commit"
            );
            let table = self.slots[slot].table;
            let slot = &mut self.slots[slot];
            if !slot.current {
                slot.current = true;
                slot.removed_epoch = 0;
                self.members[table] = epoch;
            }
        }
        self.config = config;
        for _ in 0..2 {
            self.spawn(load, rng);
        }
        self.reclaim();
    }

    pub(crate) fn spawn(&mut self, load: usize, rng: &mut Rng) {
        self.workers.push(Worker {
            load,
            // Registration fails now and then (the zone full, its record not placed).
            registered: rng.chance(85),
            alive: true,
            reaped: false,
            lists: Vec::new(),
            current: [None; TABLES],
            members_seen: [0; TABLES],
            published: [HeldEpochs::NONE; TABLES],
        });
    }

    pub(crate) fn publish(&mut self, worker: usize, table: usize) {
        let worker = &mut self.workers[worker];
        worker.published[table] = HeldEpochs::of(
            worker
                .lists
                .iter()
                .filter(|list| list.table == table && (!list.retired || list.requests > 0))
                .map(|list| list.epoch),
        );
    }

    /// `follow_members`: a registered worker builds a new list from its load's positions when
    /// the upstream's membership moved; an unregistered one keeps its configuration's peers.
    pub(crate) fn follow(&mut self, worker: usize, table: usize) {
        let (load, registered) = (self.workers[worker].load, self.workers[worker].registered);
        let Some(range) = self.loads[load].ranges[table] else {
            return;
        };
        if !registered || self.workers[worker].members_seen[table] == self.members[table] {
            return;
        }
        let positions = &self.loads[load].positions;
        let owners = &self.loads[load].owners;
        let runtime: Vec<usize> = (0..positions.len())
            .filter(|&position| owners[position] == (table, PositionKind::Runtime))
            .filter_map(|position| positions[position])
            .filter(|&slot| self.slots[slot].current)
            .collect();
        let had_list = self.workers[worker].current[table].is_some();
        self.workers[worker].members_seen[table] = self.members[table];
        if runtime.is_empty() && !had_list {
            return;
        }
        let mut slots: Vec<usize> = (range.first..range.first + range.configs)
            .filter_map(|position| positions[position])
            .collect();
        slots.extend(runtime);
        let epoch = self.epoch;
        let lists = &mut self.workers[worker].lists;
        lists.push(List {
            table,
            epoch,
            slots,
            requests: 0,
            retired: false,
        });
        let new = lists.len() - 1;
        if let Some(old) = self.workers[worker].current[table].replace(new) {
            self.workers[worker].lists[old].retired = true;
        }
        self.publish(worker, table);
    }

    pub(crate) fn start_request(&mut self, worker: usize, table: usize, rng: &mut Rng) {
        self.follow(worker, table);
        let load = self.workers[worker].load;
        let Some(range) = self.loads[load].ranges[table] else {
            return;
        };
        let (list, slots): (Option<usize>, Vec<usize>) = match self.workers[worker].current[table] {
            Some(list) => (Some(list), self.workers[worker].lists[list].slots.clone()),
            None => (
                None,
                (range.first..range.first + range.configs)
                    .filter_map(|position| self.loads[load].positions[position])
                    .collect(),
            ),
        };
        if slots.is_empty() {
            return;
        }
        let slot = slots[rng.below(slots.len())];
        assert!(
            !self.slots[slot].freed,
            "a request picked freed slot {slot}"
        );
        if let Some(list) = list {
            self.workers[worker].lists[list].requests += 1;
        }
        self.requests.push(Request { worker, list, slot });
    }

    pub(crate) fn end_request(&mut self, index: usize) {
        let request = self.requests.swap_remove(index);
        if let Some(list) = request.list {
            let table = {
                let list = &mut self.workers[request.worker].lists[list];
                list.requests -= 1;
                list.table
            };
            self.publish(request.worker, table);
        }
    }

    pub(crate) fn kill(&mut self, worker: usize) {
        let worker_ref = &mut self.workers[worker];
        worker_ref.alive = false;
        worker_ref.lists.clear();
        worker_ref.current = [None; TABLES];
        self.requests.retain(|request| request.worker != worker);
    }
}
