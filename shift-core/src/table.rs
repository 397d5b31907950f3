//! The per-upstream peer table that lives in shared memory.
//!
//! A table is one upstream's truth, shared by every generation of workers alive at the moment:
//! its header ([`TableHeader`]) is found by the upstream's name and its peers ([`PeerSlot`]) by
//! their address, and both outlive configuration loads, so a change any worker acknowledges is
//! seen by all of them and by the next configuration, and counters never need carrying over.
//! Each worker views the slots of its own configuration's peers in its own order (a [`Table`]
//! pairs a header with such a list of slots). The slots hold plain atomics and fixed-size names
//! (the links between them are only followed by the FFI module, under the zone's lock), so every
//! worker can read them without a lock. Weights, states and health are guarded by a sequence lock: a writer makes `seq` odd,
//! changes them, and makes it even again; a reader that saw the same even `seq` before and after
//! its reads has a consistent snapshot. Workers compare `seq` with the one they last copied on
//! every request, which is one atomic load on the data path. Writers (the admin API, in any
//! worker) take `writer`, which holds their pid so that a lock left by a crashed worker can be
//! taken over. Counters are updated with relaxed atomic adds outside the sequence lock.
//!
//! Requests in flight are not counted here: each worker counts its own (see [`crate::inflight`]),
//! so that a worker that dies mid-request does not leave a peer looking busy forever.
//!
//! The FFI module places headers and slots in the shared zone; everything here works on
//! references to them, and the tests use ordinary heap memory.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use shift_wire::{CheckStatus, Health, Peer, PeerState, ResponseCounts, Upstream};

use crate::health::{judge, ProbeError, Tally};

/// Longest upstream or peer name a table holds (a `unix:` peer path fits).
pub const NAME_CAPACITY: usize = 128;

/// How many times a reader retries a snapshot that a writer disturbed.
const READ_ATTEMPTS: usize = 64;
/// How many times a writer tries the lock before giving up (each try yields the CPU).
const LOCK_ATTEMPTS: usize = 10_000;

/// A name stored inline, written once when its table is created.
#[repr(C)]
pub struct FixedName {
    len: u16,
    bytes: [u8; NAME_CAPACITY],
}

impl FixedName {
    pub fn new(name: &str) -> Result<FixedName, NameTooLong> {
        if name.len() > NAME_CAPACITY {
            return Err(NameTooLong(name.to_string()));
        }
        let mut bytes = [0; NAME_CAPACITY];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(FixedName {
            len: name.len() as u16,
            bytes,
        })
    }

    pub fn as_str(&self) -> &str {
        // Built from a &str in `new`, so the bytes are UTF-8 up to a char boundary.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("name \"{0}\" is longer than {NAME_CAPACITY} bytes")]
pub struct NameTooLong(pub String);

/// The header of one upstream's table.
#[repr(C)]
pub struct TableHeader {
    /// Address of the next header in the zone's list; only the FFI module follows it.
    pub next: AtomicUsize,
    /// Address of the upstream's first peer slot (slots link through `PeerSlot::next`).
    pub peers: AtomicUsize,
    /// Address and length of the committed `state=` path in the zone (0 when there is none).
    pub state_path: [AtomicUsize; 2],
    /// How many live configuration loads use this upstream (changed under the zone's lock).
    pub refs: AtomicU32,
    /// Whether the committed configuration has this upstream.
    current: AtomicBool,
    name: FixedName,
    checks: AtomicU8,
    writer: AtomicU32,
    seq: AtomicU64,
    generation: AtomicU64,
}

/// Whether the upstream's peers are health-checked, and whether they must pass first.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    Off,
    On,
    /// `shift_check mandatory`: a peer that has not passed a check gets no traffic.
    Mandatory,
}

impl CheckMode {
    fn decode(value: u8) -> CheckMode {
        match value {
            1 => CheckMode::On,
            2 => CheckMode::Mandatory,
            _ => CheckMode::Off,
        }
    }
}

impl TableHeader {
    /// A new upstream's header: not current until a configuration that has it is committed.
    pub fn new(name: &str, checks: CheckMode) -> Result<TableHeader, NameTooLong> {
        Ok(TableHeader {
            next: AtomicUsize::new(0),
            peers: AtomicUsize::new(0),
            state_path: [AtomicUsize::new(0), AtomicUsize::new(0)],
            refs: AtomicU32::new(0),
            current: AtomicBool::new(false),
            name: FixedName::new(name)?,
            checks: AtomicU8::new(checks as u8),
            writer: AtomicU32::new(0),
            seq: AtomicU64::new(0),
            generation: AtomicU64::new(1),
        })
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn checks(&self) -> CheckMode {
        CheckMode::decode(self.checks.load(Ordering::Relaxed))
    }

    /// Whether the committed configuration (or the API, for run-time peers) has it.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    pub fn set_current(&self, current: bool) {
        self.current.store(current, Ordering::Release);
    }
}

/// What the config says about a peer; a peer whose config changed across a reload takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub server: String,
    pub weight: u32,
    pub down: bool,
    pub backup: bool,
}

