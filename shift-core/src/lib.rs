//! The logic of nginx-shift's Nginx module, in safe Rust with no Nginx in it, so that it can be
//! tested and benchmarked alone: directive parsing, the shared peer table, the health-check
//! state machine, the admin API and its metrics, and the state file. The `nginx-shift-module`
//! crate connects it to Nginx through a few small FFI modules.

pub mod api;
pub mod attached;
pub mod directives;
pub mod drain_close;
pub mod eject;
pub mod health;
pub mod health_record;
pub mod history;
pub mod inflight;
pub mod lifecycle;
pub mod metrics;
pub mod pin;
pub mod process;
pub mod reclaim;
pub mod resolve;
pub mod slow_start;
pub mod state_file;
pub mod sticky;
pub mod table;
#[cfg(test)]
mod test_rng;
