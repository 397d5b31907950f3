//! What `shiftctl` decides without any Nginx, as a library: the verdict on a canary step
//! (`verdict`), which the `canary_gates` benchmark also simulates, and a fleet's desired state
//! (`desired`), which commands change and agents converge to, its status (`fleet_status`) and when an agent reports it (`report_policy`); and what a side a deploy just started must show (`started`).

pub mod desired;
pub mod fleet_status;
pub mod report_policy;
pub mod started;
pub mod verdict;
