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

mod rng;
mod zone;

use std::collections::BTreeSet;

use rng::Rng;
use zone::Zone;

const TABLES: usize = 2;
const SERVERS: u16 = 10;
/// Spare run-time positions per upstream and load, and the smallest block a load grows by:
/// small, so that growing is common.
const MIN_SPARE: usize = 3;

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
    let (mut rng, mut zone) = started(seed.max(1));
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

/// A zone whose first configuration is committed and its workers started, and the random
/// numbers the run goes on with.
fn started(seed: u64) -> (Rng, Zone) {
    let mut rng = Rng(seed);
    let mut zone = Zone::new();
    let first = zone.config.clone();
    zone.reload(first, true, &mut rng);
    (rng, zone)
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
    let (mut rng, mut zone) = started(7);
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
    let (mut rng, mut zone) = started(11);
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

#[test]
fn a_placer_killed_after_the_last_change_leaves_nothing_for_good() {
    // Every removal released (the pass records its epoch), then a place whose process dies
    // before its change takes an epoch, in one table and then the other: nothing moves the
    // epoch again, yet the positions it took must go.
    for seed in 1..=50u64 {
        let (_, mut zone) = started(seed);
        zone.post(0, 7, false);
        zone.delete(0, 7);
        for worker in 0..zone.workers.len() {
            for table in 0..TABLES {
                zone.follow(worker, table);
            }
        }
        zone.release();
        zone.post(0, 8, true);
        zone.release();
        zone.post(1, 9, true);
        zone.check_reachable();
        zone.settle_and_check_leaks();
    }
}

#[test]
fn one_removal_after_a_clean_pass_is_released() {
    // A pass finds nothing waiting and records its epoch; one removal follows, while a request
    // holds the peer: the next passes must run until its positions are given up.
    for seed in 1..=50u64 {
        let (mut rng, mut zone) = started(seed);
        zone.post(1, 5, false);
        zone.release();
        for worker in 0..zone.workers.len() {
            zone.start_request(worker, 1, &mut rng);
        }
        zone.delete(1, 5);
        zone.release();
        zone.check_reachable();
        zone.settle_and_check_leaks();
    }
}
