//! The state a configuration's `shift` upstream carries beside its parsed directives: where
//! it lives in the shared zone (placed once, in the master) and what each worker keeps to steer
//! its own round-robin peers. Kept apart from the directives so that a reader sees which fields
//! change after the configuration is parsed, and where.

use std::ptr;

use ngx::ffi::{ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t};

use crate::peer_list::PeerList;
use shift_core::state_file::SavedUpstream;
use shift_core::table::{PeerConfig, PeerSlot, Route, TableHeader};

/// Where the upstream lives in the zone, set by the zone's init (`shm::load`) in the master and
/// read-only in workers.
pub struct Placement {
    /// This upstream's table in the shared zone, and its index among the load's tables.
    pub table: *mut TableHeader,
    pub table_index: usize,
    /// Whether the zone's init placed the table for this configuration (it then takes the state
    /// file's or a replaced zone's state when the configuration is committed).
    pub new_table: bool,
    /// The slots of round robin's peers, in its order, and what the config says of each.
    pub slots: Vec<&'static PeerSlot>,
    pub configs: Vec<PeerConfig>,
    /// Where this upstream's positions start in the load (in-flight counts are by position):
    /// its config peers first, in `slots`' order (its run-time ones follow, and the load's
    /// blocks may add more: `shm::positions`).
    pub first_slot: usize,
    /// For a table new in this zone: the peers it had added at run time before (a replaced
    /// zone's or the state file's), placed for this load and made current by its commit; and
    /// the state file as the zone's init read it, if it had one (or why it was refused).
    pub runtime: Vec<&'static PeerSlot>,
    pub saved_state: Option<Result<SavedUpstream, String>>,
    /// For a table new in this zone: its state before, the replaced zone's or the state
    /// file's, as the commit carried it over (in the master, before the workers fork); its
    /// names' first addresses take their places from it (`resolve::earlier_places`).
    pub state_before: Option<SavedUpstream>,
    /// Round robin's peers, in table order. Each worker steers its own copy of them.
    pub rr_peers: Vec<*mut ngx_http_upstream_rr_peer_t>,
}

impl Default for Placement {
    fn default() -> Self {
        Placement {
            table: ptr::null_mut(),
            table_index: 0,
            new_table: false,
            slots: Vec::new(),
            configs: Vec::new(),
            first_slot: 0,
            runtime: Vec::new(),
            saved_state: None,
            state_before: None,
            rr_peers: Vec::new(),
        }
    }
}

/// What one worker keeps to notice a table change and copy it into its round-robin peers.
pub struct WorkerRouting {
    /// The table `seq` this worker last copied into its peers.
    pub seen_seq: u64,
    /// The table's membership this worker's peer list follows.
    pub members_seen: u64,
    /// The list it built when peers were added or removed at run time (`peer_list`); null
    /// while it routes with its configuration's own.
    pub list: *mut PeerList,
    /// Its configuration's own list, kept when `list` replaces it in `peer.data`.
    pub original: *mut ngx_http_upstream_rr_peers_t,
    /// What it copied, in its current list's order, kept to avoid an allocation per change;
    /// with each peer's `sticky::hash` of its address, for `shift_sticky` and `shift_pin`.
    pub routes: Vec<Route>,
    pub hashes: Vec<u64>,
    /// Lookups of the upstream's names this worker has in flight, and the soonest their
    /// answers want the next one (ms from their end; see `resolver`).
    pub lookups_pending: usize,
    pub next_lookup_ms: u64,
    /// The indexes of `routes` whose slow start runs (`ramp`), and the Unix ms their weights
    /// were last set for.
    pub ramping: Vec<usize>,
    pub ramp_weights_ms: u64,
    /// Whether its round-robin weights are `RAMP_SCALE` times the table's (while a ramp runs).
    pub ramp_scaled: bool,
}

impl Default for WorkerRouting {
    fn default() -> Self {
        WorkerRouting {
            // Never a real seq: the first request copies the table (which may hold carried
            // state).
            seen_seq: u64::MAX,
            members_seen: u64::MAX,
            list: ptr::null_mut(),
            original: ptr::null_mut(),
            routes: Vec::new(),
            hashes: Vec::new(),
            lookups_pending: 0,
            next_lookup_ms: u64::MAX,
            ramping: Vec::new(),
            ramp_weights_ms: 0,
            ramp_scaled: false,
        }
    }
}
