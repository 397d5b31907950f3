//! A model of the zone's membership, driven through random sequences of events, with the
//! freeing decisions the module takes (`shift_core::reclaim`, `shift_core::lifecycle`). After
//! every step: no freed slot is reachable (from a live load's positions, a live worker's peer
//! lists, a request in flight), and no config position of a live load was ever emptied. Once
//! everything is quiet (requests ended, workers caught up, old workers gone): nothing is leaked
//! (every slot left is current or a config line of a live load, every run-time position holds
//! a current peer).
//!
//! The model follows the module's steps: POST and DELETE (and resolved answers, which take the
//! same path) change the current set at a new membership epoch under the zone's lock (a load
//! with no free run-time position for the upstream grows by a block of them); a worker
//! builds a new list on its next request or tick when its upstream's membership moved, under
//! the lock, and publishes the epochs of its lists; a request holds the list it started with;
//! a reload builds a load (which may fail) and commits it; workers die, some without ever
//! registering; the master reaps and reclaims. A failing seed is printed.

use std::collections::BTreeSet;

use shift_core::lifecycle::{loads_to_free, LoadStatus};
use shift_core::reclaim::{may_free_slot, may_give_up, HeldEpochs, PositionKind, SlotLife};

const TABLES: usize = 2;
const SERVERS: u16 = 10;
/// Spare run-time positions per upstream and load, and the smallest block a load grows by:
/// small, so that growing is common.
const MIN_SPARE: usize = 3;

/// A deterministic generator (xorshift64*), so that a seed replays a sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Config,
    Runtime,
}

#[derive(Debug)]
struct Slot {
    table: usize,
    server: u16,
    current: bool,
    origin: Origin,
    added_epoch: u64,
    removed_epoch: u64,
    freed: bool,
}

