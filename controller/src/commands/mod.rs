//! The commands, over a fleet of one or more Nginx instances: one file per family.

mod canary;
mod peers;
mod set;
mod status;
mod switch;

use std::path::PathBuf;
use std::time::Duration;

use crate::fleet::Fleet;
use crate::progress::Progress;

pub use canary::{canary, promote, CanaryOptions, OnInterrupt};
pub use peers::{add, parse_server, remove};
pub use set::{set, set_label, set_state};
pub use status::{fleet_status, metrics, status};
pub use switch::{rollback, switch, wait_ready, Unhealthy};

/// How often long commands look at the upstream.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// What every command gets.
pub struct Ctx {
    pub fleet: Fleet,
    pub json: bool,
    pub state_dir: PathBuf,
    pub progress: Progress,
}
