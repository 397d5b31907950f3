//! What `shiftctl` decides without any Nginx, as a library: the verdict on a canary step
//! (`verdict`), which the `canary_gates` benchmark also simulates.

pub mod verdict;
