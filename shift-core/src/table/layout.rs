//! How a table lies in shared memory: the upstream's header, its peers' slots, names stored
//! inline, and the encodings of states and health in single bytes.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use shift_wire::{Health, PeerOrigin, PeerState, PinCounts};

use super::eligible;
use super::label::{Label, LabelCell};
use super::latency::LatencyCell;
use crate::slow_start::SlowStart;

/// Longest upstream or peer name a table holds (a `unix:` peer path fits).
pub const NAME_CAPACITY: usize = 128;

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
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The bytes, without `as_str`'s UTF-8 check (for comparisons on the data path).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(NAME_CAPACITY)]
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
    /// Address of its history ring (`crate::history::RingHead`), 0 when it keeps none; changed
    /// and followed only under the table's write lock.
    pub history: AtomicUsize,
    /// Address and length of the committed `state=` path in the zone (0 when there is none).
    pub state_path: [AtomicUsize; 2],
    /// How many live configuration loads use this upstream (changed under the zone's lock).
    pub refs: AtomicU32,
    /// Whether the committed configuration has this upstream.
    pub(crate) current: AtomicBool,
    pub(crate) name: FixedName,
    pub(crate) checks: AtomicU8,
    /// The lock holder's `ProcessId::token`, 0 when free.
    pub(crate) writer: AtomicU64,
    pub(crate) seq: AtomicU64,
    pub(crate) generation: AtomicU64,
    /// The zone's membership epoch at the last change of this table's current peers: a worker
    /// that routed with an older one builds its peer list again.
    pub(crate) members: AtomicU64,
    /// When the upstream's names are due for lookup (monotonic ms); the worker that moves it on
    /// looks them up (see `resolve`).
    pub(crate) next_lookup_ms: AtomicU64,
    /// Requests `shift_pin` sent to the peer they named, and those whose pin named no usable
    /// peer and took the normal pick.
    pub(crate) pinned: AtomicU64,
    pub(crate) pin_fallbacks: AtomicU64,
    /// `shift_slow_start`, `SlowStart::encode`d (0: off); each configuration load sets it.
    pub(crate) slow_start: AtomicU64,
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
    pub(crate) fn decode(value: u8) -> CheckMode {
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
            history: AtomicUsize::new(0),
            state_path: [AtomicUsize::new(0), AtomicUsize::new(0)],
            refs: AtomicU32::new(0),
            current: AtomicBool::new(false),
            name: FixedName::new(name)?,
            checks: AtomicU8::new(checks as u8),
            writer: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            members: AtomicU64::new(0),
            next_lookup_ms: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            pin_fallbacks: AtomicU64::new(0),
            slow_start: AtomicU64::new(0),
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

    /// The membership epoch of the last change to its current peers (see `table::membership`).
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::Acquire)
    }

    /// A request with a `shift_pin` value: it reached the peer it named, or took the normal
    /// pick because the value named no peer that could take it.
    pub fn record_pin(&self, reached: bool) {
        let counter = if reached {
            &self.pinned
        } else {
            &self.pin_fallbacks
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_start(&self) -> SlowStart {
        SlowStart::decode(self.slow_start.load(Ordering::Relaxed))
    }

    /// Sets the upstream's slow start, as a configuration load gives it. A ramp running keeps
    /// its start and follows the new window.
    pub fn set_slow_start(&self, slow_start: SlowStart) {
        self.slow_start
            .store(slow_start.encode(), Ordering::Relaxed);
    }

    pub fn pins(&self) -> PinCounts {
        PinCounts {
            pinned: self.pinned.load(Ordering::Relaxed),
            fallbacks: self.pin_fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// What the config says about a peer; a peer whose config changed across a reload takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub server: String,
    pub weight: u32,
    pub down: bool,
    pub backup: bool,
    /// From `shift_label`; `Label::NONE` without one.
    pub label: Label,
}

impl PeerConfig {
    /// Whether the `server` line itself is the same (its label aside): a changed line resets
    /// weight and state, a changed `shift_label` only the label.
    pub fn same_line(&self, other: &PeerConfig) -> bool {
        (&self.server, self.weight, self.down, self.backup)
            == (&other.server, other.weight, other.down, other.backup)
    }
}

/// What a live slot's `check` word holds. The zone's freed memory is filled with
/// [`FREED_BYTE`] in debug builds, so a slot used after it was freed fails [`PeerSlot::verify`]
/// at once instead of counting on whichever peer took its place.
pub const SLOT_CHECK: u64 = 0x7368_6966_745f_736c;
/// The byte the zone's freed memory is filled with in debug builds.
pub const FREED_BYTE: u8 = 0xa5;

/// One peer's live state, kept for as long as any live configuration routes to it.
#[repr(C)]
pub struct PeerSlot {
    /// [`SLOT_CHECK`] while the slot is allocated.
    check: AtomicU64,
    /// Address of the next slot of the same upstream; only the FFI module follows it.
    pub next: AtomicUsize,
    /// How many live configuration loads route to this peer (changed under the zone's lock).
    pub refs: AtomicU32,
    /// Whether the committed configuration has this peer.
    pub(crate) current: AtomicBool,
    /// Its position in the committed configuration, the order the API lists peers in.
    pub(crate) order: AtomicU32,
    pub(crate) name: FixedName,
    /// The committed config line: a line that changes resets weight and state to it.
    pub(crate) config_weight: AtomicU32,
    pub(crate) config_down: AtomicBool,
    pub(crate) backup: AtomicBool,
    pub(crate) weight: AtomicU32,
    pub(crate) state: AtomicU8,
    pub(crate) health: AtomicU8,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) responses: [AtomicU64; 5],
    /// When the next health check is due (monotonic ms); the worker that moves it on probes.
    pub(crate) next_check_ms: AtomicU64,
    pub(crate) check_fails: AtomicU32,
    pub(crate) check_passes: AtomicU32,
    /// When the last check finished (Unix ms), 0 before the first.
    pub(crate) last_check_ms: AtomicU64,
    /// `ProbeError::encode` of the last check, 0 when it passed.
    pub(crate) last_error: AtomicU64,
    /// `PeerOrigin::Config` (0), `PeerOrigin::Api` (1) or `PeerOrigin::Resolved` (2).
    pub(crate) origin: AtomicU8,
    /// The membership epoch of its last removal (0 while it was not removed since it became
    /// current); its run-time positions are given up once no worker's list can hold it
    /// (`reclaim::may_give_up`).
    pub(crate) removed_epoch: AtomicU64,
    /// The membership epoch when it was placed in the zone: no peer list older than that holds
    /// it.
    pub(crate) added_epoch: AtomicU64,
    /// When this instance of the peer joined the upstream (Unix ms, 0 before it first became
    /// current): an address that leaves and comes back is another instance, with a later one
    /// (see `table::membership`).
    pub(crate) joined_ms: AtomicU64,
    /// The name a resolved peer came from (`resolve::source_id`), 0 for other peers.
    pub(crate) source: AtomicU64,
    /// When the last answer for its name that gives this address arrived (Unix ms), 0 for
    /// peers that are not resolved: a deploy that just started a container waits for a lookup
    /// after it, which drops the address a recreated container no longer has.
    pub(crate) resolved_ms: AtomicU64,
    /// When it last started taking new requests after it could not (Unix ms; 0: it has taken
    /// them since the table began, or never): where its slow start ramps from
    /// (`crate::slow_start`). Set under the write lock, with the change that made it eligible.
    pub(crate) ramp_from_ms: AtomicU64,
    /// The window the change that started its ramp gave it (a `slow_start` in the API), 0 for
    /// the upstream's `shift_slow_start`. Set with `ramp_from_ms`.
    pub(crate) ramp_window_ms: AtomicU32,
    /// Its attempts that failed in a row, as `shift_eject` counts failures (any worker's; a
    /// success sets it back to 0).
    pub(crate) consecutive_failures: AtomicU32,
    /// How many times `shift_eject` ejected it (the next ejection lasts one base longer).
    pub(crate) ejections: AtomicU32,
    /// Until when it is ejected (Unix ms; 0: it is not). Set and cleared under the write lock.
    pub(crate) ejected_until_ms: AtomicU64,
    /// When a drain or removal that gave a `close_after` closes the requests the peer still
    /// carries (Unix ms; 0: never), and over how long (`crate::drain_close`). Set and cleared
    /// under the write lock.
    pub(crate) close_at_ms: AtomicU64,
    pub(crate) close_spread_ms: AtomicU32,
    /// Requests the workers closed at that deadline.
    pub(crate) closed_by_drain: AtomicU64,
    /// The label the config gives it, and the one it has now (the API may have changed it).
    pub(crate) config_label: LabelCell,
    pub(crate) label: LabelCell,
    /// How long its attempts took, whole and to the response header.
    pub(crate) response_time: LatencyCell,
    pub(crate) header_time: LatencyCell,
}

impl PeerSlot {
    /// A peer as the config describes it: `down` peers start as standby. It is not current
    /// until a configuration that has it is committed.
    pub fn new(config: &PeerConfig) -> Result<PeerSlot, NameTooLong> {
        Ok(PeerSlot {
            check: AtomicU64::new(SLOT_CHECK),
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
            origin: AtomicU8::new(0),
            removed_epoch: AtomicU64::new(0),
            added_epoch: AtomicU64::new(0),
            joined_ms: AtomicU64::new(0),
            source: AtomicU64::new(0),
            resolved_ms: AtomicU64::new(0),
            ramp_from_ms: AtomicU64::new(0),
            ramp_window_ms: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            close_at_ms: AtomicU64::new(0),
            close_spread_ms: AtomicU32::new(0),
            closed_by_drain: AtomicU64::new(0),
            config_label: LabelCell::new(config.label),
            label: LabelCell::new(config.label),
            response_time: LatencyCell::new(),
            header_time: LatencyCell::new(),
        })
    }

    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Debug builds: panics (an Nginx worker aborts) when this slot was freed. Called where a
    /// worker or the API takes a slot to use it; nothing in release builds.
    #[inline]
    pub fn verify(&self) {
        if cfg!(debug_assertions) {
            let check = self.check.load(Ordering::Relaxed);
            assert!(
                check == SLOT_CHECK,
                "peer slot at {:p} used after it was freed (check word {check:#x})",
                self
            );
        }
    }

    /// Marks the peer as in the committed configuration at position `order`, or as not in it.
    pub fn set_current(&self, current: bool, order: u32) {
        self.order.store(order, Ordering::Relaxed);
        self.current.store(current, Ordering::Release);
    }

    pub fn origin(&self) -> PeerOrigin {
        match self.origin.load(Ordering::Relaxed) {
            1 => PeerOrigin::Api,
            2 => PeerOrigin::Resolved,
            _ => PeerOrigin::Config,
        }
    }

    pub fn set_origin(&self, origin: PeerOrigin) {
        let value = match origin {
            PeerOrigin::Config => 0,
            PeerOrigin::Api => 1,
            PeerOrigin::Resolved => 2,
        };
        self.origin.store(value, Ordering::Relaxed);
    }

    /// For a resolved peer, the id of the name it came from (`resolve::source_id`); 0 else.
    pub fn source(&self) -> u64 {
        self.source.load(Ordering::Relaxed)
    }

    /// The membership epoch of its last removal (0 while it was not removed since it became
    /// current).
    pub fn removed_epoch(&self) -> u64 {
        self.removed_epoch.load(Ordering::Acquire)
    }

    /// Notes the membership epoch at which it was placed in the zone, once, before any worker
    /// can list it. Until it becomes current it counts as removed at that same epoch: no list
    /// holds it, so if the process placing it dies before making it current, its positions are
    /// given up like any removed peer's.
    pub fn mark_placed(&self, epoch: u64) {
        self.added_epoch.store(epoch, Ordering::Release);
        self.removed_epoch.store(epoch, Ordering::Release);
    }

    /// What reclaiming its positions depends on.
    pub fn life(&self) -> crate::reclaim::SlotLife {
        crate::reclaim::SlotLife {
            current: self.is_current(),
            added_epoch: self.added_epoch.load(Ordering::Acquire),
            removed_epoch: self.removed_epoch(),
        }
    }

    pub fn order(&self) -> u32 {
        self.order.load(Ordering::Relaxed)
    }

    /// When this instance of the peer joined (Unix ms); 0 before it first became current.
    pub fn joined_ms(&self) -> u64 {
        self.joined_ms.load(Ordering::Relaxed)
    }

    /// Notes that an answer for the slot's name that arrived at `at_ms` (Unix ms) gives its
    /// address. A bare store: it orders nothing else.
    pub fn note_resolved(&self, at_ms: u64) {
        self.resolved_ms.store(at_ms, Ordering::Relaxed);
    }

    pub fn server(&self) -> &str {
        self.name.as_str()
    }

    /// `server()` as bytes, unchecked: what a request's pin is compared with.
    pub fn server_bytes(&self) -> &[u8] {
        self.name.as_bytes()
    }

    pub fn config(&self) -> PeerConfig {
        PeerConfig {
            server: self.server().to_string(),
            weight: self.config_weight.load(Ordering::Relaxed),
            down: self.config_down.load(Ordering::Relaxed),
            backup: self.backup.load(Ordering::Relaxed),
            label: self.config_label.load(),
        }
    }

    pub(crate) fn set_config(&self, config: &PeerConfig) {
        self.config_weight.store(config.weight, Ordering::Relaxed);
        self.config_down.store(config.down, Ordering::Relaxed);
        self.backup.store(config.backup, Ordering::Relaxed);
        self.config_label.store(config.label);
    }

    /// Its label now; consistent with weight and state only under the sequence lock.
    pub(crate) fn label(&self) -> Label {
        self.label.load()
    }

    pub(crate) fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn state(&self) -> PeerState {
        decode_state(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn health(&self) -> Health {
        decode_health(self.health.load(Ordering::Relaxed))
    }

    /// A request was sent to this peer.
    pub fn record_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// How long an attempt on this peer took (to its end, or to its failure), and to the
    /// response header when one came.
    pub fn record_times(&self, response_ms: u64, header_ms: Option<u64>) {
        self.response_time.record(response_ms);
        if let Some(header_ms) = header_ms {
            self.header_time.record(header_ms);
        }
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
}

/// A peer's routing values, read together from one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerValues {
    pub(crate) weight: u32,
    pub(crate) state: PeerState,
    pub(crate) health: Health,
    pub(crate) label: Label,
    pub(crate) ramp_from_ms: u64,
    pub(crate) ramp_window_ms: u32,
    /// Until when `shift_eject` keeps it out (0: not ejected).
    pub(crate) ejected_until_ms: u64,
}

impl PeerValues {
    /// Whether it takes new requests: `table::eligible`, and not ejected.
    pub(crate) fn eligible(&self, mandatory: bool) -> bool {
        self.ejected_until_ms == 0 && eligible(self.weight, self.state, self.health, mandatory)
    }
}

impl PeerValues {
    pub(crate) fn of(peer: &PeerSlot) -> PeerValues {
        PeerValues {
            weight: peer.weight(),
            state: peer.state(),
            health: peer.health(),
            label: peer.label(),
            ramp_from_ms: peer.ramp_from_ms.load(Ordering::Relaxed),
            ramp_window_ms: peer.ramp_window_ms.load(Ordering::Relaxed),
            ejected_until_ms: peer.ejected_until_ms.load(Ordering::Relaxed),
        }
    }
}

pub(crate) fn config_state(config: &PeerConfig) -> PeerState {
    if config.down {
        PeerState::Down
    } else {
        PeerState::Up
    }
}

pub(crate) fn encode_state(state: PeerState) -> u8 {
    match state {
        PeerState::Up => 0,
        PeerState::Drain => 1,
        PeerState::Down => 2,
    }
}

pub(crate) fn decode_state(value: u8) -> PeerState {
    match value {
        0 => PeerState::Up,
        1 => PeerState::Drain,
        _ => PeerState::Down,
    }
}

pub(crate) fn encode_health(health: Health) -> u8 {
    match health {
        Health::Unchecked => 0,
        Health::Healthy => 1,
        Health::Unhealthy => 2,
    }
}

pub(crate) fn decode_health(value: u8) -> Health {
    match value {
        1 => Health::Healthy,
        2 => Health::Unhealthy,
        _ => Health::Unchecked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::test_support::OwnedTable;
    use crate::table::test_support::NOW_MS;

    #[test]
    #[should_panic(expected = "used after it was freed")]
    fn a_slot_in_freed_memory_fails_its_check() {
        let config = PeerConfig {
            server: "127.0.0.1:1".into(),
            weight: 1,
            down: false,
            backup: false,
            label: Label::NONE,
        };
        let slot = PeerSlot::new(&config).unwrap();
        slot.verify();
        // The check word as the zone leaves freed memory in debug builds.
        slot.check
            .store(u64::from_ne_bytes([FREED_BYTE; 8]), Ordering::Relaxed);
        slot.verify();
    }

    #[test]
    pub(crate) fn counters_count_attempts_failures_and_classes() {
        let owned = OwnedTable::new("app", &[("a:1", 1, false)]);
        let peer = &owned.view().peers()[0];
        peer.record_request();
        peer.record_request();
        peer.record_finish(false, Some(200));
        // `active` is what the workers' in-flight records say, handed in by the caller.
        let mid = owned.view().to_wire(&[1], NOW_MS);
        assert_eq!(mid.peers[0].active, 1);
        peer.record_finish(true, Some(503));
        let wire = owned.view().to_wire(&[], NOW_MS).peers.remove(0);
        assert_eq!((wire.requests, wire.failures, wire.active), (2, 1, 0));
        assert_eq!(
            (wire.responses.success, wire.responses.server_error),
            (1, 1)
        );
    }
    #[test]
    pub(crate) fn names_longer_than_the_capacity_are_refused() {
        assert!(FixedName::new(&"x".repeat(NAME_CAPACITY)).is_ok());
        assert!(FixedName::new(&"x".repeat(NAME_CAPACITY + 1)).is_err());
    }
}
