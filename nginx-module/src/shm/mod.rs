//! FFI: the module's shared memory zone and the state in it.
//!
//! One zone (`nginx_shift`) holds the runtime state of every `shift` upstream: a table header
//! per upstream name and a peer slot per address (`shift_core::table`), shared by every
//! generation of workers alive at the moment, so that a change any worker acknowledges is the
//! truth for all of them and for the next configuration. Beside them the zone records each
//! configuration load and the slots it routes to, and each worker with the requests it has in
//! flight; that is what tells when memory can be freed (see `load`).
//!
//! - `zone`: registering the zone, its root, its lock and allocation in it.
//! - `load`: building a configuration's view at the zone's init.
//! - `commit`: committing it when Nginx commits the configuration.
//! - `membership`: peers added and removed at run time.
//! - `reclaim`: freeing what no live process can touch; the workers' housekeeping.
//! - `worker`: each worker's record, binary-upgrade detection.
//! - `api_view`: the API's view of the zone, an upstream found by name.
//! - `history`: each upstream's ring of its latest changes.

mod api_view;
mod commit;
mod history;
mod load;
mod membership;
mod positions;
mod reclaim;
mod worker;
mod zone;

pub use api_view::{api_view, ApiView, NotServing};
pub use commit::commit_cycle;
pub use history::{members, record as record_history, record_since, ring_of};
pub use load::{peer_count, LoadRecord};
pub use membership::{with_load_positions, ZoneMembership};
pub use reclaim::housekeeping;
#[cfg(debug_assertions)]
pub use worker::hold_zone_while_flagged;
pub use worker::{
    inflight, pause_after_list, publish_held, register_worker, state_path, still_serving,
};
pub use zone::{add_zone, set_zone_size, slots_of, table_of, Zone};