/// One peer's live state, kept for as long as any live configuration routes to it.
#[repr(C)]
pub struct PeerSlot {
    /// Address of the next slot of the same upstream; only the FFI module follows it.
    pub next: AtomicUsize,
    /// How many live configuration loads route to this peer (changed under the zone's lock).
    pub refs: AtomicU32,
    /// Whether the committed configuration has this peer.
    current: AtomicBool,
    /// Its position in the committed configuration, the order the API lists peers in.
    order: AtomicU32,
    name: FixedName,
    /// The committed config line: a line that changes resets weight and state to it.
    config_weight: AtomicU32,
    config_down: AtomicBool,
    backup: AtomicBool,
    weight: AtomicU32,
    state: AtomicU8,
    health: AtomicU8,
    requests: AtomicU64,
    failures: AtomicU64,
    responses: [AtomicU64; 5],
    /// When the next health check is due (monotonic ms); the worker that moves it on probes.
    next_check_ms: AtomicU64,
    check_fails: AtomicU32,
    check_passes: AtomicU32,
    /// When the last check finished (Unix ms), 0 before the first.
    last_check_ms: AtomicU64,
    /// `ProbeError::encode` of the last check, 0 when it passed.
    last_error: AtomicU64,
}

impl PeerSlot {
    /// A peer as the config describes it: `down` peers start as standby. It is not current
    /// until a configuration that has it is committed.
    pub fn new(config: &PeerConfig) -> Result<PeerSlot, NameTooLong> {
        Ok(PeerSlot {
            next: AtomicUsize::new(0),
            refs: AtomicU32::new(0),
            current: AtomicBool::new(false),
            order: AtomicU32::new(0),
            name: FixedName::new(&config.server)?,
            config_weight: AtomicU32::new(config.weight),
            config_down: AtomicBool::new(config.down),
            backup: AtomicBool::new(config.backup),
            weight: AtomicU32::new(config.weight),
            state: AtomicU8::new(encode_state(config_state(config))),
            health: AtomicU8::new(encode_health(Health::Unchecked)),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            responses: Default::default(),
            next_check_ms: AtomicU64::new(0),
            check_fails: AtomicU32::new(0),
            check_passes: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
        })
    }

    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Marks the peer as in the committed configuration at position `order`, or as not in it.
    pub fn set_current(&self, current: bool, order: u32) {
        self.order.store(order, Ordering::Relaxed);
        self.current.store(current, Ordering::Release);
    }

    pub fn order(&self) -> u32 {
        self.order.load(Ordering::Relaxed)
    }

    pub fn server(&self) -> &str {
        self.name.as_str()
    }

    pub fn config(&self) -> PeerConfig {
        PeerConfig {
            server: self.server().to_string(),
            weight: self.config_weight.load(Ordering::Relaxed),
            down: self.config_down.load(Ordering::Relaxed),
            backup: self.backup.load(Ordering::Relaxed),
        }
    }

    fn set_config(&self, config: &PeerConfig) {
        self.config_weight.store(config.weight, Ordering::Relaxed);
        self.config_down.store(config.down, Ordering::Relaxed);
        self.backup.store(config.backup, Ordering::Relaxed);
    }

    fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    fn state(&self) -> PeerState {
        decode_state(self.state.load(Ordering::Relaxed))
    }

    fn health(&self) -> Health {
        decode_health(self.health.load(Ordering::Relaxed))
    }

    /// A request was sent to this peer.
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request attempt on this peer finished; `status` is the upstream's status code if it
    /// answered one.
    pub fn record_finish(&self, failed: bool, status: Option<u16>) {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(class @ 1..=5) = status.map(|status| status / 100) {
            self.responses[class as usize - 1].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check_status(&self) -> CheckStatus {
        let last_check_ms = self.last_check_ms.load(Ordering::Relaxed);
        CheckStatus {
            last_check_ms: (last_check_ms != 0).then_some(last_check_ms),
            last_error: ProbeError::decode(self.last_error.load(Ordering::Relaxed))
                .map(ProbeError::describe),
            consecutive_fails: self.check_fails.load(Ordering::Relaxed),
            consecutive_passes: self.check_passes.load(Ordering::Relaxed),
        }
    }

    fn to_wire(&self, values: PeerValues, active: u64, checks: CheckMode) -> Peer {
        let count = |class: usize| self.responses[class].load(Ordering::Relaxed);
        Peer {
            server: self.server().to_string(),
            weight: values.weight,
            state: values.state,
            health: values.health,
            eligible: eligible(
                values.weight,
                values.state,
                values.health,
                checks == CheckMode::Mandatory,
            ),
            backup: self.backup.load(Ordering::Relaxed),
            config_weight: self.config_weight.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            active,
            responses: ResponseCounts {
                informational: count(0),
                success: count(1),
                redirection: count(2),
                client_error: count(3),
                server_error: count(4),
            },
            check: (checks != CheckMode::Off).then(|| self.check_status()),
        }
    }
}

/// How a worker should treat a peer, copied into its round-robin peer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub weight: u32,
    /// False for weight 0, `drain`, `down` and unhealthy peers: they get no new requests.
    pub eligible: bool,
}

/// A weight or state change of one peer, by its index in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerChange {
    pub index: usize,
    pub weight: Option<u32>,
    pub state: Option<PeerState>,
}

