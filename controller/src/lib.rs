//! What `shiftctl` decides without any Nginx or etcd, as a library, by concern:
//!
//! - `deploy::verdict`: the verdict on a canary step, which the `canary_gates` benchmark also
//!   simulates; `deploy::started`: what a side a deploy just started must show.
//! - `fleet::desired`: a fleet's desired state, which commands change and agents converge to;
//!   `fleet::report_policy`: when an agent writes its report; `fleet::status`: the fleet's
//!   status from what etcd holds.
//!
//! The binary's modules of the same names (`src/deploy/mod.rs`, `src/fleet/mod.rs`) hold the
//! parts that do I/O and use these.

pub mod deploy {
    pub mod started;
    pub mod verdict;
}

pub mod fleet {
    pub mod desired;
    pub mod report_policy;
    pub mod status;
}
