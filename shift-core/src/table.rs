//! The per-upstream peer table that lives in shared memory.
//!
//! It holds plain atomics and fixed-size names, no pointers, so every worker can read it without
//! a lock. Weights, states and health are guarded by a sequence lock: a writer makes `seq` odd,
//! changes them, and makes it even again; a reader that saw the same even `seq` before and after
//! its reads has a consistent snapshot. Workers compare `seq` with the one they last copied on
//! every request, which is one atomic load on the data path. Writers (the admin API, in any
//! worker) take `writer`, which holds their pid so that a lock left by a crashed worker can be
//! taken over. Counters are updated with relaxed atomic adds outside the sequence lock.
//!
//! The FFI module places a [`TableHeader`] followed by its [`PeerSlot`]s in the shared zone;
//! everything here works on references to them, and the tests use ordinary heap memory.

use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

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
    /// Address of the next table in the zone's list; only the FFI module follows it.
    pub next: AtomicUsize,
    /// The configuration load (start or reload) this table belongs to.
    pub epoch: u64,
    name: FixedName,
    peer_count: u32,
    checks: CheckMode,
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

impl TableHeader {
    pub fn new(
        name: &str,
        epoch: u64,
        peer_count: usize,
        checks: CheckMode,
    ) -> Result<TableHeader, NameTooLong> {
        Ok(TableHeader {
            next: AtomicUsize::new(0),
            epoch,
            name: FixedName::new(name)?,
            peer_count: peer_count as u32,
            checks,
            writer: AtomicU32::new(0),
            seq: AtomicU64::new(0),
            generation: AtomicU64::new(1),
        })
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn peer_count(&self) -> usize {
        self.peer_count as usize
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

/// One peer's live state.
#[repr(C)]
pub struct PeerSlot {
    name: FixedName,
    config_weight: u32,
    config_down: bool,
    backup: bool,
    weight: AtomicU32,
    state: AtomicU8,
    health: AtomicU8,
    requests: AtomicU64,
    failures: AtomicU64,
    active: AtomicI64,
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
    /// A peer as the config describes it: `down` peers start as standby.
    pub fn new(config: &PeerConfig) -> Result<PeerSlot, NameTooLong> {
        let state = if config.down {
            PeerState::Down
        } else {
            PeerState::Up
        };
        Ok(PeerSlot {
            name: FixedName::new(&config.server)?,
            config_weight: config.weight,
            config_down: config.down,
            backup: config.backup,
            weight: AtomicU32::new(config.weight),
            state: AtomicU8::new(encode_state(state)),
            health: AtomicU8::new(encode_health(Health::Unchecked)),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            active: AtomicI64::new(0),
            responses: Default::default(),
            next_check_ms: AtomicU64::new(0),
            check_fails: AtomicU32::new(0),
            check_passes: AtomicU32::new(0),
            last_check_ms: AtomicU64::new(0),
            last_error: AtomicU64::new(0),
        })
    }

    pub fn server(&self) -> &str {
        self.name.as_str()
    }

    pub fn config(&self) -> PeerConfig {
        PeerConfig {
            server: self.server().to_string(),
            weight: self.config_weight,
            down: self.config_down,
            backup: self.backup,
        }
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
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request attempt on this peer finished; `status` is the upstream's status code if it
    /// answered one.
    pub fn record_finish(&self, failed: bool, status: Option<u16>) {
        self.active.fetch_sub(1, Ordering::Relaxed);
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

    fn to_wire(&self, weight: u32, state: PeerState, health: Health, checked: bool) -> Peer {
        let count = |class: usize| self.responses[class].load(Ordering::Relaxed);
        Peer {
            server: self.server().to_string(),
            weight,
            state,
            health,
            backup: self.backup,
            config_weight: self.config_weight,
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed).max(0) as u64,
            responses: ResponseCounts {
                informational: count(0),
                success: count(1),
                redirection: count(2),
                client_error: count(3),
                server_error: count(4),
            },
            check: checked.then(|| self.check_status()),
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

/// A view of one upstream's table.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    header: &'a TableHeader,
    peers: &'a [PeerSlot],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "another change to upstream \"{upstream}\" is in progress (worker pid {holder}); try again"
    )]
    Busy { upstream: String, holder: u32 },
}

impl<'a> Table<'a> {
    /// Pairs a header with its peers; `peers` must hold exactly `header.peer_count()` slots.
    pub fn new(header: &'a TableHeader, peers: &'a [PeerSlot]) -> Table<'a> {
        assert_eq!(
            header.peer_count(),
            peers.len(),
            "table header and peers disagree"
        );
        Table { header, peers }
    }

    pub fn header(&self) -> &'a TableHeader {
        self.header
    }

    pub fn name(&self) -> &'a str {
        self.header.name()
    }

    pub fn peers(&self) -> &'a [PeerSlot] {
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
            let mandatory = self.header.checks == CheckMode::Mandatory;
            routes.extend(peers.iter().map(|peer| Route {
                weight: peer.weight(),
                eligible: eligible(peer.weight(), peer.state(), peer.health(), mandatory),
            }));
        })
        .map(|(seq, ())| seq)
    }

    /// The upstream as the API shows it: weights and states from one consistent snapshot.
    pub fn to_wire(&self) -> Upstream {
        let snapshot = self.read_consistent(|peers| {
            peers
                .iter()
                .map(|peer| (peer.weight(), peer.state(), peer.health()))
                .collect::<Vec<_>>()
        });
        // A writer that holds the table for a whole snapshot attempt is dead or stuck; show the
        // values as they are rather than nothing.
        let values = snapshot.map(|(_, values)| values).unwrap_or_else(|| {
            self.peers
                .iter()
                .map(|peer| (peer.weight(), peer.state(), peer.health()))
                .collect()
        });
        let checked = self.header.checks != CheckMode::Off;
        Upstream {
            name: self.name().to_string(),
            generation: self.generation(),
            peers: self
                .peers
                .iter()
                .zip(values)
                .map(|(peer, (weight, state, health))| peer.to_wire(weight, state, health, checked))
                .collect(),
        }
    }

    fn read_consistent<T>(&self, mut read: impl FnMut(&[PeerSlot]) -> T) -> Option<(u64, T)> {
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

/// Whether process `pid` still runs: the liveness test the write lock uses to take over a lock
/// left by a crashed worker. A process we may not signal (EPERM) still runs.
pub fn process_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    !matches!(nix::sys::signal::kill(pid, None), Err(Errno::ESRCH))
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
        self.table.header.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Sets a peer's health; routing changes at once. Health is not a generation of its own.
    pub fn set_health(&self, index: usize, health: Health) {
        self.write_section(|peers| {
            peers[index]
                .health
                .store(encode_health(health), Ordering::Relaxed);
        });
    }

    /// Takes weights, states and health of peers found in `previous` (by address), as a reload
    /// does; the generation continues from `previous`. A peer whose config line changed keeps
    /// its new config values. Counters carry over too. Returns what was kept, for the log.
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
                    peer.requests.store(counters.requests, Ordering::Relaxed);
                    peer.failures.store(counters.failures, Ordering::Relaxed);
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
                if old.weight != peer.config_weight || old.state != config_state(peer) {
                    notes.push(CarryNote::Kept {
                        server: peer.server().to_string(),
                        weight: old.weight,
                        state: old.state,
                    });
                }
            }
        });
        self.table
            .header
            .generation
            .store(previous_generation + 1, Ordering::Release);
        notes
    }

    fn write_section(&self, write: impl FnOnce(&[PeerSlot])) {
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

/// A peer's runtime values from an earlier table or a state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedPeer {
    pub config: PeerConfig,
    pub weight: u32,
    pub state: PeerState,
    /// Kept across reloads; a restart starts unchecked.
    pub health: Option<Health>,
    pub counters: Option<CarriedCounters>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedCounters {
    pub requests: u64,
    pub failures: u64,
}

impl Table<'_> {
    /// Everything a reload carries over to the next table.
    pub fn carried(&self) -> Vec<CarriedPeer> {
        self.peers
            .iter()
            .map(|peer| CarriedPeer {
                config: peer.config(),
                weight: peer.weight(),
                state: peer.state(),
                health: Some(peer.health()),
                counters: Some(CarriedCounters {
                    requests: peer.requests.load(Ordering::Relaxed),
                    failures: peer.failures.load(Ordering::Relaxed),
                }),
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

fn config_state(peer: &PeerSlot) -> PeerState {
    if peer.config_down {
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

    /// A table in ordinary memory, as the zone would hold it.
    pub(crate) struct OwnedTable {
        header: TableHeader,
        peers: Vec<PeerSlot>,
    }

    impl OwnedTable {
        pub(crate) fn new(name: &str, peers: &[(&str, u32, bool)]) -> OwnedTable {
            let slots: Vec<PeerSlot> = peers
                .iter()
                .map(|&(server, weight, down)| {
                    PeerSlot::new(&PeerConfig {
                        server: server.into(),
                        weight,
                        down,
                        backup: false,
                    })
                    .unwrap()
                })
                .collect();
            OwnedTable::with_checks(name, slots, CheckMode::Off)
        }

        pub(crate) fn checked(name: &str, peers: &[&str], checks: CheckMode) -> OwnedTable {
            let slots = peers
                .iter()
                .map(|server| {
                    PeerSlot::new(&PeerConfig {
                        server: server.to_string(),
                        weight: 1,
                        down: false,
                        backup: false,
                    })
                    .unwrap()
                })
                .collect();
            OwnedTable::with_checks(name, slots, checks)
        }

        fn with_checks(name: &str, peers: Vec<PeerSlot>, checks: CheckMode) -> OwnedTable {
            let header = TableHeader::new(name, 1, peers.len(), checks).unwrap();
            OwnedTable { header, peers }
        }

        pub(crate) fn view(&self) -> Table<'_> {
            Table::new(&self.header, &self.peers)
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
        let wire = owned.view().to_wire();
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

        let check = owned.view().to_wire().peers[0].check.clone().unwrap();
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
    fn a_reaped_process_is_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn counters_count_attempts_failures_and_classes() {
        let owned = OwnedTable::new("app", &[("a:1", 1, false)]);
        let peer = &owned.view().peers()[0];
        peer.record_request();
        peer.record_request();
        peer.record_finish(false, Some(200));
        let mid = owned.view().to_wire();
        assert_eq!(mid.peers[0].active, 1);
        peer.record_finish(true, Some(503));
        let wire = owned.view().to_wire().peers.remove(0);
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
        let wire = new.view().to_wire();
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

    #[test]
    fn names_longer_than_the_capacity_are_refused() {
        assert!(FixedName::new(&"x".repeat(NAME_CAPACITY)).is_ok());
        assert!(FixedName::new(&"x".repeat(NAME_CAPACITY + 1)).is_err());
    }
}