/// A view of one upstream's table: its header and the slots of some of its peers, in an order
/// of the viewer's choosing (a worker's round-robin order, or the committed configuration's).
#[derive(Clone, Copy)]
pub struct Table<'a> {
    header: &'a TableHeader,
    peers: &'a [&'a PeerSlot],
}

/// A peer's routing values, read together from one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerValues {
    weight: u32,
    state: PeerState,
    health: Health,
}

impl PeerValues {
    fn of(peer: &PeerSlot) -> PeerValues {
        PeerValues {
            weight: peer.weight(),
            state: peer.state(),
            health: peer.health(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "another change to upstream \"{upstream}\" is in progress (worker pid {holder}); try again"
    )]
    Busy { upstream: String, holder: u32 },
}

impl<'a> Table<'a> {
    /// Pairs a header with slots of its peers.
    pub fn new(header: &'a TableHeader, peers: &'a [&'a PeerSlot]) -> Table<'a> {
        Table { header, peers }
    }

    pub fn header(&self) -> &'a TableHeader {
        self.header
    }

    pub fn name(&self) -> &'a str {
        self.header.name()
    }

    pub fn peers(&self) -> &'a [&'a PeerSlot] {
        self.peers
    }

    pub fn generation(&self) -> u64 {
        self.header.generation.load(Ordering::Acquire)
    }

    /// The current sequence number; it changes whenever routing may have changed.
    pub fn seq(&self) -> u64 {
        self.header.seq.load(Ordering::Acquire)
    }

    pub fn peer_index(&self, server: &str) -> Option<usize> {
        self.peers.iter().position(|peer| peer.server() == server)
    }

    /// Reads the routing of every peer if `seq` differs from `seen`: returns the snapshot's `seq`
    /// and fills `routes`. Returns `None` when nothing changed, or when a writer kept the table
    /// busy for the whole attempt (the caller keeps what it had and tries on the next request).
    pub fn routes_if_changed(&self, seen: u64, routes: &mut Vec<Route>) -> Option<u64> {
        if self.seq() == seen {
            return None;
        }
        self.read_consistent(|peers| {
            routes.clear();
            let mandatory = self.header.checks() == CheckMode::Mandatory;
            routes.extend(peers.iter().map(|peer| Route {
                weight: peer.weight(),
                eligible: eligible(peer.weight(), peer.state(), peer.health(), mandatory),
            }));
        })
        .map(|(seq, ())| seq)
    }

    /// The upstream as the API shows it: weights and states from one consistent snapshot.
    /// `active` holds each peer's requests in flight (missing ones count as 0).
    pub fn to_wire(&self, active: &[u64]) -> Upstream {
        let snapshot = self.read_consistent(|peers| {
            peers
                .iter()
                .map(|peer| PeerValues::of(peer))
                .collect::<Vec<_>>()
        });
        // A writer that holds the table for a whole snapshot attempt is dead or stuck; show the
        // values as they are rather than nothing.
        let values = snapshot
            .map(|(_, values)| values)
            .unwrap_or_else(|| self.peers.iter().map(|peer| PeerValues::of(peer)).collect());
        let checks = self.header.checks();
        Upstream {
            name: self.name().to_string(),
            generation: self.generation(),
            peers: self
                .peers
                .iter()
                .zip(values)
                .enumerate()
                .map(|(index, (peer, values))| {
                    let active = active.get(index).copied().unwrap_or(0);
                    peer.to_wire(values, active, checks)
                })
                .collect(),
        }
    }

    fn read_consistent<T>(&self, mut read: impl FnMut(&[&PeerSlot]) -> T) -> Option<(u64, T)> {
        for _ in 0..READ_ATTEMPTS {
            let before = self.header.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let value = read(self.peers);
            fence(Ordering::Acquire);
            if self.header.seq.load(Ordering::Relaxed) == before {
                return Some((before, value));
            }
        }
        None
    }