impl Slot {
    fn life(&self) -> SlotLife {
        SlotLife {
            current: self.current,
            added_epoch: self.added_epoch,
            removed_epoch: self.removed_epoch,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Range {
    first: usize,
    configs: usize,
}

#[derive(Debug)]
struct Load {
    id: u64,
    committed: bool,
    freed: bool,
    ranges: [Option<Range>; TABLES],
    positions: Vec<Option<usize>>,
    /// Whose each position is, and what kind: the ranges' first, then grown blocks.
    owners: Vec<(usize, PositionKind)>,
    /// What each config position held when the load was built: it must never change.
    config_slots: Vec<(usize, usize)>,
    /// Run-time peers its build placed from a state file, which its commit makes current.
    restored: Vec<usize>,
}

#[derive(Debug)]
struct List {
    table: usize,
    epoch: u64,
    slots: Vec<usize>,
    requests: usize,
    retired: bool,
}

#[derive(Debug)]
struct Worker {
    load: usize,
    registered: bool,
    alive: bool,
    /// Its record was reaped (after it died).
    reaped: bool,
    lists: Vec<List>,
    current: [Option<usize>; TABLES],
    members_seen: [u64; TABLES],
    published: [HeldEpochs; TABLES],
}

struct Request {
    worker: usize,
    list: Option<usize>,
    slot: usize,
}

struct Zone {
    epoch: u64,
    slots: Vec<Slot>,
    loads: Vec<Load>,
    workers: Vec<Worker>,
    requests: Vec<Request>,
    current_load: u64,
    next_load_id: u64,
    members: [u64; TABLES],
    config: [BTreeSet<u16>; TABLES],
    log: Vec<String>,
}

impl Zone {
    fn new() -> Zone {
        Zone {
            epoch: 1,
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

    fn slot_of(&self, table: usize, server: u16) -> Option<usize> {
        (0..self.slots.len()).find(|&id| {
            let slot = &self.slots[id];
            !slot.freed && slot.table == table && slot.server == server
        })
    }

    fn new_slot(&mut self, table: usize, server: u16, origin: Origin) -> usize {
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

    fn live_loads(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.loads.len()).filter(|&index| !self.loads[index].freed)
    }

    fn refs(&self, slot: usize) -> u32 {
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

    /// The module's `release_removed` and `sweep`: run-time positions `may_give_up` allows are
    /// emptied, then slots `may_free_slot` allows are freed.
    fn release(&mut self) {
        for load in self.live_loads().collect::<Vec<_>>() {
            for position in 0..self.loads[load].positions.len() {
                let Some(slot) = self.loads[load].positions[position] else {
                    continue;
                };
                let (table, kind) = self.loads[load].owners[position];
                let holders = self
                    .workers
                    .iter()
                    .filter(|worker| worker.load == load && worker.registered && !worker.reaped)
                    .map(|worker| worker.published[table]);
                let committed = self.loads[load].committed;
                if may_give_up(committed, kind, self.slots[slot].life(), holders) {
                    self.loads[load].positions[position] = None;
                }
            }
        }
        self.sweep();
    }

    fn sweep(&mut self) {
        for slot in 0..self.slots.len() {
            if !self.slots[slot].freed && may_free_slot(self.refs(slot), self.slots[slot].current) {
                self.slots[slot].freed = true;
            }
        }
    }

    /// The master's reclaim at every build and commit.
    fn reclaim(&mut self) {
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
    fn post(&mut self, table: usize, server: u16, dies: bool) {
        if self
            .slot_of(table, server)
            .is_some_and(|slot| self.slots[slot].current)
        {
            return; // 409: already a peer
        }
        self.release();
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

    fn delete(&mut self, table: usize, server: u16) {
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
    fn reload(&mut self, config: [BTreeSet<u16>; TABLES], ok: bool, rng: &mut Rng) {
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
    fn build(&mut self, config: &[BTreeSet<u16>; TABLES], rng: &mut Rng) -> usize {
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
    fn commit(&mut self, load: usize, config: [BTreeSet<u16>; TABLES], ok: bool, rng: &mut Rng) {
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

    fn spawn(&mut self, load: usize, rng: &mut Rng) {
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

    fn publish(&mut self, worker: usize, table: usize) {
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
    fn follow(&mut self, worker: usize, table: usize) {
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

    fn start_request(&mut self, worker: usize, table: usize, rng: &mut Rng) {
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

    fn end_request(&mut self, index: usize) {
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

    fn kill(&mut self, worker: usize) {
        let worker_ref = &mut self.workers[worker];
        worker_ref.alive = false;
        worker_ref.lists.clear();
        worker_ref.current = [None; TABLES];
        self.requests.retain(|request| request.worker != worker);
    }

    /// Nothing reachable is freed; no config position of a live load changed.
    fn check_reachable(&self) {
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
    fn settle_and_check_leaks(&mut self) {
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

fn random_config(rng: &mut Rng) -> [BTreeSet<u16>; TABLES] {
    std::array::from_fn(|_| {
        let mut servers = BTreeSet::new();
        servers.insert(rng.below(3) as u16);
        for _ in 0..rng.below(3) {
            servers.insert(rng.below(SERVERS as usize) as u16);
        }
        servers
    })
}

fn run(seed: u64, steps: usize) {
    let mut rng = Rng(seed.max(1));
    let mut zone = Zone::new();
    let first = zone.config.clone();
    zone.reload(first, true, &mut rng);
    for _ in 0..steps {
        let table = rng.below(TABLES);
        let server = rng.below(SERVERS as usize) as u16;
        let live: Vec<usize> = (0..zone.workers.len())
            .filter(|&worker| zone.workers[worker].alive)
            .collect();
        match rng.below(100) {
            0..=19 => {
                let dies = rng.chance(5);
                zone.post(table, server, dies);
            }
            20..=34 => zone.delete(table, server),
            35..=59 if !live.is_empty() => {
                let worker = live[rng.below(live.len())];
                zone.start_request(worker, table, &mut rng);
            }
            60..=79 if !zone.requests.is_empty() => {
                let index = rng.below(zone.requests.len());
                zone.end_request(index);
            }
            80..=85 if !live.is_empty() => {
                let worker = live[rng.below(live.len())];
                for table in 0..TABLES {
                    zone.follow(worker, table);
                }
            }
            86..=90 => {
                let config = random_config(&mut rng);
                let ok = rng.chance(80);
                zone.reload(config, ok, &mut rng);
            }
            91..=94 if !live.is_empty() => {
                // A worker exits or is killed; the master starts another for the current load.
                let worker = live[rng.below(live.len())];
                let load = zone.workers[worker].load;
                zone.kill(worker);
                if zone.loads[load].id == zone.current_load {
                    zone.spawn(load, &mut rng);
                }
            }
            95..=97 => zone.reclaim(),
            _ => zone.release(),
        }
        zone.check_reachable();
    }
    zone.settle_and_check_leaks();
}

#[test]
fn nothing_reachable_is_freed_and_nothing_is_leaked() {
    for seed in 1..=400u64 {
        let outcome = std::panic::catch_unwind(|| run(seed, 400));
        if let Err(panic) = outcome {
            eprintln!("membership model failed with seed {seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn long_churn_keeps_finding_room() {
    // One upstream's run-time peer replaced 10,000 times while requests come and go: its
    // positions are reused, so the loads do not grow.
    let mut rng = Rng(7);
    let mut zone = Zone::new();
    let first = zone.config.clone();
    zone.reload(first, true, &mut rng);
    let slots_at_start = zone.slots.iter().filter(|slot| !slot.freed).count();
    for round in 0..10_000u32 {
        let server = 2 + (round % 8) as u16;
        zone.post(0, server, false);
        assert!(
            zone.slot_of(0, server)
                .is_some_and(|slot| zone.slots[slot].current),
            "round {round}: {:?}",
            zone.log.last()
        );
        for worker in 0..zone.workers.len() {
            zone.start_request(worker, 0, &mut rng);
        }
        while !zone.requests.is_empty() {
            zone.end_request(0);
        }
        zone.delete(0, server);
        zone.check_reachable();
    }
    zone.settle_and_check_leaks();
    let live = zone.slots.iter().filter(|slot| !slot.freed).count();
    assert!(
        live <= slots_at_start,
        "{live} slots left after the churn, {slots_at_start} at the start"
    );
    let positions: usize = zone
        .loads
        .iter()
        .filter(|load| !load.freed)
        .map(|load| load.positions.len())
        .sum();
    assert!(
        positions <= 2 * (3 + MIN_SPARE + 1 + MIN_SPARE),
        "the loads grew to {positions}"
    );
}

#[test]
fn many_peers_at_once_grow_the_loads() {
    // Forty run-time peers at once in an upstream whose loads started with three spare places.
    let mut rng = Rng(11);
    let mut zone = Zone::new();
    let first = zone.config.clone();
    zone.reload(first, true, &mut rng);
    for round in 0..3 {
        for server in 100..140 {
            zone.post(0, server, false);
            assert!(zone
                .slot_of(0, server)
                .is_some_and(|slot| zone.slots[slot].current));
        }
        for worker in 0..zone.workers.len() {
            zone.start_request(worker, 0, &mut rng);
        }
        zone.check_reachable();
        if round == 1 {
            let config = zone.config.clone();
            zone.reload(config, true, &mut rng);
        }
        for server in 100..140 {
            zone.delete(0, server);
        }
        while !zone.requests.is_empty() {
            zone.end_request(0);
        }
    }
    zone.settle_and_check_leaks();
}
