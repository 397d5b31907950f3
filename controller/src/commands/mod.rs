//! The commands, over a fleet of one or more Nginx instances: one file per family.

mod canary;
mod history;
mod output;
mod peers;
mod ramp;
mod set;
pub(crate) mod state_dir;
mod status;
mod switch;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::exit::Failure;
use crate::fleet::{Fleet, FleetError, Laggards};
use crate::view::progress::Progress;

pub use canary::{canary, promote, CanaryOptions, OnInterrupt, OnQuiet};
pub use history::history;
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
    /// `--allow-partial`: a switch, canary or rollback goes on with the hosts that report when
    /// some are GONE or STALE (and names them) instead of failing.
    pub allow_partial: bool,
    /// The hosts it went on without, so far: a deploy does not stop a side they may still use.
    pub went_without: Mutex<Vec<String>>,
}

impl Ctx {
    /// Waits until every Nginx has the upstream's last change (`Fleet::settle`). Hosts of an
    /// etcd fleet without it fail the command, unless `--allow-partial` was given: it then
    /// goes on, says so, and returns them for its outcome.
    pub async fn settle_everywhere(
        &self,
        upstream: &str,
        timeout: Duration,
    ) -> Result<Laggards, FleetError> {
        let laggards = self.fleet.settle(upstream, timeout).await?;
        if laggards.is_empty() {
            return Ok(laggards);
        }
        if !self.allow_partial || laggards.reporting == 0 {
            return Err(FleetError::Partial(laggards));
        }
        self.progress
            .event(&format!("going on without {}", laggards.hosts()));
        self.went_without
            .lock()
            .expect("went-without lock")
            .push(laggards.hosts());
        Ok(laggards)
    }

    /// A slow start per change (`--slow-start`, `slow_start` in a plan) goes in each Nginx's
    /// PATCH; the fleet's desired state (`--etcd`) has no place for it yet.
    pub fn refuse_slow_start_in_a_fleet(
        &self,
        slow_start: Option<Duration>,
    ) -> Result<(), Failure> {
        self.refuse_in_a_fleet(
            slow_start.is_some(),
            "--slow-start (slow_start in a deploy plan)",
            "give the upstream shift_slow_start in each Nginx instead",
        )
    }

    /// `--close-after` (`close_after` in a deploy plan) goes to each Nginx's API; the fleet's
    /// desired state in etcd has no place for it.
    pub fn refuse_close_after_in_a_fleet(
        &self,
        close: Option<crate::plan::CloseAfter>,
    ) -> Result<(), Failure> {
        self.refuse_in_a_fleet(
            close.is_some(),
            "--close-after (close_after in a deploy plan)",
            "drain without it, or run shiftctl against each Nginx's socket",
        )
    }

    /// Refuses an `option` the fleet's desired state cannot carry, when it is `given` with
    /// `--etcd`, saying what to do `instead`.
    fn refuse_in_a_fleet(&self, given: bool, option: &str, instead: &str) -> Result<(), Failure> {
        if given && matches!(self.fleet, Fleet::Etcd(_)) {
            return Err(Failure::usage(anyhow::anyhow!(
                "{option} does not work with --etcd yet: the fleet's desired state holds \
                 weights and states only; {instead}"
            )));
        }
        Ok(())
    }

    /// The hosts a change went on without (`--allow-partial`), if any: "GONE: a; STALE: b".
    pub fn hosts_gone_without(&self) -> Option<String> {
        let went = self.went_without.lock().expect("went-without lock");
        (!went.is_empty()).then(|| went.join("; "))
    }
}