    /// Takes the write lock for the process `pid`. A lock held by a process that `is_alive` says
    /// is gone (a worker that crashed mid-change) is taken over.
    pub fn lock(
        &self,
        pid: u32,
        is_alive: impl Fn(u32) -> bool,
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

/// The table slot of the peer round robin chose: its position in the worker's peer list, which
/// is in table order. Linear, as the lists are short and this beats hashing a pointer.
pub fn slot_of<T: PartialEq>(peers: &[T], chosen: &T) -> Option<usize> {
    peers.iter().position(|peer| peer == chosen)
}

/// Weight 0, `drain`, `down` and unhealthy peers take no new requests; nor do unchecked ones
/// when checks are `mandatory`.
pub fn eligible(weight: u32, state: PeerState, health: Health, mandatory: bool) -> bool {
    weight > 0
        && state == PeerState::Up
        && health != Health::Unhealthy
        && !(mandatory && health == Health::Unchecked)
}

/// A health transition a check caused, for the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub server: String,
    pub from: Health,
    pub to: Health,
    pub error: Option<ProbeError>,
}

impl<'a> Table<'a> {
    /// Claims the check of peer `index` that is due at `now_ms` (monotonic): true for exactly
    /// one caller per interval, whichever worker it is. A worker that dies mid-check only
    /// delays the next one to the following interval.
    pub fn claim_check(&self, index: usize, now_ms: u64, interval_ms: u64) -> bool {
        let next = &self.peers[index].next_check_ms;
        let due = next.load(Ordering::Acquire);
        now_ms >= due
            && next
                .compare_exchange(
                    due,
                    now_ms + interval_ms,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records a check's result and moves the peer's health as `fails`/`passes` say; returns the
    /// transition if the health changed (routing then changes at once, in every worker).
    #[allow(clippy::too_many_arguments)]
    pub fn record_check(
        &self,
        index: usize,
        result: Result<(), ProbeError>,
        fails_needed: u32,
        passes_needed: u32,
        finished_unix_ms: u64,
        pid: u32,
        is_alive: impl Fn(u32) -> bool,
    ) -> Result<Option<Transition>, LockError> {
        let peer = &self.peers[index];
        let tally = Tally {
            fails: peer.check_fails.load(Ordering::Relaxed),
            passes: peer.check_passes.load(Ordering::Relaxed),
        };
        let current = peer.health();
        let (health, tally) = judge(current, tally, result.is_ok(), fails_needed, passes_needed);
        peer.check_fails.store(tally.fails, Ordering::Relaxed);
        peer.check_passes.store(tally.passes, Ordering::Relaxed);
        peer.last_check_ms
            .store(finished_unix_ms, Ordering::Relaxed);
        peer.last_error.store(
            result.err().map_or(0, ProbeError::encode),
            Ordering::Relaxed,
        );
        if health == current {
            return Ok(None);
        }
        self.lock(pid, is_alive)?.set_health(index, health);
        Ok(Some(Transition {
            server: peer.server().to_string(),
            from: current,
            to: health,
            error: result.err(),
        }))
    }
}

/// The write lock of one table; released on drop.
pub struct WriteGuard<'a> {
    table: Table<'a>,
}

impl<'a> WriteGuard<'a> {
    pub fn table(&self) -> Table<'a> {
        self.table
    }

    /// Applies all `changes` as one new generation, visible to readers at once; returns it.
    pub fn apply(&self, changes: &[PeerChange]) -> u64 {
        self.write_section(|peers| {
            for change in changes {
                let peer = &peers[change.index];
                if let Some(weight) = change.weight {
                    peer.weight.store(weight, Ordering::Relaxed);
                }
                if let Some(state) = change.state {
                    peer.state.store(encode_state(state), Ordering::Relaxed);
                }
            }
        });
        self.bump_generation()
    }

    /// Sets a peer's health; routing changes at once. Health is not a generation of its own.
    pub fn set_health(&self, index: usize, health: Health) {
        self.write_section(|peers| {
            peers[index]
                .health
                .store(encode_health(health), Ordering::Relaxed);
        });
    }

