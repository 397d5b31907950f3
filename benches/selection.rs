//! What the shift module adds to each proxied request, at 2, 10 and 100 peers.
//!
//! The pick itself is Nginx's own smooth weighted round robin (C code inside Nginx, measured with
//! the whole data path in `benches/load.rs`). Around it, the module does, per request: one load
//! of the table's sequence number to see whether anything changed; on the chosen peer, finding
//! its slot, counting the request and this worker's in-flight count; and when the attempt ends,
//! counting its result and the in-flight count back. Only after a change does a worker copy
//! every peer's weight and eligibility.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::sync::atomic::AtomicU32;

use shift_core::inflight::InFlight;
use shift_core::slow_start::SlowStart;
use shift_core::table::{slot_of, CheckMode, PeerChange, PeerConfig, PeerSlot, Table, TableHeader};

fn peers(count: usize) -> (TableHeader, Vec<PeerSlot>) {
    let slots = (0..count)
        .map(|i| {
            let config = PeerConfig {
                server: format!("10.0.{}.{}:8080", i / 250, i % 250),
                weight: 1,
                down: false,
                backup: false,
                label: shift_core::table::Label::NONE,
            };
            PeerSlot::new(&config).expect("short name")
        })
        .collect();
    (
        TableHeader::new("app", CheckMode::On).expect("short name"),
        slots,
    )
}

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("per_request");
    for count in [2, 10, 100] {
        let (header, slots) = peers(count);
        let views: Vec<&PeerSlot> = slots.iter().collect();
        let table = Table::new(&header, &views);
        let counts: Vec<AtomicU32> = (0..count).map(|_| AtomicU32::new(0)).collect();
        let inflight = InFlight::new(&counts);
        // Stand-ins for the worker's round-robin peer pointers, in table order.
        let rr_peers: Vec<usize> = (0..count).map(|i| 0x1000 + i * 64).collect();
        let mut routes = Vec::new();
        let seen = table
            .routes_if_changed(u64::MAX, &mut routes)
            .expect("first copy");
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, &count| {
            b.iter(|| {
                // init_peer: anything new in the table?
                let changed = table.routes_if_changed(black_box(seen), &mut routes);
                // get_peer: round robin chose a peer (rotating, so every position is looked up).
                next = (next + 1) % count;
                let slot = slot_of(&rr_peers, black_box(&rr_peers[next])).expect("listed");
                table.peers()[slot].record_request();
                inflight.started(slot);
                // free_peer: the attempt ended with a 200.
                table.peers()[slot].record_finish(false, Some(200));
                inflight.finished(slot);
                black_box(changed)
            })
        });
    }
    group.finish();
}

fn after_a_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy_after_change");
    for count in [2, 10, 100] {
        let (header, slots) = peers(count);
        let views: Vec<&PeerSlot> = slots.iter().collect();
        let table = Table::new(&header, &views);
        let mut routes = Vec::with_capacity(count);
        let mut weight = 1;
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| {
                // Another worker's PATCH, then this worker's copy on its next request.
                weight = weight % 1000 + 1;
                let seen = table.seq();
                table.lock(1, |_| true).expect("unlocked").apply(
                    &[PeerChange {
                        index: 0,
                        weight: Some(weight),
                        state: None,
                        ..Default::default()
                    }],
                    1,
                );
                black_box(table.routes_if_changed(seen, &mut routes))
            })
        });
    }
    group.finish();
}

/// `shift_sticky`'s choice: one key against every peer's weight. Each pick takes the next of
/// 1,024 users' keys, as requests of different users do (one repeated key would let the
/// branch predictor learn its answer).
fn sticky_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("sticky pick");
    let keys: Vec<u64> = (0..1024)
        .map(|user| shift_core::sticky::hash(format!("session-{user}").as_bytes()))
        .collect();
    for count in [2usize, 10, 100] {
        let peers: Vec<(u64, u32)> = (0..count)
            .map(|n| {
                (
                    shift_core::sticky::hash(format!("10.0.0.{n}:8000").as_bytes()),
                    10,
                )
            })
            .collect();
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(count), &peers, |b, peers| {
            b.iter(|| {
                next = (next + 1) % keys.len();
                shift_core::sticky::pick(black_box(keys[next]), peers.iter().copied())
            })
        });
    }
    group.finish();
}

/// `shift_slow_start`'s weight of one ramping peer, as a worker computes it on each request
/// while the ramp runs: linear (the default) and with an aggression, which takes a power.
fn slow_start_weight(c: &mut Criterion) {
    let mut group = c.benchmark_group("slow_start_weight");
    for aggression_centi in [100, 250] {
        let slow_start = SlowStart {
            window_ms: 30_000,
            min_permille: 100,
            aggression_centi,
        };
        let mut now_ms = 1_000_000;
        group.bench_function(BenchmarkId::from_parameter(aggression_centi), |b| {
            b.iter(|| {
                now_ms = 1_000_000 + (now_ms + 7) % 30_000;
                black_box(slow_start.effective_weight(black_box(800), 1_000_000, now_ms))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    per_request,
    after_a_change,
    sticky_pick,
    slow_start_weight
);
criterion_main!(benches);