    /// Commits a configuration's view of the upstream: `checks` and each peer's config line, in
    /// the configuration's order. A peer whose line changed takes the line's weight and state;
    /// every other peer keeps its runtime values, so nothing the API acknowledged is undone.
    /// Current peers of the table that the configuration no longer has are in `removed`. One new
    /// generation when anything visible changed. Returns what changed, for the log.
    pub fn commit(
        &self,
        checks: CheckMode,
        configs: &[PeerConfig],
        removed: &[&PeerSlot],
    ) -> Vec<CarryNote> {
        let mut notes = Vec::new();
        let header = self.table.header;
        // A table's first commit is its start, not a change.
        let was_current = header.is_current();
        let mut changed = header.checks() != checks || !removed.is_empty();
        self.write_section(|peers| {
            header.checks.store(checks as u8, Ordering::Relaxed);
            for (order, (peer, config)) in peers.iter().zip(configs).enumerate() {
                changed |= !peer.is_current() || peer.order() != order as u32;
                let existing = peer.is_current();
                if existing && peer.config() == *config {
                    let (weight, state) = (peer.weight(), peer.state());
                    if weight != config.weight || state != config_state(config) {
                        notes.push(CarryNote::Kept {
                            server: peer.server().to_string(),
                            weight,
                            state,
                        });
                    }
                }
                if peer.config() != *config {
                    changed = true;
                    peer.set_config(config);
                    peer.weight.store(config.weight, Ordering::Relaxed);
                    peer.state
                        .store(encode_state(config_state(config)), Ordering::Relaxed);
                    notes.push(CarryNote::ConfigChanged {
                        server: peer.server().to_string(),
                    });
                }
                peer.set_current(true, order as u32);
            }
            for peer in removed {
                peer.set_current(false, 0);
            }
            header.set_current(true);
        });
        if changed && was_current {
            self.bump_generation();
        }
        notes
    }

    /// Takes weights, states, health and counters of peers found in `previous` (by address): a
    /// state file on a fresh start, or the zone this one replaces when the zone was resized. A
    /// peer whose config line changed since keeps its config values. The generation continues
    /// from `previous_generation`. Returns what was kept, for the log.
    pub fn carry_over(&self, previous: &[CarriedPeer], previous_generation: u64) -> Vec<CarryNote> {
        let mut notes = Vec::new();
        self.write_section(|peers| {
            for peer in peers {
                let Some(old) = previous
                    .iter()
                    .find(|old| old.config.server == peer.server())
                else {
                    continue;
                };
                if let Some(counters) = &old.counters {
                    counters.store_into(peer);
                }
                if let Some(health) = old.health {
                    peer.health.store(encode_health(health), Ordering::Relaxed);
                }
                if old.config != peer.config() {
                    notes.push(CarryNote::ConfigChanged {
                        server: peer.server().to_string(),
                    });
                    continue;
                }
                peer.weight.store(old.weight, Ordering::Relaxed);
                peer.state.store(encode_state(old.state), Ordering::Relaxed);
                if old.weight != old.config.weight || old.state != config_state(&old.config) {
                    notes.push(CarryNote::Kept {
                        server: peer.server().to_string(),
                        weight: old.weight,
                        state: old.state,
                    });
                }
            }
        });
        self.table.header.generation.store(
            previous_generation.saturating_add(1).min(MAX_GENERATION),
            Ordering::Release,
        );
        notes
    }

    fn bump_generation(&self) -> u64 {
        let generation = &self.table.header.generation;
        let next = generation
            .load(Ordering::Acquire)
            .saturating_add(1)
            .min(MAX_GENERATION);
        generation.store(next, Ordering::Release);
        next
    }

    fn write_section(&self, write: impl FnOnce(&[&PeerSlot])) {
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

/// A peer's runtime values from a state file or from a zone being replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedPeer {
    pub config: PeerConfig,
    pub weight: u32,
    pub state: PeerState,
    /// Kept when a resized zone is replaced; a restart starts unchecked.
    pub health: Option<Health>,
    pub counters: Option<CarriedCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedCounters {
    pub requests: u64,
    pub failures: u64,
    pub responses: [u64; 5],
}

impl CarriedCounters {
    fn of(peer: &PeerSlot) -> CarriedCounters {
        CarriedCounters {
            requests: peer.requests.load(Ordering::Relaxed),
            failures: peer.failures.load(Ordering::Relaxed),
            responses: std::array::from_fn(|class| peer.responses[class].load(Ordering::Relaxed)),
        }
    }

    fn store_into(&self, peer: &PeerSlot) {
        peer.requests.store(self.requests, Ordering::Relaxed);
        peer.failures.store(self.failures, Ordering::Relaxed);
        for (slot, value) in peer.responses.iter().zip(self.responses) {
            slot.store(value, Ordering::Relaxed);
        }
    }
}

impl Table<'_> {
    /// Everything a replaced zone hands to the next one.
    pub fn carried(&self) -> Vec<CarriedPeer> {
        self.peers
            .iter()
            .map(|peer| CarriedPeer {
                config: peer.config(),
                weight: peer.weight(),
                state: peer.state(),
                health: Some(peer.health()),
                counters: Some(CarriedCounters::of(peer)),
            })
            .collect()
    }
}

/// What `carry_over` did with a peer, for the error log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarryNote {
    Kept {
        server: String,
        weight: u32,
        state: PeerState,
    },
    ConfigChanged {
        server: String,
    },
}

fn config_state(config: &PeerConfig) -> PeerState {
    if config.down {
        PeerState::Down
    } else {
        PeerState::Up
    }
}

fn encode_state(state: PeerState) -> u8 {
    match state {
        PeerState::Up => 0,
        PeerState::Drain => 1,
        PeerState::Down => 2,
    }
}

fn decode_state(value: u8) -> PeerState {
    match value {
        0 => PeerState::Up,
        1 => PeerState::Drain,
        _ => PeerState::Down,
    }
}

fn encode_health(health: Health) -> u8 {
    match health {
        Health::Unchecked => 0,
        Health::Healthy => 1,
        Health::Unhealthy => 2,
    }
}

fn decode_health(value: u8) -> Health {
    match value {
        1 => Health::Healthy,
        2 => Health::Unhealthy,
        _ => Health::Unchecked,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A table in ordinary memory (leaked, as the zone would hold it for the process's life).
    pub(crate) struct OwnedTable {
        header: &'static TableHeader,
        peers: Vec<&'static PeerSlot>,
    }

    impl OwnedTable {
        pub(crate) fn new(name: &str, peers: &[(&str, u32, bool)]) -> OwnedTable {
            let configs: Vec<PeerConfig> = peers
                .iter()
                .map(|&(server, weight, down)| PeerConfig {
                    server: server.into(),
                    weight,
                    down,
                    backup: false,
                })
                .collect();
            OwnedTable::with_checks(name, &configs, CheckMode::Off)
        }

        pub(crate) fn checked(name: &str, peers: &[&str], checks: CheckMode) -> OwnedTable {
            let configs: Vec<PeerConfig> = peers
                .iter()
                .map(|server| PeerConfig {
                    server: server.to_string(),
                    weight: 1,
                    down: false,
                    backup: false,
                })
                .collect();
            OwnedTable::with_checks(name, &configs, checks)
        }

        /// A table as a first configuration commits it.
        pub(crate) fn with_checks(
            name: &str,
            configs: &[PeerConfig],
            checks: CheckMode,
        ) -> OwnedTable {
            let header: &'static TableHeader =
                Box::leak(Box::new(TableHeader::new(name, checks).unwrap()));
            let peers: Vec<&'static PeerSlot> = configs
                .iter()
                .map(|config| &*Box::leak(Box::new(PeerSlot::new(config).unwrap())))
                .collect();
            let owned = OwnedTable { header, peers };
            owned
                .view()
                .lock(1, |_| true)
                .unwrap()
                .commit(checks, configs, &[]);
            owned
        }

        pub(crate) fn view(&self) -> Table<'_> {
            Table::new(self.header, &self.peers)
        }
    }

    fn routes(table: Table) -> Vec<Route> {
        let mut routes = Vec::new();
        table
            .routes_if_changed(u64::MAX, &mut routes)
            .expect("a quiet table reads");
        routes
    }

    #[test]
    fn config_down_peers_start_as_standby() {
        let owned = OwnedTable::new("app", &[("a:1", 5, false), ("b:1", 1, true)]);
        assert_eq!(
            routes(owned.view()),
            vec![
                Route {
                    weight: 5,
                    eligible: true
                },
                Route {
                    weight: 1,
                    eligible: false
                }
            ]
        );
        let wire = owned.view().to_wire(&[]);
        assert_eq!(wire.peers[1].state, PeerState::Down);
        assert_eq!(wire.generation, 1);
    }

    #[test]
    fn apply_changes_routing_and_generation_at_once() {
        let owned = OwnedTable::new("app", &[("a:1", 5, false), ("b:1", 1, true)]);
        let table = owned.view();
        let seen = table.seq();
        let guard = table.lock(7, |_| true).unwrap();
        let generation = guard.apply(&[
            PeerChange {
                index: 0,
                weight: Some(0),
                state: None,
            },
            PeerChange {
                index: 1,
                weight: Some(30),
                state: Some(PeerState::Up),
            },
        ]);
        drop(guard);
        assert_eq!(generation, 2);
        let mut routes = Vec::new();
        let seq = table
            .routes_if_changed(seen, &mut routes)
            .expect("seq moved");
        assert_eq!(
            routes,
            vec![
                Route {
                    weight: 0,
                    eligible: false
                },
                Route {
                    weight: 30,
                    eligible: true
                }
            ]
        );
        assert!(
            table.routes_if_changed(seq, &mut routes).is_none(),
            "nothing new since"
        );
    }

    #[test]
    fn drain_and_unhealthy_peers_are_not_eligible() {
        assert!(eligible(1, PeerState::Up, Health::Unchecked, false));
        assert!(eligible(1, PeerState::Up, Health::Healthy, false));
        assert!(!eligible(0, PeerState::Up, Health::Healthy, false));
        assert!(!eligible(1, PeerState::Drain, Health::Healthy, false));
        assert!(!eligible(1, PeerState::Down, Health::Healthy, false));
        assert!(!eligible(1, PeerState::Up, Health::Unhealthy, false));
        // Mandatory checks: unchecked peers wait for their first pass.
        assert!(!eligible(1, PeerState::Up, Health::Unchecked, true));
        assert!(eligible(1, PeerState::Up, Health::Healthy, true));
    }

    #[test]
    fn one_claim_per_interval_whoever_asks() {
        let owned = OwnedTable::checked("app", &["a:1"], CheckMode::On);
        let table = owned.view();
        assert!(table.claim_check(0, 1_000, 500));
        assert!(
            !table.claim_check(0, 1_000, 500),
            "a second worker at the same moment"
        );
        assert!(!table.claim_check(0, 1_499, 500));
        assert!(table.claim_check(0, 1_500, 500));
    }

    #[test]
    fn the_wire_says_which_peers_take_requests() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Mandatory);
        let table = owned.view();
        let eligible = |table: Table| -> Vec<bool> {
            table
                .to_wire(&[])
                .peers
                .iter()
                .map(|peer| peer.eligible)
                .collect()
        };
        assert_eq!(
            eligible(table),
            [false, false],
            "mandatory: unchecked peers wait"
        );
        table
            .record_check(0, Ok(()), 1, 1, 10, 1, |_| true)
            .unwrap();
        assert_eq!(eligible(table), [true, false]);
    }

    #[test]
    fn check_results_move_health_and_routing() {
        let owned = OwnedTable::checked("app", &["a:1", "b:1"], CheckMode::Mandatory);
        let table = owned.view();
        let mut routes = Vec::new();
        let seq = table.routes_if_changed(u64::MAX, &mut routes).unwrap();
        assert!(
            routes.iter().all(|route| !route.eligible),
            "mandatory: unchecked peers wait"
        );

        let passed = table
            .record_check(0, Ok(()), 2, 2, 10, 1, |_| true)
            .unwrap();
        assert_eq!(passed, None, "one pass of two");
        let transition = table
            .record_check(0, Ok(()), 2, 2, 20, 1, |_| true)
            .unwrap();
        assert_eq!(
            transition,
            Some(Transition {
                server: "a:1".into(),
                from: Health::Unchecked,
                to: Health::Healthy,
                error: None
            })
        );
        let seq = table
            .routes_if_changed(seq, &mut routes)
            .expect("health moved routing");
        assert_eq!(
            routes
                .iter()
                .map(|route| route.eligible)
                .collect::<Vec<_>>(),
            [true, false]
        );

        table
            .record_check(0, Err(ProbeError::Status(503)), 2, 2, 30, 1, |_| true)
            .unwrap();
        let down = table
            .record_check(0, Err(ProbeError::Status(503)), 2, 2, 40, 1, |_| true)
            .unwrap();
        assert_eq!(down.map(|t| t.to), Some(Health::Unhealthy));
        table.routes_if_changed(seq, &mut routes).unwrap();
        assert!(!routes[0].eligible);

        let check = owned.view().to_wire(&[]).peers[0].check.clone().unwrap();
        assert_eq!(check.last_error.as_deref(), Some("status 503"));
        assert_eq!(
            (check.consecutive_fails, check.last_check_ms),
            (2, Some(40))
        );
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
    fn counters_count_attempts_failures_and_classes() {
        let owned = OwnedTable::new("app", &[("a:1", 1, false)]);
        let peer = &owned.view().peers()[0];
        peer.record_request();
        peer.record_request();
        peer.record_finish(false, Some(200));
        // `active` is what the workers' in-flight records say, handed in by the caller.
        let mid = owned.view().to_wire(&[1]);
        assert_eq!(mid.peers[0].active, 1);
        peer.record_finish(true, Some(503));
        let wire = owned.view().to_wire(&[]).peers.remove(0);
        assert_eq!((wire.requests, wire.failures, wire.active), (2, 1, 0));
        assert_eq!(
            (wire.responses.success, wire.responses.server_error),
            (1, 1)
        );
    }

    #[test]
    fn carry_over_keeps_runtime_values_unless_the_config_line_changed() {
        let old = OwnedTable::new(
            "app",
            &[("a:1", 5, false), ("b:1", 5, true), ("c:1", 5, false)],
        );
        let guard = old.view().lock(1, |_| true).unwrap();
        guard.apply(&[
            PeerChange {
                index: 0,
                weight: Some(0),
                state: None,
            },
            PeerChange {
                index: 1,
                weight: Some(100),
                state: Some(PeerState::Up),
            },
            PeerChange {
                index: 2,
                weight: Some(9),
                state: None,
            },
        ]);
        drop(guard);
        // The new config keeps a:1 and b:1 as they were, changes c:1's weight, adds d:1.
        let new = OwnedTable::new(
            "app",
            &[
                ("a:1", 5, false),
                ("b:1", 5, true),
                ("c:1", 7, false),
                ("d:1", 3, false),
            ],
        );
        let notes = new
            .view()
            .lock(1, |_| true)
            .unwrap()
            .carry_over(&old.view().carried(), old.view().generation());
        let wire = new.view().to_wire(&[]);
        let summary: Vec<_> = wire
            .peers
            .iter()
            .map(|peer| (peer.server.as_str(), peer.weight, peer.state))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a:1", 0, PeerState::Up),
                ("b:1", 100, PeerState::Up),
                ("c:1", 7, PeerState::Up),
                ("d:1", 3, PeerState::Up),
            ]
        );
        assert_eq!(wire.generation, old.view().generation() + 1);
        assert_eq!(
            notes,
            vec![
                CarryNote::Kept {
                    server: "a:1".into(),
                    weight: 0,
                    state: PeerState::Up
                },
                CarryNote::Kept {
                    server: "b:1".into(),
                    weight: 100,
                    state: PeerState::Up
                },
                CarryNote::ConfigChanged {
                    server: "c:1".into()
                },
            ]
        );
    }

    fn config(server: &str, weight: u32, down: bool) -> PeerConfig {
        PeerConfig {
            server: server.into(),
            weight,
            down,
            backup: false,
        }
    }

    #[test]
    fn a_commit_applies_changed_lines_and_keeps_runtime_values() {
        let a = config("a:1", 5, false);
        let b = config("b:1", 5, true);
        let owned = OwnedTable::with_checks("app", &[a.clone(), b.clone()], CheckMode::Off);
        let table = owned.view();
        assert_eq!(
            table.generation(),
            1,
            "the first commit is the start, not a change"
        );
        table.lock(1, |_| true).unwrap().apply(&[
            PeerChange {
                index: 0,
                weight: Some(0),
                state: None,
            },
            PeerChange {
                index: 1,
                weight: Some(100),
                state: Some(PeerState::Up),
            },
        ]);
        assert_eq!(table.generation(), 2);

        // The same configuration again: nothing changes, not even the generation.
        let notes =
            table
                .lock(1, |_| true)
                .unwrap()
                .commit(CheckMode::Off, &[a.clone(), b.clone()], &[]);
        assert_eq!(table.generation(), 2);
        assert_eq!(
            notes,
            vec![
                CarryNote::Kept {
                    server: "a:1".into(),
                    weight: 0,
                    state: PeerState::Up
                },
                CarryNote::Kept {
                    server: "b:1".into(),
                    weight: 100,
                    state: PeerState::Up
                },
            ]
        );

        // b's line changes: b takes it, a keeps its runtime weight; one new generation.
        let b_heavier = config("b:1", 7, false);
        let notes =
            table
                .lock(1, |_| true)
                .unwrap()
                .commit(CheckMode::Off, &[a.clone(), b_heavier], &[]);
        assert!(notes.contains(&CarryNote::ConfigChanged {
            server: "b:1".into()
        }));
        let wire = table.to_wire(&[]);
        let values: Vec<_> = wire
            .peers
            .iter()
            .map(|p| (p.weight, p.state, p.config_weight))
            .collect();
        assert_eq!(values, [(0, PeerState::Up, 5), (7, PeerState::Up, 7)]);
        assert_eq!(wire.generation, 3);
    }

    #[test]
    fn a_commit_without_a_peer_takes_it_out_of_the_current_set() {
        let a = config("a:1", 1, false);
        let b = config("b:1", 1, false);
        let owned = OwnedTable::with_checks("app", &[a.clone(), b], CheckMode::Off);
        let [slot_a, slot_b] = [owned.peers[0], owned.peers[1]];
        assert!(slot_a.is_current() && slot_b.is_current());
        let only_a = [slot_a];
        let table = Table::new(owned.header, &only_a);
        table
            .lock(1, |_| true)
            .unwrap()
            .commit(CheckMode::Mandatory, &[a], &[slot_b]);
        assert!(slot_a.is_current() && !slot_b.is_current());
        assert_eq!(table.generation(), 2, "a peer left");
        assert_eq!(owned.header.checks(), CheckMode::Mandatory);
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
        }];
        assert_eq!(guard.apply(&change), MAX_GENERATION);
        assert_eq!(guard.apply(&change), MAX_GENERATION);
    }

    #[test]
    fn names_longer_than_the_capacity_are_refused() {
        assert!(FixedName::new(&"x".repeat(NAME_CAPACITY)).is_ok());
        assert!(FixedName::new(&"x".repeat(NAME_CAPACITY + 1)).is_err());
    }
}
